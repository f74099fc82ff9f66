//! Shell-word lexing and variable expansion with BuildKit's semantics.
//!
//! This mirrors `shell.Lex` from moby/buildkit (quoting, `$var`/`${var…}` forms, word splitting, and which
//! names count as matched or unmatched for the `UndefinedVar` check), with these deliberate differences:
//!
//! - Patterns (`#`, `%`, `/`) are globs matched directly instead of being compiled to a regexp. They also
//!   understand bracket expressions (`[a-z]`, `[!x]`), which BuildKit treats as literal characters; a `[`
//!   without a closing `]` is still literal, as in bash.
//! - Inside a pattern the Dockerfile's escape character escapes (BuildKit hard-codes `\`), any escaped
//!   character is literal (BuildKit rejects all but `\*`, `\?`, `\\`), and `*`/`?` match newlines too.
//! - `##`/`%%` are recognised from the source text, so `${v#"#"}` removes a leading `#` instead of being
//!   read as `${v##}`.
//! - Error messages carry no "failed to process" prefix; callers know the context and add it.

use std::collections::HashMap;
use std::hash::BuildHasher;

/// Where variable values come from.
pub trait Env {
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        // A later definition shadows an earlier one, as when ENV redefines a variable.
        self.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShellError {
    pub message: String,
    /// Byte offset in the input word where the problem is.
    pub offset: usize,
}

impl ShellError {
    fn new(message: impl Into<String>, offset: usize) -> Self {
        ShellError {
            message: message.into(),
            offset,
        }
    }
}

/// Variable names a word referenced, in order of first appearance. Like BuildKit, every lookup counts,
/// including `$1`, `$@` and `${v:-default}` on an unset `v`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matches {
    pub matched: Vec<String>,
    pub unmatched: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct ShellLex {
    escape: char,
}

impl ShellLex {
    /// `escape` is `\` by default, or whatever the `# escape=` directive chose.
    pub fn new(escape: char) -> Self {
        ShellLex { escape }
    }

    /// One word, quotes removed, variables expanded (ENV, LABEL values, WORKDIR, COPY paths...).
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<String, ShellError> {
        Ok(self.expand(word, env)?.0.text)
    }

    /// Split into words after expansion: unquoted whitespace, including whitespace that comes out of an
    /// unquoted expansion, separates words.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        Ok(self.expand(word, env)?.0.words)
    }

    /// Like `process_word`, also reporting which variable names were referenced and found, and which
    /// were referenced but unset (for the `UndefinedVar` lint check).
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<(String, Matches), ShellError> {
        let (expansion, matches) = self.expand(word, env)?;
        Ok((expansion.text, matches))
    }

    fn expand(&self, word: &str, env: &dyn Env) -> Result<(Expansion, Matches), ShellError> {
        let mut expander = Expander {
            source: word,
            pos: 0,
            escape: self.escape,
            env,
            matches: Matches::default(),
            depth: 0,
        };
        let expansion = expander.expand_until(None, false)?;
        Ok((expansion, expander.matches))
    }
}

struct Expansion {
    text: String,
    words: Vec<String>,
}

/// Builds the `process_words` result alongside the plain text.
#[derive(Default)]
struct WordSplitter {
    words: Vec<String>,
    current: String,
}

impl WordSplitter {
    fn push_unquoted(&mut self, ch: char) {
        if !ch.is_whitespace() {
            self.current.push(ch);
        } else if !self.current.is_empty() {
            self.words.push(std::mem::take(&mut self.current));
        }
    }

    fn push_unquoted_str(&mut self, text: &str) {
        text.chars().for_each(|ch| self.push_unquoted(ch));
    }

    fn push_quoted(&mut self, ch: char) {
        self.current.push(ch);
    }

    fn push_quoted_str(&mut self, text: &str) {
        self.current.push_str(text);
    }

    /// An empty quoted string (`""`) yields no word, as in BuildKit.
    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.words.push(self.current);
        }
        self.words
    }
}

#[derive(Clone, Copy)]
enum Fallback {
    /// `-`: the word when the variable is unset.
    Default,
    /// `+`: the word when the variable is set.
    Alternative,
    /// `?`: an error carrying the word when the variable is unset.
    Required,
}

struct Expander<'a> {
    source: &'a str,
    /// Byte offset of the next unread character; always on a char boundary.
    pos: usize,
    escape: char,
    env: &'a dyn Env,
    matches: Matches,
    /// How many `${…}` enclose the current position; bounded so hostile input cannot overflow the stack.
    depth: usize,
}

/// Far beyond anything a real Dockerfile nests.
const MAX_NESTING: usize = 64;

impl<'a> Expander<'a> {
    fn peek(&self) -> Option<char> {
        self.source.get(self.pos..)?.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let ch = self.peek()?;
        self.pos += ch.len_utf8();
        Some(ch)
    }

    fn at_end(&self) -> bool {
        self.peek().is_none()
    }

    /// Expands up to `terminator` (consumed) or the end of input. With `raw_escapes` the escape characters
    /// stay in the text, so a glob built from it can still tell an escaped `*` from a wildcard.
    fn expand_until(&mut self, terminator: Option<char>, raw_escapes: bool) -> Result<Expansion, ShellError> {
        let mut text = String::new();
        let mut words = WordSplitter::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == terminator {
                self.bump();
                return Ok(Expansion {
                    text,
                    words: words.finish(),
                });
            }
            match ch {
                '$' => {
                    let value = self.expand_dollar()?;
                    words.push_unquoted_str(&value);
                    text.push_str(&value);
                }
                '\'' => {
                    let quoted = self.single_quoted()?;
                    words.push_quoted_str(&quoted);
                    text.push_str(&quoted);
                }
                '"' => {
                    let quoted = self.double_quoted(raw_escapes)?;
                    words.push_quoted_str(&quoted);
                    text.push_str(&quoted);
                }
                _ => {
                    self.bump();
                    if ch != self.escape {
                        words.push_unquoted(ch);
                        text.push(ch);
                        continue;
                    }
                    if raw_escapes {
                        words.push_quoted(ch);
                        text.push(ch);
                    }
                    // A trailing escape has nothing to escape and vanishes.
                    let Some(escaped) = self.bump() else { break };
                    words.push_quoted(escaped);
                    text.push(escaped);
                }
            }
        }
        match terminator {
            None => Ok(Expansion {
                text,
                words: words.finish(),
            }),
            Some(expected) => Err(ShellError::new(
                format!("unexpected end of statement while looking for matching {expected}"),
                self.pos,
            )),
        }
    }

    fn single_quoted(&mut self) -> Result<String, ShellError> {
        let open = self.pos;
        let after_quote = self.source.get(open + 1..).unwrap_or_default();
        let Some((quoted, _)) = after_quote.split_once('\'') else {
            return Err(ShellError::new(
                "unexpected end of statement while looking for matching single-quote",
                open,
            ));
        };
        self.pos = open + 1 + quoted.len() + 1;
        Ok(quoted.to_owned())
    }

    fn double_quoted(&mut self, raw_escapes: bool) -> Result<String, ShellError> {
        let open = self.pos;
        self.bump();
        let mut text = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(ShellError::new(
                        "unexpected end of statement while looking for matching double-quote",
                        open,
                    ));
                }
                Some('"') => {
                    self.bump();
                    return Ok(text);
                }
                Some('$') => text.push_str(&self.expand_dollar()?),
                Some(ch) => {
                    self.bump();
                    if ch == self.escape {
                        if raw_escapes {
                            text.push(ch);
                        }
                        let escapable = |next: char| next == '"' || next == '$' || next == self.escape;
                        if let Some(next) = self.peek().filter(|&next| escapable(next)) {
                            self.bump();
                            text.push(next);
                            continue;
                        }
                        // Otherwise the escape is an ordinary character here; in raw mode it was
                        // escaped above so a pattern reads it literally.
                    }
                    text.push(ch);
                }
            }
        }
    }

    /// Expands the `$…` at the current position.
    fn expand_dollar(&mut self) -> Result<String, ShellError> {
        let start = self.pos;
        self.bump();
        if self.peek() != Some('{') {
            let name = self.read_name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(self.lookup(&name).unwrap_or_default().to_owned());
        }
        self.bump();
        if self.depth >= MAX_NESTING {
            return Err(ShellError::new("substitutions nested too deeply", start));
        }
        self.depth += 1;
        let expanded = self.expand_braced(start);
        self.depth -= 1;
        expanded
    }

    /// Expands a `${…}` whose `${` starting at `start` has been consumed.
    fn expand_braced(&mut self, start: usize) -> Result<String, ShellError> {
        match self.peek() {
            None => return Err(missing_brace(start)),
            Some('{' | '}' | ':') => {
                return Err(ShellError::new("syntax error: bad substitution", start));
            }
            Some(_) => {}
        }
        let name = self.read_name();
        let modifier_at = self.pos;
        let Some(modifier) = self.bump() else {
            return Err(missing_brace(start));
        };
        match modifier {
            '}' => Ok(self.lookup(&name).unwrap_or_default().to_owned()),
            '-' => self.expand_fallback(&name, Fallback::Default, false, start),
            '+' => self.expand_fallback(&name, Fallback::Alternative, false, start),
            '?' => self.expand_fallback(&name, Fallback::Required, false, start),
            ':' => match self.bump() {
                Some('-') => self.expand_fallback(&name, Fallback::Default, true, start),
                Some('+') => self.expand_fallback(&name, Fallback::Alternative, true, start),
                Some('?') => self.expand_fallback(&name, Fallback::Required, true, start),
                Some(other) => Err(unsupported_modifier(&format!(":{other}"), modifier_at)),
                None => Err(missing_brace(start)),
            },
            '#' | '%' => self.expand_trim(&name, modifier, start),
            '/' => self.expand_replace(&name, start),
            other => Err(unsupported_modifier(&other.to_string(), modifier_at)),
        }
    }

    /// A variable name, or a positional (`1`, `10`) or special (`@`, `#`, …) parameter; empty if none.
    fn read_name(&mut self) -> String {
        let Some(first) = self.peek() else {
            return String::new();
        };
        if first.is_numeric() {
            return self.take_while(char::is_numeric);
        }
        if matches!(first, '@' | '*' | '#' | '?' | '-' | '$' | '!') {
            self.bump();
            return first.to_string();
        }
        self.take_while(|ch| ch.is_alphanumeric() || ch == '_')
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let rest = self.source.get(self.pos..).unwrap_or_default();
        let len = rest.find(|ch| !keep(ch)).unwrap_or(rest.len());
        self.pos += len;
        rest.get(..len).unwrap_or_default().to_owned()
    }

    fn lookup(&mut self, name: &str) -> Option<&'a str> {
        let env = self.env;
        let value = env.lookup(name);
        let seen = match value {
            Some(_) => &mut self.matches.matched,
            None => &mut self.matches.unmatched,
        };
        if !seen.iter().any(|known| known == name) {
            seen.push(name.to_owned());
        }
        value
    }

    /// The rest of a `${…}` up to its closing brace.
    fn expand_to_brace(&mut self, start: usize, raw_escapes: bool) -> Result<String, ShellError> {
        match self.expand_until(Some('}'), raw_escapes) {
            Ok(expansion) => Ok(expansion.text),
            Err(_) if self.at_end() => Err(missing_brace(start)),
            Err(error) => Err(error),
        }
    }

    fn expand_fallback(
        &mut self,
        name: &str,
        fallback: Fallback,
        empty_is_unset: bool,
        start: usize,
    ) -> Result<String, ShellError> {
        let value = self.lookup(name);
        // The word is expanded even when unused, so its errors and variable references always count.
        let word = self.expand_to_brace(start, false)?;
        let usable = value.filter(|value| !(empty_is_unset && value.is_empty()));
        match (fallback, usable) {
            (Fallback::Default, Some(value)) | (Fallback::Required, Some(value)) => Ok(value.to_owned()),
            (Fallback::Default, None) | (Fallback::Alternative, Some(_)) => Ok(word),
            (Fallback::Alternative, None) => Ok(String::new()),
            (Fallback::Required, None) => {
                let message = if !word.is_empty() {
                    word
                } else if value.is_none() {
                    "is not allowed to be unset".to_owned()
                } else {
                    "is not allowed to be empty".to_owned()
                };
                Err(ShellError::new(format!("{name}: {message}"), start))
            }
        }
    }

    /// `${v#p}`, `${v##p}`, `${v%p}`, `${v%%p}`.
    fn expand_trim(&mut self, name: &str, operator: char, start: usize) -> Result<String, ShellError> {
        let longest = self.peek() == Some(operator);
        if longest {
            self.bump();
        }
        let value = self.lookup(name).unwrap_or_default();
        let pattern = Glob::parse(&self.expand_to_brace(start, true)?, self.escape);
        let trimmed = if operator == '#' {
            pattern.trim_prefix(value, longest)
        } else {
            pattern.trim_suffix(value, longest)
        };
        Ok(trimmed.to_owned())
    }

    /// `${v/p/r}` and `${v//p/r}`. Like BuildKit, escapes stay in the replacement text.
    fn expand_replace(&mut self, name: &str, start: usize) -> Result<String, ShellError> {
        let all = self.peek() == Some('/');
        if all {
            self.bump();
        }
        let value = self.lookup(name).unwrap_or_default();
        let pattern = match self.expand_until(Some('/'), true) {
            Ok(expansion) => expansion.text,
            Err(_) if self.at_end() => {
                return Err(ShellError::new("syntax error: missing '/' in ${}", start));
            }
            Err(error) => return Err(error),
        };
        let replacement = self.expand_to_brace(start, true)?;
        Ok(Glob::parse(&pattern, self.escape).replace(value, &replacement, all))
    }
}

fn missing_brace(start: usize) -> ShellError {
    ShellError::new("syntax error: missing '}'", start)
}

fn unsupported_modifier(modifier: &str, offset: usize) -> ShellError {
    ShellError::new(
        format!("unsupported modifier ({modifier}) in substitution"),
        offset,
    )
}

/// Every token but `AnyString` matches exactly one character, which is what lets a suffix search run as
/// a prefix search over the reversed token list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GlobToken {
    Literal(char),
    AnyChar,
    AnyString,
    Set {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl GlobToken {
    fn matches(&self, ch: char) -> bool {
        match self {
            GlobToken::Literal(literal) => *literal == ch,
            GlobToken::AnyChar | GlobToken::AnyString => true,
            GlobToken::Set { negated, ranges } => {
                ranges.iter().any(|&(low, high)| low <= ch && ch <= high) != *negated
            }
        }
    }
}

struct Glob {
    tokens: Vec<GlobToken>,
}

impl Glob {
    fn parse(pattern: &str, escape: char) -> Self {
        let mut tokens = Vec::new();
        let mut rest = pattern.chars();
        while let Some(ch) = rest.next() {
            let token = match ch {
                _ if ch == escape => GlobToken::Literal(rest.next().unwrap_or(escape)),
                '*' => GlobToken::AnyString,
                '?' => GlobToken::AnyChar,
                '[' => match parse_set(rest.clone(), escape) {
                    Some((set, after_set)) => {
                        rest = after_set;
                        set
                    }
                    None => GlobToken::Literal('['),
                },
                _ => GlobToken::Literal(ch),
            };
            tokens.push(token);
        }
        Glob { tokens }
    }

    fn trim_prefix<'v>(&self, value: &'v str, longest: bool) -> &'v str {
        match matching_prefix_len(&self.tokens, value.chars(), longest) {
            Some(len) => value.get(len..).unwrap_or_default(),
            None => value,
        }
    }

    fn trim_suffix<'v>(&self, value: &'v str, longest: bool) -> &'v str {
        let reversed: Vec<GlobToken> = self.tokens.iter().rev().cloned().collect();
        match matching_prefix_len(&reversed, value.chars().rev(), longest) {
            Some(len) => value.get(..value.len() - len).unwrap_or_default(),
            None => value,
        }
    }

    /// Leftmost, then longest, match at or after byte offset `from`, as `(start, end)` byte offsets.
    fn find(&self, value: &str, from: usize) -> Option<(usize, usize)> {
        let starts = value
            .char_indices()
            .map(|(offset, _)| offset)
            .chain([value.len()]);
        starts.filter(|&start| start >= from).find_map(|start| {
            let rest = value.get(start..)?;
            matching_prefix_len(&self.tokens, rest.chars(), true).map(|len| (start, start + len))
        })
    }

    /// Follows Go's `Regexp.ReplaceAllString`, which BuildKit uses: an empty match right after the
    /// previous match is not replaced again, and the search always moves forward.
    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let mut replaced = String::new();
        let mut copied_to = 0;
        let mut search_from = 0;
        while search_from <= value.len() {
            let Some((start, end)) = self.find(value, search_from) else {
                break;
            };
            replaced.push_str(value.get(copied_to..start).unwrap_or_default());
            if end > copied_to || start == 0 {
                replaced.push_str(replacement);
            }
            copied_to = end;
            if !all {
                break;
            }
            search_from = if end > search_from {
                end
            } else {
                let skipped = value.get(search_from..).and_then(|rest| rest.chars().next());
                search_from + skipped.map_or(1, char::len_utf8)
            };
        }
        replaced.push_str(value.get(copied_to..).unwrap_or_default());
        replaced
    }
}

/// Parses a bracket expression after its `[`; `None` when it never closes, making the `[` literal.
fn parse_set(mut rest: std::str::Chars<'_>, escape: char) -> Option<(GlobToken, std::str::Chars<'_>)> {
    let negated = matches!(rest.clone().next(), Some('!' | '^'));
    if negated {
        rest.next();
    }
    let mut ranges = Vec::new();
    loop {
        let mut low = rest.next()?;
        // A `]` right after `[` or `[!` is a member, not the end.
        if low == ']' && !ranges.is_empty() {
            return Some((GlobToken::Set { negated, ranges }, rest));
        }
        if low == escape {
            low = rest.next()?;
        }
        let mut high = low;
        let mut lookahead = rest.clone();
        if lookahead.next() == Some('-') {
            match lookahead.next() {
                // A `-` just before the closing `]` is a member of its own.
                Some(']') | None => {}
                Some(end) => {
                    high = if end == escape { lookahead.next()? } else { end };
                    rest = lookahead;
                }
            }
        }
        ranges.push((low, high));
    }
}

/// Byte length of the shortest (or longest) prefix of `text` that the whole pattern matches. Runs the
/// pattern as an NFA over token positions, so stars never cause exponential backtracking.
fn matching_prefix_len(
    tokens: &[GlobToken],
    mut text: impl Iterator<Item = char>,
    longest: bool,
) -> Option<usize> {
    let accepting = tokens.len();
    let mut active = vec![false; tokens.len() + 1];
    active[0] = true;
    follow_stars(tokens, &mut active);
    let mut best = None;
    let mut consumed = 0;
    loop {
        if active[accepting] {
            best = Some(consumed);
            if !longest {
                break;
            }
        }
        let Some(ch) = text.next() else { break };
        let mut next = vec![false; active.len()];
        for (position, token) in tokens.iter().enumerate() {
            if !active[position] {
                continue;
            }
            if *token == GlobToken::AnyString {
                next[position] = true;
            } else if token.matches(ch) {
                next[position + 1] = true;
            }
        }
        follow_stars(tokens, &mut next);
        if !next.contains(&true) {
            break;
        }
        active = next;
        consumed += ch.len_utf8();
    }
    best
}

/// A star may match nothing, so whatever follows it is reachable without consuming a character.
fn follow_stars(tokens: &[GlobToken], active: &mut [bool]) {
    for (position, token) in tokens.iter().enumerate() {
        if *token == GlobToken::AnyString && active[position] {
            active[position + 1] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn expand(word: &str, pairs: &[(&str, &str)]) -> Result<String, ShellError> {
        ShellLex::new('\\').process_word(word, &env(pairs))
    }

    #[test]
    fn backtick_escape_replaces_backslash() {
        let lex = ShellLex::new('`');
        let vars = env(&[("DIR", "app")]);
        assert_eq!(lex.process_word(r"C:\`$DIR\x", &vars).unwrap(), r"C:\$DIR\x");
        assert_eq!(lex.process_word(r#""a`"b\c""#, &vars).unwrap(), r#"a"b\c"#);
        assert_eq!(lex.process_word(r"C:\$DIR", &vars).unwrap(), r"C:\app");
        assert_eq!(lex.process_words("a` b c", &vars).unwrap(), ["a b", "c"]);
        // The escape character also escapes inside patterns, so Windows paths need no doubling.
        let path = env(&[("P", r"C:\Users\me")]);
        assert_eq!(lex.process_word(r"${P#C:\Users\}", &path).unwrap(), "me");
        assert_eq!(lex.process_word("${P#*`*}", &env(&[("P", "a*b")])).unwrap(), "b");
    }

    #[test]
    fn prefix_and_suffix_patterns() {
        let file = [("F", "archive.tar.gz")];
        assert_eq!(expand("${F#*.}", &file).unwrap(), "tar.gz");
        assert_eq!(expand("${F##*.}", &file).unwrap(), "gz");
        assert_eq!(expand("${F%.*}", &file).unwrap(), "archive.tar");
        assert_eq!(expand("${F%%.*}", &file).unwrap(), "archive");
        assert_eq!(expand("${F#nomatch}", &file).unwrap(), "archive.tar.gz");
        assert_eq!(expand("${F#?r}", &file).unwrap(), "chive.tar.gz");
        assert_eq!(expand("${F%[a-z]z}", &file).unwrap(), "archive.tar.");
        assert_eq!(expand("${F#[!a]*}", &file).unwrap(), "archive.tar.gz");
        assert_eq!(expand("${F#[]a]}", &file).unwrap(), "rchive.tar.gz");
        assert_eq!(expand("${F##}", &file).unwrap(), "archive.tar.gz");
        assert_eq!(expand("${F%%}", &file).unwrap(), "archive.tar.gz");
        assert_eq!(expand("${UNSET#*}", &file).unwrap(), "");
        assert_eq!(expand(r"${S%%\**}", &[("S", "xx**")]).unwrap(), "xx");
        assert_eq!(expand(r"${S#?\?}", &[("S", "???y")]).unwrap(), "?y");
        assert_eq!(expand("${S#*x*y}", &[("S", "xxyy")]).unwrap(), "y");
        assert_eq!(expand(r"${S%%\**\*}", &[("S", "a***yy*")]).unwrap(), "a");
        assert_eq!(
            expand("${A:-.}${S%x}${A:-.}", &[("S", "xxyy")]).unwrap(),
            ".xxyy."
        );
        assert_eq!(expand("${S#[}", &[("S", "[x")]).unwrap(), "x");
        assert_eq!(expand("${S%한*}", &[("S", "안녕한국어")]).unwrap(), "안녕");
        assert_eq!(
            expand(r"${S#()[]{\}^$.\*\?|\\}", &[("S", r"()[]{}^$.*?|\x")]).unwrap(),
            "x"
        );
    }

    #[test]
    fn replace_patterns() {
        let path = [("P", "/a/foo/b/c.txt"), ("NEEDLE", "/?/"), ("WITH", "/")];
        assert_eq!(expand("${P/$NEEDLE/$WITH}", &path).unwrap(), "/foo/b/c.txt");
        assert_eq!(expand("${P//$NEEDLE/$WITH}", &path).unwrap(), "/foo/c.txt");
        assert_eq!(expand("${P//[abc]/X}", &path).unwrap(), "/X/foo/X/X.txt");
        assert_eq!(expand("${P/*o/}", &path).unwrap(), "/b/c.txt");
        assert_eq!(expand("${P/nomatch/x}", &path).unwrap(), "/a/foo/b/c.txt");
        assert_eq!(expand(r"${P//\//\/}", &[("P", "/tmp/a")]).unwrap(), r"\/tmp\/a");
        assert_eq!(
            expand("${P/$EMPTY/ww}", &[("P", "xy"), ("EMPTY", "")]).unwrap(),
            "wwxy"
        );
        assert_eq!(expand("${P///}", &[("P", "xy")]).unwrap(), "xy");
        assert_eq!(expand("${P//*/z}", &[("P", "xy")]).unwrap(), "z");
        assert!(expand("${P//}", &[("P", "xy")]).is_err());
        assert!(expand("${P/x", &[("P", "xy")]).is_err());
    }

    #[test]
    fn required_variable_errors_carry_the_message() {
        let vars = [("SET", "plain"), ("EMPTY", ""), ("ARG", "x")];
        assert_eq!(expand("${SET:?must be set$ARG}", &vars).unwrap(), "plain");
        assert_eq!(expand("${EMPTY?must be set}", &vars).unwrap(), "");

        let error = expand("ab${MISSING:?must be set $ARG}", &vars).unwrap_err();
        assert_eq!(error.message, "MISSING: must be set x");
        assert_eq!(error.to_string(), "MISSING: must be set x");
        assert_eq!(error.offset, 2);

        let error = expand("${EMPTY:?}", &vars).unwrap_err();
        assert_eq!(error.message, "EMPTY: is not allowed to be empty");
        let error = expand("${MISSING?}", &vars).unwrap_err();
        assert_eq!(error.message, "MISSING: is not allowed to be unset");
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        let error = expand("ab'cd", &[]).unwrap_err();
        assert_eq!(error.offset, 2);
        let error = expand("x${A:-y", &[]).unwrap_err();
        assert_eq!(
            (error.message.as_str(), error.offset),
            ("syntax error: missing '}'", 1)
        );
        let error = expand("x${A=y}", &[]).unwrap_err();
        assert_eq!(
            (error.message.as_str(), error.offset),
            ("unsupported modifier (=) in substitution", 4)
        );
        assert!(expand("${#A}", &[("A", "abc")]).is_err());
        assert!(expand("${A:#x}", &[("A", "abc")]).is_err());
    }

    #[test]
    fn matches_report_found_and_missing_names_in_order() {
        let lex = ShellLex::new('\\');
        let vars: HashMap<String, String> = [("FOO", "xxx"), ("BAR", "")]
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .into();
        let (text, matches) = lex
            .process_word_with_matches("${BAZ:-a} $FOO ${BAR+b} $BAZ ${QUX#x} $FOO", &vars)
            .unwrap();
        assert_eq!(text, "a xxx b   xxx");
        assert_eq!(matches.matched, ["FOO", "BAR"]);
        // BuildKit counts a reference with a default as unmatched too; UndefinedVar then reports it.
        assert_eq!(matches.unmatched, ["BAZ", "QUX"]);

        let (_, matches) = lex.process_word_with_matches("plain 'quoted $X'", &vars).unwrap();
        assert_eq!(matches, Matches::default());
    }

    #[test]
    fn later_slice_entries_shadow_earlier_ones() {
        let vars = env(&[("A", "first"), ("A", "second")]);
        assert_eq!(vars.lookup("A"), Some("second"));
        assert_eq!(vars.as_slice().lookup("B"), None);
    }

    #[test]
    fn never_panics_on_short_inputs() {
        let alphabet = [
            '$', '{', '}', ':', '-', '#', '%', '/', '\\', '\'', '"', '*', '[', ']', 'é', 'A',
        ];
        let lex = ShellLex::new('\\');
        let vars = env(&[("A", "a*é[b]")]);
        let mut word = String::new();
        for code in 0..alphabet.len().pow(4) {
            word.clear();
            let mut rest = code;
            for _ in 0..4 {
                word.push(alphabet[rest % alphabet.len()]);
                rest /= alphabet.len();
            }
            let _ = lex.process_words(&word, &vars);
            let _ = lex.process_word(&format!("${{A/{word}/x}}${{A%%{word}}}"), &vars);
        }
        let deeply_nested = "\"${A:-".repeat(100_000);
        assert!(lex.process_word(&deeply_nested, &vars).is_err());
        let nested = format!("{}x{}", "${A:+".repeat(MAX_NESTING), "}".repeat(MAX_NESTING));
        assert_eq!(lex.process_word(&nested, &vars).unwrap(), "x");
    }
}
