//! End-to-end tests of the `e2train` binary: version, and clear errors (never a panic) on bad
//! flags, files and data. Every case here fails before training starts, so the file runs in seconds.
mod common;

use common::*;

#[test]
fn version_names_the_git_revision() {
    let out = e2train().arg("--version").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.starts_with("e2train "), "{s}");
    assert!(s.contains("(git "), "{s}");
}

/// Train flags that fail validation: (flags, words the message must contain).
const BAD_FLAGS: &[(&[&str], &[&str])] = &[
    (&["--batch", "0"], &["--batch", "at least 1"]),
    (&["--lr", "-1"], &["--lr", "-1", "positive"]),
    (
        &["--model", "resnet9"],
        &["resnet9", "resnet8", "mobilenetv2"],
    ),
    (
        &["--dataset", "nope"],
        &["nope", "fashion-mnist", "cifar10"],
    ),
    (&["--array", "3"], &["--array", "'3'", "RxC"]),
    (
        &["--psg-threshold", "bogus"],
        &["--psg-threshold", "bogus", "abs:", "rel:"],
    ),
    (&["--board", "usb"], &["usb", "sim", "pty", "serial:"]),
    (
        &["--energy-profile", "/nonexistent.toml"],
        &["/nonexistent.toml", "cannot read"],
    ),
    (&["--smd-p", "2"], &["--smd-p", "[0, 1)"]),
    (&["--slu-target", "0"], &["--slu-target", "(0, 1]"]),
    (&["--epochs", "0"], &["--epochs", "at least 1"]),
    (
        &["--grid-intensity=-5"],
        &["--grid-intensity", "non-negative"],
    ),
    // PSG predicts gradient signs on the accelerator, so it has no fp32 form.
    (&["--method", "fp32", "--psg"], &["--psg", "fp32"]),
];

#[test]
fn bad_train_flags_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    for (flags, words) in BAD_FLAGS {
        let mut args = vec!["train", "--quiet", "--subset", "64", "--test-subset", "32"];
        args.extend(["--data", FASHION, "--out", out.to_str().unwrap()]);
        // clap refuses a flag given twice, so the default batch only goes in when not under test.
        if !flags.contains(&"--batch") {
            args.extend(["--batch", "32"]);
        }
        args.extend_from_slice(flags);
        let err = run_err(&args);
        for w in *words {
            assert!(
                err.contains(w),
                "e2train {flags:?}: message lacks {w:?}:\n{err}"
            );
        }
    }
}

#[test]
fn missing_data_set_names_where_it_looked_and_how_to_install() {
    let err = run_err(&[
        "train",
        "--quiet",
        "--data",
        "/nonexistent",
        "--subset",
        "64",
    ]);
    assert!(err.contains("fashion-mnist"), "{err}");
    assert!(err.contains("/nonexistent"), "{err}");
    assert!(
        err.contains("apt-get install dataset-fashion-mnist"),
        "{err}"
    );
}

#[test]
fn truncated_idx_file_is_named_with_what_was_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_truncated_idx(&data);
    let out = tmp.path().join("run");
    let err = run_err(&[
        "train",
        "--quiet",
        "--data",
        data.to_str().unwrap(),
        "--subset",
        "32",
        "--batch",
        "32",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn corrupt_energy_profiles_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let not_toml = tmp.path().join("not-toml.toml");
    std::fs::write(&not_toml, "this is = = not toml [\n").unwrap();
    let unknown = tmp.path().join("unknown-key.toml");
    std::fs::write(&unknown, "foo = 1\n").unwrap();
    for (p, word) in [(&not_toml, "TOML"), (&unknown, "foo")] {
        let err = run_err(&[
            "train",
            "--quiet",
            "--data",
            FASHION,
            "--subset",
            "32",
            "--batch",
            "32",
            "--out",
            tmp.path().join("run").to_str().unwrap(),
            "--energy-profile",
            p.to_str().unwrap(),
        ]);
        assert!(err.contains(p.to_str().unwrap()), "{err}");
        assert!(err.contains(word), "{err}");
    }
}

#[test]
fn unknown_key_in_config_file_names_key_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("recipe.toml");
    std::fs::write(&cfg, "model = \"resnet8\"\nbogus_key = 3\n").unwrap();
    let err = run_err(&[
        "train",
        "--quiet",
        "--config",
        cfg.to_str().unwrap(),
        "--data",
        FASHION,
    ]);
    assert!(err.contains("bogus_key"), "{err}");
    assert!(err.contains("recipe.toml"), "{err}");
}

#[test]
fn missing_config_file_is_named() {
    let err = run_err(&["train", "--quiet", "--config", "/nonexistent/recipe.toml"]);
    assert!(err.contains("/nonexistent/recipe.toml"), "{err}");
}

#[test]
fn resume_of_a_folder_that_is_not_a_run_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let err = run_err(&["train", "--quiet", "--resume", tmp.path().to_str().unwrap()]);
    assert!(err.contains("--resume"), "{err}");
    assert!(err.contains("config.toml"), "{err}");
    // A folder with a config but a garbage checkpoint must be refused, not trained from scratch.
    std::fs::write(
        tmp.path().join("config.toml"),
        "model = \"resnet8\"\nsubset = 32\ntest_subset = 32\nbatch = 32\nmethod = \"fp32\"\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("checkpoint.bin"), b"E2THOST3garbage").unwrap();
    let err = run_err(&[
        "train",
        "--quiet",
        "--resume",
        tmp.path().to_str().unwrap(),
        "--data",
        FASHION,
    ]);
    assert!(err.contains("checkpoint.bin"), "{err}");
}

#[test]
fn resume_refuses_changing_the_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.toml"),
        "model = \"resnet8\"\nsubset = 32\ntest_subset = 32\nbatch = 32\nmethod = \"fp32\"\n",
    )
    .unwrap();
    let err = run_err(&[
        "train",
        "--quiet",
        "--resume",
        tmp.path().to_str().unwrap(),
        "--lr",
        "0.3",
    ]);
    assert!(err.contains("--lr"), "{err}");
    assert!(err.contains("cannot change"), "{err}");
}

#[test]
fn bad_bench_and_sweep_flags_fail_cleanly() {
    let err = run_err(&["bench", "--model", "resnet9", "--batch", "8"]);
    assert!(err.contains("resnet9"), "{err}");
    let err = run_err(&["bench", "--input", "1x28", "--batch", "8"]);
    assert!(err.contains("CxHxW"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let err = run_err(&[
        "sweep",
        "--out",
        out.to_str().unwrap(),
        "--methods",
        "baseline",
        "--seeds",
        "0",
        "--set",
        "subset",
    ]);
    assert!(err.contains("KEY=VALUE"), "{err}");
    let err = run_err(&["sweep", "--out", out.to_str().unwrap()]);
    assert!(err.contains("--methods"), "{err}");
    let err = run_err(&["report", tmp.path().join("nothing-here").to_str().unwrap()]);
    assert!(err.contains("nothing-here"), "{err}");
}
