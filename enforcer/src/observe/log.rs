//! The daemon's log: one line per message, on standard error, through the `log` facade
//! (`log::error!`, `warn!`, `info!`, `debug!`). [`install`] puts the logger in place when the
//! daemon starts.
//!
//! On a terminal (or a pipe, or a file) a line reads `enforcer: warning: MESSAGE`, with no level
//! word for `info`. Under systemd, whose journal names the unit and shows the level itself, a
//! line starts with the sd-daemon(3) priority prefix instead (`<4>warning: MESSAGE`), so
//! `journalctl -p warning` finds warnings and errors. The daemon knows it writes to the journal
//! when `JOURNAL_STREAM` names the device and inode of its standard error, as systemd.exec(5)
//! says to check: a child that inherited the variable but writes elsewhere is not fooled.
//!
//! `ENFORCER_LOG` (`off`, `error`, `warn`, `info`, `debug`, `trace`; default `info`) sets the
//! least severe level written.

use std::{
    borrow::Cow,
    io::Write as _,
    os::{
        fd::{AsFd as _, BorrowedFd},
        unix::fs::MetadataExt as _,
    },
};

use ::log::{Level, LevelFilter, Log, Metadata, Record};

/// The variable that sets the least severe level written.
const LEVEL_ENV: &str = "ENFORCER_LOG";

/// Installs the daemon's logger, once; later calls change nothing.
pub fn install() {
    let (level, bad) = match std::env::var(LEVEL_ENV) {
        Ok(value) => match value.trim().parse::<LevelFilter>() {
            Ok(level) => (level, None),
            Err(_) => (LevelFilter::Info, Some(value)),
        },
        Err(_) => (LevelFilter::Info, None),
    };
    let logger = Logger {
        journald: writes_to_journal(),
    };
    if ::log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        ::log::set_max_level(level);
        if let Some(bad) = bad {
            ::log::warn!(
                "{LEVEL_ENV}={bad} is not a level (off, error, warn, info, debug, trace); \
                 logging at info"
            );
        }
    }
}

struct Logger {
    /// Whether standard error is the journal's stream.
    journald: bool,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= ::log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let line = line(self.journald, record.level(), &message);
        // One write for the whole line, so lines from different threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// The line written for `message` at `level`, newline included. Every message goes through
/// [`one_line`], whatever it holds: a file name, an owner or a reason comes from users, and a
/// line break in it would forge a log line of its own.
fn line(journald: bool, level: Level, message: &str) -> String {
    let word = match level {
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        Level::Info => "",
        Level::Debug => "debug: ",
        Level::Trace => "trace: ",
    };
    let message = one_line(message);
    if journald {
        // sd-daemon(3): LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG.
        let priority = match level {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug | Level::Trace => 7,
        };
        format!("<{priority}>{word}{message}\n")
    } else {
        format!("enforcer: {word}{message}\n")
    }
}

/// Whether standard error is connected to the journal: systemd sets `JOURNAL_STREAM` to
/// `DEVICE:INODE` of the stream it gave the service.
fn writes_to_journal() -> bool {
    let stream = std::env::var_os("JOURNAL_STREAM");
    is_journal(stream.as_deref(), std::io::stderr().as_fd())
}

/// Whether `fd` is the stream a `JOURNAL_STREAM` value names.
fn is_journal(journal_stream_value: Option<&std::ffi::OsStr>, fd: BorrowedFd<'_>) -> bool {
    let Some((dev, ino)) = journal_stream_value
        .and_then(|value| value.to_str())
        .and_then(journal_stream)
    else {
        return false;
    };
    let meta = fd
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|file| file.metadata());
    meta.is_ok_and(|meta| meta.dev() == dev && meta.ino() == ino)
}

/// The device and inode in a `JOURNAL_STREAM` value.
fn journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// `text` with every control character (and the Unicode line and paragraph separators)
/// escaped as Rust writes it (`\n`, `\u{1b}`), so it prints as one line.
fn one_line(text: &str) -> Cow<'_, str> {
    let breaks = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.contains(breaks) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if breaks(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_line_names_the_program_and_any_level_but_info() {
        assert_eq!(
            line(false, Level::Warn, "the bundle lapsed"),
            "enforcer: warning: the bundle lapsed\n"
        );
        assert_eq!(
            line(false, Level::Error, "poll failed"),
            "enforcer: error: poll failed\n"
        );
        assert_eq!(
            line(false, Level::Info, "control socket /run/x"),
            "enforcer: control socket /run/x\n"
        );
        assert_eq!(
            line(false, Level::Debug, "detail"),
            "enforcer: debug: detail\n"
        );
    }

    #[test]
    fn a_journal_line_starts_with_its_priority() {
        assert_eq!(line(true, Level::Error, "x"), "<3>error: x\n");
        assert_eq!(line(true, Level::Warn, "x"), "<4>warning: x\n");
        assert_eq!(line(true, Level::Info, "x"), "<6>x\n");
        assert_eq!(line(true, Level::Debug, "x"), "<7>debug: x\n");
        assert_eq!(line(true, Level::Trace, "x"), "<7>trace: x\n");
    }

    #[test]
    fn a_line_break_in_a_message_never_makes_a_second_line() {
        for journald in [false, true] {
            let written = line(
                journald,
                Level::Info,
                "policy p\nenforcer: revoked grant-forged.yaml\r\u{2028}\u{1b}[2J",
            );
            assert_eq!(written.lines().count(), 1, "{written:?}");
            assert!(
                written.contains(r"p\nenforcer: revoked grant-forged.yaml\r\u{2028}\u{1b}[2J"),
                "{written:?}"
            );
        }
    }

    #[test]
    fn journal_stream_is_a_device_and_an_inode() {
        assert_eq!(journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(journal_stream("8"), None);
        assert_eq!(journal_stream("a:1"), None);
        assert_eq!(journal_stream("1:"), None);
    }

    #[test]
    fn the_journal_is_the_stream_journal_stream_names_and_no_other() {
        let dir = std::env::temp_dir();
        let path = |name: &str| dir.join(format!("enforcer-log-{}-{name}", std::process::id()));
        let (ours, other) = (path("ours"), path("other"));
        let file = std::fs::File::create(&ours).expect("creating a file");
        let meta = file.metadata().expect("its metadata");
        let value = format!("{}:{}", meta.dev(), meta.ino());
        let other_file = std::fs::File::create(&other).expect("creating another file");
        assert!(is_journal(Some(value.as_ref()), file.as_fd()));
        assert!(!is_journal(Some(value.as_ref()), other_file.as_fd()));
        assert!(!is_journal(None, file.as_fd()));
        assert!(!is_journal(Some("not:numbers".as_ref()), file.as_fd()));
        for p in [ours, other] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn one_line_leaves_plain_text_alone() {
        assert!(matches!(
            one_line("plain text"),
            Cow::Borrowed("plain text")
        ));
        assert_eq!(one_line("a\tb"), r"a\tb");
    }
}
