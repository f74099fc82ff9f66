//! Typed instructions: checks each AST node's flags and argument shape and turns it into a [`Command`].
//! Words stay unexpanded here — which instructions expand variables, and with which scope, is the
//! converter's business — but everything that can be rejected without knowing variables is rejected here,
//! with the instruction's location.

use crate::Diagnostic;
use crate::ast::{Heredoc, Node};

/// Where an instruction came from, for messages, history and lint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub start_line: usize,
    pub end_line: usize,
    pub col: usize,
    pub original: String,
}

impl Location {
    fn of(node: &Node) -> Self {
        Location {
            start_line: node.start_line,
            end_line: node.end_line,
            col: node.col,
            original: node.original.clone(),
        }
    }

    /// An error pointing at the start of the instruction.
    pub fn error(&self, message: impl Into<String>) -> Diagnostic {
        let first_line = self.original.lines().next().unwrap_or_default();
        Diagnostic::new(self.start_line, self.col.max(1), first_line, message)
            .width(first_line.split_whitespace().next().map_or(1, str::len))
    }

    /// An error pointing at `needle` in the instruction's first line when it can be found there.
    pub fn error_at(&self, needle: &str, message: impl Into<String>) -> Diagnostic {
        let first_line = self.original.lines().next().unwrap_or_default();
        match first_line.find(needle) {
            Some(byte) if !needle.is_empty() => {
                let col = first_line[..byte].chars().count() + self.col.max(1);
                Diagnostic::new(self.start_line, col, first_line, message).width(needle.chars().count())
            }
            _ => self.error(message),
        }
    }
}

/// The command line of RUN, CMD, ENTRYPOINT and HEALTHCHECK CMD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// Run through the stage's SHELL.
    Shell(String),
    /// Exec form, run as is.
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    /// Unexpanded, quotes kept.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    /// Unexpanded default, if the declaration has one.
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyArgs {
    /// Unexpanded source words (paths, patterns, URLs).
    pub sources: Vec<String>,
    pub dest: String,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
    /// ADD only.
    pub checksum: Option<String>,
    /// ADD only.
    pub keep_git_dir: bool,
    /// ADD only: `--unpack=false` keeps archives as files.
    pub unpack: Option<bool>,
    /// Inline sources (`COPY <<EOF /dest`).
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub command: CommandLine,
    /// Raw `--mount` specs, in order.
    pub mounts: Vec<String>,
    pub network: Option<String>,
    pub security: Option<String>,
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    Cmd {
        command: CommandLine,
        interval: Option<String>,
        timeout: Option<String>,
        start_period: Option<String>,
        start_interval: Option<String>,
        retries: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Add(CopyArgs),
    Arg(Vec<ArgDecl>),
    Cmd(CommandLine),
    Copy(CopyArgs),
    Entrypoint(CommandLine),
    Env(Vec<KeyValue>),
    Expose(Vec<String>),
    Healthcheck(Healthcheck),
    Label(Vec<KeyValue>),
    Maintainer(String),
    /// The trigger instruction's source text, stored in the image config and run by images built FROM it.
    Onbuild(String),
    Run(RunArgs),
    Shell(Vec<String>),
    StopSignal(String),
    User(String),
    Volume(Vec<String>),
    Workdir(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub command: Command,
    pub location: Location,
    /// The keyword as written, for history lines and messages.
    pub keyword: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lower-cased as BuildKit does.
    pub name: Option<String>,
    /// The FROM argument, unexpanded.
    pub base: String,
    /// `--platform`, unexpanded.
    pub platform: Option<String>,
    pub location: Location,
    pub instructions: Vec<Instruction>,
}

/// A Dockerfile split into its global ARGs (before the first FROM) and its stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stages {
    pub global_args: Vec<(ArgDecl, Location)>,
    pub stages: Vec<Stage>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    Value,
    /// May be given more than once.
    List,
}

struct FlagSpec {
    name: &'static str,
    kind: FlagKind,
}

const fn flag(name: &'static str, kind: FlagKind) -> FlagSpec {
    FlagSpec { name, kind }
}

/// The flags given to one instruction, checked against what it accepts.
struct Flags<'a> {
    given: Vec<(&'static str, Option<&'a str>)>,
}

impl<'a> Flags<'a> {
    fn parse(node: &'a Node, location: &Location, accepted: &[FlagSpec]) -> Result<Self, Diagnostic> {
        let mut given: Vec<(&'static str, Option<&'a str>)> = Vec::new();
        for raw in &node.flags {
            let body = raw.strip_prefix("--").unwrap_or(raw);
            let (name, value) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (body, None),
            };
            let Some(spec) = accepted.iter().find(|spec| spec.name == name) else {
                let keyword = node.keyword.to_uppercase();
                let message = if accepted.is_empty() {
                    format!("{keyword} does not take flags, but `{raw}` was given")
                } else {
                    format!("unknown flag `--{name}` for {keyword}")
                };
                let names: Vec<String> = accepted.iter().map(|s| format!("--{}", s.name)).collect();
                let hint = if accepted.is_empty() {
                    "remove the flag".to_string()
                } else {
                    format!("{keyword} accepts {}", names.join(", "))
                };
                return Err(location.error_at(raw, message).hint(hint));
            };
            if spec.kind != FlagKind::List && given.iter().any(|(n, _)| *n == spec.name) {
                return Err(location.error_at(raw, format!("duplicate flag specified: --{name}")));
            }
            match (spec.kind, value) {
                (FlagKind::Bool, Some(v)) if !matches!(v, "true" | "false") => {
                    return Err(location
                        .error_at(
                            raw,
                            format!("expecting boolean value for flag --{name}, not: {v}"),
                        )
                        .hint(format!("use --{name} or --{name}=true|false")));
                }
                (FlagKind::Value | FlagKind::List, None) => {
                    return Err(location
                        .error_at(raw, format!("missing a value on flag: --{name}"))
                        .hint(format!("write --{name}=VALUE")));
                }
                _ => {}
            }
            given.push((spec.name, value));
        }
        Ok(Flags { given })
    }

    fn value(&self, name: &str) -> Option<String> {
        self.given
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.map(str::to_string))
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.given
            .iter()
            .filter(|(n, _)| *n == name)
            .filter_map(|(_, v)| v.map(str::to_string))
            .collect()
    }

    fn bool(&self, name: &str) -> bool {
        self.given
            .iter()
            .any(|(n, v)| *n == name && v.is_none_or(|v| v == "true"))
    }

    fn opt_bool(&self, name: &str) -> Option<bool> {
        self.given
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.is_none_or(|v| v == "true"))
    }
}

use FlagKind::{Bool, List, Value};

const COPY_FLAGS: &[FlagSpec] = &[
    flag("from", Value),
    flag("chown", Value),
    flag("chmod", Value),
    flag("link", Bool),
    flag("parents", Bool),
    flag("exclude", List),
];
const ADD_FLAGS: &[FlagSpec] = &[
    flag("chown", Value),
    flag("chmod", Value),
    flag("link", Bool),
    flag("checksum", Value),
    flag("keep-git-dir", Bool),
    flag("exclude", List),
    flag("unpack", Bool),
];
const RUN_FLAGS: &[FlagSpec] = &[
    flag("mount", List),
    flag("network", Value),
    flag("security", Value),
];
const HEALTHCHECK_FLAGS: &[FlagSpec] = &[
    flag("interval", Value),
    flag("timeout", Value),
    flag("start-period", Value),
    flag("start-interval", Value),
    flag("retries", Value),
];
const FROM_FLAGS: &[FlagSpec] = &[flag("platform", Value)];

/// Splits a parsed Dockerfile into global ARGs and typed stages.
pub fn parse_stages(nodes: &[Node]) -> Result<Stages, Diagnostic> {
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in nodes {
        let location = Location::of(node);
        if node.keyword == "from" {
            let flags = Flags::parse(node, &location, FROM_FLAGS)?;
            let (base, name) = match node.args.as_slice() {
                [base] => (base.clone(), None),
                [base, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
                    check_stage_name(name, &location)?;
                    (base.clone(), Some(name.to_lowercase()))
                }
                _ => {
                    return Err(location
                        .error("FROM requires either one or three arguments")
                        .hint("write `FROM image` or `FROM image AS name`"));
                }
            };
            stages.push(Stage {
                name,
                base,
                platform: flags.value("platform"),
                location,
                instructions: Vec::new(),
            });
            continue;
        }
        let instruction = parse_instruction(node)?;
        match stages.last_mut() {
            Some(stage) => stage.instructions.push(instruction),
            None => match instruction.command {
                Command::Arg(decls) => {
                    global_args.extend(decls.into_iter().map(|d| (d, instruction.location.clone())))
                }
                _ => {
                    return Err(instruction
                        .location
                        .error(format!(
                            "{} must come after a FROM instruction",
                            node.keyword.to_uppercase()
                        ))
                        .hint("only ARG may come before the first FROM; start the stage with `FROM image`"));
                }
            },
        }
    }
    if stages.is_empty() {
        let line = nodes.last().map_or(1, |n| n.end_line);
        return Err(
            Diagnostic::new(line, 1, "", "the Dockerfile has no FROM instruction")
                .hint("every build needs at least one stage: add `FROM image` (or `FROM scratch`)"),
        );
    }
    Ok(Stages { global_args, stages })
}

fn check_stage_name(name: &str, location: &Location) -> Result<(), Diagnostic> {
    // BuildKit: a letter first, then letters, digits, '-', '_' and '.'.
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(location
            .error_at(name, format!("invalid name for build stage: {name:?}"))
            .hint("stage names start with a letter and contain only letters, digits, '-', '_' and '.'"))
    }
}

/// Parses one non-FROM instruction (also used for ONBUILD triggers).
pub fn parse_instruction(node: &Node) -> Result<Instruction, Diagnostic> {
    let location = Location::of(node);
    let no_flags = |node: &Node| Flags::parse(node, &location, &[]).map(|_| ());
    let command = match node.keyword.as_str() {
        "run" => {
            let flags = Flags::parse(node, &location, RUN_FLAGS)?;
            Command::Run(RunArgs {
                command: command_line(node, &location, "RUN")?,
                mounts: flags.list("mount"),
                network: flags.value("network"),
                security: flags.value("security"),
                heredocs: node.heredocs.clone(),
            })
        }
        "cmd" => {
            no_flags(node)?;
            Command::Cmd(command_line(node, &location, "CMD")?)
        }
        "entrypoint" => {
            no_flags(node)?;
            Command::Entrypoint(command_line(node, &location, "ENTRYPOINT")?)
        }
        "copy" | "add" => {
            let is_add = node.keyword == "add";
            let flags = Flags::parse(node, &location, if is_add { ADD_FLAGS } else { COPY_FLAGS })?;
            let keyword = node.keyword.to_uppercase();
            let min_args = if node.heredocs.is_empty() { 2 } else { 1 };
            if node.args.len() < min_args {
                return Err(location
                    .error(format!(
                        "{keyword} requires at least two arguments, but only one was provided"
                    ))
                    .hint(format!("write `{keyword} SOURCE... DEST`")));
            }
            let (dest, sources) = node
                .args
                .split_last()
                .map(|(d, s)| (d.clone(), s.to_vec()))
                .unwrap_or_default();
            let args = CopyArgs {
                sources,
                dest,
                from: flags.value("from"),
                chown: flags.value("chown"),
                chmod: flags.value("chmod"),
                link: flags.bool("link"),
                parents: flags.bool("parents"),
                exclude: flags.list("exclude"),
                checksum: flags.value("checksum"),
                keep_git_dir: flags.bool("keep-git-dir"),
                unpack: flags.opt_bool("unpack"),
                heredocs: node.heredocs.clone(),
            };
            if is_add {
                Command::Add(args)
            } else {
                Command::Copy(args)
            }
        }
        "env" | "label" => {
            no_flags(node)?;
            let keyword = node.keyword.to_uppercase();
            if node.args.is_empty() {
                return Err(location.error(format!("{keyword} requires at least one argument")));
            }
            let pairs = node
                .args
                .chunks(3)
                .map(|triple| match triple {
                    [key, value, _sep] => Ok(KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                    }),
                    _ => Err(location.error(format!("{keyword} names can not be blank"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if pairs.iter().any(|kv| kv.key.is_empty()) {
                return Err(location
                    .error(format!("{keyword} names can not be blank"))
                    .hint(format!("write `{keyword} name=value`")));
            }
            if node.keyword == "env" {
                Command::Env(pairs)
            } else {
                Command::Label(pairs)
            }
        }
        "arg" => {
            no_flags(node)?;
            if node.args.is_empty() {
                return Err(location
                    .error("ARG requires at least one argument")
                    .hint("write `ARG name[=default]`"));
            }
            let decls = node
                .args
                .iter()
                .map(|word| {
                    let (name, default) = match word.split_once('=') {
                        Some((name, default)) => (name, Some(default.to_string())),
                        None => (word.as_str(), None),
                    };
                    if name.is_empty() {
                        return Err(location.error_at(word, "ARG names can not be blank"));
                    }
                    Ok(ArgDecl {
                        name: name.to_string(),
                        default,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Command::Arg(decls)
        }
        "expose" => {
            no_flags(node)?;
            Command::Expose(require_args(
                node,
                &location,
                "EXPOSE",
                "EXPOSE PORT[/PROTOCOL]...",
            )?)
        }
        "volume" => {
            no_flags(node)?;
            let volumes = require_args(node, &location, "VOLUME", "VOLUME /path")?;
            if volumes.iter().any(|v| v.trim().is_empty()) {
                return Err(location.error("VOLUME specified can not be an empty string"));
            }
            Command::Volume(volumes)
        }
        "user" => {
            no_flags(node)?;
            Command::User(single_arg(node, &location, "USER", "USER name[:group]")?)
        }
        "workdir" => {
            no_flags(node)?;
            Command::Workdir(single_arg(node, &location, "WORKDIR", "WORKDIR /path")?)
        }
        "stopsignal" => {
            no_flags(node)?;
            Command::StopSignal(single_arg(node, &location, "STOPSIGNAL", "STOPSIGNAL SIGTERM")?)
        }
        "maintainer" => {
            no_flags(node)?;
            Command::Maintainer(single_arg(
                node,
                &location,
                "MAINTAINER",
                "LABEL maintainer=NAME",
            )?)
        }
        "shell" => {
            no_flags(node)?;
            if !node.json || node.args.is_empty() {
                return Err(location
                    .error("SHELL requires the arguments to be in JSON form")
                    .hint("write `SHELL [\"executable\", \"parameters\"]`"));
            }
            Command::Shell(node.args.clone())
        }
        "onbuild" => {
            no_flags(node)?;
            let Some(trigger) = node.nested.as_deref() else {
                return Err(location.error("ONBUILD requires at least one argument"));
            };
            // Check the trigger now so a broken one fails this build, not the one that inherits it.
            parse_instruction(trigger)?;
            let text = trigger.original.trim();
            Command::Onbuild(text.to_string())
        }
        "healthcheck" => {
            let flags = Flags::parse(node, &location, HEALTHCHECK_FLAGS)?;
            Command::Healthcheck(healthcheck(node, &location, &flags)?)
        }
        "from" => return Err(location.error("FROM is not allowed here")),
        other => {
            return Err(location.error(format!("unknown instruction: {}", other.to_uppercase())));
        }
    };
    Ok(Instruction {
        command,
        location,
        keyword: node.keyword_raw.clone(),
    })
}

fn command_line(node: &Node, location: &Location, keyword: &str) -> Result<CommandLine, Diagnostic> {
    if node.json {
        return Ok(CommandLine::Exec(node.args.clone()));
    }
    match node.args.as_slice() {
        [line] => Ok(CommandLine::Shell(line.clone())),
        [] if keyword != "RUN" => Ok(CommandLine::Exec(Vec::new())),
        _ => Err(location
            .error(format!("{keyword} requires at least one argument"))
            .hint(format!(
                "write `{keyword} command` or `{keyword} [\"executable\", \"arg\"]`"
            ))),
    }
}

fn require_args(
    node: &Node,
    location: &Location,
    keyword: &str,
    usage: &str,
) -> Result<Vec<String>, Diagnostic> {
    if node.args.is_empty() {
        return Err(location
            .error(format!("{keyword} requires at least one argument"))
            .hint(format!("write `{usage}`")));
    }
    Ok(node.args.clone())
}

fn single_arg(node: &Node, location: &Location, keyword: &str, usage: &str) -> Result<String, Diagnostic> {
    match node.args.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(location
            .error(format!("{keyword} requires exactly one argument"))
            .hint(format!("write `{usage}`"))),
        _ => Err(location
            .error(format!(
                "{keyword} requires exactly one argument, got {}",
                node.args.len()
            ))
            .hint(format!("write `{usage}`; quote a value that contains spaces"))),
    }
}

fn healthcheck(node: &Node, location: &Location, flags: &Flags) -> Result<Healthcheck, Diagnostic> {
    let usage = "write `HEALTHCHECK [OPTIONS] CMD command` or `HEALTHCHECK NONE`";
    let Some(kind) = node.args.first() else {
        return Err(location.error("HEALTHCHECK requires an argument").hint(usage));
    };
    match kind.to_uppercase().as_str() {
        "NONE" => {
            if node.args.len() > 1 {
                return Err(location.error("HEALTHCHECK NONE takes no arguments").hint(usage));
            }
            if !flags.given.is_empty() {
                return Err(location.error("HEALTHCHECK NONE takes no options").hint(usage));
            }
            Ok(Healthcheck::None)
        }
        "CMD" => {
            let rest = &node.args[1..];
            let command = if node.json {
                CommandLine::Exec(rest.to_vec())
            } else {
                match rest {
                    [line] => CommandLine::Shell(line.clone()),
                    _ => return Err(location.error("HEALTHCHECK CMD requires a command").hint(usage)),
                }
            };
            if matches!(&command, CommandLine::Exec(args) if args.is_empty()) {
                return Err(location.error("HEALTHCHECK CMD requires a command").hint(usage));
            }
            for name in ["interval", "timeout", "start-period", "start-interval"] {
                if let Some(value) = flags.value(name) {
                    parse_duration(&value).map_err(|why| {
                        location.error_at(&value, format!("invalid --{name} {value:?}: {why}"))
                    })?;
                }
            }
            if let Some(retries) = flags.value("retries") {
                match retries.parse::<i64>() {
                    Ok(n) if n >= 0 => {}
                    _ => {
                        return Err(location
                            .error_at(&retries, format!("invalid --retries {retries:?}"))
                            .hint("--retries takes a whole number of at least 0"));
                    }
                }
            }
            Ok(Healthcheck::Cmd {
                command,
                interval: flags.value("interval"),
                timeout: flags.value("timeout"),
                start_period: flags.value("start-period"),
                start_interval: flags.value("start-interval"),
                retries: flags.value("retries"),
            })
        }
        other => Err(location
            .error_at(kind, format!("unknown type for HEALTHCHECK: {other}"))
            .hint(usage)),
    }
}

/// Parses a Go-style duration (`30s`, `1m30s`, `500ms`) into nanoseconds, as HEALTHCHECK flags take.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    if text == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err("expected a number, e.g. 30s or 1m30s".into());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| "bad number".to_string())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err("missing unit (one of ns, us, ms, s, m, h)".into()),
            unit => return Err(format!("unknown unit {unit:?} (one of ns, us, ms, s, m, h)")),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if total > u64::MAX as f64 {
        return Err("duration too long".into());
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30_000_000_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Ok(500_000_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}
