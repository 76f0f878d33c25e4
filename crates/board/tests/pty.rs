//! The pty board: the agent runs as a separate process (`e2t-test-agent`) on a pseudo-terminal.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2t_board::remote::TransportFactory;
use e2t_board::toy::{ToyEngine, toy_batches};
use e2t_board::{BoardSpec, ConnectOptions, RemoteEngine, RemoteOptions, connect};
use e2t_core::{InputShape, StepEngine};
use e2t_link::{FaultConfig, LinkConfig, PtyChild, Transport};

fn agent() -> (PathBuf, Vec<String>) {
    (
        PathBuf::from(env!("CARGO_BIN_EXE_e2t-test-agent")),
        vec!["--port".into(), "{port}".into()],
    )
}

fn fast_link() -> LinkConfig {
    LinkConfig {
        rto_initial: Duration::from_millis(50),
        rto_min: Duration::from_millis(5),
        rto_max: Duration::from_millis(300),
        peer_timeout: Duration::from_secs(3),
        ..LinkConfig::default()
    }
}

#[test]
fn noisy_pty_run_is_bit_identical_to_a_clean_run() {
    let faults = FaultConfig {
        corrupt: 0.01,
        drop: 0.001,
        duplicate: 0.0,
        delay_rate: 0.0,
        delay: Duration::ZERO,
        seed: 5,
    };
    let o = ConnectOptions {
        remote: RemoteOptions {
            link: fast_link(),
            checkpoint_every: 6,
            eval_chunk_bytes: 2048,
            ..Default::default()
        },
        agent_command: Some(agent()),
        faults: Some(faults),
        ..ConnectOptions::default()
    };
    let mut remote = connect(&BoardSpec::Pty, &common::config(), &o).unwrap();
    let got = common::run(&mut remote, &common::batches(15));
    let s = remote.link_stats();
    eprintln!("noisy pty link: {s:?}");
    assert!(
        s.crc_errors + s.framing_errors > 0 && s.frames_retransmitted > 0,
        "faults exercised: {s:?}"
    );
    assert_eq!(got, common::reference(15));
}

#[test]
fn killed_agent_is_restarted_and_the_run_ends_identical() {
    let (prog, args) = agent();
    let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = pids.clone();
    let factory: TransportFactory = Box::new(move |attempt| {
        let mut a = args.clone();
        if attempt == 1 {
            // The first agent process dies when its 7th step request arrives (mid-epoch, mid-step).
            a.extend(["--die-after-steps".to_string(), "7".to_string()]);
        }
        let t =
            PtyChild::spawn(&prog, &a).map_err(|e| e2t_board::RemoteError::Open(e.to_string()))?;
        seen.lock().unwrap().push(t.pid());
        Ok(Box::new(t) as Box<dyn Transport>)
    });
    let ro = RemoteOptions {
        link: fast_link(),
        checkpoint_every: 5,
        ..Default::default()
    };
    let mut remote = RemoteEngine::new(factory, ro, common::config()).unwrap();
    let got = common::run(&mut remote, &common::batches(20));
    assert_eq!(remote.reconnects(), 1);
    assert_eq!(
        pids.lock().unwrap().len(),
        2,
        "a second agent process was started"
    );
    assert_eq!(got, common::reference(20));
}

/// Throughput over the pty with Fashion-MNIST-sized batches (128 x 1x28x28). A measurement, not a
/// check: run with `cargo test -p e2t-board --test pty -- --ignored --nocapture`.
#[test]
#[ignore]
fn pty_throughput_report() {
    let mut cfg = common::config();
    cfg.input = InputShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    cfg.classes = 10;
    let steps = 12;
    let batches = toy_batches(&cfg, steps, 128, 3);
    // Engine time alone, in-process.
    let mut local = ToyEngine::new(&cfg).unwrap();
    let t0 = Instant::now();
    for b in &batches {
        local.step(b).unwrap();
    }
    let engine_s = t0.elapsed().as_secs_f64();
    for baud in [None, Some(921_600u32)] {
        let n = if baud.is_some() { 4 } else { steps };
        let o = ConnectOptions {
            remote: RemoteOptions {
                checkpoint_every: 0,
                ..Default::default()
            },
            agent_command: Some(agent()),
            emulate_baud: baud,
            ..ConnectOptions::default()
        };
        let mut remote = connect(&BoardSpec::Pty, &cfg, &o).unwrap();
        let before = remote.link_stats();
        let t = Instant::now();
        for b in &batches[..n] {
            remote.step(b).unwrap();
        }
        let wall = t.elapsed().as_secs_f64();
        let mut s = remote.link_stats();
        s.bytes_sent -= before.bytes_sent;
        s.payload_bytes_sent -= before.payload_bytes_sent;
        let img_s = (n * 128) as f64 / wall;
        let wire_s = s.bytes_sent as f64 / s.line_rate.map(|r| r as f64).unwrap_or(f64::INFINITY);
        println!(
            "baud {:?}: {n} steps x 128 images in {wall:.3} s = {img_s:.0} images/s; efficiency {:.4} \
             (payload {} / wire {} bytes); wire time at line rate {wire_s:.3} s; engine time {:.4} s; \
             retransmitted {}; srtt {:?} ms; segment {}",
            baud,
            s.efficiency(),
            s.payload_bytes_sent,
            s.bytes_sent,
            engine_s * n as f64 / steps as f64,
            s.frames_retransmitted,
            s.srtt_ms,
            s.segment
        );
    }
}
