//! `AccelGemm`: a layer's three GEMMs on an [`Accelerator`] (the `e2t_nn::GemmEngine` seam).
//!
//! Quantization (see `e2t_numerics::quant` for the exponent rule and rounding):
//! - forward `y = x · w`: `x` per tensor, `w` per output column (one exponent per column of the `[K,N]`
//!   weight matrix), both as 16-bit codes (INT16 mode) or as 8-bit tensors (INT8 mode, rounded to
//!   the high byte). Result: `y[i,j] = acc * 2^(ex + ew_j)` from raw 48-bit accumulators, or for a
//!   convolution with [`AccelGemmConfig::requant_outputs`] from the block's requantized 16-bit
//!   output, `y[i,j] = requantize(acc, s) * 2^(s + ex + ew_j)` (below).
//! - backward data `dx = dy · wᵀ`: here the contraction runs over the output channels, so a
//!   per-column weight scale would differ along K and could not be factored out of an integer dot
//!   product; the weights are therefore quantized per tensor for this GEMM. INT16 mode.
//! - backward weight `dw = xᵀ · dy`: `x` and `dy` per tensor. Either a full INT16 GEMM (baseline) or
//!   PSG: INT8 prediction, threshold, INT16 recompute of uncertain tiles; `dw` then holds the signs.
//!
//! `dy` may use seeded stochastic rounding; its random stream is derived from (seed, step, layer), so
//! both backward GEMMs of a layer see the same codes and a run is reproducible. GEMMs beyond one
//! command's limits (M or N above 65535, K above 2^24 - 1) are split into several commands; raw
//! accumulators of K pieces are summed on the host.
//!
//! PSG threshold per layer (the block compares `|P|` with a threshold in INT8-accumulator units,
//! whose real value is `2^(ex + edy + 16)` per unit):
//! - `Absolute(t)`: `ceil(t / 2^(ex+edy+16))`, so "certain iff |P| * unit >= t" holds exactly;
//! - `Adaptive(c)`: the block's adaptive mode with `c` in Q0.16 (rounded, at most 65535/65536) and
//!   the reference `max|P|` of this layer's previous PSG step, rescaled to this step's units (floor).
//!   A layer's first PSG step has no previous max: it uses the largest threshold, so every tile is
//!   recomputed and the first update uses exact signs (and yields the first max|P|); with
//!   `PsgFallback::Zero` every entry of that first step is uncertain and gets sign 0 (no update).
//!
//! Long K (weight gradients, K = batch x pixels): a raw GEMM whose K exceeds what the reuse
//! path's on-chip buffers hold (`ReuseGeom::BOARD`) is sent, when configured, as K pieces that
//! fit it, and the host sums the pieces' accumulators in 64 bits. The per-tile path would re-send
//! both operand panels for every 16x16 output tile; the pieces stream each operand about once.
//!
//! PSG of such a long-K weight gradient runs the same way: the INT8 prediction as reuse-path pieces
//! summed on the host, the threshold rule on the host, then the INT16 recompute of the uncertain
//! tiles, or of the whole GEMM when that moves fewer bytes ([`Accelerator::psg_split_k`]); the
//! block's `OP_PSG` unit needs the whole K in one command, i.e. the per-tile path.
//!
//! Requantized outputs (convolution forward and every backward data, when configured): the result
//! stream carries 16-bit codes instead of 48-bit accumulators, a quarter of the result bytes, which
//! are most of the off-chip traffic of a backward-data GEMM (its output is the 9x wider column
//! gradient). The shift `s` of a layer's command comes from the largest |accumulator| of the layer's
//! previous output of the same kind and mode plus one bit of headroom, and is never above the
//! shift of the worst case `K * 2^30` (INT16), which is also the first command's ([`requant_shift`],
//! [`next_out_bits`]). An output that grew more than 2x since the last step saturates at 16 bits
//! for that step and sends the next command back to the bound's shift. The history is part of the
//! checkpoint and only training passes update it ([`AccelGemm::freeze_history`]): evaluation must
//! not change what the next training step computes (a board's recovery replays training steps
//! only).
//!
//! Errors from the accelerator cannot cross the `GemmEngine` seam (its methods return nothing): the
//! first one is kept for [`AccelGemm::take_error`], and the affected output is zeroed.

use crate::conv::{ConvCodes, Im2colGeom, covered_max_abs, im2col_codes};
use crate::{
    AccelError, Accelerator, CodeMatrix, DIM_K_MAX, DIM_MN_MAX, F32Operand, GemmOut, PsgReport,
    Scatter,
};
use e2t_core::{Counters, LayerPsgStats, MethodConfig, Mode, Precision, PsgFallback, PsgThreshold};
use e2t_nn::{GemmEngine, LayerId};
use e2t_numerics::cycles::ReuseGeom;
use e2t_numerics::{
    HwThreshold, PredRounding, THR_MAX, choose_exp, choose_exp_8bit, max_abs_finite,
    quantize_columns, quantize_columns_8bit, quantize_into, quantize_into_8bit,
    quantize_stochastic,
};
use ndarray::{ArrayView2, ArrayViewMut2, Zip};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

/// How weight gradients are computed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum BackwardWeight {
    /// Full INT16 GEMM; `dw` is the dequantized gradient.
    Int16,
    /// PSG; `dw` holds the signs (+1, -1, 0).
    Psg {
        threshold: PsgThreshold,
        pred: PredRounding,
        /// What uncertain entries get; with [`PsgFallback::Zero`] the host runs the prediction
        /// over plain INT8 commands and never recomputes.
        #[serde(default)]
        fallback: PsgFallback,
    },
}

/// Rounding of output gradients `dy` to codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GradRounding {
    /// Round to nearest, ties to even.
    Nearest,
    /// Seeded stochastic rounding (reproducible: see the module doc).
    Stochastic { seed: u64 },
}

/// What runs in which mode.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccelGemmConfig {
    pub forward_mode: Mode,
    pub backward_weight: BackwardWeight,
    pub grad_rounding: GradRounding,
    /// Convolution forward and backward-data commands return requantized 16-bit outputs (a
    /// quarter of the raw format's result bytes) with a per-layer shift (module doc); `false`
    /// returns raw 48-bit accumulators.
    #[serde(default)]
    pub requant_outputs: bool,
    /// Raw-output GEMMs whose K is too long for the reuse path (weight gradients: K = batch x
    /// pixels) are sent as K pieces that fit it, summed on the host (module doc); `false` sends
    /// one per-tile command.
    #[serde(default)]
    pub split_long_k: bool,
}

impl AccelGemmConfig {
    /// INT16 everywhere (the accelerator baseline).
    pub fn baseline() -> Self {
        AccelGemmConfig {
            forward_mode: Mode::Int16,
            backward_weight: BackwardWeight::Int16,
            grad_rounding: GradRounding::Nearest,
            requant_outputs: true,
            split_long_k: true,
        }
    }

    /// PSG: forward in INT8, weight gradients by PSG with nearest-rounded prediction bytes.
    pub fn psg(threshold: PsgThreshold) -> Self {
        Self::psg_with(threshold, PsgFallback::Recompute)
    }

    /// [`Self::psg`] with a choice of what uncertain entries get.
    pub fn psg_with(threshold: PsgThreshold, fallback: PsgFallback) -> Self {
        AccelGemmConfig {
            forward_mode: Mode::Int8,
            backward_weight: BackwardWeight::Psg {
                threshold,
                pred: PredRounding::Nearest,
                fallback,
            },
            grad_rounding: GradRounding::Nearest,
            requant_outputs: true,
            split_long_k: true,
        }
    }

    /// The configuration a method asks for (`None` for the fp32 trainer, which has no accelerator).
    pub fn from_method(m: &MethodConfig) -> Option<Self> {
        match m.precision {
            Precision::Fp32 => None,
            Precision::Accel if m.psg => Some(Self::psg_with(m.psg_threshold, m.psg_fallback)),
            Precision::Accel => Some(Self::baseline()),
        }
    }
}

/// Per-layer state carried across steps (part of a checkpoint).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerPsgState {
    /// The layer's last max|P| and the exponent of its unit (`ex + edy + 16`).
    pub prev_max_p: Option<(u64, i32)>,
    /// Bit length of the largest |accumulator| seen in the layer's last requantized output, per
    /// [`OutKind`] and mode (see [`OutKind::slot`]): the next command's shift comes from it.
    #[serde(default)]
    pub out_bits: [Option<u32>; 4],
}

/// Which of a layer's GEMMs a requantized output belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutKind {
    Forward,
    BackwardData,
}

impl OutKind {
    /// Index into [`LayerPsgState::out_bits`]: INT8 and INT16 accumulators have different units,
    /// so each mode keeps its own history.
    pub fn slot(self, mode: Mode) -> usize {
        2 * (self as usize) + usize::from(mode == Mode::Int8)
    }
}

/// Headroom of the requantization shift over the last observed maximum, in bits: a layer's
/// outputs may grow 2x between steps before they saturate.
pub const REQUANT_HEADROOM_BITS: u32 = 1;

/// The requantization shift of a command with `k` terms in `mode`, given the bit length of the
/// largest |accumulator| of the layer's previous output of this kind (`None`: no history). Never
/// larger than the shift of the worst-case bound `k * 2^15 * 2^15` (INT16; `k * 2^7 * 2^7` for
/// INT8's high bytes), which cannot saturate; with history, 16-bit outputs keep 15 bits below the
/// observed maximum plus the headroom.
pub fn requant_shift(k: usize, mode: Mode, prev_bits: Option<u32>) -> u32 {
    let kbits = usize::BITS - k.max(1).leading_zeros();
    let bound = kbits + if mode == Mode::Int8 { 14 } else { 30 };
    let bits = prev_bits.map_or(bound, |b| (b + REQUANT_HEADROOM_BITS).min(bound));
    bits.saturating_sub(15).min(e2t_numerics::MAX_SHIFT)
}

/// The layer's history after a requantized output with largest |code| `max_code` at `shift`: the
/// bit length of max|acc| (`prev` kept when the output was all zero, which says nothing about the
/// scale); a saturated output (|code| >= 32767) forgets the history, so the next command uses the
/// bound's shift, which cannot saturate.
pub fn next_out_bits(prev: Option<u32>, max_code: u32, shift: u32) -> Option<u32> {
    if max_code == 0 {
        prev
    } else if max_code >= i16::MAX as u32 {
        None
    } else {
        Some((u32::BITS - max_code.leading_zeros()) + shift)
    }
}

/// Everything [`AccelGemm`] needs to continue a run bit-identically (its accelerator's counters are
/// the accelerator's business).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelGemmState {
    pub layers: Vec<(String, LayerPsgState)>,
    pub step: u64,
}

struct LayerEntry {
    state: LayerPsgState,
    stats: LayerPsgStats,
}

/// The accelerator-backed [`GemmEngine`].
pub struct AccelGemm<A: Accelerator> {
    accel: A,
    cfg: AccelGemmConfig,
    layers: Vec<LayerEntry>,
    index: HashMap<String, usize>,
    step: u64,
    error: Option<AccelError>,
    /// Evaluation: requantized outputs use the layers' shifts but do not update them.
    history_frozen: bool,
    // Scratch reused across calls (large activations would otherwise be re-allocated every GEMM).
    qa: Vec<i16>,
    qb: Vec<i16>,
    acc: Vec<i64>,
    signs: Vec<i8>,
    patches: Vec<i16>,
    /// [`AccelGemm::share_grad_codes`]: the last weight gradient's `dy` codes, for the same
    /// layer's backward data.
    share_grad: bool,
    grad_cache: Option<GradCache>,
    /// A recycled code buffer (the codes vectors rotate between `qa`, `qb` and the cache).
    spare: Vec<i16>,
}

/// A weight gradient's quantized `dy`, and what identifies that `dy` (see
/// [`AccelGemm::share_grad_codes`]).
struct GradCache {
    layer: String,
    step: u64,
    rounding: GradRounding,
    ptr: usize,
    len: usize,
    exp: i32,
    codes: Vec<i16>,
}

/// Elements per parallel quantization chunk.
const QCHUNK: usize = 1 << 14;

impl<A: Accelerator> AccelGemm<A> {
    pub fn new(accel: A, cfg: AccelGemmConfig) -> Self {
        AccelGemm {
            accel,
            cfg,
            layers: Vec::new(),
            index: HashMap::new(),
            step: 0,
            error: None,
            history_frozen: false,
            qa: Vec::new(),
            qb: Vec::new(),
            acc: Vec::new(),
            signs: Vec::new(),
            patches: Vec::new(),
            share_grad: false,
            grad_cache: None,
            spare: Vec::new(),
        }
    }

    /// With sharing on, a weight gradient keeps its codes of `dy` and the next call, when it is
    /// the backward data of the same layer and step on the same `dy` slice (same address and
    /// length), uses them instead of quantizing `dy` again: they are the same codes (the same
    /// rounding of the same values, stochastic rounding included, whose stream depends only on
    /// seed, step and layer). The caller promises not to change `dy` between the two calls;
    /// any other GEMM call in between drops the codes. Off by default.
    pub fn share_grad_codes(&mut self, on: bool) {
        self.share_grad = on;
        self.drop_grad_cache();
    }

    fn drop_grad_cache(&mut self) {
        if let Some(c) = self.grad_cache.take() {
            self.spare = c.codes;
        }
    }

    /// The codes and exponent of the output gradient `dy` for backward data: the weight
    /// gradient's (see [`Self::share_grad_codes`]) when they are of this `dy`, else quantized.
    fn grad_codes(&mut self, layer: &str, dy: &[f32], out: &mut Vec<i16>) -> i32 {
        if let Some(c) = self.grad_cache.take() {
            if c.layer == layer
                && c.step == self.step
                && c.rounding == self.cfg.grad_rounding
                && c.ptr == dy.as_ptr() as usize
                && c.len == dy.len()
            {
                self.spare = std::mem::replace(out, c.codes);
                return c.exp;
            }
            self.spare = c.codes;
        }
        self.quantize_grad(layer, dy, out)
    }

    pub fn config(&self) -> &AccelGemmConfig {
        &self.cfg
    }
    pub fn set_config(&mut self, cfg: AccelGemmConfig) {
        self.cfg = cfg;
    }
    pub fn accel(&self) -> &A {
        &self.accel
    }
    pub fn accel_mut(&mut self) -> &mut A {
        &mut self.accel
    }
    pub fn into_inner(self) -> A {
        self.accel
    }

    /// Snapshot of the accelerator's counters.
    pub fn counters(&mut self) -> Counters {
        self.accel.snapshot()
    }

    /// The training step the next GEMMs belong to (keys the stochastic-rounding stream).
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
        self.drop_grad_cache();
    }

    /// While frozen (evaluation), requantized outputs do not update the layers' shift history.
    pub fn freeze_history(&mut self, frozen: bool) {
        self.history_frozen = frozen;
    }

    /// The first accelerator error since the last call, if any (see the module doc).
    pub fn take_error(&mut self) -> Option<AccelError> {
        self.error.take()
    }

    /// PSG statistics per layer (in first-use order) since the last reset.
    pub fn psg_stats(&self) -> Vec<LayerPsgStats> {
        self.layers.iter().map(|l| l.stats.clone()).collect()
    }

    /// Zero the PSG statistics (keeps thresholds' state).
    pub fn reset_psg_stats(&mut self) {
        for l in &mut self.layers {
            l.stats = LayerPsgStats {
                layer: l.stats.layer.clone(),
                ..Default::default()
            };
        }
    }

    /// [`Self::psg_stats`] then [`Self::reset_psg_stats`]; layers without PSG work are left out.
    pub fn take_psg_stats(&mut self) -> Vec<LayerPsgStats> {
        let s = self
            .psg_stats()
            .into_iter()
            .filter(|s| s.predicted > 0)
            .collect();
        self.reset_psg_stats();
        s
    }

    pub fn state(&self) -> AccelGemmState {
        AccelGemmState {
            layers: self
                .layers
                .iter()
                .map(|l| (l.stats.layer.clone(), l.state))
                .collect(),
            step: self.step,
        }
    }

    pub fn restore_state(&mut self, s: &AccelGemmState) {
        self.layers.clear();
        self.index.clear();
        for (name, st) in &s.layers {
            let i = self.layer_index(name);
            self.layers[i].state = *st;
        }
        self.step = s.step;
    }

    fn layer_index(&mut self, layer: &str) -> usize {
        if let Some(&i) = self.index.get(layer) {
            return i;
        }
        self.layers.push(LayerEntry {
            state: LayerPsgState::default(),
            stats: LayerPsgStats {
                layer: layer.to_string(),
                ..Default::default()
            },
        });
        self.index.insert(layer.to_string(), self.layers.len() - 1);
        self.layers.len() - 1
    }

    fn record(&mut self, e: AccelError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Quantize the output gradient per tensor with the configured rounding.
    fn quantize_grad(&self, layer: &str, dy: &[f32], out: &mut Vec<i16>) -> i32 {
        match self.cfg.grad_rounding {
            GradRounding::Nearest => quantize_par(dy, out, false),
            GradRounding::Stochastic { seed } => {
                let e = choose_exp(max_abs_par(dy));
                let mut rng = ChaCha8Rng::seed_from_u64(
                    seed ^ mix(self.step) ^ mix(fnv1a(layer)).rotate_left(17),
                );
                *out = quantize_stochastic(dy, e, &mut rng);
                e
            }
        }
    }

    fn forward_impl(
        &mut self,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        mut y: ArrayViewMut2<'_, f32>,
    ) -> Result<(), AccelError> {
        self.drop_grad_cache();
        check_shapes(
            "forward",
            x.dim(),
            w.dim(),
            y.dim(),
            (x.ncols(), w.nrows()),
            (x.nrows(), w.ncols()),
        )?;
        let (m, k) = x.dim();
        let n = w.ncols();
        let xs = contiguous(&x);
        let ws = contiguous(&w);
        let eight = self.cfg.forward_mode == Mode::Int8;
        let max = max_abs_par(&xs);
        let ex = if eight {
            choose_exp_8bit(max)
        } else {
            choose_exp(max)
        };
        let (qw, ew) = quantize_weight_columns(&ws, k, n, eight)?;
        let mut qa = std::mem::take(&mut self.qa);
        let mut acc = std::mem::take(&mut self.acc);
        acc.resize(m * n, 0);
        let (ms, ns) = self.split_limits();
        let r = if m > 0 && n > 0 && k > 0 && m <= ms && n <= ns && k <= DIM_K_MAX {
            // One command: let the backend quantize x on the way in (fused in the soft model).
            let a = F32Operand {
                data: &xs,
                rows: m,
                cols: k,
                exp: ex,
                eight_bit: eight,
            };
            self.accel.gemm_f32_lhs(
                a,
                CodeMatrix::row_major(&qw, k, n)?,
                self.cfg.forward_mode,
                GemmOut::Raw(&mut acc),
            )
        } else {
            quantize_with(&xs, ex, &mut qa, eight);
            self.run_raw(
                CodeMatrix::row_major(&qa, m, k)?,
                CodeMatrix::row_major(&qw, k, n)?,
                self.cfg.forward_mode,
                &mut acc,
            )
        };
        if r.is_ok() {
            // INT8 mode multiplies high bytes: each accumulator unit is 2^8 * 2^8 code units.
            let unit = if eight { 16 } else { 0 };
            let scales: Vec<f64> = ew.iter().map(|&e| pow2(ex + e + unit)).collect();
            write_scaled(&mut y, &acc, &scales);
        }
        self.qa = qa;
        self.acc = acc;
        r
    }

    /// Forward of a convolution given its NHWC input `x` (`g.input_len()` values) instead of the
    /// fp32 im2col matrix: the same result, counters and errors as [`GemmEngine::forward`] on that
    /// matrix (see `conv.rs` for why), with the input quantized once. Returns the codes for
    /// [`Self::conv_backward_weight`] (`None` after an error, which is kept as in `forward`).
    pub fn conv_forward(
        &mut self,
        layer: &str,
        x: &[f32],
        g: Im2colGeom,
        w: ArrayView2<'_, f32>,
        mut y: ArrayViewMut2<'_, f32>,
    ) -> Option<ConvCodes> {
        match self.conv_forward_impl(layer, x, g, w, y.view_mut()) {
            Ok(c) => Some(c),
            Err(e) => {
                y.fill(0.0);
                self.record(e);
                None
            }
        }
    }

    /// [`GemmEngine::backward_weight`] of a convolution given its NHWC input; `cached` is what
    /// [`Self::conv_forward`] returned for this input (its codes are used when they are the INT16
    /// per-tensor codes this GEMM needs, otherwise its max|x| saves a pass). Same result and
    /// counters as `backward_weight` on the fp32 im2col matrix.
    pub fn conv_backward_weight(
        &mut self,
        layer: &str,
        x: &[f32],
        g: Im2colGeom,
        cached: Option<ConvCodes>,
        dy: ArrayView2<'_, f32>,
        mut dw: ArrayViewMut2<'_, f32>,
    ) {
        if let Err(e) = self.conv_backward_weight_impl(layer, x, g, cached, dy, dw.view_mut()) {
            dw.fill(0.0);
            self.record(e);
        }
    }

    /// [`Self::conv_backward_weight`] without the fp32 input, for codes that
    /// [`ConvCodes::is_int16`] (the INT16 per-tensor codes this GEMM uses): the same result,
    /// counters and errors as passing the input those codes came from, so a layer need not keep
    /// its fp32 input alive between forward and backward. Codes of an 8-bit tensor cannot stand
    /// in for the input (the INT16 codes need its fp32 values): that is recorded as a shape error
    /// and `dw` is zeroed.
    pub fn conv_backward_weight_from_codes(
        &mut self,
        layer: &str,
        cached: ConvCodes,
        dy: ArrayView2<'_, f32>,
        mut dw: ArrayViewMut2<'_, f32>,
    ) {
        self.drop_grad_cache();
        let g = cached.geom;
        let r = if cached.is_int16() {
            self.backward_weight_from_input_codes(
                layer,
                &cached.codes,
                cached.exp,
                g,
                dy,
                dw.view_mut(),
            )
        } else {
            Err(AccelError::LayerShapes {
                op: "backward_weight (8-bit codes without the fp32 input)",
                lhs: (g.n * g.h * g.w, g.c),
                rhs: dy.dim(),
                out: dw.dim(),
            })
        };
        if let Err(e) = r {
            dw.fill(0.0);
            self.record(e);
        }
    }

    /// [`GemmEngine::backward_data`] whose column gradient `dy · wᵀ` (`[M, K]`) is never stored
    /// whole: its rows go to `scatter` (see [`Scatter`]) in groups of `group_rows` rows, group `g`
    /// with the `g`-th of as many equal parts of `dst` (for a convolution: one image's output
    /// positions and that image's input gradient, which `scatter` sums the columns into). The same
    /// values, counters, layer history and errors as `backward_data` into a whole matrix that is
    /// then handed over group by group; after an error `dst` is zeroed.
    pub fn backward_data_scatter(
        &mut self,
        layer: &str,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        group_rows: usize,
        dst: &mut [f32],
        scatter: &Scatter<'_>,
    ) {
        if let Err(e) = self.backward_data_scatter_impl(layer, dy, w, group_rows, dst, scatter) {
            dst.fill(0.0);
            self.record(e);
        }
    }

    fn backward_data_scatter_impl(
        &mut self,
        layer: &str,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        group_rows: usize,
        dst: &mut [f32],
        scatter: &Scatter<'_>,
    ) -> Result<(), AccelError> {
        let (m, n) = dy.dim();
        let k = w.nrows();
        check_shapes(
            "backward_data",
            dy.dim(),
            w.dim(),
            (m, k),
            (dy.ncols(), w.ncols()),
            (dy.nrows(), w.nrows()),
        )?;
        let (ms, ns) = self.split_limits();
        // `run_scaled`'s requantized path (its K is this `n`, its N this `k`).
        let direct =
            self.cfg.requant_outputs && m > 0 && n > 0 && k > 0 && k <= ns && n <= DIM_K_MAX;
        if !direct {
            // The commands `run_scaled` picks for this shape, into a whole matrix.
            let mut cols = ndarray::Array2::<f32>::zeros((m, k));
            self.backward_data_impl(layer, dy, w, cols.view_mut())?;
            let per = crate::check_scatter(m, ms, group_rows, dst.len())?;
            let cs = cols.as_slice().expect("fresh array");
            dst.par_chunks_mut(per)
                .zip(cs.par_chunks(group_rows * k))
                .for_each(|(d, rows)| scatter(0, rows, d));
            return Ok(());
        }
        let dys = contiguous(&dy);
        let ws = contiguous(&w);
        let mut qa = std::mem::take(&mut self.qa);
        let edy = self.grad_codes(layer, &dys, &mut qa);
        let mut qw = std::mem::take(&mut self.qb);
        let ew = quantize_par(&ws, &mut qw, false);
        let r = (|| {
            let li = self.layer_index(layer);
            let slot = OutKind::BackwardData.slot(Mode::Int16);
            let shift = requant_shift(n, Mode::Int16, self.layers[li].state.out_bits[slot]);
            let scales = vec![pow2(edy + ew); k];
            // The history needs the largest |code|: the kernels note it; when the dequantized
            // values do not show it exactly, `run_scaled` scans them, and so does this, piece by
            // piece (a maximum of maxima, and rounding is monotonic).
            let track = !self.history_frozen;
            let scan = track && !exact_dequant(&scales, shift);
            let scanned = AtomicU32::new(0);
            let noting = |r0: usize, rows: &[f32], d: &mut [f32]| {
                if scan {
                    scanned.fetch_max(max_code(rows, &scales, shift), Ordering::Relaxed);
                }
                scatter(r0, rows, d)
            };
            // B = wᵀ, [N, K]: a transposed view of the row-major [K, N] codes.
            let code = self.accel.gemm_requant_scatter(
                CodeMatrix::row_major(&qa, m, n)?,
                CodeMatrix::row_major(&qw, k, n)?.t(),
                Mode::Int16,
                shift,
                &scales,
                ms,
                group_rows,
                dst,
                &noting,
            )?;
            if track {
                let code = if scan { scanned.into_inner() } else { code };
                let bits = &mut self.layers[li].state.out_bits[slot];
                *bits = next_out_bits(*bits, code, shift);
            }
            Ok(())
        })();
        self.qa = qa;
        self.qb = qw;
        r
    }

    fn conv_forward_impl(
        &mut self,
        layer: &str,
        x: &[f32],
        g: Im2colGeom,
        w: ArrayView2<'_, f32>,
        y: ArrayViewMut2<'_, f32>,
    ) -> Result<ConvCodes, AccelError> {
        self.drop_grad_cache();
        let (m, k) = conv_matrix("conv_forward", x.len(), &g, w.dim(), y.dim())?;
        check_shapes(
            "conv_forward",
            (m, k),
            w.dim(),
            y.dim(),
            (k, w.nrows()),
            (m, w.ncols()),
        )?;
        let eight = self.cfg.forward_mode == Mode::Int8;
        let max = covered_max_abs(x, &g);
        let ex = if eight {
            choose_exp_8bit(max)
        } else {
            choose_exp(max)
        };
        let mut xq = Vec::new();
        quantize_with(x, ex, &mut xq, eight);
        self.with_patches(&xq, &g, |me, codes| {
            me.forward_codes(layer, CodeMatrix::row_major(codes, m, k)?, ex, w, y)
        })?;
        Ok(ConvCodes {
            codes: xq,
            geom: g,
            max_abs: max,
            exp: ex,
            eight,
        })
    }

    fn conv_backward_weight_impl(
        &mut self,
        layer: &str,
        x: &[f32],
        g: Im2colGeom,
        cached: Option<ConvCodes>,
        dy: ArrayView2<'_, f32>,
        dw: ArrayViewMut2<'_, f32>,
    ) -> Result<(), AccelError> {
        self.drop_grad_cache();
        // Shapes first: a mismatch must not cost a quantization of the input.
        conv_backward_weight_shapes(x.len(), &g, dy, &dw)?;
        let cached = cached.filter(|c| c.geom == g && c.codes.len() == x.len());
        let (xq, ex) = match cached {
            Some(c) if !c.eight => (c.codes, c.exp),
            other => {
                let max = other.map_or_else(|| covered_max_abs(x, &g), |c| c.max_abs);
                let ex = choose_exp(max);
                let mut xq = Vec::new();
                quantize_with(x, ex, &mut xq, false);
                (xq, ex)
            }
        };
        self.backward_weight_from_input_codes(layer, &xq, ex, g, dy, dw)
    }

    /// Weight gradient from the INT16 per-tensor codes `xq` (exponent `ex`) of the conv input.
    fn backward_weight_from_input_codes(
        &mut self,
        layer: &str,
        xq: &[i16],
        ex: i32,
        g: Im2colGeom,
        dy: ArrayView2<'_, f32>,
        dw: ArrayViewMut2<'_, f32>,
    ) -> Result<(), AccelError> {
        let (m, k) = conv_backward_weight_shapes(xq.len(), &g, dy, &dw)?;
        self.with_patches(xq, &g, |me, codes| {
            me.backward_weight_codes(layer, CodeMatrix::row_major(codes, m, k)?, ex, dy, dw)
        })
    }

    /// Runs `f` on the im2col code matrix of the input codes `xq` (the codes themselves for a 1x1,
    /// stride-1 convolution), built in a buffer reused across calls.
    fn with_patches<R>(
        &mut self,
        xq: &[i16],
        g: &Im2colGeom,
        f: impl FnOnce(&mut Self, &[i16]) -> Result<R, AccelError>,
    ) -> Result<R, AccelError> {
        if g.is_identity() {
            return f(self, xq);
        }
        let mut cols = std::mem::take(&mut self.patches);
        im2col_codes(xq, g, &mut cols);
        let r = f(self, &cols);
        self.patches = cols;
        r
    }

    /// Forward from the codes of `x` (per tensor, exponent `ex`, in the configured mode's format);
    /// shapes already checked.
    fn forward_codes(
        &mut self,
        layer: &str,
        xq: CodeMatrix<'_>,
        ex: i32,
        w: ArrayView2<'_, f32>,
        mut y: ArrayViewMut2<'_, f32>,
    ) -> Result<(), AccelError> {
        let k = xq.cols();
        let n = w.ncols();
        let ws = contiguous(&w);
        let eight = self.cfg.forward_mode == Mode::Int8;
        let (qw, ew) = quantize_weight_columns(&ws, k, n, eight)?;
        let unit = if eight { 16 } else { 0 };
        let scales: Vec<f64> = ew.iter().map(|&e| pow2(ex + e + unit)).collect();
        self.run_scaled(
            xq,
            CodeMatrix::row_major(&qw, k, n)?,
            self.cfg.forward_mode,
            &scales,
            &mut y,
            Some((layer, OutKind::Forward)),
        )
    }

    /// GEMM (split to the command limits when needed) dequantized into `y` with one scale per
    /// column; fused in the backend when it is one command into a contiguous output. With
    /// `requant = Some((layer, kind))` and [`AccelGemmConfig::requant_outputs`], the commands return
    /// requantized outputs with the layer's shift (module doc); a GEMM that needs K pieces summed
    /// on the host, or a strided `y`, stays raw.
    fn run_scaled(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        scales: &[f64],
        y: &mut ArrayViewMut2<'_, f32>,
        requant: Option<(&str, OutKind)>,
    ) -> Result<(), AccelError> {
        let (m, k, n) = (a.rows(), a.cols(), b.cols());
        let (ms, ns) = self.split_limits();
        if m > 0 && n > 0 && k > 0 && n <= ns && k <= DIM_K_MAX && y.is_standard_layout() {
            let rq = requant
                .filter(|_| self.cfg.requant_outputs)
                .map(|(layer, kind)| {
                    let li = self.layer_index(layer);
                    let prev = self.layers[li].state.out_bits[kind.slot(mode)];
                    (li, kind.slot(mode), requant_shift(k, mode, prev))
                });
            let ys = y.as_slice_mut().expect("standard layout");
            let reuse_k = ReuseGeom::BOARD.k_max(mode) as usize;
            let split = rq.is_none() && self.cfg.split_long_k && k > reuse_k;
            // The largest |code| of a requantized output, as the backend notes it (`None` once
            // some command did not): it equals `max_code` of the output when every column's
            // dequantization is exact (`exact_dequant`), else `max_code` decides.
            let want_max = rq.is_some() && !self.history_frozen;
            let mut noted = Some(0u32);
            // Row blocks are independent commands (as `run_raw` splits them) whose outputs are
            // contiguous rows of `y`.
            for r0 in (0..m).step_by(ms) {
                let r1 = (r0 + ms).min(m);
                let (a, out) = (a.sub(r0, r1, 0, k), &mut ys[r0 * n..r1 * n]);
                if split {
                    noted = None;
                    self.accel
                        .gemm_scaled_split_k(a, b, mode, reuse_k, scales, out)?;
                } else if let (true, Some((_, _, shift))) = (want_max, rq) {
                    let got = self
                        .accel
                        .gemm_scaled_code_max(a, b, mode, shift, scales, out)?;
                    noted = noted.zip(got).map(|(x, y)| x.max(y));
                } else {
                    noted = None;
                    let shift = rq.map(|(_, _, s)| s);
                    self.accel.gemm_scaled(a, b, mode, shift, scales, out)?;
                }
            }
            if let Some((li, slot, shift)) = rq.filter(|_| !self.history_frozen) {
                let code = match noted {
                    Some(c) if exact_dequant(scales, shift) => c,
                    _ => max_code(ys, scales, shift),
                };
                let bits = &mut self.layers[li].state.out_bits[slot];
                *bits = next_out_bits(*bits, code, shift);
            }
            return Ok(());
        }
        let mut acc = std::mem::take(&mut self.acc);
        acc.resize(m * n, 0);
        let r = self.run_raw(a, b, mode, &mut acc);
        if r.is_ok() {
            write_scaled(y, &acc, scales);
        }
        self.acc = acc;
        r
    }

    fn backward_data_impl(
        &mut self,
        layer: &str,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        mut dx: ArrayViewMut2<'_, f32>,
    ) -> Result<(), AccelError> {
        check_shapes(
            "backward_data",
            dy.dim(),
            w.dim(),
            dx.dim(),
            (dy.ncols(), w.ncols()),
            (dy.nrows(), w.nrows()),
        )?;
        let (m, n) = dy.dim();
        let k = w.nrows();
        let dys = contiguous(&dy);
        let ws = contiguous(&w);
        let mut qa = std::mem::take(&mut self.qa);
        let edy = self.grad_codes(layer, &dys, &mut qa);
        let mut qw = std::mem::take(&mut self.qb);
        let ew = quantize_par(&ws, &mut qw, false);
        // B = wᵀ, [N, K]: a transposed view of the row-major [K, N] codes.
        let r = (|| {
            self.run_scaled(
                CodeMatrix::row_major(&qa, m, n)?,
                CodeMatrix::row_major(&qw, k, n)?.t(),
                Mode::Int16,
                &vec![pow2(edy + ew); k],
                &mut dx,
                Some((layer, OutKind::BackwardData)),
            )
        })();
        self.qa = qa;
        self.qb = qw;
        r
    }

    fn backward_weight_impl(
        &mut self,
        layer: &str,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        dw: ArrayViewMut2<'_, f32>,
    ) -> Result<(), AccelError> {
        self.drop_grad_cache();
        check_shapes(
            "backward_weight",
            x.dim(),
            dy.dim(),
            dw.dim(),
            (x.nrows(), dy.nrows()),
            (x.ncols(), dy.ncols()),
        )?;
        let (m, k) = x.dim();
        let xs = contiguous(&x);
        let mut qa = std::mem::take(&mut self.qa);
        let ex = quantize_par(&xs, &mut qa, false);
        let r = CodeMatrix::row_major(&qa, m, k)
            .and_then(|xq| self.backward_weight_codes(layer, xq, ex, dy, dw));
        self.qa = qa;
        r
    }

    /// The weight gradient from the codes of `x` (`[M, K]`, per tensor, exponent `ex`); shapes
    /// already checked.
    fn backward_weight_codes(
        &mut self,
        layer: &str,
        xq: CodeMatrix<'_>,
        ex: i32,
        dy: ArrayView2<'_, f32>,
        mut dw: ArrayViewMut2<'_, f32>,
    ) -> Result<(), AccelError> {
        let (m, k) = (xq.rows(), xq.cols());
        let n = dy.ncols();
        let dys = contiguous(&dy);
        self.drop_grad_cache();
        let mut qb = std::mem::take(&mut self.qb);
        let edy = self.quantize_grad(layer, &dys, &mut qb);
        // A = xᵀ, [K, M]; B = dy, [M, N].
        let r = (|| {
            let a = xq.t();
            let b = CodeMatrix::row_major(&qb, m, n)?;
            match self.cfg.backward_weight {
                BackwardWeight::Int16 => {
                    self.run_scaled(a, b, Mode::Int16, &vec![pow2(ex + edy); n], &mut dw, None)
                }
                BackwardWeight::Psg {
                    threshold,
                    pred,
                    fallback,
                } => {
                    let unit_exp = ex + edy + 16;
                    let li = self.layer_index(layer);
                    let hw = hw_threshold(threshold, unit_exp, self.layers[li].state.prev_max_p);
                    let mut signs = std::mem::take(&mut self.signs);
                    signs.resize(k * n, 0);
                    let r = self.run_psg(a, b, hw, pred, fallback, &mut signs);
                    if let Ok(rep) = &r {
                        let e = &mut self.layers[li];
                        e.state.prev_max_p = Some((rep.max_abs_p, unit_exp));
                        e.stats.predicted += rep.counts.predicted;
                        e.stats.uncertain += rep.counts.uncertain;
                        e.stats.tiles += rep.counts.tiles;
                        e.stats.recomputed_tiles += rep.counts.recomputed_tiles;
                        Zip::from(&mut dw)
                            .and(ndarray::ArrayView2::from_shape((k, n), &signs[..]).map_err(
                                |_| AccelError::Output {
                                    got: signs.len(),
                                    expected: k * n,
                                },
                            )?)
                            .for_each(|d, &s| *d = s as f32);
                    }
                    self.signs = signs;
                    r.map(|_| ())
                }
            }
        })();
        if self.share_grad {
            self.grad_cache = Some(GradCache {
                layer: layer.to_string(),
                step: self.step,
                rounding: self.cfg.grad_rounding,
                ptr: dys.as_ptr() as usize,
                len: dys.len(),
                exp: edy,
                codes: qb,
            });
            self.qb = std::mem::take(&mut self.spare);
        } else {
            self.qb = qb;
        }
        r
    }

    /// Raw GEMM split into commands within the hardware limits.
    fn run_raw(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        out: &mut [i64],
    ) -> Result<(), AccelError> {
        let (m, k, n) = (a.rows(), a.cols(), b.cols());
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            out.fill(0);
            return Ok(());
        }
        let (ms, ns) = self.split_limits();
        if m <= ms && n <= ns && k <= DIM_K_MAX {
            return self.accel.gemm(a, b, mode, GemmOut::Raw(out));
        }
        out.fill(0);
        let mut tmp = Vec::new();
        for r0 in (0..m).step_by(ms) {
            let r1 = (r0 + ms).min(m);
            for c0 in (0..n).step_by(ns) {
                let c1 = (c0 + ns).min(n);
                for k0 in (0..k).step_by(DIM_K_MAX) {
                    let k1 = (k0 + DIM_K_MAX).min(k);
                    tmp.resize((r1 - r0) * (c1 - c0), 0);
                    self.accel.gemm(
                        a.sub(r0, r1, k0, k1),
                        b.sub(k0, k1, c0, c1),
                        mode,
                        GemmOut::Raw(&mut tmp),
                    )?;
                    for (i, row) in tmp.chunks_exact(c1 - c0).enumerate() {
                        for (o, &v) in out[(r0 + i) * n + c0..][..c1 - c0].iter_mut().zip(row) {
                            *o = o.wrapping_add(v);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// PSG split over output blocks within the limits (K cannot be split: signs need whole sums).
    fn run_psg(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        thr: HwThreshold,
        pred: PredRounding,
        fallback: PsgFallback,
        signs: &mut [i8],
    ) -> Result<PsgReport, AccelError> {
        let (m, k, n) = (a.rows(), a.cols(), b.cols());
        if m == 0 || n == 0 || k == 0 {
            signs.fill(0);
            return Ok(PsgReport {
                threshold: thr.effective()?,
                ..Default::default()
            });
        }
        let (ms, ns) = self.split_limits();
        // Long K: the host runs PSG over reuse-path pieces (module doc). `OP_PSG` always
        // recomputes uncertain tiles, so PSG without recompute is host-side at any K.
        let zero = fallback == PsgFallback::Zero;
        let pieces = (zero
            || (self.cfg.split_long_k && k > ReuseGeom::BOARD.k_max(Mode::Int8) as usize))
            .then(|| {
                (
                    ReuseGeom::BOARD.k_max(Mode::Int8) as usize,
                    ReuseGeom::BOARD.k_max(Mode::Int16) as usize,
                )
            });
        let psg = |accel: &mut A, a, b, signs: &mut [i8]| match pieces {
            Some(kp) => accel.psg_split_k(a, b, thr, pred, kp, fallback, signs),
            None => accel.psg(a, b, thr, pred, signs),
        };
        if m <= ms && n <= ns {
            return psg(&mut self.accel, a, b, signs);
        }
        let mut total = PsgReport::default();
        let mut tmp = Vec::new();
        for r0 in (0..m).step_by(ms) {
            let r1 = (r0 + ms).min(m);
            for c0 in (0..n).step_by(ns) {
                let c1 = (c0 + ns).min(n);
                tmp.resize((r1 - r0) * (c1 - c0), 0);
                let rep = psg(
                    &mut self.accel,
                    a.sub(r0, r1, 0, k),
                    b.sub(0, k, c0, c1),
                    &mut tmp,
                )?;
                for (i, row) in tmp.chunks_exact(c1 - c0).enumerate() {
                    signs[(r0 + i) * n + c0..][..c1 - c0].copy_from_slice(row);
                }
                total.counts.predicted += rep.counts.predicted;
                total.counts.uncertain += rep.counts.uncertain;
                total.counts.tiles += rep.counts.tiles;
                total.counts.recomputed_tiles += rep.counts.recomputed_tiles;
                total.max_abs_p = total.max_abs_p.max(rep.max_abs_p);
                total.threshold = rep.threshold;
            }
        }
        Ok(total)
    }

    /// Largest M and N per command: multiples of the array sides, so splitting leaves the tiling
    /// (and so the counts) as in one big command.
    fn split_limits(&self) -> (usize, usize) {
        let s = self.accel.array_shape();
        (
            (DIM_MN_MAX / s.rows.max(1)) * s.rows.max(1),
            (DIM_MN_MAX / s.cols.max(1)) * s.cols.max(1),
        )
    }
}

impl AccelGemm<crate::SoftAccel> {
    /// An engine on a soft accelerator of `array = (rows, cols)` (as in `EngineConfig::array`).
    pub fn soft(array: (u32, u32), cfg: AccelGemmConfig) -> Result<Self, AccelError> {
        Ok(Self::new(
            crate::SoftAccel::new(array.0 as usize, array.1 as usize)?,
            cfg,
        ))
    }
}

impl<A: Accelerator> GemmEngine for AccelGemm<A> {
    fn forward(
        &mut self,
        _layer: LayerId<'_>,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        mut y: ArrayViewMut2<'_, f32>,
    ) {
        if let Err(e) = self.forward_impl(x, w, y.view_mut()) {
            y.fill(0.0);
            self.record(e);
        }
    }

    fn backward_data(
        &mut self,
        layer: LayerId<'_>,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        mut dx: ArrayViewMut2<'_, f32>,
    ) {
        if let Err(e) = self.backward_data_impl(layer, dy, w, dx.view_mut()) {
            dx.fill(0.0);
            self.record(e);
        }
    }

    fn backward_weight(
        &mut self,
        layer: LayerId<'_>,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        mut dw: ArrayViewMut2<'_, f32>,
    ) {
        if let Err(e) = self.backward_weight_impl(layer, x, dy, dw.view_mut()) {
            dw.fill(0.0);
            self.record(e);
        }
    }
}

/// Operand and output shapes of one `GemmEngine` call: the contracted sides must agree and the
/// output must have the expected shape (otherwise nothing is computed).
fn check_shapes(
    op: &'static str,
    lhs: (usize, usize),
    rhs: (usize, usize),
    out: (usize, usize),
    inner: (usize, usize),
    expected_out: (usize, usize),
) -> Result<(), AccelError> {
    if inner.0 != inner.1 || out != expected_out {
        return Err(AccelError::LayerShapes { op, lhs, rhs, out });
    }
    Ok(())
}

/// Weights `[k, n]` quantized per output column (16-bit codes or 8-bit tensors).
fn quantize_weight_columns(
    ws: &[f32],
    k: usize,
    n: usize,
    eight: bool,
) -> Result<(Vec<i16>, Vec<i32>), AccelError> {
    if eight {
        quantize_columns_8bit(ws, k, n)
    } else {
        quantize_columns(ws, k, n)
    }
    .ok_or(AccelError::View {
        rows: k,
        cols: n,
        row_stride: n,
        col_stride: 1,
        len: ws.len(),
    })
}

/// Patch-matrix shape `(m, k)` of a conv weight gradient over an input of `len` values, checked
/// against `dy` and `dw`.
fn conv_backward_weight_shapes(
    len: usize,
    g: &Im2colGeom,
    dy: ArrayView2<'_, f32>,
    dw: &ArrayViewMut2<'_, f32>,
) -> Result<(usize, usize), AccelError> {
    let (m, k) = conv_matrix("backward_weight", len, g, dy.dim(), dw.dim())?;
    check_shapes(
        "backward_weight",
        (m, k),
        dy.dim(),
        dw.dim(),
        (m, dy.nrows()),
        (k, dy.ncols()),
    )?;
    Ok((m, k))
}

/// The im2col matrix shape of a convolution call, after checking the input length and geometry.
fn conv_matrix(
    op: &'static str,
    x_len: usize,
    g: &Im2colGeom,
    rhs: (usize, usize),
    out: (usize, usize),
) -> Result<(usize, usize), AccelError> {
    match g.matrix() {
        Some(mk) if x_len == g.input_len() => Ok(mk),
        _ => Err(AccelError::LayerShapes {
            op,
            lhs: (g.n * g.h * g.w, g.c),
            rhs,
            out,
        }),
    }
}

/// The block's threshold for this step (see the module doc).
fn hw_threshold(rule: PsgThreshold, unit_exp: i32, prev: Option<(u64, i32)>) -> HwThreshold {
    match rule {
        PsgThreshold::Absolute(t) => HwThreshold::Absolute(absolute_units(t, unit_exp)),
        PsgThreshold::Adaptive(c) => match prev {
            Some((max_p, prev_exp)) => HwThreshold::Adaptive {
                c_q16: c_q16(c),
                reference: rescale(max_p, prev_exp - unit_exp),
            },
            None => HwThreshold::Absolute(THR_MAX),
        },
    }
}

/// `ceil(t / 2^unit_exp)` clamped to the CSR; non-positive or NaN thresholds give 0.
pub(crate) fn absolute_units(t: f32, unit_exp: i32) -> u64 {
    let v = t as f64 * pow2(-unit_exp);
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= THR_MAX as f64 {
        THR_MAX
    } else {
        v.ceil() as u64
    }
}

/// `c` in Q0.16, rounded to nearest, clamped to `0..=65535`.
pub(crate) fn c_q16(c: f32) -> u16 {
    let v = (c as f64 * 65536.0).round();
    if v.is_nan() || v <= 0.0 {
        0
    } else {
        v.min(65535.0) as u16
    }
}

/// `max_p * 2^d` (floor), clamped to the CSR.
pub(crate) fn rescale(max_p: u64, d: i32) -> u64 {
    if max_p == 0 {
        0
    } else if d >= 0 {
        if d >= 48 {
            THR_MAX
        } else {
            ((max_p as u128) << d).min(THR_MAX as u128) as u64
        }
    } else if d <= -64 {
        0
    } else {
        (max_p >> (-d)).min(THR_MAX)
    }
}

fn pow2(e: i32) -> f64 {
    f64::powi(2.0, e)
}

fn contiguous<'a>(v: &'a ArrayView2<'_, f32>) -> Cow<'a, [f32]> {
    match v.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(v.iter().copied().collect()),
    }
}

fn max_abs_par(xs: &[f32]) -> f32 {
    xs.par_chunks(QCHUNK)
        .map(max_abs_finite)
        .reduce(|| 0.0, f32::max)
}

/// Per-tensor quantization in parallel (identical to `e2t_numerics::quantize_tensor`/`_8bit`).
fn quantize_par(xs: &[f32], out: &mut Vec<i16>, eight: bool) -> i32 {
    let max = max_abs_par(xs);
    let e = if eight {
        choose_exp_8bit(max)
    } else {
        choose_exp(max)
    };
    quantize_with(xs, e, out, eight);
    e
}

/// Quantize with a known exponent, in parallel.
fn quantize_with(xs: &[f32], e: i32, out: &mut Vec<i16>, eight: bool) {
    out.resize(xs.len(), 0);
    out.par_chunks_mut(QCHUNK)
        .zip(xs.par_chunks(QCHUNK))
        .for_each(|(o, x)| {
            if eight {
                quantize_into_8bit(x, e, o)
            } else {
                quantize_into(x, e, o)
            }
        });
}

/// The largest |code| of a requantized output `y` (row-major, `scales.len()` columns) that was
/// dequantized as `code * 2^shift * scales[j]` (exact: the scales are powers of two).
fn max_code(y: &[f32], scales: &[f64], shift: u32) -> u32 {
    let n = scales.len().max(1);
    let inv: Vec<f64> = scales
        .iter()
        .map(|&s| 1.0 / (s * crate::pow2_f64(shift)))
        .collect();
    // max over entries of |y·inv_j| = max over columns of (max |y| of the column)·|inv_j|: a
    // multiply by a fixed factor rounds monotonically, so the largest |y| of a column gives its
    // largest product, and max ignores NaN in any order (`a > m` is false for NaN, as f64::max
    // keeps the other value). So the per-entry f64 work becomes an f32 max per column.
    let colmax = y.par_chunks(n * 1024).map(|c| col_max_abs(c, n)).reduce(
        || vec![0f32; n],
        |mut a, b| {
            for (a, b) in a.iter_mut().zip(b) {
                if b > *a {
                    *a = b;
                }
            }
            a
        },
    );
    colmax
        .iter()
        .zip(&inv)
        .fold(0f64, |m, (&c, &i)| m.max(f64::from(c) * i.abs()))
        .round() as u32
}

/// True when every code `|c| <= 32768` of a column dequantized as `(c · 2^shift · scales[j]) as
/// f32` is exact (a power-of-two factor whose products stay normal and finite in f32): then
/// [`max_code`] of the output is exactly the largest |code|.
fn exact_dequant(scales: &[f64], shift: u32) -> bool {
    let up = crate::pow2_f64(shift);
    scales.iter().all(|&s| {
        let f = s * up;
        f.is_finite()
            && f.to_bits() & ((1u64 << 52) - 1) == 0
            && f >= f64::from(f32::MIN_POSITIVE)
            && f * 32768.0 <= f64::from(f32::MAX)
    })
}

/// max |v| per column of the row-major `c` (`n` columns; trailing partial rows ignored). NaN never
/// wins: `if a > m { a } else { m }` keeps `m`, which is exactly `maxps(a, m)`.
fn col_max_abs(c: &[f32], n: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { col_max_abs_avx2(c, n) };
    }
    col_max_abs_body(c, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn col_max_abs_avx2(c: &[f32], n: usize) -> Vec<f32> {
    use std::arch::x86_64::*;
    if matches!(n, 8 | 16 | 32 | 64) {
        return col_max_abs_body(c, n);
    }
    // Other widths (the 9·C columns of a backward-data output): explicit `maxps(a, m)` per 8
    // columns (the compiler turns the select into masked stores here), the tail as in the body.
    let n8 = n / 8 * 8;
    let mut m = vec![0f32; n];
    let sign = _mm256_set1_ps(-0.0);
    for row in c.chunks_exact(n) {
        for (mc, rc) in m[..n8].chunks_exact_mut(8).zip(row[..n8].chunks_exact(8)) {
            // SAFETY: both chunks hold exactly 8 floats (unaligned loads and store).
            unsafe {
                let a = _mm256_andnot_ps(sign, _mm256_loadu_ps(rc.as_ptr()));
                let v = _mm256_max_ps(a, _mm256_loadu_ps(mc.as_ptr()));
                _mm256_storeu_ps(mc.as_mut_ptr(), v);
            }
        }
        for (m, &v) in m[n8..].iter_mut().zip(&row[n8..]) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    m
}

/// Common widths get register-resident accumulators: with `n` unknown the vectorized inner loop
/// (unrolled past 16 lanes) would never run for the usual 16 to 64 channels.
#[inline(always)]
fn col_max_abs_body(c: &[f32], n: usize) -> Vec<f32> {
    match n {
        8 => col_max_abs_fixed::<8>(c).to_vec(),
        16 => col_max_abs_fixed::<16>(c).to_vec(),
        32 => col_max_abs_fixed::<32>(c).to_vec(),
        64 => col_max_abs_fixed::<64>(c).to_vec(),
        _ => {
            let mut m = vec![0f32; n];
            fold_col_max_abs(&mut m, c);
            m
        }
    }
}

#[inline(always)]
fn col_max_abs_fixed<const N: usize>(c: &[f32]) -> [f32; N] {
    let mut m = [0f32; N];
    fold_col_max_abs(&mut m, c);
    m
}

/// `m[j] = max(m[j], |c[i, j]|)` over the rows of `c` (`m.len()` columns); inlined so a fixed-size
/// `m` keeps its accumulators in registers.
#[inline(always)]
fn fold_col_max_abs(m: &mut [f32], c: &[f32]) {
    for row in c.chunks_exact(m.len()) {
        for (m, &v) in m.iter_mut().zip(row) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
}

/// `y[i,j] = acc[i*n + j] * scale[j]` (row-major `acc`), in parallel.
fn write_scaled(y: &mut ArrayViewMut2<'_, f32>, acc: &[i64], scale: &[f64]) {
    let n = scale.len();
    match y.as_slice_mut() {
        Some(ys) if n > 0 => ys
            .par_chunks_mut(n * 1024)
            .zip(acc.par_chunks(n * 1024))
            .for_each(|(yc, ac)| dequantize_rows(yc, ac, scale)),
        _ => {
            Zip::indexed(y).par_for_each(|(i, j), v| *v = (acc[i * n + j] as f64 * scale[j]) as f32)
        }
    }
}

fn dequantize_rows(y: &mut [f32], acc: &[i64], scale: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { dequantize_rows_avx2(y, acc, scale) };
    }
    dequantize_rows_body(y, acc, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dequantize_rows_avx2(y: &mut [f32], acc: &[i64], scale: &[f64]) {
    dequantize_rows_body(y, acc, scale)
}

/// 1.5 * 2^52, for an exact i64 -> f64 conversion of |v| < 2^51 (48-bit accumulators are) that
/// vectorizes without AVX-512: `f64::from_bits(bits(MAGIC) + v) - MAGIC == v as f64`.
const MAGIC64: f64 = 6_755_399_441_055_744.0;

#[inline(always)]
fn dequantize_rows_body(y: &mut [f32], acc: &[i64], scale: &[f64]) {
    let base = MAGIC64.to_bits() as i64;
    for (yr, ar) in y
        .chunks_exact_mut(scale.len())
        .zip(acc.chunks_exact(scale.len()))
    {
        for ((v, &a), &s) in yr.iter_mut().zip(ar).zip(scale) {
            let af = if (-(1i64 << 51)..(1i64 << 51)).contains(&a) {
                f64::from_bits(base.wrapping_add(a) as u64) - MAGIC64
            } else {
                a as f64 // host-side sums of split commands may exceed 48 bits
            };
            *v = (af * s) as f32;
        }
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64 finalizer: spreads nearby integers (steps) over the seed space.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SoftAccel;
    use e2t_numerics::{
        dequantize, gemm_ref, psg_ref_with, quantize_columns, quantize_columns_8bit,
        quantize_tensor, quantize_tensor_8bit,
    };
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    fn rand_mat(rng: &mut ChaCha8Rng, r: usize, c: usize, scale: f32) -> Array2<f32> {
        Array2::from_shape_fn((r, c), |_| (rng.random::<f32>() - 0.5) * scale)
    }

    fn engine(cfg: AccelGemmConfig) -> AccelGemm<SoftAccel> {
        AccelGemm::soft((4, 4), cfg).unwrap()
    }

    /// Golden: quantize with the numerics crate, integer GEMM, dequantize.
    fn golden_forward(x: &Array2<f32>, w: &Array2<f32>, mode: Mode) -> Array2<f32> {
        let (m, k) = x.dim();
        let n = w.ncols();
        let xs = x.as_slice().unwrap();
        let ws = w.as_slice().unwrap();
        let ((qx, ex), (qw, ew)) = match mode {
            Mode::Int16 => (quantize_tensor(xs), quantize_columns(ws, k, n).unwrap()),
            Mode::Int8 => (
                quantize_tensor_8bit(xs),
                quantize_columns_8bit(ws, k, n).unwrap(),
            ),
        };
        let acc = gemm_ref(&qx, &qw, m, k, n, mode).unwrap();
        // value = code * 2^e and INT8 multiplies code >> 8: an INT8 accumulator unit is 2^(ex+ew+16).
        let unit = if mode == Mode::Int8 { 16 } else { 0 };
        Array2::from_shape_fn((m, n), |(i, j)| {
            (acc[i * n + j] as f64 * pow2(ex + ew[j] + unit)) as f32
        })
    }

    #[test]
    fn forward_is_bit_exact_and_close_to_fp32() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for mode in [Mode::Int16, Mode::Int8] {
            let x = rand_mat(&mut rng, 37, 19, 4.0);
            let mut w = rand_mat(&mut rng, 19, 6, 0.5);
            w.column_mut(2).mapv_inplace(|v| v * 1e-3); // a small column keeps its own scale
            let mut e = engine(AccelGemmConfig {
                forward_mode: mode,
                ..AccelGemmConfig::baseline()
            });
            let mut y = Array2::zeros((37, 6));
            e.forward("l", x.view(), w.view(), y.view_mut());
            assert!(e.take_error().is_none());
            assert_eq!(y, golden_forward(&x, &w, mode));
            let fp = x.dot(&w);
            let tol = if mode == Mode::Int16 { 1e-3 } else { 6e-2 };
            for j in 0..6 {
                let scale = fp.column(j).iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for i in 0..37 {
                    assert!(
                        (y[[i, j]] - fp[[i, j]]).abs() <= tol * scale,
                        "{mode:?} ({i},{j}): {} vs {}",
                        y[[i, j]],
                        fp[[i, j]]
                    );
                }
            }
            let c = e.counters();
            assert_eq!(c.gemms, 1);
            match mode {
                Mode::Int16 => assert_eq!(c.macs_int16, 37 * 19 * 6),
                Mode::Int8 => assert_eq!(c.macs_int8, 37 * 19 * 6),
            }
        }
    }

    /// Backward data handed over in groups equals the whole column gradient (values, counters,
    /// the layer's shift history, over three steps), with and without the weight gradient's
    /// shared `dy` codes, for stochastic rounding too; a `dy` in another buffer is quantized
    /// afresh.
    #[test]
    fn scattered_backward_data_and_shared_grad_codes_change_nothing() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0708);
        let (m, n, k) = (48, 6, 27);
        let x = rand_mat(&mut rng, m, k, 2.0);
        let w = rand_mat(&mut rng, k, n, 0.3);
        for rounding in [GradRounding::Nearest, GradRounding::Stochastic { seed: 5 }] {
            let cfg = AccelGemmConfig {
                grad_rounding: rounding,
                ..AccelGemmConfig::baseline()
            };
            let (mut plain, mut fused) = (engine(cfg), engine(cfg));
            fused.share_grad_codes(true);
            for step in 0..3 {
                let dy = rand_mat(&mut rng, m, n, 1e-2 * (step + 1) as f32);
                let mut want = Array2::zeros((m, k));
                let mut dw = Array2::zeros((k, n));
                plain.set_step(step);
                plain.backward_weight("l", x.view(), dy.view(), dw.view_mut());
                plain.backward_data("l", dy.view(), w.view(), want.view_mut());
                let mut dw2 = Array2::zeros((k, n));
                let mut got = vec![0f32; m * k];
                fused.set_step(step);
                fused.backward_weight("l", x.view(), dy.view(), dw2.view_mut());
                fused.backward_data_scatter("l", dy.view(), w.view(), 16, &mut got, &|f, r, d| {
                    d[f * k..f * k + r.len()].copy_from_slice(r)
                });
                assert_eq!(dw2, dw);
                assert_eq!(got, want.as_slice().unwrap(), "{rounding:?} step {step}");
                assert_eq!(fused.counters(), plain.counters());
                assert_eq!(fused.state(), plain.state());
                // The same values in another buffer: not the weight gradient's `dy`.
                let copy = dy.clone();
                let mut again = Array2::zeros((m, k));
                fused.backward_data("l", copy.view(), w.view(), again.view_mut());
                plain.backward_data("l", dy.view(), w.view(), want.view_mut());
                assert_eq!(again, want);
            }
        }
    }

    #[test]
    fn backward_data_uses_per_tensor_weights() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let dy = rand_mat(&mut rng, 23, 5, 1e-3);
        let w = rand_mat(&mut rng, 9, 5, 0.3);
        let mut e = engine(AccelGemmConfig {
            requant_outputs: false,
            ..AccelGemmConfig::baseline()
        });
        let mut dx = Array2::zeros((23, 9));
        // A non-contiguous input view: a transposed copy viewed back.
        let dyt = dy.t().to_owned();
        e.backward_data("l", dyt.t(), w.view(), dx.view_mut());
        let (qd, ed) = quantize_tensor(dy.as_slice().unwrap());
        let (qw, ew) = quantize_tensor(w.as_slice().unwrap());
        let wt: Vec<i16> = (0..5)
            .flat_map(|j| (0..9).map(move |i| (i, j)))
            .map(|(i, j)| qw[i * 5 + j])
            .collect();
        let acc = gemm_ref(&qd, &wt, 23, 5, 9, Mode::Int16).unwrap();
        let want = Array2::from_shape_fn((23, 9), |(i, j)| {
            (acc[i * 9 + j] as f64 * pow2(ed + ew)) as f32
        });
        assert_eq!(dx, want);
        let fp = dy.dot(&w.t());
        let max = fp.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            dx.iter()
                .zip(fp.iter())
                .all(|(a, b)| (a - b).abs() <= 1e-3 * max)
        );
    }

    #[test]
    fn backward_weight_int16_and_psg_match_golden() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let x = rand_mat(&mut rng, 50, 7, 2.0).mapv(|v| v.max(0.0)); // post-ReLU activations
        let dy = rand_mat(&mut rng, 50, 6, 1e-2);
        let (qx, ex) = quantize_tensor(x.as_slice().unwrap());
        let (qd, ed) = quantize_tensor(dy.as_slice().unwrap());
        let xt: Vec<i16> = (0..7)
            .flat_map(|j| (0..50).map(move |i| (i, j)))
            .map(|(i, j)| qx[i * 7 + j])
            .collect();

        let mut e = engine(AccelGemmConfig::baseline());
        let mut dw = Array2::zeros((7, 6));
        e.backward_weight("l", x.view(), dy.view(), dw.view_mut());
        let acc = gemm_ref(&xt, &qd, 7, 50, 6, Mode::Int16).unwrap();
        assert_eq!(
            dw,
            Array2::from_shape_fn((7, 6), |(i, j)| (acc[i * 6 + j] as f64 * pow2(ex + ed))
                as f32)
        );

        // Absolute threshold in real units.
        let t = 2e-3f32;
        let mut e = engine(AccelGemmConfig::psg(PsgThreshold::Absolute(t)));
        e.backward_weight("l", x.view(), dy.view(), dw.view_mut());
        let thr = absolute_units(t, ex + ed + 16);
        let g = psg_ref_with(&xt, &qd, 7, 50, 6, thr, 4, 4, PredRounding::Nearest).unwrap();
        assert_eq!(dw.iter().map(|&v| v as i8).collect::<Vec<_>>(), g.signs);
        let s = e.take_psg_stats();
        assert_eq!(s.len(), 1);
        assert_eq!(
            (
                s[0].predicted,
                s[0].uncertain,
                s[0].tiles,
                s[0].recomputed_tiles
            ),
            (42, g.counts.uncertain, 4, g.counts.recomputed_tiles)
        );
        assert!(e.take_psg_stats().is_empty(), "take resets");
        // Certain entries (|P| * unit >= t) and exact signs agree with the fp32 gradient's sign
        // wherever the fp32 magnitude is clearly above the quantization error.
        let fp = x.t().dot(&dy);
        for (s, f) in dw.iter().zip(fp.iter()) {
            if f.abs() > 0.05 * fp.iter().fold(0.0f32, |m, v| m.max(v.abs())) {
                assert_eq!(*s, f.signum());
            }
        }
    }

    #[test]
    fn adaptive_threshold_first_step_recomputes_then_uses_previous_max() {
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        let x = rand_mat(&mut rng, 40, 8, 2.0);
        let dy = rand_mat(&mut rng, 40, 8, 1e-2);
        let mut e = engine(AccelGemmConfig::psg(PsgThreshold::Adaptive(0.25)));
        let mut dw = Array2::zeros((8, 8));
        e.backward_weight("a", x.view(), dy.view(), dw.view_mut());
        let s1 = e.take_psg_stats();
        assert_eq!(
            (s1[0].uncertain, s1[0].recomputed_tiles),
            (64, 4),
            "first step: everything recomputed"
        );
        // Exact signs on the first step.
        let (qx, _) = quantize_tensor(x.as_slice().unwrap());
        let (qd, _) = quantize_tensor(dy.as_slice().unwrap());
        let xt: Vec<i16> = (0..8)
            .flat_map(|j| (0..40).map(move |i| (i, j)))
            .map(|(i, j)| qx[i * 8 + j])
            .collect();
        let exact = gemm_ref(&xt, &qd, 8, 40, 8, Mode::Int16).unwrap();
        assert!(dw.iter().zip(&exact).all(|(&s, &v)| s as i64 == v.signum()));
        let prev = e.state().layers[0].1.prev_max_p.unwrap();

        // Second step with the same data: threshold (c * max|P|) >> 16 of step one.
        e.backward_weight("a", x.view(), dy.view(), dw.view_mut());
        let thr = (c_q16(0.25) as u64 * prev.0) >> 16;
        let g = psg_ref_with(&xt, &qd, 8, 40, 8, thr, 4, 4, PredRounding::Nearest).unwrap();
        assert_eq!(dw.iter().map(|&v| v as i8).collect::<Vec<_>>(), g.signs);
        let s2 = e.take_psg_stats();
        assert_eq!(s2[0].uncertain, g.counts.uncertain);
        assert!(s2[0].uncertain < 64);

        // State round trip: a fresh engine restored continues identically.
        let st = e.state();
        let mut f = engine(AccelGemmConfig::psg(PsgThreshold::Adaptive(0.25)));
        f.restore_state(&st);
        let mut dw2 = Array2::zeros((8, 8));
        e.backward_weight("a", x.view(), dy.view(), dw.view_mut());
        f.backward_weight("a", x.view(), dy.view(), dw2.view_mut());
        assert_eq!(dw, dw2);
        assert_eq!(e.take_psg_stats(), f.take_psg_stats());
    }

    #[test]
    fn psg_fallback_zero_never_recomputes_and_leaves_uncertain_entries_at_zero() {
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        let x = rand_mat(&mut rng, 40, 8, 2.0);
        let dy = rand_mat(&mut rng, 40, 8, 1e-2);
        let mut e = engine(AccelGemmConfig::psg_with(
            PsgThreshold::Adaptive(0.25),
            PsgFallback::Zero,
        ));
        let mut dw = Array2::zeros((8, 8));
        // First step: no history, so every entry is uncertain and gets no update.
        e.backward_weight("a", x.view(), dy.view(), dw.view_mut());
        assert!(dw.iter().all(|&v| v == 0.0));
        assert_eq!(e.accel().live_counters().macs_int16, 0);
        let prev = e.state().layers[0].1.prev_max_p.unwrap();
        let before = e.accel().live_counters();
        e.backward_weight("a", x.view(), dy.view(), dw.view_mut());
        let d = e.accel().live_counters().delta_since(&before);
        assert_eq!(d.macs_int16, 0, "no INT16 recompute");
        assert_eq!(d.macs_int8, 40 * 8 * 8);
        let (qx, _) = quantize_tensor(x.as_slice().unwrap());
        let (qd, _) = quantize_tensor(dy.as_slice().unwrap());
        let xt: Vec<i16> = (0..8)
            .flat_map(|j| (0..40).map(move |i| (i, j)))
            .map(|(i, j)| qx[i * 8 + j])
            .collect();
        let thr = (c_q16(0.25) as u64 * prev.0) >> 16;
        // The prediction's signs with the uncertain ones zeroed.
        let pred = PredRounding::Nearest;
        let xp: Vec<i16> = xt.iter().map(|&v| pred.prediction_code(v)).collect();
        let dp: Vec<i16> = qd.iter().map(|&v| pred.prediction_code(v)).collect();
        let p = gemm_ref(&xp, &dp, 8, 40, 8, Mode::Int8).unwrap();
        let want = crate::soft::zeroed_uncertain_signs(&p, thr);
        assert_eq!(dw.iter().map(|&v| v as i8).collect::<Vec<_>>(), want);
        let s = e.take_psg_stats();
        assert_eq!(s[0].recomputed_tiles, 0);
        assert!(
            s[0].uncertain > 64 && s[0].uncertain < 128,
            "all of step 1, some of step 2"
        );
    }

    #[test]
    fn requant_shift_follows_the_bound_then_the_history() {
        // K = 144 (8 bits): the INT16 bound 144 * 2^30 has 38 bits, so shift 23 without history.
        assert_eq!(requant_shift(144, Mode::Int16, None), 23);
        assert_eq!(requant_shift(144, Mode::Int8, None), 7);
        // History of 30 bits: one bit of headroom, 15 bits kept below it.
        assert_eq!(requant_shift(144, Mode::Int16, Some(30)), 16);
        // Never above the bound's shift, never below 0.
        assert_eq!(requant_shift(144, Mode::Int16, Some(60)), 23);
        assert_eq!(requant_shift(1, Mode::Int16, Some(3)), 0);
        assert_eq!(next_out_bits(None, 20_000, 16), Some(15 + 16));
        assert_eq!(next_out_bits(Some(40), 1, 0), Some(1));
        // An all-zero output keeps the history (a dead layer says nothing about the scale).
        assert_eq!(next_out_bits(Some(31), 0, 16), Some(31));
        assert_eq!(next_out_bits(None, 0, 16), None);
        // A saturated output forgets it: the next command takes the bound's shift.
        assert_eq!(next_out_bits(Some(31), 32_767, 16), None);
        assert_eq!(requant_shift(144, Mode::Int16, None), 23);
    }

    #[test]
    fn requantized_conv_outputs_use_the_layer_shift_and_quarter_the_result_bytes() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let g = Im2colGeom {
            n: 2,
            h: 6,
            w: 5,
            c: 4,
            k: 3,
            stride: 1,
            pad: 1,
        };
        let (m, kk) = g.matrix().unwrap();
        let x: Vec<f32> = (0..g.input_len())
            .map(|_| rng.random::<f32>() - 0.5)
            .collect();
        let w = rand_mat(&mut rng, kk, 6, 0.3);
        let dy = rand_mat(&mut rng, m, 6, 1e-2);
        let raw_cfg = AccelGemmConfig {
            requant_outputs: false,
            ..AccelGemmConfig::baseline()
        };
        let (mut raw, mut rq) = (engine(raw_cfg), engine(AccelGemmConfig::baseline()));
        let mut y_raw = Array2::zeros((m, 6));
        raw.conv_forward("c", &x, g, w.view(), y_raw.view_mut());
        let ymax = y_raw.iter().fold(0f32, |a, v| a.max(v.abs()));
        let mut shifts = Vec::new();
        for step in 0..3 {
            let before = rq.counters();
            let prev = rq.state().layers.first().and_then(|(_, s)| s.out_bits[0]);
            let shift = requant_shift(kk, Mode::Int16, prev);
            shifts.push(shift);
            let mut y = Array2::zeros((m, 6));
            rq.conv_forward("c", &x, g, w.view(), y.view_mut());
            // Golden: the raw accumulators requantized with that shift, then dequantized.
            let mut cols = Vec::new();
            let (xq, ex) = quantize_tensor(&x);
            crate::conv::im2col_codes(&xq, &g, &mut cols);
            let (qw, ew) = quantize_columns(w.as_slice().unwrap(), kk, 6).unwrap();
            let acc = gemm_ref(&cols, &qw, m, kk, 6, Mode::Int16).unwrap();
            let want = Array2::from_shape_fn((m, 6), |(i, j)| {
                let q = e2t_numerics::requantize(acc[i * 6 + j], shift).unwrap();
                (f64::from(q) * pow2(ex + ew[j] + shift as i32)) as f32
            });
            assert_eq!(y, want, "step {step} shift {shift}");
            // 16-bit outputs with the history keep 14 bits or more below the maximum.
            let err = (&y - &y_raw).iter().fold(0f32, |a, v| a.max(v.abs()));
            if step > 0 {
                assert!(
                    err <= ymax * 2f32.powi(-13),
                    "step {step}: {err} vs max {ymax}"
                );
            }
            let d = rq.counters().bytes_out - before.bytes_out;
            use e2t_numerics::cycles;
            let c = cycles::gemm_counters(
                m as u64,
                kk as u64,
                6,
                Mode::Int16,
                cycles::OutFmt::Requant,
                cycles::ArrayShape { rows: 4, cols: 4 },
            )
            .unwrap();
            assert_eq!(d, c.bytes_out, "a requantized command's result bytes");
        }
        assert!(
            shifts[1] < shifts[0],
            "history tightens the bound's shift: {shifts:?}"
        );
        assert_eq!(shifts[1], shifts[2], "a steady layer keeps its shift");
        // Backward data keeps its own history; the checkpointed state carries both.
        let mut dx = Array2::zeros((m, kk));
        rq.backward_data("c", dy.view(), w.view(), dx.view_mut());
        let st = rq.state();
        let bits = st.layers[0].1.out_bits;
        assert!(bits[OutKind::Forward.slot(Mode::Int16)].is_some());
        assert!(bits[OutKind::BackwardData.slot(Mode::Int16)].is_some());
        assert!(bits[OutKind::Forward.slot(Mode::Int8)].is_none());
        let mut again = engine(AccelGemmConfig::baseline());
        again.restore_state(&st);
        assert_eq!(again.state(), st);
        // Evaluation passes use the shifts but leave them. A constant input against positive
        // weights sums without cancellation: a larger max|acc| than the random data's.
        let ones = vec![1.0f32; x.len()];
        let wpos = w.mapv(f32::abs);
        let mut y = Array2::zeros((m, 6));
        rq.freeze_history(true);
        rq.conv_forward("c", &ones, g, wpos.view(), y.view_mut());
        assert_eq!(rq.state(), st);
        rq.freeze_history(false);
        rq.conv_forward("c", &ones, g, wpos.view(), y.view_mut());
        assert_ne!(rq.state(), st, "training passes update the history");
        assert!(rq.take_error().is_none());
    }

    #[test]
    fn long_k_weight_gradients_go_as_reuse_path_pieces() {
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        let x = rand_mat(&mut rng, 2100, 3, 1.0);
        let dy = rand_mat(&mut rng, 2100, 2, 1e-2);
        let (qx, ex) = quantize_tensor(x.as_slice().unwrap());
        let (qd, ed) = quantize_tensor(dy.as_slice().unwrap());
        let xt: Vec<i16> = (0..3)
            .flat_map(|j| (0..2100).map(move |i| (i, j)))
            .map(|(i, j)| qx[i * 3 + j])
            .collect();
        let acc = gemm_ref(&xt, &qd, 3, 2100, 2, Mode::Int16).unwrap();
        let want = Array2::from_shape_fn((3, 2), |(i, j)| {
            (acc[i * 2 + j] as f64 * pow2(ex + ed)) as f32
        });
        let one = AccelGemmConfig {
            split_long_k: false,
            ..AccelGemmConfig::baseline()
        };
        let (mut split, mut single) = (engine(AccelGemmConfig::baseline()), engine(one));
        let (mut d1, mut d2) = (Array2::zeros((3, 2)), Array2::zeros((3, 2)));
        split.backward_weight("l", x.view(), dy.view(), d1.view_mut());
        single.backward_weight("l", x.view(), dy.view(), d2.view_mut());
        assert_eq!(d1, want);
        assert_eq!(d2, want);
        let (c1, c2) = (split.counters(), single.counters());
        // K = 2100 over pieces of 1024 (the board's reuse buffers, INT16): 3 commands.
        assert_eq!(c1.gemms, 3);
        assert_eq!(c2.gemms, 1);
        assert_eq!(c1.macs_int16, c2.macs_int16);
        let sh = e2t_numerics::cycles::ArrayShape { rows: 4, cols: 4 };
        let piece = |k| {
            e2t_numerics::cycles::gemm_counters(
                3,
                k,
                2,
                Mode::Int16,
                e2t_numerics::cycles::OutFmt::Raw48,
                sh,
            )
            .unwrap()
        };
        let mut sum = piece(1024);
        sum.accumulate(&piece(1024));
        sum.accumulate(&piece(52));
        assert_eq!(c1, sum);

        // PSG of the same long K: host-side over pieces, with the unit's prediction and counts.
        let psg = AccelGemmConfig::psg(PsgThreshold::Absolute(1e-4));
        let unit = AccelGemmConfig {
            split_long_k: false,
            ..psg
        };
        let (mut split, mut single) = (engine(psg), engine(unit));
        split.backward_weight("l", x.view(), dy.view(), d1.view_mut());
        single.backward_weight("l", x.view(), dy.view(), d2.view_mut());
        let (s1, s2) = (split.psg_stats(), single.psg_stats());
        assert_eq!(s1[0].predicted, s2[0].predicted);
        assert_eq!(s1[0].uncertain, s2[0].uncertain);
        let (c1, c2) = (split.counters(), single.counters());
        assert_eq!(c2.gemms, 1, "one OP_PSG command");
        assert!(c1.gemms >= 2, "INT8 pieces of at most 2048 terms: {c1:?}");
        assert_eq!(c1.macs_int8, c2.macs_int8);
        assert_eq!(c1.psg_uncertain, c2.psg_uncertain);
    }

    #[test]
    fn stochastic_rounding_is_reproducible_and_shared_by_both_backward_gemms() {
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        let x = rand_mat(&mut rng, 30, 4, 1.0);
        let dy = rand_mat(&mut rng, 30, 3, 1e-3);
        let w = rand_mat(&mut rng, 4, 3, 1.0);
        let cfg = AccelGemmConfig {
            grad_rounding: GradRounding::Stochastic { seed: 5 },
            requant_outputs: false,
            ..AccelGemmConfig::baseline()
        };
        let run = |step: u64| {
            let mut e = engine(cfg);
            e.set_step(step);
            let mut dx = Array2::zeros((30, 4));
            let mut dw = Array2::zeros((4, 3));
            e.backward_data("l", dy.view(), w.view(), dx.view_mut());
            e.backward_weight("l", x.view(), dy.view(), dw.view_mut());
            (dx, dw)
        };
        let (a, b) = (run(3), run(3));
        assert_eq!(a, b);
        assert_ne!(a.1, run(4).1, "another step draws other rounding");
        // Both GEMMs of one step used the same dy codes: recover them from dw with x = identity rows.
        let mut e = engine(cfg);
        e.set_step(9);
        let eye = Array2::from_shape_fn((30, 30), |(i, j)| if i == j { 1.0f32 } else { 0.0 });
        let mut dw = Array2::zeros((30, 3));
        e.backward_weight("l", eye.view(), dy.view(), dw.view_mut());
        let w_eye = Array2::from_shape_fn((3, 3), |(i, j)| if i == j { 1.0f32 } else { 0.0 });
        let mut dx = Array2::zeros((30, 3));
        e.backward_data("l", dy.view(), w_eye.view(), dx.view_mut());
        assert_eq!(dw, dx);
        let (qd, ed) = quantize_tensor(dy.as_slice().unwrap());
        let nearest = Array2::from_shape_fn((30, 3), |(i, j)| dequantize(qd[i * 3 + j], ed));
        assert_ne!(
            dx, nearest,
            "stochastic rounding differs from nearest somewhere"
        );
    }

    #[test]
    fn large_m_is_split_into_commands_with_identical_results() {
        let m = 70_001;
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        let x = rand_mat(&mut rng, m, 3, 1.0);
        let w = rand_mat(&mut rng, 3, 2, 1.0);
        let mut e = engine(AccelGemmConfig::baseline());
        let mut y = Array2::zeros((m, 2));
        e.forward("big", x.view(), w.view(), y.view_mut());
        assert!(e.take_error().is_none());
        assert_eq!(y, golden_forward(&x, &w, Mode::Int16));
        let c = e.counters();
        assert_eq!(c.gemms, 2);
        assert_eq!(c.macs_int16, (m * 3 * 2) as u64);
    }

    #[test]
    fn shape_errors_are_kept_and_zero_the_output() {
        let mut e = engine(AccelGemmConfig::baseline());
        let x = Array2::<f32>::ones((4, 3));
        let w = Array2::<f32>::ones((5, 2));
        let mut y = Array2::from_elem((4, 2), 7.0f32);
        e.forward("bad", x.view(), w.view(), y.view_mut());
        assert!(matches!(
            e.take_error(),
            Some(AccelError::LayerShapes { op: "forward", .. })
        ));
        let mut y_bad = Array2::from_elem((4, 3), 7.0f32);
        e.backward_data(
            "bad",
            y.view(),
            Array2::<f32>::ones((3, 2)).view(),
            y_bad.view_mut(),
        );
        assert!(
            e.take_error().is_none(),
            "dy [4,2] . w[3,2]^T -> dx [4,3] is fine"
        );
        e.backward_weight("bad", x.view(), y.view(), y_bad.view_mut());
        assert!(matches!(
            e.take_error(),
            Some(AccelError::LayerShapes {
                op: "backward_weight",
                ..
            })
        ));
        assert!(y.iter().all(|&v| v == 0.0));
        assert!(e.take_error().is_none());
        // Empty batch: nothing to do, no error, no command.
        let before = e.counters().gemms;
        let x0 = Array2::<f32>::zeros((0, 3));
        let w0 = Array2::<f32>::ones((3, 2));
        let mut y0 = Array2::zeros((0, 2));
        e.forward("empty", x0.view(), w0.view(), y0.view_mut());
        assert!(e.take_error().is_none());
        assert_eq!(e.counters().gemms, before);
    }

    #[test]
    fn conv_paths_equal_the_im2col_gemms_bit_for_bit() {
        use crate::conv::im2col_f32;
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        // Raw outputs: the plain (linear) forward path always returns raw accumulators.
        let cfgs = [
            AccelGemmConfig::baseline(),
            AccelGemmConfig::psg(PsgThreshold::Absolute(1e-3)),
            AccelGemmConfig::psg(PsgThreshold::Adaptive(0.05)),
        ]
        .map(|c| AccelGemmConfig {
            requant_outputs: false,
            ..c
        });
        for (case, (k, stride, pad)) in [(3, 1, 1), (3, 2, 1), (1, 2, 0), (1, 1, 0)]
            .into_iter()
            .enumerate()
        {
            let g = Im2colGeom {
                n: 3,
                h: 7,
                w: 6,
                c: 5,
                k,
                stride,
                pad,
            };
            let (m, kk) = g.matrix().unwrap();
            let cout = 6;
            let mut x: Vec<f32> = (0..g.input_len())
                .map(|_| (rng.random::<f32>() - 0.3) * 2.0)
                .collect();
            x[((g.h + 1) * g.w + 1) * g.c] = 50.0; // unread by strided 1x1 kernels
            let cols = Array2::from_shape_vec((m, kk), im2col_f32(&x, &g)).unwrap();
            let w = rand_mat(&mut rng, kk, cout, 0.5);
            let dy = rand_mat(&mut rng, m, cout, 1e-2);
            for cfg in cfgs {
                let (mut plain, mut conv) = (engine(cfg), engine(cfg));
                // As a layer that keeps only INT16 codes (not its fp32 input) would call it.
                let mut nox = engine(cfg);
                for step in 0..2 {
                    let mut y1 = Array2::zeros((m, cout));
                    let mut y2 = Array2::zeros((m, cout));
                    let mut y3 = Array2::zeros((m, cout));
                    plain.forward("c", cols.view(), w.view(), y1.view_mut());
                    let codes = conv.conv_forward("conv", &x, g, w.view(), y2.view_mut());
                    let codes3 = nox.conv_forward("conv", &x, g, w.view(), y3.view_mut());
                    assert_eq!(y1, y2, "case {case} {cfg:?} step {step}");
                    assert_eq!(y1, y3, "case {case} {cfg:?} step {step}");
                    let mut d1 = Array2::zeros((kk, cout));
                    let mut d2 = Array2::zeros((kk, cout));
                    let mut d3 = Array2::from_elem((kk, cout), 9.0);
                    plain.backward_weight("c", cols.view(), dy.view(), d1.view_mut());
                    conv.conv_backward_weight("c", &x, g, codes, dy.view(), d2.view_mut());
                    assert_eq!(d1, d2, "case {case} {cfg:?} step {step}");
                    match codes3 {
                        Some(c) if c.is_int16() => {
                            nox.conv_backward_weight_from_codes("c", c, dy.view(), d3.view_mut())
                        }
                        c => nox.conv_backward_weight("c", &x, g, c, dy.view(), d3.view_mut()),
                    }
                    assert_eq!(d1, d3, "case {case} {cfg:?} step {step} from codes");
                    // Without the forward's codes (or with codes of another shape) as well.
                    conv.conv_backward_weight("c2", &x, g, None, dy.view(), d2.view_mut());
                    nox.conv_backward_weight("c2", &x, g, None, dy.view(), d3.view_mut());
                    plain.backward_weight("c2", cols.view(), dy.view(), d1.view_mut());
                    assert_eq!(d1, d2);
                }
                assert!(plain.take_error().is_none() && conv.take_error().is_none());
                assert!(nox.take_error().is_none());
                assert_eq!(plain.counters(), conv.counters());
                assert_eq!(plain.counters(), nox.counters());
                let stats = conv.take_psg_stats();
                assert_eq!(plain.take_psg_stats(), stats);
                assert_eq!(nox.take_psg_stats(), stats);
            }
        }
        // A geometry that does not match the input is an error that zeroes the output.
        let mut e = engine(AccelGemmConfig::baseline());
        let g = Im2colGeom {
            n: 1,
            h: 4,
            w: 4,
            c: 2,
            k: 3,
            stride: 1,
            pad: 1,
        };
        let w = Array2::<f32>::ones((18, 2));
        let mut y = Array2::from_elem((16, 2), 3.0f32);
        assert!(
            e.conv_forward("c", &[1.0; 31], g, w.view(), y.view_mut())
                .is_none()
        );
        assert!(matches!(
            e.take_error(),
            Some(AccelError::LayerShapes {
                op: "conv_forward",
                ..
            })
        ));
        assert!(y.iter().all(|&v| v == 0.0));
        // 8-bit codes cannot replace the fp32 input of the INT16 weight gradient.
        let mut p = engine(AccelGemmConfig::psg(PsgThreshold::Absolute(1e-3)));
        let mut y8 = Array2::zeros((16, 2));
        let c8 = p
            .conv_forward("c", &[1.0; 32], g, w.view(), y8.view_mut())
            .unwrap();
        assert!(!c8.is_int16());
        let mut dw = Array2::from_elem((18, 2), 3.0f32);
        p.conv_backward_weight_from_codes("c", c8, Array2::ones((16, 2)).view(), dw.view_mut());
        assert!(matches!(
            p.take_error(),
            Some(AccelError::LayerShapes { .. })
        ));
        assert!(dw.iter().all(|&v| v == 0.0));
        let bad = Im2colGeom { k: 9, ..g };
        assert!(
            e.conv_forward("c", &[1.0; 32], bad, w.view(), y.view_mut())
                .is_none()
        );
        assert!(e.take_error().is_some());
    }

    /// The per-column maximum equals the entry-by-entry f64 maximum it replaces (NaN, infinity,
    /// subnormals, ragged row counts).
    #[test]
    fn max_code_equals_the_entrywise_maximum() {
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        for n in [1, 3, 8, 16, 32, 37, 64, 144] {
            for rows in [0, 1, 5, 3000] {
                let mut y: Vec<f32> = (0..rows * n + 2)
                    .map(|_| (rng.random::<f32>() - 0.5) * 2e3)
                    .collect();
                if rows > 1 {
                    y[1] = f32::NAN;
                    y[n] = 1e-40;
                }
                let scales: Vec<f64> = (0..n).map(|_| pow2(rng.random_range(-20..4))).collect();
                for shift in [0, 5, 20] {
                    let naive = y
                        .chunks_exact(n)
                        .fold(0f64, |m, row| {
                            row.iter().zip(&scales).fold(m, |m, (&v, &s)| {
                                m.max((f64::from(v) * (1.0 / (s * crate::pow2_f64(shift)))).abs())
                            })
                        })
                        .round() as u32;
                    assert_eq!(max_code(&y, &scales, shift), naive, "n {n} rows {rows}");
                }
                if rows > 2 {
                    y[2] = f32::INFINITY;
                    assert_eq!(max_code(&y, &scales, 3), u32::MAX);
                }
            }
        }
    }

    /// The noted largest code stands in for `max_code` only where every column dequantizes
    /// exactly in f32.
    #[test]
    fn exact_dequant_needs_normal_power_of_two_factors() {
        assert!(exact_dequant(&[pow2(-20), pow2(3)], 5));
        assert!(exact_dequant(&[], 0));
        assert!(exact_dequant(&[pow2(-126)], 0));
        assert!(!exact_dequant(&[pow2(-127)], 0));
        assert!(exact_dequant(&[pow2(100)], 12));
        assert!(!exact_dequant(&[pow2(100)], 13));
        assert!(!exact_dequant(&[pow2(-4), 3.0], 1));
        assert!(!exact_dequant(&[f64::INFINITY], 0));
        assert!(!exact_dequant(&[0.0], 0));
    }

    #[test]
    fn threshold_unit_conversions() {
        // t = 1.0 with unit 2^-4: 16 units exactly; just above -> 17.
        assert_eq!(absolute_units(1.0, -4), 16);
        assert_eq!(absolute_units(1.0 + 1e-6, -4), 17);
        assert_eq!(absolute_units(0.0, 0), 0);
        assert_eq!(absolute_units(-1.0, 0), 0);
        assert_eq!(absolute_units(f32::NAN, 0), 0);
        assert_eq!(absolute_units(1e30, 0), THR_MAX);
        assert_eq!(c_q16(0.5), 32768);
        assert_eq!(c_q16(2.0), 65535);
        assert_eq!(c_q16(-0.1), 0);
        assert_eq!(rescale(100, 1), 200);
        assert_eq!(rescale(101, -1), 50);
        assert_eq!(rescale(1, 60), THR_MAX);
        assert_eq!(rescale(0, 60), 0);
        assert_eq!(rescale(u64::MAX, -70), 0);
        assert_eq!(rescale(THR_MAX, 1), THR_MAX);
    }

    #[test]
    fn config_from_method() {
        assert_eq!(AccelGemmConfig::from_method(&MethodConfig::fp32()), None);
        assert_eq!(
            AccelGemmConfig::from_method(&MethodConfig::baseline()),
            Some(AccelGemmConfig::baseline())
        );
        let p = AccelGemmConfig::from_method(&MethodConfig::e2train()).unwrap();
        assert_eq!(p.forward_mode, Mode::Int8);
        assert!(matches!(p.backward_weight, BackwardWeight::Psg { .. }));
    }
}
