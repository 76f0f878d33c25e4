//! Power monitors: the ZC706's UCD90120A through Linux hwmon, or none (simulation).
//!
//! Read-only by design: this module only reads sysfs attributes and never issues PMBus writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use e2t_core::{PowerSample, Rail};

/// Something that samples supply rails. A missing reading is `None`, never zero.
pub trait PowerMonitor: Send {
    fn rails(&self) -> Vec<Rail>;
    /// One sample per rail, timestamped on the board's monotonic clock.
    fn sample(&mut self) -> Vec<PowerSample>;
}

/// No measurement (simulation: the energy model estimates instead).
pub struct NoPower;

impl PowerMonitor for NoPower {
    fn rails(&self) -> Vec<Rail> {
        Vec::new()
    }
    fn sample(&mut self) -> Vec<PowerSample> {
        Vec::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error(
        "no hwmon device named 'ucd9000' under {0} (is the ucd9000 driver bound to the UCD90120A at 0x65?)"
    )]
    NotFound(PathBuf),
    #[error("hwmon device {0} has no voltage or current channel for any ZC706 rail")]
    NoRails(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The UCD90120A's pages in the ZC706 order (page 0 first). The ucd9000 driver labels its channels
/// `vout<page+1>` / `iout<page+1>` unless the device tree names them; named labels take precedence.
pub const ZC706_PAGES: [Rail; 5] = [
    Rail::VccInt,
    Rail::VccAux,
    Rail::Vcc1v5,
    Rail::Vadj,
    Rail::Vcc3v3,
];

struct Channel {
    rail: Rail,
    volt: Option<PathBuf>,
    curr: Option<PathBuf>,
}

/// Reads `in*_input` (mV) and `curr*_input` (mA) of the `ucd9000` hwmon device.
pub struct HwmonUcd9000 {
    dir: PathBuf,
    channels: Vec<Channel>,
    epoch: Instant,
}

fn rail_of_label(label: &str, prefix: &str) -> Option<Rail> {
    let l = label.trim().to_ascii_uppercase();
    let named = [
        ("VCCINT", Rail::VccInt),
        ("VCCAUX", Rail::VccAux),
        ("1V5", Rail::Vcc1v5),
        ("VADJ", Rail::Vadj),
        ("3V3", Rail::Vcc3v3),
    ];
    if let Some((_, r)) = named.iter().find(|(k, _)| l.contains(k)) {
        return Some(*r);
    }
    let n: usize = l.strip_prefix(prefix)?.parse().ok()?;
    ZC706_PAGES.get(n.checked_sub(1)?).copied()
}

impl HwmonUcd9000 {
    /// Find the device under `root` (normally `/sys/class/hwmon`).
    pub fn discover(root: &Path) -> Result<Self, PowerError> {
        let rd = fs::read_dir(root).map_err(|source| PowerError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let mut dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for d in dirs {
            let name = fs::read_to_string(d.join("name")).unwrap_or_default();
            if name.trim() == "ucd9000" {
                return Self::open(&d);
            }
        }
        Err(PowerError::NotFound(root.to_path_buf()))
    }

    /// Use one hwmon directory.
    pub fn open(dir: &Path) -> Result<Self, PowerError> {
        let rd = fs::read_dir(dir).map_err(|source| PowerError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        let mut channels: Vec<Channel> = Vec::new();
        for n in &names {
            let (kind, prefix) = if n.starts_with("in") && n.ends_with("_label") {
                ("in", "VOUT")
            } else if n.starts_with("curr") && n.ends_with("_label") {
                ("curr", "IOUT")
            } else {
                continue;
            };
            let label = fs::read_to_string(dir.join(n)).unwrap_or_default();
            let Some(rail) = rail_of_label(&label, prefix) else {
                continue;
            };
            let input = dir.join(n.replace("_label", "_input"));
            let idx = match channels.iter().position(|c| c.rail == rail) {
                Some(i) => i,
                None => {
                    channels.push(Channel {
                        rail,
                        volt: None,
                        curr: None,
                    });
                    channels.len() - 1
                }
            };
            if kind == "in" {
                channels[idx].volt = Some(input);
            } else {
                channels[idx].curr = Some(input);
            }
        }
        if channels.is_empty() {
            return Err(PowerError::NoRails(dir.to_path_buf()));
        }
        channels.sort_by_key(|c| ZC706_PAGES.iter().position(|r| *r == c.rail));
        Ok(HwmonUcd9000 {
            dir: dir.to_path_buf(),
            channels,
            epoch: Instant::now(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn read_milli(p: &Option<PathBuf>) -> Option<u32> {
    // hwmon reports millivolts / milliamps as decimal integers; anything else is a missing sample.
    let s = fs::read_to_string(p.as_ref()?).ok()?;
    let v: i64 = s.trim().parse().ok()?;
    u32::try_from(v).ok()
}

impl PowerMonitor for HwmonUcd9000 {
    fn rails(&self) -> Vec<Rail> {
        self.channels.iter().map(|c| c.rail).collect()
    }
    fn sample(&mut self) -> Vec<PowerSample> {
        let t_ns = self.epoch.elapsed().as_nanos() as u64;
        self.channels
            .iter()
            .map(|c| PowerSample {
                t_ns,
                rail: c.rail,
                millivolts: read_milli(&c.volt),
                milliamps: read_milli(&c.curr),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(d: &Path, f: &str, s: &str) {
        fs::write(d.join(f), s).unwrap();
    }

    #[test]
    fn finds_the_ucd9000_and_maps_rails() {
        let root = tempfile::tempdir().unwrap();
        let other = root.path().join("hwmon0");
        fs::create_dir(&other).unwrap();
        write(&other, "name", "coretemp\n");
        let d = root.path().join("hwmon1");
        fs::create_dir(&d).unwrap();
        write(&d, "name", "ucd9000\n");
        // in1 is the input supply in the pmbus core; vout1.. are pages 0..
        write(&d, "in1_label", "vin\n");
        write(&d, "in1_input", "12000\n");
        write(&d, "in2_label", "vout1\n");
        write(&d, "in2_input", "1002\n");
        write(&d, "curr1_label", "iout1\n");
        write(&d, "curr1_input", "2150\n");
        write(&d, "in3_label", "vout2\n");
        write(&d, "in3_input", "1799\n");
        // VCCAUX has no current file; VADJ is named by the device tree and its input is garbage.
        write(&d, "in4_label", "VADJ_FPGA\n");
        write(&d, "in4_input", "n/a\n");
        // A label for a channel whose input file is missing.
        write(&d, "in5_label", "vout5\n");
        let mut m = HwmonUcd9000::discover(root.path()).unwrap();
        assert_eq!(m.dir(), d.as_path());
        assert_eq!(
            m.rails(),
            vec![Rail::VccInt, Rail::VccAux, Rail::Vadj, Rail::Vcc3v3]
        );
        let s = m.sample();
        assert_eq!((s[0].millivolts, s[0].milliamps), (Some(1002), Some(2150)));
        assert_eq!((s[1].millivolts, s[1].milliamps), (Some(1799), None));
        assert_eq!(
            (s[2].millivolts, s[2].milliamps),
            (None, None),
            "garbage is missing, not zero"
        );
        assert_eq!(
            (s[3].millivolts, s[3].milliamps),
            (None, None),
            "missing file is missing, not zero"
        );
        // Files that disappear later also give None.
        fs::remove_file(d.join("in2_input")).unwrap();
        assert_eq!(m.sample()[0].millivolts, None);
    }

    #[test]
    fn clear_errors_without_the_device() {
        let root = tempfile::tempdir().unwrap();
        let e = HwmonUcd9000::discover(root.path()).err().unwrap();
        assert!(e.to_string().contains("ucd9000"), "{e}");
        let d = root.path().join("hwmon0");
        fs::create_dir(&d).unwrap();
        write(&d, "name", "ucd9000");
        let e = HwmonUcd9000::discover(root.path()).err().unwrap();
        assert!(matches!(e, PowerError::NoRails(_)), "{e}");
        let e = HwmonUcd9000::discover(&root.path().join("nope"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn no_power_has_no_samples() {
        assert!(NoPower.sample().is_empty());
        assert!(NoPower.rails().is_empty());
    }
}
