//! Dockerfile → LLB conversion: which stages end up in the graph, what each RUN sees, and the image config.

use kiln_frontend::convert::{ConvertOptions, Converted, ImageResolver, NamedContext, convert};
use kiln_frontend::parser::parse;
use kiln_llb::image::ImageInfo;
use kiln_llb::{Entitlement, Exec, FileAction, NetworkMode, Op, Platform, SecurityMode, Source};

fn try_convert(dockerfile: &str, opts: &ConvertOptions) -> Result<Converted, String> {
    let df = parse(dockerfile).map_err(|e| e.to_string())?;
    convert(&df, opts, None).map_err(|e| e.to_string())
}

fn converted(dockerfile: &str) -> Converted {
    try_convert(dockerfile, &ConvertOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn with_args(dockerfile: &str, args: &[(&str, &str)]) -> Converted {
    let opts = ConvertOptions {
        build_args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..ConvertOptions::default()
    };
    try_convert(dockerfile, &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn execs(c: &Converted) -> Vec<&Exec> {
    c.definition
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Exec(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn images(c: &Converted) -> Vec<String> {
    c.definition
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Source(Source::Image { reference }) => Some(reference.clone()),
            _ => None,
        })
        .collect()
}

fn script(exec: &Exec) -> &str {
    exec.args.last().map(String::as_str).unwrap_or_default()
}

#[test]
fn only_stages_the_target_needs_are_in_the_graph() {
    let df = "FROM alpine AS unused\nRUN exit 1\n\
              FROM busybox AS deps\nRUN echo deps\n\
              FROM nosuchimage:404 AS other\nRUN echo other\n\
              FROM busybox\nCOPY --from=deps /x /x\nRUN echo final\n";
    let c = converted(df);
    let scripts: Vec<&str> = execs(&c).iter().map(|e| script(e)).collect();
    assert_eq!(scripts, ["echo deps", "echo final"]);
    assert_eq!(images(&c), ["busybox"]);

    let opts = ConvertOptions {
        target: Some("other".into()),
        ..ConvertOptions::default()
    };
    let c = try_convert(df, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(images(&c), ["nosuchimage:404"]);
    assert_eq!(execs(&c).len(), 1);
}

#[test]
fn run_mount_from_is_a_dependency() {
    let c = converted(
        "FROM busybox AS tools\nRUN echo tools\nFROM busybox\nRUN --mount=from=tools,target=/t,source=/bin ls /t\n",
    );
    let scripts: Vec<&str> = execs(&c).iter().map(|e| script(e)).collect();
    assert_eq!(scripts, ["echo tools", "ls /t"]);
    let last = execs(&c)[1];
    assert_eq!(last.mounts[1].dest, "/t");
    assert_eq!(last.mounts[1].selector, "/bin");
    assert!(last.mounts[1].readonly);
}

#[test]
fn stage_references_by_index_and_case_insensitive_name() {
    let c = converted(
        "FROM busybox AS Builder\nRUN echo b\nFROM busybox\nCOPY --from=0 /a /a\nCOPY --from=BUILDER /b /b\n",
    );
    assert_eq!(execs(&c).len(), 1);
}

#[test]
fn unknown_target_and_cycles_are_errors_with_locations() {
    let opts = ConvertOptions {
        target: Some("nope".into()),
        ..ConvertOptions::default()
    };
    let err = try_convert("FROM busybox AS a\n", &opts).unwrap_err();
    assert!(err.contains("target stage \"nope\" could not be found"), "{err}");
    assert!(err.contains("the stages are: a"), "{err}");

    let err = try_convert(
        "FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /y /y\n",
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(err.contains("circular dependency"), "{err}");
    assert!(err.contains(":4:") || err.contains(":2:"), "{err}");

    let err = try_convert(
        "FROM busybox AS a\nCOPY --from=a /x /x\n",
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(err.contains("circular dependency"), "{err}");
}

#[test]
fn a_cycle_error_names_every_stage_on_the_cycle() {
    // c is FROM b, b mounts a, a copies from c: the error is at the COPY that closes the cycle.
    let err = try_convert(
        "FROM busybox AS a\nCOPY --from=c /x /x\n\
         FROM busybox AS b\nRUN --mount=from=a,target=/a ls /a\n\
         FROM b AS c\n",
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(err.contains("circular dependency detected on stage: c"), "{err}");
    assert!(
        err.contains(r#"stage "c" → stage "b" → stage "a" → stage "c""#),
        "{err}"
    );
    assert!(err.contains(":2:"), "{err}");

    // Unnamed stages, reached by index, are named as progress lines name them.
    let err = try_convert(
        "FROM busybox AS b\nCOPY --from=1 /x /x\nFROM b\n",
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(err.contains(r#"(stage-1 → stage "b" → stage-1)"#), "{err}");
    assert!(err.contains(":2:"), "{err}");

    let err = try_convert(
        "FROM busybox AS a\nCOPY --from=a /x /x\n",
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(err.contains(r#"(stage "a" → stage "a")"#), "{err}");
}

#[test]
fn identical_steps_share_a_digest_across_stages_and_dockerfiles() {
    let a = converted("FROM busybox AS one\nRUN echo same\nFROM busybox\nRUN echo same\n");
    // Both stages' RUN are the same vertex: one exec in the graph.
    assert_eq!(execs(&a).len(), 1);
    let b = converted("# another file\nFROM busybox\n\n\nRUN echo same\n");
    assert_eq!(
        a.definition.root.map(|r| r.vertex),
        b.definition.root.map(|r| r.vertex)
    );
    let c = converted("FROM busybox\nRUN echo different\n");
    assert_ne!(a.definition.root, c.definition.root);
}

#[test]
fn global_args_scope_from_lines_and_need_redeclaring_in_stages() {
    let c = with_args(
        "ARG BASE=busybox\nARG VERSION=1\nFROM $BASE:${VERSION}\nRUN echo $VERSION\nARG VERSION\nRUN echo $VERSION\n",
        &[("VERSION", "2")],
    );
    assert_eq!(images(&c), ["busybox:2"]);
    let runs = execs(&c);
    assert!(
        !runs[0].env.iter().any(|e| e.starts_with("VERSION=")),
        "{:?}",
        runs[0].env
    );
    assert!(
        runs[1].env.contains(&"VERSION=2".to_string()),
        "{:?}",
        runs[1].env
    );
}

#[test]
fn arg_defaults_build_arg_overrides_and_env_wins() {
    let c = with_args(
        "FROM busybox\nARG A=default\nARG B=default\nENV B=from-env\nARG C\nWORKDIR /$A/$B\nRUN true\n",
        &[("B", "from-arg"), ("C", "c-val")],
    );
    assert_eq!(c.image.config.working_dir, "/default/from-env");
    let env = &execs(&c)[0].env;
    assert!(env.contains(&"A=default".to_string()));
    assert!(env.contains(&"B=from-env".to_string()));
    assert!(!env.contains(&"B=from-arg".to_string()));
    assert!(env.contains(&"C=c-val".to_string()));
    // ARGs reach RUN but never the image config.
    assert!(!c.image.config.env.iter().any(|e| e.starts_with("A=")));
}

#[test]
fn env_values_see_the_environment_from_before_the_instruction() {
    let c = converted("FROM busybox\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n");
    assert_eq!(c.image.config.get_env("def"), Some("hello"));
    assert_eq!(c.image.config.get_env("ghi"), Some("bye"));
}

#[test]
fn automatic_platform_args() {
    let opts = ConvertOptions {
        target_platform: Platform::parse("linux/arm64").unwrap_or_else(|e| panic!("{e}")),
        build_platform: Platform::parse("linux/amd64").unwrap_or_else(|e| panic!("{e}")),
        ..ConvertOptions::default()
    };
    let c = try_convert(
        "FROM --platform=$BUILDPLATFORM busybox AS build\nARG TARGETARCH\nARG BUILDOS\nRUN echo $TARGETARCH\n\
         FROM busybox\nARG TARGETPLATFORM\nCOPY --from=build /out /out\nRUN echo $TARGETPLATFORM\n",
        &opts,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let runs = execs(&c);
    assert!(runs[0].env.contains(&"TARGETARCH=arm64".to_string()));
    assert!(runs[0].env.contains(&"BUILDOS=linux".to_string()));
    assert!(runs[1].env.contains(&"TARGETPLATFORM=linux/arm64".to_string()));
    let platforms: Vec<String> = c
        .definition
        .vertices
        .iter()
        .filter(|v| matches!(v.op, Op::Exec(_)))
        .filter_map(|v| v.platform.as_ref().map(|p| p.to_string()))
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
}

#[test]
fn shell_form_uses_the_stage_shell_and_exec_form_is_verbatim() {
    let c = converted(
        "FROM busybox\nRUN echo a\nSHELL [\"/bin/bash\", \"-eu\", \"-c\"]\nRUN echo b\nRUN [\"echo\", \"c\"]\nCMD echo d\n",
    );
    let runs = execs(&c);
    assert_eq!(runs[0].args, ["/bin/sh", "-c", "echo a"]);
    assert_eq!(runs[1].args, ["/bin/bash", "-eu", "-c", "echo b"]);
    assert_eq!(runs[2].args, ["echo", "c"]);
    assert_eq!(
        c.image.config.cmd.as_deref(),
        Some(
            &[
                "/bin/bash".to_string(),
                "-eu".into(),
                "-c".into(),
                "echo d".into()
            ][..]
        )
    );
}

struct FakeResolver;

impl ImageResolver for FakeResolver {
    fn resolve(&self, reference: &str, _: &Platform) -> Result<Option<ImageInfo>, String> {
        let mut info = ImageInfo::default();
        if reference == "withcmd" {
            info.config.cmd = Some(vec!["base-cmd".into()]);
            info.config.env = vec!["PATH=/custom".into(), "FROMBASE=yes".into()];
            info.config.working_dir = "/base".into();
            info.config.on_build = vec!["RUN echo triggered".into()];
        }
        Ok(Some(info))
    }
}

#[test]
fn base_config_is_inherited_and_entrypoint_resets_inherited_cmd() {
    let df = parse("FROM withcmd\nWORKDIR sub\nRUN echo $FROMBASE\nENTRYPOINT [\"run\"]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let c = convert(&df, &ConvertOptions::default(), Some(&FakeResolver)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.image.config.working_dir, "/base/sub");
    assert_eq!(c.image.config.cmd, None);
    assert_eq!(c.image.config.get_env("PATH"), Some("/custom"));
    let runs = execs(&c);
    // The base's ONBUILD trigger runs first, and the trigger is not inherited further.
    assert_eq!(script(runs[0]), "echo triggered");
    assert!(c.image.config.on_build.is_empty());

    let df = parse("FROM withcmd\nCMD [\"mine\"]\nENTRYPOINT [\"run\"]\n").unwrap_or_else(|e| panic!("{e}"));
    let c = convert(&df, &ConvertOptions::default(), Some(&FakeResolver)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.image.config.cmd, Some(vec!["mine".to_string()]));
}

#[test]
fn image_config_from_instructions() {
    let c = converted(
        "FROM scratch\nENV A=1\nLABEL a=b \"c d\"=e\nEXPOSE 80 53/udp\nVOLUME /data\nUSER app:app\nSTOPSIGNAL SIGKILL\n\
         HEALTHCHECK --interval=5s --retries=3 CMD curl -f http://localhost/\nCMD [\"serve\"]\n",
    );
    let cfg = &c.image.config;
    assert_eq!(cfg.get_env("PATH"), Some(kiln_frontend::convert::DEFAULT_PATH));
    assert_eq!(cfg.labels.get("c d").map(String::as_str), Some("e"));
    assert!(cfg.exposed_ports.contains("80/tcp") && cfg.exposed_ports.contains("53/udp"));
    assert!(cfg.volumes.contains("/data"));
    assert_eq!(cfg.user, "app:app");
    assert_eq!(cfg.stop_signal.as_deref(), Some("SIGKILL"));
    let hc = cfg.healthcheck.clone().unwrap_or_default();
    assert_eq!(hc.test, ["CMD-SHELL", "curl -f http://localhost/"]);
    assert_eq!((hc.interval, hc.retries), (5_000_000_000, 3));
    assert!(c.image.history.iter().all(|h| h.empty_layer));
    assert_eq!(
        c.definition.root, None,
        "a scratch stage without file changes has no filesystem"
    );
}

#[test]
fn copy_semantics_reach_the_graph() {
    let c = converted(
        "FROM busybox\nWORKDIR /app\nCOPY --chown=1000:1000 --chmod=0644 --exclude=*.md a b ./\nADD https://example.com/x.tgz /dl/\nCOPY --link c /c\n",
    );
    let copies: Vec<&kiln_llb::Copy> = c
        .definition
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::File(f) => Some(f.actions.iter().filter_map(|a| match a {
                FileAction::Copy(copy) => Some(copy),
                _ => None,
            })),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(copies[0].src, ["a", "b"]);
    assert_eq!(copies[0].dest, "/app/");
    assert_eq!(copies[0].exclude, ["*.md"]);
    assert_eq!(copies[0].mode.as_deref(), Some("0644"));
    assert_eq!(copies[1].src, ["/x.tgz"]);
    assert!(!copies[1].auto_extract, "remote archives are not unpacked");
    assert!(c.definition.vertices.iter().any(
        |v| matches!(&v.op, Op::Source(Source::Http { url, .. }) if url == "https://example.com/x.tgz")
    ));
    // --link copies onto an empty tree and merges it over the stage.
    assert!(c.definition.vertices.iter().any(|v| matches!(v.op, Op::Merge)));

    let err = try_convert("FROM busybox\nCOPY a b /dest\n", &ConvertOptions::default()).unwrap_err();
    assert!(err.contains("must be a directory and end with a /"), "{err}");
}

#[test]
fn heredocs_in_run_and_copy() {
    let c = converted(
        "FROM busybox\nARG NAME=world\nRUN <<EOF\necho hi\necho there\nEOF\nCOPY <<EOT /greeting\nhello $NAME\nEOT\nRUN <<'EOF'\n#!/bin/sh\necho script\nEOF\n",
    );
    let runs = execs(&c);
    assert_eq!(script(runs[0]), "echo hi\necho there\n");
    assert_eq!(runs[1].args, ["/dev/pipes/EOF"]);
    let files: Vec<&str> = c
        .definition
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::File(f) => f.actions.iter().find_map(|a| match a {
                FileAction::Mkfile { data, .. } => Some(data.as_str()),
                _ => None,
            }),
            _ => None,
        })
        .collect();
    assert!(files.contains(&"hello world\n"), "{files:?}");
    assert!(files.contains(&"#!/bin/sh\necho script\n"), "{files:?}");
}

#[test]
fn named_contexts_replace_images_and_stages() {
    let mut opts = ConvertOptions::default();
    opts.named_contexts.insert("busybox".into(), NamedContext::Local);
    opts.named_contexts
        .insert("deps".into(), NamedContext::Image("registry.local/deps:1".into()));
    let c = try_convert("FROM busybox\nCOPY --from=deps /x /x\n", &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(images(&c), ["registry.local/deps:1"]);
    assert!(
        c.definition
            .vertices
            .iter()
            .any(|v| matches!(&v.op, Op::Source(Source::Local { name, .. }) if name == "context:busybox"))
    );
}

#[test]
fn steps_that_leave_the_sandbox_need_their_entitlement() {
    let df = "FROM busybox\nRUN --network=host true\nRUN --security=insecure true\nRUN --network=none true\nRUN true\n";
    let err = try_convert(df, &ConvertOptions::default()).unwrap_err();
    assert!(
        err.contains(":2:") && err.contains("--allow network.host"),
        "{err}"
    );
    let opts = |allow: &[Entitlement]| ConvertOptions {
        allow: allow.iter().copied().collect(),
        ..ConvertOptions::default()
    };
    let err = try_convert(df, &opts(&[Entitlement::NetworkHost])).unwrap_err();
    assert!(
        err.contains(":3:") && err.contains("--allow security.insecure"),
        "{err}"
    );
    let c = try_convert(df, &opts(&Entitlement::ALL)).unwrap();
    let modes: Vec<_> = execs(&c).iter().map(|e| (e.network, e.security)).collect();
    assert_eq!(
        modes,
        [
            (NetworkMode::Host, SecurityMode::Sandbox),
            (NetworkMode::Default, SecurityMode::Insecure),
            (NetworkMode::None, SecurityMode::Sandbox),
            (NetworkMode::Default, SecurityMode::Sandbox),
        ]
    );
    // A stage the target does not need cannot fail the build.
    let unused = "FROM busybox AS tools\nRUN --network=host true\nFROM busybox\nRUN true\n";
    try_convert(unused, &ConvertOptions::default()).unwrap();
    let err = try_convert(
        "FROM busybox\nRUN --security=root true\n",
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(err.contains("unsupported security mode"), "{err}");
}

#[test]
fn bad_instructions_fail_with_location_and_hint() {
    for (df, want) in [
        ("FROM busybox\nCOPY --bogus=1 a b\n", ":2:"),
        ("FROM busybox\nWORKDIR --x=1 /a\n", "does not take flags"),
        ("FROM busybox\nEXPOSE http\n", "invalid port"),
        (
            "FROM busybox\nRUN --mount=type=nfs,target=/x true\n",
            "unsupported mount type",
        ),
        (
            "FROM busybox\nRUN --network=bridge true\n",
            "unsupported network mode",
        ),
        ("FROM busybox\nCOPY --chmod=999 a /b\n", "invalid --chmod"),
        ("FROM busybox\nSTOPSIGNAL SIGNOPE\n", "invalid signal"),
        ("FROM busybox AS 1bad\n", "invalid name for build stage"),
        ("RUN echo\nFROM busybox\n", "must come after a FROM"),
        ("ARG X\nFROM $X\n", "should not be blank"),
        ("FROM busybox\nCOPY --from=7 /a /b\n", "invalid stage index"),
        (
            "FROM busybox\nHEALTHCHECK --interval=5 CMD true\n",
            "invalid --interval",
        ),
    ] {
        let err = try_convert(df, &ConvertOptions::default()).unwrap_err();
        assert!(err.contains(want), "{df:?}: {err}");
        assert!(err.contains("Dockerfile:"), "{df:?}: {err}");
    }
}

#[test]
fn undefined_variables_are_linted() {
    let c = converted(
        "ARG GLOBAL\nFROM busybox:$GLOBAL$MISSING\nARG DECLARED\nENV X=$DECLARED$UNDECLARED\nRUN echo $NOT_EXPANDED_BY_FRONTEND\n",
    );
    let rules: Vec<(&str, usize)> = c.lints.iter().map(|l| (l.rule, l.line)).collect();
    assert_eq!(rules, [("UndefinedArgInFrom", 2), ("UndefinedVar", 4)]);
    assert!(c.lints[1].message.contains("UNDECLARED"));
}

#[test]
fn unused_build_args_are_reported() {
    let c = with_args(
        "FROM busybox\nARG USED\n",
        &[("USED", "1"), ("UNUSED", "2"), ("HTTP_PROXY", "p")],
    );
    assert_eq!(c.unused_build_args, ["UNUSED"]);
}

// What follows pins behaviour checked against docker 20.10's BuildKit (`DOCKER_BUILDKIT=1 docker build`, the
// cases in bench/semantics/cases, compared with bench/compare-semantics.sh). Where 20.10 and current BuildKit
// differ, the test follows current BuildKit's dockerfile2llb and says what 20.10 writes instead.

fn history(c: &Converted) -> Vec<String> {
    c.image
        .history
        .iter()
        .map(|h| format!("{}{}", h.created_by, if h.empty_layer { " (empty)" } else { "" }))
        .collect()
}

fn env_of<'e>(exec: &'e Exec, key: &str) -> Option<&'e str> {
    exec.env
        .iter()
        .find_map(|e| e.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

const ARG_SCOPING: &str = "ARG GV=global\nARG GONLY=gonly\n\
    FROM busybox AS base\nARG GV\nARG NOVAL\nARG X=argx\nARG D=${X}-derived\nENV Y=envy\nARG Y=argy\n\
    ARG Z=argz\nENV Z=envz\nWORKDIR /$Y/$Z\nRUN echo base\n\
    FROM base AS child\nRUN echo child\nARG X\nARG GONLY\nRUN echo child2\n";

#[test]
fn the_last_of_arg_and_env_wins_for_run_and_expansion_but_not_for_the_config() {
    // BuildKit 20.10 ran `echo "... Y=$Y Z=$Z"` as `Y=argy Z=envz`, with Y=envy in the image's Env: an ARG
    // declared after an ENV of the same name replaces it in what later instructions see.
    let c = with_args(ARG_SCOPING, &[("X", "cli")]);
    let base = execs(&c)[0];
    assert_eq!(env_of(base, "Y"), Some("argy"));
    assert_eq!(env_of(base, "Z"), Some("envz"));
    assert_eq!(env_of(base, "X"), Some("cli"));
    assert_eq!(env_of(base, "D"), Some("cli-derived"));
    assert_eq!(env_of(base, "GV"), Some("global"));
    assert_eq!(env_of(base, "NOVAL"), None, "an ARG without a value is not set");
    assert_eq!(env_of(base, "GONLY"), None, "a global ARG needs redeclaring");
    assert_eq!(base.cwd, "/argy/envz");
    assert!(c.image.config.env.contains(&"Y=envy".to_string()));
    assert!(c.image.config.env.contains(&"Z=envz".to_string()));
}

#[test]
fn a_stage_built_from_another_keeps_its_arg_values_under_its_env() {
    // BuildKit 20.10 ran the child's `echo "X=${X-unset} Y=$Y GV=${GV-unset} D=${D-unset}"` as
    // `X=cli Y=envy GV=global D=cli-derived`: the parent's ARG values carry over, and its ENV is applied over them
    // again (Y is envy here, though the parent's RUN saw argy).
    let c = with_args(ARG_SCOPING, &[("X", "cli")]);
    let child = execs(&c)[1];
    assert_eq!(env_of(child, "X"), Some("cli"));
    assert_eq!(env_of(child, "GV"), Some("global"));
    assert_eq!(env_of(child, "D"), Some("cli-derived"));
    assert_eq!(env_of(child, "Y"), Some("envy"));
    assert_eq!(env_of(execs(&c)[2], "GONLY"), Some("gonly"));
}

#[test]
fn arg_and_run_history_list_every_declared_arg() {
    let c = with_args(ARG_SCOPING, &[("X", "cli")]);
    assert_eq!(
        history(&c),
        [
            // 20.10 writes the ARG lines as the Dockerfile has them (`ARG GV`, `ARG X=argx`, `ARG X`, `ARG GONLY`);
            // current BuildKit writes the value in effect.
            "ARG GV=global (empty)",
            "ARG NOVAL (empty)",
            "ARG X=cli (empty)",
            "ARG D=cli-derived (empty)",
            "ENV Y=envy (empty)",
            "ARG Y=argy (empty)",
            "ARG Z=argz (empty)",
            "ENV Z=envz (empty)",
            "WORKDIR /argy/envz",
            // As 20.10 wrote it: every declared ARG, `NOVAL=` without a value, and the value the RUN sees
            // (Y=argy and Z=envz: the last of ARG and ENV).
            "RUN |6 GV=global NOVAL= X=cli D=cli-derived Y=argy Z=envz /bin/sh -c echo base # buildkit",
            // 20.10 lists only the stage's own ARGs here (`RUN /bin/sh -c echo child`, then
            // `RUN |2 X=cli GONLY=gonly ...`); current BuildKit starts from the parent's list, a name once.
            "RUN |6 GV=global NOVAL= X=cli D=cli-derived Y=envy Z=envz /bin/sh -c echo child # buildkit",
            "ARG X=cli (empty)",
            "ARG GONLY=gonly (empty)",
            "RUN |7 GV=global NOVAL= X=cli D=cli-derived Y=envy Z=envz GONLY=gonly /bin/sh -c echo child2 # buildkit",
        ]
    );
    // A declared proxy arg is listed like any other (20.10: `RUN |1 HTTP_PROXY=http://proxy:3128 ...`);
    // an undeclared one reaches RUN but not the history.
    let c = with_args(
        "FROM busybox\nARG HTTP_PROXY\nRUN true\n",
        &[("HTTP_PROXY", "http://proxy:3128"), ("NO_PROXY", "local")],
    );
    assert_eq!(
        history(&c)[1],
        "RUN |1 HTTP_PROXY=http://proxy:3128 /bin/sh -c true # buildkit"
    );
    assert_eq!(env_of(execs(&c)[0], "NO_PROXY"), Some("local"));
}

#[test]
fn config_instruction_history_and_workdir_root() {
    let c = converted(
        "FROM busybox AS src\nRUN echo x > /x\n\
         FROM busybox\nWORKDIR /\nWORKDIR /app\nEXPOSE 8080 443/tcp 53/udp 7000-7001\nONBUILD RUN echo hi\n\
         HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=4 CMD [\"/bin/true\", \"arg\"]\n\
         ARG OWNER=1234\nCOPY --chown=${OWNER}:${OWNER} --chmod=0755 f.txt g*.txt /c/$OWNER/\n\
         COPY --from=src --link /x /y\nADD a.tar.gz /z/\nCOPY <<EOF /h\nhi\nEOF\nMAINTAINER me\n",
    );
    assert_eq!(
        history(&c),
        [
            // 20.10: `WORKDIR /` makes no layer.
            "WORKDIR / (empty)",
            "WORKDIR /app",
            // 20.10 writes `EXPOSE map[443/tcp:{} 53/udp:{} 7000/tcp:{} 7001/tcp:{} 8080/tcp:{}]`.
            "EXPOSE [8080/tcp 443/tcp 53/udp 7000/tcp 7001/tcp] (empty)",
            // 20.10: no history entry for ONBUILD. It writes HEALTHCHECK as
            // `HEALTHCHECK &{["CMD" "/bin/true" "arg"] "30s" "5s" "10s" '\x04'}`.
            "HEALTHCHECK {Test:[CMD /bin/true arg] Interval:30s Timeout:5s StartPeriod:10s StartInterval:0s Retries:4} (empty)",
            "ARG OWNER=1234 (empty)",
            // 20.10 writes `COPY f.txt g*.txt /c/1234/ # buildkit` (no --chown/--chmod); both expand the words
            // and leave --from and --link out.
            "COPY --chown=1234:1234 --chmod=0755 f.txt g*.txt /c/1234/ # buildkit",
            "COPY /x /y # buildkit",
            "ADD a.tar.gz /z/ # buildkit",
            "COPY <<EOF /h # buildkit",
            "MAINTAINER me (empty)",
        ]
    );
    let mkdirs = c
        .definition
        .vertices
        .iter()
        .filter(|v| matches!(&v.op, Op::File(f) if f.actions.iter().any(|a| matches!(a, FileAction::Mkdir { .. }))))
        .count();
    assert_eq!(mkdirs, 1, "WORKDIR / creates nothing");
    assert_eq!(c.image.config.on_build, ["RUN echo hi"]);
}

fn copies(c: &Converted) -> Vec<&kiln_llb::Copy> {
    c.definition
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::File(f) => Some(f.actions.iter().filter_map(|a| match a {
                FileAction::Copy(copy) => Some(copy),
                _ => None,
            })),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn wildcards_may_match_nothing() {
    // 20.10 built `COPY nomatch* /d/` and `COPY f.txt nomatch* /e/`: nothing copied for the pattern.
    let c = converted("FROM busybox AS s\nFROM busybox\nCOPY f.txt nomatch* /e/\nCOPY --from=s /none* /f/\n");
    assert!(copies(&c).iter().all(|c| c.allow_empty_wildcard));
    // With --parents, BuildKit requires a source without wildcards to exist: one action per source.
    let c = converted("FROM busybox\nCOPY --parents a/./b.txt c/*.txt /dst/\n");
    let flags: Vec<(Vec<String>, bool)> = copies(&c)
        .iter()
        .map(|c| (c.src.clone(), c.allow_empty_wildcard))
        .collect();
    assert_eq!(
        flags,
        [
            (vec!["a/./b.txt".to_string()], false),
            (vec!["c/*.txt".to_string()], true)
        ]
    );
}

#[test]
fn maintainer_sets_the_author_and_cmd_sets_args_escaped_like_buildkit() {
    let c = converted("FROM scratch\nMAINTAINER Jane <jane@example.com>\nENTRYPOINT [\"x\"]\n");
    assert_eq!(c.image.author.as_deref(), Some("Jane <jane@example.com>"));
    assert!(
        c.image.config.labels.is_empty(),
        "no maintainer label: {:?}",
        c.image.config.labels
    );
    assert!(
        !c.image.config.args_escaped,
        "ENTRYPOINT alone leaves ArgsEscaped unset"
    );
    let c = converted("FROM scratch\nCMD [\"x\"]\n");
    assert!(c.image.config.args_escaped);
}
