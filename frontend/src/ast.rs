//! The parsed form of a Dockerfile: one [`Node`] per instruction, with the exact words BuildKit's parser
//! would produce (quotes kept, nothing expanded) and the lines each came from. Typed instructions and variable
//! expansion are later steps; this layer only knows the syntax.

/// A parsed Dockerfile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dockerfile {
    pub nodes: Vec<Node>,
    /// The escape character in force (`\` unless `# escape=` changed it).
    pub escape: char,
    /// Parser directives from the top of the file, in order.
    pub directives: Vec<Directive>,
    /// Syntax-level findings that are not errors (e.g. empty continuation lines), for the linter.
    pub warnings: Vec<ParseWarning>,
}

/// `# name=value` at the very top of a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased directive name: `syntax`, `escape` or `check`.
    pub name: String,
    pub value: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseWarning {
    /// The lint rule this belongs to, e.g. `NoEmptyContinuation`.
    pub rule: &'static str,
    pub message: String,
    pub line: usize,
}

/// One instruction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The keyword in lower case: `from`, `run`, ...
    pub keyword: String,
    /// The keyword exactly as written, for casing checks and messages.
    pub keyword_raw: String,
    /// `--name=value` / `--name` flags as written, in order.
    pub flags: Vec<String>,
    /// The arguments as BuildKit's parser splits them: shell form is the rest of the line as one word, exec
    /// form one word per JSON element, ENV/LABEL `key value sep` triples, whitespace-split words for the
    /// instructions that take them. Quotes are kept except in exec form.
    pub args: Vec<String>,
    /// True when the arguments came from a JSON array (exec form).
    pub json: bool,
    /// The instruction an ONBUILD wraps.
    pub nested: Option<Box<Node>>,
    /// Heredoc bodies attached to this instruction, in the order their markers appear.
    pub heredocs: Vec<Heredoc>,
    /// The instruction's source text, continuation lines joined (comments inside continuations dropped).
    pub original: String,
    /// 1-based first and last line of the instruction, heredoc bodies included.
    pub start_line: usize,
    pub end_line: usize,
    /// 1-based column of the keyword on its first line.
    pub col: usize,
    /// Comment lines directly above the instruction, without the `#`.
    pub prev_comment: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, unquoted.
    pub name: String,
    /// The body, each line ending in a newline; leading tabs already stripped for `<<-`.
    pub content: String,
    /// Which file descriptor the heredoc feeds in RUN (`3<<EOF`): 0 unless given.
    pub file_descriptor: u32,
    /// False when the delimiter was quoted: the body is then taken literally, without expansion.
    pub expand: bool,
    /// True for `<<-`.
    pub chomp: bool,
}
