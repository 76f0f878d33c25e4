//! Energy model: per-operation tables (asic45, zc706), measurement windows, power integration.
