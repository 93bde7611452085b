//! A real etcd cluster on 127.0.0.1 for the fleet tests: members on free ports with data dirs
//! in a temporary directory, each killed (and the directory removed) on drop. Readiness is
//! `etcdctl endpoint health`, polled. A [`Cut`] stands between a node and one member, so a
//! test can partition that node from the cluster and heal it again.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// A cluster of `etcd` members, each on a client and a peer port of its own.
pub struct EtcdCluster {
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
    /// Set when clients must speak TLS and present a certificate of the cluster's CA.
    pub tls: Option<Tls>,
}

/// The PEM files of a cluster whose clients speak TLS: its CA, the members' server
/// certificate (for 127.0.0.1) and a client certificate the CA issued.
pub struct Tls {
    pub ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Tls {
    fn mint(dir: &std::path::Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("a CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().expect("a key");
            let cert = CertificateParams::new(names)
                .expect("leaf parameters")
                .signed_by(&key, &issuer)
                .expect("a leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            fs::write(&path, pem).expect("writing a PEM file");
            path
        };
        let (server, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client, client_key) = leaf(vec!["fleet-node".into()]);
        Self {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client),
            client_key: write("client-key.pem", &client_key),
        }
    }
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    process: Option<Child>,
}

/// The ports the clusters' members are given: inside the range the tests take out of the
/// kernel's ephemeral ports (`crate::TEST_PORTS`), so no client connection's port in
/// TIME_WAIT ever holds one, and handed out once per test process, so two clusters started
/// side by side never pick the same. (Asking the kernel for port 0 does neither: with ports
/// reserved, its picks bunch up just past the reserved range, and a port it returns is free
/// again for the next test to be given before this one's member binds it.)
const MEMBER_PORTS: std::ops::Range<u16> = 40_500..41_000;

/// A port nothing listens on now and no other cluster of this process was given.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 =
        std::sync::atomic::AtomicU16::new(MEMBER_PORTS.start);
    loop {
        let port = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            MEMBER_PORTS.contains(&port),
            "the etcd members used up ports {MEMBER_PORTS:?}"
        );
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether `etcd` and `etcdctl` are installed (`cargo xtask setup` installs them).
pub fn installed() -> bool {
    [("etcd", "--version"), ("etcdctl", "version")]
        .iter()
        .all(|(program, version)| {
            Command::new(program)
                .arg(version)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one is healthy.
    pub fn start(test: &str, size: usize) -> Self {
        Self::start_with(test, size, false)
    }

    /// [`Self::start`] with clients speaking TLS and required to present a certificate of
    /// the cluster's CA ([`Self::tls`]).
    pub fn start_tls(test: &str, size: usize) -> Self {
        Self::start_with(test, size, true)
    }

    fn start_with(test: &str, size: usize, tls: bool) -> Self {
        let id = format!("{test}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("enforcer-etcd-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the etcd directory");
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                process: None,
            })
            .collect();
        let tls = tls.then(|| Tls::mint(&dir));
        let mut cluster = Self {
            dir,
            token: id,
            members,
            tls,
        };
        for i in 0..size {
            cluster.start_member(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        cluster
    }

    /// The client URLs of every member, comma separated.
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn endpoint(&self, member: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[member].client
        )
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn client_port(&self, member: usize) -> u16 {
        self.members[member].client
    }

    /// Starts member `i` (again: its data dir makes it rejoin as it was).
    pub fn start_member(&mut self, i: usize) {
        let cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let member = &self.members[i];
        let log = fs::File::create(self.dir.join(format!("{}.log", member.name)))
            .expect("creating a member's log");
        let client = format!("{}://127.0.0.1:{}", self.scheme(), member.client);
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key);
        }
        let child = command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(self.dir.join(&member.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd (cargo xtask setup installs etcd-server)");
        self.members[i].process = Some(child);
    }

    /// Kills member `i` (SIGKILL) and waits for it to be gone.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until member `i` reports itself healthy (it has a leader and answers).
    pub fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + crate::patient(Duration::from_secs(30));
        loop {
            let out = self.etcdctl(&["--endpoints", &self.endpoint(i), "endpoint", "health"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} is not healthy: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `etcdctl ARGS` against every member (unless ARGS name endpoints).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new("etcdctl");
        if !args.contains(&"--endpoints") {
            command.args(["--endpoints", &self.endpoints()]);
        }
        if let Some(tls) = &self.tls {
            command
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        command
            .args(["--command-timeout", "3s", "--dial-timeout", "2s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running etcdctl (cargo xtask setup installs etcd-client)")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A TCP relay from a port of its own to one etcd member that can be cut: while cut, every
/// connection through it is closed and new ones are closed as soon as they are accepted, as
/// a node on the far side of a partition sees it.
pub struct Cut {
    pub port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Cut {
    pub fn to(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a relay");
        let port = listener.local_addr().expect("relay address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let relay = Self {
            port,
            cut: Arc::clone(&cut),
            open: Arc::clone(&open),
            stop: Arc::clone(&stop),
        };
        thread::spawn(move || {
            for incoming in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(near) = incoming else { continue };
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(far) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut streams = open.lock().unwrap_or_else(PoisonError::into_inner);
                for stream in [&near, &far] {
                    if let Ok(clone) = stream.try_clone() {
                        streams.push(clone);
                    }
                }
                drop(streams);
                pump(&near, &far);
                pump(&far, &near);
            }
        });
        relay
    }

    /// The relay's client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts (or heals) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            for stream in self
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..)
            {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_cut(true);
        // Wakes the accept loop so that it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` on a thread of its own until either side closes.
fn pump(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
