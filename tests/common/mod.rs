//! Helpers shared by the end-to-end test files: running the binary, reading run folders, and
//! writing small IDX data sets. Each test file uses a subset of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The data set the tests train on (installed by `scripts/setup.sh`).
pub const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// A tiny recipe: one epoch of 4 batches of 64 on ResNet-8, evaluated on 128 images.
pub const RECIPE: &[&str] = &[
    "--model",
    "resnet8",
    "--subset",
    "256",
    "--test-subset",
    "128",
    "--epochs",
    "1",
    "--batch",
    "64",
    "--seed",
    "0",
];

pub fn e2train() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_e2train"));
    // The data location must come from --data or the Debian default, never from the caller's shell.
    c.env_remove("E2TRAIN_DATA");
    c
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run `e2train` with `args`; panic with its output unless it succeeded.
pub fn run_ok(args: &[&str]) -> Output {
    let out = e2train().args(args).output().expect("starting e2train");
    assert!(
        out.status.success(),
        "e2train {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Run `e2train` with `args`, expect a clean failure (exit code 1, an `error:` line, no panic) and
/// return stderr.
pub fn run_err(args: &[&str]) -> String {
    let out = e2train().args(args).output().expect("starting e2train");
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "e2train {args:?} should fail but succeeded:\n{}",
        text(&out.stdout)
    );
    assert!(
        !err.contains("panicked at"),
        "e2train {args:?} panicked:\n{err}"
    );
    assert!(
        err.contains("error"),
        "e2train {args:?}: no error message:\n{err}"
    );
    err
}

/// Train with `extra` flags into `dir`.
pub fn train(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--quiet", "--data", FASHION, "--out"];
    let d = dir.to_str().unwrap();
    args.push(d);
    args.extend_from_slice(extra);
    run_ok(&args)
}

/// `epochs.csv` as (header, rows of fields).
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = t.lines().filter(|l| !l.is_empty());
    let header: Vec<String> = lines
        .next()
        .expect("header")
        .split(',')
        .map(String::from)
        .collect();
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    for r in &rows {
        assert_eq!(
            r.len(),
            header.len(),
            "{}: row {r:?} does not match the header",
            path.display()
        );
    }
    (header, rows)
}

/// `epochs.csv` without the wall-clock columns (the only ones allowed to differ between equal runs).
pub fn epochs_without_timing(dir: &Path) -> Vec<Vec<String>> {
    let (h, rows) = read_csv(&dir.join("epochs.csv"));
    let keep: Vec<usize> = (0..h.len())
        .filter(|&i| h[i] != "seconds" && h[i] != "images_per_s")
        .collect();
    std::iter::once(h.clone())
        .chain(rows)
        .map(|r| keep.iter().map(|&i| r[i].clone()).collect())
        .collect()
}

/// One numeric column of the last row of `epochs.csv`.
pub fn last(dir: &Path, column: &str) -> f64 {
    column_values(dir, column).pop().unwrap()
}

pub fn column_values(dir: &Path, column: &str) -> Vec<f64> {
    let (h, rows) = read_csv(&dir.join("epochs.csv"));
    let i = h
        .iter()
        .position(|c| c == column)
        .unwrap_or_else(|| panic!("no column {column} in {h:?}"));
    rows.iter()
        .map(|r| {
            r[i].parse::<f64>()
                .unwrap_or_else(|e| panic!("{column} = {:?}: {e}", r[i]))
        })
        .collect()
}

pub fn summary(dir: &Path) -> serde_json::Value {
    let p = dir.join("summary.json");
    let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The engine's own state inside `checkpoint.bin`: the host checkpoint ends with the engine
/// checkpoint as a length-prefixed byte string (bincode: u64 LE length, then the bytes). The rest
/// of the file holds the epoch log, whose wall-clock seconds differ between otherwise equal runs.
pub fn engine_state(dir: &Path) -> Vec<u8> {
    let p = dir.join("checkpoint.bin");
    let d = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(
        d.starts_with(b"E2THOST3"),
        "{}: not a host checkpoint",
        p.display()
    );
    // The longest tail whose length is written just before it; shorter false matches would need a
    // u64 that happens to equal its own distance from the end.
    (0..d.len() - 8)
        .rev()
        .find(|&n| {
            let at = d.len() - 8 - n;
            u64::from_le_bytes(d[at..at + 8].try_into().unwrap()) == n as u64
        })
        .map(|n| d[d.len() - n..].to_vec())
        .unwrap_or_else(|| {
            panic!(
                "{}: no length-prefixed engine state at the end",
                p.display()
            )
        })
}

/// Files in `dir` that look like leftovers of an interrupted atomic write.
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(".e2t-tmp-")
                || n.starts_with(".tmp")
                || n.ends_with(".tmp")
                || n.ends_with('~')
        })
        .collect()
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// Write a small, valid Fashion-MNIST-shaped data set (uncompressed IDX) with `train` and `test`
/// images: label k images are bright in row band k, so a network can learn something from them.
pub fn write_synthetic_idx(dir: &Path, train: u32, test: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let mut images = vec![0u8; n as usize * 784];
        for (i, &l) in labels.iter().enumerate() {
            for r in 0..28usize {
                for c in 0..28usize {
                    let band = r / 3 == l as usize;
                    images[i * 784 + r * 28 + c] = if band {
                        200
                    } else {
                        ((i * 7 + r * 3 + c) % 40) as u8
                    };
                }
            }
        }
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            idx(0x803, &[n, 28, 28], &images),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            idx(0x801, &[n], &labels),
        )
        .unwrap();
    }
}

/// Write IDX files whose headers promise more images than the file holds.
pub fn write_truncated_idx(dir: &Path) {
    write_synthetic_idx(dir, 64, 32);
    let p = dir.join("train-images-idx3-ubyte");
    let mut d = std::fs::read(&p).unwrap();
    d.truncate(16 + 1000);
    std::fs::write(p, d).unwrap();
}
