//! Data sets for e2train: readers for the IDX format (MNIST, Fashion-MNIST; gzip or raw) and the
//! CIFAR-10 binary format, per-channel statistics, seeded shuffling, mini-batching and CIFAR-style
//! augmentation on `u8` pixels.
//!
//! Invariants:
//! - A [`Split`] holds `N x C x H x W` bytes (sample-major, CHW inside a sample) and `N` labels, every
//!   label `< classes`. The readers check this; no reader panics on any file content.
//! - Every error names the file (or the folders searched) and what was expected.
//! - Everything random is a pure function of `(seed, epoch, batch index)` (see [`batch`]), so a run
//!   resumed in the middle of an epoch sees exactly the batches an uninterrupted run would.

pub mod batch;
pub mod cifar;
pub mod idx;

pub use batch::{EpochPlan, augment_sample, derive_seed, epoch_order};

use e2t_core::InputShape;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";
/// Environment variable naming a data folder (used when `--data` is not given).
pub const DATA_ENV: &str = "E2TRAIN_DATA";

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a valid gzip stream ({source})", path.display())]
    Gzip {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("{} and {}: {reason}", images.display(), labels.display())]
    Mismatch {
        images: PathBuf,
        labels: PathBuf,
        reason: String,
    },
    #[error("data set '{name}' not found. Looked in:\n{looked}\n{hint}")]
    NotFound {
        name: String,
        looked: String,
        hint: String,
    },
    #[error("unknown data set '{0}': expected fashion-mnist, mnist or cifar10")]
    UnknownName(String),
}

impl DataError {
    pub(crate) fn format(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The data sets e2train knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetName {
    FashionMnist,
    Mnist,
    Cifar10,
}

impl DatasetName {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Mnist => "mnist",
            DatasetName::Cifar10 => "cifar10",
        }
    }
    pub fn shape(self) -> InputShape {
        match self {
            DatasetName::FashionMnist | DatasetName::Mnist => InputShape {
                channels: 1,
                height: 28,
                width: 28,
            },
            DatasetName::Cifar10 => InputShape {
                channels: 3,
                height: 32,
                width: 32,
            },
        }
    }
    pub fn classes(self) -> u32 {
        10
    }
    /// What to tell a user who does not have the files.
    fn install_hint(self) -> String {
        match self {
            DatasetName::FashionMnist => format!(
                "Install it with `sudo apt-get install dataset-fashion-mnist` (or run scripts/setup.sh), or pass \
                 --data DIR (or set {DATA_ENV}) to a folder holding train-images-idx3-ubyte[.gz], \
                 train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]."
            ),
            DatasetName::Mnist => format!(
                "MNIST has no default location: pass --data DIR (or set {DATA_ENV}) to a folder holding \
                 train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and \
                 t10k-labels-idx1-ubyte[.gz]."
            ),
            DatasetName::Cifar10 => format!(
                "CIFAR-10 has no default location: pass --data DIR (or set {DATA_ENV}) to a folder holding the \
                 binary version (data_batch_1.bin .. data_batch_5.bin and test_batch.bin, as unpacked from \
                 cifar-10-binary.tar.gz)."
            ),
        }
    }
    /// Sub-folder names tried under a data root.
    fn subdirs(self) -> &'static [&'static str] {
        match self {
            DatasetName::FashionMnist => &["fashion-mnist", "fashion_mnist", "FashionMNIST"],
            DatasetName::Mnist => &["mnist", "MNIST"],
            DatasetName::Cifar10 => &["cifar10", "cifar-10-batches-bin"],
        }
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetName {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "fashion-mnist" | "fashionmnist" | "fmnist" => Ok(DatasetName::FashionMnist),
            "mnist" => Ok(DatasetName::Mnist),
            "cifar10" | "cifar-10" => Ok(DatasetName::Cifar10),
            _ => Err(DataError::UnknownName(s.to_string())),
        }
    }
}

/// One split of a data set: `N x C x H x W` pixel bytes (sample-major) and `N` labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Keep only the first `n` samples (all of them if `n >= len`). The files are already in a
    /// class-mixed order, so a prefix is a fair quick-run subset and needs no RNG.
    pub fn truncate(&mut self, n: usize, pixels: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * pixels);
        }
    }
}

/// A loaded data set.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Canonical name (`fashion-mnist`, `mnist`, `cifar10`).
    pub name: String,
    pub shape: InputShape,
    pub classes: u32,
    pub train: Split,
    pub test: Split,
}

impl Dataset {
    /// Keep the first `train` training samples and the first `test` test samples (`None` keeps all).
    pub fn subset(mut self, train: Option<usize>, test: Option<usize>) -> Dataset {
        let px = self.shape.pixels();
        if let Some(n) = train {
            self.train.truncate(n, px);
        }
        if let Some(n) = test {
            self.test.truncate(n, px);
        }
        self
    }

    /// Per-channel mean and standard deviation of the training images, in units of `u8 / 255`
    /// (what [`e2t_core::EngineConfig`] expects). Sums are exact integers, so the result does not
    /// depend on summation order.
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        channel_stats(&self.train, self.shape)
    }
}

/// Per-channel mean and (population) standard deviation of a split, in units of `u8 / 255`.
/// A split with no samples gives mean 0 and std 1 (a neutral normalisation).
pub fn channel_stats(split: &Split, shape: InputShape) -> (Vec<f32>, Vec<f32>) {
    let c = shape.channels as usize;
    let plane = shape.height as usize * shape.width as usize;
    let mut sum = vec![0u64; c];
    let mut sq = vec![0u64; c];
    if plane > 0 && c > 0 {
        for sample in split.images.chunks_exact(c * plane) {
            for (ch, p) in sample.chunks_exact(plane).enumerate() {
                let (mut s, mut q) = (0u64, 0u64);
                for &v in p {
                    s += v as u64;
                    q += (v as u64) * (v as u64);
                }
                sum[ch] += s;
                sq[ch] += q;
            }
        }
    }
    let n = (split.len() * plane) as f64;
    let mut mean = Vec::with_capacity(c);
    let mut std = Vec::with_capacity(c);
    for ch in 0..c {
        if n == 0.0 {
            mean.push(0.0);
            std.push(1.0);
            continue;
        }
        let m = sum[ch] as f64 / n / 255.0;
        let var = (sq[ch] as f64 / n / (255.0 * 255.0) - m * m).max(0.0);
        mean.push(m as f32);
        // A constant channel would divide by zero on the engine side.
        std.push(if var > 0.0 { var.sqrt() as f32 } else { 1.0 });
    }
    (mean, std)
}

/// The folders that would be searched for `name`, in order: `--data DIR` alone when given (an
/// explicit choice is never silently replaced by another folder), otherwise `$E2TRAIN_DATA` and then
/// the Debian location (Fashion-MNIST only). Each root is tried as is and with the data set's usual
/// sub-folder names.
pub fn search_dirs(name: DatasetName, data_dir: Option<&Path>, env: Option<&Path>) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(d) = data_dir {
        roots.push(d.to_path_buf());
    } else {
        if let Some(e) = env {
            roots.push(e.to_path_buf());
        }
        if name == DatasetName::FashionMnist {
            roots.push(PathBuf::from(DEBIAN_FASHION_MNIST));
        }
    }
    let mut dirs = Vec::new();
    for r in roots {
        dirs.push(r.clone());
        for s in name.subdirs() {
            dirs.push(r.join(s));
        }
    }
    dirs
}

/// Load a data set by name, locating it as [`search_dirs`] describes (`$E2TRAIN_DATA` is read here).
pub fn load(name: DatasetName, data_dir: Option<&Path>) -> Result<Dataset, DataError> {
    let env = std::env::var_os(DATA_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    load_from(name, data_dir, env.as_deref())
}

/// [`load`] with the environment value passed in (for tests and callers that resolved it already).
pub fn load_from(
    name: DatasetName,
    data_dir: Option<&Path>,
    env: Option<&Path>,
) -> Result<Dataset, DataError> {
    let dirs = search_dirs(name, data_dir, env);
    let mut looked = Vec::new();
    for dir in &dirs {
        if !dir.is_dir() {
            looked.push(format!("  {}: no such folder", dir.display()));
            continue;
        }
        match name {
            DatasetName::FashionMnist | DatasetName::Mnist => match idx::find_files(dir) {
                Ok(files) => return idx::load_dataset(name, &files),
                Err(missing) => looked.push(format!(
                    "  {}: missing {}",
                    dir.display(),
                    missing.join(", ")
                )),
            },
            DatasetName::Cifar10 => match cifar::find_files(dir) {
                Ok(files) => return cifar::load_dataset(&files),
                Err(missing) => looked.push(format!(
                    "  {}: missing {}",
                    dir.display(),
                    missing.join(", ")
                )),
            },
        }
    }
    if dirs.is_empty() {
        looked.push("  (nowhere: no --data and no $E2TRAIN_DATA given)".to_string());
    }
    Err(DataError::NotFound {
        name: name.to_string(),
        looked: looked.join("\n"),
        hint: name.install_hint(),
    })
}

/// Check that every label is below `classes`.
pub(crate) fn check_labels(path: &Path, labels: &[u8], classes: u32) -> Result<(), DataError> {
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| **l as u32 >= classes)
    {
        return Err(DataError::format(
            path,
            format!(
                "label {l} at index {i} is out of range: expected 0..{} ({classes} classes)",
                classes - 1
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            "fashion-mnist".parse::<DatasetName>().unwrap(),
            DatasetName::FashionMnist
        );
        assert_eq!(
            "Fashion_MNIST".parse::<DatasetName>().unwrap(),
            DatasetName::FashionMnist
        );
        assert_eq!(
            "cifar-10".parse::<DatasetName>().unwrap(),
            DatasetName::Cifar10
        );
        assert_eq!("mnist".parse::<DatasetName>().unwrap(), DatasetName::Mnist);
        let e = "imagenet".parse::<DatasetName>().unwrap_err().to_string();
        assert!(e.contains("imagenet") && e.contains("fashion-mnist"), "{e}");
    }

    #[test]
    fn stats_are_exact_per_channel() {
        let shape = InputShape {
            channels: 2,
            height: 1,
            width: 2,
        };
        // Channel 0: 0, 255, 0, 255 -> mean 0.5, std 0.5. Channel 1: constant 51 -> mean 0.2, std 1 (guard).
        let split = Split {
            images: vec![0, 255, 51, 51, 0, 255, 51, 51],
            labels: vec![0, 1],
        };
        let (m, s) = channel_stats(&split, shape);
        assert!(
            (m[0] - 0.5).abs() < 1e-6 && (s[0] - 0.5).abs() < 1e-6,
            "{m:?} {s:?}"
        );
        assert!((m[1] - 0.2).abs() < 1e-6 && s[1] == 1.0, "{m:?} {s:?}");
        let (m, s) = channel_stats(&Split::default(), shape);
        assert_eq!((m, s), (vec![0.0, 0.0], vec![1.0, 1.0]));
    }

    #[test]
    fn subset_keeps_prefix() {
        let shape = InputShape {
            channels: 1,
            height: 1,
            width: 2,
        };
        let split = Split {
            images: vec![1, 2, 3, 4, 5, 6],
            labels: vec![7, 8, 9],
        };
        let d = Dataset {
            name: "t".into(),
            shape,
            classes: 10,
            train: split.clone(),
            test: split,
        };
        let d = d.subset(Some(2), Some(10));
        assert_eq!(
            d.train,
            Split {
                images: vec![1, 2, 3, 4],
                labels: vec![7, 8]
            }
        );
        assert_eq!(d.test.len(), 3);
    }

    #[test]
    fn search_order() {
        let d = search_dirs(
            DatasetName::FashionMnist,
            Some(Path::new("/x")),
            Some(Path::new("/e")),
        );
        assert_eq!(d[0], PathBuf::from("/x"));
        assert!(
            d.iter().all(|p| p.starts_with("/x")),
            "explicit --data is the only root: {d:?}"
        );
        let d = search_dirs(DatasetName::FashionMnist, None, Some(Path::new("/e")));
        assert_eq!(d[0], PathBuf::from("/e"));
        assert!(d.contains(&PathBuf::from(DEBIAN_FASHION_MNIST)));
        assert!(search_dirs(DatasetName::Mnist, None, None).is_empty());
    }

    #[test]
    fn missing_dataset_names_places_and_install_command() {
        let tmp = tempfile::tempdir().unwrap();
        let e = load_from(DatasetName::FashionMnist, Some(tmp.path()), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&tmp.path().display().to_string()), "{e}");
        assert!(e.contains("missing train-images-idx3-ubyte"), "{e}");
        assert!(e.contains("fashion-mnist: no such folder"), "{e}");
        assert!(
            e.contains("sudo apt-get install dataset-fashion-mnist"),
            "{e}"
        );
        assert!(e.contains("scripts/setup.sh"), "{e}");
        let e = load_from(DatasetName::Mnist, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--data"), "{e}");
        let e = load_from(DatasetName::Cifar10, Some(tmp.path()), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
    }
}
