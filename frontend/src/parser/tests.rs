use super::{dump, parse};
use crate::ast::{Dockerfile, Heredoc, Node};
use crate::error::Diagnostic;

fn parsed(source: &str) -> Dockerfile {
    parse(source).unwrap_or_else(|error| panic!("{source:?} should parse:\n{error}"))
}

fn failure(source: &str) -> Diagnostic {
    match parse(source) {
        Ok(df) => panic!("{source:?} should fail, parsed as:\n{}", dump(&df)),
        Err(error) => error,
    }
}

fn only_node(source: &str) -> Node {
    let mut df = parsed(source);
    assert_eq!(df.nodes.len(), 1, "{}", dump(&df));
    df.nodes.remove(0)
}

fn heredoc(name: &str, content: &str) -> Heredoc {
    Heredoc {
        name: name.to_owned(),
        content: content.to_owned(),
        file_descriptor: 0,
        expand: true,
        chomp: false,
    }
}

fn lines(df: &Dockerfile) -> Vec<(&str, usize, usize)> {
    df.nodes
        .iter()
        .map(|node| (&*node.keyword, node.start_line, node.end_line))
        .collect()
}

mod heredocs {
    use super::*;

    #[test]
    fn body_is_collected_up_to_the_delimiter() {
        let node = only_node("RUN <<EOF\necho hello\necho world\nEOF\n");
        assert_eq!(node.heredocs, [heredoc("EOF", "echo hello\necho world\n")]);
        assert_eq!(node.args, ["<<EOF"]);
        assert_eq!((node.start_line, node.end_line), (1, 4));
        assert_eq!(node.original, "RUN <<EOF");
    }

    #[test]
    fn comments_and_blank_lines_belong_to_the_body() {
        let node = only_node("RUN <<EOF\n# not a comment\n\necho \\\nEOF\n");
        assert_eq!(node.heredocs[0].content, "# not a comment\n\necho \\\n");
    }

    #[test]
    fn dash_strips_leading_tabs_from_body_and_delimiter() {
        let node = only_node("RUN <<-EOF\n\t\techo a\n\t echo b\n\tEOF\n");
        let expected = Heredoc {
            chomp: true,
            ..heredoc("EOF", "echo a\n echo b\n")
        };
        assert_eq!(node.heredocs, [expected]);
    }

    #[test]
    fn without_dash_an_indented_delimiter_is_body() {
        let node = only_node("RUN <<EOF\n\tEOF\nEOF\n");
        assert_eq!(node.heredocs[0].content, "\tEOF\n");
    }

    #[test]
    fn quoted_delimiters_turn_expansion_off() {
        for marker in ["<<\"EOF\"", "<<'EOF'", "<<-'EOF'", "<<E\"O\"F"] {
            let node = only_node(&format!("RUN cat {marker}\n$HOME\nEOF\n"));
            assert_eq!(node.heredocs.len(), 1, "{marker}");
            assert_eq!(node.heredocs[0].name, "EOF", "{marker}");
            assert!(!node.heredocs[0].expand, "{marker}");
        }
        assert!(only_node("RUN cat <<EOF\n$HOME\nEOF\n").heredocs[0].expand);
    }

    #[test]
    fn several_markers_are_read_in_order() {
        let df = parsed("COPY <<FILE1 <<FILE2 /dest\ncontent 1\nFILE1\ncontent 2\nFILE2\nRUN true\n");
        assert_eq!(
            df.nodes[0].heredocs,
            [heredoc("FILE1", "content 1\n"), heredoc("FILE2", "content 2\n")]
        );
        assert_eq!(df.nodes[0].args, ["<<FILE1", "<<FILE2", "/dest"]);
        assert_eq!(lines(&df), [("copy", 1, 5), ("run", 6, 6)]);
    }

    #[test]
    fn each_body_ends_at_its_own_delimiter() {
        let node = only_node("COPY <<X <<Y /dest\nY\nX\nX\nY\n");
        assert_eq!(node.heredocs, [heredoc("X", "Y\n"), heredoc("Y", "X\n")]);
    }

    #[test]
    fn file_descriptor_prefix() {
        let node = only_node("RUN 3<<EOF cat /proc/self/fd/3\nhi\nEOF\n");
        assert_eq!(
            node.heredocs,
            [Heredoc {
                file_descriptor: 3,
                ..heredoc("EOF", "hi\n")
            }]
        );
    }

    #[test]
    fn bodies_do_not_shift_the_following_instructions() {
        let df = parsed(
            "FROM alpine\nRUN <<EOF\nFROM not-an-instruction\nEOF\n\n# note\nRUN <<A <<B\na\nA\nb\nB\nUSER me\n",
        );
        assert_eq!(
            lines(&df),
            [("from", 1, 1), ("run", 2, 4), ("run", 7, 11), ("user", 12, 12)]
        );
        assert_eq!(df.nodes[2].prev_comment, ["note"]);
    }

    #[test]
    fn heredocs_after_a_continued_line() {
        let df = parsed("RUN --mount=type=cache,target=/c \\\n  <<EOF\nmake\nEOF\nUSER me\n");
        assert_eq!(df.nodes[0].heredocs, [heredoc("EOF", "make\n")]);
        assert_eq!(lines(&df), [("run", 1, 4), ("user", 5, 5)]);
    }

    #[test]
    fn not_a_marker() {
        for source in [
            "RUN \"<<EOF\"\n",
            "RUN '<<EOF'\n",
            "RUN cat<<EOF\n",
            "RUN echo <<\n",
            "RUN echo <<<EOF\n",
            "RUN [\"<<EOF\"]\n",
            "USER <<EOF\n",
            "CMD <<EOF\n",
            "RUN echo '<<EOF\n",
        ] {
            let node = only_node(source);
            assert!(node.heredocs.is_empty(), "{source:?} has no heredoc");
        }
    }

    #[test]
    fn add_and_onbuild_take_heredocs() {
        assert_eq!(only_node("ADD <<EOF /x\nhi\nEOF\n").heredocs.len(), 1);
        let node = only_node("ONBUILD RUN <<EOF\nhi\nEOF\n");
        assert_eq!(node.heredocs, [heredoc("EOF", "hi\n")]);
        assert_eq!(node.end_line, 3);
    }

    #[test]
    fn crlf_bodies_keep_their_line_endings() {
        let node = only_node("RUN <<EOF\r\nhi\r\nEOF\r\n");
        assert_eq!(node.heredocs[0].content, "hi\r\n");
    }

    #[test]
    fn unterminated_heredoc_is_an_error_at_the_marker() {
        let error = failure("FROM a\nRUN  cat <<EOF\nbody\n");
        assert_eq!(error.message, "unterminated heredoc");
        assert_eq!((error.line, error.col, error.width), (2, 10, 5));
        assert_eq!(error.source_line, "RUN  cat <<EOF");
        let second = failure("COPY <<A <<B /\na\nA\nb\n");
        assert_eq!((second.line, second.col, second.width), (1, 10, 3));
    }

    #[test]
    fn unterminated_heredoc_on_a_continuation_line() {
        let error = failure("RUN echo \\\n  <<EOF\n");
        assert_eq!((error.line, error.col), (2, 3));
    }
}

mod directives {
    use super::*;
    use crate::ast::Directive;

    fn directive(name: &str, value: &str, line: usize) -> Directive {
        Directive {
            name: name.to_owned(),
            value: value.to_owned(),
            line,
        }
    }

    #[test]
    fn escape_backtick_changes_continuations() {
        let df = parsed("# escape=`\nFROM image\nRUN dir c:\\ `\n  && echo done\n");
        assert_eq!(df.escape, '`');
        assert_eq!(df.directives, [directive("escape", "`", 1)]);
        assert_eq!(df.nodes[1].args, ["dir c:\\   && echo done"]);
        assert_eq!(lines(&df), [("from", 2, 2), ("run", 3, 4)]);
    }

    #[test]
    fn escape_backtick_changes_word_escapes() {
        let node = only_node("# escape=`\nENV a=x`\"y b=\"c d\" c=\\ d=e\n");
        let expected = [
            "a", "x`\"y", "=", "b", "\"c d\"", "=", "c", "\\", "=", "d", "e", "=",
        ];
        assert_eq!(node.args, expected);
    }

    #[test]
    fn default_escape_is_backslash() {
        assert_eq!(parsed("FROM a\n").escape, '\\');
    }

    #[test]
    fn all_three_directives_case_and_blank_tolerant() {
        let df = parsed(
            "#syntax=docker/dockerfile:1\n  #  CHECK =  skip=JSONArgsRecommended;error=true  \n# Escape\t=\t\\\nFROM a\n",
        );
        assert_eq!(
            df.directives,
            [
                directive("syntax", "docker/dockerfile:1", 1),
                directive("check", "skip=JSONArgsRecommended;error=true", 2),
                directive("escape", "\\", 3),
            ]
        );
        assert!(df.nodes[0].prev_comment.is_empty(), "directives are not comments");
    }

    #[test]
    fn a_directive_after_a_comment_is_a_comment() {
        let df = parsed("# hello\n# escape=`\nFROM a `\n");
        assert!(df.directives.is_empty());
        assert_eq!(df.escape, '\\');
        assert_eq!(df.nodes[0].args, ["a", "`"]);
        assert_eq!(df.nodes[0].prev_comment, ["hello", "escape=`"]);
    }

    #[test]
    fn a_directive_after_a_blank_line_or_instruction_is_a_comment() {
        assert!(parsed("\n# escape=`\nFROM a\n").directives.is_empty());
        let df = parsed("FROM a\n# syntax=x\nRUN b\n");
        assert!(df.directives.is_empty());
        assert_eq!(df.nodes[1].prev_comment, ["syntax=x"]);
    }

    #[test]
    fn an_unknown_directive_ends_the_directives() {
        let df = parsed("# syntax=a\n# foo=bar\n# escape=`\nFROM a\n");
        assert_eq!(df.directives, [directive("syntax", "a", 1)]);
        assert_eq!(df.escape, '\\');
    }

    #[test]
    fn a_repeated_directive_is_an_error() {
        let error = failure("# syntax=a\n#  SYNTAX=b\nFROM a\n");
        assert_eq!(error.message, "only one syntax parser directive can be used");
        assert_eq!((error.line, error.col, error.width), (2, 4, 6));
    }

    #[test]
    fn an_invalid_escape_is_an_error() {
        let error = failure("# escape = x\nFROM a\n");
        assert_eq!(error.message, "invalid escape token 'x' does not match ` or \\");
        assert_eq!((error.line, error.col, error.width), (1, 12, 1));
        assert!(error.hint.is_some());
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let df = parsed("\u{feff}# escape=`\nFROM a\n");
        assert_eq!(df.escape, '`');
        assert_eq!(df.nodes[0].col, 1);
    }
}

mod errors {
    use super::*;

    #[test]
    fn unknown_instruction_with_a_suggestion() {
        let error = failure("FORM alpine\n");
        assert_eq!(error.message, "unknown instruction: FORM");
        assert_eq!(error.hint.as_deref(), Some("did you mean FROM?"));
        assert_eq!((error.line, error.col, error.width), (1, 1, 4));
        assert_eq!(error.source_line, "FORM alpine");
        assert_eq!(
            error.to_string(),
            "Dockerfile:1:1: unknown instruction: FORM\n 1 | FORM alpine\n   | ^^^^\n hint: did you mean FROM?"
        );
    }

    #[test]
    fn suggestions_follow_the_users_case() {
        assert_eq!(failure("cpy a b\n").hint.as_deref(), Some("did you mean copy?"));
        assert_eq!(
            failure("Wokdir /\n").hint.as_deref(),
            Some("did you mean workdir?")
        );
        assert_eq!(
            failure("ENTRYPONT x\n").hint.as_deref(),
            Some("did you mean ENTRYPOINT?")
        );
    }

    #[test]
    fn no_suggestion_when_nothing_is_close() {
        let error = failure("FROM a\n\n  BANANA split\n");
        assert_eq!(error.message, "unknown instruction: BANANA");
        assert_eq!(error.hint, None);
        assert_eq!((error.line, error.col, error.width), (3, 3, 6));
    }

    #[test]
    fn errors_point_into_continuation_lines() {
        let error = failure("FROM a\nCMD \\\n  # comment\n    [\"a\", 1]\n");
        assert_eq!(
            error.message,
            "when using JSON array syntax, arrays must be comprised of strings only"
        );
        assert_eq!((error.line, error.col, error.width), (4, 5, 8));
        let error = failure("ENV a=1 \\\n\tb\n");
        assert_eq!(
            error.message,
            "Syntax error - can't find = in \"b\". Must be of the form: name=value"
        );
        assert_eq!((error.line, error.col, error.width), (2, 2, 1));
    }

    #[test]
    fn columns_count_characters() {
        let error = failure("LABEL \"é\"=1 ü\n");
        assert_eq!((error.line, error.col, error.width), (1, 13, 1));
    }

    #[test]
    fn empty_files_have_no_instructions() {
        for source in ["", "\n\n", "# just a comment\n", "  \\\n\n"] {
            assert_eq!(failure(source).message, "file with no instructions", "{source:?}");
        }
    }

    #[test]
    fn label_without_value() {
        assert_eq!(
            failure("LABEL version\n").message,
            "LABEL must have two arguments"
        );
    }

    #[test]
    fn shell_requires_json() {
        let error = failure("SHELL /bin/bash -c\n");
        assert_eq!(error.message, "SHELL requires the arguments to be in JSON form");
        assert_eq!((error.col, error.width), (7, 12));
        assert_eq!(
            only_node("SHELL [\"/bin/bash\", \"-c\"]\n").args,
            ["/bin/bash", "-c"]
        );
    }

    #[test]
    fn unknown_flags_are_left_to_later_stages() {
        let node = only_node("COPY --doit=true --chmod 644 a b\n");
        assert_eq!(node.flags, ["--doit=true", "--chmod"]);
        assert_eq!(node.args, ["644", "a", "b"]);
    }
}

mod keywords {
    use super::*;

    #[test]
    fn keywords_are_case_insensitive() {
        let df = parsed("from alpine\nRun echo\n  WorkDir /app\nhealthCHECK NONE\n");
        let keywords: Vec<(&str, &str, usize)> = df
            .nodes
            .iter()
            .map(|node| (&*node.keyword, &*node.keyword_raw, node.col))
            .collect();
        assert_eq!(
            keywords,
            [
                ("from", "from", 1),
                ("run", "Run", 1),
                ("workdir", "WorkDir", 3),
                ("healthcheck", "healthCHECK", 1)
            ]
        );
        assert_eq!(
            dump(&df),
            "(from \"alpine\")\n(run \"echo\")\n(workdir \"/app\")\n(healthcheck \"NONE\")\n"
        );
    }

    #[test]
    fn every_instruction_is_known() {
        let source = "FROM a\nARG b\nRUN c\nCMD d\nENTRYPOINT e\nENV f g\nEXPOSE 1\nHEALTHCHECK NONE\n\
            LABEL h=i\nMAINTAINER j\nONBUILD RUN k\nSHELL [\"l\"]\nSTOPSIGNAL m\nUSER n\nVOLUME o\n\
            WORKDIR p\nCOPY q r\nADD s t\n";
        assert_eq!(parsed(source).nodes.len(), 18);
    }

    #[test]
    fn original_and_flags() {
        let node = only_node("  COPY --from=build \\\n   --chown=1:1 a b   \n");
        assert_eq!(node.original, "COPY --from=build    --chown=1:1 a b   ");
        assert_eq!(node.flags, ["--from=build", "--chown=1:1"]);
        assert_eq!(node.col, 3);
    }

    #[test]
    fn flags_lose_their_quotes() {
        let node = only_node("RUN --mount=type=secret,id=\"a b\" --x='c\\'d' echo\n");
        assert_eq!(node.flags, ["--mount=type=secret,id=a b", "--x=c'd"]);
        assert_eq!(node.args, ["echo"]);
    }

    #[test]
    fn exec_form_and_its_fallback() {
        let node = only_node("ENTRYPOINT [\"a\", \"b c\"]\n");
        assert!(node.json);
        assert_eq!(node.args, ["a", "b c"]);
        let node = only_node("ENTRYPOINT [\"a\", \"b c\"] trailing\n");
        assert!(!node.json);
        assert_eq!(node.args, ["[\"a\", \"b c\"] trailing"]);
        let node = only_node("VOLUME [\"/a\", \"/b\"]\n");
        assert!(node.json);
        let node = only_node("VOLUME [/a /b\n");
        assert_eq!(node.args, ["[/a", "/b"]);
    }

    #[test]
    fn healthcheck_forms() {
        let node = only_node("HEALTHCHECK --interval=5s CMD [\"curl\", \"-f\", \"x\"]\n");
        assert!(node.json);
        assert_eq!(node.args, ["CMD", "curl", "-f", "x"]);
        assert_eq!(only_node("HEALTHCHECK NONE\n").args, ["NONE"]);
        assert_eq!(
            only_node("HEALTHCHECK CMD   curl -f x\n").args,
            ["CMD", "curl -f x"]
        );
    }

    #[test]
    fn empty_continuation_lines_are_warned_about() {
        let df = parsed("FROM a\nRUN a \\\n\n   \\\n  \n b\nRUN c \\\n# comment\n d\n");
        let warnings: Vec<(&str, usize)> = df.warnings.iter().map(|w| (w.rule, w.line)).collect();
        assert_eq!(warnings, [("NoEmptyContinuation", 3), ("NoEmptyContinuation", 5)]);
        assert!(
            df.warnings[0].message.contains("line 2"),
            "{}",
            df.warnings[0].message
        );
        assert_eq!(df.nodes[1].args, ["a     b"]);
        assert_eq!(lines(&df), [("from", 1, 1), ("run", 2, 6), ("run", 7, 9)]);
    }

    #[test]
    fn previous_comments() {
        let df = parsed("# one\n\n  # two\nFROM a\n#\n# three\nRUN b \\\n# inside\n c\n# four\n#\nUSER d\n");
        let comments: Vec<&[String]> = df.nodes.iter().map(|node| &*node.prev_comment).collect();
        assert_eq!(comments, [&["one", "two"][..], &["three"][..], &[][..]]);
    }

    #[test]
    fn crlf_line_endings() {
        let df = parsed("FROM a\r\nRUN b \\\r\n  c\r\n");
        assert_eq!(dump(&df), "(from \"a\")\n(run \"b   c\")\n");
    }

    #[test]
    fn dump_quotes_like_go() {
        let node = Node {
            keyword: "run".to_owned(),
            args: vec!["\u{7}\u{1b}\u{7f}\u{a0}\u{85}é☃\u{200b}\u{10ffff}\u{1F600}".to_owned()],
            ..Node::default()
        };
        let df = Dockerfile {
            nodes: vec![node],
            ..Dockerfile::default()
        };
        assert_eq!(
            dump(&df),
            "(run \"\\a\\x1b\\x7f\\u00a0\\u0085é☃\\u200b\\U0010ffff😀\")\n"
        );
    }
}

mod onbuild {
    use super::*;

    #[test]
    fn trigger_is_a_nested_node() {
        let df = parsed("FROM a\nONBUILD copy --from=b x \\\n  y\n");
        let node = &df.nodes[1];
        let nested = node.nested.as_deref().expect("nested trigger");
        assert!(node.args.is_empty());
        assert_eq!(nested.keyword, "copy");
        assert_eq!(nested.keyword_raw, "copy");
        assert_eq!(nested.flags, ["--from=b"]);
        assert_eq!(nested.args, ["x", "y"]);
        assert_eq!(nested.original, "copy --from=b x   y");
        assert_eq!((nested.start_line, nested.end_line, nested.col), (2, 3, 9));
        assert_eq!(
            dump(&df),
            "(from \"a\")\n(onbuild (copy [\"--from=b\"] \"x\" \"y\"))\n"
        );
    }

    #[test]
    fn exec_form_trigger() {
        let df = parsed("ONBUILD RUN [\"make\", \"all\"]\n");
        assert_eq!(dump(&df), "(onbuild (run \"make\" \"all\"))\n");
        assert!(df.nodes[0].nested.as_deref().is_some_and(|nested| nested.json));
    }

    #[test]
    fn forbidden_triggers() {
        let cases = [
            (
                "ONBUILD ONBUILD RUN x\n",
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                9,
                7,
            ),
            (
                "ONBUILD from scratch\n",
                "FROM isn't allowed as an ONBUILD trigger",
                9,
                4,
            ),
            (
                "onbuild   Maintainer me\n",
                "MAINTAINER isn't allowed as an ONBUILD trigger",
                11,
                10,
            ),
        ];
        for (source, message, col, width) in cases {
            let error = failure(source);
            assert_eq!(error.message, message, "{source:?}");
            assert_eq!(
                (error.line, error.col, error.width),
                (1, col, width),
                "{source:?}"
            );
        }
    }

    #[test]
    fn unknown_trigger() {
        let error = failure("ONBUILD RUNN x\n");
        assert_eq!(error.message, "unknown instruction: RUNN");
        assert_eq!(error.hint.as_deref(), Some("did you mean RUN?"));
        assert_eq!(error.col, 9);
    }

    #[test]
    fn bare_onbuild_is_left_to_later_stages() {
        let node = only_node("ONBUILD\n");
        assert!(node.nested.is_none());
        assert_eq!(dump(&parsed("ONBUILD\n")), "(onbuild)\n");
    }
}
