//! `policy.schema.json`, the JSON Schema editors use for policy files, against the parser
//! (the authority): every example under `policies/` is valid to both, documents the parser
//! refuses for their shape are refused by the schema too, and each object in the schema
//! allows exactly the keys the parser knows, so neither can drift from the other unnoticed.
//!
//! YAML becomes JSON through yaml-rust2, the YAML parser the policy parser itself uses.

use std::{fs, path::Path};

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schema() -> Value {
    let text =
        fs::read_to_string(crate_dir().join("policy.schema.json")).expect("reading the schema");
    serde_json::from_str(&text).expect("the schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("the schema is a valid JSON Schema")
}

fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => Value::from(text.parse::<f64>().expect("a YAML real is a float")),
        Yaml::String(text) => Value::from(text.as_str()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(hash) => Value::Object(
            hash.iter()
                .map(|(key, value)| {
                    let key = match to_json(key) {
                        Value::String(key) => key,
                        other => other.to_string(),
                    };
                    (key, to_json(value))
                })
                .collect::<Map<_, _>>(),
        ),
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("unexpected YAML node {yaml:?}"),
    }
}

fn json_of(yaml: &str) -> Value {
    let docs = YamlLoader::load_from_str(yaml).expect("YAML");
    assert_eq!(docs.len(), 1, "one document: {yaml}");
    to_json(&docs[0])
}

fn schema_errors(validator: &jsonschema::Validator, yaml: &str) -> Vec<String> {
    validator
        .iter_errors(&json_of(yaml))
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn every_example_policy_is_valid() {
    let validator = validator();
    let dir = crate_dir().join("../policies");
    let mut checked = 0;
    for entry in fs::read_dir(&dir).expect("reading policies/") {
        let path = entry.expect("a directory entry").path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let text = fs::read_to_string(&path).expect("reading a policy");
        let name = path.display().to_string();
        if let Err(diags) = enforcer_policy::parse(&name, &text) {
            panic!("{name} is refused by the parser: {diags:?}");
        }
        let errors = schema_errors(&validator, &text);
        assert!(
            errors.is_empty(),
            "{name} is refused by the schema: {errors:#?}"
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} policies found in {}",
        dir.display()
    );
}

const VALID: &str = "
version: 1
defaults: {unlabeled: deny, external: allow, mode: audit, max_grant_ttl: 2h, require_bundles: false}
domains:
  - name: spiffe://prod.example.org
    mode: enforce
    cgroups: [/prod.slice]
    endpoints: [10.0.0.0/8, 'fd00::/64', 192.168.1.1]
    bundle: /etc/enforcer/prod.pem
  - name: staging.example.org
    cgroups: [/staging.slice]
    bundle: /etc/enforcer/staging.pem
  - name: partner.example.org
    attested: true
    bundle: /etc/enforcer/partner.pem
  - name: federated.example.org
    attested: true
    bundle_from: workload_api
federation:
  - id: staging-to-prod
    from: staging.example.org
    to: prod.example.org
    protocol: tcp
    ports: [5432, '8000-8099', '443']
    owner: platform-team
    reason: staging migrations read the prod schema
    not_before: 2026-01-01T00:00:00Z
    expires: 2027-01-01T00:00:00+01:00
    require_bundles: true
  - from: prod.example.org
    to: staging.example.org
    protocol: any
    ports: [53]
    owner: 42
    reason: dns
    ttl: 30m
";

#[test]
fn a_policy_using_every_key_is_valid_to_both() {
    enforcer_policy::parse("valid.yaml", VALID).expect("the parser accepts it");
    let errors = schema_errors(&validator(), VALID);
    assert!(errors.is_empty(), "{errors:#?}");
}

/// Documents the parser refuses for a reason the schema can express.
#[test]
fn the_schema_refuses_what_the_parser_refuses() {
    let validator = validator();
    let domain = "domains: [{name: prod.example.org, cgroups: [/prod]}]\n";
    let edge = |field: &str| {
        format!(
            "version: 1\n{domain}federation:\n  - {{from: prod.example.org, to: prod.example.org, \
             protocol: tcp, ports: [80], owner: o, reason: r, {field}}}\n"
        )
    };
    let edge_without = |key: &str| {
        let fields = [
            "from: prod.example.org",
            "to: prod.example.org",
            "protocol: tcp",
            "ports: [80]",
            "owner: o",
            "reason: r",
        ];
        let kept: Vec<&str> = fields
            .into_iter()
            .filter(|f| !f.starts_with(&format!("{key}:")))
            .collect();
        format!(
            "version: 1\n{domain}federation:\n  - {{{}}}\n",
            kept.join(", ")
        )
    };
    let cases = [
        (
            "unknown top-level key",
            format!("version: 1\n{domain}domain: []\n"),
        ),
        (
            "unknown defaults key",
            format!("version: 1\ndefaults: {{unlabelled: deny}}\n{domain}"),
        ),
        (
            "unknown domain key",
            "version: 1\ndomains: [{name: prod.example.org, cgroup: [/prod]}]\n".to_owned(),
        ),
        ("unknown edge key", edge("port: 80")),
        ("missing version", domain.to_owned()),
        ("version 2", format!("version: 2\n{domain}")),
        ("version as text", format!("version: '1'\n{domain}")),
        ("port 0", edge("ports: [0]").replace("ports: [80], ", "")),
        (
            "port 70000",
            edge("ports: [70000]").replace("ports: [80], ", ""),
        ),
        (
            "port name",
            edge("ports: [http]").replace("ports: [80], ", ""),
        ),
        (
            "port range text",
            edge("ports: ['80-']").replace("ports: [80], ", ""),
        ),
        ("no ports", edge("ports: []").replace("ports: [80], ", "")),
        (
            "bad protocol",
            edge("protocol: sctp").replace("protocol: tcp, ", ""),
        ),
        (
            "expires and ttl",
            edge("expires: 2027-01-01T00:00:00Z, ttl: 1h"),
        ),
        (
            "expires without offset",
            edge("expires: 2027-01-01T00:00:00"),
        ),
        (
            "bad action",
            format!("version: 1\ndefaults: {{unlabeled: block}}\n{domain}"),
        ),
        (
            "bad mode",
            format!("version: 1\ndefaults: {{mode: warn}}\n{domain}"),
        ),
        (
            "upper-case domain",
            "version: 1\ndomains: [{name: Prod.example.org}]\n".to_owned(),
        ),
        (
            "relative cgroup",
            "version: 1\ndomains: [{name: a.org, cgroups: [prod]}]\n".to_owned(),
        ),
        (
            "relative bundle",
            "version: 1\ndomains: [{name: a.org, bundle: b.pem}]\n".to_owned(),
        ),
        (
            "attested with cgroups",
            "version: 1\ndomains: [{name: a.org, attested: true, bundle: /b.pem, cgroups: [/a]}]\n"
                .to_owned(),
        ),
        (
            "attested without bundle",
            "version: 1\ndomains: [{name: a.org, attested: true}]\n".to_owned(),
        ),
        (
            "bundle and bundle_from",
            "version: 1\ndomains: [{name: a.org, bundle: /b.pem, bundle_from: workload_api}]\n"
                .to_owned(),
        ),
        (
            "unknown bundle source",
            "version: 1\ndomains: [{name: a.org, bundle_from: agent}]\n".to_owned(),
        ),
        ("bad edge id", edge("id: Staging")),
        ("no owner", edge_without("owner")),
        ("no reason", edge_without("reason")),
        ("no from", edge_without("from")),
        (
            "domains not a list",
            "version: 1\ndomains: {name: a.org}\n".to_owned(),
        ),
        ("not a mapping", "- version: 1\n".to_owned()),
    ];
    for (what, yaml) in cases {
        assert!(
            enforcer_policy::parse("case.yaml", &yaml).is_err(),
            "{what}: the parser accepts it, so the case is wrong:\n{yaml}"
        );
        assert!(
            !schema_errors(&validator, &yaml).is_empty(),
            "{what}: the schema accepts what the parser refuses:\n{yaml}"
        );
    }
}

/// The keys the parser lists when it meets an unknown one in `context`.
fn parser_keys(yaml: &str) -> Vec<String> {
    let diags = enforcer_policy::parse("keys.yaml", yaml).expect_err("an unknown key is refused");
    let message = diags
        .iter()
        .find_map(|d| d.message.split_once("expected one of: "))
        .unwrap_or_else(|| panic!("no list of keys in {diags:?}"))
        .1;
    let mut keys: Vec<String> = message.split(", ").map(str::to_owned).collect();
    keys.sort();
    keys
}

fn schema_keys(object: &Value) -> Vec<String> {
    assert_eq!(
        object["additionalProperties"],
        Value::Bool(false),
        "{object}"
    );
    let mut keys: Vec<String> = object["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[test]
fn each_object_allows_exactly_the_keys_the_parser_knows() {
    let schema = schema();
    let unknown = "zzz_unknown: 1";
    for (object, yaml) in [
        (&schema, format!("version: 1\n{unknown}\n")),
        (
            &schema["properties"]["defaults"],
            format!("version: 1\ndefaults: {{{unknown}}}\n"),
        ),
        (
            &schema["$defs"]["domain"],
            format!("version: 1\ndomains: [{{name: a.org, {unknown}}}]\n"),
        ),
        (
            &schema["$defs"]["bundle_endpoint"],
            format!(
                "version: 1\ndomains: [{{name: a.org, bundle_endpoint: {{url: 'https://a.org', \
                 profile: https_web, {unknown}}}}}]\n"
            ),
        ),
        (
            &schema["$defs"]["edge"],
            format!(
                "version: 1\ndomains: [{{name: a.org}}]\nfederation: [{{from: a.org, to: a.org, \
                 protocol: tcp, ports: [1], owner: o, reason: r, {unknown}}}]\n"
            ),
        ),
    ] {
        assert_eq!(schema_keys(object), parser_keys(&yaml), "{yaml}");
    }
}
