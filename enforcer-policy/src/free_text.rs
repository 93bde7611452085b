//! Free text such as an edge's `owner` and `reason`, the same whether it comes from a policy
//! file or from `enforcer edge grant`: one line of printable text. The daemon writes it into
//! its log, `edge list` into a table; a line break or a terminal escape in it would forge
//! log lines or rewrite the screen.

/// Why a text cannot be an owner or a reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreeTextError {
    #[error("is empty")]
    Empty,
    #[error(
        "contains the control character U+{:04X}; write it as one line without control characters",
        u32::from(*.0)
    )]
    ControlCharacter(char),
    #[error(
        "contains the invisible formatting character U+{:04X}, which can make the text show \
         differently from what it holds; remove it",
        u32::from(*.0)
    )]
    FormatCharacter(char),
}

/// Whether `c` shows as itself on a terminal: control characters (C0, DEL, C1) can move the
/// cursor or start an escape sequence; the bidi controls (U+061C, U+200E-F, U+202A-E,
/// U+2066-9) reorder the text around them, the zero-width ones (U+200B-D) and the BOM
/// (U+FEFF) hide; U+2028 and U+2029 end a line in some log viewers.
pub fn unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || invisible_format(c)
}

fn invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// `text` without surrounding blanks, if it is one non-empty line of printable text.
pub fn free_text(text: &str) -> Result<&str, FreeTextError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(FreeTextError::Empty);
    }
    match text.chars().find(|&c| unprintable(c)) {
        Some(c) if invisible_format(c) => Err(FreeTextError::FormatCharacter(c)),
        Some(c) => Err(FreeTextError::ControlCharacter(c)),
        None => Ok(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_printable_line_trimmed() {
        assert_eq!(free_text("  platform team \t"), Ok("platform team"));
        assert_eq!(free_text("ünïcode ✓"), Ok("ünïcode ✓"));
        assert_eq!(free_text(" \n "), Err(FreeTextError::Empty));
        assert_eq!(
            free_text("a\nenforcer: revoked x"),
            Err(FreeTextError::ControlCharacter('\n'))
        );
        for c in ['\t', '\r', '\u{1b}', '\u{7f}', '\u{85}', '\u{2028}'] {
            assert_eq!(
                free_text(&format!("a{c}b")),
                Err(FreeTextError::ControlCharacter(c))
            );
        }
        for c in [
            '\u{202e}', '\u{2066}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{61c}', '\u{200b}',
            '\u{200d}', '\u{feff}',
        ] {
            assert_eq!(
                free_text(&format!("a{c}b")),
                Err(FreeTextError::FormatCharacter(c))
            );
        }
        assert_eq!(
            FreeTextError::ControlCharacter('\n').to_string(),
            "contains the control character U+000A; write it as one line without control characters"
        );
    }
}
