//! The example policy from the format description parses to the expected model.

use std::time::Duration;

use enforcer_policy::{
    Action, Defaults, Domain, Edge, EdgeEnd, EdgeId, Mode, Policy, PortRange, Protocol, parse,
};

const EXAMPLE: &str = include_str!("example.yaml");
const LIFECYCLE: &str = include_str!("lifecycle.yaml");

fn timestamp(text: &str) -> jiff::Timestamp {
    text.parse().expect("valid timestamp")
}

#[test]
fn example_parses_to_expected_model() {
    let want = Policy {
        version: 1,
        defaults: Defaults {
            unlabeled: Action::Allow,
            external: Action::Allow,
            mode: Mode::Enforce,
            max_grant_ttl: Duration::from_secs(12 * 3600),
            require_bundles: false,
        },
        domains: vec![
            Domain {
                name: "prod.example.org".parse().expect("valid"),
                mode: None,
                cgroups: vec!["/workloads/prod".parse().expect("valid")],
                endpoints: vec![
                    "10.10.0.0/16".parse().expect("valid"),
                    "fd00:10::/64".parse().expect("valid"),
                ],
                bundle: None,
                bundle_endpoint: None,
                bundle_from: None,
                attested: false,
            },
            Domain {
                name: "staging.example.org".parse().expect("valid"),
                mode: None,
                cgroups: vec!["/workloads/staging".parse().expect("valid")],
                endpoints: vec![],
                bundle: None,
                bundle_endpoint: None,
                bundle_from: None,
                attested: false,
            },
        ],
        federation: vec![std::sync::Arc::new(Edge {
            id: "edge-9e559ce96592".parse().expect("valid"),
            from: "staging.example.org".parse().expect("valid"),
            to: "prod.example.org".parse().expect("valid"),
            protocol: Protocol::Tcp,
            ports: vec![
                PortRange {
                    first: 5432,
                    last: 5432,
                },
                PortRange {
                    first: 8000,
                    last: 8099,
                },
            ],
            owner: "platform-team".into(),
            reason: "staging migrations read the prod schema".into(),
            not_before: None,
            require_bundles: false,
            end: None,
        })],
    };
    assert_eq!(parse("example.yaml", EXAMPLE), Ok(want));
}

#[test]
fn example_serializes_for_status_output() {
    let policy = parse("example.yaml", EXAMPLE).expect("example is valid");
    let json = serde_json::to_value(&policy).expect("serializes");
    let want = serde_json::json!({
        "version": 1,
        "defaults": {
            "unlabeled": "allow",
            "external": "allow",
            "mode": "enforce",
            "max_grant_ttl_secs": 43200
        },
        "domains": [
            {
                "name": "prod.example.org",
                "mode": null,
                "cgroups": ["/workloads/prod"],
                "endpoints": ["10.10.0.0/16", "fd00:10::/64"]
            },
            {
                "name": "staging.example.org",
                "mode": null,
                "cgroups": ["/workloads/staging"],
                "endpoints": []
            }
        ],
        "federation": [
            {
                "id": "edge-9e559ce96592",
                "from": "staging.example.org",
                "to": "prod.example.org",
                "protocol": "tcp",
                "ports": ["5432", "8000-8099"],
                "owner": "platform-team",
                "reason": "staging migrations read the prod schema",
                "not_before": null
            }
        ]
    });
    assert_eq!(json, want);
}

#[test]
fn optional_sections_default_to_allow_and_empty() {
    let policy = parse("p.yaml", "version: 1\n").expect("minimal policy is valid");
    assert_eq!(
        policy,
        Policy {
            version: 1,
            defaults: Defaults::default(),
            domains: vec![],
            federation: vec![],
        }
    );
    assert_eq!(policy.defaults.unlabeled, Action::Allow);
    assert_eq!(policy.defaults.external, Action::Allow);
}

#[test]
fn flexible_spellings_are_normalised() {
    let text = [
        "version: 1",
        "defaults: {unlabeled: deny, external: \"deny\"}",
        "domains:",
        "  - name: spiffe://a.org",
        "    cgroups: [\"/\", /a/b]",
        "    endpoints: [10.0.0.1, \"fd00::1\", 192.168.0.0/24]",
        "  - name: b.org",
        "federation:",
        "  - from: b.org",
        "    to: spiffe://a.org",
        "    protocol: any",
        "    ports: [\"53\", 1-1024]",
        "    owner: \"  dns-team  \"",
        "    reason: |",
        "      resolvers live in a.org",
        "",
    ]
    .join("\n");
    let policy = parse("p.yaml", &text).expect("valid");
    assert_eq!(policy.defaults.unlabeled, Action::Deny);
    assert_eq!(policy.defaults.external, Action::Deny);
    let a = &policy.domains[0];
    assert_eq!(a.name.as_str(), "a.org");
    assert_eq!(
        a.cgroups.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        ["/", "/a/b"]
    );
    assert_eq!(
        a.endpoints
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>(),
        ["10.0.0.1/32", "fd00::1/128", "192.168.0.0/24"]
    );
    let edge = &policy.federation[0];
    assert_eq!(edge.to.as_str(), "a.org");
    assert_eq!(edge.protocol, Protocol::Any);
    assert_eq!(
        edge.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        ["53", "1-1024"]
    );
    assert_eq!(&*edge.owner, "dns-team");
    assert_eq!(&*edge.reason, "resolvers live in a.org");
}

#[test]
fn empty_lists_are_allowed() {
    let text = "version: 1\ndomains: []\nfederation: []\n";
    assert!(parse("p.yaml", text).is_ok());
    let text = "version: 1\ndomains:\n  - name: a.org\n    cgroups: []\n    endpoints: []\n";
    assert!(parse("p.yaml", text).is_ok());
}

#[test]
fn life_cycle_and_modes_parse() {
    let policy = parse("lifecycle.yaml", LIFECYCLE).expect("valid");
    assert_eq!(
        policy.defaults,
        Defaults {
            unlabeled: Action::Deny,
            external: Action::Allow,
            mode: Mode::Audit,
            max_grant_ttl: Duration::from_secs(4 * 3600),
            require_bundles: false,
        }
    );
    let modes: Vec<_> = policy.domains.iter().map(|d| d.mode).collect();
    assert_eq!(modes, [Some(Mode::Enforce), None, Some(Mode::Audit)]);

    let [db, deploy, old] = &policy.federation[..] else {
        panic!("three edges: {:?}", policy.federation);
    };
    assert_eq!(db.id.as_str(), "staging-reads-prod-db");
    assert_eq!(db.not_before, Some(timestamp("2026-11-01T08:00:00Z")));
    assert_eq!(db.end, Some(EdgeEnd::At(timestamp("2026-12-01T18:00:00Z"))));

    assert_eq!(
        deploy.id,
        EdgeId::derived(
            &deploy.from,
            &deploy.to,
            Protocol::Tcp,
            &[
                PortRange {
                    first: 443,
                    last: 443
                },
                PortRange {
                    first: 8000,
                    last: 8099
                },
            ]
        )
    );
    assert!(deploy.id.as_str().starts_with("edge-"));
    assert_eq!(deploy.not_before, None);
    assert_eq!(deploy.end, Some(EdgeEnd::Ttl(Duration::from_secs(90 * 60))));

    // Long expired, and still a valid policy: the daemon reports it.
    assert_eq!(
        old.end,
        Some(EdgeEnd::At(timestamp("2020-01-01T00:00:00Z")))
    );
}

#[test]
fn life_cycle_serializes_for_status_output() {
    let policy = parse("lifecycle.yaml", LIFECYCLE).expect("valid");
    let json = serde_json::to_value(&policy).expect("serializes");
    assert_eq!(
        json["defaults"],
        serde_json::json!({
            "unlabeled": "deny",
            "external": "allow",
            "mode": "audit",
            "max_grant_ttl_secs": 14400
        })
    );
    assert_eq!(json["domains"][0]["mode"], "enforce");
    assert_eq!(json["domains"][1]["mode"], serde_json::Value::Null);
    let edges = &json["federation"];
    assert_eq!(edges[0]["id"], "staging-reads-prod-db");
    assert_eq!(edges[0]["not_before"], "2026-11-01T08:00:00Z");
    // An edge on the wire leaves its end to the record that carries it (a view's resolved
    // `expires`, a grant's deadline).
    assert_eq!(edges[0].get("end"), None);
    assert_eq!(
        policy.federation[0].end,
        Some(EdgeEnd::At(timestamp("2026-12-01T18:00:00Z")))
    );
    assert_eq!(
        policy.federation[1].end,
        Some(EdgeEnd::Ttl(std::time::Duration::from_secs(5400)))
    );
}

#[test]
fn derived_ids_ignore_owner_reason_and_times() {
    let edge = |extra: &[&str]| {
        let mut lines = vec![
            "version: 1",
            "domains: [{name: a.org}, {name: b.org}]",
            "federation:",
            "  - from: a.org",
            "    to: b.org",
            "    protocol: tcp",
            "    ports: [443]",
        ];
        lines.extend_from_slice(extra);
        let policy = parse("p.yaml", &(lines.join("\n") + "\n")).expect("valid");
        policy.federation[0].id.clone()
    };
    let id = edge(&["    owner: o", "    reason: r"]);
    assert_eq!(
        edge(&[
            "    owner: someone else",
            "    reason: a better reason",
            "    not_before: 2026-01-01T00:00:00Z",
            "    ttl: 7d",
        ]),
        id
    );
}

#[test]
fn durations_accept_friendly_and_day_units() {
    let ttl = |text: &str| {
        let policy = parse(
            "p.yaml",
            &format!(
                "version: 1\ndomains: [{{name: a.org}}, {{name: b.org}}]\nfederation:\n  - {{from: a.org, to: b.org, protocol: any, ports: [1-65535], owner: o, reason: r, ttl: \"{text}\"}}\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
        policy.federation[0].end
    };
    for (text, secs) in [
        ("3s", 3),
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("7d", 7 * 86400),
        ("1 day 2 hours", 93600),
    ] {
        assert_eq!(
            ttl(text),
            Some(EdgeEnd::Ttl(Duration::from_secs(secs))),
            "{text:?}"
        );
    }
    assert_eq!(
        enforcer_policy::parse_duration("7d"),
        Ok(Duration::from_secs(7 * 86400))
    );
}
