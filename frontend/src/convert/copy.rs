//! COPY and ADD: their sources (local paths, URLs, git repositories, heredocs), the file op that copies them,
//! and the history entry BuildKit writes.

use super::heredoc::{chomp_heredoc, heredoc_for};
use super::paths::{clean_path, contains_wildcards, join_path};
use super::words::{first_line, parse_owner, validate_chmod};
use super::{Converter, StageState};
use crate::Diagnostic;
use crate::instructions::{CopyArgs, Location};
use kiln_llb::{Copy, FileAction, FileOp, Input, Op, Source};

impl<'a> Converter<'a> {
    pub(super) fn dispatch_copy(
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

    pub(super) fn is_http(&self, input: &Input) -> bool {
        self.definition
            .get(&input.vertex)
            .is_some_and(|v| matches!(v.op, Op::Source(Source::Http { .. })))
    }
}

pub(super) fn url_filename(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && !path.ends_with("//"))
        .unwrap_or("index.html");
    name.to_string()
}

pub(super) fn is_git_url(src: &str) -> bool {
    src.starts_with("git@")
        || src.starts_with("git://")
        || ((src.starts_with("https://") || src.starts_with("http://"))
            && src.split('#').next().is_some_and(|s| s.ends_with(".git")))
}
