//! Where the model's GEMMs run: the one place that knows about the accelerator.
//!
//! Layers call [`Backend`] with a per-pass precision decision (forward mode, PSG on/off for the weight
//! gradient); a backend maps that onto an `e2t_nn::GemmEngine` (fp32) or the soft accelerator.

use crate::layers::{
    col2im, col2im_rows_into, from_rows, give_array, im2col, out_size, pooled2, pooled4, rows,
};
use e2t_accel::{
    AccelGemm, AccelGemmConfig, AccelGemmState, BackwardWeight, ConvCodes, Im2colGeom, SoftAccel,
};
use e2t_core::{Counters, EngineConfig, EngineError, LayerPsgStats, Mode, PhaseCounters};
use e2t_nn::GemmEngine;
use ndarray::{Array4, ArrayView2, ArrayViewMut2};
use std::borrow::Cow;

/// The GEMM service a model needs for one training step.
pub trait Backend: Send {
    /// `y = x · w` in `mode` (ignored by fp32 backends).
    fn forward(
        &mut self,
        layer: &str,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        y: ArrayViewMut2<'_, f32>,
        mode: Mode,
    );
    /// `dx = dy · wᵀ` (always INT16 on the accelerator).
    fn backward_data(
        &mut self,
        layer: &str,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        dx: ArrayViewMut2<'_, f32>,
    );
    /// `dw = xᵀ · dy`; with `psg` the backend writes predicted signs (+1/-1/0) instead.
    fn backward_weight(
        &mut self,
        layer: &str,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        dw: ArrayViewMut2<'_, f32>,
        psg: bool,
    );
    /// A convolution's forward from its NHWC input `x` (standard layout), weight `[k·k·Cin, Cout]`,
    /// into `y` `[N·Ho·Wo, Cout]`: the same as [`Backend::forward`] on the im2col matrix. The
    /// returned codes (if any) go back into [`Backend::conv_backward_weight`] for the same input.
    #[allow(clippy::too_many_arguments)]
    fn conv_forward(
        &mut self,
        layer: &str,
        x: &Array4<f32>,
        geom: (usize, usize, usize),
        w: ArrayView2<'_, f32>,
        y: ArrayViewMut2<'_, f32>,
        mode: Mode,
    ) -> Option<ConvCodes> {
        if geom == (1, 1, 0) {
            self.forward(layer, rows(x), w, y, mode);
        } else {
            let cols = im2col(x, geom.0, geom.1, geom.2);
            self.forward(layer, cols.view(), w, y, mode);
        }
        None
    }
    /// A convolution's weight gradient from its NHWC input `x` of `dims`:
    /// [`Backend::backward_weight`] on the im2col matrix; `cached` is what
    /// [`Backend::conv_forward`] returned for `x`. `x` may be `None` only when `cached` holds
    /// INT16 codes ([`ConvCodes::is_int16`]), which then stand in for it.
    #[allow(clippy::too_many_arguments)]
    fn conv_backward_weight(
        &mut self,
        layer: &str,
        x: Option<&Array4<f32>>,
        dims: (usize, usize, usize, usize),
        geom: (usize, usize, usize),
        cached: Option<ConvCodes>,
        dy: ArrayView2<'_, f32>,
        dw: ArrayViewMut2<'_, f32>,
        psg: bool,
    ) {
        let _ = (cached, dims);
        // This backend returns no codes from `conv_forward`, so layers keep their input.
        let x = x.expect("a backend without conv codes gets the fp32 input");
        if geom == (1, 1, 0) {
            self.backward_weight(layer, rows(x), dy, dw, psg);
        } else {
            let cols = im2col(x, geom.0, geom.1, geom.2);
            self.backward_weight(layer, cols.view(), dy, dw, psg);
        }
    }
    /// A convolution's input gradient (NHWC, `dims`) from its output gradient `dy`
    /// `[N·Ho·Wo, Cout]` and weight `[k·k·Cin, Cout]`: [`Backend::backward_data`] into the column
    /// gradient, then [`col2im`] (a pointwise convolution's column gradient is the input
    /// gradient). A backend may hand the column gradient to `col2im` in pieces instead, with the
    /// same result.
    fn conv_backward_data(
        &mut self,
        layer: &str,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        dims: (usize, usize, usize, usize),
        geom: (usize, usize, usize),
    ) -> Array4<f32> {
        let (n, h, wd, c) = dims;
        let (k, stride, pad) = geom;
        // The backend writes every element (zeros after an error).
        let mut dcols = pooled2((dy.nrows(), k * k * c));
        self.backward_data(layer, dy, w, dcols.view_mut());
        if geom == (1, 1, 0) {
            from_rows(dcols, n, h, wd)
        } else {
            let dx = col2im(&dcols, dims, k, stride, pad);
            give_array(dcols);
            dx
        }
    }
    /// Monotonic counters of the work done so far (all zero for fp32).
    fn counters(&mut self) -> Counters;
    /// PSG statistics per GEMM layer id since the last call.
    fn take_psg_stats(&mut self) -> Vec<LayerPsgStats>;
    /// The counters since the last call, split by GEMM phase (zero for fp32).
    fn take_phase_counters(&mut self) -> PhaseCounters {
        PhaseCounters::default()
    }
    /// Opaque backend state that must survive a checkpoint (e.g. adaptive PSG thresholds).
    fn state(&self) -> Vec<u8>;
    fn set_state(&mut self, bytes: &[u8]) -> Result<(), String>;
    /// True when `backward_weight(.., psg = true)` is supported.
    fn supports_psg(&self) -> bool;
    /// The training step the next GEMMs belong to (keys seeded stochastic rounding).
    fn begin_step(&mut self, _step: u64) {}
    /// Evaluation passes follow (`true`) or are over (`false`): a backend keeps its per-layer state
    /// (e.g. requantization shifts) unchanged by evaluation, so evaluating never changes what the
    /// next training step computes.
    fn set_eval(&mut self, _eval: bool) {}
    /// The first error the backend hit since the last call (its GEMM seam cannot return one).
    fn take_error(&mut self) -> Option<String> {
        None
    }
}

/// fp32 GEMMs through any `GemmEngine` (no counters, no PSG).
pub struct Fp32Backend<G: e2t_nn::GemmEngine + Send> {
    gemm: G,
}

impl<G: e2t_nn::GemmEngine + Send> Fp32Backend<G> {
    pub fn new(gemm: G) -> Self {
        Fp32Backend { gemm }
    }
}

impl<G: e2t_nn::GemmEngine + Send> Backend for Fp32Backend<G> {
    fn forward(
        &mut self,
        layer: &str,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        y: ArrayViewMut2<'_, f32>,
        _mode: Mode,
    ) {
        self.gemm.forward(layer, x, w, y);
    }
    fn backward_data(
        &mut self,
        layer: &str,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        dx: ArrayViewMut2<'_, f32>,
    ) {
        self.gemm.backward_data(layer, dy, w, dx);
    }
    fn backward_weight(
        &mut self,
        layer: &str,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        dw: ArrayViewMut2<'_, f32>,
        _psg: bool,
    ) {
        self.gemm.backward_weight(layer, x, dy, dw);
    }
    fn counters(&mut self) -> Counters {
        Counters::default()
    }
    fn take_psg_stats(&mut self) -> Vec<LayerPsgStats> {
        Vec::new()
    }
    fn state(&self) -> Vec<u8> {
        Vec::new()
    }
    fn set_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "fp32 backend expects no state, got {} bytes",
                bytes.len()
            ))
        }
    }
    fn supports_psg(&self) -> bool {
        false
    }
}

/// Plain ndarray GEMM, used by unit tests and as the fp32 seam until a faster one is plugged in.
#[derive(Default)]
pub struct NdGemm;

impl e2t_nn::GemmEngine for NdGemm {
    fn forward(
        &mut self,
        _l: &str,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        mut y: ArrayViewMut2<'_, f32>,
    ) {
        ndarray::linalg::general_mat_mul(1.0, &x, &w, 0.0, &mut y);
    }
    fn backward_data(
        &mut self,
        _l: &str,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        mut dx: ArrayViewMut2<'_, f32>,
    ) {
        ndarray::linalg::general_mat_mul(1.0, &dy, &w.t(), 0.0, &mut dx);
    }
    fn backward_weight(
        &mut self,
        _l: &str,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        mut dw: ArrayViewMut2<'_, f32>,
    ) {
        ndarray::linalg::general_mat_mul(1.0, &x.t(), &dy, 0.0, &mut dw);
    }
}

/// The soft accelerator (`e2t_accel::AccelGemm` over `SoftAccel`): bit-exact numerics and counters.
///
/// `AccelGemm` has one configuration for all layers; the per-call choices the model makes (forward
/// mode, PSG or exact weight gradient for the classifier) are applied by switching that
/// configuration around the call.
pub struct AccelBackend {
    gemm: AccelGemm<SoftAccel>,
    /// Counters per phase since the last `take_phase_counters`.
    phases: PhaseCounters,
    /// The method's configuration (PSG threshold rule, rounding).
    base: AccelGemmConfig,
}

impl AccelBackend {
    pub fn new(rows: usize, cols: usize, cfg: AccelGemmConfig) -> Result<Self, EngineError> {
        let accel = SoftAccel::new(rows, cols)
            .map_err(|e| EngineError::Config(format!("accelerator array: {e}")))?;
        let mut gemm = AccelGemm::new(accel, cfg);
        // Layers call backward data right after the weight gradient, on the same unchanged `dy`:
        // its codes are made once.
        gemm.share_grad_codes(true);
        Ok(AccelBackend {
            gemm,
            phases: PhaseCounters::default(),
            base: cfg,
        })
    }
    /// The first accelerator error since the last call (the GEMM seam cannot return errors).
    pub fn take_error(&mut self) -> Option<String> {
        self.gemm.take_error().map(|e| e.to_string())
    }

    /// Runs `f` and books the counter delta it caused under `phase`.
    fn booked<R>(
        &mut self,
        phase: fn(&mut PhaseCounters) -> &mut Counters,
        f: impl FnOnce(&mut AccelGemm<SoftAccel>) -> R,
    ) -> R {
        let before = self.gemm.accel().live_counters();
        let r = f(&mut self.gemm);
        let d = self.gemm.accel().live_counters().delta_since(&before);
        phase(&mut self.phases).accumulate(&d);
        r
    }
}

impl Backend for AccelBackend {
    fn forward(
        &mut self,
        layer: &str,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        y: ArrayViewMut2<'_, f32>,
        mode: Mode,
    ) {
        self.gemm.set_config(AccelGemmConfig {
            forward_mode: mode,
            ..self.base
        });
        self.booked(|p| &mut p.forward, |g| g.forward(layer, x, w, y));
    }
    fn backward_data(
        &mut self,
        layer: &str,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        dx: ArrayViewMut2<'_, f32>,
    ) {
        self.gemm.set_config(self.base);
        self.booked(
            |p| &mut p.backward_data,
            |g| g.backward_data(layer, dy, w, dx),
        );
    }
    fn backward_weight(
        &mut self,
        layer: &str,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        dw: ArrayViewMut2<'_, f32>,
        psg: bool,
    ) {
        let bw = if psg {
            self.base.backward_weight
        } else {
            BackwardWeight::Int16
        };
        self.gemm.set_config(AccelGemmConfig {
            backward_weight: bw,
            ..self.base
        });
        self.booked(
            |p| &mut p.weight_gradient,
            |g| g.backward_weight(layer, x, dy, dw),
        );
    }
    fn conv_forward(
        &mut self,
        layer: &str,
        x: &Array4<f32>,
        geom: (usize, usize, usize),
        w: ArrayView2<'_, f32>,
        y: ArrayViewMut2<'_, f32>,
        mode: Mode,
    ) -> Option<ConvCodes> {
        self.gemm.set_config(AccelGemmConfig {
            forward_mode: mode,
            ..self.base
        });
        let xs = nhwc_slice(x);
        self.booked(
            |p| &mut p.forward,
            |g| g.conv_forward(layer, &xs, im2col_geom(x.dim(), geom), w, y),
        )
    }
    fn conv_backward_weight(
        &mut self,
        layer: &str,
        x: Option<&Array4<f32>>,
        dims: (usize, usize, usize, usize),
        geom: (usize, usize, usize),
        cached: Option<ConvCodes>,
        dy: ArrayView2<'_, f32>,
        dw: ArrayViewMut2<'_, f32>,
        psg: bool,
    ) {
        let bw = if psg {
            self.base.backward_weight
        } else {
            BackwardWeight::Int16
        };
        self.gemm.set_config(AccelGemmConfig {
            backward_weight: bw,
            ..self.base
        });
        match (x, cached) {
            (Some(x), cached) => {
                let xs = nhwc_slice(x);
                self.booked(
                    |p| &mut p.weight_gradient,
                    |g| g.conv_backward_weight(layer, &xs, im2col_geom(dims, geom), cached, dy, dw),
                );
            }
            // The forward's INT16 codes stand in for the input (the layer kept no copy of it).
            (None, Some(c)) => self.booked(
                |p| &mut p.weight_gradient,
                |g| g.conv_backward_weight_from_codes(layer, c, dy, dw),
            ),
            (None, None) => panic!("conv_backward_weight needs the input or its forward's codes"),
        }
    }
    fn conv_backward_data(
        &mut self,
        layer: &str,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        dims: (usize, usize, usize, usize),
        geom: (usize, usize, usize),
    ) -> Array4<f32> {
        let (n, h, wd, c) = dims;
        let (k, stride, pad) = geom;
        let (ho, wo) = (out_size(h, k, stride, pad), out_size(wd, k, stride, pad));
        if geom == (1, 1, 0)
            || n == 0
            || h * wd * c == 0
            || ho * wo == 0
            || dy.nrows() != n * ho * wo
        {
            // Nothing to scatter (or a shape the GEMM reports): the plain path.
            let mut dcols = pooled2((dy.nrows(), k * k * c));
            self.backward_data(layer, dy, w, dcols.view_mut());
            return if geom == (1, 1, 0) {
                from_rows(dcols, n, h, wd)
            } else {
                let dx = col2im(&dcols, dims, k, stride, pad);
                give_array(dcols);
                dx
            };
        }
        self.gemm.set_config(self.base);
        // Each image's column-gradient rows go to `col2im` piece by piece while in cache: the
        // `[N·Ho·Wo, k·k·Cin]` matrix is never stored.
        let mut dx = pooled4(dims);
        let g = Im2colGeom {
            n,
            h,
            w: wd,
            c,
            k,
            stride,
            pad,
        };
        let xs = dx.as_slice_mut().expect("fresh array");
        self.booked(
            |p| &mut p.backward_data,
            |gm| {
                gm.backward_data_scatter(layer, dy, w, ho * wo, xs, &|first, rows, xb| {
                    col2im_rows_into(&g, first, rows, xb)
                })
            },
        );
        dx
    }
    fn counters(&mut self) -> Counters {
        self.gemm.accel().live_counters()
    }
    fn take_psg_stats(&mut self) -> Vec<LayerPsgStats> {
        self.gemm.take_psg_stats()
    }
    fn take_phase_counters(&mut self) -> PhaseCounters {
        std::mem::take(&mut self.phases)
    }
    fn state(&self) -> Vec<u8> {
        bincode::serialize(&self.gemm.state()).expect("plain data serializes")
    }
    fn set_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: AccelGemmState = bincode::deserialize(bytes)
            .map_err(|e| {
                format!(
                    "cannot decode the accelerator layer state (PSG thresholds and requantization shifts; checkpoints written before the requantized-output driver cannot be resumed): {e}"
                )
            })?;
        self.gemm.restore_state(&s);
        Ok(())
    }
    fn supports_psg(&self) -> bool {
        true
    }
    fn begin_step(&mut self, step: u64) {
        self.gemm.set_step(step);
    }
    fn set_eval(&mut self, eval: bool) {
        self.gemm.freeze_history(eval);
    }
    fn take_error(&mut self) -> Option<String> {
        AccelBackend::take_error(self)
    }
}

/// An NHWC tensor's elements in standard order (borrowed when it is in standard layout).
fn nhwc_slice(x: &Array4<f32>) -> Cow<'_, [f32]> {
    match x.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(x.iter().copied().collect()),
    }
}

fn im2col_geom(
    (n, h, w, c): (usize, usize, usize, usize),
    (k, stride, pad): (usize, usize, usize),
) -> Im2colGeom {
    Im2colGeom {
        n,
        h,
        w,
        c,
        k,
        stride,
        pad,
    }
}

/// The backend a configuration asks for.
pub fn for_config(cfg: &EngineConfig) -> Result<Box<dyn Backend>, EngineError> {
    match AccelGemmConfig::from_method(&cfg.method) {
        None => Ok(Box::new(Fp32Backend::new(e2t_nn::Fp32Gemm::from_rayon()))),
        Some(g) => Ok(Box::new(AccelBackend::new(
            cfg.array.0 as usize,
            cfg.array.1 as usize,
            g,
        )?)),
    }
}
