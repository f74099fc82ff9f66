//! The `-o/--output` exporters, checked by real clients: OCI archives and layouts read by `skopeo` and
//! unpacked by `umoci`, docker archives read and converted by `skopeo`, and the merged filesystem of a layer
//! chain written as a directory and as a tar.

mod build_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use build_support::{
    Env, Node, busybox_base, dir, file, listing, mknod, run, set_xattr, snapshot, symlink, tar_entries,
    whiteout,
};
use kiln_cache::{Digest, SnapshotId, Store};
use kiln_exporter::ArchiveFormat;
use kiln_exporter::image::{BuiltImage, ImageOptions, build_image, build_index, tag};
use kiln_exporter::output::{Dest, write_image_archive, write_local, write_tar};
use kiln_llb::Platform;
use kiln_llb::image::{History, ImageInfo};
use rustix::fs::FileType;
use serde_json::{Value, json};

const EPOCH: u64 = 1_700_000_000;
/// When "the steps ran": after EPOCH, so clamping shows.
const NEWER: i64 = 2_000_000_000;
/// Before EPOCH: kept as it is.
const OLD: i64 = 1_000_000_000;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("json")
}

fn platform(p: &str) -> Platform {
    Platform::parse(p).expect("platform")
}

/// Two steps on busybox: add files and delete a base file; replace a directory's content.
fn steps(store: &Store) -> Vec<SnapshotId> {
    let one = snapshot(store, None, |root| {
        file(root, "app/hello.txt", b"hi\n", 0o644, NEWER);
        file(root, "data/old.txt", b"old", 0o644, NEWER);
        let etc = dir(root, "etc", 0o755, NEWER);
        whiteout(&etc, "group", NEWER);
        dir(root, "data", 0o755, NEWER);
        dir(root, "app", 0o755, NEWER);
    });
    let two = snapshot(store, Some(&one), |root| {
        file(root, "app/run.sh", b"#!/bin/sh\necho run\n", 0o755, NEWER);
        file(root, "data/new.txt", b"new", 0o644, NEWER);
        let data = dir(root, "data", 0o755, NEWER);
        set_xattr(&data, "trusted.overlay.opaque", b"y");
        dir(root, "app", 0o755, NEWER);
    });
    vec![one, two]
}

fn info() -> ImageInfo {
    let mut info = ImageInfo::default();
    info.config.cmd = Some(vec!["/app/run.sh".into()]);
    info.config.labels = BTreeMap::from([("a".to_owned(), "1".to_owned())]);
    info.history = ["COPY . /app", "RUN make"]
        .iter()
        .map(|created_by| History {
            created_by: (*created_by).into(),
            comment: "buildkit.dockerfile.v0".into(),
            empty_layer: false,
        })
        .collect();
    info
}

fn opts() -> ImageOptions {
    ImageOptions {
        source_date_epoch: Some(EPOCH),
        ..ImageOptions::default()
    }
}

fn build(env: &Env, p: &str, opts: &ImageOptions) -> BuiltImage {
    let base = busybox_base(env);
    let snapshots = steps(&env.store);
    build_image(&env.store, &base, &snapshots, &info(), &platform(p), opts).expect("build image")
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The files a build of [`steps`] must show once unpacked at `rootfs`.
fn assert_built_rootfs(rootfs: &Path) {
    assert!(rootfs.join("bin/busybox").is_file(), "the base layer is there");
    assert!(
        !rootfs.join("etc/group").exists(),
        "the whiteout deleted a base file"
    );
    assert_eq!(
        std::fs::read(rootfs.join("app/hello.txt")).expect("read"),
        b"hi\n"
    );
    let run_sh = std::fs::metadata(rootfs.join("app/run.sh")).expect("stat");
    assert_eq!(run_sh.mode() & 0o7777, 0o755);
    assert!(rootfs.join("data/new.txt").is_file());
    assert!(
        !rootfs.join("data/old.txt").exists(),
        "the opaque directory hid the earlier file"
    );
}

fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) {
    let image = format!("{}:{tag}", layout.display());
    run(
        "umoci",
        &["unpack", "--image", &image, &bundle.display().to_string()],
    );
}

/// The files of a directory, by name (for "nothing else was written there").
fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn an_oci_archive_is_what_save_writes_and_skopeo_reads() {
    let env = Env::new();
    let built = build(&env, "linux/amd64", &opts());
    let archive = env.path("out/app.tar");
    write_image_archive(
        &env.store,
        &built.manifest_digest,
        &built.media_type,
        &names(&["app:dev"]),
        ArchiveFormat::Oci,
        &Dest::Path(archive.clone()),
        false,
    )
    .expect("write the OCI archive");
    // Atomic: nothing but the archive is left beside it.
    assert_eq!(names_in(&env.path("out")), BTreeSet::from(["app.tar".to_owned()]));

    let reference = format!("oci-archive:{}", archive.display());
    let inspect = json_of(run("skopeo", &["inspect", &reference]).as_bytes());
    assert_eq!(inspect["Digest"], built.manifest_digest.to_string());
    assert_eq!(inspect["Labels"], json!({"a": "1"}));
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(3));
    let named = format!("{reference}:docker.io/library/app:dev");
    run("skopeo", &["inspect", &named]);

    // The same bytes as `kiln save` of the image tagged with that name: one writer for both.
    tag(&env.store, "app:dev", (&built).into()).expect("tag");
    let mut saved = Vec::new();
    kiln_exporter::save(&env.store, &names(&["app:dev"]), &mut saved, ArchiveFormat::Oci).expect("save");
    assert_eq!(std::fs::read(&archive).expect("read"), saved);
}

#[test]
fn an_oci_layout_is_unpacked_by_umoci_and_added_to_like_buildkit_does() {
    let env = Env::new();
    let built = build(&env, "linux/amd64", &opts());
    let layout = env.path("layout");
    let write = |names_: &[&str], digest: &Digest, media_type: &str, dest: &Path| {
        write_image_archive(
            &env.store,
            digest,
            media_type,
            &names(names_),
            ArchiveFormat::Oci,
            &Dest::Path(dest.to_owned()),
            true,
        )
    };
    write(&["app:dev"], &built.manifest_digest, &built.media_type, &layout).expect("write the layout");
    assert_eq!(
        names_in(&layout),
        BTreeSet::from(["blobs", "index.json", "oci-layout"].map(str::to_owned))
    );
    let bundle = env.path("bundle");
    umoci_unpack(&layout, "docker.io/library/app:dev", &bundle);
    assert_built_rootfs(&bundle.join("rootfs"));

    // A second image into the same layout: its blobs are added, the first image's entry stays; writing a
    // name again moves it.
    let other = build(
        &env,
        "linux/arm64",
        &ImageOptions {
            labels: BTreeMap::from([("b".to_owned(), "2".to_owned())]),
            ..opts()
        },
    );
    write(
        &["app:arm", "app:dev"],
        &other.manifest_digest,
        &other.media_type,
        &layout,
    )
    .expect("add");
    let index = json_of(&std::fs::read(layout.join("index.json")).expect("index"));
    let entries: Vec<(String, String)> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|d| {
            let name = d["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap_or("");
            (name.to_owned(), d["digest"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    assert_eq!(
        entries,
        [
            (
                "docker.io/library/app:arm".to_owned(),
                other.manifest_digest.to_string()
            ),
            (
                "docker.io/library/app:dev".to_owned(),
                other.manifest_digest.to_string()
            ),
        ]
    );
    let inspect = json_of(
        run(
            "skopeo",
            &[
                "inspect",
                &format!("oci:{}:docker.io/library/app:arm", layout.display()),
            ],
        )
        .as_bytes(),
    );
    assert_eq!(inspect["Architecture"], "arm64");
    // Blobs no entry names any more stay, as in BuildKit's layouts.
    assert!(
        layout
            .join("blobs/sha256")
            .join(built.config_digest.hex())
            .is_file()
    );
    // Unnamed and named again: one entry per name, and an unnamed entry is listed once.
    write(&[], &built.manifest_digest, &built.media_type, &layout).expect("unnamed");
    write(&[], &built.manifest_digest, &built.media_type, &layout).expect("unnamed again");
    let index = json_of(&std::fs::read(layout.join("index.json")).expect("index"));
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(3));

    // An empty directory becomes a layout; a directory with other files, or a file, is refused and left
    // alone.
    let empty = env.path("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    write(&["x"], &built.manifest_digest, &built.media_type, &empty).expect("into an empty directory");
    assert!(empty.join("oci-layout").is_file());
    let busy = env.path("busy");
    file(&busy, "notes.txt", b"mine", 0o644, NEWER);
    let err = write(&["x"], &built.manifest_digest, &built.media_type, &busy).expect_err("busy");
    let message = err.to_string();
    assert!(message.contains(&busy.display().to_string()), "{message}");
    assert!(message.contains("neither empty nor an OCI layout"), "{message}");
    assert_eq!(names_in(&busy), BTreeSet::from(["notes.txt".to_owned()]));
    let plain = file(&env.dir.path().join("plain"), "f", b"", 0o644, NEWER);
    let err = write(&["x"], &built.manifest_digest, &built.media_type, &plain).expect_err("a file");
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn a_docker_archive_is_read_and_converted_by_skopeo() {
    let env = Env::new();
    let docker_types = ImageOptions {
        oci_mediatypes: false,
        ..opts()
    };
    let built = build(&env, "linux/amd64", &docker_types);
    let archive = env.path("docker.tar");
    let dest = Dest::Path(archive.clone());
    write_image_archive(
        &env.store,
        &built.manifest_digest,
        &built.media_type,
        &names(&["app:dev", "example.com/team/app:1"]),
        ArchiveFormat::Docker,
        &dest,
        false,
    )
    .expect("write the docker archive");

    let entries = tar_entries(&std::fs::read(&archive).expect("read"));
    let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert!(
        paths.contains(&"manifest.json") && paths.contains(&"repositories"),
        "{paths:?}"
    );
    let reference = format!("docker-archive:{}", archive.display());
    let inspect = json_of(run("skopeo", &["inspect", &reference]).as_bytes());
    assert_eq!(inspect["Labels"], json!({"a": "1"}));
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(3));
    // docker's familiar names in RepoTags, each usable as the archive's image reference.
    run("skopeo", &["inspect", &format!("{reference}:app:dev")]);
    run(
        "skopeo",
        &["inspect", &format!("{reference}:example.com/team/app:1")],
    );
    let converted = env.path("converted");
    run(
        "skopeo",
        &["copy", &reference, &format!("oci:{}:conv", converted.display())],
    );
    let bundle = env.path("bundle");
    umoci_unpack(&converted, "conv", &bundle);
    assert_built_rootfs(&bundle.join("rootfs"));
    let config = json_of(run("skopeo", &["inspect", "--config", "--raw", &reference]).as_bytes());
    assert_eq!(config, json_of(&built.config), "the config goes unchanged");

    // A directory is for OCI layouts only.
    let err = write_image_archive(
        &env.store,
        &built.manifest_digest,
        &built.media_type,
        &[],
        ArchiveFormat::Docker,
        &Dest::Path(env.path("docker-dir")),
        true,
    )
    .expect_err("docker layout");
    assert!(err.to_string().contains("docker-dir"), "{err}");
    assert!(!env.path("docker-dir").exists());
}

#[test]
fn an_index_goes_into_an_oci_archive_whole_and_not_into_a_docker_archive() {
    let env = Env::new();
    let base = busybox_base(&env);
    let snapshots = steps(&env.store);
    let images: Vec<BuiltImage> = ["linux/amd64", "linux/arm64"]
        .iter()
        .map(|p| build_image(&env.store, &base, &snapshots, &info(), &platform(p), &opts()).expect("build"))
        .collect();
    let index = build_index(&env.store, &images, true, &BTreeMap::new()).expect("index");
    let archive = env.path("multi.tar");
    write_image_archive(
        &env.store,
        &index.digest,
        &index.media_type,
        &names(&["multi:1"]),
        ArchiveFormat::Oci,
        &Dest::Path(archive.clone()),
        false,
    )
    .expect("write the index");
    let reference = format!("oci-archive:{}", archive.display());
    let raw = run("skopeo", &["inspect", "--raw", &reference]);
    assert_eq!(raw.as_bytes(), index.index, "the index as built");
    for (arch, image) in [("amd64", &images[0]), ("arm64", &images[1])] {
        let config = run(
            "skopeo",
            &[
                "--override-arch",
                arch,
                "inspect",
                "--config",
                "--raw",
                &reference,
            ],
        );
        assert_eq!(config.as_bytes(), image.config);
    }
    let manifest = json_of(&images[1].manifest);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);

    let docker = env.path("multi-docker.tar");
    let err = write_image_archive(
        &env.store,
        &index.digest,
        &index.media_type,
        &[],
        ArchiveFormat::Docker,
        &Dest::Path(docker.clone()),
        false,
    )
    .expect_err("several platforms in a docker archive");
    let message = err.to_string();
    assert!(message.contains(&docker.display().to_string()), "{message}");
    assert!(message.contains("linux/amd64, linux/arm64"), "{message}");
    assert!(!docker.exists());
}

/// Where the chain's symlinks point out of the tree.
struct Outside {
    dir: std::path::PathBuf,
    /// A name only this test uses, for "nothing was written at /NAME".
    unique: String,
}

/// A three-layer chain exercising every overlay rule, and how the merged tree must look.
fn chain(env: &Env, outside: &Outside) -> Vec<SnapshotId> {
    let outside_dir = outside.dir.display().to_string();
    let lower = snapshot(&env.store, None, |root| {
        file(root, "keep.txt", b"lower", 0o640, OLD);
        set_xattr(&root.join("keep.txt"), "user.kiln", b"kept");
        file(root, "replaced.txt", b"lower", 0o644, NEWER);
        file(root, "gone.txt", b"deleted above", 0o644, NEWER);
        file(root, "dir/a", b"a", 0o644, NEWER);
        file(root, "dir/b", b"b", 0o644, NEWER);
        file(root, "opq/old", b"hidden above", 0o644, NEWER);
        file(root, "file-to-dir", b"becomes a dir", 0o644, NEWER);
        file(root, "dir-to-file/inner", b"hidden above", 0o644, NEWER);
        file(root, "exec", b"#!/bin/sh\n", 0o4755, NEWER);
        std::os::unix::fs::chown(root.join("exec"), Some(1234), Some(5678)).expect("chown");
        // chown cleared the set-id bit.
        file(root, "exec", b"#!/bin/sh\n", 0o4755, NEWER);
        file(root, "hard/one", b"shared", 0o644, NEWER);
        std::fs::hard_link(root.join("hard/one"), root.join("hard/two")).expect("link");
        std::fs::hard_link(root.join("hard/one"), root.join("hard/three")).expect("link");
        file(root, "pair/x", b"both stay", 0o644, NEWER);
        std::fs::hard_link(root.join("pair/x"), root.join("pair/y")).expect("link");
        // Symlinks out of the tree, which later layers write "through".
        symlink(root, "escape-root", "/", NEWER);
        symlink(root, "escape-abs", &outside_dir, NEWER);
        symlink(root, "rel", "keep.txt", NEWER);
        mknod(root, "fifo", FileType::Fifo, 0, 0, NEWER);
        mknod(root, "null", FileType::CharacterDevice, 1, 3, NEWER);
        for (d, mode) in [
            ("dir", 0o755),
            ("opq", 0o755),
            ("dir-to-file", 0o755),
            ("hard", 0o755),
            ("pair", 0o700),
        ] {
            dir(root, d, mode, NEWER);
        }
    });
    let middle = snapshot(&env.store, Some(&lower), |root| {
        file(root, "replaced.txt", b"upper", 0o600, NEWER);
        whiteout(root, "gone.txt", NEWER);
        let d = dir(root, "dir", 0o750, NEWER);
        whiteout(&d, "a", NEWER);
        file(root, "dir/c", b"c", 0o644, NEWER);
        file(root, "opq/new", b"new", 0o644, NEWER);
        let opq = dir(root, "opq", 0o755, NEWER);
        set_xattr(&opq, "trusted.overlay.opaque", b"y");
        file(root, "file-to-dir/x", b"x", 0o644, NEWER);
        file(root, "dir-to-file", b"now a file", 0o644, NEWER);
        // The first name of the hardlinked file goes: the next one carries the content.
        let hard = dir(root, "hard", 0o755, NEWER);
        whiteout(&hard, "one", NEWER);
        file(
            root,
            &format!("escape-root/{}", outside.unique),
            b"must stay inside",
            0o644,
            NEWER,
        );
        file(root, "escape-abs/inside", b"must stay inside", 0o644, NEWER);
        for d in ["file-to-dir", "escape-root", "escape-abs", "hard"] {
            dir(root, d, 0o755, NEWER);
        }
        dir(root, "dir", 0o750, NEWER);
    });
    // Through a layer that does not have the name: the lowest `dir/b` goes, the middle's `dir` stays.
    let top = snapshot(&env.store, Some(&middle), |root| {
        file(root, "top.txt", b"top", 0o644, NEWER);
        let d = dir(root, "dir", 0o750, NEWER);
        whiteout(&d, "b", NEWER);
        dir(root, "dir", 0o750, NEWER);
    });
    vec![lower, middle, top]
}

fn outside(env: &Env) -> Outside {
    let dir = env.path("outside");
    std::fs::create_dir(&dir).expect("mkdir");
    let unique = format!(
        "kiln-output-test-{}",
        env.dir.path().file_name().expect("name").to_string_lossy()
    );
    Outside { dir, unique }
}

/// The merged tree of [`chain`], as (name → kind, content) and the metadata checked separately.
fn expected_names(outside: &Outside) -> BTreeMap<String, (&'static str, Vec<u8>)> {
    let f = |c: &[u8]| ("file", c.to_vec());
    let d = || ("dir", Vec::new());
    BTreeMap::from([
        ("keep.txt".to_owned(), f(b"lower")),
        ("replaced.txt".to_owned(), f(b"upper")),
        ("dir".to_owned(), d()),
        ("dir/c".to_owned(), f(b"c")),
        ("opq".to_owned(), d()),
        ("opq/new".to_owned(), f(b"new")),
        ("file-to-dir".to_owned(), d()),
        ("file-to-dir/x".to_owned(), f(b"x")),
        ("dir-to-file".to_owned(), f(b"now a file")),
        ("exec".to_owned(), f(b"#!/bin/sh\n")),
        ("hard".to_owned(), d()),
        ("hard/three".to_owned(), f(b"shared")),
        ("hard/two".to_owned(), f(b"shared")),
        ("pair".to_owned(), d()),
        ("pair/x".to_owned(), f(b"both stay")),
        ("pair/y".to_owned(), f(b"both stay")),
        ("escape-root".to_owned(), d()),
        (format!("escape-root/{}", outside.unique), f(b"must stay inside")),
        ("escape-abs".to_owned(), d()),
        ("escape-abs/inside".to_owned(), f(b"must stay inside")),
        ("rel".to_owned(), ("symlink", b"keep.txt".to_vec())),
        ("fifo".to_owned(), ("fifo", Vec::new())),
        ("null".to_owned(), ("char", Vec::new())),
        ("top.txt".to_owned(), f(b"top")),
    ])
}

fn kinds(tree: &BTreeMap<String, Node>) -> BTreeMap<String, (&str, Vec<u8>)> {
    tree.iter()
        .map(|(name, node)| (name.clone(), (node.kind.as_str(), node.content.clone())))
        .collect()
}

#[test]
fn a_local_output_is_the_chain_merged_like_overlayfs() {
    let env = Env::new();
    let outside = outside(&env);
    let layers = chain(&env, &outside);
    let dest = env.path("out/rootfs");
    // What is there already: a symlink out where the tree has a directory, a directory where it has a
    // file, and a file it does not have.
    std::fs::create_dir_all(&dest).expect("mkdir");
    symlink(&dest, "escape-abs", &outside.dir.display().to_string(), NEWER);
    file(&dest, "replaced.txt/deep", b"old dir", 0o644, NEWER);
    file(&dest, "unrelated.txt", b"stays", 0o644, NEWER);

    write_local(&env.store, &layers, &dest, Some(EPOCH)).expect("write local");

    let tree = listing(&dest);
    let mut expected = expected_names(&outside);
    expected.insert("unrelated.txt".to_owned(), ("file", b"stays".to_vec()));
    assert_eq!(kinds(&tree), expected);
    assert!(
        names_in(&outside.dir).is_empty(),
        "nothing written through the symlink out"
    );
    assert!(
        !Path::new("/").join(&outside.unique).exists(),
        "nothing written through the symlink to /"
    );

    let node = |name: &str| tree.get(name).unwrap_or_else(|| panic!("{name} in {tree:?}"));
    assert_eq!(node("exec").mode, 0o4755, "set-id bits survive the chown");
    assert_eq!((node("exec").uid, node("exec").gid), (1234, 5678));
    assert_eq!(node("keep.txt").mode, 0o640);
    assert_eq!(node("replaced.txt").mode, 0o600, "the upper file's mode");
    assert_eq!(node("dir").mode, 0o750, "the upper directory's mode");
    assert_eq!(node("pair").mode, 0o700);
    assert_eq!(node("null").rdev, rustix::fs::makedev(1, 3));
    assert_eq!(
        node("keep.txt").xattrs,
        BTreeMap::from([("user.kiln".to_owned(), b"kept".to_vec())])
    );
    assert!(
        node("opq").xattrs.is_empty(),
        "overlay's markers stay in the store"
    );
    // mtimes: clamped to the epoch when newer, kept when older.
    assert_eq!(node("keep.txt").mtime, OLD);
    assert_eq!(node("top.txt").mtime, EPOCH as i64);
    assert_eq!(
        node("dir").mtime,
        EPOCH as i64,
        "set after its contents were written"
    );
    // Hardlinks: the names still visible share one inode.
    assert_eq!(node("pair/y").same_as.as_deref(), Some("pair/x"));
    assert_eq!(node("hard/two").same_as.as_deref(), Some("hard/three"));

    // Without an epoch mtimes are as stored; a second write over the first changes nothing.
    write_local(&env.store, &layers, &dest, None).expect("write again");
    let again = listing(&dest);
    assert_eq!(kinds(&again), expected);
    assert_eq!(again["top.txt"].mtime, NEWER);
}

#[test]
fn a_tar_output_is_deterministic_and_holds_the_merged_tree() {
    let env = Env::new();
    let outside = outside(&env);
    let layers = chain(&env, &outside);
    let (one, two) = (env.path("one.tar"), env.path("two.tar"));
    for path in [&one, &two] {
        write_tar(&env.store, &layers, &Dest::Path(path.clone()), Some(EPOCH)).expect("write tar");
    }
    let bytes = std::fs::read(&one).expect("read");
    assert_eq!(bytes, std::fs::read(&two).expect("read"), "byte-identical");
    // The same chain made again in another store, at another time, in another order.
    let other = Env::new();
    let other_layers = chain(&other, &outside);
    let three = other.path("three.tar");
    write_tar(
        &other.store,
        &other_layers,
        &Dest::Path(three.clone()),
        Some(EPOCH),
    )
    .expect("write tar");
    assert_eq!(
        bytes,
        std::fs::read(&three).expect("read"),
        "the same in another store"
    );

    // The tar holds what the local output holds: one walk for both.
    let local = env.path("local");
    write_local(&env.store, &layers, &local, Some(EPOCH)).expect("write local");
    let tree = listing(&local);
    let entries = tar_entries(&bytes);
    let tar_names: Vec<String> = entries
        .iter()
        .map(|e| e.0.trim_end_matches('/').to_owned())
        .collect();
    // Depth first, each directory's names sorted, a directory before its contents.
    let mut sorted = tar_names.clone();
    sorted.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    assert_eq!(tar_names, sorted, "entries in walk order");
    assert_eq!(
        tar_names.iter().cloned().collect::<BTreeSet<_>>(),
        tree.keys().cloned().collect()
    );
    assert!(
        tar_names.iter().all(|n| !n.contains(".wh.")),
        "no overlay markers: {tar_names:?}"
    );
    for (name, kind, mtime, link, _) in &entries {
        assert!(*mtime <= EPOCH, "{name} clamped");
        if name == "hard/two" {
            assert_eq!((*kind, link.as_str()), (tar::EntryType::Link, "hard/three"));
        }
    }
    let mut archive = tar::Archive::new(bytes.as_slice());
    for entry in archive.entries().expect("entries") {
        let entry = entry.expect("entry");
        let h = entry.header();
        assert_eq!(
            (h.username_bytes(), h.groupname_bytes()),
            (Some(&b""[..]), Some(&b""[..]))
        );
        if entry.path_bytes().as_ref() == b"exec" {
            assert_eq!((h.uid().expect("uid"), h.gid().expect("gid")), (1234, 5678));
        }
    }

    // A failed write leaves the destination as it was, and no temporary beside it.
    let missing = SnapshotId::new("build-00000000000000000000000000000000").expect("id");
    let err = write_tar(&env.store, &[missing], &Dest::Path(one.clone()), None).expect_err("no snapshot");
    let message = err.to_string();
    assert!(
        message.contains(&one.display().to_string()) && message.contains("not in the store"),
        "{message}"
    );
    assert_eq!(std::fs::read(&one).expect("read"), bytes);
    let leftovers: Vec<String> = names_in(env.dir.path())
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_empty_chain_is_an_empty_filesystem() {
    let env = Env::new();
    let dest = env.path("empty-local");
    write_local(&env.store, &[], &dest, None).expect("write local");
    assert!(names_in(&dest).is_empty());
    let tar = env.path("empty.tar");
    write_tar(&env.store, &[], &Dest::Path(tar.clone()), None).expect("write tar");
    assert_eq!(std::fs::read(&tar).expect("read"), [0u8; 1024]);
}

/// Set in the child process of [`a_tar_to_standard_output_is_the_file_s_bytes`]: the store and the chain to
/// write, one per line.
const CHILD_ENV: &str = "KILN_OUTPUT_TEST_STDOUT_CHILD";
/// Written before the tar, so the parent finds where it starts among the test harness's own output.
const MARKER: &[u8] = b"--- kiln tar follows ---\n";

/// The child half of [`a_tar_to_standard_output_is_the_file_s_bytes`]; passes trivially on its own.
#[test]
fn stdout_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut lines = spec.lines();
    let store = Store::open(Path::new(lines.next().expect("store line"))).expect("open store");
    let layers: Vec<SnapshotId> = lines.map(|l| SnapshotId::new(l).expect("id")).collect();
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(MARKER).expect("marker");
    stdout.flush().expect("flush");
    drop(stdout);
    write_tar(&store, &layers, &Dest::Stdout, Some(EPOCH)).expect("write to stdout");
}

#[test]
fn a_tar_to_standard_output_is_the_file_s_bytes() {
    let env = Env::new();
    let outside = outside(&env);
    let layers = chain(&env, &outside);
    let file_out = env.path("fs.tar");
    write_tar(&env.store, &layers, &Dest::Path(file_out.clone()), Some(EPOCH)).expect("write tar");
    let mut spec = env.store.root().display().to_string();
    for id in &layers {
        spec.push('\n');
        spec.push_str(id.as_str());
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(exe)
        .args(["--exact", "stdout_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdin(Stdio::null())
        .output()
        .expect("run the child");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let start = out
        .stdout
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .expect("the child wrote the marker")
        + MARKER.len();
    let expected = std::fs::read(&file_out).expect("read");
    let got = &out.stdout[start..];
    assert!(got.len() >= expected.len(), "the child's stream is short");
    assert!(
        got[..expected.len()] == expected[..],
        "standard output differs from the file"
    );
}
