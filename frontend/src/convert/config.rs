//! The instructions that change the image config — ENV, LABEL, MAINTAINER, WORKDIR, USER, EXPOSE, VOLUME,
//! STOPSIGNAL, SHELL, ONBUILD, CMD, ENTRYPOINT, HEALTHCHECK — each with the history entry BuildKit writes for
//! it. Only WORKDIR also touches the filesystem.

use super::go_format::{go_health, go_quote_list};
use super::paths::{clean_path, join_path};
use super::words::{owner_of, parse_ports, validate_signal};
use super::{Converter, StageState};
use crate::Diagnostic;
use crate::instructions::{self, CommandLine, Healthcheck, KeyValue, Location};
use kiln_llb::image::HealthConfig;
use kiln_llb::{FileAction, FileOp, Input, Op};

impl<'a> Converter<'a> {
    pub(super) fn dispatch_env(
        &mut self,
        st: &mut StageState,
        pairs: &[KeyValue],
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        // All values of one ENV see the environment from before it, as in docker.
        let mut expanded = Vec::new();
        for kv in pairs {
            let key = self.expand_in(st, &kv.key, loc)?;
            let value = self.expand_in(st, &kv.value, loc)?;
            expanded.push((key, value));
        }
        let text: Vec<String> = expanded.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for (key, value) in &expanded {
            st.image.config.set_env(key, value);
            st.scope.set(key, value);
        }
        st.history(format!("ENV {}", text.join(" ")), true);
        Ok(())
    }

    pub(super) fn dispatch_label(
        &mut self,
        st: &mut StageState,
        pairs: &[KeyValue],
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        let mut text = Vec::new();
        for kv in pairs {
            let key = self.expand_in(st, &kv.key, loc)?;
            let value = self.expand_in(st, &kv.value, loc)?;
            text.push(format!("{key}={value}"));
            st.image.config.labels.insert(key, value);
        }
        st.history(format!("LABEL {}", text.join(" ")), true);
        Ok(())
    }

    pub(super) fn dispatch_maintainer(&mut self, st: &mut StageState, name: &str) {
        // BuildKit records it as the config's author, not as a label.
        st.image.author = Some(name.to_string());
        st.history(format!("MAINTAINER {name}"), true);
    }

    pub(super) fn dispatch_workdir(
        &mut self,
        st: &mut StageState,
        raw: &str,
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        let expanded = self.expand_in(st, raw, loc)?;
        let dir = clean_path(&join_path(&st.workdir(), &expanded));
        st.image.config.working_dir = dir.clone();
        if dir == "/" {
            // Nothing to create: BuildKit makes no file op and no layer for the root.
            st.history("WORKDIR /".into(), true);
            return Ok(());
        }
        let description = st.next_description(&format!("WORKDIR {dir}"));
        let owner = owner_of(&st.image.config.user);
        let action = FileAction::Mkdir {
            path: dir.clone(),
            mode: 0o755,
            make_parents: true,
            owner,
        };
        let op = Op::File(FileOp {
            has_base: st.state.is_some(),
            actions: vec![action],
        });
        let inputs: Vec<Input> = st.state.into_iter().collect();
        st.state = Some(self.add_located(op, inputs, st, description, loc));
        st.history(format!("WORKDIR {dir}"), false);
        Ok(())
    }

    pub(super) fn dispatch_user(
        &mut self,
        st: &mut StageState,
        raw: &str,
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        let user = self.expand_in(st, raw, loc)?;
        st.history(format!("USER {user}"), true);
        st.image.config.user = user;
        Ok(())
    }

    pub(super) fn dispatch_expose(
        &mut self,
        st: &mut StageState,
        ports: &[String],
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        let mut added = Vec::new();
        for raw in ports {
            let word = self.expand_in(st, raw, loc)?;
            for port in parse_ports(&word).map_err(|e| loc.error_at(raw, e))? {
                added.push(port.clone());
                st.image.config.exposed_ports.insert(port);
            }
        }
        // Go's `%v` of the port list: in the order written, ranges expanded.
        st.history(format!("EXPOSE [{}]", added.join(" ")), true);
        Ok(())
    }

    pub(super) fn dispatch_volume(
        &mut self,
        st: &mut StageState,
        volumes: &[String],
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        let mut added = Vec::new();
        for raw in volumes {
            let volume = self.expand_in(st, raw, loc)?;
            if volume.trim().is_empty() {
                return Err(loc.error_at(raw, "VOLUME specified can not be an empty string"));
            }
            added.push(volume.clone());
            st.image.config.volumes.insert(volume);
        }
        st.history(format!("VOLUME [{}]", added.join(" ")), true);
        Ok(())
    }

    pub(super) fn dispatch_stop_signal(
        &mut self,
        st: &mut StageState,
        raw: &str,
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        let signal = self.expand_in(st, raw, loc)?;
        validate_signal(&signal).map_err(|e| loc.error_at(raw, e))?;
        st.history(format!("STOPSIGNAL {signal}"), true);
        st.image.config.stop_signal = Some(signal);
        Ok(())
    }

    pub(super) fn dispatch_shell(&mut self, st: &mut StageState, shell: &[String]) {
        st.history(format!("SHELL [{}]", shell.join(" ")), true);
        st.image.config.shell = Some(shell.to_vec());
    }

    pub(super) fn dispatch_onbuild(&mut self, st: &mut StageState, trigger: &str) {
        // No history entry: BuildKit records none for ONBUILD.
        st.image.config.on_build.push(trigger.to_string());
    }

    pub(super) fn dispatch_cmd(&mut self, st: &mut StageState, line: &CommandLine) {
        let args = command_args(st, line);
        st.history(format!("CMD {}", go_quote_list(&args)), true);
        st.image.config.cmd = Some(args);
        st.image.config.args_escaped = true;
        st.cmd_set = true;
    }

    pub(super) fn dispatch_entrypoint(&mut self, st: &mut StageState, line: &CommandLine) {
        let args = command_args(st, line);
        st.history(format!("ENTRYPOINT {}", go_quote_list(&args)), true);
        st.image.config.entrypoint = Some(args);
        // An ENTRYPOINT resets an inherited CMD, but not one set earlier in this stage.
        if !st.cmd_set {
            st.image.config.cmd = None;
        }
    }

    pub(super) fn dispatch_healthcheck(
        &mut self,
        st: &mut StageState,
        check: &Healthcheck,
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        let config = health_config(check, loc)?;
        st.history(format!("HEALTHCHECK {}", go_health(&config)), true);
        st.image.config.healthcheck = Some(config);
        Ok(())
    }
}

/// CMD/ENTRYPOINT arguments: exec form as is, shell form wrapped in the stage's SHELL.
fn command_args(st: &StageState, line: &CommandLine) -> Vec<String> {
    match line {
        CommandLine::Exec(args) => args.clone(),
        CommandLine::Shell(cmd) => {
            let mut args = st.shell();
            args.push(cmd.clone());
            args
        }
    }
}

fn health_config(check: &Healthcheck, loc: &Location) -> Result<HealthConfig, Diagnostic> {
    Ok(match check {
        Healthcheck::None => HealthConfig {
            test: vec!["NONE".into()],
            ..HealthConfig::default()
        },
        Healthcheck::Cmd {
            command,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => {
            let test = match command {
                CommandLine::Shell(line) => vec!["CMD-SHELL".into(), line.clone()],
                CommandLine::Exec(args) => {
                    let mut test = vec!["CMD".to_string()];
                    test.extend(args.iter().cloned());
                    test
                }
            };
            let duration = |v: &Option<String>| {
                v.as_deref()
                    .map(instructions::parse_duration)
                    .transpose()
                    .map(Option::unwrap_or_default)
            };
            HealthConfig {
                test,
                interval: duration(interval).map_err(|e| loc.error(e))?,
                timeout: duration(timeout).map_err(|e| loc.error(e))?,
                start_period: duration(start_period).map_err(|e| loc.error(e))?,
                start_interval: duration(start_interval).map_err(|e| loc.error(e))?,
                retries: retries.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0),
            }
        }
    })
}
