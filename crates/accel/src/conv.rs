//! Convolutions as im2col GEMMs on quantized codes.
//!
//! The GEMM operand of a convolution is the im2col matrix of its NHWC input (one row per output
//! position, columns `(ky·k + kx)·C + c`, zeros for padding). Quantization is element-wise and maps 0
//! to 0, and the per-tensor exponent depends only on max|x| over the matrix, which is max|x| over the
//! input elements some patch reads (padding adds zeros). So quantizing the input once and gathering
//! 16-bit codes gives exactly the codes of quantizing the fp32 im2col matrix, at a ninth of the
//! quantization work and half the memory traffic; the codes are then kept for the weight gradient.

use rayon::prelude::*;

/// A square-kernel convolution on an NHWC input `[n, h, w, c]` (standard layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Im2colGeom {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Im2colGeom {
    /// Output height and width; `None` when the kernel does not fit the padded input or the stride
    /// is 0.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let side = |s: usize| {
            (self.stride > 0 && self.k > 0 && s + 2 * self.pad >= self.k)
                .then(|| (s + 2 * self.pad - self.k) / self.stride + 1)
        };
        Some((side(self.h)?, side(self.w)?))
    }
    /// Rows (`n·ho·wo`) and columns (`k·k·c`) of the im2col matrix.
    pub fn matrix(&self) -> Option<(usize, usize)> {
        let (ho, wo) = self.out_hw()?;
        Some((self.n * ho * wo, self.k * self.k * self.c))
    }
    pub(crate) fn input_len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    /// The im2col matrix is the input itself (1x1, stride 1, no padding).
    pub(crate) fn is_identity(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    /// Which input positions along a side of length `s` some patch reads.
    fn covered(&self, s: usize, out: usize) -> Vec<bool> {
        let mut cov = vec![false; s];
        for o in 0..out {
            for t in 0..self.k {
                let i = (o * self.stride + t) as isize - self.pad as isize;
                if (0..s as isize).contains(&i) {
                    cov[i as usize] = true;
                }
            }
        }
        cov
    }
}

/// max|x| (finite values, as `e2t_numerics::max_abs_finite`) over the input elements that appear in
/// the im2col matrix: equal to max|x| of the matrix itself. `x` holds `g.input_len()` values.
pub(crate) fn covered_max_abs(x: &[f32], g: &Im2colGeom) -> f32 {
    let Some((ho, wo)) = g.out_hw() else {
        return 0.0;
    };
    let (cy, cx) = (g.covered(g.h, ho), g.covered(g.w, wo));
    let c = g.c;
    let full = cy.iter().all(|&v| v) && cx.iter().all(|&v| v);
    let chunk = 1 << 14;
    if full || c == 0 {
        return x
            .par_chunks(chunk)
            .map(e2t_numerics::max_abs_finite)
            .reduce(|| 0.0, f32::max);
    }
    // Some rows or columns are never read (e.g. a 1x1 stride-2 shortcut): per image, only the
    // covered pixels' channel vectors.
    x.par_chunks(g.h * g.w * c)
        .map(|img| {
            let mut m = 0.0f32;
            for (iy, _) in cy.iter().enumerate().filter(|(_, v)| **v) {
                for (ix, _) in cx.iter().enumerate().filter(|(_, v)| **v) {
                    let px = &img[(iy * g.w + ix) * c..][..c];
                    m = m.max(e2t_numerics::max_abs_finite(px));
                }
            }
            m
        })
        .reduce(|| 0.0, f32::max)
}

/// im2col of codes: `out` becomes the `[n·ho·wo, k·k·c]` row-major code matrix of `xq` (codes of an
/// NHWC input), zeros where a patch reads padding.
pub(crate) fn im2col_codes(xq: &[i16], g: &Im2colGeom, out: &mut Vec<i16>) {
    let Some((ho, wo)) = g.out_hw() else {
        out.clear();
        return;
    };
    let (h, w, c, k) = (g.h, g.w, g.c, g.k);
    let kk = k * k * c;
    let per = ho * wo * kk;
    // Every entry is written below (padding explicitly), so old contents need no clearing.
    out.resize(g.n * per, 0);
    if per == 0 || h * w * c == 0 {
        out.fill(0);
        return;
    }
    out.par_chunks_mut(per)
        .zip(xq.par_chunks(h * w * c))
        .for_each(|(chunk, xb)| {
            for oy in 0..ho {
                for ox in 0..wo {
                    let row = &mut chunk[(oy * wo + ox) * kk..][..kk];
                    // The patch columns kx with `ix` inside the input are one run `lo..hi`, and
                    // their channel vectors are adjacent in NHWC: one copy per kernel row.
                    let ix0 = (ox * g.stride) as isize - g.pad as isize;
                    let lo = (-ix0).clamp(0, k as isize) as usize;
                    let hi = (w as isize - ix0).clamp(lo as isize, k as isize) as usize;
                    for ky in 0..k {
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        let dst = &mut row[ky * k * c..][..k * c];
                        if (0..h as isize).contains(&iy) && lo < hi {
                            let src = (iy as usize * w + (ix0 + lo as isize) as usize) * c;
                            // (Empty fills skipped: each would still be a memset call.)
                            if lo > 0 {
                                dst[..lo * c].fill(0);
                            }
                            copy_codes(&mut dst[lo * c..hi * c], &xb[src..src + (hi - lo) * c]);
                            if hi < k {
                                dst[hi * c..].fill(0);
                            }
                        } else {
                            dst.fill(0);
                        }
                    }
                }
            }
        });
}

/// `dst.copy_from_slice(src)` for the short runs of im2col (3 to 192 codes), in 16-code pieces
/// instead of a `memcpy` call per run.
#[inline(always)]
fn copy_codes(dst: &mut [i16], src: &[i16]) {
    let mut d16 = dst.chunks_exact_mut(16);
    let mut s16 = src.chunks_exact(16);
    for (d, s) in (&mut d16).zip(&mut s16) {
        let d: &mut [i16; 16] = d.try_into().expect("16 codes");
        *d = *<&[i16; 16]>::try_from(s).expect("16 codes");
    }
    for (d, s) in d16.into_remainder().iter_mut().zip(s16.remainder()) {
        *d = *s;
    }
}

/// The quantized input of a convolution (NHWC codes, per tensor), kept from the forward pass so that
/// the weight gradient does not quantize the same activations again.
#[derive(Clone, Debug)]
pub struct ConvCodes {
    pub(crate) codes: Vec<i16>,
    pub(crate) geom: Im2colGeom,
    /// max|x| over the matrix (chooses the exponent of either code format).
    pub(crate) max_abs: f32,
    pub(crate) exp: i32,
    /// Codes of an 8-bit tensor (INT8 forward); the INT16 weight gradient needs 16-bit codes.
    pub(crate) eight: bool,
}

impl ConvCodes {
    /// The convolution these codes are the input of.
    pub fn geom(&self) -> Im2colGeom {
        self.geom
    }
    /// The INT16 per-tensor codes the weight gradient uses (not an INT8 forward's 8-bit codes):
    /// then `AccelGemm::conv_backward_weight_from_codes` needs no fp32 input.
    pub fn is_int16(&self) -> bool {
        !self.eight
    }
}

/// im2col on floats, the plain way.
#[cfg(test)]
pub(crate) fn im2col_f32(x: &[f32], g: &Im2colGeom) -> Vec<f32> {
    let (ho, wo) = g.out_hw().unwrap();
    let kk = g.k * g.k * g.c;
    let mut out = vec![0.0; g.n * ho * wo * kk];
    for b in 0..g.n {
        for oy in 0..ho {
            for ox in 0..wo {
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        for ch in 0..g.c {
                            out[((b * ho + oy) * wo + ox) * kk + (ky * g.k + kx) * g.c + ch] =
                                x[((b * g.h + iy as usize) * g.w + ix as usize) * g.c + ch];
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn covered_max_and_code_im2col_equal_the_plain_matrix() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        for (k, stride, pad, h) in [
            (3, 1, 1, 6),
            (3, 2, 1, 7),
            (1, 2, 0, 6),
            (1, 1, 0, 5),
            (3, 3, 0, 8),
        ] {
            let g = Im2colGeom {
                n: 3,
                h,
                w: h + 1,
                c: 4,
                k,
                stride,
                pad,
            };
            let mut x: Vec<f32> = (0..g.input_len())
                .map(|_| rng.random::<f32>() - 0.5)
                .collect();
            // A large value on a pixel a strided 1x1 kernel never reads (odd row and column).
            let far = ((g.h + 1) * g.w + 1) * g.c;
            x[far] = 100.0;
            let cols = im2col_f32(&x, &g);
            assert_eq!(
                covered_max_abs(&x, &g),
                e2t_numerics::max_abs_finite(&cols),
                "k {k} stride {stride} pad {pad}"
            );
            let e = e2t_numerics::choose_exp(e2t_numerics::max_abs_finite(&cols));
            let xq = e2t_numerics::quantize_with_exp(&x, e);
            let mut got = vec![7i16; 3]; // stale contents are overwritten
            im2col_codes(&xq, &g, &mut got);
            assert_eq!(got, e2t_numerics::quantize_with_exp(&cols, e));
            got.iter_mut().for_each(|v| *v = -5);
            im2col_codes(&xq, &g, &mut got);
            assert_eq!(got, e2t_numerics::quantize_with_exp(&cols, e));
        }
    }
}
