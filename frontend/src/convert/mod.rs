//! Dockerfile → LLB: scopes ARG and ENV the way BuildKit does, expands the words of the instructions that
//! expand variables, and turns the stages the target needs — and only those — into LLB vertices, while
//! building the image config docker would write.
//!
//! The work is split as BuildKit's `dockerfile2llb` splits it. This file has the public API and the core:
//! which stages the target needs, converting each one (platform, base, ONBUILD triggers, instructions) and
//! routing each instruction to the function that converts it. The instructions live beside each other:
//!
//! - `scope.rs`: ARG, build args and the automatic platform args, and the expansion of words;
//! - `config.rs`: the instructions that only change the image config (ENV, LABEL, USER, CMD, ...) and
//!   WORKDIR;
//! - `run.rs`: RUN, with `mount.rs` for the syntax of `--mount=`;
//! - `copy.rs`: COPY and ADD;
//! - `inputs.rs`: the filesystems those read: the build context, named contexts, images, other stages;
//! - `heredoc.rs`: heredocs, for RUN and COPY;
//! - `paths.rs`, `words.rs`, `go_format.rs`: helpers without state, for paths, the words of instructions
//!   and Go's formatting in history text.

use crate::ast::Dockerfile;
use crate::instructions::{self, Command, Instruction, Location, Stage};
use crate::lint::LintWarning;
use crate::shell::ShellLex;
use crate::{Diagnostic, parser};
use kiln_llb::image::{History, ImageInfo};
use kiln_llb::{Definition, Entitlement, Input, Meta, Op, Platform, Source, Vertex};
use std::collections::{BTreeMap, BTreeSet};

mod config;
mod copy;
mod go_format;
mod heredoc;
mod inputs;
mod mount;
mod paths;
mod run;
mod scope;
mod words;

pub use paths::clean_path;
use scope::{PROXY_ARGS, Scope};

/// The PATH docker gives a RUN when the image defines none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The LLB source name of the build context.
pub const CONTEXT_NAME: &str = "context";

/// A `--build-context NAME=VALUE` replacement for an image or stage named NAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory, given to the solver under the LLB source name `context:NAME`.
    Local,
    /// `docker-image://REF`.
    Image(String),
    /// `oci-layout://PATH[:TAG|@DIGEST]`.
    OciLayout { path: String, reference: String },
}

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// `--target`; the last stage when unset.
    pub target: Option<String>,
    /// `--build-arg`s in the order given; a later one wins.
    pub build_args: Vec<(String, String)>,
    pub target_platform: Platform,
    pub build_platform: Platform,
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// `.dockerignore` patterns, applied to the context source.
    pub ignore_patterns: Vec<String>,
    pub no_cache: bool,
    /// `--no-cache-filter`: stages whose steps must run even when cached.
    pub no_cache_filter: Vec<String>,
    /// `--allow`: what RUN steps may ask for beyond the sandbox.
    pub allow: BTreeSet<Entitlement>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        let host = Platform::host();
        ConvertOptions {
            target: None,
            build_args: Vec::new(),
            target_platform: host.clone(),
            build_platform: host,
            named_contexts: BTreeMap::new(),
            ignore_patterns: Vec::new(),
            no_cache: false,
            no_cache_filter: Vec::new(),
            allow: BTreeSet::new(),
        }
    }
}

pub use kiln_llb::image::ImageResolver;

/// The result of a conversion.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The target's graph; `definition.root` is its filesystem (`None` for an empty `FROM scratch` stage).
    pub definition: Definition,
    /// The target stage's image config and history.
    pub image: ImageInfo,
    pub platform: Platform,
    /// Findings of the scoping lint rules (UndefinedVar, UndefinedArgInFrom).
    pub lints: Vec<LintWarning>,
    /// Build args given but never declared by a stage that was built.
    pub unused_build_args: Vec<String>,
}

/// Converts a parsed Dockerfile for one target platform.
pub fn convert(
    df: &Dockerfile,
    opts: &ConvertOptions,
    resolver: Option<&dyn ImageResolver>,
) -> Result<Converted, Diagnostic> {
    let stages = instructions::parse_stages(&df.nodes)?;
    let mut conv = Converter {
        opts,
        resolver,
        lex: ShellLex::new(df.escape),
        definition: Definition::default(),
        stages: &stages.stages,
        results: vec![None; stages.stages.len()],
        in_progress: Vec::new(),
        meta_args: Vec::new(),
        declared_meta: Vec::new(),
        lints: Vec::new(),
        used_build_args: Vec::new(),
    };
    conv.init_meta_args(&stages.global_args)?;
    let target = conv.target_index()?;
    conv.solve_stage(target, None)?;
    let Some(result) = conv.results[target].take() else {
        return Err(Diagnostic::new(1, 1, "", "the target stage produced no result"));
    };
    conv.definition.root = result.state;
    conv.definition.prune();
    let unused_build_args = opts
        .build_args
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| !conv.used_build_args.contains(k) && !PROXY_ARGS.contains(&k.as_str()))
        .fold(Vec::new(), |mut acc, k| {
            if !acc.contains(&k) {
                acc.push(k);
            }
            acc
        });
    let mut lints = conv.lints;
    lints.sort_by_key(|l| l.line);
    lints.dedup();
    Ok(Converted {
        definition: conv.definition,
        image: result.image,
        platform: result.platform,
        lints,
        unused_build_args,
    })
}

/// What a finished stage leaves for the stages that use it.
#[derive(Debug, Clone)]
struct StageResult {
    state: Option<Input>,
    image: ImageInfo,
    platform: Platform,
    /// The ARGs a stage built FROM this one inherits (their values live on in `Scope::env`); empty for images.
    scope: Option<Scope>,
}

impl StageResult {
    fn image(state: Option<Input>, image: ImageInfo, platform: &Platform) -> StageResult {
        StageResult {
            state,
            image,
            platform: platform.clone(),
            scope: None,
        }
    }
}

struct Converter<'a> {
    opts: &'a ConvertOptions,
    resolver: Option<&'a dyn ImageResolver>,
    lex: ShellLex,
    definition: Definition,
    stages: &'a [Stage],
    results: Vec<Option<StageResult>>,
    /// Stages being converted, outermost first, each waiting on the next through FROM, COPY --from or
    /// RUN --mount from=: a stage met again here closes a cycle, and the stages after it are the cycle's path.
    in_progress: Vec<usize>,
    /// Global ARGs with values plus the automatic platform args: the scope of FROM lines.
    meta_args: Vec<(String, String)>,
    /// Every global ARG name, with or without a value.
    declared_meta: Vec<String>,
    lints: Vec<LintWarning>,
    used_build_args: Vec<String>,
}

/// Per-stage state while its instructions are dispatched.
struct StageState {
    index: usize,
    name: String,
    state: Option<Input>,
    image: ImageInfo,
    platform: Platform,
    scope: Scope,
    /// Whether this stage set CMD, which an ENTRYPOINT then leaves alone.
    cmd_set: bool,
    /// The `i/N` of progress lines, `[name i/N]`.
    step: usize,
    steps: usize,
}

impl StageState {
    fn vars(&self) -> Vec<(String, String)> {
        self.scope.env.clone()
    }

    fn workdir(&self) -> String {
        if self.image.config.working_dir.is_empty() {
            "/".into()
        } else {
            self.image.config.working_dir.clone()
        }
    }

    fn shell(&self) -> Vec<String> {
        self.image
            .config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    fn next_description(&mut self, text: &str) -> String {
        self.step += 1;
        format!("[{} {}/{}] {}", self.name, self.step, self.steps, text)
    }

    fn history(&mut self, created_by: String, empty_layer: bool) {
        self.image.history.push(History {
            created_by,
            comment: "buildkit.dockerfile.v0".into(),
            empty_layer,
        });
    }

    /// Starts the stage from what its FROM line names: that filesystem and config (with docker's PATH when
    /// the config has none) and, from a stage, its variables.
    fn inherit(&mut self, base: StageResult) {
        self.state = base.state;
        self.image = base.image;
        if self.image.config.get_env("PATH").is_none() {
            self.image.config.set_env("PATH", DEFAULT_PATH);
        }
        // A stage built FROM another keeps its ARGs, values included; the image's ENV is applied over them
        // again, as BuildKit re-applies the config's Env to the state it inherits.
        self.scope = base.scope.unwrap_or_default();
        for (key, value) in self.image.config.env_pairs() {
            self.scope.set(&key, &value);
        }
    }
}

impl<'a> Converter<'a> {
    fn target_index(&self) -> Result<usize, Diagnostic> {
        match &self.opts.target {
            None => Ok(self.stages.len() - 1),
            Some(target) => self.stage_by_name(target, self.stages.len()).ok_or_else(|| {
                let names: Vec<&str> = self.stages.iter().filter_map(|s| s.name.as_deref()).collect();
                Diagnostic::new(0, 0, "", format!("target stage {target:?} could not be found")).hint(
                    if names.is_empty() {
                        "the Dockerfile names no stages; add `AS name` to a FROM line".to_string()
                    } else {
                        format!("the stages are: {}", names.join(", "))
                    },
                )
            }),
        }
    }

    /// A stage by `AS` name (case-insensitive) among the first `before` stages.
    fn stage_by_name(&self, name: &str, before: usize) -> Option<usize> {
        let lower = name.to_lowercase();
        self.stages[..before.min(self.stages.len())]
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    /// A `--from`/`from=` reference: a stage name or index (any stage; cycles are caught), else `None`.
    fn stage_ref(&self, reference: &str) -> Option<usize> {
        if let Ok(index) = reference.parse::<usize>() {
            return (index < self.stages.len()).then_some(index);
        }
        self.stage_by_name(reference, self.stages.len())
    }

    /// Adds a vertex of stage `st`, marked to run again when --no-cache or --no-cache-filter names the stage.
    fn add(
        &mut self,
        op: Op,
        inputs: Vec<Input>,
        platform: &Platform,
        st: &StageState,
        description: String,
    ) -> Input {
        let stage_name = self.stages[st.index].name.clone();
        let ignore_cache = self.opts.no_cache
            || stage_name.as_deref().is_some_and(|n| {
                self.opts
                    .no_cache_filter
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(n))
            });
        let meta = Meta {
            description,
            stage: Some(st.name.clone()),
            lines: None,
            ignore_cache,
        };
        self.definition
            .add(Vertex::new(op, inputs, Some(platform.clone()), meta))
    }

    /// Adds a vertex on the stage's platform with the instruction's lines, which an identical vertex made
    /// by an earlier instruction keeps as its own.
    fn add_located(
        &mut self,
        op: Op,
        inputs: Vec<Input>,
        st: &StageState,
        description: String,
        location: &Location,
    ) -> Input {
        let platform = st.platform.clone();
        let input = self.add(op, inputs, &platform, st, description);
        if let Some(v) = self
            .definition
            .vertices
            .iter_mut()
            .find(|v| v.digest == input.vertex)
        {
            v.meta
                .lines
                .get_or_insert((location.start_line, location.end_line));
        }
        input
    }

    /// Converts stage `index` (and first whatever it depends on) unless already done.
    fn solve_stage(&mut self, index: usize, used_from: Option<&Location>) -> Result<(), Diagnostic> {
        if self.results[index].is_some() {
            return Ok(());
        }
        let stage = &self.stages[index];
        if let Some(start) = self.in_progress.iter().position(|&i| i == index) {
            let at = used_from.unwrap_or(&stage.location);
            return Err(at
                .error(format!(
                    "circular dependency detected on stage: {} ({})",
                    stage_label(stage, index),
                    self.cycle_path(&self.in_progress[start..])
                ))
                .hint("a stage cannot use itself, directly or through other stages"));
        }
        self.in_progress.push(index);
        let result = self.convert_stage(index)?;
        self.in_progress.pop();
        self.results[index] = Some(result);
        Ok(())
    }

    /// `stage "a" → stage "b" → stage "a"`: the stages of a cycle, in the order each uses the next, back to
    /// the first. Unnamed stages are shown as in progress lines, `stage-N`.
    fn cycle_path(&self, cycle: &[usize]) -> String {
        let mut path: Vec<String> = cycle
            .iter()
            .map(|&index| match &self.stages[index].name {
                Some(name) => format!("stage {name:?}"),
                None => format!("stage-{index}"),
            })
            .collect();
        path.extend(path.first().cloned());
        path.join(" → ")
    }

    /// A finished stage's result, converting it first if needed.
    fn stage_result(&mut self, index: usize, location: &Location) -> Result<StageResult, Diagnostic> {
        self.solve_stage(index, Some(location))?;
        self.results[index]
            .clone()
            .ok_or_else(|| location.error("stage produced no result"))
    }

    fn convert_stage(&mut self, index: usize) -> Result<StageResult, Diagnostic> {
        let stage = &self.stages[index];
        let location = stage.location.clone();
        let platform = self.stage_platform(stage, &location)?;
        let base = self.expand_from_line(&stage.base.clone(), &location)?;
        if base.is_empty() {
            return Err(location
                .error_at(
                    &stage.base,
                    format!("base name ({}) should not be blank", stage.base),
                )
                .hint("set the ARG it uses, e.g. with --build-arg"));
        }
        let mut st = StageState {
            index,
            name: stage_label(stage, index),
            state: None,
            image: ImageInfo::default(),
            platform: platform.clone(),
            scope: Scope::default(),
            cmd_set: false,
            step: 0,
            steps: count_steps(stage),
        };
        let from_description = st.next_description(&format!("FROM {base}"));
        let inherited = self.resolve_base(index, &base, &platform, from_description)?;
        st.inherit(inherited);
        let triggers = std::mem::take(&mut st.image.config.on_build);
        for trigger in triggers {
            let instruction = parse_trigger(&trigger, &location)?;
            self.dispatch(&mut st, &instruction)?;
        }
        for instruction in &stage.instructions {
            self.dispatch(&mut st, instruction)?;
        }
        Ok(StageResult {
            state: st.state,
            image: st.image,
            platform,
            scope: Some(st.scope),
        })
    }

    /// `FROM --platform=`, expanded with the FROM-line scope; the target platform without it.
    fn stage_platform(&mut self, stage: &Stage, location: &Location) -> Result<Platform, Diagnostic> {
        match &stage.platform {
            Some(raw) => {
                let expanded = self.expand_from_line(raw, location)?;
                Platform::parse(&expanded).map_err(|e| location.error_at(raw, e.to_string()))
            }
            None => Ok(self.opts.target_platform.clone()),
        }
    }

    /// What the FROM line of stage `index` names, looked up in this order: a named context, an earlier
    /// stage, `scratch`, an image.
    fn resolve_base(
        &mut self,
        index: usize,
        base: &str,
        platform: &Platform,
        from_description: String,
    ) -> Result<StageResult, Diagnostic> {
        let stage = &self.stages[index];
        let location = &stage.location;
        if let Some(result) = self
            .named_context(base, platform, true)
            .map_err(|e| location.error_at(&stage.base, e))?
        {
            return Ok(result);
        }
        if let Some(parent) = self.stage_by_name(base, index) {
            return self.stage_result(parent, location);
        }
        if base.eq_ignore_ascii_case("scratch") {
            return Ok(StageResult::image(None, ImageInfo::default(), platform));
        }
        let image = self
            .resolve_image(base, platform)
            .map_err(|e| location.error_at(&stage.base, format!("failed to resolve {base}: {e}")))?;
        let state = self.source(
            Source::Image {
                reference: base.to_string(),
            },
            Some(platform),
            from_description,
        );
        Ok(StageResult::image(Some(state), image, platform))
    }

    /// Routes one instruction to the function that converts it.
    fn dispatch(&mut self, st: &mut StageState, ins: &Instruction) -> Result<(), Diagnostic> {
        let loc = &ins.location;
        match &ins.command {
            Command::Arg(decls) => self.dispatch_arg(st, decls, loc)?,
            Command::Env(pairs) => self.dispatch_env(st, pairs, loc)?,
            Command::Label(pairs) => self.dispatch_label(st, pairs, loc)?,
            Command::Maintainer(name) => self.dispatch_maintainer(st, name),
            Command::Workdir(raw) => self.dispatch_workdir(st, raw, loc)?,
            Command::User(raw) => self.dispatch_user(st, raw, loc)?,
            Command::Expose(ports) => self.dispatch_expose(st, ports, loc)?,
            Command::Volume(volumes) => self.dispatch_volume(st, volumes, loc)?,
            Command::StopSignal(raw) => self.dispatch_stop_signal(st, raw, loc)?,
            Command::Shell(shell) => self.dispatch_shell(st, shell),
            Command::Onbuild(trigger) => self.dispatch_onbuild(st, trigger),
            Command::Cmd(line) => self.dispatch_cmd(st, line),
            Command::Entrypoint(line) => self.dispatch_entrypoint(st, line),
            Command::Healthcheck(check) => self.dispatch_healthcheck(st, check, loc)?,
            Command::Run(run) => self.dispatch_run(st, run, loc)?,
            Command::Copy(copy) => self.dispatch_copy(st, copy, loc)?,
            Command::Add(add) => self.dispatch_add(st, add, loc)?,
        }
        Ok(())
    }
}

fn stage_label(stage: &Stage, index: usize) -> String {
    stage.name.clone().unwrap_or_else(|| format!("stage-{index}"))
}

/// The N in progress lines' `[stage i/N]`: FROM, then each instruction that adds a vertex.
fn count_steps(stage: &Stage) -> usize {
    1 + stage
        .instructions
        .iter()
        .filter(|i| {
            matches!(
                i.command,
                Command::Run(_) | Command::Copy(_) | Command::Add(_) | Command::Workdir(_)
            )
        })
        .count()
}

fn parse_trigger(trigger: &str, loc: &Location) -> Result<Instruction, Diagnostic> {
    let df = parser::parse(trigger)
        .map_err(|e| loc.error(format!("invalid ONBUILD trigger {trigger:?}: {}", e.message)))?;
    let node = df
        .nodes
        .first()
        .ok_or_else(|| loc.error(format!("empty ONBUILD trigger {trigger:?}")))?;
    instructions::parse_instruction(node)
        .map_err(|e| loc.error(format!("invalid ONBUILD trigger {trigger:?}: {}", e.message)))
}
