//! RUN: the command and what it runs in — the stage's filesystem, a `#!` heredoc mounted as a script,
//! `--mount=`s, the network and the environment — and the history entry BuildKit writes for it.

use super::go_format::go_quote_list;
use super::heredoc::{heredoc_body, is_lone_heredoc, run_shell_script};
use super::mount::{MOUNT_HINT, parse_mount};
use super::paths::{clean_path, join_path};
use super::scope::PROXY_ARGS;
use super::words::first_line;
use super::{Converter, StageState};
use crate::Diagnostic;
use crate::ast::Heredoc;
use crate::instructions::{CommandLine, Location, RunArgs};
use kiln_llb::{Entitlement, Exec, Input, Mount, MountKind, NetworkMode, Op, SecurityMode};

/// Where BuildKit mounts the script of a `#!` heredoc.
const SCRIPT_DIR: &str = "/dev/pipes/";

/// What a RUN gets from the stage's variables.
struct RunEnv {
    /// `K=V` pairs of the exec's environment.
    env: Vec<String>,
    /// `K=V` pairs the history entry lists as `|N K=V ...`.
    history_args: Vec<String>,
}

/// An exec's inputs and its mounts, which name the inputs by index.
struct ExecMounts {
    inputs: Vec<Input>,
    mounts: Vec<Mount>,
}

impl ExecMounts {
    /// The stage's filesystem, input 0, as the writable root; an empty root on scratch.
    fn over_rootfs(state: Option<Input>) -> ExecMounts {
        let rootfs = Mount {
            input: if state.is_some() { Some(0) } else { None },
            selector: String::new(),
            dest: "/".into(),
            kind: MountKind::Bind,
            readonly: false,
            output: true,
            owner_mode: None,
        };
        ExecMounts {
            inputs: state.into_iter().collect(),
            mounts: vec![rootfs],
        }
    }

    /// Adds `input` and returns the index a mount names it by.
    fn add_input(&mut self, input: Input) -> u32 {
        self.inputs.push(input);
        (self.inputs.len() - 1) as u32
    }
}

impl<'a> Converter<'a> {
    pub(super) fn dispatch_run(
        &mut self,
        st: &mut StageState,
        run: &RunArgs,
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        let mut exec_mounts = ExecMounts::over_rootfs(st.state);
        let args = self.run_command(st, run, &mut exec_mounts);
        let first_agent = self.add_run_mounts(st, run, loc, &mut exec_mounts)?;
        let network = self.network_mode(run, loc)?;
        let security = self.security_mode(run, loc)?;
        let RunEnv {
            mut env,
            history_args,
        } = self.run_env(st);
        // As BuildKit: the first agent is the one ssh clients find, unless the stage says otherwise.
        if let Some(agent) = first_agent
            && !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK="))
        {
            env.push(format!("SSH_AUTH_SOCK={agent}"));
        }
        let exec = Exec {
            args: args.clone(),
            env,
            cwd: st.workdir(),
            user: st.image.config.user.clone(),
            network,
            security,
            mounts: exec_mounts.mounts,
            hostname: String::new(),
            extra_hosts: Vec::new(),
        };
        let shown = match &run.command {
            CommandLine::Shell(cmd) => cmd.clone(),
            CommandLine::Exec(args) => go_quote_list(args),
        };
        let description = st.next_description(&format!("RUN {}", first_line(&shown)));
        st.state = Some(self.add_located(Op::Exec(exec), exec_mounts.inputs, st, description, loc));
        st.history(run_history(&history_args, &args), false);
        Ok(())
    }

    /// The exec's arguments: exec form as is, shell form wrapped in the stage's SHELL — except that a lone
    /// `RUN <<EOF` whose body starts with `#!` runs the body as a script file, as BuildKit does.
    fn run_command(&mut self, st: &StageState, run: &RunArgs, exec_mounts: &mut ExecMounts) -> Vec<String> {
        if let Some(script) = shebang_heredoc(run) {
            let script_input = self.heredoc_file(st, &script.name, heredoc_body(script), 0o755);
            let input = exec_mounts.add_input(script_input);
            exec_mounts.mounts.push(Mount {
                input: Some(input),
                selector: "/".into(),
                dest: SCRIPT_DIR.into(),
                kind: MountKind::Bind,
                readonly: true,
                output: false,
                owner_mode: None,
            });
            return vec![format!("{SCRIPT_DIR}{}", script.name)];
        }
        match &run.command {
            CommandLine::Exec(args) => args.clone(),
            CommandLine::Shell(cmd) => {
                let mut args = st.shell();
                args.push(run_shell_script(cmd, &run.heredocs));
                args
            }
        }
    }

    /// Adds each `--mount=`: `from=` names a filesystem as COPY's `--from=` does, and a bind mount without it
    /// reads the build context.
    fn add_run_mounts(
        &mut self,
        st: &StageState,
        run: &RunArgs,
        loc: &Location,
        exec_mounts: &mut ExecMounts,
    ) -> Result<Option<String>, Diagnostic> {
        let mut first_agent = None;
        for spec in &run.mounts {
            let expanded = self.expand_in(st, spec, loc)?;
            let parsed = parse_mount(&expanded).map_err(|e| loc.error_at(spec, e).hint(MOUNT_HINT))?;
            let input = match parsed.from.as_deref() {
                Some(from) => Some(self.named_input(st, from, loc)?),
                None if matches!(parsed.kind, MountKind::Bind) => Some(self.context_source()),
                None => None,
            };
            let input_index = input.map(|i| exec_mounts.add_input(i));
            let env_only_secret = parsed.target.is_empty() && matches!(parsed.kind, MountKind::Secret { .. });
            let dest = if env_only_secret {
                String::new()
            } else if parsed.target.is_empty() && matches!(parsed.kind, MountKind::Ssh { .. }) {
                let agents = exec_mounts
                    .mounts
                    .iter()
                    .filter(|m| matches!(m.kind, MountKind::Ssh { .. }));
                format!("/run/buildkit/ssh_agent.{}", agents.count())
            } else {
                clean_path(&join_path(&st.workdir(), &parsed.target))
            };
            if dest == "/" {
                return Err(loc
                    .error_at(spec, format!("invalid mount target {:?}", parsed.target))
                    .hint("a mount cannot replace the root filesystem; mount it at a directory below /"));
            }
            if matches!(parsed.kind, MountKind::Ssh { .. }) && first_agent.is_none() {
                first_agent = Some(dest.clone());
            }
            exec_mounts.mounts.push(Mount {
                input: input_index,
                selector: parsed.source,
                dest,
                kind: parsed.kind,
                readonly: parsed.readonly,
                output: false,
                owner_mode: parsed.owner_mode,
            });
        }
        // As BuildKit's LLB: mounts by target, so a directory is mounted before what is mounted inside it,
        // whatever order the flags came in.
        exec_mounts.mounts.sort_by(|a, b| a.dest.cmp(&b.dest));
        Ok(first_agent)
    }

    /// The environment a RUN sees — the stage's variables (ENV and ARGs with values, the last definition
    /// winning), then proxy build args no ARG declares — and the `K=V` list its history entry starts with:
    /// every ARG declared so far, each once where it was first declared, valued from the environment when it
    /// is there (an ENV may have replaced it), else as declared (`K=` without a value). Proxy args an ARG
    /// declares are listed too, as BuildKit lists them.
    fn run_env(&self, st: &StageState) -> RunEnv {
        let mut env: Vec<String> = st.scope.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for proxy in PROXY_ARGS {
            if let Some(value) = self.build_arg(proxy)
                && !st.scope.build_args.iter().any(|(k, _)| k == proxy)
            {
                env.push(format!("{proxy}={value}"));
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for (key, _) in &st.scope.build_args {
            if !names.contains(&key.as_str()) {
                names.push(key);
            }
        }
        let history_args = names
            .into_iter()
            .map(|key| {
                let declared = st.scope.build_args.iter().rev().find(|(k, _)| k == key);
                let value = st
                    .scope
                    .get(key)
                    .or_else(|| declared.and_then(|(_, v)| v.as_deref()))
                    .unwrap_or_default();
                format!("{key}={value}")
            })
            .collect();
        RunEnv { env, history_args }
    }
}

/// The heredoc of a `RUN <<EOF` that is nothing but the heredoc and whose body starts with `#!`.
fn shebang_heredoc(run: &RunArgs) -> Option<&Heredoc> {
    match (&run.command, run.heredocs.as_slice()) {
        (CommandLine::Shell(cmd), [heredoc]) if is_lone_heredoc(cmd) && heredoc.content.starts_with("#!") => {
            Some(heredoc)
        }
        _ => None,
    }
}

impl Converter<'_> {
    fn network_mode(&self, run: &RunArgs, loc: &Location) -> Result<NetworkMode, Diagnostic> {
        match run.network.as_deref() {
            None | Some("default") => Ok(NetworkMode::Default),
            Some(host @ "host") => {
                self.entitled(Entitlement::NetworkHost, "--network=host", host, loc)?;
                Ok(NetworkMode::Host)
            }
            Some("none") => Ok(NetworkMode::None),
            Some(other) => Err(loc
                .error_at(other, format!("unsupported network mode {other:?}"))
                .hint("use --network=default, --network=none or --network=host")),
        }
    }

    fn security_mode(&self, run: &RunArgs, loc: &Location) -> Result<SecurityMode, Diagnostic> {
        match run.security.as_deref() {
            None | Some("sandbox") => Ok(SecurityMode::Sandbox),
            Some(insecure @ "insecure") => {
                self.entitled(
                    Entitlement::SecurityInsecure,
                    "--security=insecure",
                    insecure,
                    loc,
                )?;
                Ok(SecurityMode::Insecure)
            }
            Some(other) => Err(loc
                .error_at(other, format!("unsupported security mode {other:?}"))
                .hint("use --security=sandbox or --security=insecure")),
        }
    }

    /// A step that leaves the sandbox fails the conversion, before anything runs, unless the build allows it.
    fn entitled(
        &self,
        entitlement: Entitlement,
        flag: &str,
        text: &str,
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        if self.opts.allow.contains(&entitlement) {
            return Ok(());
        }
        let name = entitlement.name();
        Err(loc
            .error_at(
                text,
                format!("RUN {flag} needs the {name} entitlement, which this build does not grant"),
            )
            .hint(format!(
                "add `--allow {name}` to `kiln build` if you trust this Dockerfile"
            )))
    }
}

/// BuildKit's history text for a RUN: `RUN |N K=V ... ARGS # buildkit`, the `|N` list only when the stage
/// declared ARGs.
fn run_history(history_args: &[String], args: &[String]) -> String {
    let prefix = if history_args.is_empty() {
        String::new()
    } else {
        format!("|{} {} ", history_args.len(), history_args.join(" "))
    };
    format!("RUN {prefix}{} # buildkit", args.join(" "))
}
