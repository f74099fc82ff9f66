//! Recognising a parser directive line (`# name = value`) with BuildKit's exact tolerance for blanks.
//! Which names count and in what order they may appear is the driver's business.

use nom::bytes::complete::{take_while, take_while1};
use nom::character::complete::{char, satisfy};
use nom::combinator::recognize;
use nom::{IResult, Parser};

/// The directive names BuildKit knows; any other `# word=...` line ends the directive block.
pub(super) const KNOWN: [&str; 3] = ["syntax", "escape", "check"];

pub(super) struct DirectiveLine<'a> {
    /// As written; callers lower-case it.
    pub name: &'a str,
    pub value: &'a str,
}

/// What Go's `\s` matches in BuildKit's directive regexp; narrower than Unicode whitespace (no `\v`).
fn is_regexp_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r')
}

/// `content` is the line with leading whitespace already removed.
pub(super) fn recognize_directive(content: &str) -> Option<DirectiveLine<'_>> {
    let result: IResult<&str, &str> = (
        char('#'),
        take_while(char::is_whitespace),
        recognize((
            satisfy(|c| c.is_ascii_alphabetic()),
            take_while(|c: char| c.is_ascii_alphanumeric()),
        )),
        take_while(is_regexp_space),
        char('='),
    )
        .map(|(_, _, name, _, _)| name)
        .parse(content);
    let (after_equals, name) = result.ok()?;
    Some(DirectiveLine {
        name,
        value: directive_value(after_equals)?,
    })
}

/// The value is everything after `=` minus surrounding blanks, but never empty: BuildKit's lazy `(.+?)`
/// keeps the last blank when nothing else is left.
fn directive_value(after_equals: &str) -> Option<&str> {
    let leading: IResult<&str, &str> = take_while1(is_regexp_space).parse(after_equals);
    let value = match leading {
        Ok((rest, _)) if !rest.is_empty() => rest,
        _ => after_equals,
    };
    let trimmed = value.trim_end_matches(is_regexp_space);
    if !trimmed.is_empty() {
        return Some(trimmed);
    }
    let last = value.chars().next_back()?;
    value.get(value.len() - last.len_utf8()..)
}
