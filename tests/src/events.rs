//! `enforcer events --follow -o json` as a test sees it: a child process whose lines arrive
//! on a channel, started only once the daemon has accepted it as a follower (the CLI says so
//! on stderr), so no event after that point can be missed.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::Json;

pub struct EventFollower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl EventFollower {
    /// Runs `command` (an `enforcer events --follow -o json ...`) and returns once it follows.
    pub fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting enforcer events --follow");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut stderr = BufReader::new(stderr).lines();
        match stderr.next() {
            Some(Ok(line)) if line.contains("following events") => {}
            other => {
                let _ = child.kill();
                panic!("enforcer events --follow did not start following: {other:?}");
            }
        }
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Every event up to and including the first one `last` accepts, waiting at most
    /// `timeout` in all; panics with what arrived if `last` never comes.
    pub fn until(&self, last: impl Fn(&Json) -> bool, timeout: Duration) -> Vec<Json> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let event = Json::parse(&line)
                        .unwrap_or_else(|e| panic!("an event line is not JSON ({e}): {line}"));
                    let done = last(&event);
                    events.push(event);
                    if done {
                        return events;
                    }
                }
                Err(_) => panic!(
                    "the awaited event did not arrive within {timeout:?}; got:\n{}",
                    events
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }
}

impl Drop for EventFollower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
