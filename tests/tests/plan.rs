//! `enforcer policy plan FILE`: what applying a file would change (defaults, domains,
//! bindings, edges) and which live connections it would end, computed by the running daemon
//! without applying anything. Each test checks that a plan leaves everything as it was (the
//! generation, the policy maps, the edge record on disk, the live connections), and the first
//! one checks that `policy apply` then does exactly what the plan said.
//!
//! Live flows are probes in the stream modes (see `lifecycle.rs`): tests synchronise on what
//! the probes print and never sleep. Every test uses its own ports (32200-32399 belong to
//! this file).

use std::{fs, path::Path, time::Duration};

use enforcer_tests::{Json, Outcome, Sandbox, privileged};

const PROD: &str = "prod.example.org";
const STAGING: &str = "staging.example.org";
const LOCALHOST: &str = "127.0.0.1";
/// How long an allowed stream gets to show that it flows.
const FLOWING: Duration = Duration::from_secs(5);
/// How long a flow whose edge went away gets to end.
const ENDING: Duration = Duration::from_secs(5);
/// What a TCP client may see when the daemon destroys its connection.
const TCP_ENDED: [&str; 2] = ["ECONNABORTED", "ECONNRESET"];

/// A staging -> prod edge of the policy file.
fn edge(id: &str, protocol: &str, ports: &str) -> String {
    format!(
        "  - {{id: {id}, from: {STAGING}, to: {PROD}, protocol: {protocol}, ports: {ports}, \
         owner: platform-team, reason: plan test}}\n"
    )
}

/// A policy with prod and staging (prod also bound to `extra_prod` cgroups, with `endpoints`),
/// the domains in `more`, and `edges`.
fn policy(
    defaults: &str,
    extra_prod: &str,
    endpoints: &str,
    more: &str,
    edges: &[String],
) -> String {
    format!(
        "version: 1
defaults: {{{defaults}}}
domains:
  - name: {PROD}
    cgroups: ['{{root}}/prod'{extra_prod}]
    endpoints: [{endpoints}]
  - name: {STAGING}
    cgroups: ['{{root}}/staging']
{more}federation:
{}",
        edges.concat()
    )
}

const ALLOW: &str = "unlabeled: allow, external: allow";

/// What a plan must leave as it was.
#[derive(Debug, PartialEq)]
struct Enforced {
    generation: u64,
    policy_file: String,
    /// The policy maps' entry counts (bindings, endpoints, edges, modes, domain registry).
    maps: Vec<(String, u64)>,
    domains: Vec<String>,
    /// Every edge listed, with its state and deadline.
    edges: Vec<String>,
    /// `--state-dir/edges.json`, as it is on disk.
    record: String,
}

fn enforced(sb: &Sandbox) -> Enforced {
    let status = sb.status();
    let strings = |key: &str, field: &str| -> Vec<String> {
        status
            .get(key)
            .map(Json::as_array)
            .unwrap_or_default()
            .iter()
            .map(|item| {
                item.get(field)
                    .map_or_else(String::new, ToString::to_string)
            })
            .collect()
    };
    let maps = status
        .get("maps")
        .map(Json::as_array)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let name = m.get("map")?.as_str()?;
            let entries = m.get("entries")?.as_u64()?;
            // Local addresses come and go with the host's interfaces, not with policy.
            (name != "ENF_ADDRS").then(|| (name.to_owned(), entries))
        })
        .collect();
    let edges = sb
        .edges()
        .get("edges")
        .map(Json::as_array)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let f = |k: &str| e.get(k).map_or_else(String::new, ToString::to_string);
            format!("{} {} {}", f("id"), f("state"), f("expires"))
        })
        .collect();
    Enforced {
        generation: status
            .get("generation")
            .and_then(Json::as_u64)
            .unwrap_or_else(|| panic!("status has a generation: {status}")),
        policy_file: status
            .get("policy_file")
            .map_or_else(String::new, ToString::to_string),
        maps,
        domains: strings("domains", "name"),
        edges,
        record: fs::read_to_string(sb.state_dir.join("edges.json")).unwrap_or_default(),
    }
}

/// `enforcer policy plan FILE EXTRA`: (exit code, stdout, stderr).
fn plan(sb: &Sandbox, file: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["policy", "plan", file.to_str().expect("utf-8 path")];
    args.extend(extra);
    let out = sb.enforcer(&args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `enforcer policy plan FILE -o json`, which must succeed, parsed.
fn plan_json(sb: &Sandbox, file: &Path) -> Json {
    let (code, stdout, stderr) = plan(sb, file, &["-o", "json"]);
    assert_eq!(
        code,
        Some(0),
        "policy plan -o json exits 0; stderr: {stderr}"
    );
    Json::parse(&stdout).unwrap_or_else(|e| panic!("plan -o json printed no JSON ({e}): {stdout}"))
}

fn json(text: &str) -> Json {
    Json::parse(text).unwrap_or_else(|e| panic!("bad expected JSON ({e}): {text}"))
}

fn keys(object: &Json) -> Vec<&str> {
    match object {
        Json::Object(members) => members.iter().map(|(k, _)| k.as_str()).collect(),
        other => panic!("expected a JSON object, got {other}"),
    }
}

/// The member `key` of `object`, which must exist.
fn member<'a>(object: &'a Json, key: &str) -> &'a Json {
    object
        .get(key)
        .unwrap_or_else(|| panic!("no `{key}` in {object}"))
}

/// The destination port of a text plan's connection line
/// (`  tcp LOCAL <-> REMOTE: FROM -> TO port N, ...`).
fn line_port(line: &str) -> Option<u16> {
    line.split(" port ").nth(1)?.split(',').next()?.parse().ok()
}

#[test]
fn plan_lists_changes_and_connections_then_apply_does_exactly_that() {
    if !privileged("plan_lists_changes_and_connections_then_apply_does_exactly_that") {
        return;
    }
    let mut sb = Sandbox::new("plan-apply");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    sb.cgroup("dev");
    let before = sb.policy(
        "before.yaml",
        &policy(
            ALLOW,
            "",
            "",
            "",
            &[
                edge("migrations", "tcp", "[32200, 32201, 32203]"),
                edge("reports", "tcp", "[32202]"),
            ],
        ),
    );
    let dev = "  - name: dev.example.org\n    cgroups: ['{root}/dev']\n";
    let after = sb.policy(
        "after.yaml",
        &policy(
            ALLOW,
            ", '{root}/prod2'",
            "",
            dev,
            &[
                edge("reports", "tcp", "[32202]"),
                "  - {id: dev-reports, from: dev.example.org, to: prod.example.org, protocol: \
                 tcp, ports: [32210], owner: platform-team, reason: plan test}\n"
                    .to_owned(),
            ],
        ),
    );
    sb.start_daemon(&before);
    let mut sinks: Vec<_> = [32200, 32201, 32202]
        .iter()
        .map(|&port| sb.sink(&prod, LOCALHOST, port))
        .collect();
    let _server = sb.listen(&prod, LOCALHOST, 32203);
    let mut streams: Vec<_> = [32200, 32201, 32202]
        .iter()
        .map(|&port| sb.stream(&staging, LOCALHOST, port))
        .collect();
    for (sink, port) in sinks.iter_mut().zip([32200, 32201, 32202]) {
        sink.expect_received(
            3,
            FLOWING,
            &format!("staging -> prod:{port} before the plan"),
        );
    }
    let was = enforced(&sb);

    let (code, stdout, stderr) = plan(&sb, &after, &[]);
    eprintln!("plan_lists_changes_and_connections_then_apply_does_exactly_that:\n{stdout}");
    assert_eq!(
        code,
        Some(0),
        "policy plan exits 0; stderr: {stderr}; stdout: {stdout}"
    );
    let root = &sb.root;
    for expected in [
        format!("  + dev.example.org (enforce): cgroups {root}/dev; endpoints none\n"),
        format!("  ~ {PROD}: + cgroup {root}/prod2\n"),
        format!(
            "  + dev-reports dev.example.org -> {PROD} tcp 32210 (owner platform-team: plan test)\n"
        ),
        format!(
            "  - migrations {STAGING} -> {PROD} tcp 32200,32201,32203 (owner platform-team: plan \
             test)\n"
        ),
    ] {
        assert!(
            stdout.contains(&expected),
            "the plan lists `{}`:\n{stdout}",
            expected.trim_end()
        );
    }
    for unchanged in ["reports", STAGING] {
        assert!(
            !["  + ", "  - ", "  ~ "]
                .iter()
                .any(|sign| stdout.contains(&format!("{sign}{unchanged} "))
                    || stdout.contains(&format!("{sign}{unchanged}:"))),
            "{unchanged} is unchanged and not listed:\n{stdout}"
        );
    }
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  tcp ") || l.starts_with("  udp "))
        .collect();
    let mut ports: Vec<u16> = lines.iter().filter_map(|l| line_port(l)).collect();
    ports.sort_unstable();
    assert_eq!(
        ports,
        [32200, 32201],
        "the plan lists exactly the two connections over `migrations`:\n{stdout}"
    );
    for line in &lines {
        assert!(
            line.contains(&format!("{STAGING} -> {PROD}"))
                && line.contains("allowed now by edge migrations; refused: no_edge"),
            "a connection line names its domains, its edge and why it would be refused: {line}"
        );
    }
    assert_eq!(
        stdout.lines().last(),
        Some("4 change(s); applying would end 2 live connection(s)"),
        "the plan ends with its summary:\n{stdout}"
    );

    // Nothing was applied: every stream still flows and the daemon's state is the same.
    for (sink, port) in sinks.iter_mut().zip([32200, 32201, 32202]) {
        let have = sink.received_count();
        sink.expect_received(
            have + 3,
            FLOWING,
            &format!("staging -> prod:{port} after the plan"),
        );
    }
    for stream in &mut streams {
        stream.expect_not_ended("a stream after `policy plan`");
    }
    assert_eq!(enforced(&sb), was, "`policy plan` changed what is enforced");

    let (generation, stderr) = sb.apply_reporting(&after);
    assert_eq!(
        generation,
        was.generation + 1,
        "apply makes the next generation"
    );
    assert!(
        stderr.contains("ended 2 connection(s)"),
        "apply ends the 2 connections the plan listed: {stderr}"
    );
    for (stream, port) in streams.iter_mut().zip([32200, 32201]) {
        stream.expect_end(
            ENDING,
            &TCP_ENDED,
            &format!("staging -> prod:{port} after apply removed `migrations`"),
        );
    }
    let survivor = &mut sinks[2];
    let have = survivor.received_count();
    survivor.expect_received(
        have + 3,
        FLOWING,
        "staging -> prod:32202 (edge `reports`) after apply",
    );
    streams[2].expect_not_ended("staging -> prod:32202 (edge `reports`) after apply");
    let outcome = sb.connect(&staging, LOCALHOST, 32203);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "a new staging -> prod:32203 connection after apply: the application saw {outcome}"
    );
    let (code, stdout, _) = plan(&sb, &after, &[]);
    assert_eq!(
        (code, stdout.lines().last()),
        (Some(0), Some("no changes")),
        "planning the file just applied:\n{stdout}"
    );
}

#[test]
fn plan_json_has_a_stable_schema() {
    if !privileged("plan_json_has_a_stable_schema") {
        return;
    }
    let mut sb = Sandbox::new("plan-json");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let old = "  - name: old.example.org\n";
    let before = sb.policy(
        "before.yaml",
        &policy(
            ALLOW,
            "",
            "",
            old,
            &[
                edge("migrations", "any", "[32220, 32221]"),
                edge("reports", "tcp", "[32222]"),
            ],
        ),
    );
    let dev = "  - name: dev.example.org\n    cgroups: ['{root}/dev']\n";
    let after = sb.policy(
        "after.yaml",
        &policy(
            "unlabeled: deny, external: allow",
            "",
            "10.99.0.0/16",
            dev,
            &[
                "  - {id: reports, from: staging.example.org, to: prod.example.org, protocol: \
                 tcp, ports: [32222, 32223], owner: security-team, reason: plan test}\n"
                    .to_owned(),
                "  - {id: dev-reports, from: dev.example.org, to: prod.example.org, protocol: \
                 tcp, ports: [32230], owner: platform-team, reason: plan test}\n"
                    .to_owned(),
            ],
        ),
    );
    sb.start_daemon(&before);
    let grant = sb.grant(&[
        "--from",
        STAGING,
        "--to",
        PROD,
        "--protocol",
        "tcp",
        "--ports",
        "32229",
        "--ttl",
        "10m",
        "--owner",
        "oncall",
        "--reason",
        "break glass",
        "--id",
        "break-glass",
    ]);
    assert_eq!(grant, "break-glass");
    let mut tcp_sink = sb.sink(&prod, LOCALHOST, 32220);
    let mut udp_sink = sb.udp_sink(&prod, LOCALHOST, 32221);
    let _tcp = sb.stream(&staging, LOCALHOST, 32220);
    let _udp = sb.udp_stream(&staging, LOCALHOST, 32221);
    tcp_sink.expect_received(3, FLOWING, "tcp staging -> prod:32220 before the plan");
    udp_sink.expect_received(
        3,
        FLOWING,
        "connected udp staging -> prod:32221 before the plan",
    );
    let was = enforced(&sb);

    let plan = plan_json(&sb, &after);
    assert_eq!(
        keys(&plan),
        [
            "file",
            "generation",
            "defaults",
            "domains",
            "edges",
            "grants",
            "connections",
            "changes",
            "notes"
        ],
        "top-level fields: {plan}"
    );
    assert_eq!(member(&plan, "file").as_str(), after.to_str());
    assert_eq!(member(&plan, "generation").as_u64(), Some(was.generation));
    assert_eq!(
        member(&plan, "defaults"),
        &json(r#"[{"field": "unlabeled", "before": "allow", "after": "deny"}]"#)
    );
    let root = &sb.root;
    let domains = member(&plan, "domains");
    assert_eq!(keys(domains), ["added", "removed", "altered"]);
    assert_eq!(
        member(domains, "added"),
        &json(&format!(
            r#"[{{"name": "dev.example.org", "mode": "enforce", "cgroups": ["{root}/dev"], "endpoints": []}}]"#
        ))
    );
    assert_eq!(
        member(domains, "removed"),
        &json(
            r#"[{"name": "old.example.org", "mode": "enforce", "cgroups": [], "endpoints": []}]"#
        )
    );
    assert_eq!(
        member(domains, "altered"),
        &json(&format!(
            r#"[{{"name": "{PROD}", "mode": null, "cgroups": {{"added": [], "removed": []}},
                "endpoints": {{"added": ["10.99.0.0/16"], "removed": []}}}}]"#
        ))
    );
    let edges = member(&plan, "edges");
    assert_eq!(keys(edges), ["added", "removed", "altered"]);
    assert_eq!(
        member(edges, "added"),
        &json(&format!(
            r#"[{{"id": "dev-reports", "from": "dev.example.org", "to": "{PROD}", "protocol": "tcp",
                "ports": ["32230"], "owner": "platform-team", "reason": "plan test",
                "not_before": null, "expires": null}}]"#
        ))
    );
    assert_eq!(
        member(edges, "removed"),
        &json(&format!(
            r#"[{{"id": "migrations", "from": "{STAGING}", "to": "{PROD}", "protocol": "any",
                "ports": ["32220", "32221"], "owner": "platform-team", "reason": "plan test",
                "not_before": null, "expires": null}}]"#
        ))
    );
    assert_eq!(
        member(edges, "altered"),
        &json(
            r#"[{"id": "reports", "changes": [
                {"field": "ports", "before": "32222", "after": "32222,32223"},
                {"field": "owner", "before": "platform-team", "after": "security-team"}]}]"#
        )
    );
    let grants = member(&plan, "grants").as_array();
    assert_eq!(grants.len(), 1, "the grant is listed as kept: {plan}");
    assert_eq!(
        keys(&grants[0]),
        [
            "id",
            "from",
            "to",
            "protocol",
            "ports",
            "owner",
            "reason",
            "not_before",
            "expires"
        ]
    );
    assert_eq!(member(&grants[0], "id").as_str(), Some("break-glass"));
    assert!(
        member(&grants[0], "expires").as_time().is_some(),
        "a grant has an RFC 3339 expiry: {}",
        grants[0]
    );

    let connections = member(&plan, "connections").as_array();
    assert_eq!(connections.len(), 2, "the tcp and the udp stream: {plan}");
    for (c, (protocol, port)) in connections.iter().zip([("tcp", 32220), ("udp", 32221)]) {
        assert_eq!(
            keys(c),
            [
                "protocol",
                "local",
                "remote",
                "from",
                "to",
                "port",
                "edge",
                "reason_now",
                "reason"
            ]
        );
        let local = member(c, "local").as_str().unwrap_or_default();
        assert!(
            local.starts_with("127.0.0.1:") && local != format!("127.0.0.1:{port}"),
            "`local` is the client's address: {c}"
        );
        let mut expected = c.clone();
        if let Json::Object(members) = &mut expected {
            for (key, value) in members.iter_mut() {
                let want = match key.as_str() {
                    "protocol" => Json::String(protocol.into()),
                    "remote" => Json::String(format!("127.0.0.1:{port}")),
                    "from" => Json::String(STAGING.into()),
                    "to" => Json::String(PROD.into()),
                    "port" => Json::Number(f64::from(port)),
                    "edge" => Json::String("migrations".into()),
                    "reason_now" => Json::String("edge_allowed".into()),
                    "reason" => Json::String("no_edge".into()),
                    _ => continue,
                };
                *value = want;
            }
        }
        assert_eq!(c, &expected, "the {protocol} connection");
    }
    assert_eq!(
        member(&plan, "changes").as_u64(),
        Some(7),
        "1 default, 3 domains, 3 edges"
    );
    let notes = member(&plan, "notes").as_array();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("new connections"))),
        "a binding or endpoint change comes with a note on what it does to live connections: \
         {plan}"
    );
    assert_eq!(
        enforced(&sb),
        was,
        "`policy plan -o json` changed what is enforced"
    );
}

#[test]
fn a_bad_policy_is_refused_and_changes_nothing() {
    if !privileged("a_bad_policy_is_refused_and_changes_nothing") {
        return;
    }
    let mut sb = Sandbox::new("plan-bad");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let running = sb.policy(
        "running.yaml",
        &policy(ALLOW, "", "", "", &[edge("migrations", "tcp", "[32240]")]),
    );
    sb.start_daemon(&running);
    let mut sink = sb.sink(&prod, LOCALHOST, 32240);
    let mut stream = sb.stream(&staging, LOCALHOST, 32240);
    sink.expect_received(3, FLOWING, "staging -> prod:32240 before the plan");
    let grant = [
        "--from",
        STAGING,
        "--to",
        PROD,
        "--protocol",
        "tcp",
        "--ports",
        "32241",
        "--ttl",
        "10m",
        "--owner",
        "oncall",
        "--reason",
        "break glass",
        "--id",
        "clash",
    ];
    assert_eq!(sb.grant(&grant), "clash");
    let was = enforced(&sb);

    // A mistake in the file: found by the CLI, reported as FILE:LINE:COL.
    let bad = sb.policy(
        "bad.yaml",
        "version: 1\ndefaults:\n  unlabeld: deny\ndomains:\n  - name: prod.example.org\n",
    );
    for extra in [&[][..], &["-o", "json"][..]] {
        let (code, stdout, stderr) = plan(&sb, &bad, extra);
        assert_eq!(
            code,
            Some(1),
            "plan {extra:?} of a bad policy exits 1; stderr: {stderr}"
        );
        assert!(
            stderr.contains(&format!("{}:3:3: unknown key `unlabeld`", bad.display())),
            "the mistake is reported as FILE:LINE:COL: {stderr}"
        );
        assert!(stdout.is_empty(), "a refused plan prints no plan: {stdout}");
    }

    // A file only the daemon can refuse: its edge takes the id of a grant.
    let clash = sb.policy(
        "clash.yaml",
        &policy(ALLOW, "", "", "", &[edge("clash", "tcp", "[32242]")]),
    );
    let (code, stdout, stderr) = plan(&sb, &clash, &[]);
    assert_eq!(
        code,
        Some(1),
        "plan of a policy the daemon refuses exits 1; stderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}: edge id clash is used by the policy file and by a grant",
            clash.display()
        )),
        "the daemon's reason is reported: {stderr}"
    );
    assert!(stdout.is_empty(), "a refused plan prints no plan: {stdout}");
    let out = sb.enforcer(&["policy", "apply", clash.to_str().expect("utf-8 path")]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "apply refuses what plan refuses"
    );

    let have = sink.received_count();
    sink.expect_received(
        have + 3,
        FLOWING,
        "staging -> prod:32240 after refused plans",
    );
    stream.expect_not_ended("staging -> prod:32240 after refused plans");
    assert_eq!(
        enforced(&sb),
        was,
        "a refused plan changed what is enforced"
    );
}

#[test]
fn planning_the_running_file_changes_nothing() {
    if !privileged("planning_the_running_file_changes_nothing") {
        return;
    }
    let mut sb = Sandbox::new("plan-noop");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let running = sb.policy(
        "running.yaml",
        &policy(
            ALLOW,
            "",
            "10.98.0.0/16",
            "",
            &[edge("migrations", "tcp", "[32260]")],
        ),
    );
    sb.start_daemon(&running);
    let mut sink = sb.sink(&prod, LOCALHOST, 32260);
    let mut stream = sb.stream(&staging, LOCALHOST, 32260);
    sink.expect_received(3, FLOWING, "staging -> prod:32260 before the plan");
    let was = enforced(&sb);

    let (code, stdout, stderr) = plan(&sb, &running, &[]);
    assert_eq!(code, Some(0), "policy plan exits 0; stderr: {stderr}");
    assert_eq!(
        stdout,
        format!(
            "plan for {} against generation {} (nothing applied)\nno changes\n",
            running.display(),
            was.generation
        ),
        "planning the running file"
    );
    let plan = plan_json(&sb, &running);
    assert_eq!(member(&plan, "changes").as_u64(), Some(0), "{plan}");
    assert_eq!(member(&plan, "connections"), &json("[]"), "{plan}");
    assert_eq!(member(&plan, "notes"), &json("[]"), "{plan}");

    let have = sink.received_count();
    sink.expect_received(have + 3, FLOWING, "staging -> prod:32260 after the plan");
    stream.expect_not_ended("staging -> prod:32260 after the plan");
    assert_eq!(enforced(&sb), was, "a no-op plan changed what is enforced");
}
