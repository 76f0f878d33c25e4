//! Verilated models of rtl/ and drivers for the RTL regression suite.
