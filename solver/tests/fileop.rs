//! File operations (COPY/ADD, mkdir, mkfile, rm, symlink) with BuildKit's semantics, checked on the trees
//! they produce. Runs as root (as CI does): ownership is part of what is checked.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_fsutil::ignore::PatternMatcher;
use kiln_llb::{Copy, FileAction, Owner};
use kiln_solver::fileop::{FileOpEnv, FileOpError, apply};

/// A build context, a stage rootfs (another input) and the target tree, in one temp dir.
struct Fixture {
    dir: tempfile::TempDir,
    ignore: Option<PatternMatcher>,
    timestamp: Option<u64>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["ctx", "stage", "target"] {
            fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        Fixture {
            dir,
            ignore: Some(PatternMatcher::new(&[]).expect("empty matcher")),
            timestamp: None,
        }
    }

    fn ctx(&self, rel: &str) -> PathBuf {
        self.dir.path().join("ctx").join(rel)
    }

    fn stage(&self, rel: &str) -> PathBuf {
        self.dir.path().join("stage").join(rel)
    }

    fn target(&self, rel: &str) -> PathBuf {
        self.dir.path().join("target").join(rel)
    }

    fn outside(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, actions: Vec<FileAction>) -> Result<(), FileOpError> {
        let inputs = [self.ctx(""), self.stage("")];
        let ignore = [self.ignore.as_ref(), None];
        let target = self.target("");
        let env = FileOpEnv {
            target: &target,
            inputs: &inputs,
            ignore: &ignore,
            timestamp: self.timestamp,
        };
        apply(&env, &actions)
    }

    fn copy(&self, copy: Copy) -> Result<(), FileOpError> {
        self.run(vec![FileAction::Copy(copy)])
    }
}

/// A COPY as the Dockerfile frontend emits it, from the context (input 0).
fn cp(src: &[&str], dest: &str) -> Copy {
    Copy {
        src_input: 0,
        src: src.iter().map(|s| s.to_string()).collect(),
        dest: dest.to_string(),
        follow_symlinks: true,
        dir_contents_only: true,
        allow_wildcard: true,
        create_dest_path: true,
        ..Copy::default()
    }
}

fn write(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir -p");
    }
    fs::write(path, content).expect("write");
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("lstat").mode() & 0o7777
}

fn ids(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).expect("lstat");
    (m.uid(), m.gid())
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn owner(user: &str, group: Option<&str>) -> Option<Owner> {
    Some(Owner {
        user: user.to_string(),
        group: group.map(str::to_string),
    })
}

fn not_found(result: Result<(), FileOpError>) -> String {
    match result {
        Err(e @ FileOpError::SourceNotFound { .. }) => e.to_string(),
        other => panic!("expected a not-found error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- sources

#[test]
fn wildcards_select_matching_files_only() {
    let f = Fixture::new();
    write(&f.ctx("a.txt"), "a");
    write(&f.ctx("b.txt"), "b");
    write(&f.ctx("c.md"), "c");
    write(&f.ctx("dir1/x.go"), "x");
    write(&f.ctx("dir2/y.go"), "y");
    write(&f.ctx("dir2/y.rs"), "r");
    write(&f.ctx("d3/z.go"), "z");
    f.copy(cp(&["*.txt"], "/out/")).expect("copy *.txt");
    assert_eq!(names(&f.target("out")), ["a.txt", "b.txt"]);
    // `?` and a class in a leading segment, `*` in the last: one segment each, never across `/`.
    f.copy(cp(&["dir[12]/?.go"], "/go/")).expect("copy dir[12]/?.go");
    assert_eq!(names(&f.target("go")), ["x.go", "y.go"]);
    f.copy(cp(&["/*.md"], "/md/")).expect("leading slash");
    assert_eq!(read(&f.target("md/c.md")), "c");
}

#[test]
fn wildcard_without_match_is_an_error_unless_allowed() {
    let f = Fixture::new();
    write(&f.ctx("a.txt"), "a");
    let message = not_found(f.copy(cp(&["*.none"], "/out/")));
    assert!(message.contains("\"/*.none\": not found"), "{message}");
    assert!(
        !exists(&f.target("out")),
        "nothing may be written when a source is missing"
    );

    let mut allowed = cp(&["*.none", "a.txt"], "/out/");
    allowed.allow_empty_wildcard = true;
    f.copy(allowed).expect("empty wildcard allowed");
    assert_eq!(names(&f.target("out")), ["a.txt"]);
}

#[test]
fn missing_literal_source_names_the_path_and_the_context() {
    let f = Fixture::new();
    let message = not_found(f.copy(cp(&["app.py"], "/app/")));
    assert!(message.contains("\"/app.py\": not found"), "{message}");
    assert!(message.contains("build context"), "{message}");
    write(&f.ctx("a.txt"), "a");
    not_found(f.copy(cp(&["a.txt", "app.py"], "/both/")));
    assert!(
        !exists(&f.target("both")),
        "a missing source must fail the copy before anything is written"
    );
    let mut from_stage = cp(&["/missing"], "/x");
    from_stage.src_input = 1;
    let message = not_found(f.copy(from_stage));
    assert!(
        message.contains("\"/missing\": not found") && !message.contains("context"),
        "{message}"
    );
    assert!(matches!(f.copy(cp(&[], "/x")), Err(FileOpError::NoSources)));
    let mut bad_input = cp(&["a"], "/x");
    bad_input.src_input = 7;
    assert!(matches!(
        f.copy(bad_input),
        Err(FileOpError::NoSuchInput { index: 7, count: 2 })
    ));
}

#[test]
fn a_directory_source_copies_its_contents() {
    let f = Fixture::new();
    write(&f.ctx("dir/x"), "x");
    write(&f.ctx("dir/sub/y"), "y");
    f.copy(cp(&["dir"], "/dst")).expect("copy dir");
    assert_eq!(names(&f.target("dst")), ["sub", "x"]);
    assert_eq!(read(&f.target("dst/sub/y")), "y");
    // Into an existing directory the contents merge; the directory itself is never nested.
    write(&f.target("existing/keep"), "k");
    f.copy(cp(&["dir/"], "/existing")).expect("copy into existing");
    assert_eq!(names(&f.target("existing")), ["keep", "sub", "x"]);

    // Without dir_contents_only (llb.Copy default) a directory goes inside an existing destination by name.
    let mut whole = cp(&["dir"], "/existing");
    whole.dir_contents_only = false;
    f.copy(whole).expect("copy dir itself");
    assert_eq!(read(&f.target("existing/dir/sub/y")), "y");
}

#[test]
fn trailing_slash_or_existing_directory_means_inside_else_rename() {
    let f = Fixture::new();
    write(&f.ctx("a.txt"), "a");
    fs::create_dir(f.target("existing")).expect("mkdir");
    f.copy(cp(&["a.txt"], "/renamed")).expect("rename");
    assert_eq!(read(&f.target("renamed")), "a");
    f.copy(cp(&["a.txt"], "/newdir/")).expect("into new dir");
    assert_eq!(read(&f.target("newdir/a.txt")), "a");
    f.copy(cp(&["a.txt"], "/existing")).expect("into existing dir");
    assert_eq!(read(&f.target("existing/a.txt")), "a");
    // An existing file is replaced.
    write(&f.ctx("a.txt"), "a2");
    f.copy(cp(&["a.txt"], "/renamed")).expect("overwrite");
    assert_eq!(read(&f.target("renamed")), "a2");
}

#[test]
fn several_sources_need_a_directory_destination() {
    let f = Fixture::new();
    write(&f.ctx("a.txt"), "a");
    write(&f.ctx("b.txt"), "b");
    f.copy(cp(&["a.txt", "b.txt"], "/multi/")).expect("two sources");
    assert_eq!(names(&f.target("multi")), ["a.txt", "b.txt"]);
    let err = f
        .copy(cp(&["*.txt"], "/flat"))
        .expect_err("two matches into a file name");
    assert!(
        matches!(err, FileOpError::DestNotDirectory { count: 2, .. }),
        "{err:?}"
    );
    assert!(!exists(&f.target("flat")));
    // An existing directory is fine without the slash.
    f.copy(cp(&["*.txt"], "/multi")).expect("existing dir");
}

#[test]
fn destination_parents_are_created_root_owned_or_chowned() {
    let f = Fixture::new();
    write(&f.ctx("a.txt"), "a");
    f.copy(cp(&["a.txt"], "/x/y/z/")).expect("copy");
    assert_eq!(read(&f.target("x/y/z/a.txt")), "a");
    for dir in ["x", "x/y", "x/y/z"] {
        assert_eq!(mode(&f.target(dir)), 0o755, "{dir}");
        assert_eq!(ids(&f.target(dir)), (0, 0), "{dir}");
    }
    // BuildKit's MkdirAll gives created parents the --chown owner; existing ones are left alone.
    let mut chowned = cp(&["a.txt"], "/x/p/q/file");
    chowned.owner = owner("77", Some("88"));
    f.copy(chowned).expect("chown copy");
    assert_eq!(ids(&f.target("x/p")), (77, 88));
    assert_eq!(ids(&f.target("x/p/q")), (77, 88));
    assert_eq!(ids(&f.target("x/p/q/file")), (77, 88));
    assert_eq!(ids(&f.target("x")), (0, 0));

    let mut strict = cp(&["a.txt"], "/nope/deeper/file");
    strict.create_dest_path = false;
    assert!(matches!(f.copy(strict), Err(FileOpError::Io { op: "stat", .. })));
}

// ---------------------------------------------------------------- symlinks and confinement

#[test]
fn symlink_source_is_followed_inside_the_context_only() {
    let f = Fixture::new();
    write(&f.ctx("etc/passwd"), "sentinel from the context");
    symlink("/etc/passwd", f.ctx("abs")).expect("symlink");
    symlink("../../../../../../etc/passwd", f.ctx("rel")).expect("symlink");
    symlink("/etc", f.ctx("etcdir")).expect("symlink");
    fs::create_dir_all(f.ctx("nested/deeper")).expect("mkdir");
    symlink("/etc/passwd", f.ctx("nested/deeper/abs")).expect("symlink");
    f.copy(cp(&["abs"], "/got-abs")).expect("copy abs link");
    f.copy(cp(&["nested/deeper/abs"], "/got-nested"))
        .expect("copy nested abs link");
    f.copy(cp(&["rel"], "/got-rel")).expect("copy rel link");
    f.copy(cp(&["etcdir/passwd"], "/got-via-dir"))
        .expect("copy through link dir");
    for got in ["got-abs", "got-nested", "got-rel", "got-via-dir"] {
        assert_eq!(
            read(&f.target(got)),
            "sentinel from the context",
            "{got} came from the host"
        );
    }
    // The copy is named after the link, and is a file, not a link.
    f.copy(cp(&["abs"], "/named/")).expect("copy into dir");
    assert!(
        fs::symlink_metadata(f.target("named/abs"))
            .expect("lstat")
            .is_file()
    );
    // A link leading out to something that is not in the context is a missing source.
    symlink("/nonexistent-on-purpose", f.ctx("dangling")).expect("symlink");
    not_found(f.copy(cp(&["dangling"], "/d")));
    // Without follow_symlinks the link itself is copied.
    let mut nofollow = cp(&["abs"], "/link-itself");
    nofollow.follow_symlinks = false;
    f.copy(nofollow).expect("copy link itself");
    assert_eq!(
        fs::read_link(f.target("link-itself")).expect("readlink"),
        Path::new("/etc/passwd")
    );
}

#[test]
fn destination_through_a_target_symlink_stays_in_the_target() {
    let f = Fixture::new();
    write(&f.ctx("a.txt"), "a");
    symlink("/", f.target("toroot")).expect("symlink");
    symlink("../../../../../..", f.target("up")).expect("symlink");
    f.copy(cp(&["a.txt"], "/toroot/inside.txt")).expect("copy via /");
    f.copy(cp(&["a.txt"], "/up/tmp/")).expect("copy via ..");
    assert_eq!(read(&f.target("inside.txt")), "a");
    assert_eq!(read(&f.target("tmp/a.txt")), "a");
    assert!(!Path::new("/inside.txt").exists(), "wrote to the host root");
    assert!(
        !f.outside("tmp").exists() && !f.outside("inside.txt").exists(),
        "wrote above the target"
    );

    // A directory copied onto a symlink to a directory goes into the link's target inside the root.
    write(&f.ctx("dir/x"), "x");
    fs::create_dir(f.target("real")).expect("mkdir");
    symlink("/real", f.target("linkdir")).expect("symlink");
    f.copy(cp(&["dir"], "/linkdir")).expect("copy onto link");
    assert_eq!(read(&f.target("real/x")), "x");
    assert!(
        fs::symlink_metadata(f.target("linkdir"))
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
}

#[test]
fn existing_symlinks_in_the_target_are_replaced_not_written_through() {
    let f = Fixture::new();
    write(&f.ctx("dir/f"), "new content");
    write(&f.target("victim"), "untouched");
    fs::create_dir(f.target("d")).expect("mkdir");
    symlink("/victim", f.target("d/f")).expect("symlink");
    f.copy(cp(&["dir"], "/d")).expect("copy");
    assert!(fs::symlink_metadata(f.target("d/f")).expect("lstat").is_file());
    assert_eq!(read(&f.target("d/f")), "new content");
    assert_eq!(read(&f.target("victim")), "untouched");

    // fsutil refuses to merge a directory into a non-directory, and to replace a directory with a file.
    write(&f.ctx("tree/sub/x"), "x");
    write(&f.target("t/sub"), "a file");
    assert!(matches!(
        f.copy(cp(&["tree"], "/t")),
        Err(FileOpError::NotADirectory { .. })
    ));
    write(&f.ctx("flat/sub"), "file");
    fs::create_dir_all(f.target("u/sub")).expect("mkdir");
    assert!(matches!(
        f.copy(cp(&["flat"], "/u")),
        Err(FileOpError::ReplaceDirectory { .. })
    ));
}

#[test]
fn symlinks_hardlinks_and_special_files_inside_a_directory_are_kept() {
    let f = Fixture::new();
    write(&f.ctx("dir/file"), "data");
    symlink("file", f.ctx("dir/rel")).expect("symlink");
    symlink("/etc/shadow", f.ctx("dir/abs")).expect("symlink");
    fs::hard_link(f.ctx("dir/file"), f.ctx("dir/hard")).expect("link");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        f.ctx("dir/fifo").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .expect("mkfifo");
    f.copy(cp(&["dir"], "/out")).expect("copy");
    assert_eq!(
        fs::read_link(f.target("out/rel")).expect("readlink"),
        Path::new("file")
    );
    assert_eq!(
        fs::read_link(f.target("out/abs")).expect("readlink"),
        Path::new("/etc/shadow")
    );
    let (a, b) = (
        fs::metadata(f.target("out/file")).expect("stat"),
        fs::metadata(f.target("out/hard")).expect("stat"),
    );
    assert_eq!(a.ino(), b.ino(), "hardlinks must stay one inode");
    assert_eq!(a.nlink(), 2);
    let fifo = fs::symlink_metadata(f.target("out/fifo")).expect("lstat");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    assert_eq!(fifo.mode() & 0o7777, 0o640);
}

#[test]
fn xattrs_are_copied_except_overlay_ones() {
    let f = Fixture::new();
    write(&f.ctx("dir/file"), "x");
    for (path, name, value) in [
        ("dir/file", "user.kiln", "file-value"),
        ("dir/file", "trusted.overlay.opaque", "y"),
        ("dir", "user.kiln", "dir-value"),
    ] {
        rustix::fs::setxattr(
            f.ctx(path).as_path(),
            name,
            value.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap_or_else(|e| panic!("this test needs xattrs on the temp dir's filesystem: {name}: {e}"));
    }
    f.copy(cp(&["/"], "/out/")).expect("copy");
    let get = |path: &str, name: &str| {
        let mut buf = [0u8; 64];
        rustix::fs::getxattr(f.target(path).as_path(), name, &mut buf[..])
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    assert_eq!(
        get("out/dir/file", "user.kiln").expect("user xattr"),
        "file-value"
    );
    assert_eq!(get("out/dir", "user.kiln").expect("dir xattr"), "dir-value");
    assert!(
        get("out/dir/file", "trusted.overlay.opaque").is_err(),
        "an overlay xattr was copied"
    );
}

// ---------------------------------------------------------------- ownership and modes

fn target_users(f: &Fixture) {
    write(
        &f.target("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
    );
    write(
        &f.target("etc/group"),
        "root:x:0:\napp:x:1001:\nstaff:x:2000:app\n",
    );
    // The context's own files must not be consulted.
    write(&f.ctx("etc/passwd"), "app:x:5555:5555::/:/bin/sh\n");
    write(&f.ctx("etc/group"), "staff:x:6666:\n");
}

#[test]
fn chown_names_resolve_in_the_target_numbers_as_given() {
    let f = Fixture::new();
    target_users(&f);
    write(&f.ctx("a.txt"), "a");
    let cases: [(&str, Option<&str>, (u32, u32)); 6] = [
        ("app", None, (1000, 1001)),
        ("app", Some("staff"), (1000, 2000)),
        ("42", None, (42, 42)),
        ("42", Some("7"), (42, 7)),
        ("app", Some("9"), (1000, 9)),
        ("42", Some("staff"), (42, 2000)),
    ];
    for (i, (user, group, want)) in cases.into_iter().enumerate() {
        let dest = format!("/o{i}");
        let mut c = cp(&["a.txt"], &dest);
        c.owner = owner(user, group);
        f.copy(c).expect("chown copy");
        assert_eq!(ids(&f.target(&dest[1..])), want, "--chown={user}:{group:?}");
    }
    let mut unknown = cp(&["a.txt"], "/u");
    unknown.owner = owner("ghost", None);
    let err = f.copy(unknown).expect_err("unknown user");
    assert_eq!(
        err.to_string(),
        "invalid user \"ghost\": no such user in /etc/passwd"
    );
    let mut unknown_group = cp(&["a.txt"], "/u");
    unknown_group.owner = owner("app", Some("ghosts"));
    assert!(matches!(
        f.copy(unknown_group),
        Err(FileOpError::UnknownGroup { .. })
    ));
    assert!(!exists(&f.target("u")));
}

#[test]
fn chown_root_works_without_passwd() {
    let f = Fixture::new();
    write(&f.ctx("a.txt"), "a");
    let mut c = cp(&["a.txt"], "/r");
    c.owner = owner("root", Some("root"));
    f.copy(c).expect("root needs no passwd");
    assert_eq!(ids(&f.target("r")), (0, 0));
}

#[test]
fn context_files_are_root_owned_other_inputs_keep_owners() {
    let f = Fixture::new();
    write(&f.ctx("dir/a"), "a");
    chown(f.ctx("dir/a"), Some(1234), Some(5678)).expect("chown");
    chown(f.ctx("dir"), Some(1234), Some(5678)).expect("chown");
    write(&f.stage("dir/a"), "a");
    chown(f.stage("dir/a"), Some(1234), Some(5678)).expect("chown");
    fs::create_dir(f.stage("dir/sub")).expect("mkdir");
    chown(f.stage("dir/sub"), Some(31), Some(32)).expect("chown");
    f.copy(cp(&["dir"], "/fromctx")).expect("copy ctx");
    assert_eq!(ids(&f.target("fromctx/a")), (0, 0));
    let mut from_stage = cp(&["/dir"], "/fromstage");
    from_stage.src_input = 1;
    f.copy(from_stage).expect("copy stage");
    assert_eq!(ids(&f.target("fromstage/a")), (1234, 5678));
    assert_eq!(ids(&f.target("fromstage/sub")), (31, 32));
}

#[test]
fn modes_are_kept_or_set_by_chmod() {
    let f = Fixture::new();
    write(&f.ctx("dir/run.sh"), "#!/bin/sh");
    set_mode(&f.ctx("dir/run.sh"), 0o4755);
    write(&f.ctx("dir/sub/data"), "d");
    set_mode(&f.ctx("dir/sub/data"), 0o640);
    set_mode(&f.ctx("dir/sub"), 0o750);
    f.copy(cp(&["dir"], "/keep")).expect("copy");
    assert_eq!(mode(&f.target("keep/run.sh")), 0o4755);
    assert_eq!(mode(&f.target("keep/sub")), 0o750);
    assert_eq!(mode(&f.target("keep/sub/data")), 0o640);

    // Octal: every copied file and directory gets exactly the mode (fsutil applies it to directories too).
    let mut octal = cp(&["dir"], "/octal");
    octal.mode = Some("0700".into());
    f.copy(octal).expect("chmod octal");
    assert_eq!(mode(&f.target("octal/run.sh")), 0o700);
    assert_eq!(mode(&f.target("octal/sub")), 0o700);
    assert_eq!(mode(&f.target("octal/sub/data")), 0o700);
    // The destination directory the copy merged into is not a copied directory.
    assert_eq!(mode(&f.target("octal")), 0o755);

    // Symbolic: applied to each entry's own mode; X adds x to directories and already-executable files.
    let mut symbolic = cp(&["dir"], "/sym");
    symbolic.mode = Some("a=rX".into());
    f.copy(symbolic).expect("chmod symbolic");
    assert_eq!(mode(&f.target("sym/run.sh")), 0o555);
    assert_eq!(mode(&f.target("sym/sub")), 0o555);
    assert_eq!(mode(&f.target("sym/sub/data")), 0o444);
    let mut plus = cp(&["dir/sub/data"], "/plus");
    plus.mode = Some("u+x,go-r".into());
    f.copy(plus).expect("chmod u+x,go-r");
    assert_eq!(mode(&f.target("plus")), 0o700);

    let mut bad = cp(&["dir"], "/bad");
    bad.mode = Some("u+q".into());
    assert!(matches!(f.copy(bad), Err(FileOpError::InvalidChmod { .. })));
}

#[test]
fn mtimes_are_kept_and_clamped_to_source_date_epoch() {
    let mut f = Fixture::new();
    write(&f.ctx("old"), "o");
    write(&f.ctx("new"), "n");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(500);
    fs::File::options()
        .write(true)
        .open(f.ctx("old"))
        .expect("open")
        .set_modified(old)
        .expect("utime");
    f.copy(cp(&["old"], "/kept")).expect("copy");
    assert_eq!(fs::metadata(f.target("kept")).expect("stat").mtime(), 500);
    f.timestamp = Some(1000);
    f.copy(cp(&["old", "new"], "/clamped/")).expect("copy");
    assert_eq!(fs::metadata(f.target("clamped/old")).expect("stat").mtime(), 500);
    assert_eq!(fs::metadata(f.target("clamped/new")).expect("stat").mtime(), 1000);
}

// ---------------------------------------------------------------- filters

#[test]
fn exclude_patterns_are_relative_to_each_source() {
    let f = Fixture::new();
    write(&f.ctx("dir/keep.txt"), "k");
    write(&f.ctx("dir/drop.log"), "d");
    write(&f.ctx("dir/sub/deep.log"), "d");
    write(&f.ctx("dir/sub/skip/x"), "x");
    write(&f.ctx("dir/sub/ok"), "o");
    let mut c = cp(&["dir"], "/e");
    c.exclude = vec!["*.log".into(), "sub/skip".into(), "**/deep.log".into()];
    f.copy(c).expect("copy with exclude");
    assert_eq!(names(&f.target("e")), ["keep.txt", "sub"]);
    assert_eq!(names(&f.target("e/sub")), ["ok"]);
    // The matched source itself is never excluded, and an exception brings a file back.
    let mut exception = cp(&["dir/*.log"], "/logs/");
    exception.exclude = vec!["*.log".into()];
    f.copy(exception).expect("matched source stays");
    assert_eq!(names(&f.target("logs")), ["drop.log"]);
    let mut back = cp(&["dir"], "/back");
    back.exclude = vec!["sub".into(), "!sub/ok".into()];
    f.copy(back).expect("exception");
    assert_eq!(names(&f.target("back/sub")), ["ok"]);
}

#[test]
fn parents_keep_the_source_directories() {
    let f = Fixture::new();
    write(&f.ctx("src/a/x.go"), "x");
    write(&f.ctx("src/b/y.go"), "y");
    write(&f.ctx("src/b/z.txt"), "z");
    write(&f.ctx("docs/w.go"), "w");
    set_mode(&f.ctx("src/b"), 0o750);
    let mut c = cp(&["./src/*/*.go"], "/p/");
    c.parents = true;
    f.copy(c).expect("copy --parents");
    assert_eq!(names(&f.target("p")), ["src"]);
    assert_eq!(names(&f.target("p/src")), ["a", "b"]);
    assert_eq!(names(&f.target("p/src/b")), ["y.go"]);
    // Directories created on the way get their source's metadata.
    assert_eq!(mode(&f.target("p/src/b")), 0o750);

    // `/./` marks the pivot: only what follows it is kept.
    let mut pivot = cp(&["src/./b/*.go"], "/q/");
    pivot.parents = true;
    f.copy(pivot).expect("copy with pivot");
    assert_eq!(names(&f.target("q")), ["b"]);
    assert_eq!(read(&f.target("q/b/y.go")), "y");

    let mut nothing = cp(&["src/*/*.none"], "/r/");
    nothing.parents = true;
    not_found(f.copy(nothing));
}

#[test]
fn dockerignored_files_are_never_copied() {
    let mut f = Fixture::new();
    write(&f.ctx("app.py"), "app");
    write(&f.ctx("secret.txt"), "s");
    write(&f.ctx("secrets/key"), "k");
    write(&f.ctx("logs/a.log"), "l");
    write(&f.ctx("logs/keep.log"), "keep");
    f.ignore = Some(
        PatternMatcher::new(&["secret*".into(), "logs".into(), "!logs/keep.log".into()]).expect("patterns"),
    );
    f.copy(cp(&["."], "/")).expect("COPY . /");
    assert!(exists(&f.target("app.py")));
    assert!(
        !exists(&f.target("secret.txt")) && !exists(&f.target("secrets")),
        "ignored files copied"
    );
    assert_eq!(names(&f.target("logs")), ["keep.log"]);
    let message = not_found(f.copy(cp(&["secret.txt"], "/x")));
    assert!(message.contains("excluded by .dockerignore"), "{message}");
    not_found(f.copy(cp(&["secret*"], "/y/")));
    // A link is no way around it.
    symlink("secret.txt", f.ctx("innocent")).expect("symlink");
    not_found(f.copy(cp(&["innocent"], "/z")));
}

// ---------------------------------------------------------------- ADD archives

fn tar_bytes(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o640);
        header.set_uid(1500);
        header.set_gid(1600);
        header.set_mtime(1_600_000_000);
        builder
            .append_data(&mut header, name, content.as_bytes())
            .expect("append");
    }
    builder.into_inner().expect("finish")
}

fn add(src: &str, dest: &str) -> Copy {
    let mut c = cp(&[src], dest);
    c.auto_extract = true;
    c
}

#[test]
fn add_extracts_tar_in_every_compression() {
    let f = Fixture::new();
    let plain = tar_bytes(&[("top/file.txt", "hello"), ("top/other", "x")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).expect("gzip");
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(&plain).expect("bzip2");
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&plain).expect("xz");
    let zst = zstd::encode_all(plain.as_slice(), 3).expect("zstd");
    let archives = [
        ("a.tar", plain.clone()),
        ("a.tar.gz", gz.finish().expect("gzip")),
        ("a.tar.bz2", bz.finish().expect("bzip2")),
        ("a.tar.xz", xz.finish().expect("xz")),
        ("a.tar.zst", zst),
        // The content decides, not the name.
        ("noext", plain),
    ];
    for (name, bytes) in archives {
        fs::write(f.ctx(name), bytes).expect("write archive");
        let dest = format!("/x-{name}/");
        f.copy(add(name, &dest))
            .unwrap_or_else(|e| panic!("ADD {name}: {e}"));
        let root = f.target(&dest[1..]);
        assert_eq!(read(&root.join("top/file.txt")), "hello", "{name}");
        assert_eq!(
            ids(&root.join("top/file.txt")),
            (1500, 1600),
            "{name}: archive owners kept"
        );
        assert_eq!(mode(&root.join("top/file.txt")), 0o640, "{name}");
        assert_eq!(
            fs::metadata(root.join("top/file.txt")).expect("stat").mtime(),
            1_600_000_000,
            "{name}"
        );
        assert!(
            !root.join(name).exists(),
            "{name} was copied instead of extracted"
        );
    }
    // ADD --chown applies to the extracted files.
    let mut chowned = add("a.tar", "/chowned");
    chowned.owner = owner("9", Some("8"));
    f.copy(chowned).expect("ADD --chown");
    assert_eq!(ids(&f.target("chowned/top/file.txt")), (9, 8));
    // COPY never extracts.
    f.copy(cp(&["a.tar"], "/copied/")).expect("COPY archive");
    assert!(f.target("copied/a.tar").is_file());
}

#[test]
fn add_copies_a_non_archive_with_an_archive_name() {
    let f = Fixture::new();
    write(&f.ctx("fake.tar.gz"), "just text, not gzip");
    let mut fake_gzip = vec![0x1f, 0x8b, 0x08];
    fake_gzip.extend_from_slice(b"garbage");
    fs::write(f.ctx("broken.tgz"), &fake_gzip).expect("write");
    f.copy(add("fake.tar.gz", "/d/")).expect("ADD non-archive");
    f.copy(add("broken.tgz", "/d/")).expect("ADD broken gzip");
    assert_eq!(read(&f.target("d/fake.tar.gz")), "just text, not gzip");
    assert_eq!(fs::read(f.target("d/broken.tgz")).expect("read"), fake_gzip);
}

/// A tar entry with a name the tar crate's builder would refuse.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, content: &str) {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_600_000_000);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(content.as_bytes());
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish_tar(mut out: Vec<u8>) -> Vec<u8> {
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn hostile_archives_cannot_escape_the_destination() {
    let f = Fixture::new();
    use tar::EntryType as T;

    let mut escape = Vec::new();
    raw_entry(&mut escape, "ok.txt", T::Regular, "", "fine");
    raw_entry(&mut escape, "../escape.txt", T::Regular, "", "pwned");
    fs::write(f.ctx("escape.tar"), finish_tar(escape)).expect("write");
    let err = f
        .copy(add("escape.tar", "/x/"))
        .expect_err("a .. name must fail the ADD");
    assert!(err.to_string().contains("outside the extraction root"), "{err}");
    assert!(!f.target("escape.txt").exists() && !f.outside("escape.txt").exists());

    let mut absolute = Vec::new();
    raw_entry(&mut absolute, "/abs.txt", T::Regular, "", "clamped");
    raw_entry(&mut absolute, "/../../abs2.txt", T::Regular, "", "clamped too");
    fs::write(f.ctx("absolute.tar"), finish_tar(absolute)).expect("write");
    f.copy(add("absolute.tar", "/y/")).expect("absolute names");
    assert_eq!(read(&f.target("y/abs.txt")), "clamped");
    assert_eq!(read(&f.target("y/abs2.txt")), "clamped too");
    assert!(!Path::new("/abs.txt").exists() && !f.target("abs.txt").exists());

    let mut via_link = Vec::new();
    raw_entry(&mut via_link, "evil", T::Symlink, "/", "");
    raw_entry(&mut via_link, "evil/pwned", T::Regular, "", "inside");
    raw_entry(&mut via_link, "up", T::Symlink, "../../../../..", "");
    raw_entry(&mut via_link, "up/pwned2", T::Regular, "", "inside too");
    raw_entry(&mut via_link, "target-file", T::Regular, "", "original");
    raw_entry(&mut via_link, "over", T::Symlink, "target-file", "");
    raw_entry(&mut via_link, "over", T::Regular, "", "replaces the link");
    fs::write(f.ctx("links.tar"), finish_tar(via_link)).expect("write");
    f.copy(add("links.tar", "/z/"))
        .expect("symlink tricks stay inside");
    assert_eq!(read(&f.target("z/pwned")), "inside");
    assert_eq!(read(&f.target("z/pwned2")), "inside too");
    assert_eq!(read(&f.target("z/target-file")), "original");
    assert_eq!(read(&f.target("z/over")), "replaces the link");
    assert!(!f.target("pwned").exists() && !f.outside("pwned").exists() && !f.outside("pwned2").exists());

    let mut hardlink = Vec::new();
    raw_entry(&mut hardlink, "h", T::Link, "../../ctx/escape.tar", "");
    fs::write(f.ctx("hard.tar"), finish_tar(hardlink)).expect("write");
    assert!(matches!(
        f.copy(add("hard.tar", "/w/")),
        Err(FileOpError::Archive { .. })
    ));
    assert!(!f.target("w/h").exists());
}

// ---------------------------------------------------------------- mkdir, mkfile, rm, symlink

#[test]
fn mkdir_mkfile_symlink_rm() {
    let f = Fixture::new();
    target_users(&f);
    let run = |action: FileAction| f.run(vec![action]);
    run(FileAction::Mkdir {
        path: "/a/b/c".into(),
        mode: 0o750,
        make_parents: true,
        owner: owner("app", None),
    })
    .expect("mkdir -p");
    for dir in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode(&f.target(dir)), 0o750, "{dir}");
        assert_eq!(ids(&f.target(dir)), (1000, 1001), "{dir}");
    }
    let err = run(FileAction::Mkdir {
        path: "/no/parent".into(),
        mode: 0o755,
        make_parents: false,
        owner: None,
    });
    assert!(matches!(err, Err(FileOpError::Io { op: "mkdir", .. })), "{err:?}");
    run(FileAction::Mkdir {
        path: "/a".into(),
        mode: 0o700,
        make_parents: false,
        owner: None,
    })
    .expect("existing");
    assert_eq!(mode(&f.target("a")), 0o750, "an existing directory is left alone");

    run(FileAction::Mkfile {
        path: "/a/b/f".into(),
        mode: 0o640,
        data: "content".into(),
        owner: owner("42", None),
    })
    .expect("mkfile");
    assert_eq!(read(&f.target("a/b/f")), "content");
    assert_eq!(mode(&f.target("a/b/f")), 0o640);
    assert_eq!(ids(&f.target("a/b/f")), (42, 42));
    // mkfile replaces a symlink rather than writing through it.
    write(&f.target("victim"), "safe");
    symlink("/nonexistent-target", f.target("a/dangling")).expect("symlink");
    run(FileAction::Mkfile {
        path: "/a/dangling".into(),
        mode: 0o600,
        data: "x".into(),
        owner: None,
    })
    .expect("mkfile over dangling link");
    assert_eq!(
        read(&f.target("nonexistent-target")),
        "x",
        "BuildKit resolves the link inside the root"
    );
    assert!(!Path::new("/nonexistent-target").exists());

    run(FileAction::Symlink {
        target: "b/f".into(),
        path: "/a/link".into(),
    })
    .expect("symlink");
    assert_eq!(
        fs::read_link(f.target("a/link")).expect("readlink"),
        Path::new("b/f")
    );
    assert_eq!(read(&f.target("a/link")), "content");
    assert!(matches!(
        run(FileAction::Symlink {
            target: "x".into(),
            path: "/a/link".into()
        }),
        Err(FileOpError::Io { .. })
    ));

    write(&f.target("a/one.tmp"), "1");
    write(&f.target("a/two.tmp"), "2");
    run(FileAction::Rm {
        path: "/a/*.tmp".into(),
        allow_not_found: false,
        allow_wildcard: true,
    })
    .expect("rm glob");
    assert!(!exists(&f.target("a/one.tmp")) && !exists(&f.target("a/two.tmp")));
    // rm removes a link, not what it points to.
    run(FileAction::Rm {
        path: "/a/link".into(),
        allow_not_found: false,
        allow_wildcard: false,
    })
    .expect("rm link");
    assert!(!exists(&f.target("a/link")) && exists(&f.target("a/b/f")));
    run(FileAction::Rm {
        path: "/a/b".into(),
        allow_not_found: false,
        allow_wildcard: false,
    })
    .expect("rm -r");
    assert!(!exists(&f.target("a/b")));
    assert!(
        run(FileAction::Rm {
            path: "/a/b".into(),
            allow_not_found: false,
            allow_wildcard: false
        })
        .is_err()
    );
    run(FileAction::Rm {
        path: "/a/b".into(),
        allow_not_found: true,
        allow_wildcard: false,
    })
    .expect("allowed");
    // Removing through a symlink to / removes inside the target.
    symlink("/", f.target("root-link")).expect("symlink");
    write(&f.target("etc/removable"), "r");
    run(FileAction::Rm {
        path: "/root-link/etc/removable".into(),
        allow_not_found: false,
        allow_wildcard: false,
    })
    .expect("rm via link");
    assert!(!exists(&f.target("etc/removable")));
}

#[test]
fn actions_apply_in_order() {
    let f = Fixture::new();
    write(&f.ctx("a.txt"), "a");
    f.run(vec![
        FileAction::Mkdir {
            path: "/app".into(),
            mode: 0o755,
            make_parents: true,
            owner: None,
        },
        FileAction::Copy(cp(&["a.txt"], "/app/")),
        FileAction::Symlink {
            target: "a.txt".into(),
            path: "/app/b.txt".into(),
        },
        FileAction::Rm {
            path: "/app/a.txt".into(),
            allow_not_found: false,
            allow_wildcard: false,
        },
    ])
    .expect("actions");
    assert_eq!(names(&f.target("app")), ["b.txt"]);
    assert!(
        fs::symlink_metadata(f.target("app/b.txt"))
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
}

#[test]
fn large_trees_copy_completely() {
    let f = Fixture::new();
    for d in 0..40 {
        for i in 0..100 {
            write(&f.ctx(&format!("big/d{d:02}/f{i:03}")), &format!("{d}-{i}"));
        }
    }
    f.copy(cp(&["big"], "/big")).expect("copy 4000 files");
    let mut count = 0;
    for d in 0..40 {
        let dir = f.target(&format!("big/d{d:02}"));
        count += names(&dir).len();
        assert_eq!(read(&dir.join("f042")), format!("{d}-42"));
    }
    assert_eq!(count, 4000);
}
