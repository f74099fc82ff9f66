//! Frontend throughput on a corpus of realistic Dockerfiles: parsing alone (MB/s — the parser must never be
//! the bottleneck; the target is > 100 MB/s on one core) and parse + convert to LLB (Dockerfiles/s).
//! Run with `cargo bench -p kiln-frontend`.

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use kiln_frontend::convert::{ConvertOptions, convert};
use kiln_frontend::parser::parse;
use std::path::Path;

fn corpus() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/corpus");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("benches/corpus exists")
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(e.path()).expect("corpus files are UTF-8");
            (name, text)
        })
        .collect();
    files.sort();
    files
}

fn frontend(c: &mut Criterion) {
    let corpus = corpus();
    let bytes: usize = corpus.iter().map(|(_, text)| text.len()).sum();
    let opts = ConvertOptions::default();

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("corpus", |b| {
        b.iter(|| {
            for (_, text) in &corpus {
                black_box(parse(black_box(text)).expect("corpus parses"));
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("parse+convert");
    group.throughput(Throughput::Elements(corpus.len() as u64));
    group.bench_function("corpus", |b| {
        b.iter(|| {
            for (_, text) in &corpus {
                let df = parse(black_box(text)).expect("corpus parses");
                black_box(convert(&df, &opts, None).expect("corpus converts"));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, frontend);
criterion_main!(benches);
