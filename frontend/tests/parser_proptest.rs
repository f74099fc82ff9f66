//! `parse` must never panic, whatever it is given, and what it returns must be self-consistent: line
//! ranges inside the file, dumps one line per instruction, diagnostics that point somewhere real.

use kiln_frontend::parser::{dump, parse};
use proptest::prelude::*;

/// Pieces that steer random input into the parser's interesting corners: keywords, flags, continuations,
/// heredocs, JSON, quotes, comments and directives.
const FRAGMENTS: &[&str] = &[
    "FROM ",
    "RUN ",
    "CMD ",
    "COPY ",
    "ADD ",
    "ENV ",
    "LABEL ",
    "ARG ",
    "ONBUILD ",
    "HEALTHCHECK ",
    "SHELL ",
    "EXPOSE ",
    "VOLUME ",
    "USER ",
    "WORKDIR ",
    "MAINTAINER ",
    "STOPSIGNAL ",
    "ENTRYPOINT ",
    "run ",
    "FORM ",
    "NONE",
    "CMD",
    "\\",
    "`",
    "\n",
    "\r\n",
    " ",
    "\t",
    "<<EOF",
    "<<-EOF",
    "<<'EOF'",
    "<<\"EOF\"",
    "3<<EOF",
    "EOF",
    "\tEOF",
    "<<",
    "[",
    "]",
    "\"",
    "'",
    ",",
    "\"a\"",
    "1",
    "#",
    "# escape=`",
    "# escape=\\",
    "# syntax=x",
    "# check=skip=all",
    "=",
    "a=b",
    "--",
    "--flag=",
    "--mount=type=cache",
    "${",
    "}",
    "$x",
    "é",
    "\u{feff}",
    "\u{a0}",
    "\u{85}",
    "\u{1F600}",
    "\\\\",
    "\\ ",
    "{}",
    "null",
];

fn dockerfile_like() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..60).prop_map(|pieces| pieces.concat())
}

fn check(source: &str) {
    let line_count = source.split('\n').count();
    match parse(source) {
        Ok(df) => {
            assert!(!df.nodes.is_empty(), "a parsed Dockerfile has instructions");
            for node in &df.nodes {
                assert!(
                    1 <= node.start_line && node.start_line <= node.end_line,
                    "{node:?}"
                );
                assert!(
                    node.end_line <= line_count,
                    "{node:?} ends past line {line_count}"
                );
                assert!(node.col >= 1, "{node:?}");
            }
            let dumped = dump(&df);
            assert_eq!(dumped.lines().count(), df.nodes.len(), "{dumped}");
            assert!(dumped.ends_with(")\n"), "{dumped}");
        }
        Err(error) => {
            assert!(error.line >= 1 && error.line <= line_count.max(1), "{error:?}");
            assert!(error.col >= 1 && error.width >= 1, "{error:?}");
            assert!(!error.message.is_empty());
            let _ = error.to_string();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_text(source in any::<String>()) {
        check(&source);
    }

    #[test]
    fn never_panics_on_dockerfile_like_text(source in dockerfile_like()) {
        check(&source);
    }
}
