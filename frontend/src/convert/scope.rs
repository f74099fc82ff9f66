//! ARG and ENV scoping as BuildKit does it: which build args a stage sees, the automatic platform args, the
//! variables each instruction expands with, and the UndefinedVar/UndefinedArgInFrom findings made on the way.

use super::{ConvertOptions, Converter, StageState};
use crate::Diagnostic;
use crate::instructions::{ArgDecl, Location};
use crate::lint::LintWarning;
use crate::shell::Env;
use kiln_llb::Platform;

/// Build args docker passes to RUN without an ARG declaration, and keeps out of the image history.
pub(super) const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Build args BuildKit keeps out of the environment of RUN (they still count as declared).
const NON_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// The variables of a stage, kept as BuildKit keeps them on its LLB state.
#[derive(Debug, Clone, Default)]
pub(super) struct Scope {
    /// What instructions expand with and RUN gets as its environment: the base's ENV, then every ENV and
    /// every ARG that has a value, in order, the last definition of a name winning — so an ARG declared after
    /// an ENV of the same name overrides it here (not in the image config), and a later ENV overrides the ARG.
    pub(super) env: Vec<(String, String)>,
    /// ARGs declared so far (inherited ones first), with the value they were declared with: RUN's history
    /// lists them as `|N K=V ...`.
    pub(super) build_args: Vec<(String, Option<String>)>,
    pub(super) declared_args: Vec<String>,
}

impl Scope {
    /// Sets `key` as llb's `AddEnv` does: an earlier definition is dropped, the new one goes last.
    pub(super) fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn platform_args(prefix: &str, platform: &Platform) -> [(String, String); 4] {
    [
        (format!("{prefix}PLATFORM"), platform.to_string()),
        (format!("{prefix}OS"), platform.os.clone()),
        (format!("{prefix}ARCH"), platform.architecture.clone()),
        (format!("{prefix}VARIANT"), platform.variant_str().to_string()),
    ]
}

impl<'a> Converter<'a> {
    /// The `--build-arg` given for `name`; the last one given wins.
    pub(super) fn build_arg(&self, name: &str) -> Option<&'a str> {
        let opts: &'a ConvertOptions = self.opts;
        opts.build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn automatic_args(&self) -> Vec<(String, String)> {
        let mut args = platform_args("TARGET", &self.opts.target_platform).to_vec();
        args.extend(platform_args("BUILD", &self.opts.build_platform));
        args
    }

    /// Sets the scope of FROM lines: the automatic platform args, then each global ARG that has a value,
    /// a build arg taking the place of its default.
    pub(super) fn init_meta_args(&mut self, globals: &[(ArgDecl, Location)]) -> Result<(), Diagnostic> {
        self.meta_args = self.automatic_args();
        for (decl, location) in globals {
            self.declared_meta.push(decl.name.clone());
            let value = match self.build_arg(&decl.name) {
                Some(v) => {
                    self.used_build_args.push(decl.name.clone());
                    Some(v.to_string())
                }
                None => match &decl.default {
                    Some(default) => Some(self.expand(default, &self.meta_args.clone(), location, None)?),
                    None => None,
                },
            };
            if let Some(value) = value {
                self.meta_args.push((decl.name.clone(), value));
            }
        }
        Ok(())
    }

    /// Expands one word, recording UndefinedVar findings for names neither ARG nor ENV define.
    pub(super) fn expand(
        &mut self,
        word: &str,
        vars: &[(String, String)],
        location: &Location,
        declared: Option<&[String]>,
    ) -> Result<String, Diagnostic> {
        let (value, matches) = self
            .lex
            .process_word_with_matches(word, &vars.to_vec() as &dyn Env)
            .map_err(|e| location.error_at(word, format!("failed to process {word:?}: {e}")))?;
        if let Some(declared) = declared {
            for name in matches.unmatched {
                if !declared.contains(&name) && !vars.iter().any(|(k, _)| *k == name) {
                    self.lints.push(LintWarning {
                        rule: "UndefinedVar",
                        line: location.start_line,
                        message: format!("Usage of undefined variable '${name}'"),
                        fix: format!("declare it with `ARG {name}` or `ENV {name}=value` before this line"),
                    });
                }
            }
        }
        Ok(value)
    }

    /// Expands a word of an instruction of stage `st`, with the stage's variables.
    pub(super) fn expand_in(
        &mut self,
        st: &StageState,
        word: &str,
        location: &Location,
    ) -> Result<String, Diagnostic> {
        let vars = st.vars();
        let declared = st.scope.declared_args.clone();
        self.expand(word, &vars, location, Some(&declared))
    }

    /// Expands a word of a FROM line, which sees only the global and automatic ARGs, recording
    /// UndefinedArgInFrom findings.
    pub(super) fn expand_from_line(&mut self, word: &str, location: &Location) -> Result<String, Diagnostic> {
        let (value, matches) = self
            .lex
            .process_word_with_matches(word, &self.meta_args as &dyn Env)
            .map_err(|e| location.error_at(word, format!("failed to process {word:?}: {e}")))?;
        for name in matches.unmatched {
            if !self.declared_meta.contains(&name) {
                self.lints.push(LintWarning {
                    rule: "UndefinedArgInFrom",
                    line: location.start_line,
                    message: format!("FROM argument '{name}' is not declared"),
                    fix: format!("declare `ARG {name}` before the first FROM"),
                });
            }
        }
        Ok(value)
    }

    pub(super) fn dispatch_arg(
        &mut self,
        st: &mut StageState,
        decls: &[ArgDecl],
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        let mut text = Vec::new();
        for decl in decls {
            let value = if let Some(v) = self.build_arg(&decl.name) {
                self.used_build_args.push(decl.name.clone());
                Some(v.to_string())
            } else if let Some(default) = &decl.default {
                Some(self.expand_in(st, default, loc)?)
            } else if let Some((_, v)) = self.meta_args.iter().rev().find(|(k, _)| *k == decl.name) {
                // Redeclaring a global ARG (or an automatic platform ARG) brings its value into the stage.
                Some(v.clone())
            } else {
                None
            };
            text.push(match &value {
                Some(v) => format!("{}={v}", decl.name),
                None => decl.name.clone(),
            });
            st.scope.declared_args.push(decl.name.clone());
            if let Some(value) = &value
                && !NON_ENV_ARGS.contains(&decl.name.as_str())
            {
                // Over an ENV of the same name too: in what later instructions and RUN see, the last wins.
                st.scope.set(&decl.name, value);
            }
            st.scope.build_args.push((decl.name.clone(), value));
        }
        st.history(format!("ARG {}", text.join(" ")), true);
        Ok(())
    }
}
