//! The error report: one `FILE:LINE:COL: message` line per mistake, the
//! format editors and CI logs already know how to jump to.

use serde::Serialize;

/// One mistake in a policy file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A 1-based position in the policy text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };
}

/// Collects diagnostics for one file so checks can keep going after a
/// mistake and the user sees everything in one run.
pub(crate) struct Diagnostics<'f> {
    file: &'f str,
    found: Vec<Diagnostic>,
}

impl<'f> Diagnostics<'f> {
    pub fn new(file: &'f str) -> Self {
        Self {
            file,
            found: Vec::new(),
        }
    }

    pub fn error(&mut self, at: Pos, message: impl Into<String>) {
        self.found.push(Diagnostic {
            file: self.file.to_owned(),
            line: at.line,
            column: at.column,
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// Sorted by position; the sort is stable so two mistakes at the same
    /// spot keep the order in which they were found.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.found.sort_by_key(|d| (d.line, d.column));
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_file_line_column_message() {
        let d = Diagnostic {
            file: "p.yaml".into(),
            line: 7,
            column: 11,
            message: "bad".into(),
        };
        assert_eq!(d.to_string(), "p.yaml:7:11: bad");
    }

    #[test]
    fn sorted_by_position_keeping_discovery_order_on_ties() {
        let mut diags = Diagnostics::new("p.yaml");
        diags.error(Pos { line: 3, column: 1 }, "c");
        diags.error(Pos { line: 1, column: 5 }, "b");
        diags.error(Pos { line: 1, column: 2 }, "a");
        diags.error(Pos { line: 3, column: 1 }, "d");
        let messages: Vec<_> = diags
            .into_sorted()
            .into_iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            messages,
            [
                "p.yaml:1:2: a",
                "p.yaml:1:5: b",
                "p.yaml:3:1: c",
                "p.yaml:3:1: d"
            ]
        );
    }
}
