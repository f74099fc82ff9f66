//! One instruction's joined text → [`Node`]: the keyword, the builder flags, and the arguments split the
//! way BuildKit's dispatch table splits them for that keyword.

use nom::bytes::complete::take_till;
use nom::{IResult, Parser};

use super::dump::go_quoted;
use super::source::{Joined, SyntaxError, offset_in};
use super::suggest::closest;
use super::words::{builder_flags, is_token_space, quoted_words, split_first_token, token_words};
use crate::ast::Node;

/// The instructions, alphabetically (the order suggestions are tried in).
pub(super) const KEYWORDS: [&str; 18] = [
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// How BuildKit's parser splits an instruction's arguments.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ArgumentForm {
    /// Exec form when the text is a JSON string array, otherwise the whole text as one shell-form word.
    ExecOrShell,
    /// Exec form when the text is a JSON string array, otherwise whitespace-separated words.
    ExecOrWords,
    /// Quote-aware words, quotes kept (ARG).
    QuotedWords,
    /// `key value sep` triples (ENV, LABEL).
    KeyValues,
    /// Whitespace-separated words.
    Words,
    /// The whole text as one word.
    Verbatim,
    /// A check type (`CMD`, `NONE`) followed by an exec-or-shell command.
    HealthCheck,
    /// Another instruction (ONBUILD).
    Trigger,
}

fn argument_form(keyword: &str) -> Option<ArgumentForm> {
    use ArgumentForm::*;
    Some(match keyword {
        "add" | "copy" | "volume" => ExecOrWords,
        "arg" => QuotedWords,
        "cmd" | "entrypoint" | "run" | "shell" => ExecOrShell,
        "env" | "label" => KeyValues,
        "expose" | "from" => Words,
        "healthcheck" => HealthCheck,
        "maintainer" | "stopsignal" | "user" | "workdir" => Verbatim,
        "onbuild" => Trigger,
        _ => return None,
    })
}

/// Instructions that may not follow ONBUILD.
const NOT_TRIGGERS: [&str; 3] = ["onbuild", "from", "maintainer"];

/// Builds the node for `text`, a slice of `joined.text` (all of it, or an ONBUILD's trigger). Line
/// numbers, comments, heredocs and the top-level `original` are the caller's.
pub(super) fn build(joined: &Joined, text: &str, escape: char) -> Result<Node, SyntaxError> {
    let text = text.trim();
    let split: IResult<&str, &str> = take_till(is_token_space).parse(text);
    let (after_keyword, keyword_raw) = split.unwrap_or(("", text));
    let keyword_offset = offset_in(&joined.text, keyword_raw);
    let keyword = keyword_raw.to_ascii_lowercase();
    let Some(form) = argument_form(&keyword) else {
        let error = SyntaxError::new(
            keyword_offset,
            keyword_raw.len(),
            format!("unknown instruction: {keyword_raw}"),
        );
        return Err(match closest(keyword_raw, &KEYWORDS) {
            Some(suggestion) => error.hint(format!("did you mean {suggestion}?")),
            None => error,
        });
    };
    let (rest, flags) = builder_flags(after_keyword);
    let rest = rest.trim();
    let mut node = Node {
        keyword,
        keyword_raw: keyword_raw.to_owned(),
        flags,
        col: joined.position(keyword_offset).col,
        ..Node::default()
    };
    match form {
        ArgumentForm::ExecOrShell => (node.args, node.json) = exec_or_shell(joined, rest)?,
        ArgumentForm::ExecOrWords => {
            (node.args, node.json) = match json_array(rest) {
                JsonArray::Strings(args) => (args, true),
                JsonArray::NotStrings => return Err(not_string_array(joined, rest)),
                JsonArray::Invalid => (token_words(rest), false),
            }
        }
        ArgumentForm::QuotedWords => {
            node.args = quoted_words(rest, escape)
                .into_iter()
                .map(str::to_owned)
                .collect();
        }
        ArgumentForm::KeyValues => node.args = key_values(joined, rest, escape, &node.keyword)?,
        ArgumentForm::Words => node.args = token_words(rest),
        ArgumentForm::Verbatim => node.args = non_empty(rest),
        ArgumentForm::HealthCheck => (node.args, node.json) = health_check(joined, rest)?,
        ArgumentForm::Trigger => node.nested = trigger(joined, rest, escape)?,
    }
    if node.keyword == "shell" && !node.json && !node.args.is_empty() {
        return Err(SyntaxError::new(
            offset_in(&joined.text, rest),
            rest.len(),
            "SHELL requires the arguments to be in JSON form",
        )
        .hint(r#"write it as a JSON array, e.g. SHELL ["/bin/sh", "-c"]"#));
    }
    Ok(node)
}

/// Whether BuildKit would read heredoc bodies after this instruction: shell-form RUN, COPY and ADD, also
/// as an ONBUILD trigger.
pub(super) fn takes_heredocs(node: &Node) -> bool {
    let target = match (&*node.keyword, &node.nested) {
        ("onbuild", Some(trigger)) => trigger,
        _ => node,
    };
    matches!(&*target.keyword, "run" | "copy" | "add") && !target.json
}

fn non_empty(text: &str) -> Vec<String> {
    match text {
        "" => Vec::new(),
        text => vec![text.to_owned()],
    }
}

fn exec_or_shell(joined: &Joined, text: &str) -> Result<(Vec<String>, bool), SyntaxError> {
    if text.is_empty() {
        return Ok((Vec::new(), false));
    }
    match json_array(text) {
        JsonArray::Strings(args) => Ok((args, true)),
        JsonArray::NotStrings => Err(not_string_array(joined, text)),
        JsonArray::Invalid => Ok((vec![text.to_owned()], false)),
    }
}

enum JsonArray {
    Strings(Vec<String>),
    /// Valid JSON, but not an array of strings: an error, unlike invalid JSON.
    NotStrings,
    /// Not JSON at all: the text is taken as shell form.
    Invalid,
}

fn json_array(text: &str) -> JsonArray {
    let text = text.trim_start();
    if !text.starts_with('[') {
        return JsonArray::Invalid;
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(text) else {
        return JsonArray::Invalid;
    };
    values
        .into_iter()
        .map(|value| match value {
            serde_json::Value::String(text) => Some(text),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .map_or(JsonArray::NotStrings, JsonArray::Strings)
}

fn not_string_array(joined: &Joined, text: &str) -> SyntaxError {
    SyntaxError::new(
        offset_in(&joined.text, text),
        text.len(),
        "when using JSON array syntax, arrays must be comprised of strings only",
    )
    .hint(r#"quote every element, e.g. ["echo", "hello"]"#)
}

/// ENV and LABEL: the legacy `key value` form (value = the rest of the line) when the first word has no
/// `=`, otherwise `key=value` words.
fn key_values(joined: &Joined, text: &str, escape: char, keyword: &str) -> Result<Vec<String>, SyntaxError> {
    let words = quoted_words(text, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    let name = keyword.to_ascii_uppercase();
    if !first.contains('=') {
        let Some((key, value)) = split_first_token(text) else {
            return Err(SyntaxError::new(
                offset_in(&joined.text, text),
                text.len(),
                format!("{name} must have two arguments"),
            )
            .hint(format!("give it a value: {name} {text}=<value>")));
        };
        return Ok(vec![key.to_owned(), value.to_owned(), String::new()]);
    }
    let mut args = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(SyntaxError::new(
                offset_in(&joined.text, word),
                word.len(),
                format!(
                    "Syntax error - can't find = in {}. Must be of the form: name=value",
                    go_quoted(word)
                ),
            )
            .hint(format!("give every {name} word a value, e.g. {word}=<value>")));
        };
        args.extend([key.to_owned(), value.to_owned(), "=".to_owned()]);
    }
    Ok(args)
}

fn health_check(joined: &Joined, text: &str) -> Result<(Vec<String>, bool), SyntaxError> {
    if text.is_empty() {
        return Ok((Vec::new(), false));
    }
    let (kind, command) = text
        .split_once(char::is_whitespace)
        .map_or((text, ""), |(kind, command)| (kind, command.trim_start()));
    let (command, json) = exec_or_shell(joined, command)?;
    let mut args = Vec::with_capacity(command.len() + 1);
    args.push(kind.to_owned());
    args.extend(command);
    Ok((args, json))
}

/// ONBUILD's trigger instruction. Chaining ONBUILD and triggering FROM or MAINTAINER are refused here,
/// which also keeps the nesting one level deep.
fn trigger(joined: &Joined, text: &str, escape: char) -> Result<Option<Box<Node>>, SyntaxError> {
    if text.is_empty() {
        return Ok(None);
    }
    let trigger_keyword = text.split(is_token_space).next().unwrap_or(text);
    let lowered = trigger_keyword.to_ascii_lowercase();
    if NOT_TRIGGERS.contains(&&*lowered) {
        let offset = offset_in(&joined.text, trigger_keyword);
        let message = match &*lowered {
            "onbuild" => "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_owned(),
            _ => format!(
                "{} isn't allowed as an ONBUILD trigger",
                trigger_keyword.to_ascii_uppercase()
            ),
        };
        return Err(SyntaxError::new(offset, trigger_keyword.len(), message)
            .hint("ONBUILD takes any other instruction, e.g. ONBUILD RUN make"));
    }
    let mut nested = build(joined, text, escape)?;
    nested.original = text.to_owned();
    Ok(Some(Box::new(nested)))
}
