//! Every ordered pair of workloads on one L2 segment (host services, pods in their own network
//! namespaces, remote machines), over TCP and UDP, IPv4 and IPv6, on a port some edge opens
//! and a port none does, compared with a small model of the policy written here from the
//! brief's rules, independently of the product code.

use std::{
    fmt,
    net::IpAddr,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::Duration,
};

use enforcer_tests::{Lan, Node, Outcome, Sandbox, Server, Workload, privileged};

/// The subnet `10.232.2.0/24` / `fd00:232:2::/64` is this file's.
const LAN_INDEX: u8 = 2;
/// Site `k` listens on `OPEN_BASE + k` (opened by some edges) and `CLOSED_BASE + k` (opened
/// by none). Ports 30410-30429 are this file's.
const OPEN_BASE: u16 = 30410;
const CLOSED_BASE: u16 = 30420;
/// Four host services, three pods, two remote machines.
const SITES: u16 = 9;
/// Refusals by silent drop cost one timeout each; this keeps the matrix well under a minute.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const THREADS: usize = 16;

const ALPHA: &str = "alpha.example.org";
const BETA: &str = "beta.example.org";
const GAMMA: &str = "gamma.example.org";

#[test]
fn domain_pair_matrix_matches_the_policy_model() {
    if !privileged("domain_pair_matrix_matches_the_policy_model") {
        return;
    }
    let mut sb = Sandbox::new("matrix");
    sb.set_probe_timeout(PROBE_TIMEOUT);
    let lan = Lan::new(LAN_INDEX);
    let pod_nodes = [lan.node(11), lan.node(12), lan.node(13)];
    let (gamma_node, external_node) = (lan.node(21), lan.node(22));
    let strict = model(Defaults::DENY, &gamma_node.v4, &gamma_node.v6);
    let lenient = model(Defaults::ALLOW, &gamma_node.v4, &gamma_node.v6);
    let strict_file = sb.policy("strict.yaml", &strict.yaml());
    let lenient_file = sb.policy("lenient.yaml", &lenient.yaml());
    let sites = sites(
        &sb,
        &lan,
        &pod_nodes,
        [("gamma", &gamma_node), ("external", &external_node)],
    );
    // Every cgroup exists before the daemon starts (bindings to cgroups created later are
    // tests/cgroups.rs's subject), and every socket is created under enforcement.
    sb.start_daemon(&strict_file);
    let _servers: Vec<Server> = sites.iter().flat_map(Site::serve).collect();

    let strict_run = run_matrix(&sites, &strict);
    sb.apply(&lenient_file);
    let lenient_run = run_matrix(&sites, &lenient);

    let checked = strict_run.checked + lenient_run.checked;
    let differing = strict_run.differing.len() + lenient_run.differing.len();
    if differing > 0 {
        eprintln!("{strict_run}\n{lenient_run}");
        panic!("{differing} of {checked} cells differ from the policy model (tables above)");
    }
    println!("checked {checked} cells: every one matches the policy model");
}

// ---------------------------------------------------------------------------------------
// The model: the brief's rules, stated once, over the policy this test writes.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy)]
enum EdgeProto {
    Tcp,
    Udp,
    Any,
}

impl EdgeProto {
    fn covers(self, proto: Proto) -> bool {
        matches!(
            (self, proto),
            (Self::Any, _) | (Self::Tcp, Proto::Tcp) | (Self::Udp, Proto::Udp)
        )
    }

    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Any => "any",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Defaults {
    unlabeled_allow: bool,
    external_allow: bool,
}

impl Defaults {
    const DENY: Self = Self {
        unlabeled_allow: false,
        external_allow: false,
    };
    const ALLOW: Self = Self {
        unlabeled_allow: true,
        external_allow: true,
    };
}

struct Domain {
    name: &'static str,
    /// Bound cgroups, relative to the sandbox root.
    cgroups: Vec<&'static str>,
    endpoints: Vec<String>,
}

struct Edge {
    from: &'static str,
    to: &'static str,
    protocol: EdgeProto,
    /// Inclusive ranges.
    ports: Vec<(u16, u16)>,
}

impl Edge {
    fn ports_text(&self) -> String {
        let ranges: Vec<_> = self
            .ports
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("'{lo}-{hi}'")
                }
            })
            .collect();
        format!("[{}]", ranges.join(", "))
    }
}

struct Model {
    defaults: Defaults,
    domains: Vec<Domain>,
    edges: Vec<Edge>,
}

/// Which side of a flow a workload is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Domain(&'static str),
    Unlabeled,
    External,
}

/// The matrix's policy. The pods' bindings are their parents (`pods/alpha` for
/// `pods/alpha/pod1`), so pods test nearest-ancestor lookups; `plain` is bound nowhere.
fn model(defaults: Defaults, gamma_v4: &str, gamma_v6: &str) -> Model {
    let open = (OPEN_BASE, OPEN_BASE + SITES - 1);
    Model {
        defaults,
        domains: vec![
            Domain {
                name: ALPHA,
                cgroups: vec!["alpha", "pods/alpha"],
                endpoints: vec![],
            },
            Domain {
                name: BETA,
                cgroups: vec!["beta", "pods/beta"],
                endpoints: vec![],
            },
            Domain {
                name: GAMMA,
                cgroups: vec!["gamma", "pods/gamma"],
                endpoints: vec![format!("{gamma_v4}/32"), format!("{gamma_v6}/128")],
            },
        ],
        edges: vec![
            Edge {
                from: ALPHA,
                to: BETA,
                protocol: EdgeProto::Tcp,
                ports: vec![open],
            },
            Edge {
                from: BETA,
                to: GAMMA,
                protocol: EdgeProto::Udp,
                ports: vec![open],
            },
            Edge {
                from: GAMMA,
                to: ALPHA,
                protocol: EdgeProto::Any,
                ports: vec![open],
            },
            // One past the open block and one past the closed block: it opens nothing in the
            // matrix, so an off-by-one in port matching would show.
            Edge {
                from: ALPHA,
                to: GAMMA,
                protocol: EdgeProto::Tcp,
                ports: vec![
                    (OPEN_BASE + SITES, OPEN_BASE + SITES),
                    (CLOSED_BASE + SITES, CLOSED_BASE + SITES),
                ],
            },
        ],
    }
}

impl Model {
    fn yaml(&self) -> String {
        let action = |allow| if allow { "allow" } else { "deny" };
        let mut text = format!(
            "version: 1\ndefaults: {{unlabeled: {}, external: {}}}\ndomains:\n",
            action(self.defaults.unlabeled_allow),
            action(self.defaults.external_allow)
        );
        for d in &self.domains {
            let cgroups: Vec<_> = d
                .cgroups
                .iter()
                .map(|c| format!("'{{root}}/{c}'"))
                .collect();
            text += &format!(
                "  - name: {}\n    cgroups: [{}]\n",
                d.name,
                cgroups.join(", ")
            );
            if !d.endpoints.is_empty() {
                let endpoints: Vec<_> = d.endpoints.iter().map(|e| format!("'{e}'")).collect();
                text += &format!("    endpoints: [{}]\n", endpoints.join(", "));
            }
        }
        text += "federation:\n";
        for e in &self.edges {
            text += &format!(
                "  - from: {}\n    to: {}\n    protocol: {}\n    ports: {}\n    owner: matrix-test\n    reason: the domain pair matrix\n",
                e.from,
                e.to,
                e.protocol.name(),
                e.ports_text()
            );
        }
        text
    }

    /// A local workload belongs to the domain of its nearest bound ancestor cgroup.
    fn local_end(&self, cgroup: &str) -> End {
        let mut path = cgroup;
        loop {
            if let Some(d) = self.domains.iter().find(|d| d.cgroups.contains(&path)) {
                return End::Domain(d.name);
            }
            match path.rsplit_once('/') {
                Some((parent, _)) => path = parent,
                None => return End::Unlabeled,
            }
        }
    }

    /// Another machine belongs to the domain whose endpoints contain its address.
    fn remote_end(&self, addr: IpAddr) -> End {
        self.domains
            .iter()
            .find(|d| d.endpoints.iter().any(|p| prefix_contains(p, addr)))
            .map_or(End::External, |d| End::Domain(d.name))
    }

    /// Whether the flow `client -> server` on `proto`/`port` is allowed, and why.
    fn decide(&self, client: End, server: End, proto: Proto, port: u16) -> (Verdict, String) {
        let by = |allow: bool| {
            if allow {
                Verdict::Allowed
            } else {
                Verdict::Refused
            }
        };
        match (client, server) {
            (End::Domain(c), End::Domain(s)) if c == s => (Verdict::Allowed, "same domain".into()),
            (End::Domain(c), End::Domain(s)) => self.edge(c, s, proto, port),
            (End::Unlabeled, End::Domain(_)) | (End::Domain(_), End::Unlabeled) => (
                by(self.defaults.unlabeled_allow),
                "one side unlabeled: defaults.unlabeled".into(),
            ),
            (End::External, End::Domain(_)) | (End::Domain(_), End::External) => (
                by(self.defaults.external_allow),
                "one side external: defaults.external".into(),
            ),
            _ => (Verdict::Allowed, "no domain on either side".into()),
        }
    }

    fn edge(&self, from: &str, to: &str, proto: Proto, port: u16) -> (Verdict, String) {
        let open = self.edges.iter().find(|e| {
            e.from == from
                && e.to == to
                && e.protocol.covers(proto)
                && e.ports.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
        });
        match open {
            Some(e) => (
                Verdict::Allowed,
                format!("edge {} {}", e.protocol.name(), e.ports_text()),
            ),
            None => (Verdict::Refused, "cross-domain, no edge opens it".into()),
        }
    }
}

fn prefix_contains(prefix: &str, addr: IpAddr) -> bool {
    let (net, len) = prefix.split_once('/').expect("a prefix");
    let net: IpAddr = net.parse().expect("a prefix address");
    let len: u32 = len.parse().expect("a prefix length");
    let top = |bits: u128, width: u32| bits.checked_shr(width - len).unwrap_or(0);
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            top(u32::from(n).into(), 32) == top(u32::from(a).into(), 32)
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => top(n.into(), 128) == top(a.into(), 128),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// The workloads and the cells.

/// Four host services, three pods (each in its own network namespace, in a cgroup under the
/// bound `pods/DOMAIN`) and two remote machines. Site `k` serves on `OPEN_BASE + k` and
/// `CLOSED_BASE + k`.
fn sites(sb: &Sandbox, lan: &Lan, pods: &[Node; 3], remotes: [(&str, &Node); 2]) -> Vec<Site> {
    let mut sites = Vec::new();
    let mut add = |kind, name: String, cgroup: Option<String>, workload, v4: &str, v6: &str| {
        let k = u16::try_from(sites.len()).expect("few sites");
        sites.push(Site {
            kind,
            name,
            cgroup,
            workload,
            v4: v4.to_owned(),
            v6: v6.to_owned(),
            open: OPEN_BASE + k,
            closed: CLOSED_BASE + k,
        });
    };
    for name in ["alpha", "beta", "gamma", "plain"] {
        let workload = sb.workload(&sb.cgroup(name));
        let (v4, v6) = (&lan.host_v4, &lan.host_v6);
        let cgroup = Some(name.into());
        add(Kind::Host, format!("host {name}"), cgroup, workload, v4, v6);
    }
    for (name, node) in ["alpha", "beta", "gamma"].into_iter().zip(pods) {
        let rel = format!("pods/{name}/pod1");
        let workload = node.pod(sb, &sb.cgroup(&rel));
        add(
            Kind::Pod,
            format!("pod {name}"),
            Some(rel),
            workload,
            &node.v4,
            &node.v6,
        );
    }
    for (name, node) in remotes {
        let workload = node.remote().with_timeout(Some(PROBE_TIMEOUT));
        let (v4, v6) = (&node.v4, &node.v6);
        add(
            Kind::Remote,
            format!("remote {name}"),
            None,
            workload,
            v4,
            v6,
        );
    }
    assert_eq!(sites.len(), usize::from(SITES));
    sites
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    Pod,
    Remote,
}

struct Site {
    kind: Kind,
    name: String,
    /// The cgroup relative to the sandbox root; `None` for a remote machine.
    cgroup: Option<String>,
    workload: Workload,
    v4: String,
    v6: String,
    open: u16,
    closed: u16,
}

impl Site {
    fn addr(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn end(&self, model: &Model, family: Family) -> End {
        match &self.cgroup {
            Some(cgroup) => model.local_end(cgroup),
            None => model.remote_end(self.addr(family).parse().expect("an address")),
        }
    }

    /// TCP and UDP listeners on both ports and both addresses.
    fn serve(&self) -> Vec<Server> {
        let mut servers = Vec::new();
        for family in [Family::V4, Family::V6] {
            for port in [self.open, self.closed] {
                servers.push(self.workload.listen(self.addr(family), port));
                servers.push(self.workload.udp_listen(self.addr(family), port));
            }
        }
        servers
    }
}

#[derive(Debug, Clone, Copy)]
enum Family {
    V4,
    V6,
}

#[derive(Debug, Clone, Copy)]
enum Probe {
    Tcp,
    UdpSend,
    UdpConnect,
}

impl Probe {
    fn proto(self) -> Proto {
        match self {
            Self::Tcp => Proto::Tcp,
            Self::UdpSend | Self::UdpConnect => Proto::Udp,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::UdpSend => "udp-send",
            Self::UdpConnect => "udp-connect",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Refused,
}

/// How the application saw the flow: data back means allowed; EPERM (refused at the client's
/// egress), a timeout (dropped at the server's ingress) or a reset mean refused. Anything
/// else (ECONNREFUSED, other errors, no greeting) means the harness is broken: `None`.
fn verdict(probe: Probe, outcome: &Outcome) -> Option<Verdict> {
    match (probe, outcome) {
        (Probe::Tcp, Outcome::Connected(data)) if data == "hi" => Some(Verdict::Allowed),
        (Probe::UdpSend | Probe::UdpConnect, Outcome::Replied(data)) if data == "hi" => {
            Some(Verdict::Allowed)
        }
        (_, Outcome::Timeout) => Some(Verdict::Refused),
        (_, Outcome::Error(errno)) if [libc::EPERM, libc::ECONNRESET].contains(errno) => {
            Some(Verdict::Refused)
        }
        _ => None,
    }
}

struct Cell<'a> {
    client: &'a Site,
    server: &'a Site,
    probe: Probe,
    family: Family,
    port: u16,
}

impl Cell<'_> {
    fn observe(&self) -> Outcome {
        let addr = self.server.addr(self.family);
        let w = &self.client.workload;
        match self.probe {
            Probe::Tcp => w.connect(addr, self.port),
            Probe::UdpSend => w.udp_send(addr, self.port),
            Probe::UdpConnect => w.udp_connect(addr, self.port),
        }
    }
}

/// Every ordered pair but remote -> remote (traffic between two other machines never touches
/// this host), every probe, family and port.
fn cells(sites: &[Site]) -> Vec<Cell<'_>> {
    let mut cells = Vec::new();
    for client in sites {
        for server in sites {
            let both_remote = client.cgroup.is_none() && server.cgroup.is_none();
            if std::ptr::eq(client, server) || both_remote {
                continue;
            }
            for probe in [Probe::Tcp, Probe::UdpSend, Probe::UdpConnect] {
                for family in [Family::V4, Family::V6] {
                    for port in [server.open, server.closed] {
                        cells.push(Cell {
                            client,
                            server,
                            probe,
                            family,
                            port,
                        });
                    }
                }
            }
        }
    }
    cells
}

/// Runs every cell on a pool of threads; the outcomes come back in cell order.
fn observe_all(cells: &[Cell<'_>]) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let mut seen: Vec<(usize, Outcome)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(cell) = cells.get(i) else {
                            return mine;
                        };
                        mine.push((i, cell.observe()));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a matrix worker panicked"))
            .collect()
    });
    seen.sort_by_key(|(i, _)| *i);
    seen.into_iter().map(|(_, outcome)| outcome).collect()
}

/// One cell where the kernel and the model disagree.
struct Row {
    cells: [String; 8],
}

struct Run {
    title: String,
    checked: usize,
    differing: Vec<Row>,
}

fn run_matrix(sites: &[Site], model: &Model) -> Run {
    let cells = cells(sites);
    let outcomes = observe_all(&cells);
    let differing = cells
        .iter()
        .zip(&outcomes)
        .filter_map(|(cell, outcome)| differs(model, cell, outcome))
        .collect();
    Run {
        title: format!(
            "defaults unlabeled {}, external {}",
            allow_text(model.defaults.unlabeled_allow),
            allow_text(model.defaults.external_allow)
        ),
        checked: cells.len(),
        differing,
    }
}

fn allow_text(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

/// Whether the client's own `connect()`/`sendto()` must be the one refusing (`EPERM`): it
/// runs in an enforced cgroup and can tell where the flow goes. A pod cannot tell which host
/// socket a host address reaches, so pod -> host flows are judged at the host's ingress.
fn refused_at_egress(cell: &Cell<'_>) -> bool {
    match (cell.client.kind, cell.server.kind) {
        (Kind::Remote, _) | (Kind::Pod, Kind::Host) => false,
        (Kind::Host | Kind::Pod, _) => true,
    }
}

fn differs(model: &Model, cell: &Cell<'_>, outcome: &Outcome) -> Option<Row> {
    let client_end = cell.client.end(model, cell.family);
    let server_end = cell.server.end(model, cell.family);
    let (expected, mut reason) =
        model.decide(client_end, server_end, cell.probe.proto(), cell.port);
    let observed = verdict(cell.probe, outcome);
    let eperm_missing = expected == Verdict::Refused
        && refused_at_egress(cell)
        && *outcome != Outcome::Error(libc::EPERM);
    if observed == Some(expected) && !eperm_missing {
        return None;
    }
    if eperm_missing {
        reason.push_str("; the client's egress must refuse with EPERM");
    }
    let observed = match observed {
        Some(v) => format!("{v:?}: {outcome}"),
        None => format!("HARNESS: {outcome}"),
    };
    let port_kind = if cell.port == cell.server.open {
        "open"
    } else {
        "closed"
    };
    Some(Row {
        cells: [
            format!("{} ({})", cell.client.name, end_text(client_end)),
            format!("{} ({})", cell.server.name, end_text(server_end)),
            cell.probe.name().into(),
            format!("{:?}", cell.family),
            format!("{} {port_kind}", cell.port),
            format!("{expected:?}"),
            observed,
            reason,
        ],
    })
}

fn end_text(end: End) -> String {
    match end {
        End::Domain(name) => name.trim_end_matches(".example.org").to_owned(),
        End::Unlabeled => "unlabeled".into(),
        End::External => "external".into(),
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "== {}: {} of {} cells differ from the model",
            self.title,
            self.differing.len(),
            self.checked
        )?;
        if self.differing.is_empty() {
            return Ok(());
        }
        let header = [
            "client",
            "server",
            "probe",
            "family",
            "port",
            "expected",
            "observed",
            "model says",
        ]
        .map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for row in &self.differing {
            for (w, c) in widths.iter_mut().zip(&row.cells) {
                *w = (*w).max(c.len());
            }
        }
        for row in std::iter::once(&header).chain(self.differing.iter().map(|r| &r.cells)) {
            let line: Vec<_> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            writeln!(f, "  {}", line.join("  ").trim_end())?;
        }
        Ok(())
    }
}
