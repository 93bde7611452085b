//! `--source etcd`: the policy comes from the fleet's document in etcd (`fleet::keys`).
//!
//! At start the daemon reads the document (within [`START_WAIT`]); when etcd cannot be
//! reached, or the document is refused, it starts from the last document of this fleet it
//! applied (saved in the state dir with its revision), and reports itself stale. Then, on the
//! daemon's one async runtime, it reads the document's revision once a [`HEARTBEAT`] (a
//! linearizable read: it needs a quorum, so a node cut off from the cluster learns it is
//! stale), watches the key from the revision that read returned for changes in between, and
//! publishes its heartbeat under its own key with a lease of [`LEASE_TTL`]. Each new revision
//! is applied through the daemon's one atomic apply, on a blocking thread: the daemon's lock
//! is never held while waiting on the network. A refused revision changes nothing, is
//! reported (`status`, metrics, heartbeat) and is not tried again; the next revision is.
//!
//! Only the latest document matters: a document is a whole policy, so revisions a node
//! missed while cut off are superseded by the one it reads when it reconnects.

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use etcd_client::{EventType, PutOptions, WatchOptions};
use tokio::time::timeout;

use super::{
    Chosen, check_policy,
    machine::{ApplyError, Daemon, parse_with_bundles},
    restart::{self, FileRead, FleetSync},
};
use crate::{
    fleet::{
        addresses::{AddressRecord, MAX_ADDRESSES_PER_NODE, MAX_PEER_NODES, PodAddress},
        client::{self, Document, EtcdArgs, MAX_MESSAGE_BYTES, REQUEST_TIMEOUT},
        keys::{Keys, NodeName, NodeRecord},
    },
    paths::StateDir,
    runtime,
};

/// How long a start waits for the fleet's document before starting from the saved one.
const START_WAIT: Duration = Duration::from_secs(5);
/// How often a node confirms its document is current and renews its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node's heartbeat outlives the node, in seconds.
const LEASE_TTL: i64 = 5;
/// Reconnection attempts back off from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// `--source etcd` and what goes with it.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub etcd: EtcdArgs,
    pub node: NodeName,
}

impl FleetOptions {
    fn sync(&self, keys: &Keys) -> FleetSync {
        FleetSync {
            endpoints: self.etcd.endpoints(),
            prefix: keys.prefix().to_owned(),
            node: self.node.to_string(),
            ..FleetSync::default()
        }
    }
}

/// The name a fleet document is applied under: its diagnostics read `etcd:KEY@REV:LINE:COL`.
fn origin(keys: &Keys, revision: i64) -> String {
    format!("etcd:{}@{revision}", keys.policy())
}

/// Chooses the policy a start puts in force; changes nothing.
pub(super) fn choose(
    options: &FleetOptions,
    state: &StateDir,
) -> Result<Chosen, (Vec<String>, anyhow::Error)> {
    let keys = options.etcd.keys().map_err(|err| (Vec::new(), err))?;
    let mut sync = options.sync(&keys);
    let label = sync.label();
    let saved = restart::load(state).unwrap_or_else(|err| {
        log::warn!("{err:#}");
        None
    });
    let saved_generation = saved.as_ref().map_or(0, |s| s.generation);
    // Only a document of this fleet may stand in for it.
    let saved = saved.filter(|s| s.source.as_deref() == Some(label.as_str()));
    let read = |text: &str| FileRead::new(Path::new(&keys.policy()), text);
    let fallback = |sync: FleetSync, why: String| -> Result<Chosen, (Vec<String>, anyhow::Error)> {
        let Some(saved) = &saved else {
            return Err((
                Vec::new(),
                anyhow!(
                    "{why}; no document of this fleet ({label}) was saved in {} to start from; \
                     nothing was changed",
                    state.path().display()
                ),
            ));
        };
        let origin = saved.origin.clone();
        let policy = check_policy(&origin, &saved.text, || {
            format!("the saved fleet document ({origin}) no longer loads; nothing was changed")
        })?;
        log::warn!("{why}; starting from the saved document {origin}");
        Ok(Chosen {
            read: read(&saved.text),
            origin,
            text: saved.text.clone(),
            policy,
            at_start: "kept",
            reason: format!("{why}; the saved document of this fleet stays"),
            saved_generation,
            refused: None,
            fleet: Some(FleetSync {
                revision: saved.revision,
                tried: sync.tried.or(saved.revision),
                ..sync
            }),
        })
    };
    match fetch(&options.etcd, &keys) {
        Ok(Some(doc)) => {
            let origin = origin(&keys, doc.revision);
            let checked = check_policy(&origin, &doc.text, || {
                format!(
                    "the fleet's document at revision {} was refused",
                    doc.revision
                )
            });
            match checked {
                Ok(policy) => {
                    sync.revision = Some(doc.revision);
                    sync.tried = Some(doc.revision);
                    sync.last_sync = Some(jiff::Timestamp::now());
                    Ok(Chosen {
                        read: read(&doc.text),
                        reason: format!(
                            "the fleet's document {} at revision {} (etcd {})",
                            keys.policy(),
                            doc.revision,
                            options.etcd.endpoints()
                        ),
                        origin,
                        text: doc.text,
                        policy,
                        at_start: "taken",
                        saved_generation,
                        refused: None,
                        fleet: Some(sync),
                    })
                }
                Err((lines, err)) => {
                    for line in &lines {
                        log::error!("{line}");
                    }
                    let why = std::iter::once(format!("{err:#}"))
                        .chain(lines)
                        .collect::<Vec<_>>()
                        .join("; ");
                    sync.tried = Some(doc.revision);
                    sync.refused = Some(why.clone());
                    sync.last_sync = Some(jiff::Timestamp::now());
                    fallback(sync, why)
                }
            }
        }
        Ok(None) => {
            sync.last_sync = Some(jiff::Timestamp::now());
            fallback(
                sync,
                format!(
                    "the fleet has no policy at {} yet (write one with `enforcer fleet apply \
                     FILE`)",
                    keys.policy()
                ),
            )
        }
        Err(err) => {
            let why = format!("{err:#}");
            sync.unreachable = Some(why.clone());
            fallback(sync, why)
        }
    }
}

/// The fleet's document as etcd has it now, from the first member that answers within
/// [`START_WAIT`].
fn fetch(etcd: &EtcdArgs, keys: &Keys) -> Result<Option<Document>> {
    runtime::handle()?.block_on(async {
        let mut errors = Vec::new();
        for endpoint in &etcd.etcd_endpoints {
            let read = timeout(START_WAIT, async {
                let client = etcd.connect_to(std::slice::from_ref(endpoint)).await?;
                let mut kv = client::kv(&client);
                client::policy(&mut kv, keys)
                    .await
                    .with_context(|| format!("reading {} from {endpoint}", keys.policy()))
            })
            .await
            .unwrap_or_else(|_| Err(anyhow!("{endpoint} did not answer within {START_WAIT:?}")));
            match read {
                Ok(document) => return Ok(document),
                Err(err) => errors.push(format!("{err:#}")),
            }
        }
        bail!("no etcd member answered: {}", errors.join("; "))
    })
}

/// Follows the fleet's document for the life of the daemon.
pub(super) fn spawn(daemon: Arc<Mutex<Daemon>>, options: FleetOptions) -> Result<()> {
    let keys = options.etcd.keys()?;
    runtime::handle()?.spawn(follow(daemon, options, keys));
    Ok(())
}

/// Talks to one member at a time and moves to the next when it fails: a member that is down
/// or cut off from the leader then costs one failed request, not a share of every request
/// (a client balanced over all members keeps sending some to a dead one). The node reports
/// itself stale only when a whole round of members failed.
async fn follow(daemon: Arc<Mutex<Daemon>>, options: FleetOptions, keys: Keys) {
    let endpoints = &options.etcd.etcd_endpoints;
    let mut backoff = BACKOFF.0;
    let mut member = 0;
    let mut failed_in_a_row = 0;
    loop {
        let Some(endpoint) = endpoints.get(member % endpoints.len().max(1)) else {
            log::error!("no --etcd-endpoints: the fleet's policy will not be followed");
            return;
        };
        member += 1;
        let mut current = false;
        let Err(err) = session(&daemon, &options, &keys, endpoint, &mut current).await;
        if current {
            failed_in_a_row = 0;
            backoff = BACKOFF.0;
        }
        failed_in_a_row += 1;
        log::info!("etcd member {endpoint}: {err:#}");
        if failed_in_a_row < endpoints.len() {
            continue;
        }
        let why = format!("no etcd member answered; the last: {err:#}");
        let was = with_daemon(&daemon, move |d| {
            let fleet = d.source.fleet.as_mut()?;
            fleet.unreachable.replace(why.clone())
        })
        .await;
        if was.is_none() {
            log::warn!(
                "the fleet's etcd cannot be reached (no member answered; the last: {err:#}); \
                 the policy in force stays"
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// One connection to one member, until something fails; `current` is set once the node has
/// found its document current through it.
async fn session(
    daemon: &Arc<Mutex<Daemon>>,
    options: &FleetOptions,
    keys: &Keys,
    endpoint: &str,
    current: &mut bool,
) -> Result<std::convert::Infallible> {
    let client = options
        .etcd
        .connect_to(std::slice::from_ref(&endpoint.to_owned()))
        .await?;
    let mut kv = client::kv(&client);
    let mut leases = client.lease_client();
    let lease = within(
        leases.grant(LEASE_TTL, None),
        "granting the heartbeat lease",
    )
    .await?
    .id();
    let (mut keeper, mut kept) =
        within(leases.keep_alive(lease), "keeping the heartbeat lease").await?;
    let revision = sync(daemon, &mut kv, keys).await?;
    let mut watches = client
        .watch_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut stream = within(
        watches.watch(
            keys.policy(),
            Some(WatchOptions::new().with_start_revision(revision + 1)),
        ),
        "watching the fleet policy",
    )
    .await?;
    // The addresses are not the policy: a node whose credentials do not reach them (or a
    // cluster that refuses them) still follows the policy, and says why in `status`.
    let mut address_stream =
        match follow_peer_addresses(daemon, &mut kv, &mut watches, keys, &options.node).await {
            Ok(stream) => Some(stream),
            Err(err) => {
                address_error(daemon, AddressSide::Follow, &err).await;
                None
            }
        };
    heartbeat(daemon, &mut kv, keys, &options.node, lease).await?;
    // What this session published: a new lease needs the record written again.
    let mut published = None;
    let scanned = with_daemon(daemon, |d| {
        d.source
            .fleet
            .as_ref()
            .map(|f| Arc::clone(&f.addresses.scanned))
    })
    .await
    .unwrap_or_default();
    publish_addresses(daemon, &mut kv, keys, &options.node, lease, &mut published).await;
    *current = true;
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            message = next_message(address_stream.as_mut()) => {
                let response = message?.ok_or_else(|| anyhow!("etcd ended the address watch"))?;
                if response.canceled() {
                    bail!("etcd cancelled the address watch: {}", response.cancel_reason());
                }
                peer_address_events(daemon, keys, &options.node, response.events()).await;
            }
            message = stream.message() => {
                let response = message?.ok_or_else(|| anyhow!("etcd ended the watch"))?;
                if response.canceled() {
                    bail!("etcd cancelled the watch: {}", response.cancel_reason());
                }
                for event in response.events() {
                    match (event.event_type(), event.kv()) {
                        (EventType::Put, Some(kv)) => {
                            apply(daemon, keys, kv.mod_revision(), Document::from_kv(kv)).await;
                        }
                        (EventType::Delete, _) => log::warn!(
                            "the fleet policy {} was deleted; the policy in force stays",
                            keys.policy()
                        ),
                        (EventType::Put, None) => {}
                    }
                }
            }
            () = scanned.notified() => {
                publish_addresses(daemon, &mut kv, keys, &options.node, lease, &mut published)
                    .await;
            }
            _ = tick.tick() => {
                within(keeper.keep_alive(), "renewing the heartbeat lease").await?;
                let renewed = within(kept.message(), "renewing the heartbeat lease")
                    .await?
                    .ok_or_else(|| anyhow!("etcd ended the lease keep-alive"))?;
                if renewed.ttl() <= 0 {
                    bail!("the heartbeat lease expired");
                }
                sync(daemon, &mut kv, keys).await?;
                heartbeat(daemon, &mut kv, keys, &options.node, lease).await?;
                publish_addresses(daemon, &mut kv, keys, &options.node, lease, &mut published)
                    .await;
                // A failed read of the others' addresses is tried again at every heartbeat,
                // not only when the session starts over.
                if address_stream.is_none() {
                    match follow_peer_addresses(daemon, &mut kv, &mut watches, keys, &options.node)
                        .await
                    {
                        Ok(stream) => address_stream = Some(stream),
                        Err(err) => address_error(daemon, AddressSide::Follow, &err).await,
                    }
                }
            }
        }
    }
}

/// `future` within [`REQUEST_TIMEOUT`], its error saying what it was `doing`.
async fn within<T>(
    future: impl Future<Output = Result<T, etcd_client::Error>>,
    doing: &str,
) -> Result<T> {
    timeout(REQUEST_TIMEOUT, future)
        .await
        .map_err(|_| anyhow!("{doing}: no answer within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| doing.to_owned())
}

/// Reads the document's revision and applies the document when it is one not tried yet;
/// returns the cluster's revision at that read. Succeeding, it proves the node current.
async fn sync(
    daemon: &Arc<Mutex<Daemon>>,
    kv: &mut etcd_client::KvClient,
    keys: &Keys,
) -> Result<i64> {
    let response = within(
        kv.get(
            keys.policy(),
            Some(etcd_client::GetOptions::new().with_keys_only()),
        ),
        "reading the fleet policy's revision",
    )
    .await?;
    let at = response.header().map_or(0, |h| h.revision());
    let current = response
        .kvs()
        .first()
        .map(etcd_client::KeyValue::mod_revision);
    let tried = with_daemon(daemon, |d| d.source.fleet.as_ref().and_then(|f| f.tried)).await;
    if let Some(current) = current
        && tried.is_none_or(|t| current > t)
    {
        let response = within(kv.get(keys.policy(), None), "reading the fleet policy").await?;
        if let Some(found) = response.kvs().first() {
            apply(daemon, keys, found.mod_revision(), Document::from_kv(found)).await;
        }
    }
    let came_back = with_daemon(daemon, |d| {
        let fleet = d.source.fleet.as_mut()?;
        fleet.last_sync = Some(jiff::Timestamp::now());
        fleet.unreachable.take()
    })
    .await;
    if came_back.is_some() {
        log::info!("the fleet's etcd is reachable again; the policy in force is its latest");
    }
    Ok(at)
}

/// Publishes this node's record under its key, with its lease.
async fn heartbeat(
    daemon: &Arc<Mutex<Daemon>>,
    kv: &mut etcd_client::KvClient,
    keys: &Keys,
    node: &NodeName,
    lease: i64,
) -> Result<()> {
    let name = node.to_string();
    let record = with_daemon(daemon, move |d| {
        let fleet = d.source.fleet.as_ref();
        NodeRecord {
            node: name,
            generation: d.generation(),
            revision: fleet.and_then(|f| f.revision),
            heartbeat: jiff::Timestamp::now(),
            last_sync: fleet.and_then(|f| f.last_sync),
            error: fleet.and_then(|f| f.refused.clone()),
        }
    })
    .await;
    let value = serde_json::to_vec(&record)?;
    within(
        kv.put(
            keys.node(node),
            value,
            Some(PutOptions::new().with_lease(lease)),
        ),
        "publishing the node's heartbeat",
    )
    .await?;
    Ok(())
}

/// Publishes this node's pod addresses under its key, with its lease, when they differ from
/// what this session last published.
async fn publish_addresses(
    daemon: &Arc<Mutex<Daemon>>,
    kv: &mut etcd_client::KvClient,
    keys: &Keys,
    node: &NodeName,
    lease: i64,
    published: &mut Option<Vec<PodAddress>>,
) {
    let mut addresses = with_daemon(daemon, |d| d.own_pod_addresses()).await;
    if published.as_ref() == Some(&addresses) {
        return;
    }
    if addresses.len() > MAX_ADDRESSES_PER_NODE {
        log::warn!(
            "this node has {} pod addresses; only the first {MAX_ADDRESSES_PER_NODE} are \
             published to the fleet",
            addresses.len()
        );
        addresses.truncate(MAX_ADDRESSES_PER_NODE);
    }
    let record = AddressRecord {
        node: node.to_string(),
        addresses,
    };
    let value = serde_json::to_vec(&record).unwrap_or_default();
    let put = within(
        kv.put(
            keys.addresses_of(node),
            value,
            Some(PutOptions::new().with_lease(lease)),
        ),
        "publishing this node's pod addresses",
    )
    .await;
    if let Err(err) = put {
        // Tried again at the next heartbeat.
        address_error(daemon, AddressSide::Publish, &err).await;
        return;
    }
    let count = record.addresses.len();
    with_daemon(daemon, move |d| {
        if let Some(fleet) = d.source.fleet.as_mut() {
            fleet.addresses.published = count;
            fleet.addresses.publish_error = None;
        }
    })
    .await;
    *published = Some(record.addresses);
}

/// Which side of the fleet's addresses failed.
#[derive(Clone, Copy)]
enum AddressSide {
    /// Writing this node's own record.
    Publish,
    /// Reading or watching the other nodes' records.
    Follow,
}

/// Records why the fleet's addresses cannot be read or written; the policy is followed all
/// the same.
async fn address_error(daemon: &Arc<Mutex<Daemon>>, side: AddressSide, err: &anyhow::Error) {
    let why = format!("{err:#}");
    let first = with_daemon(daemon, move |d| {
        let fleet = d.source.fleet.as_mut()?;
        let held = match side {
            AddressSide::Publish => &mut fleet.addresses.publish_error,
            AddressSide::Follow => &mut fleet.addresses.follow_error,
        };
        let was = held.replace(why.clone());
        (was.as_ref() != Some(&why)).then_some(why)
    })
    .await;
    if let Some(why) = first {
        log::warn!("the fleet's pod addresses: {why}");
    }
}

/// The next message of `stream`, or never without one.
async fn next_message(
    stream: Option<&mut etcd_client::WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match stream {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

/// Loads the other nodes' addresses as they are now, then watches them for changes from
/// that read on.
async fn follow_peer_addresses(
    daemon: &Arc<Mutex<Daemon>>,
    kv: &mut etcd_client::KvClient,
    watches: &mut etcd_client::WatchClient,
    keys: &Keys,
    node: &NodeName,
) -> Result<etcd_client::WatchStream> {
    let read_at = read_peer_addresses(daemon, kv, keys, node).await?;
    within(
        watches.watch(
            keys.addresses(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(read_at + 1),
            ),
        ),
        "watching the fleet's addresses",
    )
    .await
}

/// Reads every other node's address record and loads them in place of what the node held;
/// returns the cluster's revision at that read.
async fn read_peer_addresses(
    daemon: &Arc<Mutex<Daemon>>,
    kv: &mut etcd_client::KvClient,
    keys: &Keys,
    node: &NodeName,
) -> Result<i64> {
    let response = within(
        kv.get(
            keys.addresses(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_limit(client::MAX_NODES),
            ),
        ),
        "reading the fleet's addresses",
    )
    .await?;
    let at = response.header().map_or(0, |h| h.revision());
    let records: Vec<AddressRecord> = response
        .kvs()
        .iter()
        .filter_map(|kv| peer_record(keys, node, kv.key(), kv.value()).flatten())
        .collect();
    with_daemon(daemon, move |d| {
        if let Some(fleet) = d.source.fleet.as_mut() {
            fleet.addresses.peers.replace(records);
            fleet.addresses.follow_error = None;
        }
        d.sync_peer_addresses(false);
    })
    .await;
    Ok(at)
}

/// Takes the changes to other nodes' address records: a record put replaces that node's, a
/// record deleted (its lease ran out) withdraws them.
async fn peer_address_events(
    daemon: &Arc<Mutex<Daemon>>,
    keys: &Keys,
    node: &NodeName,
    events: &[etcd_client::Event],
) {
    let changes: Vec<(String, Option<AddressRecord>)> = events
        .iter()
        .filter_map(|event| {
            let kv = event.kv()?;
            let name = peer_name(keys, node, kv.key())?;
            match event.event_type() {
                EventType::Put => {
                    peer_record(keys, node, kv.key(), kv.value()).map(|record| (name, record))
                }
                EventType::Delete => Some((name, None)),
            }
        })
        .collect();
    if changes.is_empty() {
        return;
    }
    with_daemon(daemon, move |d| {
        if let Some(fleet) = d.source.fleet.as_mut() {
            for (name, record) in changes {
                match record {
                    Some(record) => {
                        if !fleet.addresses.peers.set(record) {
                            log::warn!(
                                "node {name}'s addresses are not loaded: this node already \
                                 holds the records of {MAX_PEER_NODES} other nodes"
                            );
                        }
                    }
                    None => fleet.addresses.peers.remove(&name),
                }
            }
        }
        d.sync_peer_addresses(false);
    })
    .await;
}

/// The node an address key belongs to, unless it is this node's own.
fn peer_name(keys: &Keys, node: &NodeName, key: &[u8]) -> Option<String> {
    let key = std::str::from_utf8(key).ok()?;
    let name = key.strip_prefix(&keys.addresses())?;
    let parsed: NodeName = name.parse().ok()?;
    (parsed != *node).then(|| name.to_owned())
}

/// Another node's record under `key`: `None` for this node's own key or one that names no
/// node; `Some(None)` for a record that is refused (logged), so that it withdraws whatever
/// that node published before.
fn peer_record(
    keys: &Keys,
    node: &NodeName,
    key: &[u8],
    value: &[u8],
) -> Option<Option<AddressRecord>> {
    let name = peer_name(keys, node, key)?;
    match AddressRecord::parse(&name, value) {
        Ok(record) => Some(Some(record)),
        Err(why) => {
            log::warn!("{why}; none of its addresses are loaded");
            Some(None)
        }
    }
}

/// Runs `f` on the daemon on a blocking thread: an apply may hold the lock for seconds, and
/// the runtime's workers must not wait for it.
async fn with_daemon<T: Send + 'static>(
    daemon: &Arc<Mutex<Daemon>>,
    f: impl FnOnce(&mut Daemon) -> T + Send + 'static,
) -> T {
    let daemon = Arc::clone(daemon);
    let run = move || f(&mut daemon.lock().unwrap_or_else(PoisonError::into_inner));
    match tokio::task::spawn_blocking(run).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Applies the document at `revision` (or records why it cannot be read) unless it was
/// tried already.
async fn apply(
    daemon: &Arc<Mutex<Daemon>>,
    keys: &Keys,
    revision: i64,
    document: Result<Document>,
) {
    let origin = origin(keys, revision);
    // Parsed before the daemon is locked, as every apply is.
    let parsed = document.map(|doc| {
        let parsed = parse_with_bundles(&origin, &doc.text);
        (doc, parsed)
    });
    let key = keys.policy();
    with_daemon(daemon, move |d| {
        apply_locked(d, &key, &origin, revision, parsed)
    })
    .await;
}

fn apply_locked(
    d: &mut Daemon,
    key: &str,
    origin: &str,
    revision: i64,
    parsed: Result<(Document, super::machine::Parsed)>,
) {
    if d.source
        .fleet
        .as_ref()
        .and_then(|f| f.tried)
        .is_some_and(|t| t >= revision)
    {
        return;
    }
    let result = match parsed {
        Ok((doc, parsed)) => parsed
            .and_then(|(policy, trust)| {
                d.apply_parsed(policy, trust, origin, &doc.text, Some(revision))
            })
            .map(|committed| (committed, FileRead::new(Path::new(key), &doc.text))),
        Err(err) => Err(ApplyError::Rejected(vec![format!("{err:#}")])),
    };
    let generation = d.generation();
    let Some(fleet) = d.source.fleet.as_mut() else {
        return;
    };
    match result {
        Ok((committed, read)) => {
            log::info!(
                "fleet policy revision {revision} in force ({origin}): policy generation {}; \
                 ended {} connection(s)",
                committed.generation,
                committed.ended
            );
            fleet.revision = Some(revision);
            fleet.tried = Some(revision);
            fleet.refused = None;
            d.source.read = read;
        }
        Err(ApplyError::Rejected(errors)) => {
            for e in &errors {
                log::error!("{e}");
            }
            log::error!(
                "fleet policy revision {revision} refused; the policy in force stays (generation \
                 {generation})"
            );
            fleet.tried = Some(revision);
            fleet.refused = Some(format!(
                "revision {revision} refused: {}",
                errors.join("; ")
            ));
        }
        // Not the document's fault: it is tried again at the next heartbeat.
        Err(ApplyError::Failed(err)) => {
            log::error!("applying fleet policy revision {revision} failed: {err:#}");
            fleet.refused = Some(format!("applying revision {revision} failed: {err:#}"));
        }
    }
}
