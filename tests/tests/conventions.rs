//! The conventions every host tool keeps: `--version` naming the build, `ENFORCER_*`
//! environment variables for the daemon's flags, validated exactly like the flags, and a
//! health check beside the metrics.
//! Ports 39700-39799 belong to this file.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use enforcer_tests::{Json, Sandbox, enforcer, http_get, privileged};
use sha2::{Digest as _, Sha256};

/// `enforcer --version`, as `key: value` pairs after the first line (`enforcer VERSION`).
fn version() -> Vec<(String, String)> {
    let out = Command::new(enforcer())
        .arg("--version")
        .output()
        .expect("running enforcer --version");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(concat!("enforcer ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    lines
        .map(|line| {
            let (key, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("not `key: value`: {line:?} in {text}"));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("--version has no {key}: {fields:?}"))
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// Every eBPF object build.rs left under `target/` (one per build configuration); none where
/// the test runs without its build tree (a VM guest gets the executables alone).
fn built_objects() -> Vec<PathBuf> {
    let exe = std::env::current_exe().expect("current exe");
    let Some(profile) = exe.ancestors().find(|dir| dir.join("build").is_dir()) else {
        return Vec::new();
    };
    fs::read_dir(profile.join("build"))
        .expect("reading target/PROFILE/build")
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("enforcer-"))
        .map(|entry| entry.path().join("out/enforcer"))
        .filter(|object| object.is_file())
        .collect()
}

#[test]
fn version_names_the_commit_the_build_time_and_the_object() {
    let fields = version();
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["commit", "built", "ebpf-sha256"]);

    let commit = field(&fields, "commit");
    let head = Command::new("git")
        .arg("-C")
        .arg(workspace())
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    match head {
        Some(head) => assert_eq!(commit.strip_suffix("-dirty").unwrap_or(commit), head),
        // A VM guest runs the tests without the checkout.
        None => assert!(is_hex(commit.trim_end_matches("-dirty"), 40), "{commit}"),
    }

    let built = field(&fields, "built");
    assert!(
        built.len() == 20 && built.ends_with('Z') && built.as_bytes()[10] == b'T',
        "not RFC 3339 UTC: {built}"
    );

    let sha = field(&fields, "ebpf-sha256");
    assert!(is_hex(sha, 64), "{sha}");
    let objects = built_objects();
    if !objects.is_empty() {
        let digests: Vec<String> = objects
            .iter()
            .map(|object| {
                let bytes = fs::read(object).expect("reading the object");
                Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect();
        assert!(
            digests.iter().any(|digest| digest == sha),
            "{sha} is the digest of none of {objects:?} ({digests:?})"
        );
    }
}

fn daemon_refusal(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(enforcer())
        .arg("daemon")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running enforcer daemon")
}

/// A value from the environment goes through the flag's own parser: the same refusal, word
/// for word, before anything happens.
#[test]
fn environment_values_are_refused_like_flags() {
    for (flag, var, value) in [
        (
            "--bundle-warn-before",
            "ENFORCER_BUNDLE_WARN_BEFORE",
            "soon",
        ),
        ("--metrics-addr", "ENFORCER_METRICS_ADDR", "localhost"),
        ("--admin-listen", "ENFORCER_ADMIN_LISTEN", "127.0.0.1:x"),
        ("--policy", "ENFORCER_POLICY", ""),
    ] {
        // Every case but --policy's own needs the one required flag.
        let base: &[&str] = if flag == "--policy" {
            &[]
        } else {
            &["--policy", "/nonexistent"]
        };
        let by_flag = daemon_refusal(&[base, &[flag, value]].concat(), &[]);
        let by_env = daemon_refusal(base, &[(var, value)]);
        assert_eq!(by_flag.status.code(), Some(2), "{flag}: {by_flag:?}");
        assert_eq!(by_env.status.code(), Some(2), "{var}: {by_env:?}");
        assert_eq!(
            String::from_utf8_lossy(&by_env.stderr),
            String::from_utf8_lossy(&by_flag.stderr),
            "{var}={value:?}"
        );
    }
    // A flag wins over the environment.
    let out = daemon_refusal(
        &["--policy", "/nonexistent", "--bundle-warn-before", "soon"],
        &[("ENFORCER_BUNDLE_WARN_BEFORE", "1h")],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("'soon'"),
        "{out:?}"
    );
    let help = Command::new(enforcer())
        .args(["daemon", "--help"])
        .output()
        .expect("running enforcer daemon --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for var in ["ENFORCER_POLICY", "ENFORCER_PIN_DIR", "ENFORCER_SOCKET"] {
        assert!(help.contains(&format!("[env: {var}=")), "{var}: {help}");
    }
}

/// The daemon started with every path from the environment runs where they say, `status`
/// names its build as `--version` does, and `/healthz` says whether enforcement is in place.
#[test]
fn daemon_takes_its_paths_from_the_environment() {
    if !privileged("daemon_takes_its_paths_from_the_environment") {
        return;
    }
    let mut sb = Sandbox::new("conv-env");
    let prod = sb.cgroup("prod");
    let policy = sb.policy(
        "policy.yaml",
        "version: 1\ndomains:\n  - name: prod.example.org\n    cgroups: ['{root}/prod']\n",
    );
    let metrics = "127.0.0.1:39701";
    sb.start_daemon_from_env(&policy, &[("ENFORCER_METRICS_ADDR", metrics)]);
    assert!(
        sb.socket.exists(),
        "the control socket is at ENFORCER_SOCKET"
    );
    let status = sb.status();
    let text = |key: &str| {
        status
            .get(key)
            .and_then(Json::as_str)
            .unwrap_or_else(|| panic!("status has {key}: {status}"))
            .to_owned()
    };
    assert_eq!(text("pin_dir"), sb.pin_dir.display().to_string());
    assert!(text("cgroup_root").ends_with(&sb.root), "{status}");
    let bound = status
        .get("domains")
        .and_then(|d| d.find_by("name", "prod.example.org"))
        .and_then(|d| d.get("bindings"))
        .map(|b| b.as_array().to_vec())
        .unwrap_or_default();
    assert_eq!(
        bound
            .first()
            .and_then(|b| b.get("cgroup"))
            .and_then(Json::as_str),
        Some(prod.as_str()),
        "{status}"
    );
    assert!(sb.state_dir.is_dir(), "the state is at ENFORCER_STATE_DIR");

    let fields = version();
    let build = status.get("build").expect("status has the daemon's build");
    for (key, json_key) in [
        ("commit", "commit"),
        ("built", "built"),
        ("ebpf-sha256", "ebpf_sha256"),
    ] {
        assert_eq!(
            build.get(json_key).and_then(Json::as_str),
            Some(field(&fields, key)),
            "{build}"
        );
    }
    let out = sb.enforcer(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("ebpf sha256 {}", field(&fields, "ebpf-sha256"))),
        "{text}"
    );

    let addr = metrics.parse().expect("an address");
    let health = http_get(addr, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    // A link unpinned under the running daemon would not outlive it: not healthy.
    let link = status
        .get("programs")
        .map(|p| p.as_array().to_vec())
        .unwrap_or_default()
        .first()
        .and_then(|p| p.get("link_pin"))
        .and_then(Json::as_str)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("status lists the programs' link pins: {status}"));
    fs::remove_file(&link).expect("unpinning a link");
    let health = http_get(addr, "/healthz");
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(
        health
            .body
            .contains(&format!("no longer pinned at {}", link.display())),
        "{}",
        health.body
    );
}
