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
}

/// `text` without surrounding blanks, if it is one non-empty line of printable text.
pub fn free_text(text: &str) -> Result<&str, FreeTextError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(FreeTextError::Empty);
    }
    // U+2028 and U+2029 are not control characters, but some log viewers end a line at them.
    match text
        .chars()
        .find(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
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
        assert_eq!(
            FreeTextError::ControlCharacter('\n').to_string(),
            "contains the control character U+000A; write it as one line without control characters"
        );
    }
}
