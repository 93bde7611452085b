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

/// At most this many mistakes are listed, then a count of the rest: a file of a million
/// unknown keys must not cost a million messages of memory, and nobody reads past the first
/// screenful before fixing something.
pub const MAX_DIAGNOSTICS: usize = 100;

/// Collects diagnostics for one file so checks can keep going after a
/// mistake and the user sees everything in one run.
pub(crate) struct Diagnostics<'f> {
    file: &'f str,
    /// The earliest mistakes by position; at most `2 * MAX_DIAGNOSTICS`, pruned back to
    /// `MAX_DIAGNOSTICS` whenever full, so memory stays bounded however many are found.
    found: Vec<Diagnostic>,
    /// Mistakes pruned from `found`, and the earliest position among them.
    dropped: usize,
    first_dropped: Option<Pos>,
}

impl<'f> Diagnostics<'f> {
    pub fn new(file: &'f str) -> Self {
        Self {
            file,
            found: Vec::new(),
            dropped: 0,
            first_dropped: None,
        }
    }

    pub fn error(&mut self, at: Pos, message: impl Into<String>) {
        if self.found.len() == 2 * MAX_DIAGNOSTICS {
            self.keep_earliest();
        }
        self.found.push(Diagnostic {
            file: self.file.to_owned(),
            line: at.line,
            column: at.column,
            message: message.into(),
        });
    }

    /// An empty collection for the same file, for mistakes that may yet be thrown away.
    pub fn for_same_file(&self) -> Self {
        Self::new(self.file)
    }

    /// Takes over the mistakes in `later` as though they had been found here, after those
    /// found so far. Both keep the earliest by position, so the result is the same.
    pub fn append(&mut self, later: Diagnostics) {
        for d in later.found {
            let at = Pos {
                line: d.line,
                column: d.column,
            };
            self.error(at, d.message);
        }
        self.dropped += later.dropped;
        self.first_dropped = match (self.first_dropped, later.first_dropped) {
            (Some(first), Some(other)) => Some(first.min(other)),
            (first, other) => first.or(other),
        };
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// Sorts by position (stable, so two mistakes at the same spot keep the order in which
    /// they were found) and drops all but the first `MAX_DIAGNOSTICS`.
    fn keep_earliest(&mut self) {
        self.found.sort_by_key(|d| (d.line, d.column));
        for d in self.found.drain(MAX_DIAGNOSTICS.min(self.found.len())..) {
            let at = Pos {
                line: d.line,
                column: d.column,
            };
            self.dropped += 1;
            self.first_dropped = Some(self.first_dropped.map_or(at, |first| first.min(at)));
        }
    }

    /// The first `MAX_DIAGNOSTICS` by position, then, if there were more, one more line at
    /// the first of the rest that says how many are not listed.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.keep_earliest();
        if let Some(at) = self.first_dropped {
            self.found.push(Diagnostic {
                file: self.file.to_owned(),
                line: at.line,
                column: at.column,
                message: format!(
                    "... and {} more error(s), the first of them here (only the first \
                     {MAX_DIAGNOSTICS} are listed)",
                    self.dropped
                ),
            });
        }
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

    #[test]
    fn only_the_earliest_are_kept_however_they_arrive() {
        let mut diags = Diagnostics::new("p.yaml");
        for line in (1..=1000).rev() {
            diags.error(Pos { line, column: 1 }, "x");
            assert!(diags.found.len() <= 2 * MAX_DIAGNOSTICS);
        }
        let kept = diags.into_sorted();
        assert_eq!(kept.len(), MAX_DIAGNOSTICS + 1);
        assert_eq!(kept[0].line, 1);
        assert_eq!(kept[MAX_DIAGNOSTICS - 1].line, MAX_DIAGNOSTICS);
        assert_eq!(
            kept[MAX_DIAGNOSTICS].to_string(),
            "p.yaml:101:1: ... and 900 more error(s), the first of them here (only the first 100 are listed)"
        );
    }
}
