//! Diagnostics that point at the Dockerfile: every frontend error names file:line:col, shows the offending
//! line with a caret, and says what to do.

use std::fmt;

/// An error or warning located in a Dockerfile. Lines and columns are 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The Dockerfile's name as the user gave it; filled in by whoever knows it (the parser does not).
    pub file: Option<String>,
    pub line: usize,
    pub col: usize,
    /// The source line the problem is on, without its newline.
    pub source_line: String,
    /// How many characters from `col` the caret underline covers (at least one is drawn).
    pub width: usize,
    pub message: String,
    /// What the user can do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(line: usize, col: usize, source_line: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: None,
            line,
            col,
            source_line: source_line.into(),
            width: 1,
            message: message.into(),
            hint: None,
        }
    }

    pub fn width(mut self, width: usize) -> Self {
        self.width = width.max(1);
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_deref().unwrap_or("Dockerfile");
        writeln!(f, "{file}:{}:{}: {}", self.line, self.col, self.message)?;
        if !self.source_line.is_empty() || self.line > 0 {
            let number = self.line.to_string();
            let pad = " ".repeat(number.len());
            writeln!(f, " {number} | {}", self.source_line)?;
            let indent: String = self
                .source_line
                .chars()
                .take(self.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, " {pad} | {indent}{}", "^".repeat(self.width.max(1)))?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}
