//! The bit-exact golden GEMM: one processing element's arithmetic, applied entry by entry.
//!
//! Deliberately simple (a triple loop that wraps after every MAC, exactly as a 48-bit accumulator
//! does); fast models are checked against it, never the other way round.

use crate::NumericsError;
use e2t_core::Mode;

/// Accumulator width (the DSP48E1 P register).
pub const ACC_BITS: u32 = 48;
/// Smallest accumulator value, `-2^47`.
pub const ACC_MIN: i64 = -(1 << (ACC_BITS - 1));
/// Largest accumulator value, `2^47 - 1`.
pub const ACC_MAX: i64 = (1 << (ACC_BITS - 1)) - 1;
/// Largest requantization shift accepted (a shift of 47 already maps every accumulator to -1, 0 or 1).
pub const MAX_SHIFT: u32 = ACC_BITS - 1;

/// Reduce to 48-bit two's complement: keep the low 48 bits and sign-extend.
#[inline]
pub fn wrap48(x: i64) -> i64 {
    (x << (64 - ACC_BITS)) >> (64 - ACC_BITS)
}

/// The value a PE multiplies for a code in `mode`: the code itself (INT16) or its high byte, the
/// arithmetic shift `code >> 8` (INT8; rounds toward minus infinity).
#[inline]
pub fn operand(code: i16, mode: Mode) -> i32 {
    match mode {
        Mode::Int16 => code as i32,
        Mode::Int8 => (code >> 8) as i32,
    }
}

/// One exact product of two codes in `mode`.
#[inline]
pub fn pe_product(a: i16, b: i16, mode: Mode) -> i64 {
    operand(a, mode) as i64 * operand(b, mode) as i64
}

/// One multiply-accumulate into a 48-bit accumulator (wraps).
#[inline]
pub fn mac(acc: i64, a: i16, b: i16, mode: Mode) -> i64 {
    wrap48(acc + pe_product(a, b, mode))
}

pub(crate) fn check_len(
    what: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
) -> Result<(), NumericsError> {
    match rows.checked_mul(cols) {
        Some(expected) if expected == len => Ok(()),
        _ => Err(NumericsError::Shape {
            what,
            rows,
            cols,
            len,
        }),
    }
}

/// `C[m,n] = A[m,k] · B[k,n]` on codes in `mode`, row-major operands, 48-bit wrapping accumulators
/// (returned sign-extended in i64).
pub fn gemm_ref(
    a: &[i16],
    b: &[i16],
    m: usize,
    k: usize,
    n: usize,
    mode: Mode,
) -> Result<Vec<i64>, NumericsError> {
    check_len("A", a.len(), m, k)?;
    check_len("B", b.len(), k, n)?;
    let mut c = vec![0i64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0i64;
            for p in 0..k {
                acc = mac(acc, a[i * k + p], b[p * n + j], mode);
            }
            c[i * n + j] = acc;
        }
    }
    Ok(c)
}

/// Output requantization: arithmetic right shift by `shift` with round-half-up (ties toward plus
/// infinity), then saturation to i16. `acc` is a 48-bit accumulator value; the rounding addition is
/// done without wrapping. `shift = 0` only saturates.
pub fn requantize(acc: i64, shift: u32) -> Result<i16, NumericsError> {
    if shift > MAX_SHIFT {
        return Err(NumericsError::Shift {
            shift,
            max: MAX_SHIFT,
        });
    }
    Ok(requantize_unchecked(acc, shift))
}

/// [`requantize`] for a shift already checked to be at most [`MAX_SHIFT`].
#[inline]
pub fn requantize_unchecked(acc: i64, shift: u32) -> i16 {
    let r = if shift == 0 {
        acc
    } else {
        (acc + (1i64 << (shift - 1))) >> shift
    };
    r.clamp(i16::MIN as i64, i16::MAX as i64) as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wrap48_boundaries() {
        assert_eq!(wrap48(ACC_MAX), ACC_MAX);
        assert_eq!(wrap48(ACC_MAX + 1), ACC_MIN);
        assert_eq!(wrap48(ACC_MIN - 1), ACC_MAX);
        assert_eq!(wrap48(1 << 48), 0);
        assert_eq!(wrap48(-1), -1);
    }

    #[test]
    fn pe_extremes() {
        assert_eq!(pe_product(-32768, -32768, Mode::Int16), 1 << 30);
        assert_eq!(pe_product(-32768, 32767, Mode::Int16), -32768 * 32767);
        assert_eq!(pe_product(-32768, -32768, Mode::Int8), 128 * 128);
        assert_eq!(pe_product(32767, 32767, Mode::Int8), 127 * 127);
        // High byte is floor(code / 256): -1 -> -1, 255 -> 0.
        assert_eq!(pe_product(-1, 256, Mode::Int8), -1);
        assert_eq!(pe_product(255, 256, Mode::Int8), 0);
    }

    #[test]
    fn small_gemm_by_hand() {
        // [1 2; 3 4] x [5 6; 7 8] = [19 22; 43 50]
        let c = gemm_ref(&[1, 2, 3, 4], &[5, 6, 7, 8], 2, 2, 2, Mode::Int16).unwrap();
        assert_eq!(c, vec![19, 22, 43, 50]);
        let a8 = [256, 512, 768, 1024];
        let b8 = [5 << 8, 6 << 8, 7 << 8, 8 << 8];
        assert_eq!(
            gemm_ref(&a8, &b8, 2, 2, 2, Mode::Int8).unwrap(),
            vec![19, 22, 43, 50]
        );
        assert!(gemm_ref(&[1, 2, 3], &[5, 6, 7, 8], 2, 2, 2, Mode::Int16).is_err());
        assert_eq!(
            gemm_ref(&[], &[], 0, 0, 0, Mode::Int16).unwrap(),
            Vec::<i64>::new()
        );
        // K = 0 gives zero accumulators.
        assert_eq!(
            gemm_ref(&[], &[], 2, 0, 1, Mode::Int16).unwrap(),
            vec![0, 0]
        );
    }

    #[test]
    fn accumulator_wraps_past_2_pow_47() {
        // (-32768)^2 = 2^30; 2^17 of them reach 2^47, which wraps to -2^47.
        let k = 1usize << 17;
        let a = vec![-32768i16; k];
        let c = gemm_ref(&a, &a, 1, k, 1, Mode::Int16).unwrap();
        assert_eq!(c, vec![ACC_MIN]);
        let c = gemm_ref(&a[..k - 1], &a[..k - 1], 1, k - 1, 1, Mode::Int16).unwrap();
        assert_eq!(c, vec![ACC_MAX - (1 << 30) + 1]);
    }

    #[test]
    fn requantize_rounding_and_saturation() {
        assert_eq!(requantize(5, 1).unwrap(), 3); // 2.5 -> 3
        assert_eq!(requantize(-5, 1).unwrap(), -2); // -2.5 -> -2 (half up)
        assert_eq!(requantize(-6, 2).unwrap(), -1); // -1.5 -> -1
        assert_eq!(requantize(-7, 2).unwrap(), -2); // -1.75 -> -2
        assert_eq!(requantize(1 << 20, 4).unwrap(), 32767);
        assert_eq!(requantize(-(1 << 20), 4).unwrap(), -32768);
        assert_eq!(requantize(ACC_MAX, 47).unwrap(), 1);
        assert_eq!(requantize(ACC_MIN, 47).unwrap(), -1);
        assert_eq!(requantize(40000, 0).unwrap(), 32767);
        assert!(requantize(0, 48).is_err());
    }

    proptest! {
        #[test]
        fn wrap48_is_mod_2_pow_48(x in any::<i64>()) {
            let w = wrap48(x);
            prop_assert!((ACC_MIN..=ACC_MAX).contains(&w));
            prop_assert_eq!((x as i128 - w as i128).rem_euclid(1i128 << 48), 0);
        }

        #[test]
        fn wrapping_each_mac_equals_wrapping_once(codes in prop::collection::vec(any::<(i16, i16)>(), 0..200), start in ACC_MIN..=ACC_MAX) {
            let mut acc = start;
            let mut exact = start as i128;
            for &(a, b) in &codes {
                acc = mac(acc, a, b, Mode::Int16);
                exact += a as i128 * b as i128;
            }
            let expect = (exact + (1i128 << 47)).rem_euclid(1i128 << 48) - (1i128 << 47);
            prop_assert_eq!(acc as i128, expect);
        }

        #[test]
        fn requantize_matches_rational_rounding(acc in ACC_MIN..=ACC_MAX, shift in 0u32..=47) {
            let q = requantize(acc, shift).unwrap();
            // floor(acc / 2^s + 1/2), computed in i128 rationals, then saturated.
            let d = 1i128 << shift;
            let r = (2 * acc as i128 + d).div_euclid(2 * d);
            prop_assert_eq!(q as i128, r.clamp(-32768, 32767));
        }
    }
}
