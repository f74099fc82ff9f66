//! Context hashing throughput: a cold hash (no index: every file read) and a warm rehash of an unchanged
//! context through the stat index (stats only). The tree is `KILN_BENCH_CONTEXT_FILES` files (default
//! 20,000) of `KILN_BENCH_CONTEXT_FILE_SIZE` bytes (default 10,000, so 200 MB) spread over 100
//! directories. "Cold" means no index; the page cache is warm after the first sample, so it measures
//! hashing rather than the disk.

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_fsutil::ignore::PatternMatcher;
use kiln_solver::context::{ContextHasher, RACY_MARGIN};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn make_tree(root: &Path, files: usize, size: usize) {
    let mut content = vec![0u8; size];
    for i in 0..files {
        let dir = root.join(format!("dir{:03}", i % 100));
        std::fs::create_dir_all(&dir).expect("mkdir");
        // Distinct content per file, so no layer of caching can make files look alike.
        for (j, b) in content.iter_mut().enumerate() {
            *b = (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8;
        }
        std::fs::write(dir.join(format!("file{i}")), &content).expect("write");
    }
}

fn open(root: &Path, index: Option<&Path>) -> ContextHasher {
    let matcher = PatternMatcher::new(&[]).expect("matcher");
    ContextHasher::open(root, matcher, index).expect("open")
}

fn bench(c: &mut Criterion) {
    let files = env_usize("KILN_BENCH_CONTEXT_FILES", 20_000);
    let size = env_usize("KILN_BENCH_CONTEXT_FILE_SIZE", 10_000);
    let ctx = tempfile::tempdir().expect("temp dir");
    let store = tempfile::tempdir().expect("temp dir");
    make_tree(ctx.path(), files, size);
    // Let every file age past the racy-clean margin, or the index would not vouch for any of them.
    std::thread::sleep(RACY_MARGIN + Duration::from_millis(100));
    let indexed = open(ctx.path(), Some(store.path()));
    indexed.hash_all().expect("hash");
    indexed.save_index().expect("save index");

    let mut group = c.benchmark_group(format!("context/{files}x{size}B"));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes((files * size) as u64));
    group.bench_function("cold hash_all", |b| {
        b.iter(|| open(ctx.path(), None).hash_all().expect("hash"))
    });
    group.throughput(Throughput::Elements(files as u64));
    group.bench_function("warm hash_all (stat index)", |b| {
        b.iter(|| {
            let h = open(ctx.path(), Some(store.path()));
            let hash = h.hash_all().expect("hash");
            assert_eq!(h.stats().files_read, 0);
            hash
        })
    });
    group.bench_function("warm hash_selection of one dir (stat index)", |b| {
        b.iter(|| {
            let h = open(ctx.path(), Some(store.path()));
            h.hash_selection(&["dir007".to_string()], false, &[])
                .expect("hash")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
