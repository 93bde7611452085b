//! The daemon's log: one line per message, on standard error.

/// Writes one log line, whatever `message` holds: a file name, an owner or a reason comes
/// from users, and a line break in it would forge a log line of its own.
pub fn log(message: &str) {
    eprintln!("enforcer: {}", one_line(message));
}

/// `text` with every control character (and the Unicode line and paragraph separators)
/// escaped as Rust writes it (`\n`, `\u{1b}`), so it prints as one line.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
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
