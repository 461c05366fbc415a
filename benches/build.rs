//! Cold and warm layer builds of a directory tree, timed. Driven by
//! `scripts/bench-build` (which generates the tree and times the
//! `tar | gzip -6 | sha256sum` baseline in the same run); run directly with
//! `BENCH_TREE=<dir> cargo bench --bench build`.
//!
//! Prints one line per measurement, `name seconds`, for the script to parse.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bottle::oci::BlobStore;
use bottle::oci::layer::build_layer;
use bottle::oci::spec::{Entry, EntryKind, FileSource, LayerSpec};

fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read tree")
        .map(|e| e.expect("dir entry").path())
        .collect();
    names.sort();
    for p in names {
        let rel = p
            .strip_prefix(root)
            .expect("inside root")
            .to_string_lossy()
            .into_owned();
        let path = format!("home/agent/.claude/skills/{rel}");
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        if meta.is_dir() {
            out.push(Entry {
                path,
                mode: 0o755,
                uid: 1000,
                gid: 1000,
                kind: EntryKind::Dir,
            });
            walk(root, &p, out);
        } else if meta.is_file() {
            out.push(Entry {
                path,
                mode: 0o644,
                uid: 1000,
                gid: 1000,
                kind: EntryKind::File(FileSource::Path(p.clone())),
            });
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let Some(tree) = std::env::var_os("BENCH_TREE") else {
        eprintln!(
            "bench build: set BENCH_TREE=<dir> (scripts/bench-build does this); nothing to do"
        );
        return;
    };
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let root = PathBuf::from(tree);
    let mut entries = Vec::new();
    walk(&root, &root, &mut entries);
    let spec = LayerSpec {
        name: "skills".into(),
        entries,
    };

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut digest = String::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("store");
        let t = Instant::now();
        let layer = build_layer(&spec, 0, &store).expect("build");
        cold.push(t.elapsed().as_secs_f64());
        assert!(!layer.from_cache);
        let t = Instant::now();
        let again = build_layer(&spec, 0, &store).expect("build");
        warm.push(t.elapsed().as_secs_f64());
        assert!(again.from_cache);
        assert_eq!(layer.digest, again.digest);
        if !digest.is_empty() {
            assert_eq!(digest, layer.digest, "cold builds disagree");
        }
        digest = layer.digest;
        println!("size {}", layer.size);
    }
    println!("digest {digest}");
    println!("cold {:.4}", median(cold));
    println!("warm {:.4}", median(warm));
}
