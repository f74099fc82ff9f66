//! Word-level lexing of instruction arguments, with the quirks of BuildKit's two hand-written lexers kept
//! apart on purpose: builder flags lose their quotes and always escape with `\`, while the words of ARG,
//! ENV and LABEL keep quotes and escapes verbatim and escape with the file's escape character.

use nom::branch::alt;
use nom::bytes::complete::{take_till, take_till1};
use nom::character::complete::{anychar, char};
use nom::combinator::{consumed, map, opt, value};
use nom::multi::{fold_many0, fold_many1};
use nom::sequence::delimited;
use nom::{IResult, Parser};

type Res<'a, O> = IResult<&'a str, O>;

/// What BuildKit's `[\t\v\f\r ]+` splits on; other Unicode whitespace stays inside a word there.
pub(super) fn is_token_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c' | '\r')
}

/// Whitespace-separated words, as BuildKit splits FROM, EXPOSE and non-JSON COPY/ADD/VOLUME.
pub(super) fn token_words(text: &str) -> Vec<String> {
    text.split(is_token_space)
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Splits `text` at its first run of token spaces; `None` when it has none.
pub(super) fn split_first_token(text: &str) -> Option<(&str, &str)> {
    let (first, rest) = text.split_once(is_token_space)?;
    Some((first, rest.trim_start_matches(is_token_space)))
}

/// Splits the leading `--name[=value]` words off `text`. Returns the text from the first non-flag word on
/// and the flags with quotes and `\` escapes resolved. A bare `--` ends the flags and is dropped.
pub(super) fn builder_flags(text: &str) -> (&str, Vec<String>) {
    let mut flags = Vec::new();
    let mut rest = text.trim_start();
    while rest.starts_with("--") {
        let Ok((after, flag)) = flag_word(rest) else {
            break;
        };
        if flag == "--" {
            return (after, flags);
        }
        flags.push(flag);
        rest = after.trim_start();
    }
    (rest, flags)
}

fn flag_word(input: &str) -> Res<'_, String> {
    fold_many0(
        alt((
            map(escaped_char, FlagPiece::Char),
            map(flag_quoted('"'), FlagPiece::Quoted),
            map(flag_quoted('\''), FlagPiece::Quoted),
            map(
                take_till1(|c: char| c.is_whitespace() || matches!(c, '\\' | '"' | '\'')),
                FlagPiece::Plain,
            ),
        )),
        String::new,
        append_piece,
    )
    .parse(input)
}

enum FlagPiece<'a> {
    Char(Option<char>),
    Plain(&'a str),
    Quoted(String),
}

fn append_piece(mut word: String, piece: FlagPiece) -> String {
    match piece {
        FlagPiece::Char(c) => word.extend(c),
        FlagPiece::Plain(text) => word.push_str(text),
        FlagPiece::Quoted(quoted) => word.push_str(&quoted),
    }
    word
}

/// A quoted part of a flag; an unterminated quote runs to the end of the text.
fn flag_quoted<'a>(quote: char) -> impl Parser<&'a str, Output = String, Error = nom::error::Error<&'a str>> {
    delimited(
        char(quote),
        fold_many0(
            alt((
                map(escaped_char, FlagPiece::Char),
                map(take_till1(move |c| c == quote || c == '\\'), FlagPiece::Plain),
            )),
            String::new,
            append_piece,
        ),
        opt(char(quote)),
    )
}

/// `\x` stands for `x`; a `\` at the very end stands for nothing.
fn escaped_char(input: &str) -> Res<'_, Option<char>> {
    (char('\\'), opt(anychar)).map(|(_, c)| c).parse(input)
}

/// The words of ARG, ENV and LABEL: split on unquoted, unescaped whitespace, with quotes and escapes kept
/// as written. The only text dropped is an escape character at the very end.
pub(super) fn quoted_words(text: &str, escape: char) -> Vec<&str> {
    let mut words = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let Ok((after, word)) = quoted_word(rest, escape) else {
            break;
        };
        if !word.is_empty() {
            words.push(word);
        }
        rest = after.trim_start();
    }
    words
}

fn quoted_word(input: &str, escape: char) -> Res<'_, &str> {
    let (rest, (word, ends_in_dropped_escape)) = consumed(fold_many1(
        |piece| word_piece(piece, escape),
        || false,
        |_, dropped| dropped,
    ))
    .parse(input)?;
    let word = match ends_in_dropped_escape {
        true => word.strip_suffix(escape).unwrap_or(word),
        false => word,
    };
    Ok((rest, word))
}

/// One piece of a word; the output tells whether the piece ends in an escape character that BuildKit
/// drops because nothing follows it.
fn word_piece(input: &str, escape: char) -> Res<'_, bool> {
    alt((
        |i| escape_pair(i, escape),
        value(false, (char('\''), take_till(|c| c == '\''), opt(char('\'')))),
        delimited(
            char('"'),
            fold_many0(
                alt((
                    |i| escape_pair(i, escape),
                    value(false, take_till1(|c| c == '"' || c == escape)),
                )),
                || false,
                |_, dropped| dropped,
            ),
            opt(char('"')),
        ),
        value(
            false,
            take_till1(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == escape),
        ),
    ))
    .parse(input)
}

/// An escape character and whatever follows it, kept verbatim; `true` when nothing follows.
fn escape_pair(input: &str, escape: char) -> Res<'_, bool> {
    (char(escape), opt(anychar))
        .map(|(_, next)| next.is_none())
        .parse(input)
}
