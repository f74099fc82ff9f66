//! The cache key of a COPY from the context covers exactly the files the copy reads: for random contexts,
//! `.dockerignore` files and COPY sources, changing a file the copy wrote into the image changes the key,
//! and changing any other file leaves it alone. A file the key ignored but the copy read would be a stale
//! cache hit; a file the key covered but the copy did not read, a needless miss.
//!
//! The copy gives context files to root (as BuildKit does), so this needs root, as the project's CI has; built
//! by another user it is ignored with the reason.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use kiln_fsutil::ignore::PatternMatcher;
use kiln_fsutil::select::Selector;
use kiln_llb::{Copy, FileAction};
use kiln_solver::context::{ContextError, ContextHasher};
use kiln_solver::fileop::{FileOpEnv, FileOpError, apply, copy_spec};
use proptest::prelude::*;

/// Names a context is made of: wildcards in the sources below match some of them and not others.
const NAMES: &[&str] = &["a", "b.txt", "c.md", "d", ".hidden"];

#[derive(Debug, Clone)]
enum Node {
    File,
    Dir(Vec<(usize, Node)>),
    /// A symlink to one of the generated names, relative, absolute (inside the context) or dangling.
    Link(&'static str),
}

fn node(depth: u32) -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        4 => Just(Node::File),
        1 => prop::sample::select(vec!["a", "d", "b.txt", "../b.txt", "/d/a", "missing"]).prop_map(Node::Link),
    ];
    leaf.prop_recursive(depth, 24, 4, |inner| {
        prop::collection::btree_map(0..NAMES.len(), inner, 0..4)
            .prop_map(|children| Node::Dir(children.into_iter().collect()))
    })
}

fn tree() -> impl Strategy<Value = Vec<(usize, Node)>> {
    prop::collection::btree_map(0..NAMES.len(), node(3), 1..5).prop_map(|m| m.into_iter().collect())
}

/// Writes the tree; every regular file gets unique content (`file <n>`) so the copy shows what it read.
fn build(dir: &Path, nodes: &[(usize, Node)], files: &mut Vec<std::path::PathBuf>) {
    for (name, node) in nodes {
        let path = dir.join(NAMES[*name]);
        match node {
            Node::File => {
                fs::write(&path, format!("file {}", files.len())).expect("write");
                files.push(path);
            }
            Node::Dir(children) => {
                fs::create_dir(&path).expect("mkdir");
                build(&path, children, files);
            }
            Node::Link(target) => std::os::unix::fs::symlink(target, &path).expect("symlink"),
        }
    }
}

/// The contents of the regular files under `dir` (the copy's output).
fn copied_contents(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copied_contents(&entry.path(), out);
        } else if kind.is_file() {
            out.insert(fs::read_to_string(entry.path()).expect("read"));
        }
    }
}

fn copy_of(sources: &[String], exclude: &[String], parents: bool) -> Copy {
    Copy {
        src_input: 0,
        src: sources.to_vec(),
        dest: "/out/".to_string(),
        follow_symlinks: true,
        dir_contents_only: true,
        allow_wildcard: true,
        allow_empty_wildcard: true,
        create_dest_path: true,
        parents,
        exclude: exclude.to_vec(),
        ..Copy::default()
    }
}

fn key(ctx: &Path, ignore: &[String], copy: &Copy) -> Result<blake3::Hash, ContextError> {
    let matcher = PatternMatcher::new(ignore).expect("ignore patterns");
    let hasher = ContextHasher::open(ctx, matcher, None).expect("open context");
    hasher.hash_copy(&copy_spec(copy))
}

fn run_copy(ctx: &Path, target: &Path, ignore: &[String], copy: &Copy) -> Result<(), FileOpError> {
    let matcher = PatternMatcher::new(ignore).expect("ignore patterns");
    let inputs = [ctx.to_path_buf()];
    let ignores = [Some(&matcher)];
    let env = FileOpEnv {
        target,
        inputs: &inputs,
        ignore: &ignores,
        timestamp: None,
    };
    apply(&env, &[FileAction::Copy(copy.clone())])
}

/// How many regular files the selection lists (each write of one counts).
fn selected_files(ctx: &Path, ignore: &[String], copy: &Copy) -> usize {
    let matcher = PatternMatcher::new(ignore).expect("ignore patterns");
    let root = kiln_fsutil::Root::new(ctx).expect("open context");
    let selection = Selector::new(&root, Some(&matcher))
        .select(&copy_spec(copy))
        .expect("selection");
    let is_file = |m: &kiln_fsutil::Meta| m.kind() == kiln_fsutil::Kind::File;
    selection
        .iter()
        .flat_map(|s| &s.items)
        .map(|item| {
            usize::from(is_file(&item.meta)) + item.entries.iter().filter(|e| is_file(&e.meta)).count()
        })
        .sum()
}

fn strings(items: Vec<&str>) -> Vec<String> {
    items.into_iter().map(str::to_string).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    #[cfg_attr(kiln_unprivileged, ignore = "needs root: the copy gives context files to root")]
    fn the_key_covers_exactly_what_the_copy_reads(
        nodes in tree(),
        ignore in prop::sample::subsequence(vec!["*.md", "d", "!d/b.txt", "a/**", "**/.hidden", "!a/d"], 0..3),
        sources in prop::sample::subsequence(
            vec!["a", "*.txt", "d/*", "a/b.txt", "*", "d/a/*.md", ".", "a/./d", "*/b.txt", "missing*"],
            1..3,
        ),
        exclude in prop::sample::subsequence(vec!["*.md", "b*", "a/d"], 0..2),
        parents in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let ctx = tmp.path().join("ctx");
        fs::create_dir(&ctx).expect("mkdir");
        let mut files = Vec::new();
        build(&ctx, &nodes, &mut files);
        let (ignore, sources, exclude) = (strings(ignore), strings(sources), strings(exclude));
        let copy = copy_of(&sources, &exclude, parents);

        let before = key(&ctx, &ignore, &copy);
        let target = tmp.path().join("target");
        fs::create_dir(&target).expect("mkdir");
        let copied = run_copy(&ctx, &target, &ignore, &copy);
        // Sources that are not there fail the key and the copy alike; a destination conflict between two
        // sources (a file and a directory of one name) is the copy's own business.
        let not_found = matches!(copied, Err(FileOpError::SourceNotFound { .. }));
        prop_assert!(!not_found || before.is_err(), "key {:?} vs copy {:?}", before, copied);
        prop_assert!(before.is_ok() || copied.is_err(), "key {:?} vs copy {:?}", before, copied);
        if copied.is_err() {
            return Ok(());
        }
        let Ok(before) = before else { return Ok(()) };
        let mut read = BTreeSet::new();
        copied_contents(&target, &mut read);
        // Two sources with one destination name: the later overwrites the earlier, which the copy still read
        // (and the key rightly covers), though the output does not show it.
        let overwrites = selected_files(&ctx, &ignore, &copy) != read.len();

        for (n, file) in files.iter().enumerate() {
            let original = format!("file {n}");
            fs::write(file, format!("changed {n}")).expect("rewrite");
            let after = key(&ctx, &ignore, &copy).expect("key after a content change");
            fs::write(file, &original).expect("restore");
            let shown = file.strip_prefix(&ctx).unwrap_or(file).display().to_string();
            if read.contains(&original) {
                prop_assert_ne!(after, before, "{} is in the image but not in the key", shown);
            } else if !overwrites {
                prop_assert_eq!(after, before, "{} is in the key but the copy did not read it", shown);
            }
        }
    }
}
