//! The `kiln` binary as users call it: exit codes, what goes to stdout and stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_ROOT", std::env::temp_dir().join("kiln-cli-test-root"))
        .output()
        .expect("kiln runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh directory holding a Dockerfile with `contents`.
fn dockerfile(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("Dockerfile"), contents).expect("write Dockerfile");
    dir
}

fn conformance() -> PathBuf {
    Path::new(env!("KILN_CONFORMANCE_DIR")).join("parser/testfiles")
}

#[test]
#[cfg_attr(
    kiln_no_conformance,
    ignore = "BuildKit's conformance data is not here: set KILN_CONFORMANCE_DIR"
)]
fn debug_parse_dump_prints_buildkits_format() {
    let case = conformance().join("env");
    let want = std::fs::read_to_string(case.join("result")).expect("conformance data");
    let dockerfile = case.join("Dockerfile");
    let out = kiln(&[
        "debug",
        "parse",
        "--dump",
        dockerfile.to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), want);
    let with_flag = kiln(&[
        "debug",
        "parse",
        "--dump",
        "-f",
        dockerfile.to_str().unwrap_or_default(),
    ]);
    assert_eq!(stdout(&with_flag), want);
}

#[test]
fn parse_errors_name_the_place_and_what_to_do() {
    let dir = dockerfile("typo", "FROM busybox\nFORM alpine\n");
    let out = kiln(&[
        "debug",
        "parse",
        "--dump",
        dir.join("Dockerfile").to_str().unwrap_or_default(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Dockerfile:2:1:"), "{err}");
    assert!(err.contains("FORM alpine"), "{err}");
    assert!(err.contains("did you mean FROM?"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn debug_llb_prints_json_and_dot_for_the_target_only() {
    let dir = dockerfile(
        "llb",
        "FROM busybox AS unused\nRUN exit 1\nFROM busybox AS app\nRUN echo app\nFROM app\nRUN echo final\n",
    );
    let context = dir.to_str().unwrap_or_default();
    let out = kiln(&["debug", "llb", "--target", "app", context]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("valid JSON");
    let vertices = json["vertices"].as_array().cloned().unwrap_or_default();
    let text = stdout(&out);
    assert_eq!(vertices.len(), 2, "{text}");
    assert!(
        text.contains("echo app") && !text.contains("exit 1") && !text.contains("echo final"),
        "{text}"
    );
    assert!(
        json["root"]["vertex"]
            .as_str()
            .is_some_and(|d| d.starts_with("blake3:"))
    );

    let out = kiln(&["debug", "llb", "--format", "dot", context]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("digraph llb {"));
    assert!(stdout(&out).contains("echo final"));

    let out = kiln(&["debug", "llb", "--target", "nope", context]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("target stage \"nope\" could not be found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn build_check_reports_lint_and_honours_check_directive() {
    let dir = dockerfile("check", "FROM busybox as Build\nMAINTAINER me\nCMD echo hi\n");
    let context = dir.to_str().unwrap_or_default();
    let out = kiln(&["build", "--check", context]);
    assert!(out.status.success(), "warnings alone do not fail the check");
    let err = stderr(&out);
    for rule in [
        "FromAsCasing",
        "StageNameCasing",
        "MaintainerDeprecated",
        "JSONArgsRecommended",
    ] {
        assert!(err.contains(rule), "{rule} missing in:\n{err}");
    }
    assert!(err.contains("Dockerfile:1"), "{err}");

    let dir = dockerfile(
        "check-error",
        "# check=skip=FromAsCasing;error=true\nFROM busybox as build\nCMD echo hi\n",
    );
    let out = kiln(&["build", "--check", dir.to_str().unwrap_or_default()]);
    assert!(!out.status.success(), "error=true turns warnings into a failure");
    assert!(!stderr(&out).contains("FromAsCasing"), "{}", stderr(&out));
    assert!(stderr(&out).contains("JSONArgsRecommended"));

    let dir = dockerfile(
        "check-clean",
        "# check=error=true\nFROM busybox AS build\nCMD [\"echo\", \"hi\"]\n",
    );
    let out = kiln(&["build", "--check", dir.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_example_converts() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let out = kiln(&[
        "debug",
        "llb",
        "--build-context",
        "busybox=/",
        example.to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("greet.sh"));
}

#[test]
fn dockerfile_from_stdin() {
    use std::io::Write;
    let dir = dockerfile("stdin", "FROM busybox\nRUN echo from-the-file\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["debug", "llb", "-f", "-", dir.to_str().unwrap_or_default()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"FROM busybox\nRUN echo from-stdin\n")
        .expect("write Dockerfile");
    let out = child.wait_with_output().expect("kiln finishes");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("echo from-stdin") && !stdout(&out).contains("from-the-file"));
}

#[test]
fn an_error_names_each_cause_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["--root", "/proc/1/no-such-store", "images"])
        .output()
        .expect("kiln runs");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("open the store at /proc/1/no-such-store"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
