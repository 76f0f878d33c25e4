//! The remote engine against the in-process agent (`--board sim`): same protocol code as a board.

mod common;

use std::sync::Arc;
use std::time::Duration;

use e2t_board::remote::{SharedFactory, TransportFactory, transport_factory};
use e2t_board::toy::ToyEngine;
use e2t_board::{BoardSpec, ConnectOptions, RemoteEngine, RemoteError, RemoteOptions, connect};
use e2t_core::{EngineError, StepEngine};
use e2t_link::{LinkConfig, Transport};
use e2t_proto::BoardInfo;

fn toy_factory() -> SharedFactory {
    Arc::new(e2t_board::toy::toy_factory)
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        remote: RemoteOptions {
            eval_chunk_bytes: 700,
            checkpoint_every: 4,
            ..RemoteOptions::default()
        },
        sim_factory: Some(toy_factory()),
        ..ConnectOptions::default()
    }
}

#[test]
fn sim_board_matches_the_in_process_engine_bit_for_bit() {
    let mut remote = connect(&BoardSpec::Sim, &common::config(), &opts()).unwrap();
    let got = common::run(&mut remote, &common::batches(20));
    assert_eq!(got, common::reference(20));
    assert_eq!(remote.counters(), {
        let mut e = ToyEngine::new(&common::config()).unwrap();
        common::run(&mut e, &common::batches(20));
        e.counters()
    });
    // BN calibration goes through the protocol: acknowledged, and a bad chunk is refused by the
    // agent with the engine's reason.
    let b = &common::batches(1)[0];
    remote.calibrate_bn(&b.images, 0).unwrap();
    let err = remote
        .calibrate_bn(&b.images[1..], 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("BN calibration chunk 1"), "{err}");
    let s = remote.link_stats();
    assert!(s.messages_sent > 20, "{s:?}");
    assert_eq!(remote.board_info().unwrap().board_id, "sim");
}

#[test]
fn board_with_another_bitstream_is_refused_naming_both_hashes() {
    let mut o = opts();
    let mut info = BoardInfo::simulated("zc706-a", (16, 16));
    info.bitstream_id = "e2t_16x16".into();
    info.bitstream_sha256 = Some("aa".repeat(32));
    o.sim_info = Some(info);
    o.remote.expected_bitstream_sha256 = Some("bb".repeat(32));
    let e = connect(&BoardSpec::Sim, &common::config(), &o)
        .err()
        .unwrap();
    let t = e.to_string();
    assert!(matches!(e, RemoteError::Bitstream { .. }), "{t}");
    assert!(
        t.contains(&"aa".repeat(32)) && t.contains(&"bb".repeat(32)) && t.contains("zc706-a"),
        "{t}"
    );
}

#[test]
fn board_with_another_protocol_version_is_refused() {
    let mut o = opts();
    let mut info = BoardInfo::simulated("old-board", (16, 16));
    info.protocol_version = 99;
    o.sim_info = Some(info);
    let e = connect(&BoardSpec::Sim, &common::config(), &o)
        .err()
        .unwrap();
    let t = e.to_string();
    assert!(
        t.contains("99")
            && t.contains("version 99")
            && t.contains(&format!("speaks {}", e2t_proto::PROTOCOL_VERSION)),
        "{t}"
    );
}

#[test]
fn bad_requests_get_errors_and_the_session_goes_on() {
    let mut remote = connect(&BoardSpec::Sim, &common::config(), &opts()).unwrap();
    let mut b = common::batches(1).remove(0);
    b.labels.push(1); // one label too many for the images
    let e = remote.step(&b).unwrap_err();
    assert!(matches!(e, EngineError::Batch { seq: 0, .. }), "{e}");
    assert!(remote.restore(&[1, 2, 3]).is_err());
    let mut bad_cfg = common::config();
    bad_cfg.classes = 1;
    let e = connect(&BoardSpec::Sim, &bad_cfg, &opts()).err().unwrap();
    assert!(e.to_string().contains("classes"), "{e}");
    // Still usable.
    let got = common::run(&mut remote, &common::batches(6));
    assert_eq!(got, common::reference(6));
}

/// Fails every read and write once `budget` bytes have been written (a pulled cable).
struct Cut<T> {
    inner: T,
    budget: usize,
}

impl<T: Transport> Transport for Cut<T> {
    fn read(&mut self, b: &mut [u8], t: Duration) -> std::io::Result<usize> {
        if self.budget == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "cable pulled",
            ));
        }
        self.inner.read(b, t)
    }
    fn write(&mut self, b: &[u8], t: Duration) -> std::io::Result<usize> {
        if self.budget == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "cable pulled",
            ));
        }
        let n = self.inner.write(&b[..b.len().min(self.budget)], t)?;
        self.budget -= n;
        Ok(n)
    }
    fn describe(&self) -> String {
        format!("cut({})", self.inner.describe())
    }
}

#[test]
fn pulled_cable_mid_run_reconnects_and_ends_identical() {
    let base = transport_factory(&BoardSpec::Sim, &opts()).unwrap();
    let base = std::sync::Mutex::new(base);
    // The first two connections die after a few kB (the second during recovery); the rest run clean.
    let factory: TransportFactory = Box::new(move |attempt| {
        let t = (base.lock().unwrap())(attempt)?;
        Ok(match attempt {
            1 => Box::new(Cut {
                inner: t,
                budget: 6000,
            }) as Box<dyn Transport>,
            2 => Box::new(Cut {
                inner: t,
                budget: 3000,
            }),
            _ => t,
        })
    });
    let ro = RemoteOptions {
        checkpoint_every: 4,
        eval_chunk_bytes: 700,
        link: LinkConfig {
            max_segment: 256,
            ..LinkConfig::default()
        },
        ..RemoteOptions::default()
    };
    let mut remote = RemoteEngine::new(factory, ro, common::config()).unwrap();
    let got = common::run(&mut remote, &common::batches(24));
    assert!(
        remote.reconnects() >= 2,
        "reconnects {}",
        remote.reconnects()
    );
    assert_eq!(got, common::reference(24));
}

/// Counts the bytes written through it (to place a cut inside one message).
struct Tap<T> {
    inner: T,
    written: Arc<std::sync::atomic::AtomicUsize>,
}

impl<T: Transport> Transport for Tap<T> {
    fn read(&mut self, b: &mut [u8], t: Duration) -> std::io::Result<usize> {
        self.inner.read(b, t)
    }
    fn write(&mut self, b: &[u8], t: Duration) -> std::io::Result<usize> {
        let n = self.inner.write(b, t)?;
        self.written
            .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        Ok(n)
    }
    fn describe(&self) -> String {
        format!("tap({})", self.inner.describe())
    }
}

#[test]
fn cable_pulled_during_a_weight_upload_reconnects_and_loads_them() {
    use std::sync::atomic::Ordering;
    let batches = common::batches(10);
    let mut src = ToyEngine::new(&common::config()).unwrap();
    let trained = common::run(&mut src, &batches);
    let ro = RemoteOptions {
        link: LinkConfig {
            max_segment: 64,
            ..LinkConfig::default()
        },
        ..RemoteOptions::default()
    };
    // Probe: how many bytes the host writes to connect, and then to upload the weights.
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let base = std::sync::Mutex::new(transport_factory(&BoardSpec::Sim, &opts()).unwrap());
    let w = written.clone();
    let probe: TransportFactory = Box::new(move |attempt| {
        let t = (base.lock().unwrap())(attempt)?;
        Ok(Box::new(Tap {
            inner: t,
            written: w.clone(),
        }) as Box<dyn Transport>)
    });
    let mut remote = RemoteEngine::new(probe, ro.clone(), common::config()).unwrap();
    let connected = written.load(Ordering::SeqCst);
    remote.load_weights(&trained.checkpoint).unwrap();
    let loaded = written.load(Ordering::SeqCst);
    assert!(loaded > connected + 200, "the upload is several segments");
    drop(remote);

    // The first connection dies halfway through the upload; the second one runs clean.
    let base = std::sync::Mutex::new(transport_factory(&BoardSpec::Sim, &opts()).unwrap());
    let cut_at = connected + (loaded - connected) / 2;
    let factory: TransportFactory = Box::new(move |attempt| {
        let t = (base.lock().unwrap())(attempt)?;
        Ok(match attempt {
            1 => Box::new(Cut {
                inner: t,
                budget: cut_at,
            }) as Box<dyn Transport>,
            _ => t,
        })
    });
    let mut remote = RemoteEngine::new(factory, ro, common::config()).unwrap();
    remote.load_weights(&trained.checkpoint).unwrap();
    assert_eq!(remote.reconnects(), 1, "the cut hit the upload");
    assert_eq!(remote.counters(), e2t_core::Counters::default());
    assert_same_evaluation(&mut remote, &mut src, &batches);
}

#[test]
fn unreachable_board_is_a_clear_error() {
    let factory: TransportFactory = Box::new(|_| Err(RemoteError::Open("no such board".into())));
    let e = RemoteEngine::new(factory, RemoteOptions::default(), common::config())
        .err()
        .unwrap();
    assert!(e.to_string().contains("no such board"), "{e}");
}

/// Both engines evaluate the batches' samples to the same loss bits and correct count.
fn assert_same_evaluation(
    remote: &mut dyn StepEngine,
    src: &mut dyn StepEngine,
    batches: &[e2t_core::Batch],
) {
    let images: Vec<u8> = batches.iter().flat_map(|b| b.images.clone()).collect();
    let labels: Vec<u8> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    let (a, b) = (
        remote.evaluate(&images, &labels).unwrap(),
        src.evaluate(&images, &labels).unwrap(),
    );
    assert_eq!(
        (a.loss_sum.to_bits(), a.correct),
        (b.loss_sum.to_bits(), b.correct)
    );
}

#[test]
fn load_weights_takes_the_weights_and_starts_fresh() {
    let batches = common::batches(10);
    let mut src = ToyEngine::new(&common::config()).unwrap();
    let trained = common::run(&mut src, &batches);
    let mut remote = connect(&BoardSpec::Sim, &common::config(), &opts()).unwrap();
    remote.load_weights(&trained.checkpoint).unwrap();
    // Fresh optimizer and counters, the source's weights: the same evaluation as the source.
    assert_eq!(remote.counters(), e2t_core::Counters::default());
    assert_same_evaluation(&mut remote, &mut src, &batches);
    assert_ne!(remote.checkpoint().unwrap(), trained.checkpoint);
    // Bytes that are no checkpoint of this engine are refused with the engine's reason.
    let e = remote.load_weights(&[1, 2, 3]).unwrap_err().to_string();
    assert!(e.contains("toy checkpoint is 3 bytes"), "{e}");
    assert!(!e.contains("checkpoint: checkpoint"), "{e}");
}
