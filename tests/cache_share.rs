//! The build cache shared across machines: two `--root`s stand for two machines, a real docker-registry on
//! 127.0.0.1 (or a directory) carries the cache between them.
mod common;

use std::path::{Path, PathBuf};

use common::{Env, cached, ran, stderr};
use kiln_testutil::Registry;

const DOCKERFILE: &str = r#"FROM busybox AS tools
RUN --mount=type=cache,target=/cache echo tools > /tools && echo ran >> /cache/log

FROM busybox AS build
COPY src.txt /src.txt
RUN --mount=type=cache,target=/cache cat /src.txt > /built && echo ran >> /cache/log

FROM busybox
COPY last.txt /last.txt
COPY --from=tools /tools /tools
COPY --from=build /built /built
RUN --mount=type=cache,target=/cache cat /tools /built /last.txt > /final && echo ran >> /cache/log
"#;

fn project(env: &Env, name: &str) -> PathBuf {
    env.context(
        name,
        &[
            ("Dockerfile", DOCKERFILE),
            ("src.txt", "source\n"),
            ("last.txt", "last\n"),
        ],
    )
}

/// The same files in another place, with other mtimes: what a checkout on another machine looks like.
fn copy_elsewhere(from: &Path, env: &Env, name: &str) -> PathBuf {
    let dest = env.work.join(name);
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = dest.join(entry.file_name());
        std::fs::copy(entry.path(), &target).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(&target)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    dest
}

/// Whether any RUN step left its mark in the store's cache mounts: a RUN that ran appends to `/cache/log`.
fn runs_left_a_mark(env: &Env) -> bool {
    let mounts = env.root.join("cache-mounts");
    walk_has_file(&mounts, "log")
}

fn walk_has_file(dir: &Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        (path.is_file() && e.file_name() == name)
            || (path.is_dir() && !path.is_symlink() && walk_has_file(&path, name))
    })
}

fn image_digest(env: &Env, metadata: &Path) -> String {
    let text = std::fs::read_to_string(metadata).unwrap_or_else(|e| panic!("{}: {e}", metadata.display()));
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let _ = env;
    value["containerimage.digest"].as_str().unwrap().to_string()
}

fn build_with(env: &Env, context: &Path, extra: &[&str], metadata: &str) -> (String, String) {
    let meta = env.work.join(metadata);
    let meta_arg = meta.to_str().unwrap().to_string();
    let mut args: Vec<&str> = vec![
        "--build-arg",
        "SOURCE_DATE_EPOCH=1700000000",
        "--metadata-file",
        &meta_arg,
    ];
    args.extend_from_slice(extra);
    let progress = env.build_ok(context, &args);
    (progress, image_digest(env, &meta))
}

/// Nothing ran, and the final step came from the cache (top-down: the steps below a hit are not visited).
fn assert_all_cached(progress: &str) {
    let steps = common::steps(progress);
    assert!(!steps.is_empty(), "{progress}");
    assert!(
        steps.iter().all(|(_, state)| *state == "CACHED"),
        "a step ran:\n{progress}"
    );
    assert!(cached(progress, "cat /tools"), "{progress}");
}

/// Machine A exports with `cache_to`; a fresh machine B, the context elsewhere with other mtimes, imports
/// with `cache_from`: nothing runs, and B's image is A's, digest for digest.
fn shared_between_two_machines(cache_to: &str, cache_from: &str) {
    let a = Env::new();
    let context = project(&a, "project");
    let (progress, digest_a) = build_with(&a, &context, &["--cache-to", cache_to], "a.json");
    assert!(ran(&progress, "cat /tools"), "{progress}");

    let b = Env::new();
    let moved = copy_elsewhere(&context, &b, "checkout");
    let (progress, digest_b) = build_with(&b, &moved, &["--cache-from", cache_from], "b.json");
    assert_all_cached(&progress);
    assert!(!runs_left_a_mark(&b), "a RUN step ran on machine B:\n{progress}");
    assert_eq!(
        digest_a, digest_b,
        "the same build on two machines gave two images"
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: RUN steps use namespaces and overlayfs"
)]
fn a_registry_cache_carries_every_step_to_a_fresh_machine() {
    let registry = Registry::start();
    let reference = format!("{}/app:buildcache", registry.addr());
    shared_between_two_machines(&format!("type=registry,ref={reference},mode=max"), &reference);
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: RUN steps use namespaces and overlayfs"
)]
fn an_index_wrapped_registry_cache_works_too() {
    let registry = Registry::start();
    let reference = format!("{}/app:buildcache", registry.addr());
    shared_between_two_machines(
        &format!("type=registry,ref={reference},mode=max,image-manifest=false,compression=zstd"),
        &format!("type=registry,ref={reference}"),
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: RUN steps use namespaces and overlayfs"
)]
fn a_directory_cache_carries_every_step_and_stays_tidy() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache_arg = cache.to_str().unwrap();
    shared_between_two_machines(
        &format!("type=local,dest={cache_arg},mode=max"),
        &format!("type=local,src={cache_arg}"),
    );

    // Exporting again after a change replaces the entry and drops the blobs only the old one used.
    let a = Env::new();
    let context = project(&a, "project");
    std::fs::write(context.join("last.txt"), "changed\n").unwrap();
    let before = blob_count(&cache);
    a.build_ok(
        &context,
        &["--cache-to", &format!("type=local,dest={cache_arg},mode=max")],
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
    let after = blob_count(&cache);
    assert!(
        after <= before + 1,
        "old blobs were kept: {before} before, {after} after"
    );
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", &format!("oci:{cache_arg}:latest")])
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn blob_count(layout: &Path) -> usize {
    std::fs::read_dir(layout.join("blobs/sha256")).map_or(0, |d| d.count())
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: RUN steps use namespaces and overlayfs"
)]
fn an_inline_cache_travels_with_the_pushed_image() {
    let registry = Registry::start();
    let image = format!("{}/app:latest", registry.addr());
    let a = Env::new();
    let context = project(&a, "project");
    a.build_ok(&context, &["-t", &image, "--push", "--cache-to", "type=inline"]);

    let b = Env::new();
    let moved = copy_elsewhere(&context, &b, "checkout");
    let progress = b.build_ok(&moved, &["--cache-from", &image]);
    // Inline is min mode: the final stage's steps, not the stages it copies from.
    assert!(cached(&progress, "cat /tools"), "{progress}");
    assert!(!runs_left_a_mark(&b), "a RUN step ran on machine B:\n{progress}");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: RUN steps use namespaces and overlayfs"
)]
fn min_mode_keeps_only_the_final_stage_and_max_keeps_every_stage() {
    let registry = Registry::start();
    let a = Env::new();
    let context = project(&a, "project");
    let min = format!("{}/app:min", registry.addr());
    let max = format!("{}/app:max", registry.addr());
    a.build_ok(
        &context,
        &[
            "--cache-to",
            &format!("type=registry,ref={min},mode=min"),
            "--cache-to",
            &format!("type=registry,ref={max},mode=max"),
        ],
    );
    // A change only the last stage reads, below its COPY --from steps.
    std::fs::write(context.join("last.txt"), "changed\n").unwrap();

    let fresh = Env::new();
    let progress = fresh.build_ok(&context, &["--cache-from", &max]);
    assert!(cached(&progress, "echo tools"), "{progress}");
    assert!(cached(&progress, "cat /src.txt"), "{progress}");
    assert!(ran(&progress, "cat /tools"), "{progress}");

    let fresh = Env::new();
    let progress = fresh.build_ok(&context, &["--cache-from", &min]);
    assert!(ran(&progress, "echo tools"), "{progress}");
    assert!(ran(&progress, "cat /src.txt"), "{progress}");

    // One file changed: only the steps that read it and those after run again.
    std::fs::write(context.join("last.txt"), "last\n").unwrap();
    std::fs::write(context.join("src.txt"), "other source\n").unwrap();
    let fresh = Env::new();
    let progress = fresh.build_ok(&context, &["--cache-from", &max]);
    assert!(cached(&progress, "COPY --from=tools"), "{progress}");
    assert!(!ran(&progress, "echo tools"), "{progress}");
    assert!(ran(&progress, "cat /src.txt"), "{progress}");
    assert!(ran(&progress, "cat /tools"), "{progress}");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: RUN steps use namespaces and overlayfs"
)]
fn a_failed_build_still_exports_the_steps_that_finished() {
    let registry = Registry::start();
    let reference = format!("{}/app:cache", registry.addr());
    let a = Env::new();
    let context = a.context(
        "failing",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo first > /first\nRUN echo second > /second\nRUN exit 3\n",
        )],
    );
    let out = a.build(
        &context,
        &["--cache-to", &format!("type=registry,ref={reference},mode=max")],
    );
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains("the build failed; exported the cache"), "{text}");

    let b = Env::new();
    let out = b.build(&context, &["--cache-from", &reference]);
    let progress = stderr(&out);
    // Top-down: the last step that finished is a hit, so the one below it is not even looked at.
    assert!(cached(&progress, "echo second"), "{progress}");
    assert!(!ran(&progress, "echo first"), "{progress}");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: RUN steps use namespaces and overlayfs"
)]
fn a_cache_that_cannot_be_used_is_one_warning_and_a_correct_build() {
    let registry = Registry::start();
    let a = Env::new();
    let context = project(&a, "project");

    // A missing ref, and a registry nobody listens on.
    let missing = format!("{}/app:nosuch", registry.addr());
    let progress = a.build_ok(
        &context,
        &["--cache-from", &missing, "--cache-from", "127.0.0.1:9/app:cache"],
    );
    let warnings: Vec<&str> = progress.lines().filter(|l| l.contains("--cache-from")).collect();
    assert_eq!(warnings.len(), 2, "{progress}");
    assert!(
        warnings.iter().all(|w| w.contains("building without it")),
        "{progress}"
    );
    assert!(ran(&progress, "cat /tools"), "{progress}");

    // A cache whose layer blob is corrupted in the registry's storage.
    let reference = format!("{}/app:cache", registry.addr());
    a.build_ok(
        &context,
        &[
            "--no-cache",
            "--cache-to",
            &format!("type=registry,ref={reference},mode=max"),
        ],
    );
    let corrupted = corrupt_layers(&registry.storage_dir());
    assert!(corrupted > 0, "no layer blob found in the registry's storage");
    let b = Env::new();
    let progress = b.build_ok(&context, &["-t", "result", "--cache-from", &reference]);
    assert!(ran(&progress, "cat /tools"), "{progress}");
    assert!(
        progress.contains("building"),
        "no warning about the bad blob:\n{progress}"
    );
    assert_eq!(b.run("result", &["cat", "/final"]), "tools\nsource\nlast\n");
}

/// Overwrites every gzip blob in a docker-registry storage tree with other bytes; returns how many.
fn corrupt_layers(storage: &Path) -> usize {
    let mut count = 0;
    for entry in walk(storage) {
        if entry.file_name().is_some_and(|n| n == "data")
            && let Ok(bytes) = std::fs::read(&entry)
            && bytes.starts_with(&[0x1f, 0x8b])
            && bytes.len() > 100
        {
            let mut bad = bytes.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0xff;
            std::fs::write(&entry, bad).unwrap();
            count += 1;
        }
    }
    count
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: RUN steps use namespaces and overlayfs"
)]
fn explain_cache_names_what_changed() {
    let env = Env::new();
    let context = env.context(
        "explain",
        &[
            (
                "Dockerfile",
                "FROM busybox\nARG FLAVOUR=plain\nCOPY . /app\nRUN echo $FLAVOUR > /flavour\n",
            ),
            ("main.c", "int main() {}\n"),
            ("README", "hello\n"),
        ],
    );
    env.build_ok(&context, &[]);

    std::fs::write(context.join("main.c"), "int main() { return 1; }\n").unwrap();
    let progress = env.build_ok(&context, &["--explain-cache"]);
    assert!(progress.contains("CACHE MISS"), "{progress}");
    assert!(progress.contains("main.c (content)"), "{progress}");
    assert!(!progress.contains("README"), "{progress}");

    let progress = env.build_ok(&context, &["--explain-cache", "--build-arg", "FLAVOUR=spicy"]);
    assert!(
        progress.contains("FLAVOUR changed: was \"plain\", is \"spicy\""),
        "{progress}"
    );
    // `kiln explain` says the same of the last build afterwards.
    let out = env.kiln(&["explain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("FLAVOUR changed"), "{}", stderr(&out));

    // Another image under the base's name.
    let rebased = env.context(
        "rebase",
        &[("Dockerfile", "FROM busybox\nRUN echo new > /marker\n")],
    );
    env.build_ok(&rebased, &["-t", "busybox:latest"]);
    let progress = env.build_ok(&context, &["--explain-cache", "--build-arg", "FLAVOUR=spicy"]);
    assert!(progress.contains("the base image changed"), "{progress}");
    assert!(progress.contains("a step it builds on missed"), "{progress}");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: RUN steps use namespaces and overlayfs"
)]
fn cache_mounts_travel_with_cache_mounts_true_and_only_then() {
    let a = Env::new();
    let dockerfile = |step: &str| {
        format!(
            "FROM busybox\nARG STEP\nRUN --mount=type=cache,id=deps,target=/deps,uid=1000,mode=0700 \
             echo {step} >> /deps/log && cp /deps/log /seen && stat -c '%u %a' /deps > /owner\n"
        )
    };
    let context = a.context("mounts", &[("Dockerfile", &dockerfile("a"))]);
    let with_mounts = a.work.join("with-mounts");
    let without = a.work.join("without");
    a.build_ok(
        &context,
        &[
            "--cache-to",
            &format!(
                "type=local,dest={},mode=max,cache-mounts=true",
                with_mounts.display()
            ),
            "--cache-to",
            &format!("type=local,dest={},mode=max", without.display()),
        ],
    );

    // Machine B changes the step, so it runs, and finds machine A's mount contents in its own mount.
    let b = Env::new();
    let changed = b.context("mounts", &[("Dockerfile", &dockerfile("b"))]);
    let progress = b.build_ok(
        &changed,
        &[
            "-t",
            "seeded",
            "--cache-from",
            &format!("type=local,src={}", with_mounts.display()),
        ],
    );
    assert!(ran(&progress, "echo b"), "{progress}");
    assert_eq!(b.run("seeded", &["cat", "/seen"]), "a\nb\n");
    assert_eq!(b.run("seeded", &["cat", "/owner"]), "1000 700\n");

    // Without cache-mounts=true the mount starts empty, as on any fresh machine.
    let c = Env::new();
    let changed = c.context("mounts", &[("Dockerfile", &dockerfile("c"))]);
    c.build_ok(
        &changed,
        &[
            "-t",
            "fresh",
            "--cache-from",
            &format!("type=local,src={}", without.display()),
        ],
    );
    assert_eq!(c.run("fresh", &["cat", "/seen"]), "c\n");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: RUN steps use namespaces and overlayfs"
)]
fn a_directory_cache_with_grown_blobs_is_read_no_further_than_its_sizes() {
    let a = Env::new();
    let context = project(&a, "project");
    let dir = a.work.join("cache-dir");
    a.build_ok(
        &context,
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", dir.display()),
        ],
    );
    // Every blob but the documents grows past its descriptor's size, as a hostile directory's could.
    let mut grown = 0;
    for entry in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if bytes.first() != Some(&b'{') {
            std::fs::write(&path, [bytes, vec![0u8; 4096]].concat()).unwrap();
            grown += 1;
        }
    }
    assert!(grown > 0, "no layer blob in the cache directory");
    let b = Env::new();
    let progress = b.build_ok(
        &context,
        &[
            "-t",
            "result",
            "--cache-from",
            &format!("type=local,src={}", dir.display()),
        ],
    );
    let warnings: Vec<&str> = progress
        .lines()
        .filter(|l| l.contains("bytes the cache says"))
        .collect();
    // At most one warning per bad blob, however many steps stood on it.
    assert!(!warnings.is_empty() && warnings.len() <= grown, "{progress}");
    assert!(ran(&progress, "cat /tools"), "{progress}");
    assert_eq!(b.run("result", &["cat", "/final"]), "tools\nsource\nlast\n");
}
