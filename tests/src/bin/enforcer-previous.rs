//! Builds (once) the `enforcer` binary of the previous map layout that the upgrade test starts
//! (`enforcer_tests::PREVIOUS_LAYOUT`) and prints its path: `cargo xtask vm-test` ships it
//! into guests, which have neither git nor cargo to build it there.

fn main() {
    let binary = enforcer_tests::enforcer_at(enforcer_tests::PREVIOUS_LAYOUT);
    println!("{}", binary.display());
}
