//! Atomic file replacement: write a temporary file in the same folder, fsync it, rename it over the
//! target, fsync the folder. A reader (or a crash, or Ctrl-C) sees the old file whole or the new
//! file whole, never a mix.

use crate::HostError;
use std::io::Write;
use std::path::Path;

/// Prefix of the temporary files (stale ones from a killed process are removed by [`clean_stale`]).
pub const TMP_PREFIX: &str = ".e2t-tmp-";

/// Replace `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HostError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)
        .map_err(|e| HostError::io(dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| HostError::io(tmp.path(), e))?;
    // Temporary files are created private (0600); run files are ordinary readable results.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let perm = std::fs::Permissions::from_mode(0o644);
        tmp.as_file()
            .set_permissions(perm)
            .map_err(|e| HostError::io(tmp.path(), e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| HostError::io(tmp.path(), e))?;
    // On error the temporary file is deleted when `tmp` drops.
    tmp.persist(path)
        .map_err(|e| HostError::io(path, e.error))?;
    // Make the rename itself durable. Opening a folder for fsync is not possible everywhere; the
    // rename has happened either way, so a failure here is not an error.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Remove temporary files a killed process left in `dir`.
pub fn clean_stale(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_whole_and_leaves_no_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.csv");
        std::fs::write(&p, vec![b'x'; 10_000]).unwrap();
        write_atomic(&p, b"short").unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"short",
            "an existing longer file is replaced whole"
        );
        write_atomic(&p, b"").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"");
        assert_eq!(names(tmp.path()), vec!["a.csv"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn errors_name_the_path_and_clean_up() {
        let tmp = tempfile::tempdir().unwrap();
        let e = write_atomic(&tmp.path().join("missing/dir/f"), b"x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing/dir"), "{e}");
        // Target is a folder: the rename fails, the temporary file is removed.
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/inner"), b"x").unwrap();
        assert!(write_atomic(&tmp.path().join("d"), b"x").is_err());
        assert_eq!(names(tmp.path()), vec!["d"]);
    }

    #[test]
    fn stale_temp_files_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(format!("{TMP_PREFIX}abc")), b"half").unwrap();
        std::fs::write(tmp.path().join("keep"), b"x").unwrap();
        clean_stale(tmp.path());
        assert_eq!(names(tmp.path()), vec!["keep"]);
    }
}
