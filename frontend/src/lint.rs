//! Lint checks (`kiln build --check`), named and worded like BuildKit's build checks so users find the same
//! rule in the docs. Rules that need only the syntax run over the AST here; rules that need variable scoping
//! (UndefinedVar, UndefinedArgInFrom) are reported by the converter into the same [`LintWarning`] list.
//!
//! BuildKit runs these checks in three places (the parser, the instruction parser and the LLB dispatcher), and
//! which place a rule lives in decides what it sees: instruction-level rules see every top-level instruction,
//! casing rules see only instructions that belong to a stage, and dispatch rules carry per-stage state that a
//! stage inherits from the earlier stage it is built `FROM`. [`lint`] keeps those scopes.

use std::collections::HashMap;
use std::fmt;

use crate::ast::{Dockerfile, Node};

/// One finding of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintWarning {
    /// The rule's name, e.g. `FromAsCasing`.
    pub rule: &'static str,
    /// 1-based line of the instruction the finding is about.
    pub line: usize,
    pub message: String,
    /// A one-line fix the user can apply.
    pub fix: String,
}

impl LintWarning {
    /// The rule's page in Docker's build-check reference.
    pub fn url(&self) -> String {
        format!(
            "https://docs.docker.com/go/dockerfile/rule/{}/",
            kebab_case(self.rule)
        )
    }
}

/// `3: FromAsCasing: <message>` and an indented `fix:` line. The file name is left to the caller, so
/// `format!("{file}:{warning}")` reads like the `file:line:` prefix of the frontend's diagnostics.
impl fmt::Display for LintWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}\n  fix: {}",
            self.line, self.rule, self.message, self.fix
        )
    }
}

/// What the `# check=` directive asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    /// `skip=all`: no rule runs.
    pub skip_all: bool,
    /// Rule names from `skip=A,B`, matched case-sensitively like BuildKit does.
    pub skip: Vec<String>,
    /// `error=true`: a finding fails the build.
    pub error: bool,
}

impl CheckConfig {
    /// Parses a `check` directive value, e.g. `skip=JSONArgsRecommended,StageNameCasing;error=true`.
    ///
    /// Mirrors BuildKit: options are split on `;` into at most three parts (so a fourth option ends up inside
    /// the third's value), keys are case-sensitive, `error` takes Go's boolean spellings. `experimental=` is
    /// accepted and ignored because none of kiln's rules is experimental.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut config = CheckConfig::default();
        let value = value.trim();
        if value.is_empty() {
            return Ok(config);
        }
        for part in value.splitn(3, ';') {
            let Some((key, val)) = part.split_once('=') else {
                return Err(format!(
                    "invalid check option {part:?}: expected `skip=<rules|all>`, `error=<bool>` or \
                     `experimental=<rules|all>`, separated by `;`"
                ));
            };
            let val = val.trim();
            match key.trim() {
                "skip" if val == "all" => config.skip_all = true,
                "skip" => {
                    config.skip = val
                        .split(',')
                        .map(str::trim)
                        .filter(|r| !r.is_empty())
                        .map(String::from)
                        .collect();
                }
                "error" => {
                    config.error = parse_go_bool(val).ok_or_else(|| {
                        format!("invalid check option {part:?}: {val:?} is not a boolean (use true or false)")
                    })?;
                }
                "experimental" => {}
                other => {
                    return Err(format!(
                        "invalid check option {other:?}: known options are `skip`, `error` and `experimental`"
                    ));
                }
            }
        }
        Ok(config)
    }

    /// The configuration from the Dockerfile's `# check=` directive, or the default when there is none.
    pub fn from_dockerfile(df: &Dockerfile) -> Result<Self, String> {
        match df.directives.iter().find(|d| d.name == "check") {
            Some(d) => Self::parse(&d.value).map_err(|e| format!("check directive on line {}: {e}", d.line)),
            None => Ok(Self::default()),
        }
    }

    pub fn enabled(&self, rule: &str) -> bool {
        !self.skip_all && !self.skip.iter().any(|s| s == rule)
    }
}

/// The spellings Go's `strconv.ParseBool` accepts, which is what BuildKit uses for `error=`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Runs every syntax-level rule over `df`. Findings are sorted by line; within a line they keep the order
/// BuildKit would report them in.
pub fn lint(df: &Dockerfile) -> Vec<LintWarning> {
    let mut out = Vec::new();
    check_empty_continuations(df, &mut out);
    for node in &df.nodes {
        check_instruction(node, df.escape, &mut out);
    }
    let stages = split_stages(&df.nodes);
    check_stage_names(&stages, &mut out);
    check_instruction_casing(&stages, &mut out);
    check_dispatch(&stages, df.escape, &mut out);
    out.sort_by_key(|w| w.line);
    out
}

/// The parser notes every empty continuation line; BuildKit reports each instruction that has any once, on
/// the instruction's last line (heredoc bodies not counted).
fn check_empty_continuations(df: &Dockerfile, out: &mut Vec<LintWarning>) {
    let mut lines: Vec<usize> = df
        .warnings
        .iter()
        .filter(|w| w.rule == "NoEmptyContinuation")
        .map(|w| {
            let node = df
                .nodes
                .iter()
                .find(|n| (n.start_line..=n.end_line).contains(&w.line));
            node.map_or(w.line, |n| continuation_end(n).max(w.line))
        })
        .collect();
    lines.dedup();
    for line in lines {
        out.push(LintWarning {
            rule: "NoEmptyContinuation",
            line,
            message: "Empty continuation line".into(),
            fix: "delete the empty lines inside this instruction (or end it before them); they will be an \
                  error in a future release"
                .into(),
        });
    }
}

/// The last line of the instruction's own text: its end line less the heredoc bodies and their terminators.
fn continuation_end(node: &Node) -> usize {
    let heredoc_lines: usize = node
        .heredocs
        .iter()
        .map(|h| h.content.matches('\n').count() + 1)
        .sum();
    node.end_line.saturating_sub(heredoc_lines).max(node.start_line)
}

/// A build stage: its FROM and the instructions up to the next FROM. Instructions before the first FROM
/// (global ARGs) belong to no stage, so the stage-scoped rules below never see them.
struct Stage<'a> {
    from: &'a Node,
    commands: &'a [Node],
}

impl Stage<'_> {
    /// The stage name, lower-cased as BuildKit stores it.
    fn name(&self) -> Option<String> {
        match self.from.args.as_slice() {
            [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some(name.to_lowercase()),
            _ => None,
        }
    }
}

fn split_stages(nodes: &[Node]) -> Vec<Stage<'_>> {
    let starts: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].keyword == "from").collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).copied().unwrap_or(nodes.len());
            Stage {
                from: &nodes[start],
                commands: &nodes[start + 1..end],
            }
        })
        .collect()
}

/// Rules BuildKit's instruction parser runs on each top-level instruction, in or out of a stage.
fn check_instruction(node: &Node, escape: char, out: &mut Vec<LintWarning>) {
    let line = node.start_line;
    match node.keyword.as_str() {
        "maintainer" => {
            let author = node.args.join(" ");
            out.push(LintWarning {
                rule: "MaintainerDeprecated",
                line,
                message: "Maintainer instruction is deprecated in favor of using label".into(),
                fix: format!(
                    "replace it with `LABEL org.opencontainers.image.authors={}`",
                    double_quote(&author, escape)
                ),
            });
        }
        "from" => {
            let kw = node.keyword_raw.as_str();
            let [_, as_kw, name] = node.args.as_slice() else {
                return;
            };
            if *name != name.to_lowercase() {
                out.push(LintWarning {
                    rule: "StageNameCasing",
                    line,
                    message: format!("Stage name '{name}' should be lowercase"),
                    fix: format!(
                        "write the stage name in lowercase: `{as_kw} {}`",
                        name.to_lowercase()
                    ),
                });
            }
            // A mixed-case FROM is ConsistentInstructionCasing's finding; BuildKit does not pile this one on.
            let wanted = match casing(kw) {
                Some(true) => as_kw.to_lowercase(),
                Some(false) => as_kw.to_uppercase(),
                None => return,
            };
            if *as_kw != wanted {
                out.push(LintWarning {
                    rule: "FromAsCasing",
                    line,
                    message: format!("'{as_kw}' and '{kw}' keywords' casing do not match"),
                    fix: format!("write `{wanted}` to match `{kw}`"),
                });
            }
        }
        _ => {}
    }
}

/// `Some(true)` for all-lowercase, `Some(false)` for all-uppercase, `None` for mixed case.
fn casing(word: &str) -> Option<bool> {
    if word == word.to_lowercase() {
        Some(true)
    } else if word == word.to_uppercase() {
        Some(false)
    } else {
        None
    }
}

fn check_stage_names(stages: &[Stage<'_>], out: &mut Vec<LintWarning>) {
    const RESERVED: &[(&str, &str)] = &[
        ("context", "the build context"),
        ("scratch", "the empty base image"),
    ];
    let mut seen: HashMap<String, usize> = HashMap::new();
    for stage in stages {
        let Some(name) = stage.name() else { continue };
        let line = stage.from.start_line;
        if let Some((_, meaning)) = RESERVED.iter().find(|(r, _)| *r == name) {
            out.push(LintWarning {
                rule: "ReservedStageName",
                line,
                message: format!(
                    "Stage name should not use the same name as reserved stage {}",
                    go_quote(&name)
                ),
                fix: format!("rename the stage: `{name}` already means {meaning} in FROM and --from"),
            });
        }
        if let Some(first) = seen.get(&name) {
            out.push(LintWarning {
                rule: "DuplicateStageName",
                line,
                message: format!(
                    "Duplicate stage name {}, stage names should be unique",
                    go_quote(&name)
                ),
                fix: format!(
                    "rename this stage or the one on line {first}; names are compared case-insensitively"
                ),
            });
        } else {
            seen.insert(name, line);
        }
    }
}

/// BuildKit's majority vote: every FROM and every instruction inside a stage votes for lowercase or uppercase
/// (mixed-case keywords don't vote), a tie goes to uppercase, and every keyword not written in the winning
/// case is reported, mixed-case ones included.
fn check_instruction_casing(stages: &[Stage<'_>], out: &mut Vec<LintWarning>) {
    let keywords = || {
        stages
            .iter()
            .flat_map(|s| std::iter::once(s.from).chain(s.commands))
    };
    let (mut lower, mut upper) = (0usize, 0usize);
    for node in keywords() {
        match casing(&node.keyword_raw) {
            Some(true) => lower += 1,
            Some(false) => upper += 1,
            None => {}
        }
    }
    let majority_lower = lower > upper;
    for node in keywords() {
        let raw = &node.keyword_raw;
        let (wanted, majority) = if majority_lower {
            (raw.to_lowercase(), "lowercase")
        } else {
            (raw.to_uppercase(), "uppercase")
        };
        if *raw != wanted {
            out.push(LintWarning {
                rule: "ConsistentInstructionCasing",
                line: node.start_line,
                message: format!(
                    "Command '{raw}' should match the case of the command majority ({majority})"
                ),
                fix: format!("write `{wanted}` like the rest of the file"),
            });
        }
    }
}

/// Stage state that BuildKit's dispatcher consults and that a stage built `FROM` an earlier stage inherits
/// from that stage's final state.
#[derive(Debug, Clone, Copy, Default)]
struct StageState {
    /// A SHELL with a non-empty array was set, which silences JSONArgsRecommended.
    shell_set: bool,
    /// Any WORKDIR ran; only the first relative one before that is worth a warning.
    workdir_set: bool,
}

/// The instructions an image keeps only the last of.
const USED_ONCE: [&str; 3] = ["cmd", "entrypoint", "healthcheck"];

/// Rules BuildKit runs while dispatching each stage. ONBUILD triggers are not dispatched in the stage that
/// declares them, so their nested instructions are not checked here.
fn check_dispatch(stages: &[Stage<'_>], escape: char, out: &mut Vec<LintWarning>) {
    let mut finished: HashMap<String, StageState> = HashMap::new();
    for stage in stages {
        // BuildKit matches the base against the lower-cased names of earlier stages without lower-casing the
        // base itself. A base with unexpanded variables is treated as an image.
        let mut state = stage
            .from
            .args
            .first()
            .and_then(|base| finished.get(base.as_str()))
            .copied()
            .unwrap_or_default();
        let mut last_used: [Option<&Node>; 3] = [None; 3];
        for node in stage.commands {
            let line = node.start_line;
            let kw = node.keyword_raw.as_str();
            if let Some(slot) = USED_ONCE.iter().position(|k| *k == node.keyword) {
                // BuildKit reports the earlier instruction, since that is the one that gets ignored.
                if let Some(prev) = last_used[slot].replace(node) {
                    out.push(LintWarning {
                        rule: "MultipleInstructionsDisallowed",
                        line: prev.start_line,
                        message: format!(
                            "Multiple {kw} instructions should not be used in the same stage because only the \
                             last one will be used"
                        ),
                        fix: format!("remove this {}: the one on line {line} replaces it", prev.keyword_raw),
                    });
                }
            }
            match node.keyword.as_str() {
                "cmd" | "entrypoint" if !node.json && !state.shell_set => {
                    out.push(LintWarning {
                        rule: "JSONArgsRecommended",
                        line,
                        message: format!(
                            "JSON arguments recommended for {kw} to prevent unintended behavior related to OS \
                             signals"
                        ),
                        fix: exec_form_fix(node),
                    });
                }
                "shell" => state.shell_set = !node.args.is_empty(),
                "workdir" => {
                    if let Some(path) = relative_workdir(node).filter(|_| !state.workdir_set) {
                        out.push(LintWarning {
                            rule: "WorkdirRelativePath",
                            line,
                            message: format!(
                                "Relative workdir {} can have unexpected results if the base image changes",
                                go_quote(&path)
                            ),
                            fix: format!(
                                "use an absolute path (e.g. `{kw} /{}`), or set an absolute WORKDIR earlier \
                                 in the stage",
                                path.trim_start_matches("./")
                                    .trim_start_matches('.')
                                    .trim_start_matches('/')
                            ),
                        });
                    }
                    state.workdir_set = true;
                }
                "arg" => {
                    for word in &node.args {
                        let key = word.split_once('=').map_or(word.as_str(), |(k, _)| k);
                        check_secret("ARG", key, line, out);
                    }
                }
                "env" | "label" => {
                    for pair in node.args.chunks(3) {
                        let [key, value, sep] = pair else { continue };
                        if sep.is_empty() {
                            out.push(LintWarning {
                                rule: "LegacyKeyValueFormat",
                                line,
                                message: format!(
                                    "\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"
                                ),
                                fix: legacy_fix(kw, key, value, escape),
                            });
                        }
                        if node.keyword == "env" {
                            check_secret("ENV", key, line, out);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(name) = stage.name() {
            finished.insert(name, state);
        }
    }
}

/// BuildKit's secret-name heuristic: some `_`-separated part of the key is one of these words (any case),
/// and no part is one of the words that mark a reference to a secret rather than the secret itself.
const SECRET_WORDS: &[&str] = &[
    "apikey",
    "auth",
    "credential",
    "credentials",
    "key",
    "password",
    "pword",
    "passwd",
    "secret",
    "token",
];
const NOT_SECRET_WORDS: &[&str] = &["public", "file", "version"];

fn check_secret(instruction: &str, key: &str, line: usize, out: &mut Vec<LintWarning>) {
    let has_part = |words: &[&str]| {
        key.split('_')
            .any(|part| words.iter().any(|w| part.eq_ignore_ascii_case(w)))
    };
    if has_part(SECRET_WORDS) && !has_part(NOT_SECRET_WORDS) {
        out.push(LintWarning {
            rule: "SecretsUsedInArgOrEnv",
            line,
            message: format!(
                "Do not use ARG or ENV instructions for sensitive data ({instruction} {})",
                go_quote(key)
            ),
            fix: "pass the value as a build secret (`RUN --mount=type=secret,id=...`) instead; ARG and ENV \
                  values are kept in the image"
                .into(),
        });
    }
}

/// The WORKDIR path when it is relative, or `None` when it is absolute or starts with a variable, whose
/// expansion (and so whether it is absolute) only the converter knows.
fn relative_workdir(node: &Node) -> Option<String> {
    let raw = node.args.join(" ");
    let path = unquote(raw.trim());
    (!path.starts_with('/') && !path.starts_with('$')).then(|| path.to_string())
}

/// `"x"` or `'x'` as `x`; anything else unchanged.
fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// Plain words a shell would pass through unchanged, so the exec form can be spelled out for the user.
fn is_plain_word(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
}

fn exec_form_fix(node: &Node) -> String {
    let kw = &node.keyword_raw;
    let shell_line = node.args.join(" ");
    let words: Vec<&str> = shell_line.split_whitespace().collect();
    if node.heredocs.is_empty() && !words.is_empty() && words.iter().all(|w| is_plain_word(w)) {
        let items: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
        format!("use the exec form: `{kw} [{}]`", items.join(", "))
    } else {
        format!(
            "use the exec form (`{kw} [\"executable\", \"arg\"]`), or if it needs a shell, name one with \
             `SHELL [\"/bin/sh\", \"-c\"]` before it"
        )
    }
}

fn legacy_fix(kw: &str, key: &str, value: &str, escape: char) -> String {
    let value = value.trim();
    let already_quoted = value.len() >= 2 && value.starts_with('"') && value.ends_with('"');
    if !value.contains(char::is_whitespace) || already_quoted {
        format!("write `{kw} {key}={value}`")
    } else if !value.contains(['"', escape, '$']) {
        format!("write `{kw} {key}=\"{value}\"`")
    } else {
        format!("write `{kw} {key}=<value>`, quoting the value since it contains spaces")
    }
}

/// `s` in double quotes for a Dockerfile word, escaping what the shell lexer would otherwise interpret.
fn double_quote(s: &str, escape: char) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '$' || c == escape {
            out.push(escape);
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Go's `%q`, which BuildKit's messages use for names and paths.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `JSONArgsRecommended` → `json-args-recommended`: a dash before each capital that starts a new word,
/// where an acronym's last capital starts the next word when a lowercase letter follows it.
fn kebab_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if !prev.is_ascii_uppercase() || next_lower {
                out.push('-');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
