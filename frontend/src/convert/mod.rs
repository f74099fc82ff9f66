//! Dockerfile → LLB: scopes ARG and ENV the way BuildKit does, expands the words of the instructions that
//! expand variables, and turns the stages the target needs — and only those — into LLB vertices, while
//! building the image config docker would write.

use crate::ast::Dockerfile;
use crate::instructions::{self, Command, CopyArgs, Instruction, Location, Stage};
use crate::lint::LintWarning;
use crate::shell::ShellLex;
use crate::{Diagnostic, parser};
use kiln_llb::image::{History, ImageInfo};
use kiln_llb::{Copy, Definition, FileAction, FileOp, Input, Meta, Op, Platform, Source, Vertex};
use std::collections::BTreeMap;

mod config;
mod go_format;
mod heredoc;
mod inputs;
mod mount;
mod paths;
mod run;
mod scope;
mod words;

use heredoc::{chomp_heredoc, heredoc_for};
pub use paths::clean_path;
use paths::{contains_wildcards, join_path};
use scope::{PROXY_ARGS, Scope};
use words::{first_line, parse_owner, validate_chmod};

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
        }
    }
}

/// Supplies base images' configs (ENV, WORKDIR, USER, ONBUILD...) where the caller can resolve them; the
/// converter works without one, as `kiln debug llb` does.
pub trait ImageResolver {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<Option<ImageInfo>, String>;
}

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
        in_progress: vec![false; stages.stages.len()],
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
    /// Stages being converted, to catch cycles through COPY --from and RUN --mount from=.
    in_progress: Vec<bool>,
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
    cmd_set: bool,
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
        if self.in_progress[index] {
            let at = used_from.unwrap_or(&stage.location);
            return Err(at
                .error(format!(
                    "circular dependency detected on stage: {}",
                    stage_label(stage, index)
                ))
                .hint("a stage cannot use itself, directly or through other stages"));
        }
        self.in_progress[index] = true;
        let result = self.convert_stage(index)?;
        self.in_progress[index] = false;
        self.results[index] = Some(result);
        Ok(())
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
        let name = stage_label(stage, index);
        let platform = match &stage.platform {
            Some(raw) => {
                let expanded = self.expand_from_line(raw, &location)?;
                Platform::parse(&expanded).map_err(|e| location.error_at(raw, e.to_string()))?
            }
            None => self.opts.target_platform.clone(),
        };
        let base = self.expand_from_line(&stage.base.clone(), &location)?;
        if base.is_empty() {
            return Err(location
                .error_at(
                    &stage.base,
                    format!("base name ({}) should not be blank", stage.base),
                )
                .hint("set the ARG it uses, e.g. with --build-arg"));
        }
        let steps = 1 + stage
            .instructions
            .iter()
            .filter(|i| {
                matches!(
                    i.command,
                    Command::Run(_) | Command::Copy(_) | Command::Add(_) | Command::Workdir(_)
                )
            })
            .count();
        let mut st = StageState {
            index,
            name: name.clone(),
            state: None,
            image: ImageInfo::default(),
            platform: platform.clone(),
            scope: Scope::default(),
            cmd_set: false,
            step: 0,
            steps,
        };
        let from_description = st.next_description(&format!("FROM {base}"));
        let inherited = if let Some(result) = self
            .named_context(&base, &platform, true)
            .map_err(|e| location.error_at(&stage.base, e))?
        {
            result
        } else if let Some(parent) = self.stage_by_name(&base, index) {
            self.stage_result(parent, &location)?
        } else if base.eq_ignore_ascii_case("scratch") {
            StageResult::image(None, ImageInfo::default(), &platform)
        } else {
            let image = self
                .resolve_image(&base, &platform)
                .map_err(|e| location.error_at(&stage.base, format!("failed to resolve {base}: {e}")))?;
            let state = self.source(
                Source::Image {
                    reference: base.clone(),
                },
                Some(&platform),
                from_description,
            );
            StageResult::image(Some(state), image, &platform)
        };
        st.state = inherited.state;
        st.image = inherited.image;
        if st.image.config.get_env("PATH").is_none() {
            st.image.config.set_env("PATH", DEFAULT_PATH);
        }
        // A stage built FROM another keeps its ARGs, values included; the image's ENV is applied over them
        // again, as BuildKit re-applies the config's Env to the state it inherits.
        st.scope = inherited.scope.unwrap_or_default();
        for (key, value) in st.image.config.env_pairs() {
            st.scope.set(&key, &value);
        }
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
            Command::Copy(copy) => self.dispatch_copy(st, copy, loc, false)?,
            Command::Add(add) => self.dispatch_copy(st, add, loc, true)?,
        }
        Ok(())
    }

    fn dispatch_copy(
        &mut self,
        st: &mut StageState,
        args: &CopyArgs,
        loc: &Location,
        is_add: bool,
    ) -> Result<(), Diagnostic> {
        let keyword = if is_add { "ADD" } else { "COPY" };
        if is_add && args.from.is_some() {
            return Err(loc
                .error("ADD does not support --from")
                .hint("use COPY --from=STAGE"));
        }
        let dest_word = self.expand_in(st, &args.dest, loc)?;
        let dest = {
            let joined = join_path(&st.workdir(), &dest_word);
            let mut cleaned = clean_path(&joined);
            // A trailing slash (or `.`) says "into this directory", which the copy must keep knowing.
            if (dest_word.ends_with('/') || dest_word == "." || dest_word.ends_with("/."))
                && !cleaned.ends_with('/')
            {
                cleaned.push('/');
            }
            cleaned
        };
        let chown_text = match &args.chown {
            Some(raw) => Some(self.expand_in(st, raw, loc)?),
            None => None,
        };
        let owner = match (&args.chown, &chown_text) {
            (Some(raw), Some(chown)) => Some(parse_owner(chown).map_err(|e| loc.error_at(raw, e))?),
            _ => None,
        };
        let mode = match &args.chmod {
            Some(raw) => {
                let chmod = self.expand_in(st, raw, loc)?;
                validate_chmod(&chmod).map_err(|e| loc.error_at(raw, e))?;
                Some(chmod)
            }
            None => None,
        };
        let mut exclude = Vec::new();
        for raw in &args.exclude {
            exclude.push(self.expand_in(st, raw, loc)?);
        }
        let mut sources: Vec<(Input, Vec<String>, bool)> = Vec::new();
        let from_input = match &args.from {
            Some(raw) => {
                let from = self.expand_in(st, raw, loc)?;
                Some(self.named_input(st, &from, loc)?)
            }
            None => None,
        };
        let mut local_paths = Vec::new();
        // What the history entry lists: the sources as expanded, inline ones after the others as `<<NAME`.
        let mut history_sources = Vec::new();
        let mut history_heredocs = Vec::new();
        for raw in &args.sources {
            if let Some(heredoc) = heredoc_for(raw, &args.heredocs) {
                history_heredocs.push(format!("<<{}", heredoc.name));
                let data = if heredoc.expand {
                    self.expand_heredoc(st, &heredoc.content, loc)?
                } else {
                    heredoc.content.clone()
                };
                let data = if heredoc.chomp { chomp_heredoc(&data) } else { data };
                let input = self.heredoc_file(st, &heredoc.name, data, 0o644);
                sources.push((input, vec![format!("/{}", heredoc.name)], false));
                continue;
            }
            let src = self.expand_in(st, raw, loc)?;
            history_sources.push(src.clone());
            if is_add && (src.starts_with("http://") || src.starts_with("https://")) {
                let checksum = match &args.checksum {
                    Some(c) => Some(self.expand_in(st, c, loc)?),
                    None => None,
                };
                let input = self.source(
                    Source::Http {
                        url: src.clone(),
                        checksum,
                        filename: Some(url_filename(&src)),
                    },
                    None,
                    format!("[{}] ADD {src}", st.name),
                );
                sources.push((input, vec![format!("/{}", url_filename(&src))], false));
                continue;
            }
            if is_add && is_git_url(&src) {
                let (remote, reference) = match src.split_once('#') {
                    Some((r, f)) => (r.to_string(), Some(f.to_string())),
                    None => (src.clone(), None),
                };
                let input = self.source(
                    Source::Git {
                        remote,
                        reference,
                        keep_git_dir: args.keep_git_dir,
                    },
                    None,
                    format!("[{}] ADD {src}", st.name),
                );
                sources.push((input, vec!["/".into()], false));
                continue;
            }
            local_paths.push(src);
        }
        let local_paths_empty = local_paths.is_empty();
        if !local_paths_empty {
            let input = match from_input {
                Some(input) => input,
                None => self.context_source(),
            };
            let auto_extract = is_add && args.unpack != Some(false);
            sources.insert(0, (input, local_paths, auto_extract));
        }
        if args.checksum.is_some() && !sources.iter().any(|(i, _, _)| self.is_http(i)) {
            return Err(loc
                .error("--checksum can only be used with HTTP(S) sources")
                .hint("remove --checksum"));
        }
        let copy_count: usize = sources.iter().map(|(_, paths, _)| paths.len()).sum();
        if copy_count > 1 && !dest.ends_with('/') {
            return Err(loc
                .error_at(&args.dest, format!("when using {keyword} with more than one source file, the destination must be a directory and end with a /"))
                .hint(format!("write `{}/`", args.dest.trim_end_matches('/'))));
        }
        let base = if args.link { None } else { st.state };
        let mut inputs: Vec<Input> = base.into_iter().collect();
        let mut actions = Vec::new();
        let local_group = (!local_paths_empty).then_some(0);
        for (group, (input, paths, auto_extract)) in sources.into_iter().enumerate() {
            let src_input = match inputs.iter().position(|i| *i == input) {
                Some(i) if base.is_none() || i > 0 => i,
                _ => {
                    inputs.push(input);
                    inputs.len() - 1
                }
            } as u32;
            // Local and stage sources may be wildcards that match nothing: BuildKit copies nothing then (and
            // still makes the layer). With --parents it requires a source without wildcards to exist, so
            // those copy one source per action.
            let (allow_empty_wildcard, groups) = match (local_group == Some(group), args.parents) {
                (true, true) => (None, paths.into_iter().map(|p| vec![p]).collect::<Vec<_>>()),
                (true, false) => (Some(true), vec![paths]),
                (false, _) => (Some(false), vec![paths]),
            };
            for src in groups {
                let allow_empty_wildcard =
                    allow_empty_wildcard.unwrap_or_else(|| src.iter().all(|p| contains_wildcards(p)));
                actions.push(FileAction::Copy(Copy {
                    src_input,
                    src,
                    dest: dest.clone(),
                    owner: owner.clone(),
                    mode: mode.clone(),
                    follow_symlinks: true,
                    dir_contents_only: true,
                    allow_wildcard: true,
                    allow_empty_wildcard,
                    create_dest_path: true,
                    auto_extract,
                    parents: args.parents,
                    exclude: exclude.clone(),
                    timestamp: None,
                }));
            }
        }
        let shown = format!(
            "{keyword} {}",
            first_line(
                loc.original
                    .split_once(char::is_whitespace)
                    .map_or("", |(_, r)| r.trim())
            )
        );
        let description = st.next_description(&shown);
        let op = Op::File(FileOp {
            has_base: base.is_some(),
            actions,
        });
        let layer = self.add_located(op, inputs, st, description.clone(), loc);
        st.state = Some(match (args.link, st.state) {
            (true, Some(below)) => self.add_located(Op::Merge, vec![below, layer], st, description, loc),
            _ => layer,
        });
        // BuildKit's history text: the flags that change the files (expanded), the sources as expanded, the
        // destination as written; --from, --link and --exclude are left out.
        let mut text = keyword.to_string();
        if args.parents {
            text.push_str(" --parents");
        }
        if let Some(chown) = &chown_text {
            text.push_str(&format!(" --chown={chown}"));
        }
        if let Some(chmod) = &mode {
            text.push_str(&format!(" --chmod={chmod}"));
        }
        for src in history_sources.iter().chain(&history_heredocs) {
            text.push(' ');
            text.push_str(src);
        }
        st.history(format!("{text} {dest_word} # buildkit"), false);
        Ok(())
    }

    fn is_http(&self, input: &Input) -> bool {
        self.definition
            .get(&input.vertex)
            .is_some_and(|v| matches!(v.op, Op::Source(Source::Http { .. })))
    }
}

fn stage_label(stage: &Stage, index: usize) -> String {
    stage.name.clone().unwrap_or_else(|| format!("stage-{index}"))
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

fn url_filename(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && !path.ends_with("//"))
        .unwrap_or("index.html");
    name.to_string()
}

fn is_git_url(src: &str) -> bool {
    src.starts_with("git@")
        || src.starts_with("git://")
        || ((src.starts_with("https://") || src.starts_with("http://"))
            && src.split('#').next().is_some_and(|s| s.ends_with(".git")))
}
