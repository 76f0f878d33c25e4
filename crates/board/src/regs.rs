//! PL register access: the accelerator's AXI4-Lite CSR window, mapped from `/dev/mem` or a UIO
//! device on the board, or held in memory for tests. Offsets and bits come from `e2t-csr` (generated
//! from `rtl/pkg/e2t_pkg.sv`), so this driver cannot drift from the RTL.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use e2t_core::{Counters, Mode};
use e2t_csr as csr;
use e2t_numerics::cycles::ReuseGeom;

/// 32-bit register access at byte offsets inside one CSR window.
pub trait RegisterFile: Send {
    fn read32(&mut self, off: u32) -> u32;
    fn write32(&mut self, off: u32, v: u32);
}

/// Registers held in memory; records every write (the test double for the PL block).
pub struct MemRegisters {
    pub words: Vec<u32>,
    pub writes: Vec<(u32, u32)>,
}

impl MemRegisters {
    pub fn new(bytes: usize) -> Self {
        MemRegisters {
            words: vec![0; bytes / 4],
            writes: Vec::new(),
        }
    }
}

impl RegisterFile for MemRegisters {
    fn read32(&mut self, off: u32) -> u32 {
        self.words[(off / 4) as usize]
    }
    fn write32(&mut self, off: u32, v: u32) {
        self.writes.push((off, v));
        self.words[(off / 4) as usize] = v;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot map {len} bytes at {offset:#x} of {path}: {source}")]
    Map {
        path: PathBuf,
        offset: u64,
        len: usize,
        source: std::io::Error,
    },
    #[error(
        "no e2train accelerator at this window: ID reads {got:#010x}, expected {expected:#010x}"
    )]
    BadId { got: u32, expected: u32 },
    #[error("accelerator error code {code} (STATUS {status:#010x})")]
    Accel { code: u32, status: u32 },
    #[error("accelerator still busy after {polls} polls")]
    Timeout { polls: u64 },
}

/// A CSR window mapped with `mmap`: `/dev/mem` at the block's physical base, or `/dev/uioN` at 0.
/// Compiled everywhere; exercised only on the board.
pub struct MmapRegisters {
    ptr: *mut u32,
    len: usize,
    _file: std::fs::File,
}

// SAFETY: the mapping is owned by this value and only accessed through &mut self.
unsafe impl Send for MmapRegisters {}

impl MmapRegisters {
    pub fn open(path: &Path, offset: u64, len: usize) -> Result<Self, RegError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| RegError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        // SAFETY: a fresh shared mapping of a device file; checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(RegError::Map {
                path: path.to_path_buf(),
                offset,
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(MmapRegisters {
            ptr: p.cast(),
            len,
            _file: file,
        })
    }

    fn index(&self, off: u32) -> usize {
        let i = off as usize / 4;
        // A driver bug, not external input: offsets come from e2t-csr constants.
        assert!(
            off % 4 == 0 && (i + 1) * 4 <= self.len,
            "CSR offset {off:#x} outside the {}-byte window",
            self.len
        );
        i
    }
}

impl RegisterFile for MmapRegisters {
    fn read32(&mut self, off: u32) -> u32 {
        let i = self.index(off);
        // SAFETY: in bounds (checked), aligned, device memory needs volatile access.
        unsafe { self.ptr.add(i).read_volatile() }
    }
    fn write32(&mut self, off: u32, v: u32) {
        let i = self.index(off);
        // SAFETY: as above.
        unsafe { self.ptr.add(i).write_volatile(v) }
    }
}

impl Drop for MmapRegisters {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A thin driver over the CSR map.
pub struct AccelRegs<R> {
    pub regs: R,
    /// The bitstream's reuse-path geometry (`HWCFG2`), `None` before RTL v1.1 (no reuse path).
    pub reuse: Option<ReuseGeom>,
}

impl<R: RegisterFile> AccelRegs<R> {
    /// Check the ID register before touching anything else.
    pub fn new(mut regs: R) -> Result<Self, RegError> {
        let got = regs.read32(csr::CSR_ID);
        if got != csr::ID_VALUE {
            return Err(RegError::BadId {
                got,
                expected: csr::ID_VALUE,
            });
        }
        // The reuse path (and HWCFG2) arrived with v1.1; read the geometry the bitstream was built
        // with rather than assume the board default.
        let version = regs.read32(csr::CSR_VERSION);
        let reuse = (version >= 0x0001_0001).then(|| {
            let v = regs.read32(csr::CSR_HWCFG2);
            let field = |lsb: u32, w: u32| u64::from(v >> lsb & ((1 << w) - 1));
            ReuseGeom {
                words: field(csr::HWCFG2_RWS_LSB, csr::HWCFG2_RWS_W),
                q: field(csr::HWCFG2_Q_LSB, csr::HWCFG2_Q_W),
            }
        });
        Ok(AccelRegs { regs, reuse })
    }

    /// Queue one command (M x K times K x N) with a CMD_CFG word built by `e2t_csr::cmd_cfg`.
    pub fn push_command(&mut self, m: u32, n: u32, k: u32, cfg: u32) {
        self.regs.write32(csr::CSR_CMD_M, m);
        self.regs.write32(csr::CSR_CMD_N, n);
        self.regs.write32(csr::CSR_CMD_K, k);
        self.regs.write32(csr::CSR_CMD_CFG, cfg);
        self.regs.write32(csr::CSR_CMD_PUSH, 1);
    }

    /// Queue one `OP_GEMM` command. It takes the operand-reuse path (`CMD_CFG.REUSE`) whenever K
    /// fits this bitstream's reuse buffers (`ReuseGeom::fits` on `HWCFG2`, the rule the soft model
    /// counts with for `ReuseGeom::BOARD`), else the per-tile path; the operand stream must then follow that path's format
    /// (rtl/README.md). `out_fmt` and `shift` as in `e2t_csr::cmd_cfg`. Returns the CMD_CFG word.
    pub fn push_gemm(
        &mut self,
        m: u32,
        n: u32,
        k: u32,
        mode: Mode,
        out_fmt: u32,
        shift: u32,
    ) -> u32 {
        let mut cfg = csr::cmd_cfg(csr::OP_GEMM, mode == Mode::Int8, out_fmt, shift, false);
        if self
            .reuse
            .is_some_and(|g| g.words > 0 && g.fits(u64::from(k), mode))
        {
            cfg |= 1 << csr::CFG_REUSE_BIT;
        }
        self.push_command(m, n, k, cfg);
        cfg
    }

    /// Poll STATUS until not busy; report a sticky error with its code (and clear it).
    pub fn wait_idle(&mut self, max_polls: u64) -> Result<(), RegError> {
        for _ in 0..max_polls {
            let s = self.regs.read32(csr::CSR_STATUS);
            if s & (1 << csr::STATUS_ERROR_BIT) != 0 {
                let code = (s >> csr::STATUS_ERR_CODE_LSB) & ((1 << csr::STATUS_ERR_CODE_W) - 1);
                self.regs
                    .write32(csr::CSR_STATUS, 1 << csr::STATUS_ERROR_BIT);
                return Err(RegError::Accel { code, status: s });
            }
            if s & (1 << csr::STATUS_BUSY_BIT) == 0 {
                return Ok(());
            }
        }
        Err(RegError::Timeout { polls: max_polls })
    }

    /// One consistent snapshot of all counters (CTRL.CNT_SNAPSHOT, then LO/HI reads).
    pub fn counters(&mut self) -> Counters {
        self.regs
            .write32(csr::CSR_CTRL, 1 << csr::CTRL_CNT_SNAPSHOT_BIT);
        let mut words = [0u32; 2 * csr::NUM_COUNTERS as usize];
        for i in 0..csr::NUM_COUNTERS {
            words[2 * i as usize] = self.regs.read32(csr::counter_lo(i));
            words[2 * i as usize + 1] = self.regs.read32(csr::counter_hi(i));
        }
        csr::counters_from_words(&words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1.1 board build: RWS 256, Q 8.
    fn board() -> MemRegisters {
        let mut m = MemRegisters::new(4096);
        m.words[(csr::CSR_ID / 4) as usize] = csr::ID_VALUE;
        m.words[(csr::CSR_VERSION / 4) as usize] = csr::VERSION_VALUE;
        m.words[(csr::CSR_HWCFG2 / 4) as usize] =
            256 << csr::HWCFG2_RWS_LSB | 8 << csr::HWCFG2_Q_LSB;
        m
    }

    #[test]
    fn counters_are_snapshotted_then_assembled_from_lo_hi() {
        let mut m = board();
        let set = |m: &mut MemRegisters, i: u32, v: u64| {
            m.words[(csr::counter_lo(i) / 4) as usize] = v as u32;
            m.words[(csr::counter_hi(i) / 4) as usize] = (v >> 32) as u32;
        };
        set(&mut m, csr::CNT_TOTAL_CYCLES, 0x1_2345_6789);
        set(&mut m, csr::CNT_MACS_INT8, u64::MAX);
        set(&mut m, csr::CNT_GEMMS, 7);
        let mut a = AccelRegs::new(m).unwrap();
        let c = a.counters();
        assert_eq!(c.total_cycles, 0x1_2345_6789);
        assert_eq!(c.macs_int8, u64::MAX);
        assert_eq!(c.gemms, 7);
        assert_eq!(c.busy_cycles, 0);
        assert_eq!(
            a.regs.writes,
            vec![(csr::CSR_CTRL, 1 << csr::CTRL_CNT_SNAPSHOT_BIT)]
        );
    }

    #[test]
    fn commands_write_the_csrs_in_order_and_errors_are_reported() {
        let mut a = AccelRegs::new(board()).unwrap();
        let cfg = csr::cmd_cfg(csr::OP_GEMM, true, 0, 3, false);
        a.push_command(16, 32, 64, cfg);
        assert_eq!(
            a.regs.writes,
            vec![
                (csr::CSR_CMD_M, 16),
                (csr::CSR_CMD_N, 32),
                (csr::CSR_CMD_K, 64),
                (csr::CSR_CMD_CFG, cfg),
                (csr::CSR_CMD_PUSH, 1)
            ]
        );
        assert!(a.wait_idle(3).is_ok());
        a.regs.words[(csr::CSR_STATUS / 4) as usize] = 1 << csr::STATUS_BUSY_BIT;
        assert!(matches!(
            a.wait_idle(3),
            Err(RegError::Timeout { polls: 3 })
        ));
        a.regs.words[(csr::CSR_STATUS / 4) as usize] =
            (1 << csr::STATUS_ERROR_BIT) | (5 << csr::STATUS_ERR_CODE_LSB);
        let e = a.wait_idle(3).unwrap_err();
        assert!(matches!(e, RegError::Accel { code: 5, .. }), "{e}");
    }

    #[test]
    fn gemms_take_the_reuse_path_when_k_fits_the_board_buffers() {
        let mut a = AccelRegs::new(board()).unwrap();
        let reuse = 1 << csr::CFG_REUSE_BIT;
        // Board build: RWS 256 words of 4 INT16 / 8 INT8 codes, so K <= 1024 / 2048.
        assert_eq!(a.push_gemm(16, 16, 1024, Mode::Int16, 0, 3,) & reuse, reuse);
        assert_eq!(a.push_gemm(16, 16, 1025, Mode::Int16, 0, 3) & reuse, 0);
        assert_eq!(a.push_gemm(16, 16, 2048, Mode::Int8, 1, 0) & reuse, reuse);
        assert_eq!(a.push_gemm(16, 16, 2049, Mode::Int8, 1, 0) & reuse, 0);
        assert_eq!(a.reuse, Some(ReuseGeom::BOARD));
        let cfg = a.push_gemm(4, 8, 12, Mode::Int8, 1, 0);
        assert_eq!(cfg, csr::cmd_cfg(csr::OP_GEMM, true, 1, 0, false) | reuse);
        assert_eq!(
            a.regs.writes[a.regs.writes.len() - 5..],
            [
                (csr::CSR_CMD_M, 4),
                (csr::CSR_CMD_N, 8),
                (csr::CSR_CMD_K, 12),
                (csr::CSR_CMD_CFG, cfg),
                (csr::CSR_CMD_PUSH, 1)
            ]
        );
    }

    #[test]
    fn the_reuse_choice_follows_the_bitstreams_geometry() {
        let reuse = 1 << csr::CFG_REUSE_BIT;
        // A test build with RWS 16: K = 100 INT16 exceeds its 64-term buffers.
        let mut m = board();
        m.words[(csr::CSR_HWCFG2 / 4) as usize] =
            16 << csr::HWCFG2_RWS_LSB | 2 << csr::HWCFG2_Q_LSB;
        let mut a = AccelRegs::new(m).unwrap();
        assert_eq!(a.push_gemm(16, 16, 64, Mode::Int16, 0, 0) & reuse, reuse);
        assert_eq!(a.push_gemm(16, 16, 100, Mode::Int16, 0, 0) & reuse, 0);
        // v1.0 has no reuse path (and no HWCFG2): never set the bit.
        let mut m = board();
        m.words[(csr::CSR_VERSION / 4) as usize] = 0x0001_0000;
        let mut a = AccelRegs::new(m).unwrap();
        assert_eq!(a.reuse, None);
        assert_eq!(a.push_gemm(16, 16, 8, Mode::Int16, 0, 0) & reuse, 0);
    }

    #[test]
    fn wrong_id_is_refused() {
        let e = AccelRegs::new(MemRegisters::new(4096)).err().unwrap();
        assert!(e.to_string().contains("0xe2a00001"), "{e}");
    }

    #[test]
    fn mapping_a_missing_device_names_it() {
        let e = MmapRegisters::open(Path::new("/dev/e2t-no-uio"), 0, 4096)
            .err()
            .unwrap();
        assert!(e.to_string().contains("/dev/e2t-no-uio"), "{e}");
    }
}
