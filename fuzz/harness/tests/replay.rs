//! Replays every committed fuzz input (`fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`)
//! through its target's body: what CI runs in place of the fuzzer, on stable Rust.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use shoal_fuzz_harness::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness lives in fuzz/")
        .to_path_buf()
}

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("reading a corpus directory").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_committed_input_replays_cleanly() {
    let mut failures = Vec::new();
    for target in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(target.name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{} holds no seed inputs",
            target.name
        );
        let regressions = inputs(&fuzz_dir().join("regressions").join(target.name));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).expect("reading a fuzz input");
            if catch_unwind(AssertUnwindSafe(|| (target.run)(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "inputs that panic: {failures:#?}");
}

/// Each target is a cargo-fuzz binary, and every corpus directory belongs to a target.
#[test]
fn targets_corpora_and_binaries_match() {
    for target in TARGETS {
        let binary = fuzz_dir()
            .join("fuzz_targets")
            .join(format!("{}.rs", target.name));
        assert!(binary.is_file(), "{} is missing", binary.display());
    }
    for kind in ["corpus", "regressions"] {
        for dir in std::fs::read_dir(fuzz_dir().join(kind))
            .into_iter()
            .flatten()
        {
            let name = dir.expect("reading fuzz/").file_name();
            assert!(
                TARGETS.iter().any(|target| *target.name == *name),
                "fuzz/{kind}/{name:?} belongs to no target"
            );
        }
    }
}
