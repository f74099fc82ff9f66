//! Golden digests: a vertex digest is part of every cache key, so an accidental change to the canonical
//! encoding must fail here rather than silently invalidate every user's cache.

use kiln_llb::*;

fn image(reference: &str) -> Vertex {
    Vertex::new(
        Op::Source(Source::Image {
            reference: reference.into(),
        }),
        vec![],
        Some(Platform::parse("linux/amd64").unwrap()),
        Meta::default(),
    )
}

fn run(base: &Vertex, args: &[&str]) -> Vertex {
    let exec = Exec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        mounts: vec![Mount {
            input: Some(0),
            selector: String::new(),
            dest: "/".into(),
            kind: MountKind::Bind,
            readonly: false,
            output: true,
            owner_mode: None,
        }],
        ..Exec::default()
    };
    Vertex::new(
        Op::Exec(exec),
        vec![Input {
            vertex: base.digest,
            output: 0,
        }],
        base.platform.clone(),
        Meta::default(),
    )
}

#[test]
fn identical_ops_get_identical_digests_whatever_their_meta() {
    let a = image("busybox");
    let mut b = image("busybox");
    b.meta.description = "[stage-1 1/2] FROM busybox".into();
    b = Vertex::new(b.op.clone(), b.inputs.clone(), b.platform.clone(), b.meta.clone());
    assert_eq!(a.digest, b.digest);
    assert_eq!(
        run(&a, &["sh", "-c", "make"]).digest,
        run(&b, &["sh", "-c", "make"]).digest
    );
}

#[test]
fn every_field_changes_the_digest() {
    let base = image("busybox");
    let reference = run(&base, &["sh", "-c", "make"]);
    assert_ne!(reference.digest, run(&base, &["sh", "-c", "make all"]).digest);
    assert_ne!(
        reference.digest,
        run(&image("alpine"), &["sh", "-c", "make"]).digest
    );
    // Length prefixes keep ["ab","c"] and ["a","bc"] apart.
    assert_ne!(run(&base, &["ab", "c"]).digest, run(&base, &["a", "bc"]).digest);
    let arm = Vertex::new(
        base.op.clone(),
        vec![],
        Some(Platform::parse("linux/arm64").unwrap()),
        Meta::default(),
    );
    assert_ne!(arm.digest, base.digest);
}

#[test]
fn golden_digests_are_stable() {
    assert_eq!(
        image("busybox").digest.to_string(),
        "blake3:6d1cc75ea5a7d68bc7ce426af8acaf22bbcea041332d8deba933106deddf98a8"
    );
    assert_eq!(
        run(&image("busybox"), &["sh", "-c", "echo hi"])
            .digest
            .to_string(),
        "blake3:68dd27930f0d925bd0021f205ba388281460af091dafd4e482b776607a9f4f48"
    );
}

#[test]
fn prune_keeps_only_what_the_root_needs() {
    let mut def = Definition::default();
    let base = image("busybox");
    let used = run(&base, &["true"]);
    let unused = run(&base, &["false"]);
    def.add(base.clone());
    def.add(unused);
    let root = def.add(used.clone());
    // Adding the same vertex twice keeps one.
    def.add(base.clone());
    def.root = Some(root);
    assert_eq!(def.vertices.len(), 3);
    def.prune();
    let kept: Vec<_> = def.vertices.iter().map(|v| v.digest).collect();
    assert_eq!(kept, vec![base.digest, used.digest]);
}
