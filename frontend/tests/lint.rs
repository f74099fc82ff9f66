//! The syntax-level build checks: for each rule a Dockerfile that trips it and a near-identical one that
//! doesn't, the BuildKit subtleties each rule has, and the `# check=` directive.

use kiln_frontend::lint::{CheckConfig, LintWarning, lint};
use kiln_frontend::parser::parse;

fn lint_src(src: &str) -> Vec<LintWarning> {
    let df = parse(src).unwrap_or_else(|e| panic!("test Dockerfile must parse: {e}\n{src}"));
    lint(&df)
}

fn findings(src: &str, rule: &str) -> Vec<LintWarning> {
    lint_src(src).into_iter().filter(|w| w.rule == rule).collect()
}

/// Exactly one finding of `rule`, on `line`, whose message contains `message`.
#[track_caller]
fn assert_one(src: &str, rule: &str, line: usize, message: &str) -> LintWarning {
    let found = findings(src, rule);
    assert_eq!(
        found.len(),
        1,
        "expected one {rule} finding in:\n{src}\ngot: {found:#?}"
    );
    let w = found.into_iter().next().expect("length checked above");
    assert_eq!(w.line, line, "{rule} line in:\n{src}");
    assert!(
        w.message.contains(message),
        "{rule} message {:?} lacks {message:?}",
        w.message
    );
    assert!(
        !w.fix.is_empty() && !w.fix.contains('\n'),
        "{rule} fix must be one line: {:?}",
        w.fix
    );
    w
}

#[track_caller]
fn assert_none(src: &str, rule: &str) {
    let found = findings(src, rule);
    assert!(
        found.is_empty(),
        "expected no {rule} finding in:\n{src}\ngot: {found:#?}"
    );
}

#[track_caller]
fn assert_lines(src: &str, rule: &str, lines: &[usize]) {
    let got: Vec<usize> = findings(src, rule).iter().map(|w| w.line).collect();
    assert_eq!(got, lines, "{rule} lines in:\n{src}");
}

// ---- StageNameCasing ----

#[test]
fn stage_name_casing() {
    assert_one(
        "FROM alpine AS Builder\n",
        "StageNameCasing",
        1,
        "Stage name 'Builder' should be lowercase",
    );
    assert_none("FROM alpine AS builder\n", "StageNameCasing");
    // Flags are not arguments: the name is still the third word after the keyword.
    assert_one(
        "FROM --platform=$BUILDPLATFORM golang AS Build\n",
        "StageNameCasing",
        1,
        "'Build'",
    );
    assert_none("FROM alpine\n", "StageNameCasing");
}

// ---- FromAsCasing ----

#[test]
fn from_as_casing() {
    assert_one(
        "FROM alpine\nFROM alpine as builder\n",
        "FromAsCasing",
        2,
        "'as' and 'FROM' keywords' casing do not match",
    );
    assert_one(
        "from alpine AS builder\n",
        "FromAsCasing",
        1,
        "'AS' and 'from' keywords' casing do not match",
    );
    assert_one("FROM alpine As builder\n", "FromAsCasing", 1, "'As' and 'FROM'");
    assert_none("FROM alpine AS builder\n", "FromAsCasing");
    assert_none("from alpine as builder\n", "FromAsCasing");
}

#[test]
fn from_as_casing_leaves_mixed_case_from_to_instruction_casing() {
    let src = "From alpine as builder\n";
    assert_none(src, "FromAsCasing");
    assert_one(src, "ConsistentInstructionCasing", 1, "Command 'From'");
}

// ---- NoEmptyContinuation ----

#[test]
fn no_empty_continuation() {
    // BuildKit reports the instruction's last line; a comment inside a continuation is not an empty line.
    let w = assert_one(
        "FROM alpine\nRUN echo a \\\n\n    b\n",
        "NoEmptyContinuation",
        4,
        "Empty continuation line",
    );
    assert_eq!(w.message, "Empty continuation line");
    assert_none(
        "FROM alpine\nRUN echo a \\\n# note\n    b\n\n",
        "NoEmptyContinuation",
    );
}

#[test]
fn no_empty_continuation_once_per_instruction() {
    let src = "FROM alpine\nRUN a \\\n\n   \\\n  \n b\nCOPY x \\\n\n y\n";
    assert_lines(src, "NoEmptyContinuation", &[6, 9]);
}

#[test]
fn no_empty_continuation_line_excludes_heredoc_body() {
    let src = "FROM alpine\nRUN <<EOF \\\n\n  && true\necho hi\nEOF\n";
    assert_lines(src, "NoEmptyContinuation", &[4]);
}

#[test]
fn no_empty_continuation_comes_from_parser_warnings_only() {
    let mut df = parse("FROM alpine\n").expect("parses");
    assert!(lint(&df).is_empty());
    df.warnings.push(kiln_frontend::ast::ParseWarning {
        rule: "NoEmptyContinuation",
        message: "empty continuation line".into(),
        line: 7,
    });
    df.warnings.push(kiln_frontend::ast::ParseWarning {
        rule: "SomethingElse",
        message: "not a lint finding".into(),
        line: 8,
    });
    let got = lint(&df);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!((got[0].rule, got[0].line), ("NoEmptyContinuation", 7));
}

// ---- ConsistentInstructionCasing ----

#[test]
fn instruction_casing_against_uppercase_majority() {
    assert_one(
        "FROM alpine\nRUN echo a\nrun echo b\n",
        "ConsistentInstructionCasing",
        3,
        "Command 'run' should match the case of the command majority (uppercase)",
    );
    assert_none(
        "FROM alpine\nRUN echo a\nRUN echo b\n",
        "ConsistentInstructionCasing",
    );
}

#[test]
fn instruction_casing_against_lowercase_majority() {
    assert_one(
        "from alpine\nrun echo a\nRUN echo b\n",
        "ConsistentInstructionCasing",
        3,
        "Command 'RUN' should match the case of the command majority (lowercase)",
    );
    assert_none(
        "from alpine\nrun echo a\nrun echo b\n",
        "ConsistentInstructionCasing",
    );
}

#[test]
fn instruction_casing_tie_goes_to_uppercase() {
    assert_one(
        "from alpine\nRUN echo a\n",
        "ConsistentInstructionCasing",
        1,
        "Command 'from'",
    );
}

#[test]
fn instruction_casing_flags_mixed_case_without_counting_it() {
    // `Run` and `Env` don't vote, so the single lowercase `run` wins; the mixed ones are still reported.
    let src = "from alpine\nRun echo a\nEnv A=b\n";
    assert_lines(src, "ConsistentInstructionCasing", &[2, 3]);
    assert_one(
        "from alpine\nRun echo a\n",
        "ConsistentInstructionCasing",
        2,
        "Command 'Run' should match the case of the command majority (lowercase)",
    );
}

#[test]
fn instruction_casing_ignores_global_args() {
    // Instructions before the first FROM belong to no stage; BuildKit neither counts nor checks them.
    assert_none(
        "arg BASE=alpine\nFROM alpine\nRUN true\n",
        "ConsistentInstructionCasing",
    );
    // Were the lowercase `arg` counted, lowercase would win and FROM would be the one reported.
    assert_one(
        "arg BASE=alpine\nFROM alpine\nrun true\n",
        "ConsistentInstructionCasing",
        3,
        "Command 'run'",
    );
}

// ---- DuplicateStageName ----

#[test]
fn duplicate_stage_name() {
    assert_one(
        "FROM alpine AS base\nRUN true\nFROM alpine AS base\n",
        "DuplicateStageName",
        3,
        "Duplicate stage name \"base\", stage names should be unique",
    );
    assert_none(
        "FROM alpine AS base\nRUN true\nFROM alpine AS base2\n",
        "DuplicateStageName",
    );
}

#[test]
fn duplicate_stage_name_is_case_insensitive() {
    assert_one(
        "FROM alpine AS base\nFROM alpine AS Base\n",
        "DuplicateStageName",
        2,
        "\"base\"",
    );
}

// ---- ReservedStageName ----

#[test]
fn reserved_stage_name() {
    assert_one(
        "FROM alpine AS scratch\n",
        "ReservedStageName",
        1,
        "Stage name should not use the same name as reserved stage \"scratch\"",
    );
    assert_one(
        "FROM alpine\nFROM alpine AS Context\n",
        "ReservedStageName",
        2,
        "reserved stage \"context\"",
    );
    assert_none("FROM alpine AS scratchpad\n", "ReservedStageName");
    assert_none("FROM scratch\n", "ReservedStageName");
}

// ---- JSONArgsRecommended ----

#[test]
fn json_args_recommended_for_shell_form() {
    let w = assert_one(
        "FROM alpine\nCMD echo hello\n",
        "JSONArgsRecommended",
        2,
        "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals",
    );
    assert!(w.fix.contains(r#"CMD ["echo", "hello"]"#), "fix: {}", w.fix);
    assert_none("FROM alpine\nCMD [\"echo\", \"hello\"]\n", "JSONArgsRecommended");

    assert_one(
        "FROM alpine\nENTRYPOINT my-server --port 80\n",
        "JSONArgsRecommended",
        2,
        "for ENTRYPOINT",
    );
    assert_none(
        "FROM alpine\nENTRYPOINT [\"my-server\", \"--port\", \"80\"]\n",
        "JSONArgsRecommended",
    );
}

#[test]
fn json_args_recommended_names_the_keyword_as_written() {
    assert_one(
        "from alpine\ncmd echo hello\n",
        "JSONArgsRecommended",
        2,
        "for cmd to prevent",
    );
}

#[test]
fn json_args_recommended_not_for_run() {
    assert_none("FROM alpine\nRUN echo hello\n", "JSONArgsRecommended");
}

#[test]
fn json_args_recommended_silenced_by_earlier_shell_in_stage() {
    assert_none(
        "FROM alpine\nSHELL [\"/bin/ash\", \"-c\"]\nCMD echo hello\n",
        "JSONArgsRecommended",
    );
    // A SHELL after the CMD does not change the shell the CMD was committed with.
    assert_one(
        "FROM alpine\nCMD echo hello\nSHELL [\"/bin/ash\", \"-c\"]\n",
        "JSONArgsRecommended",
        2,
        "for CMD",
    );
}

#[test]
fn json_args_recommended_shell_is_inherited_only_from_the_base_stage() {
    let inherited = "FROM alpine AS base\nSHELL [\"/bin/ash\", \"-c\"]\nFROM base\nCMD echo hello\n";
    assert_none(inherited, "JSONArgsRecommended");
    let unrelated = "FROM alpine AS base\nSHELL [\"/bin/ash\", \"-c\"]\nFROM alpine\nCMD echo hello\n";
    assert_one(unrelated, "JSONArgsRecommended", 4, "for CMD");
}

// ---- MaintainerDeprecated ----

#[test]
fn maintainer_deprecated() {
    let w = assert_one(
        "FROM alpine\nMAINTAINER Jane Doe <jane@example.com>\n",
        "MaintainerDeprecated",
        2,
        "Maintainer instruction is deprecated in favor of using label",
    );
    assert!(
        w.fix
            .contains(r#"LABEL org.opencontainers.image.authors="Jane Doe <jane@example.com>""#),
        "{}",
        w.fix
    );
    assert_none(
        "FROM alpine\nLABEL org.opencontainers.image.authors=\"Jane Doe <jane@example.com>\"\n",
        "MaintainerDeprecated",
    );
}

// ---- WorkdirRelativePath ----

#[test]
fn workdir_relative_path() {
    assert_one(
        "FROM nginx\nWORKDIR usr/share/nginx/html\n",
        "WorkdirRelativePath",
        2,
        "Relative workdir \"usr/share/nginx/html\" can have unexpected results if the base image changes",
    );
    assert_none(
        "FROM nginx\nWORKDIR /usr/share/nginx/html\n",
        "WorkdirRelativePath",
    );
    let w = assert_one(
        "FROM nginx\nWORKDIR ./html\n",
        "WorkdirRelativePath",
        2,
        "\"./html\"",
    );
    assert!(w.fix.contains("`WORKDIR /html`"), "{}", w.fix);
}

#[test]
fn workdir_relative_after_absolute_is_fine() {
    assert_none("FROM alpine\nWORKDIR /app\nWORKDIR src\n", "WorkdirRelativePath");
}

#[test]
fn workdir_only_first_relative_is_reported() {
    // Fixing the first one fixes the rest, so BuildKit stops after it.
    assert_lines(
        "FROM alpine\nWORKDIR app\nWORKDIR src\n",
        "WorkdirRelativePath",
        &[2],
    );
}

#[test]
fn workdir_state_is_per_stage_and_inherited_from_base_stage() {
    assert_one(
        "FROM alpine AS base\nWORKDIR /app\nFROM alpine\nWORKDIR src\n",
        "WorkdirRelativePath",
        4,
        "\"src\"",
    );
    assert_none(
        "FROM alpine AS base\nWORKDIR /app\nFROM base\nWORKDIR src\n",
        "WorkdirRelativePath",
    );
}

#[test]
fn workdir_starting_with_variable_is_left_to_expansion() {
    assert_none(
        "FROM alpine\nENV APP=/app\nWORKDIR $APP/src\n",
        "WorkdirRelativePath",
    );
}

// ---- MultipleInstructionsDisallowed ----

#[test]
fn multiple_cmd_reports_the_overridden_one() {
    let w = assert_one(
        "FROM alpine\nCMD [\"a\"]\nCMD [\"b\"]\n",
        "MultipleInstructionsDisallowed",
        2,
        "Multiple CMD instructions should not be used in the same stage because only the last one will be used",
    );
    assert!(w.fix.contains("line 3"), "{}", w.fix);
    assert_none(
        "FROM alpine\nCMD [\"a\"]\nFROM alpine\nCMD [\"b\"]\n",
        "MultipleInstructionsDisallowed",
    );
}

#[test]
fn multiple_instructions_warn_on_each_earlier_one() {
    let src = "FROM alpine\nENTRYPOINT [\"a\"]\nENTRYPOINT [\"b\"]\nENTRYPOINT [\"c\"]\n";
    assert_lines(src, "MultipleInstructionsDisallowed", &[2, 3]);
    assert!(
        findings(src, "MultipleInstructionsDisallowed")
            .iter()
            .all(|w| w.message.contains("ENTRYPOINT"))
    );
}

#[test]
fn multiple_healthchecks() {
    assert_one(
        "FROM alpine\nHEALTHCHECK CMD [\"true\"]\nHEALTHCHECK NONE\n",
        "MultipleInstructionsDisallowed",
        2,
        "Multiple HEALTHCHECK instructions",
    );
    assert_none(
        "FROM alpine\nHEALTHCHECK NONE\n",
        "MultipleInstructionsDisallowed",
    );
}

#[test]
fn different_kinds_do_not_count_as_multiple() {
    let src = "FROM alpine\nHEALTHCHECK CMD [\"true\"]\nENTRYPOINT [\"a\"]\nCMD [\"b\"]\n";
    assert_none(src, "MultipleInstructionsDisallowed");
}

// ---- LegacyKeyValueFormat ----

#[test]
fn legacy_key_value_env() {
    let w = assert_one(
        "FROM alpine\nENV DEPS curl git\n",
        "LegacyKeyValueFormat",
        2,
        "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format",
    );
    assert!(w.fix.contains(r#"ENV DEPS="curl git""#), "{}", w.fix);
    assert_none("FROM alpine\nENV DEPS=\"curl git\"\n", "LegacyKeyValueFormat");
}

#[test]
fn legacy_key_value_label() {
    assert_one(
        "FROM alpine\nLABEL maintainer jane\n",
        "LegacyKeyValueFormat",
        2,
        "\"LABEL key=value\" should be used instead of legacy \"LABEL key value\" format",
    );
    assert_none("FROM alpine\nLABEL maintainer=jane\n", "LegacyKeyValueFormat");
}

// ---- SecretsUsedInArgOrEnv ----

#[test]
fn secrets_in_arg_and_env() {
    assert_one(
        "FROM alpine\nARG AWS_SECRET_ACCESS_KEY\n",
        "SecretsUsedInArgOrEnv",
        2,
        "Do not use ARG or ENV instructions for sensitive data (ARG \"AWS_SECRET_ACCESS_KEY\")",
    );
    assert_one(
        "FROM alpine\nENV GITHUB_TOKEN=abc\n",
        "SecretsUsedInArgOrEnv",
        2,
        "(ENV \"GITHUB_TOKEN\")",
    );
    assert_none("FROM alpine\nARG AWS_REGION\n", "SecretsUsedInArgOrEnv");
    assert_none("FROM alpine\nENV GITHUB_USER=abc\n", "SecretsUsedInArgOrEnv");
}

#[test]
fn secret_key_matching_follows_buildkit_word_rules() {
    // (key, flagged): a token must be a whole `_`-separated part, any case; public/file/version parts excuse.
    let cases = [
        ("API_KEY", true),
        ("apikey", true),
        ("db_Password", true),
        ("AUTH", true),
        ("MY_CREDENTIALS", true),
        ("PWORD", true),
        ("passwd_hash", true),
        ("KEYBOARD_LAYOUT", false),
        ("MONKEY", false),
        ("TOKENIZER", false),
        ("API-KEY", false),
        ("PUBLIC_KEY", false),
        ("SESSION_SECRET_FILE", false),
        ("AUTH_MODULE_VERSION", false),
    ];
    for (key, flagged) in cases {
        let src = format!("FROM alpine\nARG {key}=x\n");
        assert_eq!(
            !findings(&src, "SecretsUsedInArgOrEnv").is_empty(),
            flagged,
            "key {key}"
        );
    }
}

#[test]
fn secrets_each_arg_on_a_line_is_checked() {
    assert_lines(
        "FROM alpine\nARG A_TOKEN B C_PASSWORD=x\n",
        "SecretsUsedInArgOrEnv",
        &[2, 2],
    );
}

#[test]
fn secrets_not_checked_for_global_args() {
    // BuildKit only checks ARGs when a stage dispatches them.
    assert_none("ARG API_KEY\nFROM alpine\n", "SecretsUsedInArgOrEnv");
    assert_one(
        "ARG API_KEY\nFROM alpine\nARG API_KEY\n",
        "SecretsUsedInArgOrEnv",
        3,
        "API_KEY",
    );
}

// ---- ONBUILD ----

#[test]
fn onbuild_triggers_are_not_checked_in_their_own_stage() {
    let src = "FROM alpine\nONBUILD CMD echo a\nONBUILD CMD echo b\nONBUILD ENV TOKEN x\n";
    assert!(lint_src(src).is_empty(), "{:#?}", lint_src(src));
}

// ---- whole-file behaviour ----

#[test]
fn clean_dockerfile_has_no_findings() {
    let src = "# syntax=docker/dockerfile:1\n\
               ARG BASE=alpine\n\
               FROM alpine AS build\n\
               WORKDIR /src\n\
               ENV CGO_ENABLED=0\n\
               RUN echo build\n\
               FROM scratch\n\
               COPY --from=build /src /app\n\
               ENTRYPOINT [\"/app/run\"]\n";
    assert_eq!(lint_src(src), vec![]);
}

#[test]
fn findings_are_sorted_by_line() {
    let src = "FROM alpine AS Base\nCMD [\"a\"]\nMAINTAINER me\nCMD b\nENV K v\n";
    let got: Vec<(usize, &str)> = lint_src(src).iter().map(|w| (w.line, w.rule)).collect();
    assert_eq!(
        got,
        vec![
            (1, "StageNameCasing"),
            (2, "MultipleInstructionsDisallowed"),
            (3, "MaintainerDeprecated"),
            (4, "JSONArgsRecommended"),
            (5, "LegacyKeyValueFormat"),
        ]
    );
}

#[test]
fn display_is_two_lines_without_file_name() {
    let w = LintWarning {
        rule: "FromAsCasing",
        line: 3,
        message: "'as' and 'FROM' keywords' casing do not match".into(),
        fix: "write `AS` to match `FROM`".into(),
    };
    assert_eq!(
        w.to_string(),
        "3: FromAsCasing: 'as' and 'FROM' keywords' casing do not match\n  fix: write `AS` to match `FROM`"
    );
}

#[test]
fn url_is_the_kebab_case_rule_page() {
    let cases = [
        ("JSONArgsRecommended", "json-args-recommended"),
        ("FromAsCasing", "from-as-casing"),
        ("NoEmptyContinuation", "no-empty-continuation"),
        ("SecretsUsedInArgOrEnv", "secrets-used-in-arg-or-env"),
        ("UndefinedArgInFrom", "undefined-arg-in-from"),
        ("WorkdirRelativePath", "workdir-relative-path"),
    ];
    for (rule, slug) in cases {
        let w = LintWarning {
            rule,
            line: 1,
            message: String::new(),
            fix: String::new(),
        };
        assert_eq!(
            w.url(),
            format!("https://docs.docker.com/go/dockerfile/rule/{slug}/")
        );
    }
}

// ---- CheckConfig ----

#[test]
fn check_config_skip_list_and_error() {
    let c = CheckConfig::parse("skip=JSONArgsRecommended,StageNameCasing;error=true").expect("valid");
    assert_eq!(
        c,
        CheckConfig {
            skip_all: false,
            skip: vec!["JSONArgsRecommended".into(), "StageNameCasing".into()],
            error: true,
        }
    );
    assert!(!c.enabled("JSONArgsRecommended"));
    assert!(!c.enabled("StageNameCasing"));
    assert!(c.enabled("FromAsCasing"));
}

#[test]
fn check_config_skip_all() {
    let c = CheckConfig::parse("skip=all").expect("valid");
    assert!(c.skip_all && !c.error);
    assert!(!c.enabled("FromAsCasing"));
    // Only the whole value `all` means all rules.
    let c = CheckConfig::parse("skip=all,FromAsCasing").expect("valid");
    assert!(!c.skip_all && c.enabled("JSONArgsRecommended") && !c.enabled("FromAsCasing"));
}

#[test]
fn check_config_tolerates_whitespace() {
    let c =
        CheckConfig::parse("  skip = JSONArgsRecommended , StageNameCasing ; error = true  ").expect("valid");
    assert_eq!(
        c.skip,
        vec!["JSONArgsRecommended".to_string(), "StageNameCasing".to_string()]
    );
    assert!(c.error);
    assert!(CheckConfig::parse(" skip = all ").expect("valid").skip_all);
}

#[test]
fn check_config_defaults() {
    assert_eq!(CheckConfig::parse("").expect("valid"), CheckConfig::default());
    assert_eq!(CheckConfig::parse("   ").expect("valid"), CheckConfig::default());
    let c = CheckConfig::default();
    assert!(c.enabled("FromAsCasing") && !c.error);
    assert!(!CheckConfig::parse("error=false").expect("valid").error);
}

#[test]
fn check_config_error_takes_go_booleans() {
    for v in ["true", "1", "t", "T", "TRUE", "True"] {
        assert!(
            CheckConfig::parse(&format!("error={v}")).expect("valid").error,
            "{v}"
        );
    }
    for v in ["false", "0", "f", "F", "FALSE", "False"] {
        assert!(
            !CheckConfig::parse(&format!("error={v}")).expect("valid").error,
            "{v}"
        );
    }
}

#[test]
fn check_config_rule_names_are_case_sensitive() {
    let c = CheckConfig::parse("skip=jsonargsrecommended").expect("valid");
    assert!(c.enabled("JSONArgsRecommended"));
}

#[test]
fn check_config_accepts_experimental() {
    let c = CheckConfig::parse("experimental=all;skip=FromAsCasing").expect("valid");
    assert!(!c.enabled("FromAsCasing") && c.enabled("StageNameCasing"));
}

#[test]
fn check_config_bad_input() {
    for (value, mentions) in [
        ("skip", "\"skip\""),
        ("error=maybe", "maybe"),
        ("error=", "not a boolean"),
        ("ignore=FromAsCasing", "\"ignore\""),
        ("Skip=all", "\"Skip\""),
        ("skip=all;", "invalid check option"),
        // BuildKit splits into at most three options, so a fourth lands in the third's value.
        (
            "skip=A;experimental=all;error=true;error=false",
            "error=true;error=false",
        ),
    ] {
        let err = CheckConfig::parse(value).expect_err(value);
        assert!(
            err.contains(mentions),
            "error for {value:?} should mention {mentions:?}: {err}"
        );
    }
}

#[test]
fn check_config_from_dockerfile_directive() {
    let df =
        parse("# check=skip=JSONArgsRecommended;error=true\nFROM alpine\nCMD echo hi\n").expect("parses");
    let c = CheckConfig::from_dockerfile(&df).expect("valid");
    assert_eq!(c.skip, vec!["JSONArgsRecommended".to_string()]);
    assert!(c.error);
    let enabled: Vec<LintWarning> = lint(&df).into_iter().filter(|w| c.enabled(w.rule)).collect();
    assert!(enabled.is_empty(), "{enabled:#?}");

    let df = parse("FROM alpine\n").expect("parses");
    assert_eq!(
        CheckConfig::from_dockerfile(&df).expect("valid"),
        CheckConfig::default()
    );

    let df = parse("# check=bogus\nFROM alpine\n").expect("parses");
    let err = CheckConfig::from_dockerfile(&df).expect_err("invalid directive");
    assert!(err.contains("line 1") && err.contains("bogus"), "{err}");
}
