//! The example policy from the format description parses to the expected model.

use enforcer_policy::{Action, Defaults, Domain, Edge, Policy, PortRange, Protocol, parse};

const EXAMPLE: &str = include_str!("example.yaml");

#[test]
fn example_parses_to_expected_model() {
    let want = Policy {
        version: 1,
        defaults: Defaults {
            unlabeled: Action::Allow,
            external: Action::Allow,
        },
        domains: vec![
            Domain {
                name: "prod.example.org".parse().expect("valid"),
                cgroups: vec!["/workloads/prod".parse().expect("valid")],
                endpoints: vec![
                    "10.10.0.0/16".parse().expect("valid"),
                    "fd00:10::/64".parse().expect("valid"),
                ],
            },
            Domain {
                name: "staging.example.org".parse().expect("valid"),
                cgroups: vec!["/workloads/staging".parse().expect("valid")],
                endpoints: vec![],
            },
        ],
        federation: vec![Edge {
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
        }],
    };
    assert_eq!(parse("example.yaml", EXAMPLE), Ok(want));
}

#[test]
fn example_serializes_for_status_output() {
    let policy = parse("example.yaml", EXAMPLE).expect("example is valid");
    let json = serde_json::to_value(&policy).expect("serializes");
    let want = serde_json::json!({
        "version": 1,
        "defaults": { "unlabeled": "allow", "external": "allow" },
        "domains": [
            {
                "name": "prod.example.org",
                "cgroups": ["/workloads/prod"],
                "endpoints": ["10.10.0.0/16", "fd00:10::/64"]
            },
            {
                "name": "staging.example.org",
                "cgroups": ["/workloads/staging"],
                "endpoints": []
            }
        ],
        "federation": [
            {
                "from": "staging.example.org",
                "to": "prod.example.org",
                "protocol": "tcp",
                "ports": [{ "first": 5432, "last": 5432 }, { "first": 8000, "last": 8099 }],
                "owner": "platform-team",
                "reason": "staging migrations read the prod schema"
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
    assert_eq!(edge.owner, "dns-team");
    assert_eq!(edge.reason, "resolvers live in a.org");
}

#[test]
fn empty_lists_are_allowed() {
    let text = "version: 1\ndomains: []\nfederation: []\n";
    assert!(parse("p.yaml", text).is_ok());
    let text = "version: 1\ndomains:\n  - name: a.org\n    cgroups: []\n    endpoints: []\n";
    assert!(parse("p.yaml", text).is_ok());
}
