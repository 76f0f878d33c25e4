//! Verilated models of `rtl/` and the drivers the RTL regression suite (`sim/tests`) uses.
//!
//! * [`models`]: the generated wrappers (`Ve2t_top` at R=4, C=4, DEPTH=8 with tracing compiled in;
//!   `Ve2t_pe` and `Ve2t_pe_fabric`, the PE pair with DSP / fabric multipliers), built by `build.rs`
//!   with vlharness.
//! * [`Tb`]: a cycle-level testbench around the top: clock and reset, an AXI4-Lite master, an
//!   AXI4-Stream source and sink with seeded random TVALID/TREADY stalls, and `run_until` with a
//!   no-progress cycle limit, so a hang is an error that says where (cycle, what was awaited, the
//!   stream state and the STATUS register) instead of a frozen test.
//! * [`host`]: what the board agent does over those buses: pack operand tile packets, run GEMM and
//!   PSG commands, unpack results, snapshot the counters into [`e2t_core::Counters`].
//!
//! Invariants: everything is deterministic from the seed given to [`Tb::new`]; a model lives on the
//! thread that made it (each test owns its own model and `VerilatedContext`).

pub mod host;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use vlharness::{SimError, Verilated};

/// The generated model wrappers.
pub mod models {
    include!(concat!(env!("OUT_DIR"), "/Ve2t_top.rs"));
    include!(concat!(env!("OUT_DIR"), "/Ve2t_pe.rs"));
    include!(concat!(env!("OUT_DIR"), "/Ve2t_pe_fabric.rs"));
}
pub use models::{Ve2t_pe, Ve2t_pe_fabric, Ve2t_top};

/// Array shape the top model was built with (see `build.rs`).
/// (Defaults R=4, C=4, DEPTH=8, RWS=16, Q=2; `E2T_SIM_TOP` at build time changes them.)
pub const TOP_R: usize = parse_param(env!("E2T_TOP_R"));
pub const TOP_C: usize = parse_param(env!("E2T_TOP_C"));
pub const TOP_DEPTH: usize = parse_param(env!("E2T_TOP_DEPTH"));
/// Reuse-path words per lane (`HWCFG2.RWS`).
pub const TOP_RWS: usize = parse_param(env!("E2T_TOP_RWS"));
/// Reuse-path column tiles per B block (`HWCFG2.Q`).
pub const TOP_Q: usize = parse_param(env!("E2T_TOP_Q"));

/// Decimal parameter from build.rs (which has already checked it is a number).
const fn parse_param(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v = 0;
    while i < b.len() {
        v = v * 10 + (b[i] - b'0') as usize;
        i += 1;
    }
    v
}

/// Errors of a testbench run.
#[derive(Debug, thiserror::Error)]
pub enum TbError {
    /// Nothing moved on any bus for `limit` cycles while waiting.
    #[error(
        "hang: no bus activity for {limit} cycles while waiting for {what} (at cycle {cycle}); {state}"
    )]
    Timeout {
        what: String,
        cycle: u64,
        limit: u64,
        state: String,
    },
    #[error("at cycle {cycle}: {msg}")]
    Protocol { cycle: u64, msg: String },
    #[error(transparent)]
    Sim(#[from] SimError),
}

/// One AXI4-Stream beat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    pub data: u64,
    pub last: bool,
}

/// Random back-pressure, in percent per cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stalls {
    /// Probability that the operand source withholds TVALID in a cycle (when it has data).
    pub in_idle_pct: u8,
    /// Probability that the result sink drops TREADY in a cycle.
    pub out_busy_pct: u8,
    /// Probability of delaying AW or W (independently) by a cycle, and of holding BREADY/RREADY low.
    pub axil_delay_pct: u8,
}

impl Stalls {
    pub const NONE: Stalls = Stalls {
        in_idle_pct: 0,
        out_busy_pct: 0,
        axil_delay_pct: 0,
    };
    /// Heavy random back-pressure on every channel.
    pub const HEAVY: Stalls = Stalls {
        in_idle_pct: 40,
        out_busy_pct: 40,
        axil_delay_pct: 40,
    };
}

#[derive(Default)]
struct AxilMaster {
    aw: Option<u32>,
    w: Option<(u32, u8)>,
    wait_b: bool,
    ar: Option<u32>,
    wait_r: bool,
    rdata: Option<u32>,
    /// VALIDs already raised: AXI forbids dropping them before the handshake.
    aw_on: bool,
    w_on: bool,
    ar_on: bool,
}

/// Cycle-level testbench around `e2t_top`.
pub struct Tb {
    pub m: Ve2t_top,
    cycle: u64,
    time: u64,
    rng: ChaCha8Rng,
    stalls: Stalls,
    in_q: VecDeque<Beat>,
    in_cur: Option<Beat>,
    out: Vec<Beat>,
    axil: AxilMaster,
    /// Handshakes seen so far, for progress detection.
    fires: u64,
    /// Largest number of cycles without any handshake before a wait gives up.
    pub hang_limit: u64,
    wave: Option<PathBuf>,
    /// Set while `describe` reads STATUS, so a hang there does not recurse.
    describing: bool,
}

impl Tb {
    /// A fresh model, reset, with stalls drawn from `seed`. With `wave`, every cycle is written to
    /// that VCD file.
    pub fn new(seed: u64, stalls: Stalls, wave: Option<&Path>) -> Result<Tb, TbError> {
        let mut tb = Tb {
            m: Ve2t_top::new(),
            cycle: 0,
            time: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            stalls,
            in_q: VecDeque::new(),
            in_cur: None,
            out: Vec::new(),
            axil: AxilMaster::default(),
            fires: 0,
            hang_limit: 5_000,
            wave: wave.map(Path::to_path_buf),
            describing: false,
        };
        if let Some(p) = wave {
            tb.m.trace_open(p)?;
        }
        tb.reset()?;
        Ok(tb)
    }

    /// Path of the waveform being written, if any.
    pub fn wave(&self) -> Option<&Path> {
        self.wave.as_deref()
    }

    pub fn cycle(&self) -> u64 {
        self.cycle
    }

    pub fn set_stalls(&mut self, s: Stalls) {
        self.stalls = s;
    }

    /// Synchronous reset: `rst_ni` low for 2 cycles. Clears queued stream data.
    pub fn reset(&mut self) -> Result<(), TbError> {
        self.in_q.clear();
        self.in_cur = None;
        self.axil = AxilMaster::default();
        self.m.set_rst_ni(false);
        self.step()?;
        self.step()?;
        self.m.set_rst_ni(true);
        Ok(())
    }

    fn chance(&mut self, pct: u8) -> bool {
        pct > 0 && self.rng.random_range(0..100u8) < pct
    }

    /// Advances one clock cycle: drives this cycle's inputs, samples every handshake before the
    /// rising edge, then clocks.
    pub fn step(&mut self) -> Result<(), TbError> {
        // --- drive inputs ---
        if self.in_cur.is_none() && !self.in_q.is_empty() && !self.chance(self.stalls.in_idle_pct) {
            self.in_cur = self.in_q.pop_front();
        }
        let cur = self.in_cur;
        self.m.set_s_axis_tvalid_i(cur.is_some());
        self.m.set_s_axis_tdata_i(cur.map_or(0, |b| b.data));
        self.m.set_s_axis_tlast_i(cur.is_some_and(|b| b.last));
        let out_ready = !self.chance(self.stalls.out_busy_pct);
        self.m.set_m_axis_tready_i(out_ready);

        let d = self.stalls.axil_delay_pct;
        let aw_v = self.axil.aw.is_some() && (self.axil.aw_on || !self.chance(d));
        let w_v = self.axil.w.is_some() && (self.axil.w_on || !self.chance(d));
        self.m.set_s_axil_awvalid_i(aw_v);
        self.m.set_s_axil_awaddr_i(self.axil.aw.unwrap_or(0) as u16);
        self.m.set_s_axil_wvalid_i(w_v);
        let (wd, ws) = self.axil.w.unwrap_or((0, 0));
        self.m.set_s_axil_wdata_i(wd);
        self.m.set_s_axil_wstrb_i(ws);
        let b_ready = self.axil.wait_b && !self.chance(d);
        self.m.set_s_axil_bready_i(b_ready);
        let ar_v = self.axil.ar.is_some() && (self.axil.ar_on || !self.chance(d));
        self.m.set_s_axil_arvalid_i(ar_v);
        self.m.set_s_axil_araddr_i(self.axil.ar.unwrap_or(0) as u16);
        let r_ready = self.axil.wait_r && !self.chance(d);
        self.m.set_s_axil_rready_i(r_ready);
        self.m.try_eval()?;

        // --- sample handshakes (they complete at the coming edge) ---
        let in_fire = cur.is_some() && self.m.s_axis_tready_o();
        let out_fire = self.m.m_axis_tvalid_o() && out_ready;
        let out_beat = Beat {
            data: self.m.m_axis_tdata_o(),
            last: self.m.m_axis_tlast_o(),
        };
        let aw_fire = aw_v && self.m.s_axil_awready_o();
        let w_fire = w_v && self.m.s_axil_wready_o();
        let b_fire = b_ready && self.m.s_axil_bvalid_o();
        let ar_fire = ar_v && self.m.s_axil_arready_o();
        let r_fire = r_ready && self.m.s_axil_rvalid_o();
        let rdata = self.m.s_axil_rdata_o();

        // --- clock ---
        self.m.trace_dump(self.time);
        self.m.set_clk_i(true);
        self.m.try_eval()?;
        self.time += 1;
        self.m.trace_dump(self.time);
        self.m.set_clk_i(false);
        self.m.try_eval()?;
        self.time += 1;
        self.cycle += 1;
        self.m.set_time(self.time);

        // --- bookkeeping ---
        if in_fire {
            self.in_cur = None;
        }
        if out_fire {
            self.out.push(out_beat);
        }
        self.axil.aw_on = aw_v && !aw_fire;
        self.axil.w_on = w_v && !w_fire;
        self.axil.ar_on = ar_v && !ar_fire;
        if aw_fire {
            self.axil.aw = None;
        }
        if w_fire {
            self.axil.w = None;
        }
        if b_fire {
            self.axil.wait_b = false;
        }
        if ar_fire {
            self.axil.ar = None;
        }
        if r_fire {
            self.axil.wait_r = false;
            self.axil.rdata = Some(rdata);
        }
        self.fires += [in_fire, out_fire, aw_fire, w_fire, b_fire, ar_fire, r_fire]
            .iter()
            .filter(|&&f| f)
            .count() as u64;
        Ok(())
    }

    /// Steps until `done(self)` holds. Fails when no handshake happened on any bus for
    /// [`Tb::hang_limit`] cycles (or `max_cycles` passed in total).
    pub fn run_until(
        &mut self,
        what: &str,
        max_cycles: u64,
        mut done: impl FnMut(&Tb) -> bool,
    ) -> Result<(), TbError> {
        let start = self.cycle;
        let mut last_fires = self.fires;
        let mut last_progress = self.cycle;
        while !done(self) {
            if self.cycle - last_progress >= self.hang_limit || self.cycle - start >= max_cycles {
                let limit = (self.cycle - last_progress).min(self.cycle - start);
                let state = if self.describing {
                    String::new()
                } else {
                    self.describe()
                };
                return Err(TbError::Timeout {
                    what: what.to_string(),
                    cycle: self.cycle,
                    limit,
                    state,
                });
            }
            self.step()?;
            if self.fires != last_fires {
                last_fires = self.fires;
                last_progress = self.cycle;
            }
        }
        Ok(())
    }

    /// Port-level state plus (best effort) the decoded STATUS register, for hang reports.
    pub fn describe(&mut self) -> String {
        let mut s = format!(
            "operand beats queued {} (presenting: {}), s_axis_tready={}, result beats received {}, m_axis_tvalid={}, irq={}",
            self.in_q.len(),
            self.in_cur.is_some(),
            self.m.s_axis_tready_o(),
            self.out.len(),
            self.m.m_axis_tvalid_o(),
            self.m.irq_o()
        );
        // A fresh read with a short limit: the CSR slave should answer even when the engine hangs.
        let saved = (self.hang_limit, std::mem::take(&mut self.axil));
        self.hang_limit = 200;
        self.describing = true;
        self.axil.ar = Some(e2t_csr::CSR_STATUS);
        self.axil.wait_r = true;
        let got = self.run_until("STATUS read", 200, |t| !t.axil.wait_r);
        match got {
            Ok(()) => s += &format!(", STATUS: {}", host::Status(self.axil.rdata.unwrap_or(0))),
            Err(_) => s += ", STATUS unreadable (AXI4-Lite read did not complete)",
        }
        self.describing = false;
        self.hang_limit = saved.0;
        self.axil = saved.1;
        if let Some(w) = &self.wave {
            s += &format!(", waveform {}", w.display());
        }
        s
    }

    /// AXI4-Lite write of a full word. Completes when the B response arrives.
    pub fn write(&mut self, addr: u32, data: u32) -> Result<(), TbError> {
        self.write_strb(addr, data, 0xf)
    }

    /// AXI4-Lite write with byte strobes.
    pub fn write_strb(&mut self, addr: u32, data: u32, strb: u8) -> Result<(), TbError> {
        self.axil.aw = Some(addr);
        self.axil.w = Some((data, strb));
        self.axil.wait_b = true;
        self.run_until(&format!("AXI4-Lite write to {addr:#05x}"), 1_000, |t| {
            t.axil.aw.is_none() && t.axil.w.is_none() && !t.axil.wait_b
        })
    }

    /// AXI4-Lite read.
    pub fn read(&mut self, addr: u32) -> Result<u32, TbError> {
        self.axil.ar = Some(addr);
        self.axil.wait_r = true;
        self.axil.rdata = None;
        self.run_until(&format!("AXI4-Lite read of {addr:#05x}"), 1_000, |t| {
            !t.axil.wait_r
        })?;
        Ok(self.axil.rdata.take().unwrap_or(0))
    }

    /// Drops queued operand beats and any received result beats (after a soft reset).
    pub fn reset_streams(&mut self) {
        self.in_q.clear();
        self.in_cur = None;
        self.out.clear();
    }

    /// Queues operand beats; they are sent as the stream accepts them while the bench runs.
    pub fn send(&mut self, beats: impl IntoIterator<Item = Beat>) {
        self.in_q.extend(beats);
    }

    /// Operand beats not yet accepted.
    pub fn pending_in(&self) -> usize {
        self.in_q.len() + usize::from(self.in_cur.is_some())
    }

    /// Result beats received so far (not yet taken).
    pub fn received(&self) -> usize {
        self.out.len()
    }

    /// Takes all received result beats.
    pub fn take_out(&mut self) -> Vec<Beat> {
        std::mem::take(&mut self.out)
    }

    /// Waits for `n` result beats in total (counting those not yet taken) and takes them.
    pub fn recv(&mut self, n: usize, what: &str) -> Result<Vec<Beat>, TbError> {
        self.run_until(&format!("{n} result beats ({what})"), u64::MAX, |t| {
            t.out.len() >= n
        })?;
        let rest = self.out.split_off(n);
        Ok(std::mem::replace(&mut self.out, rest))
    }

    /// Runs `n` cycles.
    pub fn idle(&mut self, n: u64) -> Result<(), TbError> {
        for _ in 0..n {
            self.step()?;
        }
        Ok(())
    }
}

/// Coverage files written by this process (for unique names).
static COVERAGE_FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// With a coverage build (`E2T_SIM_COVERAGE=1`) and `E2T_COVERAGE_DIR` set, writes the model's
/// coverage counts to a fresh `.dat` file there (scripts/coverage.sh merges them).
pub fn write_coverage(m: &mut impl Verilated) {
    let Some(dir) = std::env::var_os("E2T_COVERAGE_DIR") else {
        return;
    };
    if !m.coverage_built() {
        return;
    }
    let n = COVERAGE_FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = Path::new(&dir).join(format!("{}-{}-{n}.dat", m.top_name(), std::process::id()));
    if let Err(e) = m.write_coverage(&path) {
        eprintln!("e2t-sim: {e}");
    }
}

impl Drop for Tb {
    fn drop(&mut self) {
        self.m.trace_close();
        write_coverage(&mut self.m);
    }
}
