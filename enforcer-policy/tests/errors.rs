//! Every kind of mistake is reported as `FILE:LINE:COL: message`, pointing
//! at the offending key or value, and all mistakes in a file are reported.

use enforcer_policy::parse;

/// Joins lines so that line `n` of the policy is element `n - 1` here.
fn policy(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn errors(lines: &[&str]) -> Vec<String> {
    errors_in(&policy(lines))
}

fn errors_in(text: &str) -> Vec<String> {
    match parse("p.yaml", text) {
        Ok(policy) => panic!("expected errors, got {policy:?}"),
        Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
    }
}

/// Two domains and a valid edge between them, for tests that only change
/// one line.
fn with_edge(edge: &[&str]) -> Vec<String> {
    let mut lines = vec![
        "version: 1",
        "domains:",
        "  - name: a.org",
        "  - name: b.org",
        "federation:",
    ];
    lines.extend_from_slice(edge);
    errors(&lines)
}

const DOMAIN_KEYS: &str = "expected one of: name, mode, cgroups, endpoints, bundle, bundle_endpoint, bundle_from, attested";
const EDGE_KEYS: &str = "expected one of: id, from, to, protocol, ports, owner, reason, not_before, expires, ttl, require_bundles";
const TD_IS: &str = "a trust domain name is a bare name like `example.org`, optionally written as `spiffe://example.org`";

mod document {
    use super::*;

    #[test]
    fn empty_file() {
        assert_eq!(errors_in(""), ["p.yaml:1:1: policy is empty"]);
        assert_eq!(
            errors_in("# nothing yet\n\n---\n"),
            ["p.yaml:1:1: policy is empty"]
        );
    }

    #[test]
    fn malformed_yaml_uses_the_parser_position() {
        assert_eq!(
            errors(&["version: 1", "domains: [a.org", "federation: []"]),
            ["p.yaml:3:11: illegal placement of ':' indicator"]
        );
        assert_eq!(
            errors(&[
                "version: 1",
                "defaults:",
                "  unlabeled: deny",
                " external: deny"
            ]),
            ["p.yaml:4:10: while parsing a block mapping, did not find expected key"]
        );
    }

    #[test]
    fn top_level_must_be_a_mapping() {
        assert_eq!(
            errors(&["- version: 1"]),
            [
                "p.yaml:1:1: a policy must be a YAML mapping with the keys version, defaults, domains, federation"
            ]
        );
    }

    #[test]
    fn duplicate_key() {
        assert_eq!(
            errors(&["version: 1", "domains: []", "version: 1"]),
            ["p.yaml:3:1: duplicate key `version` (first defined at line 1)"]
        );
        assert_eq!(
            errors(&[
                "version: 1",
                "domains:",
                "  - name: a.org",
                "    cgroups: [/a]",
                "    cgroups: [/b]",
            ]),
            ["p.yaml:5:5: duplicate key `cgroups` (first defined at line 4)"]
        );
    }

    #[test]
    fn anchors_and_tags_are_refused() {
        assert_eq!(
            errors(&["version: 1", "domains: &all []"]),
            ["p.yaml:2:15: YAML anchors and aliases are not supported in policy files"]
        );
        assert_eq!(
            errors(&["version: !!int 1"]),
            ["p.yaml:1:16: YAML tags are not supported in policy files"]
        );
    }

    #[test]
    fn a_second_document_is_refused() {
        assert_eq!(
            errors(&["version: 1", "---", "version: 1", "domains: []"]),
            [
                "p.yaml:2:1: a policy file must hold exactly one YAML document, but a second one starts here"
            ]
        );
        assert_eq!(
            errors(&["---", "version: 1", "...", "domains: []"]),
            [
                "p.yaml:4:1: a policy file must hold exactly one YAML document, but a second one starts here"
            ]
        );
        assert!(
            parse(
                "p.yaml",
                &policy(&["%YAML 1.2", "---", "version: 1", "..."])
            )
            .is_ok()
        );
    }

    /// The YAML parser takes a NUL for the end of the input: without a check, everything
    /// after it went unread and unenforced while `check` said "ok".
    #[test]
    fn a_nul_byte_is_refused_where_it_is() {
        assert_eq!(
            errors(&["version: 1", "domains: []", "\0federation: [oops"]),
            [
                "p.yaml:3:1: policy contains a NUL byte; YAML allows no control characters other than tab and line breaks"
            ]
        );
        assert_eq!(
            errors(&["version: 1", "defaults: {unlabeled: deny\0}"]),
            [
                "p.yaml:2:27: policy contains a NUL byte; YAML allows no control characters other than tab and line breaks"
            ]
        );
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(
            errors(&["version: 1", "domains: [] \u{1b}[2J"]),
            [
                "p.yaml:2:13: policy contains the character U+001B; YAML allows no control characters other than tab and line breaks"
            ]
        );
    }

    #[test]
    fn invalid_utf8_is_reported_at_its_line_and_column() {
        let bytes = b"version: 1\ndomains:\n  - name: caf\xe9.org\n";
        assert_eq!(
            enforcer_policy::decode("p.yaml", bytes).map_err(|d| d.to_string()),
            Err("p.yaml:3:14: policy is not valid UTF-8 (byte 0xe9)".to_owned())
        );
    }

    #[test]
    fn only_the_first_hundred_errors_are_listed_then_a_count() {
        let mut lines = vec!["version: 1".to_owned()];
        lines.extend((0..250).map(|i| format!("unknown{i}: x")));
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let found = errors(&lines);
        assert_eq!(found.len(), 101, "{found:?}");
        assert!(found[0].starts_with("p.yaml:2:1: unknown key `unknown0`"));
        assert!(found[99].starts_with("p.yaml:101:1: unknown key `unknown99`"));
        assert_eq!(
            found[100],
            "p.yaml:102:1: ... and 150 more error(s), the first of them here (only the first 100 are listed)"
        );
    }

    /// Found by `cargo xtask fuzz policy`: the YAML parser ends the document where the
    /// top-level mapping ends, and everything after it used to be dropped without an error,
    /// so `defaults: {unlabeled: deny}` below went unenforced.
    #[test]
    fn content_after_the_top_level_mapping_is_refused() {
        const MUST_ALIGN: &str = "the policy's top-level mapping ends before this, so the YAML parser would ignore the rest of the file; every top-level key must start in the column of the first";
        assert_eq!(
            errors(&[" version: 1", "defaults:", "  unlabeled: deny"]),
            [format!("p.yaml:2:1: {MUST_ALIGN} (2)")]
        );
        assert_eq!(
            errors(&["\tversion: 1", "# a comment", "", "version: 2"]),
            [format!("p.yaml:4:1: {MUST_ALIGN} (2)")]
        );
        assert_eq!(
            errors(&["{version: 1}  # a comment", "{domains: []}"]),
            [format!("p.yaml:2:1: {MUST_ALIGN} (1)")]
        );
        assert_eq!(
            errors_in("version: 1 # caf\u{e9}\0\ndefaults: {unlabeled: deny}\n"),
            [
                "p.yaml:1:18: policy contains a NUL byte; YAML allows no control characters other than tab and line breaks"
            ]
        );
        for accepted in [
            "  version: 1\n  domains: []\n  # a comment\n",
            "{version: 1,\n domains: []\n}  # a comment\n\n",
            "version: 1\r\ndomains: []\r\n...\r\n",
        ] {
            assert!(parse("p.yaml", accepted).is_ok(), "{accepted:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let text = format!("version: 1\ndomains:\n{}x\n", "- ".repeat(50));
        assert_eq!(
            errors_in(&text),
            [
                "p.yaml:3:81: nesting is too deep: a policy never needs more than 80 columns of indentation"
            ]
        );
    }
}

mod top_level {
    use super::*;

    #[test]
    fn missing_version() {
        assert_eq!(
            errors(&["domains: []"]),
            [
                "p.yaml:1:1: policy is missing required key `version`: write `version: 1` at the top of the file"
            ]
        );
    }

    #[test]
    fn unsupported_version() {
        assert_eq!(
            errors(&["version: 2"]),
            ["p.yaml:1:10: unsupported policy version 2 (this enforcer understands version 1)"]
        );
        assert_eq!(
            errors(&["version: 0"]),
            ["p.yaml:1:10: unsupported policy version 0 (this enforcer understands version 1)"]
        );
    }

    #[test]
    fn version_must_be_an_integer() {
        assert_eq!(
            errors(&["version: \"1\""]),
            ["p.yaml:1:10: `version` must be an integer, found the string `1`"]
        );
        assert_eq!(
            errors(&["version: 1.0"]),
            ["p.yaml:1:10: `version` must be an integer, found `1.0`"]
        );
        assert_eq!(
            errors(&["version:", "domains: []"]),
            ["p.yaml:1:1: `version` must be an integer, found an empty value"]
        );
    }

    #[test]
    fn unknown_keys() {
        assert_eq!(
            errors(&["version: 1", "domain: []"]),
            [
                "p.yaml:2:1: unknown key `domain` in policy; expected one of: version, defaults, domains, federation"
            ]
        );
    }

    #[test]
    fn wrong_kinds() {
        assert_eq!(
            errors(&[
                "version: 1",
                "defaults: deny",
                "domains: {}",
                "federation: a.org"
            ]),
            [
                "p.yaml:2:11: `defaults` must be a mapping, found `deny`",
                "p.yaml:3:10: `domains` must be a list, found a mapping",
                "p.yaml:4:13: `federation` must be a list, found `a.org`",
            ]
        );
        assert_eq!(
            errors(&["version: 1", "domains:"]),
            [
                "p.yaml:2:1: `domains` must be a list, found an empty value (write `[]` for an empty list)"
            ]
        );
    }
}

mod defaults {
    use super::*;

    #[test]
    fn values_must_be_allow_or_deny() {
        assert_eq!(
            errors(&[
                "version: 1",
                "defaults:",
                "  unlabeled: Deny",
                "  external: true",
            ]),
            [
                "p.yaml:3:14: `unlabeled` must be `allow` or `deny`, found `Deny`",
                "p.yaml:4:13: `external` must be `allow` or `deny`, found `true`",
            ]
        );
        assert_eq!(
            errors(&["version: 1", "defaults:", "  external:"]),
            ["p.yaml:3:3: `external` must be `allow` or `deny`, found an empty value"]
        );
    }

    #[test]
    fn unknown_keys() {
        assert_eq!(
            errors(&["version: 1", "defaults:", "  unknown: deny"]),
            [
                "p.yaml:3:3: unknown key `unknown` in defaults; expected one of: unlabeled, external, mode, max_grant_ttl, require_bundles"
            ]
        );
    }
}

mod domains {
    use super::*;

    #[test]
    fn entries_must_be_mappings_with_a_name() {
        assert_eq!(
            errors(&[
                "version: 1",
                "domains:",
                "  - a.org",
                "  -",
                "  - cgroups: [/a]",
                "  - name: b.org",
            ]),
            [
                "p.yaml:3:5: each `domains` entry must be a mapping, found `a.org`",
                "p.yaml:4:3: each `domains` entry must be a mapping, found an empty value",
                "p.yaml:5:5: domain is missing required key `name`: every domain needs a trust domain name",
            ]
        );
    }

    #[test]
    fn unknown_keys() {
        assert_eq!(
            errors(&[
                "version: 1",
                "domains:",
                "  - name: a.org",
                "    cgroup: [/a]"
            ]),
            [format!(
                "p.yaml:4:5: unknown key `cgroup` in domain; {DOMAIN_KEYS}"
            )]
        );
    }

    #[test]
    fn invalid_names() {
        assert_eq!(
            errors(&[
                "version: 1",
                "domains:",
                "  - name: Prod.example.org",
                "  - name: spiffe://a.org/ns/prod",
                "  - name: https://b.org",
                "  - name: \"\"",
                "  - name: [a.org]",
            ]),
            [
                "p.yaml:3:11: trust domain name `Prod.example.org` contains the character 'P'; only lowercase letters a-z, digits 0-9, '.', '-' and '_' are allowed (uppercase is not folded to lowercase)".to_owned(),
                format!("p.yaml:4:11: `spiffe://a.org/ns/prod` has a path; {TD_IS}"),
                format!("p.yaml:5:11: `https://b.org` is not a trust domain name; {TD_IS}"),
                "p.yaml:6:11: trust domain name is empty".to_owned(),
                "p.yaml:7:11: `name` must be a trust domain name, found a list".to_owned(),
            ]
        );
    }

    #[test]
    fn name_longer_than_255_bytes() {
        let long = format!("  - name: {}", "a".repeat(256));
        assert_eq!(
            errors(&["version: 1", "domains:", &long]),
            [
                "p.yaml:3:11: trust domain name is 256 bytes long; SPIFFE limits trust domain names to 255 bytes"
            ]
        );
    }

    #[test]
    fn duplicate_names_compare_after_normalisation() {
        assert_eq!(
            errors(&[
                "version: 1",
                "domains:",
                "  - name: a.org",
                "  - name: b.org",
                "  - name: spiffe://a.org",
            ]),
            ["p.yaml:5:11: duplicate domain `a.org` (first declared at line 3)"]
        );
    }

    #[test]
    fn invalid_cgroups() {
        assert_eq!(
            errors(&[
                "version: 1",
                "domains:",
                "  - name: a.org",
                "    cgroups:",
                "      - workloads/prod",
                "      - /workloads/prod/",
                "      - /workloads//prod",
                "      - /workloads/../prod",
                "      - \"/workloads/\\0\"",
                "      - {path: /a}",
                "    endpoints: []",
                "  - name: b.org",
                "    cgroups: /b",
            ]),
            [
                "p.yaml:5:9: cgroup path `workloads/prod` must start with `/`: paths are relative to the cgroup2 mount root, as in /proc/PID/cgroup",
                "p.yaml:6:9: cgroup path `/workloads/prod/` has a trailing slash; write `/workloads/prod`",
                "p.yaml:7:9: cgroup path `/workloads//prod` has an empty component (`//`)",
                "p.yaml:8:9: cgroup path `/workloads/../prod` has a `..` component; cgroup paths are written without `.` or `..`",
                "p.yaml:9:9: cgroup path `/workloads/\\0` contains a NUL byte",
                "p.yaml:10:9: each `cgroups` entry must be a cgroup path, found a mapping",
                "p.yaml:13:14: `cgroups` must be a list, found `/b`",
            ]
        );
    }

    #[test]
    fn a_cgroup_belongs_to_one_domain() {
        assert_eq!(
            errors(&[
                "version: 1",
                "domains:",
                "  - name: a.org",
                "    cgroups: [/shared, /a, /a]",
                "  - name: b.org",
                "    cgroups:",
                "      - /shared",
            ]),
            [
                "p.yaml:4:28: cgroup `/a` is listed twice in domain `a.org` (first at line 4)",
                "p.yaml:7:9: cgroup `/shared` is bound to both `a.org` (line 4) and `b.org`; a cgroup can belong to only one trust domain",
            ]
        );
    }

    #[test]
    fn invalid_endpoints() {
        assert_eq!(
            errors(&[
                "version: 1",
                "domains:",
                "  - name: a.org",
                "    endpoints:",
                "      - 10.10.1.0/16",
                "      - fd00:10::1/64",
                "      - 10.0.0.0/33",
                "      - 10.0.0.0/x",
                "      - 10.0.0",
                "      - 42",
                "      - [10.0.0.0/8]",
            ]),
            [
                "p.yaml:5:9: 10.10.1.0/16 has host bits set; did you mean 10.10.0.0/16?",
                "p.yaml:6:9: fd00:10::1/64 has host bits set; did you mean fd00:10::/64?",
                "p.yaml:7:9: prefix length /33 in `10.0.0.0/33` is too long; the maximum is /32",
                "p.yaml:8:9: `10.0.0.0/x` is not an IP address or prefix; expected something like `10.10.0.0/16`, `fd00:10::/64` or `10.10.0.1`",
                "p.yaml:9:9: `10.0.0` is not an IP address or prefix; expected something like `10.10.0.0/16`, `fd00:10::/64` or `10.10.0.1`",
                "p.yaml:10:9: `42` is not an IP address or prefix; expected something like `10.10.0.0/16`, `fd00:10::/64` or `10.10.0.1`",
                "p.yaml:11:9: each `endpoints` entry must be an IP address or prefix, found a list",
            ]
        );
    }

    #[test]
    fn a_prefix_belongs_to_one_domain() {
        assert_eq!(
            errors(&[
                "version: 1",
                "domains:",
                "  - name: a.org",
                "    endpoints: [10.0.0.7, \"fd00::/64\"]",
                "  - name: b.org",
                "    endpoints: [10.0.0.7/32, fd00:0::/64]",
            ]),
            [
                "p.yaml:6:17: prefix `10.0.0.7/32` is bound to both `a.org` (line 4) and `b.org`; an address can belong to only one trust domain",
                "p.yaml:6:30: prefix `fd00::/64` is bound to both `a.org` (line 4) and `b.org`; an address can belong to only one trust domain",
            ]
        );
    }
}

mod federation {
    use super::*;

    #[test]
    fn missing_required_keys_are_reported_at_the_edge() {
        assert_eq!(
            with_edge(&["  - from: a.org", "    to: b.org"]),
            [
                "p.yaml:6:5: edge is missing required key `protocol`: every edge needs a protocol: tcp, udp or any",
                "p.yaml:6:5: edge is missing required key `ports`: every edge needs the destination ports it allows",
                "p.yaml:6:5: edge is missing required key `owner`: every edge needs an accountable owner",
                "p.yaml:6:5: edge is missing required key `reason`: every edge needs a reason explaining why the traffic is allowed",
            ]
        );
        assert_eq!(
            with_edge(&["  - {protocol: tcp, ports: [1], owner: o, reason: r}"]),
            [
                "p.yaml:6:5: edge is missing required key `from`: every edge needs the trust domain that starts the traffic",
                "p.yaml:6:5: edge is missing required key `to`: every edge needs the trust domain that receives the traffic",
            ]
        );
    }

    #[test]
    fn unknown_keys() {
        assert_eq!(
            with_edge(&[
                "  - from: a.org",
                "    to: b.org",
                "    protocol: tcp",
                "    port: 443",
                "    ports: [443]",
                "    owner: o",
                "    reason: r",
            ]),
            [format!(
                "p.yaml:9:5: unknown key `port` in edge; {EDGE_KEYS}"
            )]
        );
    }

    #[test]
    fn edges_must_name_declared_domains() {
        assert_eq!(
            with_edge(&[
                "  - from: c.org",
                "    to: spiffe://b.org",
                "    protocol: tcp",
                "    ports: [443]",
                "    owner: o",
                "    reason: r",
            ]),
            ["p.yaml:6:11: edge names unknown domain `c.org`"]
        );
    }

    #[test]
    fn self_edges_are_pointless() {
        assert_eq!(
            with_edge(&[
                "  - from: a.org",
                "    to: spiffe://a.org",
                "    protocol: udp",
                "    ports: [53]",
                "    owner: o",
                "    reason: r",
            ]),
            ["p.yaml:7:9: self-edge: same-domain traffic is always allowed"]
        );
    }

    #[test]
    fn protocol_must_be_tcp_udp_or_any() {
        assert_eq!(
            with_edge(&[
                "  - from: a.org",
                "    to: b.org",
                "    protocol: TCP",
                "    ports: [443]",
                "    owner: o",
                "    reason: r",
            ]),
            ["p.yaml:8:15: `protocol` must be `tcp`, `udp` or `any`, found `TCP`"]
        );
    }

    #[test]
    fn invalid_ports() {
        assert_eq!(
            with_edge(&[
                "  - from: a.org",
                "    to: b.org",
                "    protocol: tcp",
                "    ports: [0, 65536, \"9000-8000\", https, 80, \"\", [1]]",
                "    owner: o",
                "    reason: r",
            ]),
            [
                "p.yaml:9:13: port 0 is out of range; ports are 1-65535",
                "p.yaml:9:16: port 65536 is out of range; ports are 1-65535",
                "p.yaml:9:23: port range 9000-8000 is reversed; write 8000-9000",
                "p.yaml:9:36: `https` is not a port or port range; expected a number 1-65535 or a range like `8000-8099`",
                "p.yaml:9:47: `` is not a port or port range; expected a number 1-65535 or a range like `8000-8099`",
                "p.yaml:9:51: each `ports` entry must be a port or port range, found a list",
            ]
        );
    }

    #[test]
    fn ports_must_be_a_non_empty_list() {
        let edge = |ports| {
            with_edge(&[
                "  - from: a.org",
                "    to: b.org",
                "    protocol: tcp",
                ports,
                "    owner: o",
                "    reason: r",
            ])
        };
        assert_eq!(
            edge("    ports: []"),
            ["p.yaml:9:12: `ports` must list at least one port or port range"]
        );
        assert_eq!(
            edge("    ports: 443"),
            ["p.yaml:9:12: `ports` must be a list, found `443`"]
        );
    }

    #[test]
    fn owner_and_reason_must_not_be_blank() {
        assert_eq!(
            with_edge(&[
                "  - from: a.org",
                "    to: b.org",
                "    protocol: tcp",
                "    ports: [443]",
                "    owner: \"  \"",
                "    reason:",
            ]),
            [
                "p.yaml:10:12: `owner` is empty: every edge needs an accountable owner",
                "p.yaml:11:5: `reason` is empty: every edge needs a reason explaining why the traffic is allowed",
            ]
        );
        assert_eq!(
            with_edge(&[
                "  - from: a.org",
                "    to: b.org",
                "    protocol: tcp",
                "    ports: [443]",
                "    owner: [me]",
                "    reason: ~",
            ]),
            [
                "p.yaml:10:12: `owner` must be a string, found a list",
                "p.yaml:11:13: `reason` is empty: every edge needs a reason explaining why the traffic is allowed",
            ]
        );
    }

    /// The same rule as `edge grant --owner/--reason`: the daemon logs them, and a line
    /// break would forge a log line.
    #[test]
    fn owner_and_reason_are_one_line() {
        assert_eq!(
            with_edge(&[
                "  - from: a.org",
                "    to: b.org",
                "    protocol: tcp",
                "    ports: [443]",
                "    owner: \"dba\\nenforcer: revoked edge-1\"",
                "    reason: |",
                "      two",
                "      lines",
            ]),
            [
                "p.yaml:10:12: `owner` contains the control character U+000A; write it as one line without control characters",
                "p.yaml:12:7: `reason` contains the control character U+000A; write it as one line without control characters",
            ]
        );
    }

    /// Bidi overrides and zero-width characters make a terminal show another text than the
    /// one held (Trojan Source).
    #[test]
    fn owner_and_reason_hold_no_invisible_formatting() {
        assert_eq!(
            with_edge(&[
                "  - from: a.org",
                "    to: b.org",
                "    protocol: tcp",
                "    ports: [443]",
                "    owner: \"dba\\u202Eerp\"",
                "    reason: \"ok\\u200B\"",
            ]),
            [
                "p.yaml:10:12: `owner` contains the invisible formatting character U+202E, which can make the text show differently from what it holds; remove it",
                "p.yaml:11:13: `reason` contains the invisible formatting character U+200B, which can make the text show differently from what it holds; remove it",
            ]
        );
    }
}

/// Cgroup paths are printed by `status` and `plan`: one written with YAML escapes must not
/// carry a terminal escape or a carriage return there.
#[test]
fn cgroup_paths_hold_no_control_characters() {
    assert_eq!(
        errors(&[
            "version: 1",
            "domains:",
            "  - name: a.org",
            "    cgroups: [\"/x/a\\e]0;PWN\\a\\rFAKE\"]",
        ]),
        [
            "p.yaml:4:15: cgroup path `/x/a\\u{1b}]0;PWN\\u{7}\\rFAKE` contains U+001B, a control or invisible formatting character, which would not show as itself; write cgroup paths in printable characters",
        ]
    );
}

/// A byte order mark, as some editors write at the start of a file, is not a key.
#[test]
fn a_leading_byte_order_mark_is_skipped() {
    let text = format!(
        "\u{feff}{}",
        policy(&[
            "version: 1",
            "domains:",
            "  - name: a.org",
            "    mode: audit",
            "    colour: blue"
        ])
    );
    assert_eq!(
        errors_in(&text),
        [format!(
            "p.yaml:5:5: unknown key `colour` in domain; {DOMAIN_KEYS}"
        )]
    );
    let ok = policy(&["version: 1", "domains:", "  - name: a.org"]);
    assert!(parse("p.yaml", &format!("\u{feff}{ok}")).is_ok());
}

mod modes {
    use super::*;

    #[test]
    fn mode_must_be_enforce_or_audit() {
        assert_eq!(
            errors(&[
                "version: 1",
                "defaults:",
                "  mode: permissive",
                "domains:",
                "  - name: a.org",
                "    mode: Audit",
                "  - name: b.org",
                "    mode:",
                "  - name: c.org",
                "    mode: [audit]",
            ]),
            [
                "p.yaml:3:9: `mode` must be `enforce` or `audit`, found `permissive`",
                "p.yaml:6:11: `mode` must be `enforce` or `audit`, found `Audit`",
                "p.yaml:8:5: `mode` must be `enforce` or `audit`, found an empty value",
                "p.yaml:10:11: `mode` must be `enforce` or `audit`, found a list",
            ]
        );
    }

    #[test]
    fn max_grant_ttl_must_be_a_positive_fixed_duration() {
        let ttl = |value: &str| {
            let line = format!("  max_grant_ttl: {value}");
            errors(&["version: 1", "defaults:", &line])
        };
        assert_eq!(
            ttl("0s"),
            ["p.yaml:3:18: duration `0s` must be longer than zero"]
        );
        assert_eq!(
            ttl("1mo"),
            [
                "p.yaml:3:18: `1mo` has no fixed length because months and years vary; write it in days, like `30d`"
            ]
        );
        assert_eq!(
            ttl("12"),
            [
                "p.yaml:3:18: `12` is not a duration; expected something like `30m`, `2h`, `1h30m` or `7d`"
            ]
        );
        assert_eq!(
            ttl("{hours: 12}"),
            ["p.yaml:3:18: `max_grant_ttl` must be a duration, found a mapping"]
        );
    }
}

mod edge_life_cycle {
    use super::*;

    /// A valid edge from a.org to b.org starting at line 6, with `extra`
    /// lines from line 12 on.
    fn edge_with(extra: &[&str]) -> Vec<String> {
        let mut edge = vec![
            "  - from: a.org",
            "    to: b.org",
            "    protocol: tcp",
            "    ports: [443]",
            "    owner: o",
            "    reason: r",
        ];
        edge.extend_from_slice(extra);
        with_edge(&edge)
    }

    const NO_OFFSET: &str = "has no UTC offset, so hosts in different time zones would read it differently; write `Z` or an offset, like `2026-12-01T18:00:00Z` or `2026-12-01T19:00:00+01:00`";

    #[test]
    fn invalid_ids() {
        assert_eq!(
            edge_with(&["    id: DB-read"]),
            [
                "p.yaml:12:9: edge id `DB-read` contains the character 'D'; only lowercase letters a-z, digits 0-9, '-', '.' and '_' are allowed"
            ]
        );
        assert_eq!(
            edge_with(&["    id: _db"]),
            ["p.yaml:12:9: edge id `_db` must start with a letter or digit"]
        );
        assert_eq!(
            edge_with(&["    id:"]),
            ["p.yaml:12:5: `id` must be an edge id, found an empty value"]
        );
        let long = format!("    id: {}", "a".repeat(64));
        assert_eq!(
            edge_with(&[&long]),
            ["p.yaml:12:9: edge id is 64 characters long; the limit is 63"]
        );
    }

    #[test]
    fn duplicate_ids_point_at_the_second_and_name_the_first() {
        assert_eq!(
            with_edge(&[
                "  - id: db",
                "    from: a.org",
                "    to: b.org",
                "    protocol: tcp",
                "    ports: [5432]",
                "    owner: o",
                "    reason: r",
                "  - from: b.org",
                "    to: a.org",
                "    protocol: udp",
                "    ports: [53]",
                "    owner: o",
                "    reason: r",
                "    id: db",
            ]),
            ["p.yaml:19:9: duplicate edge id `db` (first used at line 6)"]
        );
    }

    #[test]
    fn identical_edges_without_ids_are_duplicates() {
        let edge = |ports| {
            [
                "  - from: a.org",
                "    to: b.org",
                "    protocol: tcp",
                ports,
                "    owner: o",
                "    reason: r",
            ]
        };
        let mut lines = edge("    ports: [443, 80]").to_vec();
        lines.extend(edge("    ports: [80, 443]"));
        assert_eq!(
            with_edge(&lines),
            [
                "p.yaml:12:5: duplicate edge: same from, to, protocol and ports as the edge at line 6; remove one or give each an `id`"
            ]
        );
        let mut lines = edge("    ports: [443, 80]").to_vec();
        lines.push("    id: first");
        lines.extend(edge("    ports: [80, 443]"));
        let mut text = vec![
            "version: 1",
            "domains:",
            "  - name: a.org",
            "  - name: b.org",
            "federation:",
        ];
        text.extend(lines);
        assert!(
            parse("p.yaml", &policy(&text)).is_ok(),
            "an explicit id tells identical edges apart"
        );
    }

    #[test]
    fn timestamps_need_an_offset() {
        assert_eq!(
            edge_with(&[
                "    not_before: 2026-11-01T09:00:00",
                "    expires: \"2026-12-01\"",
            ]),
            [
                format!("p.yaml:12:17: timestamp `2026-11-01T09:00:00` {NO_OFFSET}"),
                "p.yaml:13:14: `2026-12-01` is a date without a time and UTC offset; write an instant, like `2026-12-01T18:00:00Z`".to_owned(),
            ]
        );
        assert_eq!(
            edge_with(&["    expires: 2026-12-01 18:00"]),
            [format!(
                "p.yaml:12:14: timestamp `2026-12-01 18:00` {NO_OFFSET}"
            )]
        );
    }

    #[test]
    fn malformed_timestamps() {
        assert_eq!(
            edge_with(&["    expires: next week"]),
            [
                "p.yaml:12:14: `next week` is not an RFC 3339 timestamp; expected something like `2026-12-01T18:00:00Z`"
            ]
        );
        assert_eq!(
            edge_with(&["    not_before: 1764612000"]),
            [
                "p.yaml:12:17: `1764612000` is not an RFC 3339 timestamp; expected something like `2026-12-01T18:00:00Z`"
            ]
        );
        assert_eq!(
            edge_with(&["    expires: ~"]),
            ["p.yaml:12:14: `expires` must be a timestamp, found null"]
        );
        let errors = edge_with(&["    expires: 2026-02-30T00:00:00Z"]);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .starts_with("p.yaml:12:14: `2026-02-30T00:00:00Z` is not a valid timestamp: "),
            "{errors:?}"
        );
    }

    #[test]
    fn invalid_ttls() {
        assert_eq!(
            edge_with(&["    ttl: 0m"]),
            ["p.yaml:12:10: duration `0m` must be longer than zero"]
        );
        assert_eq!(
            edge_with(&["    ttl: -30m"]),
            ["p.yaml:12:10: duration `-30m` must be longer than zero"]
        );
        assert_eq!(
            edge_with(&["    ttl: 1y"]),
            [
                "p.yaml:12:10: `1y` has no fixed length because months and years vary; write it in days, like `30d`"
            ]
        );
        assert_eq!(
            edge_with(&["    ttl: 3600"]),
            [
                "p.yaml:12:10: `3600` is not a duration; expected something like `30m`, `2h`, `1h30m` or `7d`"
            ]
        );
        assert_eq!(
            edge_with(&["    ttl: [1h]"]),
            ["p.yaml:12:10: `ttl` must be a duration, found a list"]
        );
    }

    #[test]
    fn ttl_and_expires_exclude_each_other() {
        let both = "an edge can have `expires` or `ttl`, not both: `expires` ends it at a fixed time, `ttl` a fixed time after the edge is applied";
        assert_eq!(
            edge_with(&["    ttl: 2h", "    expires: 2026-12-01T18:00:00Z"]),
            [format!("p.yaml:13:14: {both}")]
        );
        assert_eq!(
            edge_with(&["    expires: 2026-12-01T18:00:00Z", "    ttl: 2h"]),
            [format!("p.yaml:13:10: {both}")]
        );
        assert_eq!(
            edge_with(&["    expires: 2026-12-01T18:00:00", "    ttl: 0s"]),
            [
                format!("p.yaml:12:14: timestamp `2026-12-01T18:00:00` {NO_OFFSET}"),
                "p.yaml:13:10: duration `0s` must be longer than zero".to_owned(),
                format!("p.yaml:13:10: {both}"),
            ]
        );
    }

    #[test]
    fn not_before_must_be_before_expires() {
        assert_eq!(
            edge_with(&[
                "    not_before: 2026-12-01T19:00:00+01:00",
                "    expires: 2026-12-01T18:00:00Z",
            ]),
            [
                "p.yaml:12:17: `not_before` (2026-12-01T18:00:00Z) must be before `expires` (2026-12-01T18:00:00Z, line 13); the edge would never allow anything"
            ]
        );
        assert_eq!(
            edge_with(&[
                "    expires: 2026-01-01T00:00:00Z",
                "    not_before: 2026-06-01T00:00:00Z",
            ]),
            [
                "p.yaml:13:17: `not_before` (2026-06-01T00:00:00Z) must be before `expires` (2026-01-01T00:00:00Z, line 12); the edge would never allow anything"
            ]
        );
    }

    #[test]
    fn owner_and_reason_must_have_visible_text() {
        assert_eq!(
            with_edge(&[
                "  - from: a.org",
                "    to: b.org",
                "    protocol: tcp",
                "    ports: [443]",
                "    owner: \"\\t\\u00a0\\n\"",
                "    reason: |",
                "",
                "      ",
            ]),
            [
                "p.yaml:10:12: `owner` is empty: every edge needs an accountable owner",
                "p.yaml:11:13: `reason` is empty: every edge needs a reason explaining why the traffic is allowed",
            ]
        );
    }
}

#[test]
fn every_mistake_is_reported_in_file_order() {
    assert_eq!(
        errors(&[
            "version: 1",
            "defaults:",
            "  unlabeled: block",
            "domains:",
            "  - name: a.org",
            "    cgroups: [/a/]",
            "    endpoints: [10.0.0.1/8]",
            "  - name: A.org",
            "    owner: me",
            "federation:",
            "  - from: a.org",
            "    to: c.org",
            "    protocol: tcp",
            "    ports: [0]",
            "    owner: o",
        ]),
        [
            "p.yaml:3:14: `unlabeled` must be `allow` or `deny`, found `block`".to_owned(),
            "p.yaml:6:15: cgroup path `/a/` has a trailing slash; write `/a`".to_owned(),
            "p.yaml:7:17: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?".to_owned(),
            "p.yaml:8:11: trust domain name `A.org` contains the character 'A'; only lowercase letters a-z, digits 0-9, '.', '-' and '_' are allowed (uppercase is not folded to lowercase)".to_owned(),
            format!("p.yaml:9:5: unknown key `owner` in domain; {DOMAIN_KEYS}"),
            "p.yaml:11:5: edge is missing required key `reason`: every edge needs a reason explaining why the traffic is allowed".to_owned(),
            "p.yaml:12:9: edge names unknown domain `c.org`".to_owned(),
            "p.yaml:14:13: port 0 is out of range; ports are 1-65535".to_owned(),
        ]
    );
}

#[test]
fn diagnostics_carry_file_line_and_column() {
    let diagnostics = parse("policies/prod.yaml", "version: 3\n").expect_err("unsupported");
    assert_eq!(diagnostics.len(), 1);
    let d = &diagnostics[0];
    assert_eq!(
        (d.file.as_str(), d.line, d.column),
        ("policies/prod.yaml", 1, 10)
    );
    assert_eq!(
        d.message,
        "unsupported policy version 3 (this enforcer understands version 1)"
    );
}

mod trust_bundles {
    use super::*;

    const EDGE: &[&str] = &[
        "  - from: a.org",
        "    to: b.org",
        "    protocol: tcp",
        "    ports: [443]",
        "    owner: o",
        "    reason: r",
    ];

    fn with(domains: &[&str], edge_extra: &[&str], require_by_default: bool) -> Vec<String> {
        let mut lines = vec!["version: 1"];
        if require_by_default {
            lines.extend_from_slice(&["defaults:", "  require_bundles: true"]);
        }
        lines.push("domains:");
        lines.extend_from_slice(domains);
        lines.push("federation:");
        lines.extend_from_slice(EDGE);
        lines.extend_from_slice(edge_extra);
        errors(&lines)
    }

    #[test]
    fn bundle_paths_must_be_absolute() {
        assert_eq!(
            with(
                &[
                    "  - name: a.org",
                    "    bundle: certs/a.pem",
                    "  - name: b.org"
                ],
                &[],
                false
            ),
            [
                "p.yaml:4:13: bundle path `certs/a.pem` is relative; write it absolute (the daemon reads it, from its own working directory)"
            ]
        );
    }

    #[test]
    fn attested_domains_need_a_bundle_and_no_cgroups() {
        assert_eq!(
            with(
                &[
                    "  - name: a.org",
                    "    attested: true",
                    "    cgroups: [/a]",
                    "  - name: b.org"
                ],
                &[],
                false
            ),
            [
                "p.yaml:4:15: an attested domain needs a `bundle` or `bundle_from`: attestation checks SVIDs against it",
                "p.yaml:5:15: an attested domain gets its cgroups from attestation; remove `cgroups` or `attested`",
            ]
        );
        assert_eq!(
            with(
                &["  - name: a.org", "    attested: yes", "  - name: b.org"],
                &[],
                false
            ),
            ["p.yaml:4:15: `attested` must be `true` or `false`, found `yes`"]
        );
    }

    #[test]
    fn a_bundle_comes_from_one_source() {
        assert_eq!(
            with(
                &[
                    "  - name: a.org",
                    "    bundle: /etc/a.pem",
                    "    bundle_from: workload_api",
                    "  - name: b.org",
                    "    bundle_from: agent",
                ],
                &[],
                false
            ),
            [
                "p.yaml:5:18: a domain's bundle comes from one place: remove `bundle_from`, or `bundle` and `bundle_endpoint`",
                "p.yaml:7:18: `bundle_from` must be `workload_api`, found `agent`",
            ]
        );
        // A bundle from the Workload API counts as a bundle for attestation and for edges
        // that require bundles.
        let mut lines = vec![
            "version: 1",
            "domains:",
            "  - name: a.org",
            "    attested: true",
            "    bundle_from: workload_api",
            "  - name: b.org",
            "    bundle_from: workload_api",
            "federation:",
        ];
        lines.extend_from_slice(EDGE);
        lines.push("    require_bundles: true");
        let policy = parse("p.yaml", &policy(&lines)).expect("a valid policy");
        assert_eq!(
            policy.domains[0].bundle_from.as_ref().map(|b| b.source),
            Some(enforcer_policy::BundleSource::WorkloadApi)
        );
        assert!(policy.federation[0].require_bundles);
    }

    #[test]
    fn edges_requiring_bundles_need_both_ends_to_name_one() {
        let one_bundle = [
            "  - name: a.org",
            "    bundle: /etc/a.pem",
            "  - name: b.org",
        ];
        assert_eq!(
            with(&one_bundle, &["    require_bundles: true"], false),
            [
                "p.yaml:13:22: the edge requires the trust bundles of both ends, but domain `b.org` names no `bundle` or `bundle_endpoint`"
            ]
        );
        assert_eq!(
            with(&one_bundle, &[], true),
            [
                "p.yaml:9:5: the edge requires the trust bundles of both ends, but domain `b.org` names no `bundle` or `bundle_endpoint`"
            ]
        );
        let two = [
            "  - name: a.org",
            "    bundle: /etc/a.pem",
            "  - name: b.org",
            "    bundle: /etc/b.json",
        ];
        let parsed = parse(
            "p.yaml",
            &policy(
                &[
                    &[
                        "version: 1",
                        "defaults:",
                        "  require_bundles: true",
                        "domains:",
                    ][..],
                    &two,
                    &["federation:"],
                    EDGE,
                ]
                .concat(),
            ),
        )
        .expect("valid");
        assert!(parsed.defaults.require_bundles);
        assert!(parsed.federation[0].require_bundles);
        let bundle = parsed.domains[1].bundle.as_ref().expect("bundle");
        assert_eq!(
            (bundle.path.to_str(), bundle.line, bundle.column),
            (Some("/etc/b.json"), 8, 13)
        );
        let opted_out = [
            &[
                "version: 1",
                "defaults:",
                "  require_bundles: true",
                "domains:",
            ][..],
            &one_bundle,
            &["federation:"],
            EDGE,
            &["    require_bundles: false"],
        ]
        .concat();
        let parsed = parse("p.yaml", &policy(&opted_out)).expect("an edge may opt out");
        assert!(!parsed.federation[0].require_bundles);
    }
}

mod bundle_endpoints {
    use enforcer_policy::EndpointProfile;

    use super::*;

    fn domain(lines: &[&str]) -> Vec<String> {
        let mut all = vec!["version: 1", "domains:", "  - name: a.org"];
        all.extend_from_slice(lines);
        errors(&all)
    }

    #[test]
    fn both_profiles_parse_and_count_as_bundles() {
        let text = policy(&[
            "version: 1",
            "defaults: {require_bundles: true}",
            "domains:",
            "  - name: a.org",
            "    bundle_endpoint: {url: 'https://a.org/bundle', profile: https_web}",
            "  - name: b.org",
            "    bundle: /etc/b.pem",
            "    bundle_endpoint:",
            "      url: https://127.0.0.1:8443",
            "      profile: https_spiffe",
            "      endpoint_id: spiffe://b.org/spire/server",
            "federation:",
            "  - {from: a.org, to: b.org, protocol: tcp, ports: [1], owner: o, reason: r}",
        ]);
        let parsed = parse("p.yaml", &text).expect("valid");
        let a = parsed.domains[0].bundle_endpoint.as_ref().expect("a");
        assert_eq!(a.url, "https://a.org/bundle");
        assert_eq!(a.profile, EndpointProfile::HttpsWeb);
        let b = parsed.domains[1].bundle_endpoint.as_ref().expect("b");
        assert_eq!(
            b.profile,
            EndpointProfile::HttpsSpiffe {
                endpoint_id: "spiffe://b.org/spire/server".parse().expect("id")
            }
        );
        assert_eq!((b.line, b.column), (9, 7));
    }

    #[test]
    fn mistakes_are_reported_where_they_are() {
        assert_eq!(
            domain(&["    bundle_endpoint: {url: 'http://a.org/b', profile: https_web}"]),
            [
                "p.yaml:4:28: bundle endpoint URL `http://a.org/b` must start with https:// (SPIFFE Federation serves bundles over TLS only)"
            ]
        );
        assert_eq!(
            domain(&["    bundle_endpoint: {url: 'https://a.org', profile: spiffe}"]),
            ["p.yaml:4:54: `profile` must be `https_web` or `https_spiffe`, found `spiffe`"]
        );
        assert_eq!(
            domain(&["    bundle_endpoint: {profile: https_web, port: 1}"]),
            [
                "p.yaml:4:22: bundle_endpoint is missing required key `url`: the https:// URL the domain's bundle is fetched from",
                "p.yaml:4:43: unknown key `port` in bundle_endpoint; expected one of: url, profile, endpoint_id",
            ]
        );
        assert_eq!(
            domain(&[
                "    bundle_endpoint: {url: 'https://a.org', profile: https_web, endpoint_id: 'spiffe://a.org/s'}"
            ]),
            [
                "p.yaml:4:78: `endpoint_id` belongs to profile `https_spiffe`; an `https_web` endpoint is authenticated by its Web PKI certificate"
            ]
        );
        assert_eq!(
            domain(&[
                "    bundle: /etc/a.pem",
                "    bundle_endpoint: {url: 'https://a.org', profile: https_spiffe}"
            ]),
            [
                "p.yaml:5:22: a bundle_endpoint with profile `https_spiffe` is missing required key `endpoint_id`: the SPIFFE ID the endpoint server's SVID must carry"
            ]
        );
        assert_eq!(
            domain(&[
                "    bundle: /etc/a.pem",
                "    bundle_endpoint: {url: 'https://a.org', profile: https_spiffe, endpoint_id: 'spiffe://a.org/a/'}"
            ]),
            [
                "p.yaml:5:81: SPIFFE ID `spiffe://a.org/a/` has an empty path segment (or a trailing slash)"
            ]
        );
        assert_eq!(
            domain(&[
                "    bundle_endpoint: {url: 'https://a.org', profile: https_spiffe, endpoint_id: 'spiffe://b.org/s'}"
            ]),
            [
                "p.yaml:4:22: a bundle_endpoint with profile `https_spiffe` needs a `bundle` file: the bootstrap bundle that authenticates the endpoint until its first fetch",
                "p.yaml:4:22: `endpoint_id` spiffe://b.org/s is not in trust domain a.org: the endpoint's SVID is checked against this domain's bundle",
            ]
        );
    }
}
