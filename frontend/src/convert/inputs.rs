//! The filesystems instructions read besides their own stage's: the build context, `--build-context` named
//! contexts, images, and other stages, with the LLB source vertices that load them.

use super::{CONTEXT_NAME, Converter, NamedContext, StageResult, StageState};
use crate::Diagnostic;
use crate::instructions::Location;
use kiln_llb::image::ImageInfo;
use kiln_llb::{Copy, FileAction, FileOp, Input, Meta, Op, Platform, Source, Vertex};

impl<'a> Converter<'a> {
    /// Adds a source vertex; sources belong to no stage.
    pub(super) fn source(
        &mut self,
        source: Source,
        platform: Option<&Platform>,
        description: String,
    ) -> Input {
        let meta = Meta {
            description,
            ..Meta::default()
        };
        self.definition
            .add(Vertex::new(Op::Source(source), vec![], platform.cloned(), meta))
    }

    /// The build context, less what `.dockerignore` excludes.
    pub(super) fn context_source(&mut self) -> Input {
        let exclude = self.opts.ignore_patterns.clone();
        self.source(
            Source::Local {
                name: CONTEXT_NAME.into(),
                include: vec![],
                exclude,
            },
            None,
            "[internal] load build context".into(),
        )
    }

    /// The filesystem and config a named context provides, if `name` is one. `as_rootfs` is for FROM: a local
    /// directory is then copied into a layer of its own, since a stage's rootfs must be a filesystem in the store,
    /// while COPY --from and RUN --mount read a local directory in place.
    pub(super) fn named_context(
        &mut self,
        name: &str,
        platform: &Platform,
        as_rootfs: bool,
    ) -> Result<Option<StageResult>, String> {
        let Some(context) = self.opts.named_contexts.get(name).cloned() else {
            return Ok(None);
        };
        let (state, image) = match context {
            NamedContext::Local => {
                let input = self.source(
                    Source::Local {
                        name: format!("{CONTEXT_NAME}:{name}"),
                        include: vec![],
                        exclude: vec![],
                    },
                    None,
                    format!("[context {name}] load from client"),
                );
                let state = if as_rootfs {
                    let copy = FileAction::Copy(Copy {
                        src_input: 0,
                        src: vec!["/".into()],
                        dest: "/".into(),
                        follow_symlinks: false,
                        dir_contents_only: true,
                        allow_wildcard: false,
                        allow_empty_wildcard: false,
                        create_dest_path: true,
                        ..Copy::default()
                    });
                    let op = Op::File(FileOp {
                        has_base: false,
                        actions: vec![copy],
                    });
                    let meta = Meta {
                        description: format!("[context {name}] copy into a layer"),
                        ..Meta::default()
                    };
                    self.definition
                        .add(Vertex::new(op, vec![input], Some(platform.clone()), meta))
                } else {
                    input
                };
                (Some(state), ImageInfo::default())
            }
            NamedContext::Image(reference) => {
                let image = self.resolve_image(&reference, platform)?;
                let input = self.source(
                    Source::Image {
                        reference: reference.clone(),
                    },
                    Some(platform),
                    format!("[context {name}] {reference}"),
                );
                (Some(input), image)
            }
            NamedContext::OciLayout { path, reference } => {
                let input = self.source(
                    Source::OciLayout {
                        path: path.clone(),
                        reference: reference.clone(),
                    },
                    Some(platform),
                    format!("[context {name}] oci-layout://{path}:{reference}"),
                );
                (Some(input), ImageInfo::default())
            }
        };
        Ok(Some(StageResult::image(state, image, platform)))
    }

    /// A base image's config from the resolver; an empty one without a resolver or when it knows none.
    pub(super) fn resolve_image(&self, reference: &str, platform: &Platform) -> Result<ImageInfo, String> {
        match self.resolver {
            Some(resolver) => Ok(resolver.resolve(reference, platform)?.unwrap_or_default()),
            None => Ok(ImageInfo::default()),
        }
    }

    /// The filesystem a `--from=`/`from=` names: a named context, a stage, or an image.
    pub(super) fn named_input(
        &mut self,
        st: &StageState,
        from: &str,
        loc: &Location,
    ) -> Result<Input, Diagnostic> {
        if let Some(result) = self
            .named_context(from, &st.platform, false)
            .map_err(|e| loc.error_at(from, e))?
        {
            return Ok(self.state_or_scratch(result.state, st));
        }
        if let Some(index) = self.stage_ref(from) {
            let result = self.stage_result(index, loc)?;
            return Ok(self.state_or_scratch(result.state, st));
        }
        if from.eq_ignore_ascii_case("scratch") {
            return Ok(self.state_or_scratch(None, st));
        }
        if from.parse::<usize>().is_ok() {
            return Err(loc
                .error_at(
                    from,
                    format!(
                        "invalid stage index {from}: the Dockerfile has {} stages",
                        self.stages.len()
                    ),
                )
                .hint("stage indexes count FROM lines from 0"));
        }
        Ok(self.source(
            Source::Image {
                reference: from.to_string(),
            },
            Some(&st.platform),
            format!("[{}] FROM {from}", st.name),
        ))
    }

    /// A filesystem to read from, also where the stage or context named is empty (`FROM scratch`).
    fn state_or_scratch(&mut self, state: Option<Input>, st: &StageState) -> Input {
        match state {
            Some(input) => input,
            None => self.source(Source::Scratch, Some(&st.platform), "scratch".into()),
        }
    }
}
