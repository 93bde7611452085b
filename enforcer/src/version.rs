//! Which build this is, stamped by `build.rs`: shown by `enforcer --version` and, for the
//! daemon's own build, by `status`. The eBPF object's digest names the kernel programs exactly,
//! even across builds of one commit with different toolchains.

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `git rev-parse HEAD` at build time, `-dirty` when the binary's sources differed from it,
/// or "unknown" when built outside a git checkout.
pub const COMMIT: &str = env!("ENFORCER_COMMIT");
/// When it was built (UTC, RFC 3339); `SOURCE_DATE_EPOCH` when set, for reproducible builds.
pub const BUILT: &str = env!("ENFORCER_BUILT");
/// The SHA-256 of the embedded eBPF object, lowercase hex.
pub const EBPF_SHA256: &str = env!("ENFORCER_EBPF_SHA256");

/// What `enforcer --version` prints after the name, one `key: value` a line for scripts.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("ENFORCER_COMMIT"),
    "\nbuilt: ",
    env!("ENFORCER_BUILT"),
    "\nebpf-sha256: ",
    env!("ENFORCER_EBPF_SHA256"),
);

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;

    #[test]
    fn the_digest_is_of_the_embedded_object() {
        let object = include_bytes!(concat!(env!("OUT_DIR"), "/enforcer"));
        assert_eq!(EBPF_SHA256, crate::trust::hex(&Sha256::digest(object)));
    }

    #[test]
    fn the_stamps_have_their_formats() {
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let commit = COMMIT.strip_suffix("-dirty").unwrap_or(COMMIT);
        assert!(COMMIT == "unknown" || hex(commit, 40), "{COMMIT}");
        assert!(BUILT.parse::<jiff::Timestamp>().is_ok(), "{BUILT}");
        assert!(BUILT.ends_with('Z'), "{BUILT}");
        assert!(LONG.starts_with(VERSION), "{LONG}");
    }
}
