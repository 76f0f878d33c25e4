//! The generated wrapper on a real Verilated model: the counter fixture in tests/rtl, built by this
//! crate's build script with W=12, COUNTER_STEP=3, tracing and coverage.
//!
//! With feature `build` this crate is the code generator that build scripts use: its build script
//! then compiles neither the runtime nor the fixture, so these tests only exist without it.
#![cfg(not(feature = "build"))]

use vlharness::{PortDir, SimError, Verilated};

include!(concat!(env!("OUT_DIR"), "/Vcounter.rs"));

/// One full clock cycle (rising then falling edge), dumping the waveform at both edges.
fn cycle(m: &mut Vcounter, t: &mut u64) {
    m.set_clk_i(true);
    m.eval();
    m.trace_dump(*t);
    *t += 1;
    m.set_clk_i(false);
    m.eval();
    m.trace_dump(*t);
    *t += 1;
}

fn reset(m: &mut Vcounter, t: &mut u64) {
    m.set_rst_ni(false);
    m.eval();
    cycle(m, t);
    m.set_rst_ni(true);
    m.eval();
}

#[test]
fn counts_with_parameter_and_define_applied() {
    let mut m = Vcounter::new();
    let mut t = 0;
    reset(&mut m, &mut t);
    assert_eq!(m.count_o(), 0);
    m.set_en_i(true);
    for i in 1..=5u16 {
        cycle(&mut m, &mut t);
        assert_eq!(m.count_o(), 3 * i, "COUNTER_STEP=3 per enabled cycle");
    }
    m.set_en_i(false);
    cycle(&mut m, &mut t);
    assert_eq!(m.count_o(), 15, "holds when disabled");
    // W=12: the counter wraps at 4096.
    m.set_load_i(true);
    m.set_load_val_i(4095);
    cycle(&mut m, &mut t);
    m.set_load_i(false);
    m.set_en_i(true);
    cycle(&mut m, &mut t);
    assert_eq!(m.count_o(), 2);
}

#[test]
fn setters_mask_to_the_port_width() {
    let mut m = Vcounter::new();
    let mut t = 0;
    reset(&mut m, &mut t);
    m.set_load_i(true);
    m.set_load_val_i(0xffff);
    assert_eq!(m.load_val_i(), 0x0fff, "12-bit port keeps 12 bits");
    cycle(&mut m, &mut t);
    assert_eq!(m.count_o(), 0x0fff);
    m.set_big_i(0x0123_4567_89ab_cdef);
    m.eval();
    assert_eq!(
        m.big_o(),
        !0x0123_4567_89ab_cdefu64,
        "64-bit ports are whole u64s"
    );
}

#[test]
fn signed_ports_read_and_write_as_signed() {
    let mut m = Vcounter::new();
    let mut t = 0;
    reset(&mut m, &mut t);
    assert_eq!(m.neg_o(), -5i8);
    m.set_a_i(-300);
    m.set_b_i(7);
    assert_eq!(m.a_i(), -300i16);
    m.set_en_i(true);
    cycle(&mut m, &mut t);
    assert_eq!(
        m.acc_o(),
        -2100i64,
        "48-bit signed accumulator sign-extends"
    );
    assert_eq!(m.acc_o_bits(), (1u64 << 48) - 2100, "raw bits stay 48 wide");
    m.set_a_i(i16::MIN);
    m.set_b_i(i16::MIN);
    cycle(&mut m, &mut t);
    assert_eq!(m.acc_o(), -2100 + (1i64 << 30));
}

#[test]
fn wide_ports_are_word_arrays() {
    let mut m = Vcounter::new();
    // 100 bits = 4 words; bits above 99 are cleared by the setter.
    m.set_wide_i(&[0x8000_0001, 0x1234_5678, 0x9abc_def0, 0xffff_fff8]);
    assert_eq!(m.wide_i(), [0x8000_0001, 0x1234_5678, 0x9abc_def0, 0x8]);
    m.eval();
    // wide_o = wide_i rotated left by one within 100 bits: bit 99 (set) wraps to bit 0.
    assert_eq!(m.wide_o(), [0x0000_0003, 0x2468_acf1, 0x3579_bde0, 0x1]);
}

#[test]
fn port_metadata_matches_the_rtl() {
    let by_name = |n: &str| *Vcounter::PORTS.iter().find(|p| p.name == n).unwrap();
    assert_eq!(Vcounter::PORTS.len(), 15);
    let acc = by_name("acc_o");
    assert_eq!((acc.dir, acc.width, acc.signed), (PortDir::Out, 48, true));
    let load = by_name("load_val_i");
    assert_eq!(
        (load.dir, load.width, load.signed),
        (PortDir::In, 12, false)
    );
    assert_eq!(by_name("wide_o").width, 100);
    let m = Vcounter::new();
    assert_eq!(m.top_name(), "counter");
    assert!(m.trace_built() && m.coverage_built());
}

#[test]
fn trace_on_demand_writes_a_vcd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counter.vcd");
    let mut m = Vcounter::new();
    let mut t = 0;
    reset(&mut m, &mut t);
    m.set_en_i(true);
    cycle(&mut m, &mut t); // before tracing: not recorded
    m.trace_open(&path).unwrap();
    assert!(m.is_tracing());
    for _ in 0..4 {
        cycle(&mut m, &mut t);
    }
    m.trace_close();
    assert!(!m.is_tracing());
    let vcd = std::fs::read_to_string(&path).unwrap();
    assert!(
        vcd.contains("$var") && vcd.contains("count_o"),
        "VCD declares the ports"
    );
    assert!(
        vcd.contains(&format!("#{}", t - 1)),
        "VCD has the last dump time"
    );
    // Reopening after a close works (a failing test may open a waveform late).
    let path2 = dir.path().join("again.vcd");
    m.trace_open(&path2).unwrap();
    cycle(&mut m, &mut t);
    drop(m);
    assert!(std::fs::read_to_string(&path2).unwrap().contains("count_o"));
    // A path in a missing directory is an error, not a crash.
    let mut m = Vcounter::new();
    let err = m
        .trace_open(&dir.path().join("no/such/dir/x.vcd"))
        .unwrap_err();
    assert!(matches!(err, SimError::Trace { .. }), "{err}");
}

#[test]
fn fatal_in_the_design_is_an_error_not_an_abort() {
    let mut m = Vcounter::new();
    let mut t = 0;
    reset(&mut m, &mut t);
    m.set_fatal_i(true);
    m.set_clk_i(true);
    let err = m.try_eval().unwrap_err();
    let SimError::Fatal(msg) = &err else {
        panic!("expected Fatal, got {err}")
    };
    assert!(
        msg.contains("counter.sv"),
        "the message names the source: {msg}"
    );
    assert!(m.got_finish());
}

#[test]
fn models_on_threads_are_independent() {
    let handles: Vec<_> = (1..=4u16)
        .map(|n| {
            std::thread::spawn(move || {
                let mut m = Vcounter::new();
                let mut t = 0;
                reset(&mut m, &mut t);
                m.set_en_i(true);
                for _ in 0..(n * 10) {
                    cycle(&mut m, &mut t);
                }
                m.set_time(t);
                (m.count_o(), m.time())
            })
        })
        .collect();
    for (n, h) in (1..=4u16).zip(handles) {
        let (count, time) = h.join().unwrap();
        assert_eq!(count, 30 * n);
        assert_eq!(
            time,
            2 + 20 * u64::from(n),
            "each model has its own context time"
        );
    }
}

#[test]
fn coverage_counts_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cov.dat");
    let mut m = Vcounter::new();
    let mut t = 0;
    reset(&mut m, &mut t);
    m.set_en_i(true);
    cycle(&mut m, &mut t);
    m.write_coverage(&path).unwrap();
    let dat = std::fs::read_to_string(&path).unwrap();
    assert!(
        dat.starts_with("# SystemC::Coverage"),
        "verilator_coverage format"
    );
    assert!(dat.contains("counter.sv"));
}
