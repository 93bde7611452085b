//! Running a copy of a binary that was just written: a test that copies the CLI for another
//! user to run shares the process with test threads that fork.

use std::{io, process::Command, thread, time::Duration};

/// Runs `command` with `run` (`Command::output`, `Command::spawn`). The copy's write
/// descriptor can live on for a moment in a child another test thread is forking, and exec
/// fails with ETXTBSY until that child execs: nothing to wait on but time, so the start is
/// retried briefly.
pub fn retry_busy<T>(command: &mut Command, run: impl Fn(&mut Command) -> io::Result<T>) -> T {
    for _ in 0..50 {
        match run(command) {
            Err(err) if err.kind() == io::ErrorKind::ExecutableFileBusy => {
                thread::sleep(Duration::from_millis(20));
            }
            result => return result.expect("running a program as another user"),
        }
    }
    panic!("{command:?} stayed busy (ETXTBSY) for a second");
}
