mod common;

use std::io::{Read, Write};

use common::Env;
use kiln_cache::{Digest, Error};

const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn digest_parses_and_prints_sha256() {
    let d: Digest = EMPTY.parse().expect("valid digest");
    assert_eq!(d.to_string(), EMPTY);
    assert_eq!(d, Digest::of(b""));
    assert_eq!(Digest::from_hex(&d.hex()).expect("hex"), d);
    let json = serde_json::to_string(&d).expect("serialize");
    assert_eq!(json, format!("\"{EMPTY}\""));
    assert_eq!(serde_json::from_str::<Digest>(&json).expect("deserialize"), d);
}

#[test]
fn digest_rejects_malformed_input_with_reason() {
    let cases = [
        ("sha512:abcd", "unsupported algorithm \"sha512\""),
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "missing the algorithm",
        ),
        ("sha256:e3b0", "64 lowercase hex"),
        (
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "lowercase",
        ),
        (
            "sha256:zzb0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "hex",
        ),
        ("", "missing the algorithm"),
        (
            "sha256:é3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "hex",
        ),
    ];
    for (input, reason) in cases {
        let err = input.parse::<Digest>().expect_err(input);
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidDigest { .. }), "{input}: {msg}");
        assert!(msg.contains(reason), "{input}: {msg} should mention {reason}");
    }
    assert!(serde_json::from_str::<Digest>("\"md5:abc\"").is_err());
}

#[test]
fn put_and_read_blob() {
    let env = Env::new();
    let s = &env.store;
    let d = s.put_bytes(b"hello").expect("put");
    assert_eq!(d, Digest::of(b"hello"));
    assert!(s.has_blob(&d).expect("has"));
    assert_eq!(s.blob_size(&d).expect("size"), 5);
    assert_eq!(s.read_blob(&d).expect("read"), b"hello");
    assert_eq!(s.blob_path(&d), s.root().join("blobs/sha256").join(d.hex()));
    let mut content = String::new();
    s.open_blob(&d)
        .expect("open")
        .read_to_string(&mut content)
        .expect("read");
    assert_eq!(content, "hello");
    // Same content again: same blob, no error, temp file gone.
    assert_eq!(s.put_bytes(b"hello").expect("put again"), d);
    assert_eq!(std::fs::read_dir(s.root().join("tmp")).expect("tmp").count(), 0);

    assert!(s.delete_blob(&d).expect("delete"));
    assert!(!s.has_blob(&d).expect("has"));
    assert!(!s.delete_blob(&d).expect("delete again"));
    assert!(matches!(s.read_blob(&d), Err(Error::BlobNotFound(x)) if x == d));
    assert!(matches!(s.blob_size(&d), Err(Error::BlobNotFound(_))));
}

#[test]
fn writer_streams_and_verifies_expected_digest() {
    let env = Env::new();
    let s = &env.store;
    let mut w = s.blob_writer().expect("writer");
    for chunk in [&b"abc"[..], b"def", b""] {
        w.write_all(chunk).expect("write");
    }
    assert_eq!(w.written(), 6);
    let expected = Digest::of(b"abcdef");
    let info = w.commit(Some(&expected)).expect("commit");
    assert_eq!((info.digest, info.size), (expected, 6));
    assert_eq!(s.read_blob(&expected).expect("read"), b"abcdef");
}

#[test]
fn writer_digest_mismatch_names_both_and_leaves_nothing() {
    let env = Env::new();
    let s = &env.store;
    let mut w = s.blob_writer().expect("writer");
    w.write_all(b"tampered").expect("write");
    let expected = Digest::of(b"original");
    let err = w.commit(Some(&expected)).expect_err("mismatch");
    let msg = err.to_string();
    assert!(msg.contains(&expected.to_string()), "{msg}");
    assert!(msg.contains(&Digest::of(b"tampered").to_string()), "{msg}");
    assert!(!s.has_blob(&Digest::of(b"tampered")).expect("has"));
    assert!(!s.has_blob(&expected).expect("has"));
    assert_eq!(std::fs::read_dir(s.root().join("tmp")).expect("tmp").count(), 0);
}

#[test]
fn uncommitted_writer_is_invisible_and_cleaned_on_drop() {
    let env = Env::new();
    let s = &env.store;
    let mut w = s.blob_writer().expect("writer");
    w.write_all(b"partial").expect("write");
    w.flush().expect("flush");
    // While being written the content lives only in tmp/.
    assert!(!s.has_blob(&Digest::of(b"partial")).expect("has"));
    assert_eq!(
        std::fs::read_dir(s.root().join("blobs/sha256"))
            .expect("blobs")
            .count(),
        0
    );
    assert_eq!(std::fs::read_dir(s.root().join("tmp")).expect("tmp").count(), 1);
    drop(w);
    assert_eq!(std::fs::read_dir(s.root().join("tmp")).expect("tmp").count(), 0);
}

#[test]
fn read_blob_detects_corruption() {
    let env = Env::new();
    let s = &env.store;
    let d = s.put_bytes(b"good content").expect("put");
    std::fs::write(s.blob_path(&d), b"bad content!").expect("corrupt");
    let err = s.read_blob(&d).expect_err("corrupt");
    assert!(
        matches!(err, Error::CorruptBlob { digest, .. } if digest == d),
        "{err}"
    );
    assert!(err.to_string().contains(&d.to_string()));
}

#[test]
fn open_creates_layout_and_reopens() {
    let env = Env::new();
    let root = env.store.root().to_owned();
    for sub in ["blobs/sha256", "snapshots", "tmp", "locks"] {
        assert!(root.join(sub).is_dir(), "{sub}");
    }
    assert!(root.join("db.redb").is_file());
    let d = env.store.put_bytes(b"x").expect("put");
    let again = kiln_cache::Store::open(&root).expect("reopen");
    assert!(again.has_blob(&d).expect("has"));
}
