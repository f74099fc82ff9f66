//! Context hashing for cache keys: what changes a hash, what must not, and the stat index.
//! These tests chown and mknod, so they expect to run as root (as the project's CI does).

use std::fs;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_fsutil::ignore::PatternMatcher;
use kiln_solver::context::{ContextError, ContextHasher, IndexState, RACY_MARGIN, hash_tree};

fn tmp() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    // tempdir() makes the root 0700; contexts compared with each other need equal root metadata.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod root");
    dir
}

fn write(root: &Path, rel: &str, content: &str) -> PathBuf {
    write_mode(root, rel, content, 0o644)
}

fn write_mode(root: &Path, rel: &str, content: &str, mode: u32) -> PathBuf {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
        fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).expect("chmod dir");
    }
    fs::write(&path, content).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

fn set_mtime(path: &Path, time: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(time))
        .expect("set mtime");
}

fn matcher(patterns: &[&str]) -> PatternMatcher {
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    PatternMatcher::new(&patterns).expect("patterns")
}

fn open(root: &Path) -> ContextHasher {
    ContextHasher::open(root, matcher(&[]), None).expect("open context")
}

fn open_ignoring(root: &Path, ignore: &[&str]) -> ContextHasher {
    ContextHasher::open(root, matcher(ignore), None).expect("open context")
}

fn open_indexed(root: &Path, index: &Path) -> ContextHasher {
    ContextHasher::open(root, matcher(&[]), Some(index)).expect("open context")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn sel(h: &ContextHasher, patterns: &[&str]) -> blake3::Hash {
    h.hash_selection(&strings(patterns), false, &[])
        .expect("hash selection")
}

fn sel_follow(h: &ContextHasher, patterns: &[&str]) -> blake3::Hash {
    h.hash_selection(&strings(patterns), true, &[])
        .expect("hash selection")
}

fn sel_exclude(h: &ContextHasher, patterns: &[&str], exclude: &[&str]) -> blake3::Hash {
    h.hash_selection(&strings(patterns), false, &strings(exclude))
        .expect("hash selection")
}

fn all(root: &Path) -> blake3::Hash {
    open(root).hash_all().expect("hash all")
}

/// A small project tree.
fn project(root: &Path) {
    write(root, "src/main.rs", "fn main() {}\n");
    write(root, "src/lib/util.rs", "pub fn util() {}\n");
    write(root, "docs/guide.md", "# guide\n");
    write(root, "a.txt", "a\n");
    write(root, "b.txt", "b\n");
    write(root, "c.md", "c\n");
}

#[test]
fn same_content_same_hash_whatever_mtimes_and_creation_order() {
    let (one, two) = (tmp(), tmp());
    project(one.path());
    // The same tree in reverse order, with every file's mtime years apart from the first.
    for (rel, content) in [
        ("c.md", "c\n"),
        ("b.txt", "b\n"),
        ("a.txt", "a\n"),
        ("docs/guide.md", "# guide\n"),
        ("src/lib/util.rs", "pub fn util() {}\n"),
        ("src/main.rs", "fn main() {}\n"),
    ] {
        let path = write(two.path(), rel, content);
        set_mtime(&path, SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
    }
    assert_eq!(all(one.path()), all(two.path()));
    let (h1, h2) = (open(one.path()), open(two.path()));
    assert_eq!(sel(&h1, &["src/", "*.txt"]), sel(&h2, &["src/", "*.txt"]));
    // Different sources, different hashes.
    assert_ne!(sel(&h1, &["src/"]), sel(&h1, &["docs/"]));
    assert_ne!(
        sel(&h1, &["src"]),
        sel(&h1, &["src/"]),
        "the pattern text is part of the key"
    );
}

#[test]
fn a_change_in_docs_leaves_a_copy_of_src_alone() {
    let ctx = tmp();
    project(ctx.path());
    let h = open(ctx.path());
    let (src, whole) = (sel(&h, &["src/"]), h.hash_all().expect("hash all"));
    write(ctx.path(), "docs/guide.md", "# a better guide\n");
    write(ctx.path(), "docs/new.md", "new\n");
    let h = open(ctx.path());
    assert_eq!(sel(&h, &["src/"]), src);
    assert_ne!(h.hash_all().expect("hash all"), whole);
    // And the other way round.
    write(ctx.path(), "src/main.rs", "fn main() { }\n");
    assert_ne!(sel(&open(ctx.path()), &["src/"]), src);
}

#[test]
fn metadata_and_content_changes_each_change_the_hash() {
    let ctx = tmp();
    project(ctx.path());
    symlink("main.rs", ctx.path().join("src/link")).expect("symlink");
    let root = ctx.path();
    let mut seen = vec![(all(root), sel(&open(root), &["src"]))];
    let mut check = |what: &str| {
        let now = (all(root), sel(&open(root), &["src"]));
        for earlier in &seen {
            assert_ne!(now.0, earlier.0, "hash_all after {what}");
            assert_ne!(now.1, earlier.1, "selection after {what}");
        }
        seen.push(now);
    };

    fs::set_permissions(root.join("src/main.rs"), fs::Permissions::from_mode(0o755)).expect("chmod");
    check("chmod of a file");
    fs::set_permissions(root.join("src/lib"), fs::Permissions::from_mode(0o700)).expect("chmod");
    check("chmod of a directory");
    lchown(root.join("src/main.rs"), Some(1234), None).expect("chown");
    check("chown uid");
    lchown(root.join("src/main.rs"), None, Some(4321)).expect("chown");
    check("chown gid");
    lchown(root.join("src/link"), Some(42), None).expect("lchown");
    check("chown of a symlink");
    fs::remove_file(root.join("src/link")).expect("rm");
    symlink("lib", root.join("src/link")).expect("symlink");
    check("symlink target");
    // Same size, and the old mtime put back: only the bytes differ.
    let path = root.join("src/main.rs");
    let mtime = fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
    fs::write(&path, "fn main() {;}\n").expect("write");
    set_mtime(&path, mtime);
    check("content of the same size");
    write(root, "src/empty", "");
    check("a new empty file");
    fs::create_dir(root.join("src/emptydir")).expect("mkdir");
    check("a new empty directory");
    fs::rename(root.join("src/emptydir"), root.join("src/otherdir")).expect("rename");
    check("a rename");
}

#[test]
fn devices_fifos_and_hardlinks() {
    use rustix::fs::{FileType, Mode, makedev, mknodat};
    let ctx = tmp();
    let root = ctx.path();
    write(root, "f", "content\n");
    mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        FileType::Fifo,
        Mode::from(0o644),
        0,
    )
    .expect("mkfifo");
    // A fifo is hashed by its metadata, never opened (that would block).
    let with_fifo = all(root);

    let dev = root.join("dev");
    match mknodat(
        rustix::fs::CWD,
        &dev,
        FileType::CharacterDevice,
        Mode::from(0o666),
        makedev(1, 3),
    ) {
        Ok(()) => {
            let null = all(root);
            assert_ne!(null, with_fifo);
            fs::remove_file(&dev).expect("rm");
            mknodat(
                rustix::fs::CWD,
                &dev,
                FileType::CharacterDevice,
                Mode::from(0o666),
                makedev(1, 5),
            )
            .expect("mknod");
            assert_ne!(all(root), null, "rdev is hashed");
            fs::remove_file(&dev).expect("rm");
        }
        Err(e) => eprintln!("skipping device nodes: mknod: {e}"),
    }

    // A hardlink hashes as its content: same as an independent copy.
    let (linked, copied) = (tmp(), tmp());
    write(linked.path(), "a", "same\n");
    fs::hard_link(linked.path().join("a"), linked.path().join("b")).expect("hardlink");
    write(copied.path(), "a", "same\n");
    write(copied.path(), "b", "same\n");
    assert_eq!(all(linked.path()), all(copied.path()));
}

#[test]
fn dockerignored_files_are_invisible() {
    let ctx = tmp();
    project(ctx.path());
    write(ctx.path(), "secret/key", "k1\n");
    write(ctx.path(), "secret/keep", "kept\n");
    write(ctx.path(), "node_modules/x/index.js", "x\n");
    write(ctx.path(), "src/debug.log", "log 1\n");
    let ignore = ["node_modules", "secret", "!secret/keep", "**/*.log"];
    let hash = |patterns: &[&str]| {
        let h = open_ignoring(ctx.path(), &ignore);
        (
            h.hash_all().expect("hash all"),
            sel(&h, patterns),
            sel(&h, &["*"]),
        )
    };
    let before = hash(&["src", "secret"]);

    write(ctx.path(), "secret/key", "k2, longer\n");
    write(ctx.path(), "node_modules/x/index.js", "changed\n");
    write(ctx.path(), "node_modules/y/new.js", "new\n");
    write(ctx.path(), "src/debug.log", "log 2, longer\n");
    write(ctx.path(), "src/other.log", "new log\n");
    assert_eq!(hash(&["src", "secret"]), before, "ignored paths changed nothing");

    // An ignored path cannot be selected, directly or through a symlink.
    let h = open_ignoring(ctx.path(), &ignore);
    symlink("/node_modules/x/index.js", ctx.path().join("to-ignored")).expect("symlink");
    let missing = tmp();
    symlink("/nothing/here", missing.path().join("to-ignored")).expect("symlink");
    let nothing = open(missing.path());
    for pattern in [
        "node_modules",
        "node_modules/x/index.js",
        "node_*",
        "secret/key",
        "to-ignored",
    ] {
        assert_eq!(
            sel_follow(&h, &[pattern]),
            sel_follow(&nothing, &[pattern]),
            "{pattern}"
        );
    }
    fs::remove_file(ctx.path().join("to-ignored")).expect("rm");

    // The exception is visible.
    write(ctx.path(), "secret/keep", "kept, changed\n");
    assert_ne!(hash(&["src", "secret"]), before);
}

#[test]
fn wildcard_selection() {
    let ctx = tmp();
    project(ctx.path());
    write(ctx.path(), "sub/d.txt", "d\n");
    let txt = || sel(&open(ctx.path()), &["*.txt"]);
    let before = txt();
    write(ctx.path(), "c.md", "changed\n");
    write(ctx.path(), "sub/d.txt", "changed: * does not cross /\n");
    write(ctx.path(), "docs/guide.md", "changed\n");
    assert_eq!(txt(), before);
    write(ctx.path(), "a.txt", "A\n");
    let after_edit = txt();
    assert_ne!(after_edit, before);
    write(ctx.path(), "e.txt", "e\n");
    assert_ne!(txt(), after_edit, "a new match changes the hash");

    // Several wildcard segments, classes and ?, relative to a literal prefix.
    let deep = sel(&open(ctx.path()), &["s?c/*/[t-v]til.rs"]);
    write(ctx.path(), "src/main.rs", "not matched\n");
    assert_eq!(sel(&open(ctx.path()), &["s?c/*/[t-v]til.rs"]), deep);
    write(ctx.path(), "src/lib/util.rs", "matched\n");
    assert_ne!(sel(&open(ctx.path()), &["s?c/*/[t-v]til.rs"]), deep);

    // No match hashes as "no match": stable, and different once something matches.
    let none = sel(&open(ctx.path()), &["*.rs"]);
    assert_eq!(sel(&open(ctx.path()), &["*.rs"]), none);
    // A malformed wildcard matches nothing, not even a file of that literal name (as in fsutil).
    write(ctx.path(), "[bad", "x\n");
    assert_eq!(
        sel(&open(ctx.path()), &["[bad"]),
        sel(&open(tmp().path()), &["[bad"])
    );
    write(ctx.path(), "build.rs", "fn main() {}\n");
    assert_ne!(sel(&open(ctx.path()), &["*.rs"]), none);
    let missing = sel(&open(ctx.path()), &["missing"]);
    write(ctx.path(), "missing", "now here\n");
    assert_ne!(sel(&open(ctx.path()), &["missing"]), missing);
}

#[test]
fn copy_exclude() {
    let ctx = tmp();
    project(ctx.path());
    write(ctx.path(), "src/debug.log", "1\n");
    write(ctx.path(), "src/lib/deep.log", "1\n");
    write(ctx.path(), "src/main.log", "1\n");
    let h = || open(ctx.path());
    let before = sel_exclude(&h(), &["src"], &["*.log", "lib/*.log"]);
    assert_ne!(before, sel(&h(), &["src"]), "the exclude list is part of the key");

    write(ctx.path(), "src/debug.log", "2, longer\n");
    write(ctx.path(), "src/lib/deep.log", "2, longer\n");
    assert_eq!(sel_exclude(&h(), &["src"], &["*.log", "lib/*.log"]), before);
    write(ctx.path(), "src/main.rs", "fn main() { changed() }\n");
    assert_ne!(sel_exclude(&h(), &["src"], &["*.log", "lib/*.log"]), before);

    // Patterns are relative to each matched source, as fsutil's copier matches them.
    let relative = sel_exclude(&h(), &["src"], &["main.rs"]);
    write(ctx.path(), "src/main.rs", "fn main() { again() }\n");
    assert_eq!(sel_exclude(&h(), &["src"], &["main.rs"]), relative);
    let context_relative = sel_exclude(&h(), &["src"], &["src/main.rs"]);
    write(ctx.path(), "src/main.rs", "fn main() { once_more() }\n");
    assert_ne!(sel_exclude(&h(), &["src"], &["src/main.rs"]), context_relative);

    // An exception keeps a file below an excluded directory.
    let kept = sel_exclude(&h(), &["src"], &["lib", "!lib/util.rs"]);
    write(ctx.path(), "src/lib/deep.log", "3\n");
    assert_eq!(sel_exclude(&h(), &["src"], &["lib", "!lib/util.rs"]), kept);
    write(ctx.path(), "src/lib/util.rs", "changed\n");
    assert_ne!(sel_exclude(&h(), &["src"], &["lib", "!lib/util.rs"]), kept);

    let bad = open(ctx.path()).hash_selection(&strings(&["src"]), false, &strings(&["!"]));
    assert!(matches!(bad, Err(ContextError::BadExclude(_))), "{bad:?}");
}

#[test]
fn symlink_sources_are_followed_inside_the_root() {
    let (abs, rel, escape) = (tmp(), tmp(), tmp());
    for ctx in [&abs, &rel, &escape] {
        write(ctx.path(), "etc/passwd", "root:x:0:0::/root:/bin/sh\n");
    }
    symlink("/etc/passwd", abs.path().join("link")).expect("symlink");
    symlink("etc/passwd", rel.path().join("link")).expect("symlink");
    symlink("../../../../etc/../etc/passwd", escape.path().join("link")).expect("symlink");
    // Followed: only the target inside the context counts, however the link spells it.
    let followed = sel_follow(&open(abs.path()), &["link"]);
    assert_eq!(sel_follow(&open(rel.path()), &["link"]), followed);
    assert_eq!(sel_follow(&open(escape.path()), &["link"]), followed);
    // Not followed: the link itself.
    assert_ne!(
        sel(&open(abs.path()), &["link"]),
        sel(&open(rel.path()), &["link"])
    );

    write(abs.path(), "etc/passwd", "root:x:0:0::/root:/bin/bash\n");
    assert_ne!(sel_follow(&open(abs.path()), &["link"]), followed);
    // Without <ctx>/etc/passwd the host's file is not read: the source matches nothing.
    fs::remove_dir_all(abs.path().join("etc")).expect("rm");
    let gone = sel_follow(&open(abs.path()), &["link"]);
    let nothing = tmp();
    symlink("/no/such/file", nothing.path().join("link")).expect("symlink");
    assert_eq!(gone, sel_follow(&open(nothing.path()), &["link"]));

    // Intermediate symlinked directories are followed even without follow_symlinks; a symlink inside a
    // copied directory stays a link.
    let ctx = tmp();
    write(ctx.path(), "real/x", "x\n");
    write(ctx.path(), "dir/file", "f\n");
    symlink("/real", ctx.path().join("alias")).expect("symlink");
    symlink("/real/x", ctx.path().join("dir/l")).expect("symlink");
    let (through, dir) = (
        sel(&open(ctx.path()), &["alias/x"]),
        sel_follow(&open(ctx.path()), &["dir"]),
    );
    write(ctx.path(), "real/x", "changed\n");
    assert_ne!(sel(&open(ctx.path()), &["alias/x"]), through);
    assert_eq!(sel_follow(&open(ctx.path()), &["dir"]), dir);

    // A loop is an error naming the path, not a hang.
    symlink("b", ctx.path().join("a")).expect("symlink");
    symlink("a", ctx.path().join("b")).expect("symlink");
    let err = open(ctx.path()).hash_selection(&strings(&["a"]), true, &[]);
    match err {
        Err(e @ ContextError::SymlinkLoop { .. }) => assert!(e.to_string().contains("/a")),
        other => panic!("expected a symlink loop, got {other:?}"),
    }
    open(ctx.path())
        .hash_all()
        .expect("links inside the tree are not followed");
}

#[test]
fn the_root_may_be_a_symlink() {
    let (ctx, links) = (tmp(), tmp());
    project(ctx.path());
    let link = links.path().join("ctx");
    symlink(ctx.path(), &link).expect("symlink");
    let h = open(&link);
    assert_eq!(h.root(), fs::canonicalize(ctx.path()).expect("canonicalize"));
    assert_eq!(h.hash_all().expect("hash all"), all(ctx.path()));
    assert_eq!(hash_tree(&link).expect("hash tree"), all(ctx.path()));

    let err = ContextHasher::open(&ctx.path().join("nope"), matcher(&[]), None)
        .err()
        .expect("error");
    assert!(err.to_string().contains("nope"), "{err}");
    let err = ContextHasher::open(&ctx.path().join("a.txt"), matcher(&[]), None)
        .err()
        .expect("error");
    assert!(matches!(err, ContextError::NotADirectory { .. }), "{err}");
}

/// Files old enough not to be racily clean.
fn aged_tree(root: &Path, files: usize) {
    for i in 0..files {
        write(root, &format!("d{}/f{i}", i % 7), &format!("content {i}\n"));
    }
    std::thread::sleep(RACY_MARGIN + Duration::from_millis(100));
}

#[test]
fn the_stat_index_skips_unchanged_files() {
    let (ctx, store) = (tmp(), tmp());
    let index = store.path().join("context-index");
    aged_tree(ctx.path(), 50);

    let h = open_indexed(ctx.path(), &index);
    assert_eq!(h.index_state(), &IndexState::Missing);
    let cold = h.hash_all().expect("hash all");
    assert_eq!(h.stats().files_read, 50);
    // Within one hasher, nothing is read twice.
    assert_eq!(sel(&h, &["d1"]), sel(&h, &["d1"]));
    assert_eq!(h.stats().files_read, 50);
    h.save_index().expect("save index");
    let file = h.index_file().expect("index file").to_path_buf();
    assert!(file.starts_with(&index) && file.extension().is_some_and(|e| e == "idx"));

    let h = open_indexed(ctx.path(), &index);
    assert_eq!(h.index_state(), &IndexState::Loaded { entries: 50 });
    assert_eq!(h.hash_all().expect("hash all"), cold);
    assert_eq!(
        h.stats().files_read,
        0,
        "an unchanged context is checked with stats alone"
    );
    assert_eq!(h.stats().index_hits, 50);

    // A same-size rewrite with the old mtime put back: the ctime gives it away.
    let path = ctx.path().join("d3/f3");
    let mtime = fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
    fs::write(&path, "CONTENT 3\n").expect("write");
    set_mtime(&path, mtime);
    let h = open_indexed(ctx.path(), &index);
    let changed = h.hash_all().expect("hash all");
    assert_ne!(changed, cold);
    assert_eq!(h.stats().files_read, 1);
    h.save_index().expect("save index");

    // Racy-clean: that file was written just now, so the index does not vouch for it yet and it is
    // read again (once more than necessary) while the others are not.
    let h = open_indexed(ctx.path(), &index);
    assert_eq!(h.index_state(), &IndexState::Loaded { entries: 49 });
    assert_eq!(h.hash_all().expect("hash all"), changed);
    assert_eq!(h.stats().files_read, 1);

    // A partial walk keeps what it did not visit; a deleted file leaves the index with a full walk.
    let h = open_indexed(ctx.path(), &index);
    sel(&h, &["d0"]);
    h.save_index().expect("save index");
    let h = open_indexed(ctx.path(), &index);
    assert_eq!(h.index_state(), &IndexState::Loaded { entries: 49 });
    fs::remove_file(ctx.path().join("d0/f0")).expect("rm");
    h.hash_all().expect("hash all");
    h.save_index().expect("save index");
    let h = open_indexed(ctx.path(), &index);
    assert_eq!(h.index_state(), &IndexState::Loaded { entries: 48 });
}

#[test]
fn changes_within_one_hasher_are_seen() {
    let ctx = tmp();
    project(ctx.path());
    let h = open(ctx.path());
    let before = h.hash_all().expect("hash all");
    write(ctx.path(), "a.txt", "a, longer now\n");
    assert_ne!(h.hash_all().expect("hash all"), before);
}

#[test]
fn a_corrupt_index_is_ignored() {
    let (ctx, store) = (tmp(), tmp());
    aged_tree(ctx.path(), 20);
    let h = open_indexed(ctx.path(), store.path());
    let hash = h.hash_all().expect("hash all");
    h.save_index().expect("save index");
    let file = h.index_file().expect("index file").to_path_buf();
    let good = fs::read(&file).expect("read index");

    let mut flipped = good.clone();
    // A byte inside the last entry's content hash: parseable, but must not be trusted.
    let at = good.len() - 40;
    flipped[at] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"not an index at all".to_vec()),
        ("empty", Vec::new()),
        ("truncated", good[..good.len() - 10].to_vec()),
        ("cut mid-entry", good[..good.len() / 2].to_vec()),
        ("flipped bit", flipped),
    ];
    for (what, bytes) in cases {
        fs::write(&file, &bytes).expect("write index");
        let h = open_indexed(ctx.path(), store.path());
        assert!(
            matches!(h.index_state(), IndexState::Ignored { .. }),
            "{what}: {:?}",
            h.index_state()
        );
        assert_eq!(h.hash_all().expect("hash all"), hash, "{what}");
        assert_eq!(h.stats().files_read, 20, "{what}: nothing trusted");
    }

    // Another context's index under this context's name is not trusted either.
    let other = tmp();
    aged_tree(other.path(), 1);
    let o = open_indexed(other.path(), store.path());
    o.hash_all().expect("hash all");
    o.save_index().expect("save index");
    fs::copy(o.index_file().expect("index file"), &file).expect("copy");
    let h = open_indexed(ctx.path(), store.path());
    assert!(matches!(h.index_state(), IndexState::Ignored { .. }));

    // And a good one is used again.
    fs::write(&file, &good).expect("write index");
    let h = open_indexed(ctx.path(), store.path());
    assert_eq!(h.hash_all().expect("hash all"), hash);
    assert_eq!(h.stats().files_read, 0);
}

/// The documented encoding (context/encode.rs), written out independently.
struct Enc(blake3::Hasher);

impl Enc {
    fn new(tag: &str) -> Enc {
        let mut e = Enc(blake3::Hasher::new());
        e.bytes(tag.as_bytes());
        e
    }
    fn u8(&mut self, v: u8) -> &mut Enc {
        self.0.update(&[v]);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Enc {
        self.0.update(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Enc {
        self.0.update(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Enc {
        self.u64(v.len() as u64);
        self.0.update(v);
        self
    }
    fn node(kind: u8, mode: u32, uid: u32, gid: u32, size: u64, link: &str) -> Enc {
        let mut e = Enc::new("kiln.context.node.v1");
        e.u8(kind)
            .u32(mode)
            .u32(uid)
            .u32(gid)
            .u64(size)
            .bytes(link.as_bytes())
            .u64(0);
        e
    }
    fn done(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

fn dir_node(mode: u32, children: &[(&str, [u8; 32])]) -> [u8; 32] {
    let mut e = Enc::node(b'd', 0o040000 | mode, 0, 0, 0, "");
    e.u64(children.len() as u64);
    for (name, hash) in children {
        e.bytes(name.as_bytes());
        e.0.update(hash);
    }
    e.done()
}

#[test]
fn golden_hashes_of_a_tiny_tree() {
    let ctx = tmp();
    let root = ctx.path();
    write_mode(root, "a.txt", "hello\n", 0o644);
    write_mode(root, "bin/run", "#!/bin/sh\n", 0o755);
    symlink("a.txt", root.join("link")).expect("symlink");
    lchown(root, Some(0), Some(0)).expect("chown");
    lchown(root.join("a.txt"), Some(1000), Some(1000)).expect("chown");
    lchown(root.join("bin"), Some(0), Some(0)).expect("chown");
    lchown(root.join("bin/run"), Some(0), Some(0)).expect("chown");
    lchown(root.join("link"), Some(0), Some(0)).expect("chown");

    let content = |s: &str| *blake3::hash(s.as_bytes()).as_bytes();
    let a = Enc::node(b'f', 0o100644, 1000, 1000, 6, "")
        .bytes(&content("hello\n"))
        .done();
    let run = Enc::node(b'f', 0o100755, 0, 0, 10, "")
        .bytes(&content("#!/bin/sh\n"))
        .done();
    let link = Enc::node(b'l', 0o120777, 0, 0, 0, "a.txt").bytes(b"").done();
    let bin = dir_node(0o755, &[("run", run)]);
    let whole = dir_node(0o755, &[("a.txt", a), ("bin", bin), ("link", link)]);

    let h = open(root);
    let hash_all = h.hash_all().expect("hash all");
    assert_eq!(
        hash_all.as_bytes(),
        &whole,
        "hash_all follows the documented encoding"
    );
    assert_eq!(
        hash_all.to_hex().as_str(),
        "ced4b9fb1310b861be11716fe3f82affc06a0ad3396304b0ce96909c49061407"
    );

    let selection = h
        .hash_selection(&strings(&["a.txt", "bin/*", "nope"]), true, &strings(&["*.md"]))
        .expect("hash selection");
    let mut e = Enc::new("kiln.context.selection.v1");
    e.u8(1).u64(1).bytes(b"*.md").u64(3);
    e.bytes(b"a.txt").u8(1).u64(1).bytes(b"a.txt").0.update(&a);
    e.bytes(b"bin/*").u8(1).u64(1).bytes(b"bin/run").0.update(&run);
    e.bytes(b"nope").u8(0);
    assert_eq!(
        selection.as_bytes(),
        &e.done(),
        "selections follow the documented encoding"
    );
    assert_eq!(
        selection.to_hex().as_str(),
        "3b671662528843aeac3c4ec513cc69e3e0dae0452392830a4148592059e1b214"
    );
}

#[test]
fn names_need_not_be_utf8() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let ctx = tmp();
    let odd = ctx.path().join(OsStr::from_bytes(b"caf\xe9.txt"));
    fs::write(&odd, "1").expect("write");
    let before = all(ctx.path());
    assert_eq!(
        sel(&open(ctx.path()), &["*.txt"]),
        sel(&open(ctx.path()), &["*.txt"])
    );
    let txt = sel(&open(ctx.path()), &["*.txt"]);
    fs::write(&odd, "2").expect("write");
    assert_ne!(all(ctx.path()), before);
    assert_ne!(sel(&open(ctx.path()), &["*.txt"]), txt);
}

#[test]
fn the_store_keeps_a_contexts_index_while_the_context_exists() {
    let (ctx, root) = (tmp(), tmp());
    let store = kiln_cache::Store::open(root.path()).expect("store");
    aged_tree(ctx.path(), 3);
    let h = open_indexed(ctx.path(), &store.context_index_dir());
    h.hash_all().expect("hash all");
    h.save_index().expect("save index");
    let file = h.index_file().expect("index file").to_path_buf();
    assert!(store.check().expect("check").warnings.is_empty());
    assert_eq!(store.prune(false, None).expect("prune").context_indexes, 0);
    assert!(file.is_file(), "the index of a context that exists stays");
    drop(ctx);
    assert_eq!(store.prune(false, None).expect("prune").context_indexes, 1);
    assert!(!file.exists(), "the index of a context that is gone goes");
}
