//! The sandbox helper for kiln-solver's own tests (see the `[[bin]]` entry in Cargo.toml for why it exists):
//! - `kiln-sandbox-test-helper __kiln-sandbox ...`: the hidden sandbox mode, as in the kiln binary;
//! - `kiln-sandbox-test-helper run-spec FILE`: plays kiln, running the JSON `ExecSpec` in FILE with its
//!   output on stdout, so a test can kill "kiln" and watch the sandbox go with it.

use std::io::Write;

use kiln_sandbox::{ExecSpec, SANDBOX_ARG, Sandbox, sandbox_main};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, mode, ..] if mode == SANDBOX_ARG => sandbox_main(),
        [_, mode, file] if mode == "run-spec" => run_spec(file),
        _ => {
            eprintln!("kiln-sandbox-test-helper: usage: {SANDBOX_ARG} SPEC-FD STATUS-FD | run-spec FILE");
            std::process::exit(2);
        }
    }
}

fn run_spec(file: &str) -> ! {
    let spec: ExecSpec = match std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("kiln-sandbox-test-helper: reading {file}: {e}");
            std::process::exit(2);
        }
    };
    let result = Sandbox::new().run(&spec, &mut |_, chunk| {
        let mut out = std::io::stdout();
        let _ = out.write_all(chunk);
        let _ = out.flush();
    });
    match result {
        Ok(status) => std::process::exit(status.code),
        Err(e) => {
            eprintln!("kiln-sandbox-test-helper: {e}");
            std::process::exit(2);
        }
    }
}
