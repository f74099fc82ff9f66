//! Heredocs: the file a `COPY <<EOF` or a `#!` script `RUN <<EOF` reads, and the script a shell-form RUN
//! with heredocs hands its shell.

use super::{Converter, StageState};
use crate::Diagnostic;
use crate::ast::Heredoc;
use crate::instructions::Location;
use kiln_llb::{FileAction, FileOp, Input, Op};

impl<'a> Converter<'a> {
    /// A heredoc body as the file `/NAME` on an empty tree, for RUN to execute or COPY to copy.
    pub(super) fn heredoc_file(&mut self, st: &StageState, name: &str, data: String, mode: u32) -> Input {
        let file = FileOp {
            has_base: false,
            actions: vec![FileAction::Mkfile {
                path: format!("/{name}"),
                mode,
                data,
                owner: None,
            }],
        };
        let description = format!("[{} internal] heredoc {name}", st.name);
        self.add(Op::File(file), vec![], &st.platform.clone(), st, description)
    }

    /// Heredoc bodies of COPY expand variables line by line, as the words of the instruction do.
    pub(super) fn expand_heredoc(
        &mut self,
        st: &StageState,
        content: &str,
        loc: &Location,
    ) -> Result<String, Diagnostic> {
        let vars = st.vars();
        let declared = st.scope.declared_args.clone();
        let mut out = String::with_capacity(content.len());
        for line in content.split_inclusive('\n') {
            let (body, newline) = line.strip_suffix('\n').map_or((line, ""), |b| (b, "\n"));
            // Quotes in a heredoc body are content, so escape them before expansion sees them.
            let escaped = body
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\'', "\\'");
            out.push_str(&self.expand(&escaped, &vars, loc, Some(&declared))?);
            out.push_str(newline);
        }
        Ok(out)
    }
}

/// The heredoc a COPY source word names: `<<EOF`, `<<-EOF`, `<<"EOF"` or `<<'EOF'`.
pub(super) fn heredoc_for<'h>(word: &str, heredocs: &'h [Heredoc]) -> Option<&'h Heredoc> {
    let name = word.strip_prefix("<<")?;
    let name = name.strip_prefix('-').unwrap_or(name);
    let name = name.trim_matches(|c| c == '"' || c == '\'');
    heredocs.iter().find(|h| h.name == name)
}

/// Whether a shell-form RUN is nothing but one heredoc marker, so that the heredoc's body is the script.
pub(super) fn is_lone_heredoc(cmd: &str) -> bool {
    let word = cmd.trim();
    word.starts_with("<<") && !word.contains(char::is_whitespace)
}

/// What the shell runs for a shell-form RUN: a lone heredoc runs its body; a command with heredocs gets
/// them appended so the shell feeds them itself.
pub(super) fn run_shell_script(cmd: &str, heredocs: &[Heredoc]) -> String {
    match heredocs {
        [] => cmd.to_string(),
        [only] if is_lone_heredoc(cmd) => heredoc_body(only),
        _ => {
            let mut full = cmd.to_string();
            for heredoc in heredocs {
                full.push('\n');
                full.push_str(&heredoc.content);
                full.push_str(&heredoc.name);
            }
            full
        }
    }
}

/// A heredoc's content as written, but with leading tabs stripped for `<<-`.
pub(super) fn heredoc_body(heredoc: &Heredoc) -> String {
    if heredoc.chomp {
        chomp_heredoc(&heredoc.content)
    } else {
        heredoc.content.clone()
    }
}

/// `<<-` strips leading tabs from every line.
pub(super) fn chomp_heredoc(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}
