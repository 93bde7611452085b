//! `enforcer why` against the kernel. For every cell of a matrix (source cgroup x destination
//! x protocol) the test opens the real connection from the cgroup and asks `why` about the
//! same flow: the application's outcome and `why`'s verdict must agree, and both must agree
//! with a small model of the policy written here, reasons and domains included. Other tests
//! cover `--from-pid` (its cgroup and its network namespace), the text output and bad input.
//!
//! Ports 32000-32199 and the LAN subnets 10.232.32.0/24 and 10.232.33.0/24 belong to this
//! file.

use std::{
    fmt,
    path::Path,
    process::Output,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::Duration,
};

use enforcer_tests::{Json, Lan, Outcome, Sandbox, Server, Workload, enforcer, privileged};

const ALPHA: &str = "alpha.example.org";
const BETA: &str = "beta.example.org";
const GAMMA: &str = "gamma.example.org";
/// In audit mode: what the policy refuses to or from it is let through.
const DELTA: &str = "delta.example.org";

/// Nothing here should time out: every refusal in the matrix is an EPERM at the source.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const THREADS: usize = 8;

// ---------------------------------------------------------------------------------------
// The model: the policy below, and the brief's rules over it.

/// A window in the past, one in the future, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Open,
    Expired,
    Later,
}

struct Edge {
    id: &'static str,
    from: &'static str,
    to: &'static str,
    /// `tcp`, `udp` or `any`.
    protocol: &'static str,
    ports: (u16, u16),
    window: Window,
}

/// Every cross-domain permission of the matrix's policy, in the order the file lists them.
const EDGES: [Edge; 8] = [
    Edge {
        id: "alpha-beta-tcp",
        from: ALPHA,
        to: BETA,
        protocol: "tcp",
        ports: (32020, 32020),
        window: Window::Open,
    },
    Edge {
        id: "alpha-beta-host",
        from: ALPHA,
        to: BETA,
        protocol: "tcp",
        ports: (32023, 32023),
        window: Window::Open,
    },
    Edge {
        id: "alpha-beta-udp",
        from: ALPHA,
        to: BETA,
        protocol: "udp",
        ports: (32021, 32021),
        window: Window::Open,
    },
    Edge {
        id: "alpha-beta-expired",
        from: ALPHA,
        to: BETA,
        protocol: "any",
        ports: (32022, 32022),
        window: Window::Expired,
    },
    Edge {
        id: "alpha-beta-later",
        from: ALPHA,
        to: BETA,
        protocol: "tcp",
        ports: (32021, 32021),
        window: Window::Later,
    },
    Edge {
        id: "beta-gamma-udp",
        from: BETA,
        to: GAMMA,
        protocol: "udp",
        ports: (32030, 32030),
        window: Window::Open,
    },
    Edge {
        id: "gamma-alpha-range",
        from: GAMMA,
        to: ALPHA,
        protocol: "any",
        ports: (32000, 32019),
        window: Window::Open,
    },
    // One past gamma's local listener (an off-by-one would open it), and the remote gamma
    // host's port.
    Edge {
        id: "alpha-gamma-tcp",
        from: ALPHA,
        to: GAMMA,
        protocol: "tcp",
        ports: (32031, 32031),
        window: Window::Open,
    },
];

const ALPHA_GAMMA_REMOTE: Edge = Edge {
    id: "alpha-gamma-remote",
    from: ALPHA,
    to: GAMMA,
    protocol: "tcp",
    ports: (32060, 32060),
    window: Window::Open,
};

/// Bindings, relative to the sandbox root: `alpha/app` and `beta/inner` are not bound
/// themselves, `beta/inner` is (a deeper binding than its parent's), `plain` is not.
const BINDINGS: [(&str, &str); 4] = [
    ("alpha", ALPHA),
    ("beta", BETA),
    ("beta/inner", GAMMA),
    ("delta", DELTA),
];

fn policy_yaml(gamma_v4: &str) -> String {
    let mut text = format!(
        "version: 1
defaults: {{unlabeled: deny, external: allow}}
domains:
  - name: {ALPHA}
    cgroups: ['{{root}}/alpha']
  - name: {BETA}
    cgroups: ['{{root}}/beta']
  - name: {GAMMA}
    cgroups: ['{{root}}/beta/inner']
    endpoints: ['{gamma_v4}/32']
  - name: {DELTA}
    cgroups: ['{{root}}/delta']
    mode: audit
federation:
"
    );
    for e in EDGES.iter().chain([&ALPHA_GAMMA_REMOTE]) {
        let window = match e.window {
            Window::Open => "",
            Window::Expired => "    expires: 2020-01-01T00:00:00Z\n",
            Window::Later => "    not_before: 2099-01-01T00:00:00Z\n",
        };
        let ports = if e.ports.0 == e.ports.1 {
            e.ports.0.to_string()
        } else {
            format!("'{}-{}'", e.ports.0, e.ports.1)
        };
        text += &format!(
            "  - id: {}\n    from: {}\n    to: {}\n    protocol: {}\n    ports: [{ports}]\n    \
             owner: why-test\n    reason: the why matrix\n{window}",
            e.id, e.from, e.to, e.protocol
        );
    }
    text
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Domain(&'static str),
    Unlabeled,
    External,
}

impl End {
    fn json_kind(self) -> &'static str {
        match self {
            Self::Domain(_) => "domain",
            Self::Unlabeled => "unlabeled",
            Self::External => "external",
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Domain(d) => f.write_str(d.trim_end_matches(".example.org")),
            Self::Unlabeled => f.write_str("unlabeled"),
            Self::External => f.write_str("external"),
        }
    }
}

/// The domain of a cgroup (relative to the root): its nearest bound ancestor's.
fn local_end(cgroup: &str) -> End {
    let mut path = cgroup;
    loop {
        if let Some((_, d)) = BINDINGS.iter().find(|(c, _)| *c == path) {
            return End::Domain(d);
        }
        match path.rsplit_once('/') {
            Some((parent, _)) => path = parent,
            None => return End::Unlabeled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Allowed,
    Refused,
    Audited,
    NotJudged,
}

impl Decision {
    fn json(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::Audited => "audited",
            Self::NotJudged => "not_judged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    decision: Decision,
    reason: Option<&'static str>,
    edge: Option<&'static str>,
}

/// The model's verdict for `src -> dst` (`None`: no socket would receive it).
fn decide(src: End, dst: Option<End>, proto: Proto, port: u16) -> Expected {
    let Some(dst) = dst else {
        return Expected {
            decision: Decision::NotJudged,
            reason: None,
            edge: None,
        };
    };
    let verdict = |allow: bool, reason| Expected {
        decision: if allow {
            Decision::Allowed
        } else {
            Decision::Refused
        },
        reason: Some(reason),
        edge: None,
    };
    let mut expected = match (src, dst) {
        (End::Domain(a), End::Domain(b)) if a == b => verdict(true, "same_domain"),
        (End::Domain(a), End::Domain(b)) => {
            let covering: Vec<&Edge> = EDGES
                .iter()
                .chain([&ALPHA_GAMMA_REMOTE])
                .filter(|e| {
                    e.from == a
                        && e.to == b
                        && (e.protocol == "any" || e.protocol == proto.name())
                        && (e.ports.0..=e.ports.1).contains(&port)
                })
                .collect();
            match covering.iter().find(|e| e.window == Window::Open) {
                Some(open) => Expected {
                    edge: Some(open.id),
                    ..verdict(true, "edge_allowed")
                },
                None if covering.is_empty() => verdict(false, "no_edge"),
                None => verdict(false, "edge_expired"),
            }
        }
        (End::Unlabeled, End::Domain(_)) | (End::Domain(_), End::Unlabeled) => {
            verdict(false, "unlabeled_default")
        }
        (End::External, End::Domain(_)) | (End::Domain(_), End::External) => {
            verdict(true, "external_default")
        }
        _ => verdict(true, "no_domain"),
    };
    if expected.decision == Decision::Refused && [src, dst].contains(&End::Domain(DELTA)) {
        expected.decision = Decision::Audited;
    }
    expected
}

// ---------------------------------------------------------------------------------------
// The matrix.

/// Source cgroups, relative to the sandbox root.
const SOURCES: [&str; 5] = ["alpha/app", "beta", "beta/inner", "delta", "plain"];

/// Where a destination's receiving socket is.
#[derive(Debug, Clone, Copy)]
enum Receiver {
    /// A socket of the host in this cgroup (relative to the root), for TCP and for UDP.
    Local(&'static str),
    /// A TCP listener only; nothing receives UDP.
    LocalTcpOnly(&'static str),
    /// Nothing listens.
    Nobody,
    /// Another machine, whose address the policy classifies.
    Remote(End),
}

struct Destination {
    addr: String,
    port: u16,
    receiver: Receiver,
    /// `found_by` in `why`'s JSON, for each protocol.
    found_by: [&'static str; 2],
}

impl Destination {
    fn end(&self, proto: Proto) -> Option<End> {
        match (self.receiver, proto) {
            (Receiver::Local(cgroup), _) | (Receiver::LocalTcpOnly(cgroup), Proto::Tcp) => {
                Some(local_end(cgroup))
            }
            (Receiver::Remote(end), _) => Some(end),
            (Receiver::LocalTcpOnly(_), Proto::Udp) | (Receiver::Nobody, _) => None,
        }
    }

    fn target(&self) -> String {
        if self.addr.contains(':') {
            format!("[{}]:{}", self.addr, self.port)
        } else {
            format!("{}:{}", self.addr, self.port)
        }
    }
}

fn destinations(host_v4: &str, gamma_v4: &str, external_v4: &str) -> Vec<Destination> {
    let local = |addr: &str, port, receiver| Destination {
        addr: addr.to_owned(),
        port,
        receiver,
        found_by: ["local_socket"; 2],
    };
    vec![
        local("127.0.0.1", 32010, Receiver::Local("alpha")),
        local("127.0.0.1", 32020, Receiver::Local("beta")),
        local("127.0.0.1", 32021, Receiver::Local("beta")),
        local("::1", 32022, Receiver::Local("beta")),
        // The host's own address on the LAN, where a wildcard listener receives TCP.
        Destination {
            found_by: ["local_socket", "no_receiver"],
            ..local(host_v4, 32023, Receiver::LocalTcpOnly("beta"))
        },
        local("127.0.0.1", 32030, Receiver::Local("beta/inner")),
        local("127.0.0.1", 32040, Receiver::Local("plain")),
        local("127.0.0.1", 32050, Receiver::Local("delta")),
        Destination {
            found_by: ["no_receiver"; 2],
            ..local("127.0.0.1", 32099, Receiver::Nobody)
        },
        Destination {
            found_by: ["endpoint_prefix"; 2],
            ..local(gamma_v4, 32060, Receiver::Remote(End::Domain(GAMMA)))
        },
        Destination {
            found_by: ["external"; 2],
            ..local(external_v4, 32060, Receiver::Remote(End::External))
        },
    ]
}

struct Cell<'a> {
    /// Relative to the sandbox root.
    source: &'static str,
    /// The full cgroup path, and the place to run the probe in it.
    cgroup: String,
    workload: Workload,
    destination: &'a Destination,
    proto: Proto,
}

impl Cell<'_> {
    fn name(&self) -> String {
        format!(
            "{} {} -> {}",
            self.proto.name(),
            self.source,
            self.destination.target()
        )
    }
}

/// What the application's outcome says the kernel decided.
fn observed_decision(proto: Proto, outcome: &Outcome) -> Option<Decision> {
    match (proto, outcome) {
        (Proto::Tcp, Outcome::Connected(data)) | (Proto::Udp, Outcome::Replied(data))
            if data == "hi" =>
        {
            Some(Decision::Allowed)
        }
        (_, &Outcome::EPERM) => Some(Decision::Refused),
        (_, &Outcome::REFUSED) => Some(Decision::NotJudged),
        _ => None,
    }
}

#[test]
fn why_agrees_with_real_connections_in_every_cell() {
    if !privileged("why_agrees_with_real_connections_in_every_cell") {
        return;
    }
    let mut sb = Sandbox::new("why-matrix");
    sb.set_probe_timeout(PROBE_TIMEOUT);
    let lan = Lan::new(32);
    let (gamma_node, external_node) = (lan.node(2), lan.node(3));
    for cgroup in SOURCES.iter().chain(&["alpha"]) {
        sb.cgroup(cgroup);
    }
    let policy = sb.policy("why.yaml", &policy_yaml(&gamma_node.v4));
    sb.start_daemon(&policy);
    let mut servers: Vec<Server> = Vec::new();
    for (cgroup, addr, port) in [
        ("alpha", "127.0.0.1", 32010),
        ("beta", "127.0.0.1", 32020),
        ("beta", "127.0.0.1", 32021),
        ("beta", "::1", 32022),
        ("beta/inner", "127.0.0.1", 32030),
        ("plain", "127.0.0.1", 32040),
        ("delta", "127.0.0.1", 32050),
    ] {
        let cgroup = format!("{}/{cgroup}", sb.root);
        servers.push(sb.listen(&cgroup, addr, port));
        servers.push(sb.udp_listen(&cgroup, addr, port));
    }
    servers.push(sb.listen(&format!("{}/beta", sb.root), "0.0.0.0", 32023));
    for node in [&gamma_node, &external_node] {
        servers.push(node.remote().listen(&node.v4, 32060));
        servers.push(node.remote().udp_listen(&node.v4, 32060));
    }

    let destinations = destinations(&lan.host_v4, &gamma_node.v4, &external_node.v4);
    let mut cells: Vec<Cell<'_>> = Vec::new();
    for source in SOURCES {
        let cgroup = format!("{}/{source}", sb.root);
        for destination in &destinations {
            for proto in [Proto::Tcp, Proto::Udp] {
                cells.push(Cell {
                    source,
                    cgroup: cgroup.clone(),
                    workload: sb.workload(&cgroup),
                    destination,
                    proto,
                });
            }
        }
    }
    let socket = sb.socket.as_path();
    let next = AtomicUsize::new(0);
    let problems: Vec<String> = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let mut problems = Vec::new();
                    while let Some(cell) = cells.get(next.fetch_add(1, Ordering::Relaxed)) {
                        problems.extend(check_cell(socket, cell));
                    }
                    problems
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a matrix worker panicked"))
            .collect()
    });
    assert!(
        problems.is_empty(),
        "{} of {} cells disagree:\n{}",
        problems.len(),
        cells.len(),
        problems.join("\n")
    );
    println!(
        "checked {} cells: the kernel, `why` and the model agree",
        cells.len()
    );
}

/// Runs one cell; returns what disagrees, if anything.
fn check_cell(socket: &Path, cell: &Cell<'_>) -> Option<String> {
    let d = cell.destination;
    let workload = &cell.workload;
    // Connected UDP: a refusal is the connect()'s EPERM, a clear answer at the sender.
    let outcome = match cell.proto {
        Proto::Tcp => workload.connect(&d.addr, d.port),
        Proto::Udp => workload.udp_connect(&d.addr, d.port),
    };
    let why = why_json(
        socket,
        &["--from-cgroup", &cell.cgroup],
        &d.target(),
        cell.proto,
    );
    let src = local_end(cell.source);
    let dst = d.end(cell.proto);
    let expected = decide(src, dst, cell.proto, d.port);
    let mut wrong = Vec::new();
    let observed = observed_decision(cell.proto, &outcome);
    let kernel_agrees = match expected.decision {
        // Audit mode lets the flow through: the application sees it allowed.
        Decision::Audited => observed == Some(Decision::Allowed),
        decision => observed == Some(decision),
    };
    if !kernel_agrees {
        wrong.push(format!(
            "the application saw {outcome}, the model says {:?}",
            expected.decision
        ));
    }
    let text = |path: &[&str]| field(&why, path).and_then(Json::as_str).map(str::to_owned);
    let decision = text(&["verdict", "decision"]);
    if decision.as_deref() != Some(expected.decision.json()) {
        wrong.push(format!(
            "why says {decision:?}, expected {}",
            expected.decision.json()
        ));
    }
    if text(&["verdict", "reason"]).as_deref() != expected.reason {
        wrong.push(format!(
            "why's reason {:?}, expected {:?}",
            text(&["verdict", "reason"]),
            expected.reason
        ));
    }
    if text(&["verdict", "edge"]).as_deref() != expected.edge {
        wrong.push(format!(
            "why's edge {:?}, expected {:?}",
            text(&["verdict", "edge"]),
            expected.edge
        ));
    }
    check_end(&why, &["source", "end"], Some(src), "source", &mut wrong);
    check_end(
        &why,
        &["destination", "end"],
        dst,
        "destination",
        &mut wrong,
    );
    let found_by = d.found_by[usize::from(cell.proto == Proto::Udp)];
    if text(&["destination", "found_by"]).as_deref() != Some(found_by) {
        wrong.push(format!(
            "why's found_by {:?}, expected {found_by}",
            text(&["destination", "found_by"])
        ));
    }
    check_edges(&why, src, dst, cell.proto, d.port, &mut wrong);
    (!wrong.is_empty()).then(|| {
        format!(
            "  {} (model: {src} -> {}): {}",
            cell.name(),
            dst.map_or_else(|| "no receiver".to_owned(), |e| e.to_string()),
            wrong.join("; ")
        )
    })
}

fn check_end(why: &Json, path: &[&str], end: Option<End>, side: &str, wrong: &mut Vec<String>) {
    let Some(end) = end else {
        if !field(why, path).is_some_and(Json::is_null) {
            wrong.push(format!("why classifies the {side}, which nothing judges"));
        }
        return;
    };
    let at = |key: &str| {
        let mut full = path.to_vec();
        full.push(key);
        field(why, &full).and_then(Json::as_str).map(str::to_owned)
    };
    let domain = match end {
        End::Domain(d) => Some(d.to_owned()),
        End::Unlabeled | End::External => None,
    };
    if at("kind").as_deref() != Some(end.json_kind()) || at("domain") != domain {
        wrong.push(format!(
            "why's {side} is {:?} {:?}, expected {end}",
            at("kind"),
            at("domain")
        ));
    }
    let mode = matches!(end, End::Domain(DELTA)).then_some("audit");
    if matches!(end, End::Domain(_)) && at("mode").as_deref() != Some(mode.unwrap_or("enforce")) {
        wrong.push(format!("why's {side} mode is {:?}", at("mode")));
    }
}

/// Between two different domains `why` lists every port range of every edge of the pair,
/// each with whether it matches; elsewhere it lists none.
fn check_edges(
    why: &Json,
    src: End,
    dst: Option<End>,
    proto: Proto,
    port: u16,
    wrong: &mut Vec<String>,
) {
    let listed = field(why, &["edges"]).map_or(&[][..], Json::as_array);
    let pair: Vec<&Edge> = match (src, dst) {
        (End::Domain(a), Some(End::Domain(b))) if a != b => EDGES
            .iter()
            .chain([&ALPHA_GAMMA_REMOTE])
            .filter(|e| e.from == a && e.to == b)
            .collect(),
        _ => Vec::new(),
    };
    let ids: Vec<&str> = listed
        .iter()
        .filter_map(|r| r.get("edge").and_then(Json::as_str))
        .collect();
    let mut expected_ids: Vec<&str> = pair.iter().map(|e| e.id).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    expected_ids.sort_unstable();
    if sorted != expected_ids {
        wrong.push(format!(
            "why lists edges {ids:?}, expected {expected_ids:?}"
        ));
        return;
    }
    for range in listed {
        let id = range.get("edge").and_then(Json::as_str).unwrap_or("?");
        let Some(edge) = pair.iter().find(|e| e.id == id) else {
            continue;
        };
        let expect = [
            (
                "protocol_matches",
                edge.protocol == "any" || edge.protocol == proto.name(),
            ),
            (
                "port_matches",
                (edge.ports.0..=edge.ports.1).contains(&port),
            ),
        ];
        for (key, value) in expect {
            if range.get(key).and_then(Json::as_bool) != Some(value) {
                wrong.push(format!("edge {id}: {key} should be {value}"));
            }
        }
        let window = match edge.window {
            Window::Open => "active",
            Window::Expired => "expired",
            Window::Later => "not-yet-valid",
        };
        if range.get("window").and_then(Json::as_str) != Some(window) {
            wrong.push(format!("edge {id}: window should be {window}: {range}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// --from-pid, text output, bad input.

const SMALL_POLICY: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: alpha.example.org
    cgroups: ['{root}/alpha']
  - name: beta.example.org
    cgroups: ['{root}/beta']
federation:
  - id: alpha-to-beta
    from: alpha.example.org
    to: beta.example.org
    protocol: tcp
    ports: ['32110-32111']
    owner: why-test
    reason: the from-pid and text tests
  - id: alpha-to-beta-old
    from: alpha.example.org
    to: beta.example.org
    protocol: udp
    ports: [32112]
    owner: why-test
    reason: an edge that expired long ago
    expires: 2020-01-01T00:00:00Z
";

#[test]
fn why_from_pid_uses_the_process_cgroup_and_network_namespace() {
    if !privileged("why_from_pid_uses_the_process_cgroup_and_network_namespace") {
        return;
    }
    let mut sb = Sandbox::new("why-pid");
    sb.set_probe_timeout(PROBE_TIMEOUT);
    let lan = Lan::new(33);
    let node = lan.node(2);
    let app = sb.cgroup("alpha/app");
    let pod = sb.cgroup("alpha/pod");
    let beta = sb.cgroup("beta");
    let policy = sb.policy("p.yaml", SMALL_POLICY);
    sb.start_daemon(&policy);
    let _loopback = sb.listen(&beta, "127.0.0.1", 32110);
    let _wildcard = sb.listen(&beta, "0.0.0.0", 32111);

    // A process on the host: its cgroup's domain, the host's sockets.
    let host_process = sb.hold_socket(&app, "127.0.0.1", 32199);
    let pid = host_process.pid().to_string();
    let why = why_json(
        &sb.socket,
        &["--from-pid", &pid],
        "127.0.0.1:32110",
        Proto::Tcp,
    );
    assert_eq!(str_at(&why, &["source", "cgroup"]), app, "{why}");
    assert_eq!(
        field(&why, &["source", "pid"]).and_then(Json::as_u64),
        pid.parse().ok()
    );
    assert_eq!(
        field(&why, &["source", "host_netns"]).and_then(Json::as_bool),
        Some(true)
    );
    assert_eq!(str_at(&why, &["source", "end", "domain"]), ALPHA);
    let nearest = field(&why, &["source", "bindings"]).map_or(&[][..], Json::as_array);
    assert_eq!(
        nearest
            .last()
            .and_then(|b| b.get("cgroup"))
            .and_then(Json::as_str),
        Some(format!("{}/alpha", sb.root).as_str()),
        "the binding found is alpha's, the nearest bound ancestor: {why}"
    );
    assert_eq!(str_at(&why, &["destination", "found_by"]), "local_socket");
    assert_eq!(str_at(&why, &["destination", "end", "domain"]), BETA);
    assert_eq!(str_at(&why, &["verdict", "decision"]), "allowed");
    assert_eq!(str_at(&why, &["verdict", "edge"]), "alpha-to-beta");
    let by_cgroup = why_json(
        &sb.socket,
        &["--from-cgroup", &app],
        "127.0.0.1:32110",
        Proto::Tcp,
    );
    assert_eq!(by_cgroup.get("verdict"), why.get("verdict"));

    // A pod: the same domain, but its own network namespace, where nothing listens on
    // loopback and the host's address names no domain.
    let pod_workload = node.pod(&sb, &pod);
    let pod_process = pod_workload.hold_socket("127.0.0.1", 32199);
    let pid = pod_process.pid().to_string();
    let why = why_json(
        &sb.socket,
        &["--from-pid", &pid],
        "127.0.0.1:32110",
        Proto::Tcp,
    );
    assert_eq!(
        field(&why, &["source", "host_netns"]).and_then(Json::as_bool),
        Some(false)
    );
    assert_eq!(str_at(&why, &["source", "end", "domain"]), ALPHA);
    assert_eq!(
        str_at(&why, &["destination", "found_by"]),
        "no_receiver",
        "{why}"
    );
    assert_eq!(str_at(&why, &["verdict", "decision"]), "not_judged");
    assert_eq!(
        pod_workload.connect("127.0.0.1", 32110),
        Outcome::REFUSED,
        "nothing listens on the pod's loopback"
    );
    let host_address = format!("{}:32111", lan.host_v4);
    let why = why_json(&sb.socket, &["--from-pid", &pid], &host_address, Proto::Tcp);
    assert_eq!(
        str_at(&why, &["destination", "found_by"]),
        "host_address",
        "{why}"
    );
    assert_eq!(str_at(&why, &["verdict", "decision"]), "not_judged");
    let from_host = why_json(
        &sb.socket,
        &["--from-cgroup", &app],
        &host_address,
        Proto::Tcp,
    );
    assert_eq!(
        str_at(&from_host, &["destination", "found_by"]),
        "local_socket"
    );
    assert_eq!(str_at(&from_host, &["verdict", "decision"]), "allowed");
    assert_eq!(sb.connect(&app, &lan.host_v4, 32111), Outcome::greeted());
}

#[test]
fn why_text_output_says_how_each_part_was_found() {
    if !privileged("why_text_output_says_how_each_part_was_found") {
        return;
    }
    let mut sb = Sandbox::new("why-text");
    let app = sb.cgroup("alpha/app");
    let beta = sb.cgroup("beta");
    let policy = sb.policy("p.yaml", SMALL_POLICY);
    sb.start_daemon(&policy);
    let _tcp = sb.listen(&beta, "127.0.0.1", 32120);
    let _udp = sb.udp_listen(&beta, "127.0.0.1", 32112);

    let out = why_text(
        &sb.socket,
        &["--from-cgroup", &app, "--to", "127.0.0.1:32120"],
    );
    for needle in [
        format!("tcp 127.0.0.1:32120 from cgroup {app}"),
        format!("source: {ALPHA}"),
        format!("nearest bound ancestor: {}/alpha", sb.root),
        format!("destination: {BETA}"),
        "the TCP listener on 127.0.0.1:32120".to_owned(),
        format!("edges from {ALPHA} to {BETA} (2 port range(s)):"),
        "alpha-to-beta: tcp 32110-32111: protocol yes, port no, valid, no expiry".to_owned(),
        "alpha-to-beta-old: udp 32112: protocol no, port no, expired at 2020-01-01T00:00:00Z"
            .to_owned(),
        "verdict: REFUSED (no_edge)".to_owned(),
    ] {
        assert!(out.contains(&needle), "missing {needle:?} in:\n{out}");
    }

    let out = why_text(
        &sb.socket,
        &[
            "--from-cgroup",
            &app,
            "--to",
            "127.0.0.1:32112",
            "--protocol",
            "udp",
        ],
    );
    for needle in [
        "the bound UDP socket on 127.0.0.1:32112",
        "alpha-to-beta: tcp 32110-32111: protocol no, port no, valid, no expiry",
        "alpha-to-beta-old: udp 32112: protocol yes, port yes, expired at 2020-01-01T00:00:00Z",
        "verdict: REFUSED (edge_expired)",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert_eq!(sb.udp_connect(&app, "127.0.0.1", 32112), Outcome::EPERM);

    // Same domain: no edges considered, no default applied.
    let out = why_text(
        &sb.socket,
        &["--from-cgroup", &beta, "--to", "127.0.0.1:32120"],
    );
    for needle in ["verdict: ALLOWED (same_domain)", "(not applied)"] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert!(
        !out.contains("edges from"),
        "no edges for one domain:\n{out}"
    );
}

#[test]
fn why_refuses_bad_input_and_changes_nothing() {
    if !privileged("why_refuses_bad_input_and_changes_nothing") {
        return;
    }
    let mut sb = Sandbox::new("why-bad");
    let app = sb.cgroup("alpha/app");
    let policy = sb.policy("p.yaml", SMALL_POLICY);
    sb.start_daemon(&policy);
    let generation = sb.status().get("generation").and_then(Json::as_u64);
    let gone = std::process::Command::new("true")
        .spawn()
        .expect("spawning true");
    let gone_pid = gone.id().to_string();
    let mut gone = gone;
    gone.wait().expect("reaping true");

    let missing = format!("{}/no-such-cgroup", sb.root);
    for (args, message) in [
        (
            vec!["--from-cgroup", missing.as_str(), "--to", "127.0.0.1:80"],
            "no cgroup",
        ),
        (
            vec!["--from-cgroup", "relative/path", "--to", "127.0.0.1:80"],
            "must start with `/`",
        ),
        (
            vec!["--from-cgroup", "/a/../b", "--to", "127.0.0.1:80"],
            "`..` component",
        ),
        (
            vec!["--from-pid", gone_pid.as_str(), "--to", "127.0.0.1:80"],
            "no process has pid",
        ),
        (
            vec!["--from-pid", "0", "--to", "127.0.0.1:80"],
            "no process has pid",
        ),
        (
            vec!["--from-cgroup", app.as_str(), "--to", "127.0.0.1"],
            "expected an address and a port",
        ),
        (
            vec!["--from-cgroup", app.as_str(), "--to", "localhost:80"],
            "expected an address and a port",
        ),
        (
            vec!["--from-cgroup", app.as_str(), "--to", "[::1]"],
            "expected an address and a port",
        ),
    ] {
        let out = why_command(&sb.socket, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "why {args:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "why {args:?} printed {:?}",
            out.stdout
        );
        assert!(
            stderr.contains(message),
            "why {args:?}: {stderr:?} lacks {message:?}"
        );
    }
    assert_eq!(
        sb.status().get("generation").and_then(Json::as_u64),
        generation,
        "bad questions change nothing"
    );

    // The same cgroup in every form the policy and --cgroup-root take it.
    let plain = why_json(
        &sb.socket,
        &["--from-cgroup", &app],
        "127.0.0.1:80",
        Proto::Tcp,
    );
    let dir = enforcer_tests::cgroup_mount().join(app.trim_start_matches('/'));
    for form in [format!("0::{app}"), dir.display().to_string()] {
        let other = why_json(
            &sb.socket,
            &["--from-cgroup", &form],
            "127.0.0.1:80",
            Proto::Tcp,
        );
        assert_eq!(
            other.get("source"),
            plain.get("source"),
            "--from-cgroup {form}"
        );
    }
    // A cgroup outside the enforced subtree: nothing judges its flows at the source.
    let outside = why_json(
        &sb.socket,
        &["--from-cgroup", "/"],
        "127.0.0.1:80",
        Proto::Tcp,
    );
    assert_eq!(
        field(&outside, &["source", "enforced"]).and_then(Json::as_bool),
        Some(false)
    );
    assert_eq!(str_at(&outside, &["verdict", "decision"]), "not_judged");
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn why_command(socket: &Path, args: &[&str]) -> Output {
    std::process::Command::new(enforcer())
        .arg("why")
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("running enforcer why")
}

fn why_text(socket: &Path, args: &[&str]) -> String {
    let out = why_command(socket, args);
    assert!(
        out.status.success(),
        "why {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn why_json(socket: &Path, from: &[&str], to: &str, proto: Proto) -> Json {
    let mut args = from.to_vec();
    args.extend(["--to", to, "--protocol", proto.name(), "-o", "json"]);
    let out = why_command(socket, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "why {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Json::parse(&stdout).unwrap_or_else(|e| panic!("why {args:?} printed no JSON ({e}): {stdout}"))
}

fn field<'a>(json: &'a Json, path: &[&str]) -> Option<&'a Json> {
    path.iter().try_fold(json, |j, key| j.get(key))
}

fn str_at(json: &Json, path: &[&str]) -> String {
    field(json, path)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("no string at {path:?} in {json}"))
        .to_owned()
}
