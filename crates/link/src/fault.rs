//! Seeded fault injection on a transport: the test bench for the reliable layer.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::transport::Transport;

/// Per-byte fault rates (0..1) applied to both directions, and a per-write chance of a delay.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultConfig {
    /// Probability that a byte is replaced by a different value.
    pub corrupt: f64,
    /// Probability that a byte is lost.
    pub drop: f64,
    /// Probability that a byte is sent twice.
    pub duplicate: f64,
    /// Probability that a write is held back by `delay` (order is kept, as on a real line).
    pub delay_rate: f64,
    pub delay: Duration,
    pub seed: u64,
}

impl FaultConfig {
    pub fn clean(seed: u64) -> Self {
        FaultConfig {
            corrupt: 0.0,
            drop: 0.0,
            duplicate: 0.0,
            delay_rate: 0.0,
            delay: Duration::ZERO,
            seed,
        }
    }
}

/// Counts of injected faults, to check a test really exercised the error paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    pub corrupted: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
}

/// Wraps a transport and damages bytes in both directions.
pub struct Faulty<T> {
    inner: T,
    cfg: FaultConfig,
    tx_rng: ChaCha8Rng,
    rx_rng: ChaCha8Rng,
    /// Damaged outgoing bytes not yet accepted by `inner`, each with its release time.
    queue: VecDeque<(Instant, Vec<u8>)>,
    counts: std::sync::Arc<std::sync::Mutex<FaultCounts>>,
}

impl<T: Transport> Faulty<T> {
    pub fn new(inner: T, cfg: FaultConfig) -> Self {
        Faulty {
            inner,
            cfg,
            tx_rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            rx_rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15),
            queue: VecDeque::new(),
            counts: Default::default(),
        }
    }

    /// A handle that stays readable after the wrapper moved into a link.
    pub fn counts_handle(&self) -> std::sync::Arc<std::sync::Mutex<FaultCounts>> {
        self.counts.clone()
    }

    fn damage(
        cfg: &FaultConfig,
        rng: &mut ChaCha8Rng,
        counts: &mut FaultCounts,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 8);
        for &b in data {
            if cfg.drop > 0.0 && rng.random_bool(cfg.drop) {
                counts.dropped += 1;
                continue;
            }
            let b = if cfg.corrupt > 0.0 && rng.random_bool(cfg.corrupt) {
                counts.corrupted += 1;
                b ^ rng.random_range(1..=255u8)
            } else {
                b
            };
            out.push(b);
            if cfg.duplicate > 0.0 && rng.random_bool(cfg.duplicate) {
                counts.duplicated += 1;
                out.push(b);
            }
        }
        out
    }

    fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        let now = Instant::now();
        while let Some((at, bytes)) = self.queue.front_mut() {
            if *at > now {
                break;
            }
            let n = self.inner.write(bytes, timeout)?;
            if n < bytes.len() {
                bytes.drain(..n);
                break;
            }
            self.queue.pop_front();
        }
        Ok(())
    }
}

impl<T: Transport> Transport for Faulty<T> {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.flush(Duration::ZERO)?;
        let t = if self.queue.is_empty() {
            timeout
        } else {
            timeout.min(Duration::from_millis(1))
        };
        let n = self.inner.read(buf, t)?;
        if n == 0 {
            return Ok(0);
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let damaged = Self::damage(&self.cfg, &mut self.rx_rng, &mut counts, &buf[..n]);
        // Duplicates can make the damaged run longer than `buf`: keep what fits (the rest counts as
        // dropped), which is still a valid fault pattern.
        let k = damaged.len().min(buf.len());
        counts.dropped += (damaged.len() - k) as u64;
        buf[..k].copy_from_slice(&damaged[..k]);
        Ok(k)
    }

    fn write(&mut self, buf: &[u8], timeout: Duration) -> io::Result<usize> {
        self.flush(timeout)?;
        if !self.queue.is_empty() {
            // Backpressure: the line is still busy with earlier bytes.
            return Ok(0);
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let damaged = Self::damage(&self.cfg, &mut self.tx_rng, &mut counts, buf);
        let mut at = Instant::now();
        if self.cfg.delay_rate > 0.0 && self.tx_rng.random_bool(self.cfg.delay_rate) {
            counts.delayed += 1;
            at += self.cfg.delay;
        }
        drop(counts);
        self.queue.push_back((at, damaged));
        self.flush(Duration::ZERO)?;
        Ok(buf.len())
    }

    fn describe(&self) -> String {
        format!(
            "{} (faults: corrupt {}, drop {}, duplicate {}, seed {})",
            self.inner.describe(),
            self.cfg.corrupt,
            self.cfg.drop,
            self.cfg.duplicate,
            self.cfg.seed
        )
    }

    fn line_rate(&self) -> Option<u64> {
        self.inner.line_rate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::in_proc_pair;

    fn pump(f: &mut Faulty<crate::InProc>, peer: &mut crate::InProc, data: &[u8]) -> Vec<u8> {
        let mut off = 0;
        while off < data.len() {
            off += f.write(&data[off..], Duration::ZERO).unwrap();
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            f.flush(Duration::ZERO).unwrap();
            let n = peer.read(&mut buf, Duration::from_millis(5)).unwrap();
            out.extend_from_slice(&buf[..n]);
            if (n == 0 && f.queue.is_empty()) || Instant::now() > deadline {
                return out;
            }
        }
    }

    #[test]
    fn clean_config_is_transparent() {
        let (a, mut b) = in_proc_pair();
        let mut f = Faulty::new(a, FaultConfig::clean(1));
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(pump(&mut f, &mut b, &data), data);
    }

    #[test]
    fn rates_are_roughly_honoured_and_seeded() {
        let cfg = FaultConfig {
            corrupt: 0.01,
            drop: 0.001,
            duplicate: 0.001,
            ..FaultConfig::clean(42)
        };
        let data = vec![0x5au8; 200_000];
        let run = || {
            let (a, mut b) = in_proc_pair();
            let mut f = Faulty::new(a, cfg);
            let out = pump(&mut f, &mut b, &data);
            (out, *f.counts.lock().unwrap())
        };
        let (out1, c1) = run();
        let (out2, c2) = run();
        assert_eq!(out1, out2, "same seed, same damage");
        assert_eq!(c1, c2);
        assert!((1500..2500).contains(&c1.corrupted), "{c1:?}");
        assert!((100..350).contains(&c1.dropped), "{c1:?}");
        assert!((100..350).contains(&c1.duplicated), "{c1:?}");
        assert_eq!(out1.len() as u64, 200_000 - c1.dropped + c1.duplicated);
        // A corrupted byte may also be duplicated.
        let bad = out1.iter().filter(|&&b| b != 0x5a).count() as u64;
        assert!(
            bad >= c1.corrupted && bad <= c1.corrupted + c1.duplicated,
            "{bad} {c1:?}"
        );
    }

    #[test]
    fn delays_keep_order() {
        let cfg = FaultConfig {
            delay_rate: 0.5,
            delay: Duration::from_millis(3),
            ..FaultConfig::clean(3)
        };
        let (a, mut b) = in_proc_pair();
        let mut f = Faulty::new(a, cfg);
        let mut sent = Vec::new();
        let mut got = Vec::new();
        for i in 0..50u8 {
            let chunk = [i; 10];
            sent.extend_from_slice(&chunk);
            got.extend(pump(&mut f, &mut b, &chunk));
        }
        assert_eq!(got, sent);
        assert!(f.counts.lock().unwrap().delayed > 10);
    }
}
