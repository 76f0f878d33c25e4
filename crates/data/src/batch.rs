//! Seeded shuffling, mini-batching and CIFAR-style augmentation (pad 4 + random crop, horizontal flip)
//! on `u8` pixels.
//!
//! Every random choice comes from a fresh `ChaCha8Rng` seeded by [`derive_seed`]`(seed, tag, epoch,
//! batch)`, so batch `b` of epoch `e` is the same whether or not the run was interrupted before it,
//! and no RNG state needs saving.

use crate::Split;
use e2t_core::InputShape;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Tag of the per-epoch shuffle stream.
pub const TAG_SHUFFLE: u64 = 0x5348_5546; // "SHUF"
/// Tag of the per-batch augmentation stream.
pub const TAG_AUGMENT: u64 = 0x4155_474d; // "AUGM"
/// Padding of the random crop, in pixels (the CIFAR recipe).
pub const PAD: usize = 4;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A seed for one purpose (`tag`) at one position (`a`, `b`), mixed so that neighbouring positions
/// give unrelated streams.
pub fn derive_seed(seed: u64, tag: u64, a: u64, b: u64) -> u64 {
    let mut h = splitmix64(seed);
    for v in [tag, a, b] {
        h = splitmix64(h ^ v);
    }
    h
}

/// The RNG for one purpose at one position.
pub fn rng_for(seed: u64, tag: u64, a: u64, b: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(seed, tag, a, b))
}

/// The sample order of epoch `epoch`: a permutation of `0..n`, a pure function of `(n, seed, epoch)`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng_for(seed, TAG_SHUFFLE, epoch, 0));
    order
}

/// Write the augmented version of one CHW sample `src` into `dst`: the sample is zero-padded by
/// [`PAD`] on every side, cropped back to `H x W` at offset `(dy, dx)` (each in `0..=2*PAD`), then
/// mirrored left-right if `flip`.
pub fn augment_sample(
    src: &[u8],
    dst: &mut [u8],
    shape: InputShape,
    dy: usize,
    dx: usize,
    flip: bool,
) {
    let (c, h, w) = (
        shape.channels as usize,
        shape.height as usize,
        shape.width as usize,
    );
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let out = &mut dst[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            // Source row of output row y (in padded coordinates y + dy, minus the pad).
            let sy = (y + dy).wrapping_sub(PAD);
            for x in 0..w {
                let cx = if flip { w - 1 - x } else { x };
                let sx = (cx + dx).wrapping_sub(PAD);
                out[y * w + x] = if sy < h && sx < w {
                    plane[sy * w + sx]
                } else {
                    0
                };
            }
        }
    }
}

/// One epoch of mini-batches over a split: shuffled order, fixed batch size (the last batch may be
/// smaller), optional augmentation.
#[derive(Debug)]
pub struct EpochPlan<'a> {
    split: &'a Split,
    shape: InputShape,
    order: Vec<usize>,
    batch: usize,
    augment: bool,
    seed: u64,
    epoch: u64,
}

impl<'a> EpochPlan<'a> {
    /// `batch` of 0 is treated as 1 (callers validate user input before this).
    pub fn new(
        split: &'a Split,
        shape: InputShape,
        batch: usize,
        seed: u64,
        epoch: u64,
        augment: bool,
    ) -> Self {
        EpochPlan {
            split,
            shape,
            order: epoch_order(split.len(), seed, epoch),
            batch: batch.max(1),
            augment,
            seed,
            epoch,
        }
    }

    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch)
    }

    /// Sample indices of batch `i` (empty past the end).
    pub fn indices(&self, i: usize) -> &[usize] {
        let a = (i * self.batch).min(self.order.len());
        let b = (a + self.batch).min(self.order.len());
        &self.order[a..b]
    }

    /// Pixels (`n x C x H x W`) and labels of batch `i`, augmented if the plan says so.
    pub fn batch(&self, i: usize) -> (Vec<u8>, Vec<u8>) {
        let px = self.shape.pixels();
        let idx = self.indices(i);
        let mut images = vec![0u8; idx.len() * px];
        let labels: Vec<u8> = idx.iter().map(|&s| self.split.labels[s]).collect();
        let mut rng = self
            .augment
            .then(|| rng_for(self.seed, TAG_AUGMENT, self.epoch, i as u64));
        for (k, &s) in idx.iter().enumerate() {
            let src = &self.split.images[s * px..(s + 1) * px];
            let dst = &mut images[k * px..(k + 1) * px];
            match rng.as_mut() {
                Some(r) => {
                    let dy = r.random_range(0..=2 * PAD);
                    let dx = r.random_range(0..=2 * PAD);
                    let flip = r.random_bool(0.5);
                    augment_sample(src, dst, self.shape, dy, dx, flip);
                }
                None => dst.copy_from_slice(src),
            }
        }
        (images, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_seeded_permutation() {
        let a = epoch_order(100, 7, 0);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 7, 0), "same seed and epoch, same order");
        assert_ne!(a, epoch_order(100, 7, 1), "epochs differ");
        assert_ne!(a, epoch_order(100, 8, 0), "seeds differ");
        assert_ne!(a, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn augmentation_identity_shift_and_flip() {
        let shape = InputShape {
            channels: 2,
            height: 3,
            width: 3,
        };
        let src: Vec<u8> = (1..=18).collect();
        let mut dst = vec![0; 18];
        augment_sample(&src, &mut dst, shape, PAD, PAD, false);
        assert_eq!(dst, src, "centre crop without flip is the identity");
        augment_sample(&src, &mut dst, shape, PAD, PAD, true);
        assert_eq!(&dst[..9], &[3, 2, 1, 6, 5, 4, 9, 8, 7]);
        // Crop one pixel down and right: content moves up-left, zeros enter at the bottom/right.
        augment_sample(&src, &mut dst, shape, PAD + 1, PAD + 1, false);
        assert_eq!(&dst[..9], &[5, 6, 0, 8, 9, 0, 0, 0, 0]);
        assert_eq!(&dst[9..], &[14, 15, 0, 17, 18, 0, 0, 0, 0]);
        // Fully shifted out.
        augment_sample(&src, &mut dst, shape, 0, 0, false);
        assert!(dst.iter().all(|&v| v == 0));
    }

    #[test]
    fn batches_cover_the_epoch_and_are_reproducible() {
        let shape = InputShape {
            channels: 1,
            height: 2,
            width: 2,
        };
        let n = 10;
        let split = Split {
            images: (0..n * 4).map(|i| (i / 4) as u8).collect(),
            labels: (0..n as u8).collect(),
        };
        let plan = EpochPlan::new(&split, shape, 4, 3, 2, false);
        assert_eq!(plan.num_batches(), 3);
        let mut seen = Vec::new();
        for b in 0..plan.num_batches() {
            let (im, lab) = plan.batch(b);
            assert_eq!(im.len(), lab.len() * 4);
            for (k, &l) in lab.iter().enumerate() {
                assert!(
                    im[k * 4..k * 4 + 4].iter().all(|&p| p == l),
                    "pixels follow their label"
                );
            }
            seen.extend(lab);
        }
        assert_eq!(seen.len(), n);
        seen.sort();
        assert_eq!(seen, (0..n as u8).collect::<Vec<_>>());
        assert!(plan.indices(3).is_empty());

        let aug = EpochPlan::new(&split, shape, 4, 3, 2, true);
        let again = EpochPlan::new(&split, shape, 4, 3, 2, true);
        assert_eq!(aug.batch(1), again.batch(1), "augmentation is seeded");
        assert_eq!(
            aug.batch(1).1,
            plan.batch(1).1,
            "augmentation keeps labels and order"
        );
    }

    #[test]
    fn augmentation_varies_across_batches() {
        let shape = InputShape {
            channels: 1,
            height: 8,
            width: 8,
        };
        let n = 64;
        let split = Split {
            images: (0..n * 64).map(|i| (i % 64) as u8 + 1).collect(),
            labels: vec![0; n],
        };
        let plan = EpochPlan::new(&split, shape, n, 1, 0, true);
        let (im, _) = plan.batch(0);
        let distinct: std::collections::HashSet<&[u8]> = im.chunks(64).collect();
        assert!(
            distinct.len() > 10,
            "81 x 2 crops/flips should give many variants, got {}",
            distinct.len()
        );
    }
}
