//! Talking to the fleet's etcd cluster: the connection flags shared by `enforcer daemon
//! --source etcd` and `enforcer fleet`, and the few reads and writes the fleet makes. Every
//! request has a deadline, and what is read is bounded: a response is at most
//! [`MAX_MESSAGE_BYTES`] and a document at most the policy file limit, so a cluster that
//! misbehaves cannot make a node allocate without bound or wait forever.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use enforcer_policy::MAX_POLICY_BYTES;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use super::keys::{Keys, NodeRecord};

/// How long one request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to the cluster may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest gRPC message read from etcd: a whole document with room for the envelope.
pub const MAX_MESSAGE_BYTES: usize = MAX_POLICY_BYTES + 64 * 1024;
/// The most node records `fleet status` lists.
pub const MAX_NODES: i64 = 10_000;

/// Where the fleet's etcd cluster is and how to prove who we are to it. Global, so that
/// `fleet apply` and `fleet status` take them after the verb too.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EtcdArgs {
    /// The cluster's client URLs, comma separated (`https://` with the TLS flags).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        value_name = "URL,...",
        env = "ENFORCER_ETCD_ENDPOINTS"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Where the fleet's keys live: PREFIX/policy and PREFIX/nodes/NAME.
    #[arg(
        long,
        global = true,
        default_value = "/enforcer",
        env = "ENFORCER_ETCD_PREFIX"
    )]
    pub etcd_prefix: String,
    /// The CA certificate (PEM) that signed the members' server certificates.
    #[arg(long, global = true, value_name = "FILE", env = "ENFORCER_ETCD_CACERT")]
    pub etcd_cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for clusters that require client certificates.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        requires = "etcd_key",
        env = "ENFORCER_ETCD_CERT"
    )]
    pub etcd_cert: Option<PathBuf>,
    /// The key (PEM) of --etcd-cert.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        requires = "etcd_cert",
        env = "ENFORCER_ETCD_KEY"
    )]
    pub etcd_key: Option<PathBuf>,
    /// The etcd user to authenticate as (with --etcd-password-file).
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        requires = "etcd_password_file",
        env = "ENFORCER_ETCD_USER"
    )]
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password (its first line).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        requires = "etcd_user",
        env = "ENFORCER_ETCD_PASSWORD_FILE"
    )]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    pub fn keys(&self) -> Result<Keys> {
        Keys::new(&self.etcd_prefix).map_err(anyhow::Error::msg)
    }

    /// The endpoints, for messages.
    pub fn endpoints(&self) -> String {
        self.etcd_endpoints.join(",")
    }

    /// Checks what can be checked without the network: endpoints given, prefix valid, and
    /// the TLS and password files readable.
    pub fn check(&self) -> Result<()> {
        if self.etcd_endpoints.is_empty() {
            bail!("--etcd-endpoints is required");
        }
        self.keys()?;
        self.options()?;
        Ok(())
    }

    fn options(&self) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT)
            // A member cut off from the leader answers watches with a cancellation rather
            // than silence, so a partitioned node learns it is stale.
            .with_require_leader(true);
        if self.etcd_cacert.is_some() || self.etcd_cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.etcd_cacert {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        if let (Some(user), Some(file)) = (&self.etcd_user, &self.etcd_password_file) {
            let text = String::from_utf8(read(file)?)
                .with_context(|| format!("{} is not UTF-8", file.display()))?;
            let password = text.lines().next().unwrap_or_default().to_owned();
            // etcd's tokens expire (5 minutes by default): a daemon runs far longer.
            options = options
                .with_user(user.clone(), password)
                .with_auto_token_refresh(true);
        }
        Ok(options)
    }

    /// Connects to every endpoint, requests spread over them, within [`CONNECT_TIMEOUT`] (plus
    /// one request to authenticate).
    pub async fn connect(&self) -> Result<Client> {
        self.connect_to(&self.etcd_endpoints).await
    }

    /// Connects to `endpoints` only.
    pub async fn connect_to(&self, endpoints: &[String]) -> Result<Client> {
        let options = self.options()?;
        let connecting = Client::connect(endpoints, Some(options));
        tokio::time::timeout(CONNECT_TIMEOUT + REQUEST_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))
    }
}

/// Small files only: certificates, keys, a password.
fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > 1024 * 1024 {
        bail!("{} is larger than 1 MiB", path.display());
    }
    Ok(bytes)
}

/// A key-value client whose responses are bounded.
pub fn kv(client: &Client) -> KvClient {
    client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// The fleet's policy document at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub text: String,
    pub revision: i64,
}

impl Document {
    /// The document in `kv`, refused when larger than a policy file may be or not UTF-8.
    pub fn from_kv(kv: &KeyValue) -> Result<Self> {
        let revision = kv.mod_revision();
        if kv.value().len() > MAX_POLICY_BYTES {
            bail!(
                "the fleet policy at revision {revision} is {} bytes, more than the {} a policy \
                 may have",
                kv.value().len(),
                MAX_POLICY_BYTES
            );
        }
        let text = std::str::from_utf8(kv.value())
            .with_context(|| format!("the fleet policy at revision {revision} is not UTF-8"))?;
        Ok(Self {
            text: text.to_owned(),
            revision,
        })
    }
}

/// The revision of the fleet's document (0 when there is none), without reading it; needs a
/// quorum, so it also proves the cluster is whole from where this node stands.
pub async fn policy_revision(kv: &mut KvClient, keys: &Keys) -> Result<i64> {
    let response = kv
        .get(keys.policy(), Some(GetOptions::new().with_keys_only()))
        .await?;
    Ok(response.kvs().first().map_or(0, KeyValue::mod_revision))
}

/// The fleet's document, if there is one.
pub async fn policy(kv: &mut KvClient, keys: &Keys) -> Result<Option<Document>> {
    let response = kv.get(keys.policy(), None).await?;
    response.kvs().first().map(Document::from_kv).transpose()
}

/// What a compare-and-swap write of the document did.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Written at this revision.
    Written { revision: i64 },
    /// Not written: the document was at `current` (0: none), not at the revision expected.
    Conflict { current: i64 },
}

/// Writes `text` as the fleet's document if, and only if, its revision is still `expected`
/// (0: there is no document yet). Two writers that read the same revision cannot both win.
pub async fn write_policy(
    kv: &mut KvClient,
    keys: &Keys,
    text: &str,
    expected: i64,
) -> Result<Written> {
    let key = keys.policy();
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            expected,
        )])
        .and_then([TxnOp::put(key.clone(), text, None)])
        .or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))]);
    let response = kv.txn(txn).await?;
    if response.succeeded() {
        let revision = response.header().map_or(0, |h| h.revision());
        return Ok(Written::Written { revision });
    }
    let current = response
        .op_responses()
        .into_iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map_or(0, KeyValue::mod_revision)),
            _ => None,
        })
        .unwrap_or(0);
    Ok(Written::Conflict { current })
}

/// Every node's record; a record that does not parse is reported as such, not dropped.
pub async fn nodes(kv: &mut KvClient, keys: &Keys) -> Result<Vec<Result<NodeRecord, String>>> {
    let response = kv
        .get(
            keys.nodes(),
            Some(GetOptions::new().with_prefix().with_limit(MAX_NODES)),
        )
        .await?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| {
            serde_json::from_slice(kv.value()).map_err(|err| {
                format!(
                    "{}: not a node record: {err}",
                    String::from_utf8_lossy(kv.key())
                )
            })
        })
        .collect())
}
