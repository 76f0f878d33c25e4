//! The accelerator CSR map, generated at build time from rtl/pkg (the single source of truth).
