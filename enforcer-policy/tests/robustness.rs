//! `parse` must never panic or overflow the stack, whatever it is given,
//! and must always explain a failure with at least one diagnostic that
//! points inside the file.

use enforcer_policy::{Diagnostic, Policy, parse};

const EXAMPLE: &str = include_str!("example.yaml");
/// Every optional key, so mutations reach the timestamp, duration and id
/// parsers too.
const LIFECYCLE: &str = include_str!("lifecycle.yaml");
const EXAMPLES: [&str; 2] = [EXAMPLE, LIFECYCLE];

fn check(text: &str) -> Result<Policy, Vec<Diagnostic>> {
    let result = parse("p.yaml", text);
    if let Err(diagnostics) = &result {
        assert!(
            !diagnostics.is_empty(),
            "failure without diagnostics for {text:?}"
        );
        // YAML ends a line at `\n`, `\r\n` or a lone `\r`.
        let line_breaks = text
            .replace("\r\n", "\n")
            .chars()
            .filter(|&c| c == '\n' || c == '\r')
            .count();
        let last_line = line_breaks + 1;
        for d in diagnostics {
            assert!(
                (1..=last_line).contains(&d.line) && d.column >= 1,
                "{d} is outside {text:?}"
            );
        }
    }
    result
}

#[test]
fn every_truncation_of_the_examples_is_handled() {
    for example in EXAMPLES {
        let mut accepted = 0;
        for end in (0..=example.len()).filter(|&end| example.is_char_boundary(end)) {
            let prefix = example.get(..end).unwrap_or_default();
            if check(prefix).is_ok() {
                accepted += 1;
            }
        }
        // Cutting the file at a line end can leave a smaller valid policy;
        // the full example is one of them.
        assert!(accepted >= 1);
    }
}

#[test]
fn every_suffix_of_the_examples_is_handled() {
    for example in EXAMPLES {
        for start in (0..=example.len()).filter(|&start| example.is_char_boundary(start)) {
            let _ = check(example.get(start..).unwrap_or_default());
        }
    }
}

/// Deterministic small mutations (insert, delete, replace a character) of
/// the examples, biased towards YAML's structural characters.
#[test]
fn mutated_examples_are_handled() {
    let alphabet: Vec<char> = "[]{}:,-?!&*#|>'\"%@ \n\t\r\\a1.~/\u{feff}é\0"
        .chars()
        .collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random = |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % below as u64).unwrap_or(0)
    };
    for round in 0..6000 {
        let mut chars: Vec<char> = EXAMPLES[round % EXAMPLES.len()].chars().collect();
        for _ in 0..1 + random(4) {
            let at = random(chars.len() + 1);
            let c = alphabet[random(alphabet.len())];
            match random(3) {
                0 => chars.insert(at, c),
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ if at < chars.len() => chars[at] = c,
                _ => chars.push(c),
            }
        }
        let _ = check(&chars.into_iter().collect::<String>());
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let compact = format!("version: 1\ndomains:\n{}x\n", "- ".repeat(100_000));
    let keys = format!("version: 1\ndomains:\n{}x\n", "? ".repeat(100_000));
    let flow = format!("version: 1\ndomains: {}\n", "[".repeat(100_000));
    let flow_maps = format!("version: 1\ndomains: {}\n", "{a: ".repeat(100_000));
    for text in [compact, keys, flow, flow_maps] {
        assert!(check(&text).is_err());
    }
}

#[test]
fn nesting_just_inside_the_limits_is_safe() {
    // One block level per column up to the indentation limit, then flow
    // nesting up to the YAML parser's own limit.
    let mut text = String::from("version: 1\ndomains:\n");
    for indent in (0..78).step_by(2) {
        text.push_str(&" ".repeat(indent));
        text.push_str("- k:\n");
    }
    text.push_str(&" ".repeat(78));
    text.push_str(&"[".repeat(250));
    text.push_str(&"]".repeat(250));
    text.push('\n');
    assert!(check(&text).is_err());
}

#[test]
fn odd_inputs_are_handled() {
    let long_line = format!("version: 1\nfederation: [{}]\n", "x".repeat(1_000_000));
    let many_domains: String = std::iter::once("version: 1\ndomains:\n".to_owned())
        .chain((0..5000).map(|i| format!("  - name: d{i}.org\n    cgroups: [/d{i}]\n")))
        .collect();
    for text in [
        "\u{feff}version: 1\n",
        "version: 1\r\ndomains: []\r\n",
        "\0",
        "version: 1\0",
        "version: 1\n\u{2028}domains: []\n",
        ":",
        "? - a\n",
        "[a]: b\n",
        "version: 1\ndomains:\n  - *alias\n",
        "version: 1\ndomains: !!seq []\n",
        "\"unterminated",
        "version: 1\n--- !tag\n",
        "%YAML 9.9\n---\nversion: 1\n",
        "version: 1\ndefaults: {max_grant_ttl: 99999999999999999999999999d}\n",
        "version: 1\ndefaults: {max_grant_ttl: 1y1mo1w1d1h1m1s1ms1us1ns}\n",
        "version: 1\nfederation: [{ttl: \"P9999999999999999999Y\", expires: 9999-12-31T23:59:59-23:59}]\n",
        "version: 1\nfederation: [{not_before: \"-009999-01-01T00:00:00Z\", expires: 0000-00-00T00:00:60Z}]\n",
        "version: 1\nfederation: [{id: \"\u{00e9}\u{0301}\"}, {id: \"\"}, {id: .}]\n",
        long_line.as_str(),
        many_domains.as_str(),
    ] {
        let _ = check(text);
    }
    assert!(check(&many_domains).is_ok());
}
