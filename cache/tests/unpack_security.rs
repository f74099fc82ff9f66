//! Hostile layers: nothing outside the snapshot may be created, written or touched. Each test checks the
//! sentinel directory next to the store and that the archive either failed clearly or landed inside.

mod common;

use common::{E, Env, TAR_LAYER, tar};
use kiln_cache::{Error, SnapshotId};

/// Unpacks `entries`, returning the snapshot's fs dir or the error.
fn unpack(env: &Env, entries: &[E<'_>]) -> Result<std::path::PathBuf, Error> {
    let d = env.store.put_bytes(&tar(entries)).expect("put");
    let id: SnapshotId = env.store.unpack_layer(&d, TAR_LAYER)?;
    Ok(env.store.snapshot_path(&id))
}

fn sentinel_abs(env: &Env) -> String {
    env.sentinel().to_str().expect("utf-8 temp path").to_owned()
}

#[test]
fn dotdot_names_are_refused() {
    let env = Env::new();
    for name in [
        "../escape",
        "../../../escape",
        "../../../../escape",
        "a/../../../../escape",
        "./../../sentinel/secret",
    ] {
        let err = unpack(&env, &[E::file(name, b"pwned")]).expect_err(name);
        let msg = err.to_string();
        assert!(
            msg.contains("'..'") && msg.contains(name.trim_start_matches("./")),
            "{name}: {msg}"
        );
        env.assert_outside_untouched();
        env.assert_no_leftovers();
    }
}

#[test]
fn absolute_names_land_inside_the_snapshot() {
    let env = Env::new();
    let abs = format!("{}/abs", sentinel_abs(&env));
    let secret = format!("{}/secret", sentinel_abs(&env));
    let fs = unpack(
        &env,
        &[E::file(&abs, b"inside"), E::file(&secret, b"overwritten?")],
    )
    .expect("unpack");
    env.assert_outside_untouched();
    let inner = fs.join(abs.trim_start_matches('/'));
    assert_eq!(std::fs::read(inner).expect("inside copy"), b"inside");
    assert_eq!(
        std::fs::read(fs.join(secret.trim_start_matches('/'))).expect("inside copy"),
        b"overwritten?"
    );
}

#[test]
fn symlink_then_write_through_it_stays_inside() {
    let env = Env::new();
    let sentinel = sentinel_abs(&env);
    let rel = sentinel.trim_start_matches('/');
    // A chain: up -> ../../../.. (clamped at the snapshot root), then writes under up/<sentinel path>.
    let through = format!("dir/up/{rel}/secret");
    let r = unpack(
        &env,
        &[
            E::dir("dir/"),
            E::symlink("dir/up", "../../../../../.."),
            E::file(&through, b"pwned"),
        ],
    );
    env.assert_outside_untouched();
    let fs = r.expect("a symlink resolved within the root is followed inside it");
    assert_eq!(
        std::fs::read(fs.join(rel).join("secret")).expect("landed inside"),
        b"pwned"
    );
}

#[test]
fn symlink_to_absolute_dir_then_file_under_it_stays_inside() {
    let env = Env::new();
    let sentinel = sentinel_abs(&env);
    // link -> /abs/sentinel (does not exist inside the snapshot): writing link/secret must not reach it.
    let r = unpack(
        &env,
        &[E::symlink("link", &sentinel), E::file("link/secret", b"pwned")],
    );
    env.assert_outside_untouched();
    let err = r.expect_err("the parent does not exist inside the root");
    assert!(err.to_string().contains("link"), "{err}");
    env.assert_no_leftovers();

    // root -> / then root/<sentinel>/secret: resolves to <snapshot>/<sentinel>/secret.
    let env = Env::new();
    let sentinel = sentinel_abs(&env);
    let under = format!("root{sentinel}/secret");
    let fs = unpack(&env, &[E::symlink("root", "/"), E::file(&under, b"pwned")]).expect("unpack");
    env.assert_outside_untouched();
    assert_eq!(
        std::fs::read(fs.join(sentinel.trim_start_matches('/')).join("secret")).expect("inside"),
        b"pwned"
    );
    assert_eq!(
        std::fs::read_link(fs.join("root"))
            .expect("link kept verbatim")
            .to_str(),
        Some("/")
    );
}

#[test]
fn a_file_over_a_symlink_replaces_the_link_instead_of_writing_through_it() {
    let env = Env::new();
    let secret = format!("{}/secret", sentinel_abs(&env));
    let fs = unpack(&env, &[E::symlink("f", &secret), E::file("f", b"pwned")]).expect("unpack");
    env.assert_outside_untouched();
    let m = std::fs::symlink_metadata(fs.join("f")).expect("f");
    assert!(m.is_file());
    assert_eq!(std::fs::read(fs.join("f")).expect("f"), b"pwned");

    // Metadata of a later directory entry must not be applied through a symlink either.
    let env = Env::new();
    let sentinel = sentinel_abs(&env);
    let fs = unpack(
        &env,
        &[
            E::symlink("d", &sentinel),
            E {
                mode: 0o777,
                ..E::dir("d/")
            },
        ],
    )
    .expect("unpack");
    env.assert_outside_untouched();
    assert!(std::fs::symlink_metadata(fs.join("d")).expect("d").is_dir());
    assert_eq!(
        std::fs::metadata(env.sentinel())
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("stat"),
        0o755
    );
}

#[test]
fn hardlink_to_dotdot_target_is_refused() {
    let env = Env::new();
    let rel = sentinel_abs(&env).trim_start_matches('/').to_owned();
    for target in [
        "../../etc/passwd".to_owned(),
        format!("../../../../../../../../{rel}/secret"),
    ] {
        let err = unpack(&env, &[E::hardlink("h", &target)]).expect_err(&target);
        assert!(err.to_string().contains("'..'"), "{target}: {err}");
        env.assert_outside_untouched();
        env.assert_no_leftovers();
    }
    let passwd = std::fs::symlink_metadata("/etc/passwd").expect("stat");
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&passwd), 1);
}

#[test]
fn hardlink_to_absolute_target_stays_inside() {
    let env = Env::new();
    let secret = format!("{}/secret", sentinel_abs(&env));
    // The target names a file inside the snapshot that does not exist: an error, not a link to the host.
    let err = unpack(&env, &[E::hardlink("h", &secret)]).expect_err("absent inside");
    assert!(err.to_string().contains("hardlink"), "{err}");
    env.assert_outside_untouched();
    env.assert_no_leftovers();
}

#[test]
fn hardlink_through_a_symlink_cannot_reach_outside() {
    let env = Env::new();
    let sentinel = sentinel_abs(&env);
    let err = unpack(&env, &[E::symlink("s", &sentinel), E::hardlink("h", "s/secret")])
        .expect_err("through symlink");
    assert!(err.to_string().contains("hardlink"), "{err}");
    env.assert_outside_untouched();
    env.assert_no_leftovers();

    let env = Env::new();
    let err = unpack(
        &env,
        &[
            E::symlink("s", "../../../../../../.."),
            E::hardlink("h", "s/etc/passwd"),
        ],
    )
    .expect_err("up and out");
    assert!(err.to_string().contains("hardlink"), "{err}");
    env.assert_outside_untouched();

    // Through a symlink that stays inside, the link is made to the file inside.
    let env = Env::new();
    let fs = unpack(
        &env,
        &[
            E::file("real/f", b"x"),
            E::symlink("s", "/real"),
            E::hardlink("h", "s/f"),
        ],
    )
    .expect("inside");
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(fs.join("real/f")).expect("f")),
        2
    );
    env.assert_outside_untouched();
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink_not_its_target() {
    let env = Env::new();
    let secret = format!("{}/secret", sentinel_abs(&env));
    let fs = unpack(
        &env,
        &[
            E::symlink("s", &secret),
            E::hardlink("h", "s"),
            E::file("h", b"pwned"),
        ],
    )
    .expect("unpack");
    env.assert_outside_untouched();
    assert_eq!(std::fs::read(fs.join("h")).expect("h"), b"pwned");
}

#[test]
fn whiteouts_and_opaque_markers_cannot_escape() {
    let env = Env::new();
    let sentinel = sentinel_abs(&env);
    let r = unpack(
        &env,
        &[
            E::symlink("s", &sentinel),
            E::file("s/.wh.secret", b""),
            E::file("s/.wh..wh..opq", b""),
        ],
    );
    env.assert_outside_untouched();
    assert!(r.is_err(), "the symlink's target does not exist inside the root");
    let r = unpack(&env, &[E::file("../.wh.sentinel", b"")]);
    assert!(r.is_err());
    env.assert_outside_untouched();
    let r = unpack(&env, &[E::file(".wh..", b"")]);
    assert!(r.is_err());
}

#[test]
fn device_named_like_a_host_path_is_created_inside() {
    let env = Env::new();
    let node = format!("{}/node", sentinel_abs(&env));
    let fs = unpack(
        &env,
        &[E {
            dev: (1, 3),
            ..E::new(&node, tar::EntryType::Char)
        }],
    )
    .expect("unpack");
    env.assert_outside_untouched();
    assert!(std::fs::symlink_metadata(fs.join(node.trim_start_matches('/'))).is_ok());
}

#[test]
fn names_beyond_path_max_and_name_max_fail_clearly_or_land_inside() {
    let env = Env::new();
    // 30 levels of 200-byte names: a 6000-byte path, beyond PATH_MAX (4096) for any single system call.
    let component = "d".repeat(200);
    let deep = vec![component.as_str(); 30].join("/");
    let long_file = format!("{deep}/file");
    match unpack_long(&env, &long_file) {
        Ok(fs) => {
            // Read back component by component: the file is there, inside the snapshot.
            let fd = kiln_fsutil::root::Root::new(&fs).expect("root");
            let found = fd.read_file(long_file.as_bytes()).expect("read");
            assert_eq!(found.as_deref(), Some(&b"deep"[..]));
        }
        Err(e) => assert!(e.to_string().contains("dddd"), "the error names the entry: {e}"),
    }
    env.assert_outside_untouched();
    // One component over NAME_MAX (255): the kernel refuses it, and the error says which entry.
    let too_long = "n".repeat(300);
    let err = unpack_long(&env, &too_long).expect_err("NAME_MAX");
    assert!(err.to_string().contains("nnnn"), "{err}");
    env.assert_outside_untouched();
}

/// A layer of one file whose name needs GNU's long-name records.
fn unpack_long(env: &Env, name: &str) -> Result<std::path::PathBuf, Error> {
    let mut builder = ::tar::Builder::new(Vec::new());
    let mut header = ::tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(::tar::EntryType::Regular);
    builder
        .append_data(&mut header, name, &b"deep"[..])
        .expect("long name");
    let d = env
        .store
        .put_bytes(&builder.into_inner().expect("tar"))
        .expect("put");
    let id: SnapshotId = env.store.unpack_layer(&d, TAR_LAYER)?;
    Ok(env.store.snapshot_path(&id))
}
