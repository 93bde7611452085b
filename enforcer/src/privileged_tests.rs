//! For unit tests that need root: they run only as root, and without it say so loudly, or
//! fail when CI requires them (as in the workspace's tests crate).

/// Set by CI: a privileged test that cannot run is a failure, not a skip.
const REQUIRE_ENV: &str = "ENFORCER_REQUIRE_PRIVILEGED";

/// Whether `test`, which exercises `what`, can run here.
pub fn privileged(test: &str, what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os(REQUIRE_ENV).is_none(),
        "{test}: privileged test cannot run (not root) and {REQUIRE_ENV} is set"
    );
    eprintln!(
        "\n!!!!!!!! SKIPPED privileged test {test}: not running as root. {what} was not \
         tested. Set {REQUIRE_ENV}=1 to make this a failure. !!!!!!!!\n"
    );
    false
}
