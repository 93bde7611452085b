//! Reading a guest's results port into per-executable outcomes, and the table printed at the
//! end of a run.

use std::time::Duration;

use super::guest::{Ended, MARK, Session};

/// One test executable's run in the guest.
pub struct ExeResult {
    pub name: String,
    /// The exit status the guest's shell reported; `None` if it never finished.
    pub status: Option<i32>,
    pub passed: usize,
    pub failed: usize,
    pub output: Vec<String>,
}

impl ExeResult {
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }
}

/// Splits the results port into the executables' outputs, in the order they were run.
/// `names` are the executables' display names, indexed as the init script numbered them.
pub fn executables(session: &Session, names: &[String]) -> Vec<ExeResult> {
    let mut results: Vec<ExeResult> = names
        .iter()
        .map(|name| ExeResult {
            name: name.clone(),
            status: None,
            passed: 0,
            failed: 0,
            output: Vec::new(),
        })
        .collect();
    let mut current: Option<usize> = None;
    for line in &session.lines {
        if let Some(rest) = line.strip_prefix(MARK) {
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                ["begin", i] => current = i.parse().ok().filter(|i| *i < results.len()),
                ["end", i, code] => {
                    if let Some(r) = i.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
                        r.status = code.parse().ok();
                    }
                    current = None;
                }
                _ => {}
            }
            continue;
        }
        let Some(r) = current.and_then(|i| results.get_mut(i)) else {
            continue;
        };
        // libtest: "test NAME ... ok" / "... FAILED"
        if line.starts_with("test ") {
            if line.ends_with(" ... ok") {
                r.passed += 1;
            } else if line.ends_with(" ... FAILED") {
                r.failed += 1;
            }
        }
        r.output.push(line.clone());
    }
    results
}

/// How the daemon ended in a refusal run: its exit status, whether it left pins behind, and
/// what it printed.
pub struct Refusal {
    pub status: Option<i32>,
    pub pins_left: bool,
    pub output: Vec<String>,
}

/// The daemon must exit non-zero, say which kernel feature is missing, and change nothing.
pub const REFUSAL_TEXT: &str = "kernel lacks";

impl Refusal {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s != 0)
            && !self.pins_left
            && self.output.iter().any(|l| l.contains(REFUSAL_TEXT))
    }
}

pub fn refusal(session: &Session) -> Option<Refusal> {
    let mut output = Vec::new();
    let mut inside = false;
    for line in &session.lines {
        if let Some(rest) = line.strip_prefix(MARK) {
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                ["begin", "refusal"] => inside = true,
                ["end", "refusal", code, pins] => {
                    return Some(Refusal {
                        status: code.parse().ok(),
                        pins_left: *pins != "absent",
                        output,
                    });
                }
                _ => {}
            }
        } else if inside {
            output.push(line.clone());
        }
    }
    None
}

/// Why a session ended other than by the guest's own `done`, if it did.
pub fn ending(session: &Session) -> Option<String> {
    match &session.ended {
        Ended::Done => None,
        Ended::BootTimeout => Some("the guest did not finish booting in time".into()),
        Ended::RunTimeout => Some("the guest did not finish the tests in time (killed)".into()),
        Ended::Exited(stderr) => Some(format!(
            "qemu exited before the guest finished{}",
            if stderr.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", stderr.trim())
            }
        )),
    }
}

pub fn seconds(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// The lines of a failing executable worth showing: libtest's failure report if there is
/// one, else the last lines it wrote.
pub fn failure_excerpt(output: &[String]) -> &[String] {
    const TAIL: usize = 60;
    if let Some(start) = output.iter().position(|l| l == "failures:") {
        return &output[start..];
    }
    &output[output.len().saturating_sub(TAIL)..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(lines: &[&str]) -> Session {
        Session {
            ended: Ended::Done,
            boot: None,
            run: None,
            lines: lines.iter().map(|l| (*l).to_string()).collect(),
        }
    }

    #[test]
    fn splits_outputs_and_counts_tests() {
        let s = session(&[
            "@@enforcer-vm ready 6.1.0",
            "@@enforcer-vm begin 0",
            "running 2 tests",
            "test a ... ok",
            "test b ... FAILED",
            "failures:",
            "@@enforcer-vm end 0 101",
            "@@enforcer-vm begin 1",
            "test c ... ok",
            "@@enforcer-vm end 1 0",
            "@@enforcer-vm done",
        ]);
        let r = executables(&s, &["x".into(), "y".into()]);
        assert_eq!((r[0].passed, r[0].failed, r[0].status), (1, 1, Some(101)));
        assert_eq!(failure_excerpt(&r[0].output), ["failures:".to_string()]);
        assert!(r[1].ok());
        assert_eq!(r[1].passed, 1);
    }

    #[test]
    fn an_executable_that_never_ended_is_not_ok() {
        let s = session(&["@@enforcer-vm begin 0", "test a ... ok"]);
        assert!(!executables(&s, &["x".into()])[0].ok());
    }

    #[test]
    fn a_refusal_needs_the_message_an_error_and_no_pins() {
        let good = session(&[
            "@@enforcer-vm begin refusal",
            "Error: kernel lacks X",
            "@@enforcer-vm end refusal 1 absent",
        ]);
        assert!(refusal(&good).is_some_and(|r| r.ok()));
        let pins = session(&[
            "@@enforcer-vm begin refusal",
            "Error: kernel lacks X",
            "@@enforcer-vm end refusal 1 present",
        ]);
        assert!(refusal(&pins).is_some_and(|r| !r.ok()));
        let started = session(&[
            "@@enforcer-vm begin refusal",
            "@@enforcer-vm end refusal 124 present",
        ]);
        assert!(refusal(&started).is_some_and(|r| !r.ok()));
    }
}
