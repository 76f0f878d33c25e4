//! End-to-end tests that train: the run folder, determinism, resume, config files, the methods'
//! counters, the pseudo-terminal board, report, sweep, bench and demo. Every run is tiny (ResNet-8,
//! at most a few hundred images, one or two epochs); runs several tests need are made once.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Folder for the shared runs of this test process, under Cargo's scratch space for tests. Folders
/// of earlier processes that are gone are removed first so they do not pile up.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(root).unwrap();
        for e in std::fs::read_dir(root).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("e2e-train-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let d = root.join(format!("e2e-train-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// The [`RECIPE`] trained once per test process with `method` on the simulated board.
fn fixture(method: &'static str) -> &'static Path {
    static BASELINE: OnceLock<PathBuf> = OnceLock::new();
    static E2TRAIN: OnceLock<PathBuf> = OnceLock::new();
    let cell = match method {
        "baseline" => &BASELINE,
        "e2train" => &E2TRAIN,
        other => panic!("no fixture for {other}"),
    };
    cell.get_or_init(|| {
        let dir = scratch().join(method);
        let mut args = RECIPE.to_vec();
        args.extend(["--method", method]);
        train(&dir, &args);
        dir
    })
}

fn recipe_with(extra: &[&'static str]) -> Vec<&'static str> {
    let mut a = RECIPE.to_vec();
    a.extend_from_slice(extra);
    a
}

#[test]
fn train_writes_a_complete_run_folder() {
    let dir = fixture("e2train");
    for f in [
        "config.toml",
        "epochs.csv",
        "diagnostics.csv",
        "summary.json",
        "checkpoint.bin",
        "link.json",
    ] {
        let p = dir.join(f);
        assert!(
            p.is_file() && p.metadata().unwrap().len() > 0,
            "{} missing or empty",
            p.display()
        );
    }
    assert!(
        temp_files(dir).is_empty(),
        "temporary files left behind: {:?}",
        temp_files(dir)
    );

    let (h, rows) = read_csv(&dir.join("epochs.csv"));
    assert_eq!(
        h[..8],
        [
            "epoch",
            "lr",
            "train_loss",
            "train_acc",
            "test_loss",
            "test_acc",
            "seconds",
            "images_per_s"
        ]
    );
    for c in [
        "total_cycles",
        "macs_int8",
        "macs_int16",
        "kept_batches",
        "dropped_batches",
        "energy_j",
        "energy_cum_j",
    ] {
        assert!(h[8..].iter().any(|x| x == c), "epochs.csv lacks {c}: {h:?}");
    }
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "1");
    let acc = last(dir, "test_acc");
    assert!((0.0..=1.0).contains(&acc), "test_acc {acc}");
    assert!(last(dir, "energy_j") > 0.0);
    assert!(last(dir, "total_cycles") > 0.0);

    let (dh, drows) = read_csv(&dir.join("diagnostics.csv"));
    assert_eq!(dh, ["epoch", "kind", "name", "value"]);
    assert!(
        drows.iter().any(|r| r[1] == "psg_uncertain_fraction"),
        "no PSG diagnostics"
    );
    assert!(
        drows.iter().any(|r| r[1] == "slu_executed_fraction"),
        "no SLU diagnostics"
    );

    let s = summary(dir);
    assert_eq!(s["finished"], true);
    assert_eq!(s["epochs_done"], 1);
    assert_eq!(s["model"], "resnet8");
    assert_eq!(s["final_test_acc"].as_f64().unwrap(), acc);

    let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    for line in [
        "model = \"resnet8\"",
        "batch = 64",
        "subset = 256",
        "test_subset = 128",
        "seed = 0",
    ] {
        assert!(
            cfg.lines().any(|l| l.trim() == line),
            "config.toml lacks {line:?}:\n{cfg}"
        );
    }
    let link: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("link.json")).unwrap()).unwrap();
    assert!(
        link["link"]["frames_received"].as_u64().unwrap() > 0,
        "{link}"
    );
    assert_eq!(link["link"]["crc_errors"], 0);
}

#[test]
fn same_seed_gives_the_same_numbers_and_weights() {
    let a = fixture("e2train");
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("again");
    train(&b, &recipe_with(&["--method", "e2train"]));
    assert_eq!(epochs_without_timing(a), epochs_without_timing(&b));
    assert_eq!(
        std::fs::read_to_string(a.join("diagnostics.csv")).unwrap(),
        std::fs::read_to_string(b.join("diagnostics.csv")).unwrap()
    );
    // Only the engine part: the host part of checkpoint.bin also stores each epoch's wall time.
    assert!(
        engine_state(a) == engine_state(&b),
        "engine checkpoints differ for the same seed"
    );
}

#[test]
fn resume_continues_to_the_same_state_as_an_uninterrupted_run() {
    // A constant rate: a cosine or step schedule depends on the planned epochs, so a 1-epoch run
    // extended to 2 trains its first epoch with other rates than a run planned for 2.
    let base = [
        "--model",
        "resnet8",
        "--subset",
        "128",
        "--test-subset",
        "64",
        "--batch",
        "32",
        "--seed",
        "3",
        "--method",
        "e2train",
        "--schedule",
        "constant",
    ];
    let tmp = tempfile::tempdir().unwrap();
    let (resumed, straight) = (tmp.path().join("resumed"), tmp.path().join("straight"));
    train(&resumed, &[&base[..], &["--epochs", "1"]].concat());
    let first = engine_state(&resumed);
    run_ok(&[
        "train",
        "--quiet",
        "--resume",
        resumed.to_str().unwrap(),
        "--epochs",
        "2",
        "--data",
        FASHION,
    ]);
    train(&straight, &[&base[..], &["--epochs", "2"]].concat());

    assert_ne!(
        first,
        engine_state(&resumed),
        "the resumed run did not train"
    );
    assert_eq!(summary(&resumed)["epochs_done"], 2);
    assert_eq!(
        epochs_without_timing(&resumed),
        epochs_without_timing(&straight)
    );
    assert!(
        engine_state(&resumed) == engine_state(&straight),
        "resumed and uninterrupted checkpoints differ"
    );
    assert!(temp_files(&resumed).is_empty());
}

#[test]
fn config_file_sets_the_run_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("recipe.toml");
    std::fs::write(
        &cfg,
        "model = \"resnet8\"\nmethod = \"fp32\"\nsubset = 64\ntest_subset = 32\nbatch = 32\nseed = 3\nlr = 0.02\n",
    )
    .unwrap();
    let run = tmp.path().join("run");
    run_ok(&[
        "train",
        "--quiet",
        "--config",
        cfg.to_str().unwrap(),
        "--seed",
        "5",
        "--data",
        FASHION,
        "--out",
        run.to_str().unwrap(),
    ]);
    let written = std::fs::read_to_string(run.join("config.toml")).unwrap();
    for line in [
        "seed = 5",
        "batch = 32",
        "subset = 64",
        "lr = 0.02",
        "method = \"fp32\"",
    ] {
        assert!(
            written.lines().any(|l| l.trim() == line),
            "config.toml lacks {line:?}:\n{written}"
        );
    }
    // 64 images in batches of 32, no dropping: two kept batches.
    assert_eq!(last(&run, "kept_batches"), 2.0);

    // The written config.toml repeats the run exactly.
    let again = tmp.path().join("again");
    run_ok(&[
        "train",
        "--quiet",
        "--config",
        run.join("config.toml").to_str().unwrap(),
        "--data",
        FASHION,
        "--out",
        again.to_str().unwrap(),
    ]);
    assert_eq!(epochs_without_timing(&run), epochs_without_timing(&again));
}

#[test]
fn methods_count_the_right_macs() {
    let base = fixture("baseline");
    let e2 = fixture("e2train");
    assert_eq!(
        last(base, "macs_int8"),
        0.0,
        "the baseline must run every MAC in INT16"
    );
    assert!(last(base, "macs_int16") > 0.0);
    assert_eq!(last(base, "dropped_batches"), 0.0);
    assert_eq!(last(base, "kept_batches"), 4.0);

    assert!(last(e2, "macs_int8") > 0.0, "PSG predicts in INT8");
    assert!(last(e2, "dropped_batches") > 0.0, "SMD dropped nothing");
    assert_eq!(last(e2, "kept_batches") + last(e2, "dropped_batches"), 4.0);
    // Counting each INT8 MAC as a whole INT16 one (the harshest view), E2-Train still does less.
    let e2_equiv = last(e2, "macs_int16") + last(e2, "macs_int8");
    assert!(
        e2_equiv < last(base, "macs_int16"),
        "e2train {e2_equiv} vs baseline {}",
        last(base, "macs_int16")
    );
    assert!(last(e2, "energy_j") < last(base, "energy_j"));
    assert_eq!(summary(base)["method"], "baseline");
    assert_eq!(summary(e2)["method"], "smd+slu+psg");
}

#[test]
fn smd_alone_drops_about_half_the_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("smd");
    train(
        &run,
        &[
            "--method",
            "fp32",
            "--smd",
            "--subset",
            "1024",
            "--test-subset",
            "16",
            "--batch",
            "16",
            "--seed",
            "1",
        ],
    );
    let (kept, dropped) = (last(&run, "kept_batches"), last(&run, "dropped_batches"));
    assert_eq!(kept + dropped, 64.0);
    // p = 0.5 over 64 coins: [16, 48] is eight standard deviations wide.
    assert!((16.0..=48.0).contains(&dropped), "dropped {dropped} of 64");
    assert_eq!(summary(&run)["method"], "fp32+smd");
}

#[test]
fn pty_board_gives_the_same_numbers_as_the_sim_board() {
    let sim = fixture("e2train");
    let tmp = tempfile::tempdir().unwrap();
    let pty = tmp.path().join("pty");
    train(
        &pty,
        &recipe_with(&["--method", "e2train", "--board", "pty"]),
    );
    assert_eq!(epochs_without_timing(sim), epochs_without_timing(&pty));
    assert!(
        engine_state(sim) == engine_state(&pty),
        "pty and sim checkpoints differ"
    );
    // The link really went through a serial transport to another process.
    let link: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pty.join("link.json")).unwrap()).unwrap();
    assert!(
        link["link"]["bytes_received"].as_u64().unwrap() > 0,
        "{link}"
    );
}

#[test]
fn report_writes_markdown_and_svg_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report");
    let o = run_ok(&[
        "report",
        fixture("baseline").to_str().unwrap(),
        fixture("e2train").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(text(&o.stdout).contains("report.md"), "{}", text(&o.stdout));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("baseline"), "{md}");
    assert!(md.contains("smd+slu+psg") || md.contains("e2train"), "{md}");
    let svgs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "svg"))
        .collect();
    assert!(!svgs.is_empty(), "no SVG plots in {}", out.display());
    for s in &svgs {
        let t = std::fs::read_to_string(s).unwrap();
        assert!(
            t.contains("<svg") && t.trim_end().ends_with("</svg>"),
            "{} is not a whole SVG",
            s.display()
        );
        let name = s.file_name().unwrap().to_str().unwrap();
        assert!(md.contains(name), "report.md does not show {name}");
    }
}

#[test]
fn sweep_writes_tables_and_skips_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let args = [
        "sweep",
        "--methods",
        "baseline,e2train",
        "--seeds",
        "0,1",
        "--set",
        "subset=128",
        "--set",
        "test-subset=64",
        "--set",
        "epochs=1",
        "--set",
        "batch=64",
        "--set",
        &format!("data={FASHION}"),
        "--out",
        out.to_str().unwrap(),
    ];
    let first = run_ok(&args);
    assert!(
        text(&first.stdout).contains("4 runs, 0 already done, 4 to run"),
        "{}",
        text(&first.stdout)
    );
    let (h, rows) = read_csv(&out.join("sweep.csv"));
    assert_eq!(h[..5], ["run", "method", "seed", "group", "status"]);
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r[4], "done", "sweep.csv: {r:?}");
    }
    let (sh, srows) = read_csv(&out.join("summary.csv"));
    // Rows are keyed by group (the method name as given); `method` holds the resolved preset.
    let gi = sh.iter().position(|c| c == "group").unwrap();
    let ni = sh.iter().position(|c| c == "n").unwrap();
    for m in ["baseline", "e2train"] {
        let r = srows
            .iter()
            .find(|r| r[gi] == m)
            .unwrap_or_else(|| panic!("summary.csv has no {m} row"));
        assert_eq!(r[ni], "2", "{m}: {r:?}");
    }
    // Seeds really differ.
    assert_ne!(
        engine_state(&out.join("baseline-s0")),
        engine_state(&out.join("baseline-s1"))
    );

    let stamp = |d: &str| {
        std::fs::metadata(out.join(d).join("checkpoint.bin"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before = stamp("e2train-s1");
    let second = run_ok(&args);
    assert!(
        text(&second.stdout).contains("4 runs, 4 already done, 0 to run"),
        "{}",
        text(&second.stdout)
    );
    assert_eq!(
        stamp("e2train-s1"),
        before,
        "a finished run was trained again"
    );
}

#[test]
fn bench_prints_a_line_and_writes_json() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let o = run_ok(&[
        "bench",
        "--model",
        "resnet8",
        "--batch",
        "8",
        "--windows",
        "1",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = text(&o.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.contains("resnet8") && first.contains("img/s"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["model"], "resnet8");
    assert_eq!(v["batch"], 8);
    assert!(v["images_per_s_median"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0, "{v}");

    // The accelerator engines: SMD's coin drops some of the offered batches.
    let o = run_ok(&[
        "bench",
        "--method",
        "smd",
        "--model",
        "resnet8",
        "--batch",
        "4",
        "--windows",
        "1",
        "--iters",
        "8",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        text(&o.stdout).starts_with("smd: resnet8"),
        "{}",
        text(&o.stdout)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["method"], "smd");
    assert_eq!(v["batches_offered"], 8);
    let kept = v["batches_kept"].as_u64().unwrap();
    assert!(kept > 0 && kept < 8, "{v}");
}

/// The demo evaluates on the whole test set (it has no --test-subset), 10 000 images per run, which
/// is too slow here; it runs on a small synthetic data set in the Fashion-MNIST IDX format instead.
#[test]
fn demo_prints_the_comparison_and_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 256, 64);
    let out = tmp.path().join("demo");
    let o = run_ok(&[
        "demo",
        "--subset",
        "256",
        "--epochs",
        "1",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = text(&o.stdout);
    let header = stdout
        .lines()
        .find(|l| l.starts_with("method"))
        .unwrap_or_else(|| panic!("no table:\n{stdout}"));
    for w in ["top-1", "MACs int16", "MACs int8", "energy", "saving"] {
        assert!(header.contains(w), "table header lacks {w}: {header}");
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("baseline ")),
        "{stdout}"
    );
    let e2_line = stdout
        .lines()
        .find(|l| l.starts_with("smd+slu+psg"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        e2_line.trim_end().ends_with('%'),
        "no saving for E2-Train: {e2_line}"
    );
    for m in ["baseline", "e2train"] {
        assert_eq!(summary(&out.join(m))["finished"], true);
    }
    assert!(out.join("report").join("report.md").is_file());
    assert!(
        std::fs::read_dir(out.join("report")).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "svg"))
    );
}

/// `sweep --help` offers the ablation methods (smd, slu, psg and their `+` combinations), so a
/// sweep of them must train, and label each run as that method.
#[test]
fn sweep_runs_the_ablation_methods_it_offers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    run_ok(&[
        "sweep",
        "--methods",
        "smd,smd+slu",
        "--seeds",
        "0",
        "--set",
        "subset=64",
        "--set",
        "test-subset=32",
        "--set",
        "batch=32",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (_, rows) = read_csv(&out.join("sweep.csv"));
    assert!(rows.iter().all(|r| r[4] == "done"), "{rows:?}");
    assert_eq!(summary(&out.join("smd-s0"))["method"], "smd");
    assert_eq!(summary(&out.join("smd+slu-s0"))["method"], "smd+slu");
}

/// An E2-Train run has PSG diagnostics, so its report must plot PSG's uncertain share per layer.
#[test]
fn report_plots_psg_uncertain_share_of_an_e2train_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report");
    let o = run_ok(&[
        "report",
        fixture("e2train").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = text(&o.stdout);
    assert!(!stdout.contains("skipped"), "{stdout}");
    assert!(out.join("psg_uncertain_share.svg").is_file(), "{stdout}");
}

/// `--init` takes another run's weights whatever its method: fine-tuning the classifier only, or a
/// full E2-Train run, from the baseline fixture. Training the classifier alone from random features
/// with the same seed gives other numbers, so the weights really arrived. Another model is refused.
#[test]
fn init_starts_any_method_from_another_runs_weights() {
    let base = fixture("baseline");
    let b = base.to_str().unwrap();
    let last = scratch().join("init-last");
    train(
        &last,
        &recipe_with(&["--method", "baseline", "--train-only", "last", "--init", b]),
    );
    let scratch_last = scratch().join("scratch-last");
    train(
        &scratch_last,
        &recipe_with(&["--method", "baseline", "--train-only", "last"]),
    );
    let loss = |d: &Path| read_csv(&d.join("epochs.csv")).1[0][2].clone();
    assert_ne!(loss(&last), loss(&scratch_last), "--init had no effect");

    let e2 = scratch().join("init-e2train");
    train(&e2, &recipe_with(&["--method", "e2train", "--init", b]));
    assert!(e2.join("summary.json").exists());

    let mut args = vec!["train", "--quiet", "--data", FASHION, "--out"];
    let other = scratch().join("init-other-model");
    args.push(other.to_str().unwrap());
    let mut r = recipe_with(&["--method", "baseline", "--init", b]);
    r[1] = "resnet20";
    args.extend_from_slice(&r);
    let err = run_err(&args);
    assert!(
        err.contains("resnet8")
            && err.contains("resnet20")
            && !err.contains("checkpoint: checkpoint: "),
        "{err}"
    );
}
