//! Shared by the integration tests: a fresh store with busybox base images, and ways to drive the binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Env {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub work: PathBuf,
}

impl Env {
    /// A fresh store holding `busybox:latest` (built from the host's busybox-static).
    pub fn new() -> Env {
        let env = Env::empty();
        let layout = env.work.join("busybox-layout");
        kiln_testutil::busybox_oci_layout(&layout, "amd64").expect("busybox layout");
        env.load_as(&layout, "busybox:latest");
        env
    }

    /// A fresh store whose `busybox:latest` is an index over amd64 and arm64 images, each with its own
    /// architecture's busybox-static (the arm64 one runs under QEMU).
    pub fn multiarch() -> Env {
        let env = Env::empty();
        let layout = env.work.join("busybox-index");
        let arm64 = kiln_testutil::arm64_busybox();
        assert!(
            arm64.is_file(),
            "{} is missing: run scripts/install-test-deps.sh",
            arm64.display()
        );
        kiln_testutil::busybox_index_layout_from(
            &layout,
            &[("amd64", Path::new("/bin/busybox")), ("arm64", arm64.as_path())],
        )
        .expect("busybox index layout");
        env.load_as(&layout, "busybox:latest");
        env
    }

    fn empty() -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("root");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        Env {
            root,
            work,
            _tmp: tmp,
        }
    }

    /// `kiln load`s an OCI layout and names what it loaded.
    pub fn load_as(&self, layout: &Path, name: &str) {
        let out = self.kiln(&["load", "-i", layout.to_str().unwrap_or_default()]);
        assert!(out.status.success(), "load: {}", stderr(&out));
        let text = stdout(&out);
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image ID: "))
            .unwrap_or_else(|| panic!("no image ID in {text:?}"))
            .trim()
            .to_string();
        let out = self.kiln(&["tag", &id, name]);
        assert!(out.status.success(), "tag: {}", stderr(&out));
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .expect("kiln runs")
    }

    /// A context directory `name` with these files (paths relative to it).
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.work.join(name);
        for (path, contents) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap_or(&dir)).expect("context dirs");
            std::fs::write(&file, contents).expect("context file");
        }
        dir
    }

    pub fn build(&self, context: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["build", "--progress=plain"];
        args.extend_from_slice(extra);
        args.push(context.to_str().unwrap_or_default());
        self.kiln(&args)
    }

    pub fn build_ok(&self, context: &Path, extra: &[&str]) -> String {
        let out = self.build(context, extra);
        assert!(out.status.success(), "build failed:\n{}", stderr(&out));
        stderr(&out)
    }

    pub fn run(&self, image: &str, cmd: &[&str]) -> String {
        let mut args = vec!["run", image];
        args.extend_from_slice(cmd);
        let out = self.kiln(&args);
        assert!(
            out.status.success(),
            "run {cmd:?} failed: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// From `--progress=plain` output: step name → whether it ran (`DONE`) or came from the cache (`CACHED`).
pub fn steps(progress: &str) -> Vec<(String, &'static str)> {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for line in progress.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((id, text)) = rest.split_once(' ') else {
            continue;
        };
        if text == "CACHED" || text.starts_with("DONE") {
            let state = if text == "CACHED" { "CACHED" } else { "DONE" };
            out.push((names.get(id).cloned().unwrap_or_default(), state));
        } else if text.starts_with('[') {
            names.insert(id.to_string(), text.to_string());
        }
    }
    out
}

pub fn ran(progress: &str, needle: &str) -> bool {
    steps(progress)
        .iter()
        .any(|(name, state)| name.contains(needle) && *state == "DONE")
}

pub fn cached(progress: &str, needle: &str) -> bool {
    steps(progress)
        .iter()
        .any(|(name, state)| name.contains(needle) && *state == "CACHED")
}
