//! BuildKit's own parser conformance data, read in place (`$KILN_CONFORMANCE_DIR`, see scripts/test_cfg.rs):
//! every positive case must dump byte-for-byte like BuildKit, every negative case must fail, and line
//! numbers must match BuildKit's TestParseIncludesLineNumbers.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_frontend::parser::{dump, parse};

fn conformance_dir() -> PathBuf {
    Path::new(env!("KILN_CONFORMANCE_DIR")).join("parser")
}

/// The case directories under `parser/<kind>`, sorted so reports are stable.
fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = conformance_dir().join(kind);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut cases: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    cases
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn name(case: &Path) -> String {
    case.file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
}

/// The first differing line of two dumps, marked up for a failure message.
fn first_difference(expected: &str, actual: &str) -> String {
    let mut expected_lines = expected.lines();
    let mut actual_lines = actual.lines();
    for number in 1.. {
        match (expected_lines.next(), actual_lines.next()) {
            (None, None) => return "same lines, different line endings".to_owned(),
            (e, a) if e == a => continue,
            (e, a) => {
                return format!(
                    "line {number}:\n    - {}\n    + {}",
                    e.unwrap_or("<missing>"),
                    a.unwrap_or("<missing>")
                );
            }
        }
    }
    unreachable!()
}

#[test]
#[cfg_attr(
    kiln_no_conformance,
    ignore = "BuildKit's conformance data is not here: set KILN_CONFORMANCE_DIR"
)]
fn positive_cases_dump_like_buildkit() {
    let cases = cases("testfiles");
    assert!(cases.len() >= 20, "only {} conformance cases found", cases.len());
    let mut mismatches = Vec::new();
    for case in &cases {
        let expected = read(&case.join("result"));
        match parse(&read(&case.join("Dockerfile"))) {
            Ok(df) => {
                let actual = dump(&df);
                if actual != expected {
                    mismatches.push(format!(
                        "{}: {}",
                        name(case),
                        first_difference(&expected, &actual)
                    ));
                }
            }
            Err(error) => mismatches.push(format!("{}: failed to parse: {error}", name(case))),
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ from BuildKit:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
#[cfg_attr(
    kiln_no_conformance,
    ignore = "BuildKit's conformance data is not here: set KILN_CONFORMANCE_DIR"
)]
fn negative_cases_fail() {
    let cases = cases("testfiles-negative");
    assert!(cases.len() >= 4, "only {} negative cases found", cases.len());
    let accepted: Vec<String> = cases
        .iter()
        .filter(|case| parse(&read(&case.join("Dockerfile"))).is_ok())
        .map(|case| name(case))
        .collect();
    assert!(accepted.is_empty(), "accepted invalid Dockerfiles: {accepted:?}");
}

#[test]
#[cfg_attr(
    kiln_no_conformance,
    ignore = "BuildKit's conformance data is not here: set KILN_CONFORMANCE_DIR"
)]
fn negative_cases_fail_with_buildkits_messages() {
    let message = |case: &str| {
        let source = read(
            &conformance_dir()
                .join("testfiles-negative")
                .join(case)
                .join("Dockerfile"),
        );
        parse(&source).expect_err(case).message
    };
    assert_eq!(message("empty_dockerfile"), "file with no instructions");
    assert_eq!(message("only_comments"), "file with no instructions");
    assert_eq!(message("env_no_value"), "ENV must have two arguments");
    assert_eq!(
        message("shykes-nested-json"),
        "when using JSON array syntax, arrays must be comprised of strings only"
    );
}

#[test]
#[cfg_attr(
    kiln_no_conformance,
    ignore = "BuildKit's conformance data is not here: set KILN_CONFORMANCE_DIR"
)]
fn env_without_value_points_at_the_key() {
    let source = read(&conformance_dir().join("testfiles-negative/env_no_value/Dockerfile"));
    let error = parse(&source).expect_err("ENV PATH has no value");
    assert_eq!((error.line, error.col, error.width), (3, 5, 4));
    assert_eq!(error.source_line, "ENV PATH");
}

#[test]
#[cfg_attr(
    kiln_no_conformance,
    ignore = "BuildKit's conformance data is not here: set KILN_CONFORMANCE_DIR"
)]
fn line_numbers_match_buildkit() {
    let df = parse(&read(&conformance_dir().join("testfile-line/Dockerfile"))).expect("parses");
    let ranges: Vec<[usize; 2]> = df
        .nodes
        .iter()
        .map(|node| [node.start_line, node.end_line])
        .collect();
    assert_eq!(ranges, [[5, 5], [11, 12], [17, 31]]);
    let whole_file = [df.nodes[0].start_line, df.nodes[df.nodes.len() - 1].end_line];
    assert_eq!(whole_file, [5, 31]);
    assert_eq!(df.directives.len(), 1, "# ESCAPE=\\ is a directive");
    assert_eq!(
        df.nodes[2].prev_comment,
        ["Install the packages we need, clean up after them and us"]
    );
}
