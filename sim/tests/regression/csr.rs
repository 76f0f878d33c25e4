//! CSR file: identification, configuration, read/write registers with byte strobes, AXI4-Lite
//! handshakes in any order (random AW/W delays).

use crate::common::{HW, run};
use e2t_csr as csr;
use e2t_sim::Stalls;

#[test]
fn id_version_hwcfg() {
    run("id_version_hwcfg", Stalls::HEAVY, |tb, _| {
        assert_eq!(tb.read(csr::CSR_ID)?, csr::ID_VALUE);
        assert_eq!(tb.read(csr::CSR_VERSION)?, csr::VERSION_VALUE);
        assert_eq!(tb.hwcfg()?, HW);
        assert_eq!(tb.read(0xffc)?, 0, "unmapped addresses read 0");
        let s = tb.status()?;
        assert_eq!(s.0, 0, "STATUS after reset: {s}");
        Ok(())
    });
}

#[test]
fn rw_registers_read_back_with_strobes() {
    run(
        "rw_registers_read_back_with_strobes",
        Stalls::HEAVY,
        |tb, rng| {
            use rand::Rng;
            let regs = [
                (csr::CSR_CMD_M, u32::MAX),
                (csr::CSR_CMD_N, u32::MAX),
                (csr::CSR_CMD_K, u32::MAX),
                (csr::CSR_CMD_CFG, u32::MAX),
                (csr::CSR_PSG_THR_LO, u32::MAX),
                (csr::CSR_PSG_THR_HI, 0xffff),
                (csr::CSR_PSG_C, 0xffff),
                (csr::CSR_PSG_REF_LO, u32::MAX),
                (csr::CSR_PSG_REF_HI, 0xffff),
                (csr::CSR_IRQ_EN, 0x3),
            ];
            for _ in 0..3 {
                for &(addr, mask) in &regs {
                    let v: u32 = rng.random();
                    tb.write(addr, v)?;
                    assert_eq!(tb.read(addr)? & mask, v & mask, "register {addr:#05x}");
                    // A partial write changes only the strobed bytes.
                    let strb: u8 = rng.random_range(0..16);
                    let w: u32 = rng.random();
                    tb.write_strb(addr, w, strb)?;
                    let bytes = (0..4).fold(0u32, |acc, b| {
                        if strb >> b & 1 != 0 {
                            acc | 0xff << (8 * b)
                        } else {
                            acc
                        }
                    });
                    let want = (v & !bytes | w & bytes) & mask;
                    assert_eq!(
                        tb.read(addr)? & mask,
                        want,
                        "register {addr:#05x} after strobe {strb:#06b}"
                    );
                }
            }
            // Write-only registers read 0.
            assert_eq!(tb.read(csr::CSR_CTRL)?, 0);
            Ok(())
        },
    );
}
