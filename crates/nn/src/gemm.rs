//! The seam between layers and whatever multiplies matrices.
//!
//! Every convolution (as im2col) and linear layer expresses its three GEMMs through this trait, so the
//! same layer code trains in fp32 (`Fp32Gemm`) or on the accelerator's numerics (`e2t-accel`'s engine,
//! which quantizes to 16-bit codes, counts work and applies PSG in `backward_weight`).
//!
//! Shapes and roles are fixed so an engine knows which operand is the weight:
//! - `x`: activation patches, `[M, K]`, one row per output position (batch x pixels), per-tensor scale;
//! - `w`: weights, `[K, N]`, one column per output channel (per-column scale on the accelerator);
//! - `dy`: output gradient, `[M, N]`, per-tensor scale.
//!
//! Outputs are overwritten (not accumulated into).

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// Identifies the layer a GEMM belongs to (stable name such as `stage2.block0.conv1`), so engines can
/// keep per-layer state (PSG thresholds, statistics).
pub type LayerId<'a> = &'a str;

pub trait GemmEngine {
    /// `y[M,N] = x[M,K] · w[K,N]`.
    fn forward(
        &mut self,
        layer: LayerId<'_>,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        y: ArrayViewMut2<'_, f32>,
    );

    /// `dx[M,K] = dy[M,N] · wᵀ`.
    fn backward_data(
        &mut self,
        layer: LayerId<'_>,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        dx: ArrayViewMut2<'_, f32>,
    );

    /// `dw[K,N] = xᵀ · dy`: the value the optimizer uses as this weight's gradient. A PSG engine writes
    /// the predicted sign (+1, -1, 0) per entry instead of the gradient itself.
    fn backward_weight(
        &mut self,
        layer: LayerId<'_>,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        dw: ArrayViewMut2<'_, f32>,
    );

    /// Helper, not a GEMM: an engine that is plain fp32 returns itself, which lets convolutions use
    /// a fused path (im2col of a few images at a time straight into a cache-sized buffer, GEMMs on
    /// those row blocks). Engines with per-tensor state (scales, counters, PSG) keep the default
    /// `None`, and layers then call the three methods above on whole matrices.
    fn as_fp32(&self) -> Option<&Fp32Gemm> {
        None
    }
}

/// The fp32 engine: plain `f32` GEMMs on the `gemm` crate.
///
/// `gemm::gemm` takes arbitrary row/column strides, so the transposed operands of the two backward
/// GEMMs are just views with swapped strides (no copies).
///
/// Parallelism: the conv GEMMs are thin (`N`, `K` <= a few hundred, `M` = batch x pixels up to
/// ~10^5), so instead of the crate's own threading they are split into fixed blocks of
/// [`ROW_BLOCK`] rows of `M`, run single-threaded each on the rayon pool: forward and
/// backward-data blocks write disjoint output rows; backward-weight blocks (where `M` is the inner
/// dimension) produce partial `[K, N]` products that are summed in block order. Block boundaries do
/// not depend on the thread count, so results are bit-identical for any number of threads.
#[derive(Clone, Copy, Debug)]
pub struct Fp32Gemm {
    threads: usize,
}

/// Rows of `M` per parallel block (fixed, for determinism; small enough that a block's operands
/// stay in the L2 cache).
pub const ROW_BLOCK: usize = 2048;

/// Computes `dst = lhs · rhs` on the calling thread (any strides).
pub(crate) fn gemm_serial(
    lhs: ArrayView2<'_, f32>,
    rhs: ArrayView2<'_, f32>,
    mut dst: ArrayViewMut2<'_, f32>,
) {
    let (m, k) = lhs.dim();
    let (k2, n) = rhs.dim();
    assert_eq!(
        k,
        k2,
        "GEMM inner dimensions differ: lhs {:?}, rhs {:?}",
        lhs.dim(),
        rhs.dim()
    );
    assert_eq!(
        dst.dim(),
        (m, n),
        "GEMM output shape {:?}, expected {:?}",
        dst.dim(),
        (m, n)
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.fill(0.0);
        return;
    }
    let (ds, ls, rs) = (
        dst.strides().to_vec(),
        lhs.strides().to_vec(),
        rhs.strides().to_vec(),
    );
    // SAFETY: the three views are valid for their shapes and strides (checked above), `dst` is a
    // unique mutable view that cannot alias the shared inputs, and `read_dst = false` means the
    // previous contents of `dst` are never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            ds[1],
            ds[0],
            false,
            lhs.as_ptr(),
            ls[1],
            ls[0],
            rhs.as_ptr(),
            rs[1],
            rs[0],
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

impl Fp32Gemm {
    /// Uses up to `threads` workers of the current rayon pool (1 = everything on the caller).
    pub fn new(threads: usize) -> Self {
        Fp32Gemm {
            threads: threads.max(1),
        }
    }

    /// As many workers as the current rayon pool has.
    pub fn from_rayon() -> Self {
        Self::new(rayon::current_num_threads())
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// `dst[m,n] = lhs[m,k] · rhs[k,n]`, split over row blocks of `lhs`/`dst`.
    pub fn matmul(
        &self,
        lhs: ArrayView2<'_, f32>,
        rhs: ArrayView2<'_, f32>,
        mut dst: ArrayViewMut2<'_, f32>,
    ) {
        let m = lhs.dim().0;
        if m <= ROW_BLOCK {
            return gemm_serial(lhs, rhs, dst);
        }
        assert_eq!(
            dst.dim().0,
            m,
            "GEMM output rows {}, expected {m}",
            dst.dim().0
        );
        let blocks: Vec<(ArrayView2<'_, f32>, ArrayViewMut2<'_, f32>)> = lhs
            .axis_chunks_iter(Axis(0), ROW_BLOCK)
            .zip(dst.axis_chunks_iter_mut(Axis(0), ROW_BLOCK))
            .collect();
        if self.threads == 1 {
            blocks.into_iter().for_each(|(l, d)| gemm_serial(l, rhs, d));
        } else {
            blocks
                .into_par_iter()
                .for_each(|(l, d)| gemm_serial(l, rhs, d));
        }
    }

    /// `dst[k,n] = lhsᵀ · rhs` with `lhs` `[m,k]`, `rhs` `[m,n]` and `m` (the inner dimension) large:
    /// per-block partial products summed in block order.
    pub fn matmul_tn(
        &self,
        lhs: ArrayView2<'_, f32>,
        rhs: ArrayView2<'_, f32>,
        mut dst: ArrayViewMut2<'_, f32>,
    ) {
        let (m, k) = lhs.dim();
        let n = rhs.dim().1;
        assert_eq!(
            rhs.dim().0,
            m,
            "GEMM inner dimensions differ: lhsᵀ {:?}, rhs {:?}",
            lhs.t().dim(),
            rhs.dim()
        );
        if m <= ROW_BLOCK {
            return gemm_serial(lhs.t(), rhs, dst);
        }
        let blocks: Vec<_> = lhs
            .axis_chunks_iter(Axis(0), ROW_BLOCK)
            .zip(rhs.axis_chunks_iter(Axis(0), ROW_BLOCK))
            .collect();
        let partial = |(l, r): (ArrayView2<'_, f32>, ArrayView2<'_, f32>)| {
            let mut p = Array2::<f32>::zeros((k, n));
            gemm_serial(l.t(), r, p.view_mut());
            p
        };
        let parts: Vec<Array2<f32>> = if self.threads == 1 {
            blocks.into_iter().map(partial).collect()
        } else {
            blocks.into_par_iter().map(partial).collect()
        };
        let mut parts = parts.into_iter();
        match parts.next() {
            Some(first) => dst.assign(&first),
            None => dst.fill(0.0),
        }
        for p in parts {
            dst += &p;
        }
    }
}

impl Default for Fp32Gemm {
    fn default() -> Self {
        Self::from_rayon()
    }
}

impl GemmEngine for Fp32Gemm {
    fn forward(
        &mut self,
        _layer: LayerId<'_>,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        y: ArrayViewMut2<'_, f32>,
    ) {
        self.matmul(x, w, y);
    }

    fn backward_data(
        &mut self,
        _layer: LayerId<'_>,
        dy: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        dx: ArrayViewMut2<'_, f32>,
    ) {
        self.matmul(dy, w.t(), dx);
    }

    fn backward_weight(
        &mut self,
        _layer: LayerId<'_>,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        dw: ArrayViewMut2<'_, f32>,
    ) {
        self.matmul_tn(x, dy, dw);
    }

    fn as_fp32(&self) -> Option<&Fp32Gemm> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        let (m, k) = a.dim();
        let n = b.dim().1;
        Array2::from_shape_fn((m, n), |(i, j)| {
            (0..k)
                .map(|p| a[[i, p]] as f64 * b[[p, j]] as f64)
                .sum::<f64>() as f32
        })
    }

    #[test]
    fn three_gemms_match_naive() {
        // More than two row blocks, so the parallel split and the partial sums are exercised.
        let (m, k, n) = (2 * ROW_BLOCK + 37, 19, 11);
        let x = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 13) as f32 - 6.0);
        let w = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 11) % 17) as f32 * 0.25 - 2.0);
        let dy = Array2::from_shape_fn((m, n), |(i, j)| ((i + 2 * j) % 7) as f32 - 3.0);
        for threads in [1, 2] {
            let mut g = Fp32Gemm::new(threads);
            let mut y = Array2::from_elem((m, n), f32::NAN);
            g.forward("t", x.view(), w.view(), y.view_mut());
            assert_eq!(y, naive(&x, &w));
            let mut dx = Array2::from_elem((m, k), f32::NAN);
            g.backward_data("t", dy.view(), w.view(), dx.view_mut());
            assert_eq!(dx, naive(&dy, &w.t().to_owned()));
            let mut dw = Array2::from_elem((k, n), f32::NAN);
            g.backward_weight("t", x.view(), dy.view(), dw.view_mut());
            let want = naive(&x.t().to_owned(), &dy);
            assert!(
                dw.iter()
                    .zip(want.iter())
                    .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0))
            );
        }
    }

    #[test]
    fn empty_inner_dimension_gives_zeros() {
        let mut g = Fp32Gemm::new(1);
        let x = Array2::<f32>::zeros((3, 0));
        let w = Array2::<f32>::zeros((0, 2));
        let mut y = Array2::from_elem((3, 2), 5.0);
        g.forward("t", x.view(), w.view(), y.view_mut());
        assert!(y.iter().all(|&v| v == 0.0));
    }
}
