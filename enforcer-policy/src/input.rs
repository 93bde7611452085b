//! What a policy's bytes must be before the YAML parser sees them: bounded in size, UTF-8,
//! and free of the characters YAML forbids in a stream. The parser reads a NUL as the end
//! of the input, so without these checks a NUL would silently cut a policy short.

use crate::diagnostic::{Diagnostic, Pos};

/// The largest policy accepted, in bytes. Half the control socket's 64 MiB request limit:
/// a policy travels to the daemon JSON-encoded, where each tab, line break, quote and
/// backslash takes two bytes, so any policy that passes here fits in a request.
pub const MAX_POLICY_BYTES: usize = 32 << 20;

/// The report for a policy longer than [`MAX_POLICY_BYTES`], for readers that learn the
/// size before reading.
pub fn oversize(file: &str) -> Diagnostic {
    at(
        file,
        Pos::START,
        format!(
            "policy is larger than {} MiB ({MAX_POLICY_BYTES} bytes), the most a policy may hold",
            MAX_POLICY_BYTES >> 20
        ),
    )
}

/// The text of a policy file's `bytes`, or why they cannot be a policy: too long, or not
/// UTF-8 (reported at the line and column of the first byte that is not).
pub fn decode<'b>(file: &str, bytes: &'b [u8]) -> Result<&'b str, Diagnostic> {
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(oversize(file));
    }
    std::str::from_utf8(bytes).map_err(|err| {
        let valid = bytes.get(..err.valid_up_to()).unwrap_or_default();
        // `valid` is UTF-8 by construction; the fallback only keeps this panic-free.
        let before = std::str::from_utf8(valid).unwrap_or_default();
        let byte = bytes.get(err.valid_up_to()).copied().unwrap_or_default();
        at(
            file,
            end_of(before),
            format!("policy is not valid UTF-8 (byte 0x{byte:02x})"),
        )
    })
}

/// The first problem with `text` as the input of the YAML parser, if any: its size, or a
/// character YAML does not allow in a stream.
pub(crate) fn check(text: &str) -> Option<(Pos, String)> {
    if text.len() > MAX_POLICY_BYTES {
        return Some((Pos::START, oversize("").message));
    }
    // Policies are mostly printable ASCII, which a byte at a time is quicker to confirm; the
    // position is only worked out for a character that is refused.
    if text
        .bytes()
        .all(|b| matches!(b, b'\t' | b'\n' | b'\r' | b' '..=b'~'))
    {
        return None;
    }
    let (index, c) = text.char_indices().find(|&(_, c)| !allowed(c))?;
    let message = if c == '\0' {
        "policy contains a NUL byte; YAML allows no control characters other than tab and \
         line breaks"
            .to_owned()
    } else {
        format!(
            "policy contains the character U+{:04X}; YAML allows no control characters other \
             than tab and line breaks",
            u32::from(c)
        )
    };
    Some((end_of(text.get(..index).unwrap_or_default()), message))
}

/// YAML 1.2's printable characters (`c-printable`); everything else must not appear.
fn allowed(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{A0}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Where the character after `text` is, counting lines as the YAML parser does (`\n`,
/// `\r\n` and a lone `\r` each end one) and columns in characters.
fn end_of(text: &str) -> Pos {
    let mut pos = Pos::START;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        pos = step(pos, c, chars.peek().copied());
    }
    pos
}

fn step(pos: Pos, c: char, next: Option<char>) -> Pos {
    match c {
        // The `\n` that follows ends the line.
        '\r' if next == Some('\n') => pos,
        '\n' | '\r' => Pos {
            line: pos.line + 1,
            column: 1,
        },
        _ => Pos {
            line: pos.line,
            column: pos.column + 1,
        },
    }
}

fn at(file: &str, pos: Pos, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        line: pos.line,
        column: pos.column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn invalid_utf8_is_placed_at_its_first_bad_byte() {
        let d = decode("p.yaml", b"version: 1\r\ndomains: [\xc3\xa9, \xff]\n").unwrap_err();
        assert_eq!(
            d.to_string(),
            "p.yaml:2:14: policy is not valid UTF-8 (byte 0xff)"
        );
        let d = decode("p.yaml", b"\xe2\x82").unwrap_err();
        assert_eq!((d.line, d.column), (1, 1));
        assert_eq!(decode("p.yaml", b"a: \xc3\xa9\n"), Ok("a: é\n"));
    }

    #[test]
    fn oversized_input_is_refused_before_decoding() {
        let big = vec![b'#'; MAX_POLICY_BYTES + 1];
        let d = decode("p.yaml", &big).unwrap_err();
        assert_eq!(
            d.to_string(),
            "p.yaml:1:1: policy is larger than 32 MiB (33554432 bytes), the most a policy may hold"
        );
        assert!(decode("p.yaml", &big[..MAX_POLICY_BYTES]).is_ok());
    }

    #[test]
    fn forbidden_characters_are_found_where_they_are() {
        assert_eq!(check("a: 1\n\tb: 2\r\n c: é\u{85}\u{FEFF}\n"), None);
        assert_eq!(check("a: 1\nb\0: 2\n").map(|(p, _)| p), Some(pos(2, 2)));
        assert_eq!(check("a: 1\r\nb: \u{7}").map(|(p, _)| p), Some(pos(2, 4)));
        assert_eq!(check("a\r\rb\u{7f}").map(|(p, _)| p), Some(pos(3, 2)));
        for c in ['\u{1b}', '\u{9b}', '\u{FFFE}', '\u{FFFF}'] {
            let (_, message) = check(&format!("a: {c}")).expect("refused");
            assert!(
                message.starts_with(&format!(
                    "policy contains the character U+{:04X};",
                    u32::from(c)
                )),
                "{message}"
            );
        }
    }
}
