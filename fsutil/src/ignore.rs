//! Ignore patterns (`.dockerignore`, COPY `--exclude`, `--parents` filters) with moby's patternmatcher semantics.
//!
//! moby does not match with `filepath.Match`: it only calls it to reject bad syntax, then rewrites each
//! pattern into a Go regular expression (or, for purely literal shapes, a plain string comparison). The
//! two disagree in corners (`[...]` goes to the regexp engine verbatim, `**foo` is a bare suffix test, a
//! `**` not followed by `/` still means "any directories"), and builds depend on what the rewrite does,
//! so this module reproduces the rewrite and runs the expression on a small RE2-subset engine.
//!
//! Deliberate differences: moby compiles a pattern lazily and errors when it is first evaluated, while
//! [`PatternMatcher::new`] (and [`parse`]) reject it up front; and `\` before a letter or digit, which
//! Go's regexp would read as `\d`, `\b`, `\Q`..., is rejected rather than emulated.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("{file}:{line}: bad pattern {pattern:?}: {reason}")]
    BadPattern {
        file: String,
        line: usize,
        pattern: String,
        reason: String,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// One cleaned pattern, as moby's `Pattern`.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    exception: bool,
    shape: Shape,
}

impl Pattern {
    /// The cleaned pattern without its `!`.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn is_exception(&self) -> bool {
        self.exception
    }

    fn matches(&self, path: &str) -> bool {
        let (text, bytes) = (self.text.as_bytes(), path.as_bytes());
        match &self.shape {
            Shape::Exact => bytes == text,
            Shape::Prefix => bytes.starts_with(&text[..text.len().saturating_sub(2)]),
            // Byte slicing on purpose: moby cuts two bytes, even through a leading BOM.
            Shape::Suffix => {
                let suffix = text.get(2..).unwrap_or_default();
                bytes.ends_with(suffix) || suffix.first() == Some(&b'/') && bytes == &suffix[1..]
            }
            Shape::Regex(re) => re.is_match(path),
        }
    }
}

#[derive(Debug, Clone)]
enum Shape {
    Exact,
    Prefix,
    Suffix,
    Regex(Regex),
}

/// Reads an ignore file like moby's `ignorefile.ReadAll`, then checks every pattern the way
/// [`PatternMatcher::new`] would so that errors can name the line.
pub fn parse(contents: &str, file_name: &str) -> Result<Vec<String>, IgnoreError> {
    let mut out = Vec::new();
    for (index, line) in contents.split('\n').enumerate() {
        // bufio.Scanner gives up on lines of 64 KiB (counting a CR), failing the whole build.
        if line.len() >= 64 * 1024 {
            let source = io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line {} is too long", index + 1),
            );
            return Err(IgnoreError::Io {
                path: file_name.to_string(),
                source,
            });
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = if index == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        // moby tests for `#` before trimming, so an indented `#` is a pattern.
        if line.starts_with('#') {
            continue;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let (invert, body) = match trimmed.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, trimmed),
        };
        let mut pattern = String::new();
        if !body.is_empty() {
            let cleaned = clean(body);
            pattern = match cleaned.strip_prefix('/') {
                Some(relative) if !relative.is_empty() => relative.to_string(),
                _ => cleaned,
            };
        }
        if invert {
            pattern.insert(0, '!');
        }
        if let Err(reason) = compile(&pattern) {
            let (file, line, pattern) = (file_name.to_string(), index + 1, trimmed.to_string());
            return Err(IgnoreError::BadPattern {
                file,
                line,
                pattern,
                reason,
            });
        }
        out.push(pattern);
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    has_exceptions: bool,
    /// fsutil only prunes directories when every exception is a literal path (maybe ending in `/*` or
    /// `/**`): only then can a plain prefix test prove that nothing below a directory comes back.
    literal_exceptions: bool,
}

impl PatternMatcher {
    pub fn new(patterns: &[String]) -> Result<Self, IgnoreError> {
        let mut compiled = Vec::new();
        for (index, raw) in patterns.iter().enumerate() {
            match compile(raw) {
                Ok(Some(pattern)) => compiled.push(pattern),
                Ok(None) => {}
                Err(reason) => {
                    let (file, line, pattern) = ("<patterns>".to_string(), index + 1, raw.clone());
                    return Err(IgnoreError::BadPattern {
                        file,
                        line,
                        pattern,
                        reason,
                    });
                }
            }
        }
        let exceptions = || compiled.iter().filter(|p| p.exception);
        Ok(PatternMatcher {
            has_exceptions: exceptions().next().is_some(),
            literal_exceptions: exceptions().all(|p| !strip_trailing_glob(&p.text).contains(GLOB_CHARS)),
            patterns: compiled,
        })
    }

    /// True if the context-relative path (forward slashes, no leading slash) is excluded, considering its
    /// parents (moby MatchesOrParentMatches).
    pub fn is_excluded(&self, path: &str) -> bool {
        // As moby's package-level helper: the context root itself is never excluded.
        if path.is_empty() || path == "." {
            return false;
        }
        let parent = match path.rfind('/') {
            Some(slash) => clean(&path[..=slash]),
            None => ".".to_string(),
        };
        let mut excluded = false;
        for pattern in &self.patterns {
            // A pattern that cannot change the verdict is not evaluated, exactly as moby skips it.
            if pattern.exception != excluded {
                continue;
            }
            let mut hit = pattern.matches(path);
            if !hit && parent != "." {
                let ancestors = parent.match_indices('/').map(|(slash, _)| &parent[..slash]);
                hit = ancestors.chain([parent.as_str()]).any(|dir| pattern.matches(dir));
            }
            if hit {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    pub fn has_exceptions(&self) -> bool {
        self.has_exceptions
    }

    /// For a walker: true if `dir` is excluded AND no exception could re-include anything below it, so it
    /// need not be entered.
    pub fn can_skip_dir(&self, dir: &str) -> bool {
        if !self.literal_exceptions || !self.is_excluded(dir) {
            return false;
        }
        let dir_slash = format!("{dir}/");
        !self
            .patterns
            .iter()
            .any(|p| p.exception && format!("{}/", strip_trailing_glob(&p.text)).starts_with(&dir_slash))
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }
}

/// Characters that make fsutil treat an exception as a glob rather than a literal path.
const GLOB_CHARS: [char; 6] = ['*', '[', ']', '?', '^', '\\'];

fn strip_trailing_glob(text: &str) -> &str {
    let text = text.strip_suffix("/**").unwrap_or(text);
    text.strip_suffix("/*").unwrap_or(text)
}

/// moby's `New` for one entry: trim, clean (with the `!` still attached, so `!../../a` becomes the
/// exclusion `a`), split off `!`, validate with `filepath.Match` rules, then rewrite.
fn compile(raw: &str) -> Result<Option<Pattern>, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let cleaned = clean(trimmed);
    let (exception, text) = match cleaned.strip_prefix('!') {
        Some("") => return Err(r#"illegal exclusion pattern: "!""#.to_string()),
        Some(rest) => (true, rest),
        None => (false, cleaned.as_str()),
    };
    check_glob(text).ok_or("syntax error in pattern")?;
    let shape = match rewrite(text) {
        (Kind::Exact, _) => Shape::Exact,
        (Kind::Prefix, _) => Shape::Prefix,
        (Kind::Suffix, _) => Shape::Suffix,
        (Kind::Regex, re) => Shape::Regex(Regex::new(&re)?),
    };
    Ok(Some(Pattern {
        text: text.to_string(),
        exception,
        shape,
    }))
}

/// Go's `filepath.Clean` for `/`-separated paths.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|last| *last != "..") => {
                parts.pop();
            }
            ".." if rooted => {}
            _ => parts.push(part),
        }
    }
    match (rooted, parts.join("/")) {
        (true, body) => format!("/{body}"),
        (false, body) if body.is_empty() => ".".to_string(),
        (false, body) => body,
    }
}

/// `Some` when Go's `filepath.Match` accepts the syntax. Match always checks every chunk between unbracketed
/// stars, whatever the name, so only the syntax matters.
fn check_glob(pattern: &str) -> Option<()> {
    let mut rest = pattern;
    while !rest.is_empty() {
        let (chunk, tail) = split_chunk(rest.trim_start_matches('*'));
        check_chunk(chunk)?;
        rest = tail;
    }
    Some(())
}

fn split_chunk(pattern: &str) -> (&str, &str) {
    let mut in_class = false;
    let mut chars = pattern.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' => in_class = true,
            ']' => in_class = false,
            '*' if !in_class => return pattern.split_at(at),
            _ => {}
        }
    }
    (pattern, "")
}

fn check_chunk(chunk: &str) -> Option<()> {
    let mut chars = chunk.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '[' => {
                chars.next_if_eq(&'^');
                let mut ranges = 0;
                while ranges == 0 || chars.next_if_eq(&']').is_none() {
                    glob_class_char(&mut chars)?;
                    if chars.next_if_eq(&'-').is_some() {
                        glob_class_char(&mut chars)?;
                    }
                    ranges += 1;
                }
            }
            '\\' => {
                chars.next()?;
            }
            _ => {}
        }
    }
    Some(())
}

/// Go's `getEsc`, which also insists that something (at least the closing `]`) follows.
fn glob_class_char(chars: &mut std::iter::Peekable<std::str::Chars>) -> Option<()> {
    match chars.next()? {
        '-' | ']' => return None,
        '\\' => {
            chars.next()?;
        }
        _ => {}
    }
    chars.peek().map(|_| ())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex,
}

/// moby's `Pattern.compile`: the match kind and the regexp text (meaningful only for `Kind::Regex`).
fn rewrite(text: &str) -> (Kind, String) {
    // Go's text/scanner swallows a leading BOM.
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (mut kind, mut re) = (Kind::Exact, String::from("^"));
    let mut chars = body.chars().peekable();
    let mut first = true;
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.next_if_eq(&'*').is_some() => {
                chars.next_if_eq(&'/');
                if chars.peek().is_some() {
                    re.push_str("(.*/)?");
                    kind = Kind::Regex;
                } else if kind == Kind::Exact {
                    kind = Kind::Prefix;
                } else {
                    re.push_str(".*");
                    kind = Kind::Regex;
                }
                // moby overrides even a later wildcard-free remainder with a suffix test.
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = Kind::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                kind = Kind::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(c);
            }
            '\\' => match chars.next() {
                Some(escaped) => {
                    re.push('\\');
                    re.push(escaped);
                    kind = Kind::Regex;
                }
                None => re.push('\\'),
            },
            '[' | ']' => {
                re.push(c);
                kind = Kind::Regex;
            }
            _ => re.push(c),
        }
        first = false;
    }
    re.push('$');
    (kind, re)
}

// The regexp engine: just enough of Go's RE2 syntax (Perl flags) for whatever moby's rewrite can produce,
// run as a Pike VM so that stacked `**` segments cannot blow up.

#[derive(Debug, Clone)]
enum Set {
    Lit(char),
    /// `.`, which in Go does not match a newline.
    Dot,
    Class {
        items: Vec<ClassItem>,
        negated: bool,
    },
}

#[derive(Debug, Clone)]
enum ClassItem {
    Range(char, char),
    Posix(fn(char) -> bool, bool),
}

impl Set {
    fn matches(&self, c: char) -> bool {
        match self {
            Set::Lit(lit) => *lit == c,
            Set::Dot => c != '\n',
            Set::Class { items, negated } => {
                let hit = items.iter().any(|item| match item {
                    ClassItem::Range(lo, hi) => (*lo..=*hi).contains(&c),
                    ClassItem::Posix(test, inverted) => test(c) != *inverted,
                });
                hit != *negated
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rep {
    Star,
    Plus,
    Quest,
}

enum Node {
    Set(Set),
    Begin,
    End,
    Group(Vec<Node>),
    Repeat(Box<Node>, Rep),
}

#[derive(Debug, Clone)]
enum Inst {
    Set(Set),
    Begin,
    End,
    Split(usize, usize),
    Jmp(usize),
    Match,
}

#[derive(Debug, Clone)]
struct Regex(Vec<Inst>);

impl Regex {
    fn new(re: &str) -> Result<Self, String> {
        let mut prog = Vec::new();
        emit(parse_regex(re)?, &mut prog);
        prog.push(Inst::Match);
        Ok(Regex(prog))
    }

    /// Unanchored search, like Go's `MatchString`.
    fn is_match(&self, text: &str) -> bool {
        let mut seen = vec![usize::MAX; self.0.len()];
        let (mut current, mut next) = (Vec::new(), Vec::new());
        let mut chars = text.chars().peekable();
        let mut step = 0;
        loop {
            let at_end = chars.peek().is_none();
            if self.add(&mut current, &mut seen, step, 0, (step == 0, at_end)) {
                return true;
            }
            let Some(c) = chars.next() else { return false };
            step += 1;
            let at_end = chars.peek().is_none();
            next.clear();
            for &pc in &current {
                let advances = matches!(self.0.get(pc), Some(Inst::Set(set)) if set.matches(c));
                if advances && self.add(&mut next, &mut seen, step, pc + 1, (false, at_end)) {
                    return true;
                }
            }
            std::mem::swap(&mut current, &mut next);
        }
    }

    /// Follows empty transitions from `pc`; true once `Match` is reachable.
    fn add(
        &self,
        list: &mut Vec<usize>,
        seen: &mut [usize],
        step: usize,
        pc: usize,
        edges: (bool, bool),
    ) -> bool {
        let mut todo = vec![pc];
        while let Some(pc) = todo.pop() {
            let (Some(inst), Some(mark)) = (self.0.get(pc), seen.get_mut(pc)) else {
                continue;
            };
            if *mark == step {
                continue;
            }
            *mark = step;
            match inst {
                Inst::Set(_) => list.push(pc),
                Inst::Match => return true,
                Inst::Jmp(to) => todo.push(*to),
                Inst::Split(a, b) => todo.extend([*b, *a]),
                Inst::Begin if edges.0 => todo.push(pc + 1),
                Inst::End if edges.1 => todo.push(pc + 1),
                Inst::Begin | Inst::End => {}
            }
        }
        false
    }
}

fn emit(nodes: Vec<Node>, prog: &mut Vec<Inst>) {
    for node in nodes {
        match node {
            Node::Set(set) => prog.push(Inst::Set(set)),
            Node::Begin => prog.push(Inst::Begin),
            Node::End => prog.push(Inst::End),
            Node::Group(inner) => emit(inner, prog),
            Node::Repeat(inner, rep) => {
                let start = prog.len();
                if rep != Rep::Plus {
                    prog.push(Inst::Jmp(0)); // becomes the split once the body's length is known
                }
                emit(vec![*inner], prog);
                match rep {
                    Rep::Plus => prog.push(Inst::Split(start, prog.len() + 1)),
                    Rep::Star => {
                        prog.push(Inst::Jmp(start));
                        prog[start] = Inst::Split(start + 1, prog.len());
                    }
                    Rep::Quest => prog[start] = Inst::Split(start + 1, prog.len()),
                }
            }
        }
    }
}

fn parse_regex(re: &str) -> Result<Vec<Node>, String> {
    let chars: Vec<char> = re.chars().collect();
    let (mut current, mut outer) = (Vec::new(), Vec::new());
    let (mut at, mut after_repeat) = (0, false);
    while let Some(&c) = chars.get(at) {
        at += 1;
        let mut repeat = false;
        match c {
            '(' if chars.get(at) == Some(&'?') => return Err("unsupported regexp group flags".into()),
            '(' => outer.push(std::mem::take(&mut current)),
            ')' => {
                let parent = outer.pop().ok_or("unexpected ) in regexp")?;
                let group = std::mem::replace(&mut current, parent);
                current.push(Node::Group(group));
            }
            '|' => return Err("unsupported regexp alternation".into()),
            '^' => current.push(Node::Begin),
            '$' => current.push(Node::End),
            '.' => current.push(Node::Set(Set::Dot)),
            '[' => {
                let (set, next) = parse_class(&chars, at)?;
                at = next;
                current.push(Node::Set(set));
            }
            '*' | '+' | '?' => {
                if after_repeat {
                    return Err(format!("invalid nested repetition operator `{c}`"));
                }
                // A lazy marker changes which match is found, never whether one is.
                if chars.get(at) == Some(&'?') {
                    at += 1;
                }
                let operand = current
                    .pop()
                    .ok_or(format!("missing argument to repetition operator `{c}`"))?;
                let rep = match c {
                    '*' => Rep::Star,
                    '+' => Rep::Plus,
                    _ => Rep::Quest,
                };
                current.push(Node::Repeat(Box::new(operand), rep));
                repeat = true;
            }
            '\\' => {
                current.push(Node::Set(Set::Lit(escape(chars.get(at))?)));
                at += 1;
            }
            _ => current.push(Node::Set(Set::Lit(c))),
        }
        after_repeat = repeat;
    }
    if !outer.is_empty() {
        return Err("missing closing ) in regexp".into());
    }
    Ok(current)
}

/// A bracket expression, starting just after its `[`; returns the index after its `]`.
fn parse_class(chars: &[char], mut at: usize) -> Result<(Set, usize), String> {
    let negated = chars.get(at) == Some(&'^');
    if negated {
        at += 1;
    }
    let mut items = Vec::new();
    loop {
        match chars.get(at) {
            None => return Err("missing closing ] in character class".into()),
            Some(']') if !items.is_empty() => return Ok((Set::Class { items, negated }, at + 1)),
            _ => {}
        }
        // Go looks for the `:]` anywhere in the rest of the expression, not just inside this class.
        if chars.get(at) == Some(&'[') && chars.get(at + 1) == Some(&':') {
            let close =
                (at + 2..chars.len().saturating_sub(1)).find(|&i| chars[i] == ':' && chars[i + 1] == ']');
            if let Some(close) = close {
                let name: String = chars[at + 2..close].iter().collect();
                let (inverted, base) = match name.strip_prefix('^') {
                    Some(base) => (true, base),
                    None => (false, name.as_str()),
                };
                let test = posix_class(base).ok_or(format!("invalid character class range `[:{name}:]`"))?;
                items.push(ClassItem::Posix(test, inverted));
                at = close + 2;
                continue;
            }
        }
        let (lo, next) = class_char(chars, at)?;
        let (mut hi, mut next) = (lo, next);
        if chars.get(next) == Some(&'-') && chars.get(next + 1).is_some_and(|&c| c != ']') {
            (hi, next) = class_char(chars, next + 1)?;
            if hi < lo {
                return Err(format!("invalid character class range `{lo}-{hi}`"));
            }
        }
        items.push(ClassItem::Range(lo, hi));
        at = next;
    }
}

fn class_char(chars: &[char], at: usize) -> Result<(char, usize), String> {
    match chars.get(at) {
        None => Err("missing closing ] in character class".into()),
        Some('\\') => Ok((escape(chars.get(at + 1))?, at + 2)),
        Some(&c) => Ok((c, at + 1)),
    }
}

/// Go's regexp takes escaped ASCII punctuation literally; letters and digits mean something else there.
fn escape(c: Option<&char>) -> Result<char, String> {
    match c {
        Some(&c) if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c),
        Some(c) => Err(format!(
            "`\\{c}` would be a Go regexp escape in moby, not a literal; unsupported"
        )),
        None => Err("trailing backslash".into()),
    }
}

fn posix_class(name: &str) -> Option<fn(char) -> bool> {
    let test: fn(char) -> bool = match name {
        "alnum" => |c| c.is_ascii_alphanumeric(),
        "alpha" => |c| c.is_ascii_alphabetic(),
        "ascii" => |c| c.is_ascii(),
        "blank" => |c| c == ' ' || c == '\t',
        "cntrl" => |c| c.is_ascii_control(),
        "digit" => |c| c.is_ascii_digit(),
        "graph" => |c| c.is_ascii_graphic(),
        "lower" => |c| c.is_ascii_lowercase(),
        "print" => |c| (' '..='~').contains(&c),
        "punct" => |c| c.is_ascii_punctuation(),
        "space" => |c| matches!(c, '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' '),
        "upper" => |c| c.is_ascii_uppercase(),
        "word" => |c| c.is_ascii_alphanumeric() || c == '_',
        "xdigit" => |c| c.is_ascii_hexdigit(),
        _ => return None,
    };
    Some(test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go() {
        let cases = [
            ("", "."),
            ("abc", "abc"),
            ("abc/", "abc"),
            ("a//b", "a/b"),
            ("./a", "a"),
            ("a/./b", "a/b"),
            ("a/../b", "b"),
            ("a/..", "."),
            ("../a", "../a"),
            ("../../a/../b", "../../b"),
            ("/../a", "/a"),
            ("/", "/"),
            ("//", "/"),
            ("!a/../b", "b"),
            ("!../../a", "a"),
        ];
        let failures: Vec<String> = cases
            .iter()
            .filter(|(input, want)| clean(input) != *want)
            .map(|(input, want)| format!("clean({input:?}) = {:?}, want {want:?}", clean(input)))
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// moby's TestCompile table (slash flavour).
    #[test]
    fn rewrite_matches_moby_compile() {
        use Kind::*;
        let cases = [
            ("*", Regex, "^[^/]*$"),
            ("file*", Regex, "^file[^/]*$"),
            ("*file", Regex, "^[^/]*file$"),
            ("a*/b", Regex, "^a[^/]*/b$"),
            ("**", Suffix, ""),
            ("**/**", Regex, "^(.*/)?.*$"),
            ("dir/**", Prefix, ""),
            ("**/dir", Suffix, ""),
            ("**/dir2/*", Regex, "^(.*/)?dir2/[^/]*$"),
            ("**/dir2/**", Regex, "^(.*/)?dir2/.*$"),
            ("**file", Suffix, ""),
            ("**/file*txt", Regex, "^(.*/)?file[^/]*txt$"),
            ("**/**/*.txt", Regex, r"^(.*/)?(.*/)?[^/]*\.txt$"),
            ("a[b-d]e", Regex, "^a[b-d]e$"),
            (".*", Regex, r"^\.[^/]*$"),
            ("abc.def", Exact, ""),
            ("abc?def", Regex, "^abc[^/]def$"),
            ("**/foo/bar", Suffix, ""),
            ("a(b)c/def", Exact, ""),
            ("a.|)$(}+{bc", Exact, ""),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                Exact,
                "",
            ),
        ];
        let mut failures = Vec::new();
        for (pattern, kind, want) in cases {
            let (got_kind, got) = rewrite(&clean(pattern));
            if got_kind != kind || (kind == Regex && got != want) {
                failures.push(format!(
                    "{pattern:?}: got {got_kind:?} {got:?}, want {kind:?} {want:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The syntax half of Go's TestMatch table, as copied into moby's patternmatcher_test.go.
    #[test]
    fn glob_syntax_matches_go() {
        let bad = [
            "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "*[", "a*[b",
        ];
        let good = [
            "abc", "*", "a*/b", "ab[^e-g]", "a\\*b", "[a-ζ]*", "[\\]a]", "[\\-]", "[x\\-]", "[*]", "[z-a]",
        ];
        let mut failures = Vec::new();
        failures.extend(
            bad.iter()
                .filter(|p| check_glob(p).is_some())
                .map(|p| format!("{p:?} accepted")),
        );
        failures.extend(
            good.iter()
                .filter(|p| check_glob(p).is_none())
                .map(|p| format!("{p:?} rejected")),
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn regex_engine() {
        let cases = [
            ("^a[^/]*$", "abc", true),
            ("^a[^/]*$", "ab/c", false),
            ("^(.*/)?b$", "x/y/b", true),
            ("^(.*/)?b$", "xb", false),
            ("^(.*/)?b$", "x\n/b", false),
            ("^[[^/]*]$", "[^]", true),
            ("^[[:digit:]]$", "7", true),
            ("^[[:^digit:]]$", "7", false),
            ("^x+$", "xxx", true),
            ("^^a$", "a", true),
            ("^a^b$", "ab", false),
            ("b", "abc", true),
        ];
        let mut failures = Vec::new();
        for (re, text, want) in cases {
            match Regex::new(re) {
                Ok(compiled) if compiled.is_match(text) == want => {}
                Ok(_) => failures.push(format!("{re:?} on {text:?}: want {want}")),
                Err(error) => failures.push(format!("{re:?}: {error}")),
            }
        }
        for re in [
            "^[Local-Only]$",
            "^[a",
            "^(a",
            "a)",
            "^a**",
            "*a",
            r"^\d$",
            "^[[:nope:]]$",
        ] {
            if Regex::new(re).is_ok() {
                failures.push(format!("{re:?} compiled"));
            }
        }
        let deep = format!("^{}x$", "(.*/)?".repeat(200));
        let compiled = Regex::new(&deep).map_err(|e| e.to_string());
        assert!(
            compiled.is_ok_and(|re| !re.is_match(&"a/".repeat(300))),
            "stacked ** must stay fast"
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
