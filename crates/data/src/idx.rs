//! The IDX format of the MNIST family: `00 00 <type> <ndims>`, then `ndims` big-endian `u32`
//! sizes, then the items. Only unsigned-byte items (type `0x08`) occur in these data sets. Files
//! may be gzip-compressed (detected by the gzip magic, not by the file name).

use crate::{DataError, Dataset, DatasetName, Split, check_labels};
use e2t_core::InputShape;
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A parsed IDX file of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Read a file, gunzipping it if it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len().saturating_mul(4));
        MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Gzip {
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn type_name(t: u8) -> &'static str {
    match t {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "short",
        0x0C => "int",
        0x0D => "float",
        0x0E => "double",
        _ => "unknown",
    }
}

/// Parse IDX bytes (already decompressed). `path` is only used in error messages.
pub fn parse(mut bytes: Vec<u8>, path: &Path) -> Result<Idx, DataError> {
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!(
                "truncated: {} bytes, shorter than the 4-byte IDX magic",
                bytes.len()
            ),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::format(
            path,
            format!(
                "wrong magic {:02x} {:02x} {:02x} {:02x}: an IDX file starts with 00 00 <type> <ndims>",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    let ty = bytes[2];
    if ty != 0x08 {
        return Err(DataError::format(
            path,
            format!(
                "IDX element type 0x{ty:02x} ({}) is not supported: expected 0x08 (unsigned byte)",
                type_name(ty)
            ),
        ));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err(DataError::format(path, "IDX header declares 0 dimensions"));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            format!(
                "truncated: the header needs {header} bytes for {ndims} dimensions, the file has {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let items = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let have = bytes.len() - header;
    match items {
        Some(n) if n == have => {}
        Some(n) if n > have => {
            return Err(DataError::format(
                path,
                format!(
                    "truncated: the header declares dimensions {dims:?} ({n} bytes of data) but the file holds {have}"
                ),
            ));
        }
        Some(n) => {
            return Err(DataError::format(
                path,
                format!(
                    "{} bytes beyond the {n} bytes of data that the header's dimensions {dims:?} declare",
                    have - n
                ),
            ));
        }
        None => {
            return Err(DataError::format(
                path,
                format!("header dimensions {dims:?} overflow"),
            ));
        }
    }
    bytes.drain(..header);
    Ok(Idx { dims, data: bytes })
}

/// Read an IDX image file (`N x H x W`, one channel).
pub fn read_images(path: &Path) -> Result<(usize, InputShape, Vec<u8>), DataError> {
    let idx = parse(read_maybe_gz(path)?, path)?;
    if idx.dims.len() != 3 {
        return Err(DataError::format(
            path,
            format!(
                "expected an image file with 3 dimensions (N x H x W), found {} ({:?})",
                idx.dims.len(),
                idx.dims
            ),
        ));
    }
    let (h, w) = (idx.dims[1], idx.dims[2]);
    if h == 0 || w == 0 || h > u32::MAX as usize || w > u32::MAX as usize {
        return Err(DataError::format(
            path,
            format!("image size {h} x {w} is not usable"),
        ));
    }
    Ok((
        idx.dims[0],
        InputShape {
            channels: 1,
            height: h as u32,
            width: w as u32,
        },
        idx.data,
    ))
}

/// Read an IDX label file (`N`), checking every label is below `classes`.
pub fn read_labels(path: &Path, classes: u32) -> Result<Vec<u8>, DataError> {
    let idx = parse(read_maybe_gz(path)?, path)?;
    if idx.dims.len() != 1 {
        return Err(DataError::format(
            path,
            format!(
                "expected a label file with 1 dimension, found {} ({:?})",
                idx.dims.len(),
                idx.dims
            ),
        ));
    }
    check_labels(path, &idx.data, classes)?;
    Ok(idx.data)
}

/// Read a matching image and label file into a split.
pub fn read_split(
    images: &Path,
    labels: &Path,
    classes: u32,
) -> Result<(InputShape, Split), DataError> {
    let (n, shape, px) = read_images(images)?;
    let lab = read_labels(labels, classes)?;
    if lab.len() != n {
        return Err(DataError::Mismatch {
            images: images.to_path_buf(),
            labels: labels.to_path_buf(),
            reason: format!("{n} images but {} labels", lab.len()),
        });
    }
    Ok((
        shape,
        Split {
            images: px,
            labels: lab,
        },
    ))
}

/// The four files of an IDX data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxFiles {
    pub train_images: PathBuf,
    pub train_labels: PathBuf,
    pub test_images: PathBuf,
    pub test_labels: PathBuf,
}

/// Find `train-images-idx3-ubyte`, ... in `dir` (each may end in `.gz`; the `train-images.idx3-ubyte`
/// spelling is accepted too). On failure returns the names that are missing.
pub fn find_files(dir: &Path) -> Result<IdxFiles, Vec<String>> {
    let mut missing = Vec::new();
    let mut find = |prefix: &str, kind: &str, ext: &str| -> Option<PathBuf> {
        let names = [
            format!("{prefix}-{kind}-{ext}.gz"),
            format!("{prefix}-{kind}-{ext}"),
            format!("{prefix}-{kind}.{ext}.gz"),
            format!("{prefix}-{kind}.{ext}"),
        ];
        let hit = names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
        if hit.is_none() {
            missing.push(format!("{prefix}-{kind}-{ext}[.gz]"));
        }
        hit
    };
    let f = (
        find("train", "images", "idx3-ubyte"),
        find("train", "labels", "idx1-ubyte"),
        find("t10k", "images", "idx3-ubyte"),
        find("t10k", "labels", "idx1-ubyte"),
    );
    match f {
        (Some(train_images), Some(train_labels), Some(test_images), Some(test_labels)) => {
            Ok(IdxFiles {
                train_images,
                train_labels,
                test_images,
                test_labels,
            })
        }
        _ => Err(missing),
    }
}

/// Load both splits; the image size of the test split must match the training split's.
pub fn load_dataset(name: DatasetName, f: &IdxFiles) -> Result<Dataset, DataError> {
    let classes = name.classes();
    let (shape, train) = read_split(&f.train_images, &f.train_labels, classes)?;
    let (tshape, test) = read_split(&f.test_images, &f.test_labels, classes)?;
    if tshape != shape {
        return Err(DataError::Mismatch {
            images: f.train_images.clone(),
            labels: f.test_images.clone(),
            reason: format!(
                "training images are {}x{} but test images are {}x{}",
                shape.height, shape.width, tshape.height, tshape.width
            ),
        });
    }
    Ok(Dataset {
        name: name.to_string(),
        shape,
        classes,
        train,
        test,
    })
}

/// Encode an IDX file of unsigned bytes (used by tests and by tools that write small data sets).
pub fn encode(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    /// A tiny 4x3 data set: `n` images whose pixels encode (sample, position); labels `i % 10`.
    fn write_set(dir: &Path, prefix: &str, n: u32, gzip: bool) -> (Vec<u8>, Vec<u8>) {
        let px: Vec<u8> = (0..n * 12).map(|i| (i * 7 % 256) as u8).collect();
        let lab: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let (img, l) = (encode(&[n, 4, 3], &px), encode(&[n], &lab));
        let (img, l, ext) = if gzip {
            (gz(&img), gz(&l), ".gz")
        } else {
            (img, l, "")
        };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), img).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), l).unwrap();
        (px, lab)
    }

    #[test]
    fn generated_files_round_trip_raw_and_gzip() {
        for gzip in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let (px, lab) = write_set(tmp.path(), "train", 7, gzip);
            let (tpx, tlab) = write_set(tmp.path(), "t10k", 3, gzip);
            let d = crate::load_from(DatasetName::Mnist, Some(tmp.path()), None).unwrap();
            assert_eq!(
                d.shape,
                InputShape {
                    channels: 1,
                    height: 4,
                    width: 3
                }
            );
            assert_eq!((d.train.images, d.train.labels), (px, lab));
            assert_eq!((d.test.images, d.test.labels), (tpx, tlab));
            assert_eq!(d.name, "mnist");
        }
    }

    #[test]
    fn found_in_subfolder_via_env() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("mnist");
        std::fs::create_dir(&sub).unwrap();
        write_set(&sub, "train", 2, true);
        write_set(&sub, "t10k", 2, false);
        let d = crate::load_from(DatasetName::Mnist, None, Some(tmp.path())).unwrap();
        assert_eq!(d.train.len(), 2);
    }

    fn err_of(bytes: Vec<u8>, labels: bool) -> String {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("bad-file");
        std::fs::write(&p, bytes).unwrap();
        let e = if labels {
            read_labels(&p, 10).map(|_| ())
        } else {
            read_images(&p).map(|_| ())
        };
        let e = e.unwrap_err().to_string();
        assert!(e.contains("bad-file"), "error must name the file: {e}");
        e
    }

    #[test]
    fn corrupt_files_give_clear_errors() {
        // Wrong magic.
        assert!(err_of(vec![1, 2, 8, 1, 0, 0, 0, 0], true).contains("wrong magic"));
        // Unsupported element type.
        assert!(err_of(vec![0, 0, 0x0D, 1, 0, 0, 0, 0], true).contains("0x0d"));
        // Shorter than the magic, shorter than the header.
        assert!(err_of(vec![0, 0], true).contains("truncated"));
        assert!(err_of(vec![0, 0, 8, 3, 0, 0, 0, 1], false).contains("truncated"));
        // Count larger than the data (truncated) and smaller (trailing bytes).
        let mut b = encode(&[5, 2, 2], &[0; 20]);
        b.truncate(b.len() - 3);
        assert!(err_of(b, false).contains("truncated"));
        assert!(err_of(encode(&[2], &[1, 2, 3]), true).contains("beyond"));
        // Wrong dimensionality for the role.
        assert!(err_of(encode(&[2, 1, 1], &[1, 2]), true).contains("1 dimension"));
        assert!(err_of(encode(&[2], &[1, 2]), false).contains("3 dimensions"));
        // Zero-sized images.
        assert!(err_of(encode(&[2, 0, 3], &[]), false).contains("not usable"));
        // Label out of range.
        let e = err_of(encode(&[3], &[1, 10, 2]), true);
        assert!(e.contains("label 10 at index 1"), "{e}");
        // Huge declared dimensions do not allocate or overflow.
        let mut h = vec![0, 0, 8, 3];
        for _ in 0..3 {
            h.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let e = err_of(h, false);
        assert!(e.contains("truncated") || e.contains("overflow"), "{e}");
        // Bad gzip: valid header, garbage body; and a truncated gzip stream.
        let e = err_of(
            vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff],
            true,
        );
        assert!(e.contains("gzip"), "{e}");
        let mut g = gz(&encode(&[100], &[1; 100]));
        g.truncate(g.len() / 2);
        assert!(err_of(g, true).contains("gzip"));
    }

    #[test]
    fn mismatched_counts_and_shapes() {
        let tmp = tempfile::tempdir().unwrap();
        write_set(tmp.path(), "train", 4, false);
        write_set(tmp.path(), "t10k", 2, false);
        std::fs::write(
            tmp.path().join("t10k-labels-idx1-ubyte"),
            encode(&[3], &[1, 2, 3]),
        )
        .unwrap();
        let e = crate::load_from(DatasetName::Mnist, Some(tmp.path()), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 images but 3 labels") && e.contains("t10k-images-idx3-ubyte"),
            "{e}"
        );

        std::fs::write(
            tmp.path().join("t10k-labels-idx1-ubyte"),
            encode(&[1], &[1]),
        )
        .unwrap();
        std::fs::write(
            tmp.path().join("t10k-images-idx3-ubyte"),
            encode(&[1, 2, 2], &[0; 4]),
        )
        .unwrap();
        let e = crate::load_from(DatasetName::Mnist, Some(tmp.path()), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("4x3") && e.contains("2x2"), "{e}");
    }

    #[test]
    fn real_fashion_mnist() {
        let dir = Path::new(crate::DEBIAN_FASHION_MNIST);
        if find_files(dir).is_err() {
            eprintln!(
                "SKIPPED real_fashion_mnist: files absent in {} (sudo apt-get install dataset-fashion-mnist)",
                dir.display()
            );
            return;
        }
        let d = crate::load_from(DatasetName::FashionMnist, None, None).unwrap();
        assert_eq!(d.name, "fashion-mnist");
        assert_eq!(
            d.shape,
            InputShape {
                channels: 1,
                height: 28,
                width: 28
            }
        );
        assert_eq!((d.train.len(), d.test.len()), (60_000, 10_000));
        assert_eq!(d.train.images.len(), 60_000 * 784);
        // Balanced classes: 6000 per class in train, 1000 in test.
        for (split, per) in [(&d.train, 6000), (&d.test, 1000)] {
            let mut count = [0usize; 10];
            split.labels.iter().for_each(|&l| count[l as usize] += 1);
            assert!(count.iter().all(|&c| c == per), "{count:?}");
        }
        // Known statistics of Fashion-MNIST's training images: mean 0.2860, std 0.3530.
        let (m, s) = d.channel_stats();
        assert!(
            (m[0] - 0.2860).abs() < 5e-4 && (s[0] - 0.3530).abs() < 5e-4,
            "{m:?} {s:?}"
        );
    }
}
