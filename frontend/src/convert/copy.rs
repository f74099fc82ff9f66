//! COPY and ADD: their sources (local paths, URLs, git repositories, heredocs), the file op that copies them,
//! and the history entry BuildKit writes.
//!
//! A COPY/ADD is converted in phases: the destination and flags ([`CopyFlags`]), the sources
//! ([`GatheredSources`], one [`CopySource`] per input read), the checks that need both, then one file op
//! with a copy action per source (per path with `--parents`), merged onto the stage with `--link`.

use super::heredoc::{chomp_heredoc, heredoc_for};
use super::paths::{clean_path, contains_wildcards, join_path};
use super::words::{first_line, parse_owner, validate_chmod};
use super::{Converter, StageState};
use crate::Diagnostic;
use crate::ast::Heredoc;
use crate::instructions::{CopyArgs, Location};
use kiln_llb::{Copy, FileAction, FileOp, Input, Op, Owner, Source};

/// The destination and the flags every copy action of one COPY/ADD shares, expanded and checked.
struct CopyFlags {
    /// The destination as expanded, before it is joined to the working directory: the history entry's.
    dest_word: String,
    /// The absolute, cleaned destination, ending in `/` when it names a directory to copy into.
    dest: String,
    /// `--chown` as expanded, for the history entry.
    chown: Option<String>,
    owner: Option<Owner>,
    /// `--chmod` as expanded.
    mode: Option<String>,
    exclude: Vec<String>,
}

/// One input a COPY/ADD reads, and the paths copied out of it.
struct CopySource {
    kind: CopySourceKind,
    input: Input,
    paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopySourceKind {
    /// Paths in the build context or in what `--from` names, all read from one input; `auto_extract` when
    /// ADD unpacks archives among them (unless `--unpack=false`).
    Local { auto_extract: bool },
    /// An ADD of an http(s) URL: the downloaded file.
    Http,
    /// An ADD of a git repository: its checkout.
    Git,
    /// A heredoc's body as a file.
    Heredoc,
}

/// The sources of one COPY/ADD, and how its history entry lists them.
#[derive(Default)]
struct GatheredSources {
    /// The local source first (when there are local paths), then the others in the order written.
    sources: Vec<CopySource>,
    /// The sources other than heredocs, as expanded, in the order written.
    history_words: Vec<String>,
    /// `<<NAME` for each heredoc source, which the history entry lists after the others.
    history_heredocs: Vec<String>,
}

impl<'a> Converter<'a> {
    pub(super) fn dispatch_copy(
        &mut self,
        st: &mut StageState,
        args: &CopyArgs,
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        self.copy_or_add(st, args, loc, false)
    }

    pub(super) fn dispatch_add(
        &mut self,
        st: &mut StageState,
        args: &CopyArgs,
        loc: &Location,
    ) -> Result<(), Diagnostic> {
        self.copy_or_add(st, args, loc, true)
    }

    /// COPY and ADD differ only in what ADD adds: URLs, git repositories, unpacking archives, --checksum.
    fn copy_or_add(
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
        let flags = self.copy_flags(st, args, loc)?;
        let gathered = self.gather_sources(st, args, loc, is_add)?;
        check_sources(&gathered.sources, args, &flags, keyword, loc)?;
        let history = copy_history(keyword, args.parents, &flags, &gathered);
        let base = if args.link { None } else { st.state };
        let (inputs, actions) = copy_actions(base, gathered.sources, &flags, args.parents);
        let description = st.next_description(&copy_description(keyword, loc));
        let op = Op::File(FileOp {
            has_base: base.is_some(),
            actions,
        });
        let layer = self.add_located(op, inputs, st, description.clone(), loc);
        st.state = Some(match (args.link, st.state) {
            (true, Some(below)) => self.add_located(Op::Merge, vec![below, layer], st, description, loc),
            _ => layer,
        });
        st.history(history, false);
        Ok(())
    }

    fn copy_flags(
        &mut self,
        st: &StageState,
        args: &CopyArgs,
        loc: &Location,
    ) -> Result<CopyFlags, Diagnostic> {
        let dest_word = self.expand_in(st, &args.dest, loc)?;
        let dest = copy_dest(&st.workdir(), &dest_word);
        let (chown, owner) = match &args.chown {
            Some(raw) => {
                let chown = self.expand_in(st, raw, loc)?;
                let owner = parse_owner(&chown).map_err(|e| loc.error_at(raw, e))?;
                (Some(chown), Some(owner))
            }
            None => (None, None),
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
        Ok(CopyFlags {
            dest_word,
            dest,
            chown,
            owner,
            mode,
            exclude,
        })
    }

    /// Expands the source words and makes an input for each heredoc, URL and git repository, and one for
    /// all local paths together: the build context, or what `--from` names.
    fn gather_sources(
        &mut self,
        st: &StageState,
        args: &CopyArgs,
        loc: &Location,
        is_add: bool,
    ) -> Result<GatheredSources, Diagnostic> {
        let from_input = match &args.from {
            Some(raw) => {
                let from = self.expand_in(st, raw, loc)?;
                Some(self.named_input(st, &from, loc)?)
            }
            None => None,
        };
        let mut gathered = GatheredSources::default();
        let mut local_paths = Vec::new();
        for raw in &args.sources {
            if let Some(heredoc) = heredoc_for(raw, &args.heredocs) {
                gathered.history_heredocs.push(format!("<<{}", heredoc.name));
                let source = self.heredoc_source(st, heredoc, loc)?;
                gathered.sources.push(source);
                continue;
            }
            let src = self.expand_in(st, raw, loc)?;
            gathered.history_words.push(src.clone());
            // Tested before is_git_url, so an http(s) URL ending in .git is downloaded, not cloned.
            if is_add && is_http_url(&src) {
                let source = self.http_source(st, &src, args, loc)?;
                gathered.sources.push(source);
            } else if is_add && is_git_url(&src) {
                let source = self.git_source(st, &src, args);
                gathered.sources.push(source);
            } else {
                local_paths.push(src);
            }
        }
        if !local_paths.is_empty() {
            let input = match from_input {
                Some(input) => input,
                None => self.context_source(),
            };
            let local = CopySource {
                kind: CopySourceKind::Local {
                    auto_extract: is_add && args.unpack != Some(false),
                },
                input,
                paths: local_paths,
            };
            gathered.sources.insert(0, local);
        }
        Ok(gathered)
    }

    fn heredoc_source(
        &mut self,
        st: &StageState,
        heredoc: &Heredoc,
        loc: &Location,
    ) -> Result<CopySource, Diagnostic> {
        let data = if heredoc.expand {
            self.expand_heredoc(st, &heredoc.content, loc)?
        } else {
            heredoc.content.clone()
        };
        let data = if heredoc.chomp { chomp_heredoc(&data) } else { data };
        let input = self.heredoc_file(st, &heredoc.name, data, 0o644);
        Ok(CopySource {
            kind: CopySourceKind::Heredoc,
            input,
            paths: vec![format!("/{}", heredoc.name)],
        })
    }

    fn http_source(
        &mut self,
        st: &StageState,
        url: &str,
        args: &CopyArgs,
        loc: &Location,
    ) -> Result<CopySource, Diagnostic> {
        let checksum = match &args.checksum {
            Some(raw) => Some(self.expand_in(st, raw, loc)?),
            None => None,
        };
        let filename = url_filename(url);
        let input = self.source(
            Source::Http {
                url: url.to_string(),
                checksum,
                filename: Some(filename.clone()),
            },
            None,
            format!("[{}] ADD {url}", st.name),
        );
        Ok(CopySource {
            kind: CopySourceKind::Http,
            input,
            paths: vec![format!("/{filename}")],
        })
    }

    fn git_source(&mut self, st: &StageState, url: &str, args: &CopyArgs) -> CopySource {
        let (remote, reference) = match url.split_once('#') {
            Some((remote, fragment)) => (remote.to_string(), Some(fragment.to_string())),
            None => (url.to_string(), None),
        };
        let input = self.source(
            Source::Git {
                remote,
                reference,
                keep_git_dir: args.keep_git_dir,
            },
            None,
            format!("[{}] ADD {url}", st.name),
        );
        CopySource {
            kind: CopySourceKind::Git,
            input,
            paths: vec!["/".into()],
        }
    }
}

/// The destination as an absolute, cleaned path.
fn copy_dest(workdir: &str, dest_word: &str) -> String {
    let mut cleaned = clean_path(&join_path(workdir, dest_word));
    // A trailing slash (or `.`) says "into this directory", which the copy must keep knowing.
    if (dest_word.ends_with('/') || dest_word == "." || dest_word.ends_with("/.")) && !cleaned.ends_with('/')
    {
        cleaned.push('/');
    }
    cleaned
}

/// The errors that need both the sources and the flags.
fn check_sources(
    sources: &[CopySource],
    args: &CopyArgs,
    flags: &CopyFlags,
    keyword: &str,
    loc: &Location,
) -> Result<(), Diagnostic> {
    if args.checksum.is_some() && !sources.iter().any(|s| s.kind == CopySourceKind::Http) {
        return Err(loc
            .error("--checksum can only be used with HTTP(S) sources")
            .hint("remove --checksum"));
    }
    let copy_count: usize = sources.iter().map(|s| s.paths.len()).sum();
    if copy_count > 1 && !flags.dest.ends_with('/') {
        return Err(loc
            .error_at(&args.dest, format!("when using {keyword} with more than one source file, the destination must be a directory and end with a /"))
            .hint(format!("write `{}/`", args.dest.trim_end_matches('/'))));
    }
    Ok(())
}

/// The file op's inputs — the base first, when there is one — and one copy action per source, or per path
/// of the local source with `--parents`.
fn copy_actions(
    base: Option<Input>,
    sources: Vec<CopySource>,
    flags: &CopyFlags,
    parents: bool,
) -> (Vec<Input>, Vec<FileAction>) {
    let mut inputs: Vec<Input> = base.into_iter().collect();
    let mut actions = Vec::new();
    for source in sources {
        let src_input = source_input_index(&mut inputs, base, source.input);
        let is_local = matches!(source.kind, CopySourceKind::Local { .. });
        let auto_extract = matches!(source.kind, CopySourceKind::Local { auto_extract: true });
        // Local and stage sources may be wildcards that match nothing: BuildKit copies nothing then (and
        // still makes the layer). With --parents it requires a source without wildcards to exist, so
        // those copy one source per action.
        let (allow_empty_wildcard, groups) = match (is_local, parents) {
            (true, true) => (
                None,
                source.paths.into_iter().map(|p| vec![p]).collect::<Vec<_>>(),
            ),
            (true, false) => (Some(true), vec![source.paths]),
            (false, _) => (Some(false), vec![source.paths]),
        };
        for src in groups {
            let allow_empty_wildcard =
                allow_empty_wildcard.unwrap_or_else(|| src.iter().all(|p| contains_wildcards(p)));
            actions.push(FileAction::Copy(Copy {
                src_input,
                src,
                dest: flags.dest.clone(),
                owner: flags.owner.clone(),
                mode: flags.mode.clone(),
                follow_symlinks: true,
                dir_contents_only: true,
                allow_wildcard: true,
                allow_empty_wildcard,
                create_dest_path: true,
                auto_extract,
                parents,
                exclude: flags.exclude.clone(),
                timestamp: None,
            }));
        }
    }
    (inputs, actions)
}

/// The index of `input` among the file op's inputs, added if new. Sources of one state share an input, but
/// never the base's (index 0), which is what the copy writes onto.
fn source_input_index(inputs: &mut Vec<Input>, base: Option<Input>, input: Input) -> u32 {
    let index = match inputs.iter().position(|i| *i == input) {
        Some(i) if base.is_none() || i > 0 => i,
        _ => {
            inputs.push(input);
            inputs.len() - 1
        }
    };
    index as u32
}

/// The progress line's text: the keyword and the rest of the instruction's first line as written.
fn copy_description(keyword: &str, loc: &Location) -> String {
    let rest = loc
        .original
        .split_once(char::is_whitespace)
        .map_or("", |(_, rest)| rest.trim());
    format!("{keyword} {}", first_line(rest))
}

/// BuildKit's history text: the flags that change the files (expanded), the sources as expanded, the
/// destination as written (expanded, but not joined to WORKDIR); --from, --link and --exclude are left out.
fn copy_history(keyword: &str, parents: bool, flags: &CopyFlags, gathered: &GatheredSources) -> String {
    let mut text = keyword.to_string();
    if parents {
        text.push_str(" --parents");
    }
    if let Some(chown) = &flags.chown {
        text.push_str(&format!(" --chown={chown}"));
    }
    if let Some(chmod) = &flags.mode {
        text.push_str(&format!(" --chmod={chmod}"));
    }
    for src in gathered.history_words.iter().chain(&gathered.history_heredocs) {
        text.push(' ');
        text.push_str(src);
    }
    format!("{text} {} # buildkit", flags.dest_word)
}

fn is_http_url(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// The name ADD gives a downloaded file: the last segment of the URL's path, else `index.html`.
fn url_filename(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && !path.ends_with("//"))
        .unwrap_or("index.html");
    name.to_string()
}

/// A git remote as BuildKit recognises one: `git@…`, `git://…`, or an http(s) URL of a `.git` path.
fn is_git_url(src: &str) -> bool {
    src.starts_with("git@")
        || src.starts_with("git://")
        || ((src.starts_with("https://") || src.starts_with("http://"))
            && src.split('#').next().is_some_and(|s| s.ends_with(".git")))
}
