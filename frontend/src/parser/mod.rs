//! The Dockerfile parser: source text in, [`Dockerfile`] out, splitting every instruction the way BuildKit's
//! parser does (its conformance data is the test), plus one kiln rule BuildKit leaves to a later stage:
//! unknown instructions are refused here, with a suggestion.
//!
//! The driver works line by line, as BuildKit does: parser directives at the very top, comments (kept as
//! the next instruction's `prev_comment`), continuation lines joined into one text per instruction, then
//! heredoc bodies read after the instruction that opens them. Cutting an instruction's text into keyword,
//! flags and arguments is `instruction`'s job.

mod directives;
mod dump;
mod heredoc;
mod instruction;
mod source;
mod suggest;
mod words;

#[cfg(test)]
mod tests;

pub use dump::dump;

use crate::ast::{Directive, Dockerfile, Heredoc, ParseWarning};
use crate::error::Diagnostic;
use source::{Joined, Line, Lines, SyntaxError, column, offset_in, split_continuation};

/// Parses a whole Dockerfile. Never panics, whatever the input.
pub fn parse(source: &str) -> Result<Dockerfile, Diagnostic> {
    Parser::new(source).run()
}

struct Parser<'a> {
    lines: Lines<'a>,
    /// The most recent line read, for errors about the file as a whole.
    last_line: Option<Line<'a>>,
    /// Parser directives are only looked for until the first line that is not one.
    in_directives: bool,
    escape: char,
    /// Comment lines seen since the last instruction.
    comments: Vec<String>,
    joined: Joined<'a>,
    df: Dockerfile,
}

impl<'a> Parser<'a> {
    fn new(source: &'a str) -> Self {
        Parser {
            lines: Lines::new(source),
            last_line: None,
            in_directives: true,
            escape: '\\',
            comments: Vec::new(),
            joined: Joined::default(),
            df: Dockerfile {
                escape: '\\',
                ..Dockerfile::default()
            },
        }
    }

    fn next_line(&mut self) -> Option<Line<'a>> {
        let line = self.lines.next()?;
        self.last_line = Some(line);
        Some(line)
    }

    fn run(mut self) -> Result<Dockerfile, Diagnostic> {
        while let Some(line) = self.next_line() {
            let content = line.text.trim_start();
            let is_comment = content.starts_with('#');
            if is_comment {
                self.remember_comment(content);
            }
            if self.in_directives && self.directive(line, content)? {
                self.comments.pop();
            }
            if is_comment {
                continue;
            }
            let (first, continues) = split_continuation(content, self.escape);
            if !first.is_empty() || continues {
                self.instruction(line, first, continues)?;
            }
        }
        if self.df.nodes.is_empty() {
            let (number, text) = self.last_line.map_or((1, ""), |line| (line.number, line.text));
            return Err(Diagnostic::new(number, 1, text, "file with no instructions")
                .hint("a Dockerfile needs at least one instruction, usually FROM <image>"));
        }
        self.df.escape = self.escape;
        Ok(self.df)
    }

    /// Like BuildKit's PrevComment: comments accumulate across blank lines, and an empty `#` starts over.
    fn remember_comment(&mut self, content: &str) {
        let comment = content.get(1..).unwrap_or("").trim();
        if comment.is_empty() {
            self.comments.clear();
        } else {
            self.comments.push(comment.to_owned());
        }
    }

    /// Records `content` if it is a parser directive; the first line that is not one ends the directives.
    fn directive(&mut self, line: Line<'a>, content: &'a str) -> Result<bool, Diagnostic> {
        let Some(found) = directives::recognize_directive(content) else {
            self.in_directives = false;
            return Ok(false);
        };
        let name = found.name.to_ascii_lowercase();
        if !directives::KNOWN.contains(&&*name) {
            self.in_directives = false;
            return Ok(false);
        }
        let located = |piece: &str, message: String| {
            let byte = offset_in(line.text, piece);
            Diagnostic::new(line.number, column(line.text, byte), line.text, message)
                .width(piece.chars().count())
        };
        if self.df.directives.iter().any(|seen| seen.name == name) {
            return Err(located(
                found.name,
                format!("only one {name} parser directive can be used"),
            )
            .hint("remove the repeated directive"));
        }
        if name == "escape" {
            self.escape = match found.value {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(located(
                        other,
                        format!("invalid escape token '{other}' does not match ` or \\"),
                    )
                    .hint("use # escape=\\ (the default) or # escape=`"));
                }
            };
        }
        self.df.directives.push(Directive {
            name,
            value: found.value.to_owned(),
            line: line.number,
        });
        Ok(true)
    }

    /// Reads one instruction starting on `first_line` (whose content before any continuation is `first`),
    /// with its continuation lines and heredoc bodies.
    fn instruction(
        &mut self,
        first_line: Line<'a>,
        first: &'a str,
        mut continues: bool,
    ) -> Result<(), Diagnostic> {
        self.joined.start(first_line, first);
        let mut end_line = first_line.number;
        let mut empty_lines = Vec::new();
        while continues {
            let Some(line) = self.next_line() else {
                break;
            };
            end_line = line.number;
            let content = line.text.trim_start();
            if content.starts_with('#') {
                continue;
            }
            if content.is_empty() {
                empty_lines.push(line.number);
                continue;
            }
            let (part, more) = split_continuation(line.text, self.escape);
            self.joined.push(line, part);
            continues = more;
        }
        for line in empty_lines {
            self.df.warnings.push(ParseWarning {
                rule: "NoEmptyContinuation",
                message: format!(
                    "Empty continuation line in the instruction starting on line {}",
                    first_line.number
                ),
                line,
            });
        }
        // Only continuation escapes and blanks: BuildKit makes a nameless node of it, kiln skips it.
        if self.joined.text.trim().is_empty() {
            return Ok(());
        }

        let mut node = instruction::build(&self.joined, &self.joined.text, self.escape)
            .map_err(|error| self.joined.diagnostic(error))?;
        if instruction::takes_heredocs(&node) && self.joined.text.contains("<<") {
            for marker in heredoc::markers(&self.joined.text) {
                let (heredoc, last_line) = self.heredoc_body(marker)?;
                node.heredocs.push(heredoc);
                end_line = last_line;
            }
        }
        node.start_line = first_line.number;
        node.end_line = end_line;
        if let Some(nested) = node.nested.as_deref_mut() {
            nested.start_line = first_line.number;
            nested.end_line = end_line;
        }
        node.prev_comment = std::mem::take(&mut self.comments);
        node.original = std::mem::take(&mut self.joined.text);
        self.df.nodes.push(node);
        Ok(())
    }

    /// Reads the body of one heredoc, up to its delimiter line; returns it with that line's number.
    fn heredoc_body(&mut self, marker: heredoc::Marker) -> Result<(Heredoc, usize), Diagnostic> {
        let mut heredoc = marker.heredoc;
        let chomp = heredoc.chomp;
        let strip_tabs = |text: &'a str| match chomp {
            true => text.trim_start_matches('\t'),
            false => text,
        };
        loop {
            let Some(line) = self.next_line() else {
                let error = SyntaxError::new(marker.offset, marker.width, "unterminated heredoc").hint(
                    format!("end the heredoc with a line that holds only {}", heredoc.name),
                );
                return Err(self.joined.diagnostic(error));
            };
            if strip_tabs(line.text) == heredoc.name {
                return Ok((heredoc, line.number));
            }
            heredoc.content.push_str(strip_tabs(line.raw));
        }
    }
}
