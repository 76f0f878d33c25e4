//! Sweeps, confidence intervals, SVG plots and Markdown reports from run folders.
