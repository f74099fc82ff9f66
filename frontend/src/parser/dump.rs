//! BuildKit's AST dump (`Node.Dump`), the format of its parser conformance `result` files: one
//! `(keyword ["--flag"] "arg" …)` line per instruction, strings quoted like Go's `%q`. Heredoc bodies
//! are not part of it, as BuildKit prints only a node's values.

use std::fmt::Write;

use crate::ast::{Dockerfile, Node};

pub fn dump(df: &Dockerfile) -> String {
    let mut out = String::new();
    for node in &df.nodes {
        out.push('(');
        dump_node(node, &mut out);
        out.push_str(")\n");
    }
    out
}

fn dump_node(node: &Node, out: &mut String) {
    out.push_str(&node.keyword);
    if !node.flags.is_empty() {
        out.push_str(" [");
        for (index, flag) in node.flags.iter().enumerate() {
            if index > 0 {
                out.push(' ');
            }
            push_go_quoted(out, flag);
        }
        out.push(']');
    }
    for arg in &node.args {
        out.push(' ');
        push_go_quoted(out, arg);
    }
    if let Some(nested) = &node.nested {
        out.push_str(" (");
        dump_node(nested, out);
        out.push(')');
    }
}

/// Go's `strconv.Quote`.
pub(super) fn go_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    push_go_quoted(&mut out, text);
    out
}

fn push_go_quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if c < ' ' || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if u32::from(c) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII space. Rust's
/// `escape_debug` escapes exactly the complement (control, format, private-use, unassigned and separator
/// characters other than the space) for any character that does not start a string, so ask it.
fn is_go_printable(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    let mut buffer = [b' '; 5];
    let encoded_len = c.encode_utf8(&mut buffer[1..]).len();
    let Ok(space_then_c) = std::str::from_utf8(&buffer[..1 + encoded_len]) else {
        return false;
    };
    let mut escaped = space_then_c.escape_debug().skip(1);
    escaped.next() == Some(c) && escaped.next().is_none()
}
