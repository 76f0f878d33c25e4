//! SVG plots of a set of runs (plotters, SVG backend only). Each function writes one file, or says
//! why it could not (a missing optional column or diagnostic), so the report can note the skip.
//! Curves over epochs are means over the seeds of a group.

use crate::runs::RunData;
use crate::sweep::GroupSummary;
use crate::{ReportError, write_atomic};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Outcome of one plot.
#[derive(Clone, Debug, PartialEq)]
pub enum PlotResult {
    Written { title: String, file: PathBuf },
    Skipped { title: String, reason: String },
}

impl PlotResult {
    pub fn title(&self) -> &str {
        match self {
            PlotResult::Written { title, .. } | PlotResult::Skipped { title, .. } => title,
        }
    }
}

/// Points of one curve: (epoch, value).
type Curve = Vec<(f64, f64)>;

/// Per epoch: (sum, count) of the values seen.
type SumByEpoch = BTreeMap<i64, (f64, usize)>;

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Colour `i` of `n`: the 10-colour palette, or evenly spaced hues when there are more series
/// (ResNet-20 has about 20 layers) so no two share a colour.
fn color(i: usize, n: usize) -> RGBAColor {
    if n <= COLORS.len() {
        COLORS[i % COLORS.len()].to_rgba()
    } else {
        HSLColor(i as f64 / n as f64, 0.75, 0.42).to_rgba()
    }
}

/// Epoch tick labels: integers only.
fn epoch_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

/// Legend width beside each panel.
const LEGEND_W: u32 = 170;
/// Most legend rows drawn; the rest are summarised in one line.
const LEGEND_ROWS: usize = 24;

/// A legend in its own area (beside the plot, so it never hides data).
fn draw_legend(
    area: &DrawingArea<SVGBackend, Shift>,
    entries: &[(String, RGBAColor)],
    boxes: bool,
) -> Result<(), String> {
    let font = ("sans-serif", 12).into_font();
    let top = 40;
    let step = 15;
    for (i, (name, c)) in entries.iter().take(LEGEND_ROWS).enumerate() {
        let y = top + step * i as i32;
        if boxes {
            area.draw(&Rectangle::new([(6, y - 5), (18, y + 5)], c.filled()))
                .map_err(|e| e.to_string())?;
        } else {
            area.draw(&PathElement::new(vec![(4, y), (20, y)], c.stroke_width(2)))
                .map_err(|e| e.to_string())?;
        }
        area.draw(&Text::new(name.clone(), (26, y - 6), font.clone()))
            .map_err(|e| e.to_string())?;
    }
    if entries.len() > LEGEND_ROWS {
        let y = top + step * LEGEND_ROWS as i32;
        let more = format!("... {} more", entries.len() - LEGEND_ROWS);
        area.draw(&Text::new(more, (26, y - 6), font))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Split a panel into the plot and its legend.
fn with_legend<'a>(
    area: &DrawingArea<SVGBackend<'a>, Shift>,
) -> (
    DrawingArea<SVGBackend<'a>, Shift>,
    DrawingArea<SVGBackend<'a>, Shift>,
) {
    let w = area.dim_in_pixel().0;
    area.split_horizontally(w.saturating_sub(LEGEND_W))
}

/// 100 when accuracies are fractions (all <= 1), else 1 (already percent).
pub fn acc_scale(values: impl IntoIterator<Item = f64>) -> f64 {
    let max = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if max <= 1.0 { 100.0 } else { 1.0 }
}

/// Padded axis range of the finite values (a flat or empty range is widened so plotters can draw).
fn range(values: impl IntoIterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else {
        0.5 * hi.abs().max(1e-12)
    };
    (if from_zero && lo >= 0.0 { lo } else { lo - pad }, hi + pad)
}

/// Runs grouped by `group`, first-seen order.
fn by_group(runs: &[RunData]) -> Vec<(String, Vec<&RunData>)> {
    let mut g: Vec<(String, Vec<&RunData>)> = Vec::new();
    for r in runs {
        match g.iter_mut().find(|(k, _)| *k == r.group) {
            Some((_, v)) => v.push(r),
            None => g.push((r.group.clone(), vec![r])),
        }
    }
    g
}

/// Mean over runs of column `col` per epoch: [(epoch, mean)], epochs where any run has a value.
fn mean_curve(runs: &[&RunData], col: &str) -> Vec<(f64, f64)> {
    let mut acc: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    for r in runs {
        let (Some(ep), Some(v)) = (r.epochs.column("epoch"), r.epochs.column(col)) else {
            continue;
        };
        for (e, x) in ep.into_iter().zip(v) {
            if e.is_finite() && x.is_finite() {
                let s = acc.entry(e.round() as i64).or_insert((0.0, 0));
                s.0 += x;
                s.1 += 1;
            }
        }
    }
    acc.into_iter()
        .map(|(e, (s, n))| (e as f64, s / n as f64))
        .collect()
}

/// Mean over runs of a diagnostic kind per name and epoch: [(name, [(epoch, mean)])].
fn mean_diag(runs: &[&RunData], kind: &str) -> Vec<(String, Curve)> {
    // First-seen order keeps layers in network order (layer2 before layer10).
    let mut acc: Vec<(String, SumByEpoch)> = Vec::new();
    for r in runs {
        for d in r.diagnostics.iter().flatten().filter(|d| d.kind == kind) {
            if d.epoch.is_finite() && d.value.is_finite() {
                let i = match acc.iter().position(|(n, _)| *n == d.name) {
                    Some(i) => i,
                    None => {
                        acc.push((d.name.clone(), BTreeMap::new()));
                        acc.len() - 1
                    }
                };
                let s = acc[i].1.entry(d.epoch.round() as i64).or_insert((0.0, 0));
                s.0 += d.value;
                s.1 += 1;
            }
        }
    }
    acc.into_iter()
        .map(|(k, m)| {
            (
                k,
                m.into_iter()
                    .map(|(e, (s, n))| (e as f64, s / n as f64))
                    .collect(),
            )
        })
        .collect()
}

fn plot_err(file: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot {
        file: file.display().to_string(),
        message: e.to_string(),
    }
}

/// Render into a string with the SVG backend, then write it atomically.
fn render(
    file: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>,
) -> Result<(), ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(file, e))?;
        draw(&root).map_err(|e| plot_err(file, e))?;
        root.present().map_err(|e| plot_err(file, e))?;
    }
    write_atomic(file, svg.as_bytes())
}

/// Panels laid out two per row.
fn panels<'a>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    n: usize,
) -> Vec<DrawingArea<SVGBackend<'a>, Shift>> {
    let cols = n.clamp(1, 2);
    let rows = n.div_ceil(cols).max(1);
    root.split_evenly((rows, cols))
}

fn panel_size(n: usize) -> (u32, u32) {
    let cols = n.clamp(1, 2) as u32;
    let rows = n.div_ceil(2).max(1) as u32;
    ((560 + LEGEND_W) * cols, 400 * rows + 40)
}

/// Lines over epochs in one panel, legend beside it.
fn line_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    caption: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    from_zero: bool,
) -> Result<(), String> {
    let (plot, legend) = with_legend(area);
    let xs = range(
        series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)),
        false,
    );
    let ys = range(
        series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)),
        from_zero,
    );
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_label_formatter(&epoch_label)
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| e.to_string())?;
    let n = series.len();
    let mut entries = Vec::new();
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = color(i, n);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
            .map_err(|e| e.to_string())?;
        entries.push((name.clone(), c));
    }
    draw_legend(&legend, &entries, false)
}

pub const TITLE_ACC_ENERGY: &str = "Top-1 accuracy vs total energy";
pub const TITLE_ENERGY_CLASS: &str = "Energy per epoch by class";
pub const TITLE_PSG: &str = "PSG uncertain share per layer";
pub const TITLE_SLU: &str = "SLU executed fraction per block";
pub const TITLE_CURVES: &str = "Learning curves";

/// Accuracy vs total energy, one point per group with 95% error bars on both axes.
pub fn accuracy_vs_energy(
    groups: &[GroupSummary],
    acc_scale: f64,
    file: &Path,
) -> Result<PlotResult, ReportError> {
    let title = TITLE_ACC_ENERGY.to_string();
    let pts: Vec<(usize, &GroupSummary)> = groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.energy_total_j.is_some() && g.top1.is_some())
        .collect();
    if pts.is_empty() {
        return Ok(PlotResult::Skipped {
            title,
            reason: "no run has energy columns (energy_j / energy_cum_j)".into(),
        });
    }
    let xs = range(
        pts.iter().flat_map(|(_, g)| {
            let e = g.energy_total_j.unwrap();
            [e.mean, e.lo.unwrap_or(e.mean), e.hi.unwrap_or(e.mean)]
        }),
        true,
    );
    let ys = range(
        pts.iter().flat_map(|(_, g)| {
            let a = g.top1.unwrap();
            [
                a.mean * acc_scale,
                a.lo.unwrap_or(a.mean) * acc_scale,
                a.hi.unwrap_or(a.mean) * acc_scale,
            ]
        }),
        false,
    );
    render(file, (800 + LEGEND_W, 560), |root| {
        let (plot, legend) = with_legend(root);
        let mut chart = ChartBuilder::on(&plot)
            .caption(&title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("total energy per run (J, mean and 95% CI)")
            .y_desc("top-1 (%)")
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, g) in &pts {
            let c = color(*i, groups.len());
            let (e, a) = (g.energy_total_j.unwrap(), g.top1.unwrap());
            let (x, y) = (e.mean, a.mean * acc_scale);
            let (ylo, yhi) = (
                a.lo.map(|v| v * acc_scale).unwrap_or(y),
                a.hi.map(|v| v * acc_scale).unwrap_or(y),
            );
            let (xlo, xhi) = (e.lo.unwrap_or(x), e.hi.unwrap_or(x));
            chart
                .draw_series([ErrorBar::new_vertical(
                    x,
                    ylo,
                    y,
                    yhi,
                    c.stroke_width(2),
                    10,
                )])
                .map_err(|e| e.to_string())?;
            chart
                .draw_series([ErrorBar::new_horizontal(
                    y,
                    xlo,
                    x,
                    xhi,
                    c.stroke_width(2),
                    10,
                )])
                .map_err(|e| e.to_string())?;
            chart
                .draw_series([Circle::new((x, y), 5, c.filled())])
                .map_err(|e| e.to_string())?;
        }
        let entries: Vec<(String, RGBAColor)> = pts
            .iter()
            .map(|(i, g)| (format!("{} (n={})", g.group, g.n), color(*i, groups.len())))
            .collect();
        draw_legend(&legend, &entries, true)
    })?;
    Ok(PlotResult::Written {
        title,
        file: file.to_path_buf(),
    })
}

/// Energy classes as (column, legend label).
pub const ENERGY_CLASSES: [(&str, &str); 5] = [
    ("energy_int8_j", "compute INT8"),
    ("energy_int16_j", "compute INT16"),
    ("energy_onchip_j", "on-chip memory"),
    ("energy_offchip_j", "off-chip memory"),
    ("energy_static_j", "static"),
];

/// Stacked bars of energy per epoch by class, one panel per group (mean over seeds).
pub fn energy_by_class(runs: &[RunData], file: &Path) -> Result<PlotResult, ReportError> {
    let title = TITLE_ENERGY_CLASS.to_string();
    let groups: Vec<(String, Vec<Curve>)> = by_group(runs)
        .into_iter()
        .filter(|(_, rs)| {
            ENERGY_CLASSES
                .iter()
                .all(|(c, _)| rs.iter().any(|r| r.epochs.has(c)))
        })
        .map(|(g, rs)| {
            (
                g,
                ENERGY_CLASSES
                    .iter()
                    .map(|(c, _)| mean_curve(&rs, c))
                    .collect(),
            )
        })
        .collect();
    if groups.is_empty() {
        let cols: Vec<&str> = ENERGY_CLASSES.iter().map(|c| c.0).collect();
        return Ok(PlotResult::Skipped {
            title,
            reason: format!("no run has all of the columns {}", cols.join(", ")),
        });
    }
    render(file, panel_size(groups.len()), |root| {
        let root = root
            .titled(&title, ("sans-serif", 22))
            .map_err(|e| e.to_string())?;
        for (area, (g, classes)) in panels(&root, groups.len()).iter().zip(&groups) {
            // Stack per epoch.
            let mut tops: BTreeMap<i64, f64> = BTreeMap::new();
            for c in classes {
                for (e, v) in c {
                    *tops.entry(*e as i64).or_insert(0.0) += v.max(0.0);
                }
            }
            let xs = range(tops.keys().map(|e| *e as f64), false);
            let ys = range(tops.values().copied(), true);
            let (plot, legend) = with_legend(area);
            let mut chart = ChartBuilder::on(&plot)
                .caption(g, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(70)
                .build_cartesian_2d((xs.0 - 0.5)..(xs.1 + 0.5), ys.0..ys.1)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc("energy (J)")
                .x_label_formatter(&epoch_label)
                .light_line_style(WHITE)
                .draw()
                .map_err(|e| e.to_string())?;
            let mut base: BTreeMap<i64, f64> = BTreeMap::new();
            for (i, c) in classes.iter().enumerate() {
                let col = color(i, ENERGY_CLASSES.len());
                let rects: Vec<Rectangle<(f64, f64)>> = c
                    .iter()
                    .map(|(e, v)| {
                        let b = base.entry(*e as i64).or_insert(0.0);
                        let r = Rectangle::new(
                            [(*e - 0.35, *b), (*e + 0.35, *b + v.max(0.0))],
                            col.filled(),
                        );
                        *b += v.max(0.0);
                        r
                    })
                    .collect();
                chart.draw_series(rects).map_err(|e| e.to_string())?;
            }
            let entries: Vec<(String, RGBAColor)> = ENERGY_CLASSES
                .iter()
                .enumerate()
                .map(|(i, (_, label))| (label.to_string(), color(i, ENERGY_CLASSES.len())))
                .collect();
            draw_legend(&legend, &entries, true)?;
        }
        Ok(())
    })?;
    Ok(PlotResult::Written {
        title,
        file: file.to_path_buf(),
    })
}

/// One panel per group with a line per diagnostic name (layer or block).
fn diag_plot(
    runs: &[RunData],
    kind: &str,
    title: &str,
    y_desc: &str,
    file: &Path,
) -> Result<PlotResult, ReportError> {
    let groups: Vec<(String, Vec<(String, Curve)>)> = by_group(runs)
        .into_iter()
        .map(|(g, rs)| (g, mean_diag(&rs, kind)))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    if groups.is_empty() {
        let reason = if runs.iter().all(|r| r.diagnostics.is_none()) {
            "no run has diagnostics.csv".to_string()
        } else {
            format!("no '{kind}' rows in diagnostics.csv")
        };
        return Ok(PlotResult::Skipped {
            title: title.to_string(),
            reason,
        });
    }
    render(file, panel_size(groups.len()), |root| {
        let root = root
            .titled(title, ("sans-serif", 22))
            .map_err(|e| e.to_string())?;
        for (area, (g, series)) in panels(&root, groups.len()).iter().zip(&groups) {
            line_panel(area, g, y_desc, series, true)?;
        }
        Ok(())
    })?;
    Ok(PlotResult::Written {
        title: title.to_string(),
        file: file.to_path_buf(),
    })
}

pub fn psg_uncertain_share(runs: &[RunData], file: &Path) -> Result<PlotResult, ReportError> {
    diag_plot(
        runs,
        "psg_uncertain_fraction",
        TITLE_PSG,
        "uncertain share",
        file,
    )
}

pub fn slu_executed_fraction(runs: &[RunData], file: &Path) -> Result<PlotResult, ReportError> {
    diag_plot(
        runs,
        "slu_executed_fraction",
        TITLE_SLU,
        "executed fraction",
        file,
    )
}

/// Test accuracy (and train loss when present) per epoch, a line per group.
pub fn learning_curves(
    runs: &[RunData],
    acc_scale: f64,
    file: &Path,
) -> Result<PlotResult, ReportError> {
    let title = TITLE_CURVES.to_string();
    let groups = by_group(runs);
    let acc: Vec<(String, Vec<(f64, f64)>)> = groups
        .iter()
        .map(|(g, rs)| {
            (
                g.clone(),
                mean_curve(rs, "test_acc")
                    .into_iter()
                    .map(|(e, a)| (e, a * acc_scale))
                    .collect(),
            )
        })
        .collect();
    let loss: Vec<(String, Vec<(f64, f64)>)> = groups
        .iter()
        .map(|(g, rs)| (g.clone(), mean_curve(rs, "train_loss")))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    let n = if loss.is_empty() { 1 } else { 2 };
    render(file, panel_size(n), |root| {
        let root = root
            .titled(&title, ("sans-serif", 22))
            .map_err(|e| e.to_string())?;
        let areas = panels(&root, n);
        line_panel(&areas[0], "test top-1 (%)", "top-1 (%)", &acc, false)?;
        if n == 2 {
            line_panel(&areas[1], "train loss", "loss", &loss, true)?;
        }
        Ok(())
    })?;
    Ok(PlotResult::Written {
        title,
        file: file.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_keep_layer_order_and_average_seeds() {
        use crate::runs::{DiagRow, EpochTable};
        let mk = |seed: u64, v: f64| RunData {
            dir: PathBuf::from(format!("r{seed}")),
            method: "m".into(),
            seed,
            group: "m".into(),
            params: vec![],
            final_test_acc: 0.5,
            epochs: EpochTable::default(),
            diagnostics: Some(
                ["layer2", "layer10"]
                    .iter()
                    .map(|n| DiagRow {
                        epoch: 1.0,
                        kind: "k".into(),
                        name: n.to_string(),
                        value: v,
                    })
                    .collect(),
            ),
        };
        let (a, b) = (mk(0, 0.2), mk(1, 0.4));
        let d = mean_diag(&[&a, &b], "k");
        assert_eq!(
            d.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["layer2", "layer10"]
        );
        assert!((d[0].1[0].1 - 0.3).abs() < 1e-12);
        assert!(mean_diag(&[&a], "other").is_empty());
    }

    #[test]
    fn ranges_are_drawable() {
        assert_eq!(range([], false), (0.0, 1.0));
        let (lo, hi) = range([2.0, 2.0], false);
        assert!(lo < 2.0 && hi > 2.0);
        let (lo, hi) = range([1.0, 3.0, f64::NAN], true);
        assert_eq!(lo, 0.0);
        assert!(hi > 3.0);
        assert_eq!(acc_scale([0.5, 0.9]), 100.0);
        assert_eq!(acc_scale([50.0, 90.0]), 1.0);
    }
}
