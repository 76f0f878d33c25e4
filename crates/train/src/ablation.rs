//! Ablation presets (each technique alone and combined) and the results table printed after a run.

use e2t_core::{Counters, MethodConfig};
use std::fmt::Write;

/// The ablation set of issue 5: baseline, each technique alone, SMD+SLU and the full method. All run on
/// the accelerator's numerics; SMD's momentum step on dropped batches stays off (the default).
pub fn ablation_presets() -> Vec<(&'static str, MethodConfig)> {
    let base = MethodConfig::baseline();
    vec![
        ("baseline", base.clone()),
        (
            "smd",
            MethodConfig {
                smd: true,
                ..base.clone()
            },
        ),
        (
            "slu",
            MethodConfig {
                slu: true,
                ..base.clone()
            },
        ),
        (
            "psg",
            MethodConfig {
                psg: true,
                ..base.clone()
            },
        ),
        (
            "smd+slu",
            MethodConfig {
                smd: true,
                slu: true,
                ..base.clone()
            },
        ),
        (
            "smd+slu+psg",
            MethodConfig {
                smd: true,
                slu: true,
                psg: true,
                ..base
            },
        ),
    ]
}

/// A Markdown table of (label, test accuracy in 0..1, counters of the run). The last column is the
/// INT16-equivalent MAC count relative to the row labelled `baseline` (or the first row).
pub fn format_results_table(rows: &[(String, f64, Counters)]) -> String {
    let reference = rows
        .iter()
        .find(|r| r.0 == "baseline")
        .or(rows.first())
        .map(|r| r.2.int16_equivalent_macs())
        .unwrap_or(0.0);
    let header = [
        "method",
        "test acc %",
        "MACs int16",
        "MACs int8",
        "int16-eq MACs",
        "x fewer than baseline",
        "cycles",
        "bytes in",
        "bytes out",
    ];
    let body: Vec<[String; 9]> = rows
        .iter()
        .map(|(label, acc, c)| {
            let eq = c.int16_equivalent_macs();
            let ratio = if eq > 0.0 && reference > 0.0 {
                format!("{:.2}", reference / eq)
            } else {
                "-".into()
            };
            [
                label.clone(),
                format!("{:.2}", acc * 100.0),
                c.macs_int16.to_string(),
                c.macs_int8.to_string(),
                format!("{eq:.0}"),
                ratio,
                c.total_cycles.to_string(),
                c.bytes_in.to_string(),
                c.bytes_out.to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &body {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: &mut dyn Iterator<Item = String>, out: &mut String| {
        out.push('|');
        for (i, c) in cells.enumerate() {
            // Text left, numbers right.
            if i == 0 {
                let _ = write!(out, " {c:<w$} |", w = widths[i]);
            } else {
                let _ = write!(out, " {c:>w$} |", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(&mut header.iter().map(|s| s.to_string()), &mut out);
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        out.push(' ');
        out.push_str(&"-".repeat(*w - 1));
        out.push_str(if i == 0 { "- |" } else { ": |" });
    }
    out.push('\n');
    for r in body {
        line(&mut r.into_iter(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_cover_the_ablation() {
        let p = ablation_presets();
        let labels: Vec<&str> = p.iter().map(|(l, _)| *l).collect();
        assert_eq!(
            labels,
            ["baseline", "smd", "slu", "psg", "smd+slu", "smd+slu+psg"]
        );
        for (l, m) in &p {
            assert_eq!(m.label(), *l, "preset label matches MethodConfig::label");
            assert_eq!(m.precision, e2t_core::Precision::Accel);
        }
        assert_eq!(p[5].1, MethodConfig::e2train());
    }

    #[test]
    fn table_has_ratio_against_baseline() {
        let base = Counters {
            macs_int16: 1000,
            total_cycles: 50,
            ..Default::default()
        };
        let e2t = Counters {
            macs_int16: 100,
            macs_int8: 400,
            total_cycles: 20,
            ..Default::default()
        };
        let t = format_results_table(&[
            ("baseline".into(), 0.9, base),
            ("smd+slu+psg".into(), 0.895, e2t),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].contains("int16-eq MACs"));
        assert!(lines[2].contains("90.00") && lines[2].contains("1.00"));
        // 1000 / (100 + 0.5 * 400) = 3.33
        assert!(
            lines[3].contains("89.50") && lines[3].contains("3.33") && lines[3].contains(" 300 "),
            "{t}"
        );
        assert!(
            lines.iter().all(|l| l.len() == lines[0].len()),
            "aligned columns:\n{t}"
        );
    }
}
