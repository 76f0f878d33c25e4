//! Accelerator interface and the soft accelerator.
//!
//! - [`Accelerator`]: what the trainer asks of an accelerator, one hardware command per call: a GEMM of
//!   16-bit code matrices in INT16 or INT8 mode with requantized, raw 48-bit or sign output; a PSG
//!   weight-gradient GEMM against a threshold; 64-bit counters with snapshot and clear. Its semantics
//!   are those of `rtl/README.md` (command limits, threshold CSR rule, tiling by the array shape).
//! - [`SoftAccel`]: the fast software implementation every everyday run uses. Invariants: results are
//!   bit-identical to the golden model in `e2t-numerics` (on x86-64 with AVX2 it computes with an
//!   exact integer `vpmaddwd` kernel, `intgemm`; elsewhere on exact-integer-valued floats, chunking K
//!   so every partial sum is exact), and its counters equal the RTL's for the same commands
//!   (the cycle formula of `rtl/README.md` with streams that never stall).
//! - [`AccelGemm`]: the `e2t_nn::GemmEngine` that runs a layer's three GEMMs on an [`Accelerator`]:
//!   quantizes fp32 tensors to codes with power-of-two scales, splits GEMMs to the command limits,
//!   dequantizes, applies PSG to weight gradients and keeps per-layer PSG statistics. For
//!   convolutions it also takes the NHWC input directly ([`AccelGemm::conv_forward`],
//!   [`AccelGemm::conv_backward_weight`]): the input is quantized once and its codes gathered into
//!   the im2col matrix (identical codes, exponent and counters to quantizing the fp32 matrix), and
//!   the forward's codes are reused for the weight gradient when they are the 16-bit ones it needs.

mod conv;
mod engine;
mod fast;
mod intgemm;
mod matrix;
mod soft;

pub use conv::{ConvCodes, Im2colGeom};
pub use engine::{
    AccelGemm, AccelGemmConfig, AccelGemmState, BackwardWeight, GradRounding, LayerPsgState,
};
pub use matrix::CodeMatrix;

pub use soft::SoftAccel;

pub use e2t_core::{Counters, Mode, PsgFallback};
pub use e2t_numerics::{HwThreshold, PredRounding, PsgCounts};

/// [`Accelerator::gemm_scaled_split_k`] as separate raw commands, one per K piece, summed on the
/// host. The whole GEMM's shape is checked first, so a bad one issues no command.
pub(crate) fn split_k_commands<A: Accelerator + ?Sized>(
    acc: &mut A,
    a: CodeMatrix<'_>,
    b: CodeMatrix<'_>,
    mode: Mode,
    k_piece: usize,
    col_scale: &[f64],
    out: &mut [f32],
) -> Result<(), AccelError> {
    check_split(b.cols(), k_piece, col_scale)?;
    let (m, k, n) = check_command(&a, &b, out.len())?;
    let mut sum = vec![0i64; m * n];
    let mut part = vec![0i64; m * n];
    for k0 in (0..k).step_by(k_piece) {
        let k1 = (k0 + k_piece).min(k);
        acc.gemm(
            a.sub(0, m, k0, k1),
            b.sub(k0, k1, 0, n),
            mode,
            GemmOut::Raw(&mut part),
        )?;
        for (s, &v) in sum.iter_mut().zip(&part) {
            *s += v;
        }
    }
    for (orow, srow) in out.chunks_exact_mut(n).zip(sum.chunks_exact(n)) {
        for ((o, &v), &c) in orow.iter_mut().zip(srow).zip(col_scale) {
            *o = (v as f64 * c) as f32;
        }
    }
    Ok(())
}

/// Where [`Accelerator::gemm_requant_scatter`] hands a GEMM's dequantized output: called as
/// `scatter(first, rows, dst)` with consecutive rows `first..first + rows.len() / n` of one group
/// (row-major, `n` columns) and that group's part of the destination. Each group's calls come in
/// row order from row 0 and cover the group; groups may run in parallel.
pub type Scatter<'s> = dyn Fn(usize, &[f32], &mut [f32]) + Sync + 's;

/// Host-side checks of [`Accelerator::gemm_requant_scatter`]'s grouping: `m` rows split into
/// groups of `group_rows` and `dst_len` into as many equal parts; returns the part's length.
pub(crate) fn check_scatter(
    m: usize,
    cmd_rows: usize,
    group_rows: usize,
    dst_len: usize,
) -> Result<usize, AccelError> {
    let bad = AccelError::Scatter {
        rows: m,
        cmd_rows,
        group_rows,
        dst_len,
    };
    if cmd_rows == 0 || group_rows == 0 || m % group_rows != 0 {
        return Err(bad);
    }
    let groups = m / group_rows;
    if groups == 0 || dst_len % groups != 0 || dst_len == 0 {
        return Err(bad);
    }
    Ok(dst_len / groups)
}

/// [`Accelerator::gemm_requant_scatter`] as plain requantized commands into one whole output,
/// dequantized as [`Accelerator::gemm_scaled`]'s default does, then handed to `scatter` group by
/// group (one call per group).
#[allow(clippy::too_many_arguments)]
pub(crate) fn scatter_via_commands<A: Accelerator + ?Sized>(
    acc: &mut A,
    a: CodeMatrix<'_>,
    b: CodeMatrix<'_>,
    mode: Mode,
    shift: u32,
    col_scale: &[f64],
    cmd_rows: usize,
    group_rows: usize,
    dst: &mut [f32],
    scatter: &Scatter<'_>,
) -> Result<u32, AccelError> {
    use rayon::prelude::*;
    check_col_scale(b.cols(), col_scale)?;
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    let per = check_scatter(m, cmd_rows, group_rows, dst.len())?;
    let up = pow2_f64(shift);
    let mut out = vec![0f32; m * n];
    let mut q = Vec::new();
    let mut mx = 0u32;
    for r0 in (0..m).step_by(cmd_rows) {
        let r1 = (r0 + cmd_rows).min(m);
        q.resize((r1 - r0) * n, 0i16);
        acc.gemm(
            a.sub(r0, r1, 0, k),
            b,
            mode,
            GemmOut::Requant { shift, out: &mut q },
        )?;
        for (orow, qrow) in out[r0 * n..r1 * n]
            .chunks_exact_mut(n)
            .zip(q.chunks_exact(n))
        {
            for ((o, &v), &s) in orow.iter_mut().zip(qrow).zip(col_scale) {
                mx = mx.max(u32::from(v.unsigned_abs()));
                *o = (f64::from(v) * (s * up)) as f32;
            }
        }
    }
    dst.par_chunks_mut(per)
        .zip(out.par_chunks(group_rows * n))
        .for_each(|(d, rows)| scatter(0, rows, d));
    Ok(mx)
}

/// Host-side checks of [`Accelerator::gemm_scaled_split_k`]'s arguments.
pub(crate) fn check_split(n: usize, k_piece: usize, col_scale: &[f64]) -> Result<(), AccelError> {
    if k_piece == 0 {
        return Err(AccelError::Dims { m: 0, k: 0, n: 0 });
    }
    check_col_scale(n, col_scale)
}

/// One scale per output column, or a host-side error before any command.
pub(crate) fn check_col_scale(n: usize, col_scale: &[f64]) -> Result<(), AccelError> {
    if col_scale.len() != n {
        return Err(AccelError::Output {
            got: col_scale.len(),
            expected: n,
        });
    }
    Ok(())
}

/// `2^e` for a requantization shift (`e <= 47`), exactly.
pub(crate) fn pow2_f64(e: u32) -> f64 {
    f64::from_bits((1023 + u64::from(e.min(1000))) << 52)
}

/// Largest M and N of one command (`DIM_MN_MAX` in `rtl/pkg/e2t_pkg.sv`).
pub const DIM_MN_MAX: usize = 65535;
/// Largest K of one command (`DIM_K_MAX`).
pub const DIM_K_MAX: usize = 16_777_215;

/// Array shape R x C: the output tile of every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArrayShape {
    pub rows: usize,
    pub cols: usize,
}

/// Where a GEMM command's result goes, and in which format (`CMD_CFG.OUT_FMT`).
#[derive(Debug)]
pub enum GemmOut<'o> {
    /// Requantized: `sat16((acc + half) >> shift)`, shift `0..=47`. Row-major `[m, n]`.
    Requant { shift: u32, out: &'o mut [i16] },
    /// Raw 48-bit accumulators, sign-extended. Row-major `[m, n]`.
    Raw(&'o mut [i64]),
    /// `sign(acc)` in {-1, 0, +1}. Row-major `[m, n]`.
    Sign(&'o mut [i8]),
}

impl GemmOut<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            GemmOut::Requant { out, .. } => out.len(),
            GemmOut::Raw(o) => o.len(),
            GemmOut::Sign(o) => o.len(),
        }
    }
}

/// A row-major fp32 `[rows, cols]` left operand with the per-tensor exponent it is to be quantized
/// with, exactly as `e2t_numerics::quantize_into` (or `quantize_into_8bit` for an 8-bit tensor).
#[derive(Clone, Copy, Debug)]
pub struct F32Operand<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub exp: i32,
    pub eight_bit: bool,
}

impl F32Operand<'_> {
    /// The codes (what travels to the accelerator).
    pub fn quantize(&self) -> Result<Vec<i16>, AccelError> {
        if self.rows.checked_mul(self.cols) != Some(self.data.len()) {
            return Err(AccelError::View {
                rows: self.rows,
                cols: self.cols,
                row_stride: self.cols,
                col_stride: 1,
                len: self.data.len(),
            });
        }
        let mut q = vec![0i16; self.data.len()];
        if self.eight_bit {
            e2t_numerics::quantize_into_8bit(self.data, self.exp, &mut q);
        } else {
            e2t_numerics::quantize_into(self.data, self.exp, &mut q);
        }
        Ok(q)
    }
}

/// What a PSG command reports besides its signs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PsgReport {
    pub counts: PsgCounts,
    /// max|P| over this command's predicted entries (the status beats' maximum).
    pub max_abs_p: u64,
    /// The threshold the block compared against.
    pub threshold: u64,
}

/// Errors of accelerator commands. Each names the offending argument and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccelError {
    #[error("array shape {rows} x {cols}: each side must be 1..=32 and the column count even")]
    ArrayShape { rows: usize, cols: usize },
    #[error(
        "matrix view {rows} x {cols} with strides ({row_stride}, {col_stride}) does not fit in {len} elements"
    )]
    View {
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
        len: usize,
    },
    #[error("inner dimensions differ: A is {a_rows} x {a_cols}, B is {b_rows} x {b_cols}")]
    Inner {
        a_rows: usize,
        a_cols: usize,
        b_rows: usize,
        b_cols: usize,
    },
    #[error(
        "command dimensions M={m}, K={k}, N={n}: each must be at least 1, M and N at most 65535, K at most 16777215"
    )]
    Dims { m: usize, k: usize, n: usize },
    #[error("output buffer holds {got} entries, expected M x N = {expected}")]
    Output { got: usize, expected: usize },
    #[error("{op}: operand shapes {lhs:?} and {rhs:?} with output {out:?} do not form a GEMM")]
    LayerShapes {
        op: &'static str,
        lhs: (usize, usize),
        rhs: (usize, usize),
        out: (usize, usize),
    },
    #[error(
        "scatter: {rows} output rows in commands of {cmd_rows} rows and groups of {group_rows} rows do not split a destination of {dst_len} elements evenly"
    )]
    Scatter {
        rows: usize,
        cmd_rows: usize,
        group_rows: usize,
        dst_len: usize,
    },
    #[error("requantization shift {0} out of range: expected 0..=47")]
    Shift(u32),
    #[error("cycle model: {0}")]
    Cycles(String),
    #[error(transparent)]
    Numerics(#[from] e2t_numerics::NumericsError),
}

/// One accelerator: every method is one hardware command (or CSR access) with the semantics of
/// `rtl/README.md`. Operands are `[m, k]` (A) and `[k, n]` (B) code matrices; outputs are row-major
/// `[m, n]`. Commands past the limits (zero or too-large dimensions, bad shift, threshold fields wider
/// than their CSR) are rejected with an error and change no result.
pub trait Accelerator: Send {
    /// The array's R x C (the output tile).
    fn array_shape(&self) -> ArrayShape;

    /// `C = A · B` in `mode` (`OP_GEMM`).
    fn gemm(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        out: GemmOut<'_>,
    ) -> Result<(), AccelError>;

    /// [`Accelerator::gemm`] with the A operand given in fp32 and quantized on the way in. The
    /// default quantizes, then runs `gemm`; a backend may fuse the two but must give the same
    /// results and counters.
    fn gemm_f32_lhs(
        &mut self,
        a: F32Operand<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        out: GemmOut<'_>,
    ) -> Result<(), AccelError> {
        let q = a.quantize()?;
        self.gemm(CodeMatrix::row_major(&q, a.rows, a.cols)?, b, mode, out)
    }

    /// [`Accelerator::gemm`] dequantized on the host as the result arrives, row-major `[m, n]`,
    /// one scale per column. `requant: None` is a raw 48-bit command and
    /// `out[i,j] = (acc[i,j] as f64 * col_scale[j]) as f32`; `Some(s)` is a requantized command
    /// (16-bit output, a quarter of the raw format's bytes) and
    /// `out[i,j] = (requantize(acc[i,j], s) as f64 * 2^s * col_scale[j]) as f32`. The default runs
    /// the command, then scales; a backend may fuse the two but must give the same results and
    /// counters. A `col_scale` of the wrong length is a host-side error (no command).
    fn gemm_scaled(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        requant: Option<u32>,
        col_scale: &[f64],
        out: &mut [f32],
    ) -> Result<(), AccelError> {
        check_col_scale(b.cols(), col_scale)?;
        let n = col_scale.len();
        match requant {
            None => {
                let mut acc = vec![0i64; out.len()];
                self.gemm(a, b, mode, GemmOut::Raw(&mut acc))?;
                for (orow, arow) in out.chunks_exact_mut(n).zip(acc.chunks_exact(n)) {
                    for ((o, &v), &s) in orow.iter_mut().zip(arow).zip(col_scale) {
                        *o = (v as f64 * s) as f32;
                    }
                }
            }
            Some(shift) => {
                let mut q = vec![0i16; out.len()];
                self.gemm(a, b, mode, GemmOut::Requant { shift, out: &mut q })?;
                let up = pow2_f64(shift);
                for (orow, qrow) in out.chunks_exact_mut(n).zip(q.chunks_exact(n)) {
                    for ((o, &v), &s) in orow.iter_mut().zip(qrow).zip(col_scale) {
                        *o = (f64::from(v) * (s * up)) as f32;
                    }
                }
            }
        }
        Ok(())
    }

    /// [`Self::gemm_scaled`] of a requantized command (`requant = Some(shift)`) that also returns
    /// the largest |code| of its 16-bit output when the backend notes it as the codes arrive
    /// (`None`: it does not, and the caller scans `out` if it needs it). Same results, counters
    /// and errors as `gemm_scaled`.
    fn gemm_scaled_code_max(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        shift: u32,
        col_scale: &[f64],
        out: &mut [f32],
    ) -> Result<Option<u32>, AccelError> {
        self.gemm_scaled(a, b, mode, Some(shift), col_scale, out)
            .map(|()| None)
    }

    /// Requantized commands (`OP_GEMM`, as [`Self::gemm_scaled`] with `requant = Some(shift)`),
    /// one per block of `cmd_rows` consecutive rows of A (the last block shorter), whose
    /// dequantized output is not kept whole: it goes to `scatter` (see [`Scatter`]) in groups of
    /// `group_rows` rows, group `g` with the `g`-th of as many equal parts of `dst`. Returns the
    /// largest |code| of the 16-bit output. The same values, counters and errors as the commands
    /// one by one; a grouping that does not divide `m` and `dst` evenly, or `cmd_rows == 0`, is a
    /// host-side error (no command). A backend may compute the output in pieces (so it never
    /// exists whole); the default forms it whole first.
    #[allow(clippy::too_many_arguments)]
    fn gemm_requant_scatter(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        shift: u32,
        col_scale: &[f64],
        cmd_rows: usize,
        group_rows: usize,
        dst: &mut [f32],
        scatter: &Scatter<'_>,
    ) -> Result<u32, AccelError> {
        scatter_via_commands(
            self, a, b, mode, shift, col_scale, cmd_rows, group_rows, dst, scatter,
        )
    }

    /// A long-K GEMM sent as raw commands over K pieces of at most `k_piece` terms (so that each
    /// piece fits the on-chip operand buffers of the reuse path), the pieces' 48-bit accumulators
    /// summed on the host in 64 bits and then scaled per column:
    /// `out[i,j] = (sum_p acc_p[i,j] as f64 * col_scale[j]) as f32`. A backend may fuse the pieces
    /// but must give the same results and counters. `k_piece == 0` or a `col_scale` of the wrong
    /// length is a host-side error (no command).
    fn gemm_scaled_split_k(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        k_piece: usize,
        col_scale: &[f64],
        out: &mut [f32],
    ) -> Result<(), AccelError> {
        split_k_commands(self, a, b, mode, k_piece, col_scale, out)
    }

    /// Predictive sign GEMM (`OP_PSG`): INT8 prediction per tile, `|P| < threshold` marks an entry
    /// uncertain, tiles holding one are recomputed in INT16 and take their signs from the exact
    /// result. Writes one sign per entry into `signs` (row-major `[m, n]`).
    fn psg(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        threshold: HwThreshold,
        pred: PredRounding,
        signs: &mut [i8],
    ) -> Result<PsgReport, AccelError>;

    /// PSG run by the host over raw commands whose K fits the reuse path, for long-K weight
    /// gradients: the INT8 prediction as K pieces of at most `k_pieces.0` terms (prediction codes
    /// as for [`Self::psg`]), summed on the host; the same threshold rule, tiles and signs as
    /// [`Self::psg`]; then the INT16 recompute as K pieces of at most `k_pieces.1`, either of each
    /// tile that holds an uncertain entry or, when that moves fewer off-chip bytes, of the whole
    /// GEMM (then every sign is exact and every tile counts as recomputed). With
    /// [`PsgFallback::Zero`] there is no recompute: uncertain entries get sign 0. The host adds the
    /// PSG counts to the counters. A zero piece length is a host-side error (no command).
    #[allow(clippy::too_many_arguments)]
    fn psg_split_k(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        threshold: HwThreshold,
        pred: PredRounding,
        k_pieces: (usize, usize),
        fallback: PsgFallback,
        signs: &mut [i8],
    ) -> Result<PsgReport, AccelError>;

    /// Freeze the live counters into the readable snapshot and return it (`CTRL.CNT_SNAPSHOT`).
    fn snapshot(&mut self) -> Counters;

    /// Zero the live counters (`CTRL.CNT_CLEAR`); the snapshot keeps its values.
    fn clear_counters(&mut self);

    /// Running max|P| over all PSG predictions since reset or [`Accelerator::clear_max_p`] (`PSG_MAXP`).
    fn max_p(&self) -> u64;

    /// `CTRL.MAXP_CLEAR`.
    fn clear_max_p(&mut self);
}

/// Validate a command's shapes against each other, the output length and the hardware limits.
pub(crate) fn check_command(
    a: &CodeMatrix<'_>,
    b: &CodeMatrix<'_>,
    out_len: usize,
) -> Result<(usize, usize, usize), AccelError> {
    check_dims((a.rows(), a.cols()), b, out_len)
}

/// [`check_command`] for an A operand of shape `(rows, cols)`.
pub(crate) fn check_dims(
    a: (usize, usize),
    b: &CodeMatrix<'_>,
    out_len: usize,
) -> Result<(usize, usize, usize), AccelError> {
    if a.1 != b.rows() {
        return Err(AccelError::Inner {
            a_rows: a.0,
            a_cols: a.1,
            b_rows: b.rows(),
            b_cols: b.cols(),
        });
    }
    let (m, k, n) = (a.0, a.1, b.cols());
    if m == 0 || n == 0 || k == 0 || m > DIM_MN_MAX || n > DIM_MN_MAX || k > DIM_K_MAX {
        return Err(AccelError::Dims { m, k, n });
    }
    if out_len != m * n {
        return Err(AccelError::Output {
            got: out_len,
            expected: m * n,
        });
    }
    Ok((m, k, n))
}
