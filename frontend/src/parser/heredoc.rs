//! Heredoc markers (`<<EOF`, `<<-EOF`, `<<'EOF'`, `3<<EOF`) in an instruction's line, found the way BuildKit
//! finds them: the line is cut into shell words (quotes and `\` respected, kept raw) and every word that is
//! wholly a marker opens one heredoc, in order. A line whose quoting does not close has no heredocs.

use nom::branch::alt;
use nom::bytes::complete::{tag, take_till, take_till1};
use nom::character::complete::{anychar, char, digit0};
use nom::combinator::{cut, opt, recognize, value};
use nom::multi::{many0_count, many1_count};
use nom::{IResult, Parser};

use super::source::offset_in;
use crate::ast::Heredoc;

type Res<'a, O> = IResult<&'a str, O>;

/// A heredoc opened on the instruction line; its body is read from the lines that follow.
pub(super) struct Marker {
    /// Byte offset and length of the marker word in the line, for diagnostics.
    pub offset: usize,
    pub width: usize,
    /// With an empty body.
    pub heredoc: Heredoc,
}

pub(super) fn markers(line: &str) -> Vec<Marker> {
    let Some(words) = shell_words(line) else {
        return Vec::new();
    };
    words
        .into_iter()
        .filter_map(|word| {
            Some(Marker {
                offset: offset_in(line, word),
                width: word.len(),
                heredoc: marker(word)?,
            })
        })
        .collect()
}

/// `None` when a quote or `${` is left open, where BuildKit's lexer fails and no heredoc is found.
fn shell_words(line: &str) -> Option<Vec<&str>> {
    let mut words = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let (after, word) = recognize(many1_count(raw_shell_piece)).parse(rest).ok()?;
        words.push(word);
        rest = after.trim_start();
    }
    Some(words)
}

fn raw_shell_piece(input: &str) -> Res<'_, ()> {
    alt((
        value((), (char('\\'), opt(anychar))),
        value((), (char('\''), cut((take_till(|c| c == '\''), char('\''))))),
        value(
            (),
            (
                char('"'),
                cut((
                    many0_count(alt((
                        value((), (char('\\'), opt(anychar))),
                        value((), take_till1(|c| c == '"' || c == '\\')),
                    ))),
                    char('"'),
                )),
            ),
        ),
        value((), (tag("${"), cut((take_till(|c| c == '}'), char('}'))))),
        value(
            (),
            take_till1(|c: char| c.is_whitespace() || matches!(c, '\\' | '\'' | '"' | '$')),
        ),
        value((), char('$')),
    ))
    .parse(input)
}

/// A word of the form `[digits]<<[-]delimiter`, where the delimiter is non-empty and has no `<`.
fn marker(word: &str) -> Option<Heredoc> {
    let parsed: Res<'_, (&str, &str, Option<char>)> = (digit0, tag("<<"), opt(char('-'))).parse(word);
    let (delimiter, (descriptor, _, dash)) = parsed.ok()?;
    if delimiter.is_empty() || delimiter.contains('<') {
        return None;
    }
    let name = unquote(delimiter);
    let quote_count = |text: &str| text.chars().filter(|&c| c == '\'' || c == '"').count();
    Some(Heredoc {
        expand: quote_count(&name) == quote_count(delimiter),
        name,
        content: String::new(),
        file_descriptor: match descriptor {
            "" => 0,
            digits => digits.parse().unwrap_or(u32::MAX),
        },
        chomp: dash.is_some(),
    })
}

/// The delimiter as the shell reads it: quotes removed, `\x` outside quotes is `x`, and inside double
/// quotes only `\"`, `\$` and `\\` are escapes.
fn unquote(delimiter: &str) -> String {
    let mut name = String::with_capacity(delimiter.len());
    let mut chars = delimiter.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => name.extend(chars.next()),
            '\'' => name.extend(chars.by_ref().take_while(|&c| c != '\'')),
            '"' => loop {
                match chars.next() {
                    None | Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(escaped @ ('"' | '$' | '\\')) => name.push(escaped),
                        Some(other) => name.extend(['\\', other]),
                        None => {}
                    },
                    Some(other) => name.push(other),
                }
            },
            other => name.push(other),
        }
    }
    name
}
