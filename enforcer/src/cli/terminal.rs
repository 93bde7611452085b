//! What the CLI prints on stdout. Text for people carries names that come from outside
//! (process names, cgroup directories, policy text, the daemon's messages): a terminal
//! escape among them could rewrite the screen, and a bidi override or zero-width character
//! could show a name other than the one held, so every character that does not print is
//! written as an escape. JSON is printed as serde writes it, exact.
//!
//! A reader that stops reading (`enforcer status | head -1`) is not an error: the command
//! ends quietly, as Unix tools do.

use std::{
    borrow::Cow,
    fmt::Display,
    io::{self, ErrorKind, Write as _},
};

use anyhow::Result;

/// Stdout was closed by its reader: the command stops without a word.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// `text` with every character that does not print written as `\u{..}`; one line stays one
/// line, as a newline is escaped too.
pub fn line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(enforcer_policy::unprintable) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if enforcer_policy::unprintable(c) {
            escaped.extend(c.escape_unicode());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// `text` with each of its lines escaped as [`line`] does.
pub fn lines(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for l in text.split_inclusive('\n') {
        match l.strip_suffix('\n') {
            Some(l) => {
                escaped.push_str(&line(l));
                escaped.push('\n');
            }
            None => escaped.push_str(&line(l)),
        }
    }
    escaped
}

/// Prints text for people, escaped as [`lines`] does.
pub fn text(text: impl Display) -> Result<()> {
    raw(lines(&text.to_string()))
}

/// Prints a message for people on stderr, escaped as [`lines`] does: file names, errors and
/// the daemon's answers carry text from outside. A closed stderr loses the message, nothing
/// more.
pub fn warn(text: impl Display) {
    let _ = writeln!(io::stderr().lock(), "{}", lines(&text.to_string()));
}

/// Prints `text` as it is, for output made only of escaped or own characters (JSON, numbers).
pub fn raw(text: impl Display) -> Result<()> {
    let mut stdout = io::stdout().lock();
    match write!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(err) if err.kind() == ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        written => Ok(written?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_does_not_print_and_keeps_the_rest() {
        assert_eq!(line("psql ✓ /a b"), "psql ✓ /a b");
        assert_eq!(
            line("\u{1b}]0;PWN\u{7}\r\n\u{7f}\u{9b}"),
            "\\u{1b}]0;PWN\\u{7}\\u{d}\\u{a}\\u{7f}\\u{9b}"
        );
        assert_eq!(
            line("admin\u{202e}txt.exe\u{200b}\u{feff}\u{2066}"),
            "admin\\u{202e}txt.exe\\u{200b}\\u{feff}\\u{2066}"
        );
    }
}
