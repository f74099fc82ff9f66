//! Runs BuildKit's own shell-expansion test data (`$KILN_CONFORMANCE_DIR`, see scripts/test_cfg.rs) against
//! `kiln_frontend::shell`. Every failing case is collected so one run shows them all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_frontend::shell::{Env, ShellLex};

fn conformance_file(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("KILN_CONFORMANCE_DIR")).join("shell").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    (path, text)
}

fn assert_all_passed(path: &Path, cases_run: usize, minimum: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} failures among the {cases_run} cases of {}:\n{}",
        failures.len(),
        path.display(),
        failures.join("\n")
    );
    assert!(
        cases_run >= minimum,
        "only {cases_run} cases ran from {}, expected at least {minimum}",
        path.display()
    );
}

/// Lines are `PLATFORM|input|expected`; `W` lines are Windows-only and skipped.
#[test]
#[cfg_attr(
    kiln_no_conformance,
    ignore = "BuildKit's conformance data is not here: set KILN_CONFORMANCE_DIR"
)]
fn env_var_test() {
    let (path, text) = conformance_file("envVarTest");
    let vars = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ];
    let as_vec: Vec<(String, String)> = vars
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let as_map: HashMap<String, String> = as_vec.iter().cloned().collect();
    let envs: [(&str, &dyn Env); 2] = [("Vec", &as_vec), ("HashMap", &as_map)];
    let lex = ShellLex::new('\\');

    let mut failures = Vec::new();
    let mut cases_run = 0;
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [platform, input, expected] = fields[..] else {
            failures.push(format!("line {line_number}: malformed case {line:?}"));
            continue;
        };
        match platform {
            "W" => continue,
            "A" | "U" => {}
            _ => {
                failures.push(format!("line {line_number}: unknown platform {platform:?}"));
                continue;
            }
        }
        cases_run += 1;
        for (env_kind, env) in envs {
            let outcome = lex.process_word(input, env);
            let passed = match &outcome {
                Ok(word) => word == expected,
                Err(_) => expected == "error",
            };
            let with_matches = lex.process_word_with_matches(input, env).map(|(word, _)| word);
            if !passed {
                failures.push(format!(
                    "line {line_number} ({env_kind} env): {input:?} gave {outcome:?}, expected {expected:?}"
                ));
            } else if with_matches != outcome {
                failures.push(format!(
                    "line {line_number} ({env_kind} env): process_word_with_matches({input:?}) gave \
                     {with_matches:?}, process_word gave {outcome:?}"
                ));
            }
        }
    }
    assert_all_passed(&path, cases_run, 220, &failures);
}

/// Lines are `input | w1,w2,...` (or `error`); `ENV k=v` lines add to the environment of later cases.
#[test]
#[cfg_attr(
    kiln_no_conformance,
    ignore = "BuildKit's conformance data is not here: set KILN_CONFORMANCE_DIR"
)]
fn words_test() {
    let (path, text) = conformance_file("wordsTest");
    let lex = ShellLex::new('\\');
    let mut env: Vec<(String, String)> = Vec::new();

    let mut failures = Vec::new();
    let mut cases_run = 0;
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        if line.starts_with('#') {
            continue;
        }
        if let Some(definition) = line.strip_prefix("ENV ") {
            // Only leading spaces are trimmed: the data relies on values keeping trailing ones.
            let definition = definition.trim_start_matches(' ');
            let (key, value) = definition.split_once('=').unwrap_or((definition, ""));
            env.push((key.to_owned(), value.to_owned()));
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        let [input, expected] = fields[..] else {
            failures.push(format!("line {line_number}: malformed case {line:?}"));
            continue;
        };
        let input = input.trim();
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
        cases_run += 1;

        let outcome = lex.process_words(input, &env);
        let words = outcome.clone().unwrap_or_else(|_| vec!["error".to_owned()]);
        if words != expected {
            failures.push(format!(
                "line {line_number}: {input:?} gave {outcome:?}, expected {expected:?}"
            ));
        }
    }
    assert_all_passed(&path, cases_run, 20, &failures);
}
