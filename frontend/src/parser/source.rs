//! Physical lines, line continuations, and the map from an instruction's joined text back to the lines it
//! came from: the argument parsers see one string, while columns and diagnostics need physical positions.

use crate::error::Diagnostic;

/// One physical line of the Dockerfile.
#[derive(Debug, Clone, Copy)]
pub(super) struct Line<'a> {
    /// 1-based.
    pub number: usize,
    /// Without its line ending; trailing `\r`s go too, as BuildKit trims them.
    pub text: &'a str,
    /// With its line ending, as heredoc bodies keep it.
    pub raw: &'a str,
}

/// Splits on `\n` only (like BuildKit's scanner); a UTF-8 byte-order mark before the first line is dropped.
pub(super) struct Lines<'a> {
    rest: &'a str,
    number: usize,
}

impl<'a> Lines<'a> {
    pub fn new(source: &'a str) -> Self {
        Lines {
            rest: source.strip_prefix('\u{feff}').unwrap_or(source),
            number: 0,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let (raw, rest) = match self.rest.find('\n') {
            Some(newline) => self.rest.split_at(newline + 1),
            None => (self.rest, ""),
        };
        self.rest = rest;
        self.number += 1;
        Some(Line {
            number: self.number,
            text: raw.trim_end_matches(['\r', '\n']),
            raw,
        })
    }
}

/// Splits a trailing line-continuation escape (optionally followed by blanks) off `content`; returns the
/// text before it and whether the instruction continues on the next line. An escaped escape (`\\` at the
/// end) is not a continuation, as in BuildKit.
pub(super) fn split_continuation(content: &str, escape: char) -> (&str, bool) {
    let body = content.trim_end_matches([' ', '\t']);
    match body.strip_suffix(escape) {
        Some(before) if !before.ends_with(escape) => (before, true),
        _ => (content, false),
    }
}

/// Byte offset of `inner` within `outer`, for slices cut from `outer`; clamped so that a slice from
/// elsewhere can never produce an out-of-range offset.
pub(super) fn offset_in(outer: &str, inner: &str) -> usize {
    (inner.as_ptr() as usize)
        .wrapping_sub(outer.as_ptr() as usize)
        .min(outer.len())
}

/// 1-based character column of `byte` within `text`.
pub(super) fn column(text: &str, byte: usize) -> usize {
    text.get(..byte).map_or(1, |before| before.chars().count() + 1)
}

/// A problem found in an instruction's joined text, located by byte offset into that text.
#[derive(Debug)]
pub(super) struct SyntaxError {
    pub offset: usize,
    /// In bytes of the joined text.
    pub width: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl SyntaxError {
    pub fn new(offset: usize, width: usize, message: impl Into<String>) -> Self {
        SyntaxError {
            offset,
            width,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Where a joined-text offset sits in the source.
pub(super) struct Position<'a> {
    pub line: usize,
    pub col: usize,
    pub source_line: &'a str,
    /// Byte offset within `source_line`.
    pub byte: usize,
}

/// A stretch of the joined text copied from one physical line.
struct Segment<'a> {
    joined_start: usize,
    line: Line<'a>,
    /// Where the copied part starts within `line.text`.
    text_start: usize,
}

/// An instruction's text with its continuation lines joined, remembering where each part came from.
#[derive(Default)]
pub(super) struct Joined<'a> {
    pub text: String,
    segments: Vec<Segment<'a>>,
}

impl<'a> Joined<'a> {
    pub fn start(&mut self, line: Line<'a>, part: &'a str) {
        self.text = String::with_capacity(part.len());
        self.segments.clear();
        self.push(line, part);
    }

    /// `part` must be a slice of `line.text`.
    pub fn push(&mut self, line: Line<'a>, part: &'a str) {
        self.segments.push(Segment {
            joined_start: self.text.len(),
            line,
            text_start: offset_in(line.text, part),
        });
        self.text.push_str(part);
    }

    pub fn position(&self, offset: usize) -> Position<'a> {
        let index = self
            .segments
            .partition_point(|segment| segment.joined_start <= offset)
            .saturating_sub(1);
        let Some(segment) = self.segments.get(index) else {
            return Position {
                line: 1,
                col: 1,
                source_line: "",
                byte: 0,
            };
        };
        let text = segment.line.text;
        let byte = (segment.text_start + offset.saturating_sub(segment.joined_start)).min(text.len());
        Position {
            line: segment.line.number,
            col: column(text, byte),
            source_line: text,
            byte,
        }
    }

    pub fn diagnostic(&self, error: SyntaxError) -> Diagnostic {
        let at = self.position(error.offset);
        let width = at.source_line.get(at.byte..).map_or(1, |tail| {
            tail.char_indices()
                .take_while(|&(index, _)| index < error.width)
                .count()
        });
        let diagnostic = Diagnostic::new(at.line, at.col, at.source_line, error.message).width(width);
        match error.hint {
            Some(hint) => diagnostic.hint(hint),
            None => diagnostic,
        }
    }
}
