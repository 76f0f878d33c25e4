//! The CIFAR-10 binary format: records of 1 label byte followed by 3072 pixel bytes (1024 red,
//! 1024 green, 1024 blue, each row-major 32 x 32), i.e. already CHW. Training data is
//! `data_batch_1.bin` .. `data_batch_5.bin`, test data `test_batch.bin`.

use crate::{DataError, Dataset, DatasetName, Split, check_labels};
use std::path::{Path, PathBuf};

pub const PIXELS: usize = 3 * 32 * 32;
pub const RECORD: usize = 1 + PIXELS;
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILE: &str = "test_batch.bin";

/// Parse one CIFAR-10 binary file's bytes and append its records to `split`.
pub fn parse_into(bytes: &[u8], path: &Path, split: &mut Split) -> Result<(), DataError> {
    if bytes.is_empty() {
        return Err(DataError::format(
            path,
            "empty file: expected records of 3073 bytes (1 label + 3072 pixels)",
        ));
    }
    if bytes.len() % RECORD != 0 {
        return Err(DataError::format(
            path,
            format!(
                "size {} is not a multiple of the 3073-byte record (1 label + 3072 pixels): {} whole records and \
                 {} stray bytes (truncated or not a CIFAR-10 binary file?)",
                bytes.len(),
                bytes.len() / RECORD,
                bytes.len() % RECORD
            ),
        ));
    }
    let n = bytes.len() / RECORD;
    let labels: Vec<u8> = bytes.chunks_exact(RECORD).map(|r| r[0]).collect();
    check_labels(path, &labels, DatasetName::Cifar10.classes())?;
    split.labels.extend_from_slice(&labels);
    split.images.reserve(n * PIXELS);
    for r in bytes.chunks_exact(RECORD) {
        split.images.extend_from_slice(&r[1..]);
    }
    Ok(())
}

/// Read one file into a new split.
pub fn read_file(path: &Path) -> Result<Split, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let mut s = Split::default();
    parse_into(&bytes, path, &mut s)?;
    Ok(s)
}

/// The six files of CIFAR-10.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CifarFiles {
    pub train: Vec<PathBuf>,
    pub test: PathBuf,
}

/// Find the six files in `dir`; on failure returns the names that are missing.
pub fn find_files(dir: &Path) -> Result<CifarFiles, Vec<String>> {
    let missing: Vec<String> = TRAIN_FILES
        .iter()
        .chain([&TEST_FILE])
        .filter(|f| !dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    if missing.is_empty() {
        Ok(CifarFiles {
            train: TRAIN_FILES.iter().map(|f| dir.join(f)).collect(),
            test: dir.join(TEST_FILE),
        })
    } else {
        Err(missing)
    }
}

pub fn load_dataset(f: &CifarFiles) -> Result<Dataset, DataError> {
    let mut train = Split::default();
    for p in &f.train {
        let bytes = std::fs::read(p).map_err(|e| DataError::io(p, e))?;
        parse_into(&bytes, p, &mut train)?;
    }
    let test = read_file(&f.test)?;
    let name = DatasetName::Cifar10;
    Ok(Dataset {
        name: name.to_string(),
        shape: name.shape(),
        classes: name.classes(),
        train,
        test,
    })
}

/// Encode records (label, 3072 pixels) in the binary format (for tests and small tools).
pub fn encode(labels: &[u8], images: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * RECORD);
    for (l, px) in labels.iter().zip(images.chunks_exact(PIXELS)) {
        out.push(*l);
        out.extend_from_slice(px);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize, base: u8) -> (Vec<u8>, Vec<u8>) {
        let labels: Vec<u8> = (0..n).map(|i| ((i + base as usize) % 10) as u8).collect();
        let images: Vec<u8> = (0..n * PIXELS).map(|i| (i % 251) as u8 ^ base).collect();
        (labels, images)
    }

    #[test]
    fn generated_cifar10_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).unwrap();
        let mut all = Split::default();
        for (i, f) in TRAIN_FILES.iter().enumerate() {
            let (l, im) = records(i + 1, i as u8);
            std::fs::write(sub.join(f), encode(&l, &im)).unwrap();
            all.labels.extend(l);
            all.images.extend(im);
        }
        let (tl, ti) = records(3, 9);
        std::fs::write(sub.join(TEST_FILE), encode(&tl, &ti)).unwrap();
        let d = crate::load_from(DatasetName::Cifar10, Some(tmp.path()), None).unwrap();
        assert_eq!(d.name, "cifar10");
        assert_eq!(d.shape.pixels(), PIXELS);
        assert_eq!(d.train, all);
        assert_eq!(
            d.test,
            Split {
                images: ti,
                labels: tl
            }
        );
        let (m, s) = d.channel_stats();
        assert_eq!((m.len(), s.len()), (3, 3));
    }

    #[test]
    fn corrupt_cifar_files() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("data_batch_1.bin");
        let (l, im) = records(2, 0);
        let good = encode(&l, &im);

        std::fs::write(&p, &good[..good.len() - 5]).unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_1.bin") && e.contains("not a multiple"),
            "{e}"
        );

        std::fs::write(&p, []).unwrap();
        assert!(read_file(&p).unwrap_err().to_string().contains("empty"));

        let mut bad = good.clone();
        bad[RECORD] = 200;
        std::fs::write(&p, &bad).unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("label 200 at index 1"), "{e}");

        // A missing training file is named.
        let e = crate::load_from(DatasetName::Cifar10, Some(tmp.path()), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data_batch_2.bin") && e.contains("test_batch.bin"),
            "{e}"
        );
    }
}
