// e2t_pkg: the single source of truth for the accelerator's CSR map, fields, opcodes, error codes
// and widths. crates/csr parses every `localparam int unsigned NAME = VALUE;` line of this file at
// build time (VALUE: decimal, or a based literal like 12'h0FC / 'd5), so keep one such declaration
// per line. Other declarations (types) are ignored by that parser. See rtl/README.md for meanings.
package e2t_pkg;

  // ---- widths ---------------------------------------------------------------------------------
  localparam int unsigned AXIL_ADDR_W  = 12;  // byte address width of the CSR window (4 KiB)
  localparam int unsigned AXIL_DATA_W  = 32;
  localparam int unsigned AXIS_DATA_W  = 64;
  localparam int unsigned ACC_W        = 48;  // accumulator width (DSP48E1 P)
  localparam int unsigned CODE_W       = 16;  // operand code width
  localparam int unsigned CNT_W        = 64;  // performance counter width
  localparam int unsigned NUM_COUNTERS = 12;
  localparam int unsigned FIFO_DEPTH   = 4;   // command FIFO entries
  localparam int unsigned DIM_MN_MAX   = 65535;     // largest M and N
  localparam int unsigned DIM_K_MAX    = 16777215;  // largest K
  localparam int unsigned SHIFT_MAX    = 47;        // largest requant shift
  localparam int unsigned ELEMS_INT16  = 4;   // input elements per beat, INT16 layout
  localparam int unsigned ELEMS_INT8   = 8;   // input elements per beat, INT8 layout
  localparam int unsigned REQ_PER_BEAT = 4;   // requantized results per output beat
  localparam int unsigned SIGN_PER_BEAT = 32; // signs per output beat
  localparam int unsigned T_START      = 1;   // cycle-formula constants (rtl/README.md)
  localparam int unsigned T_DONE       = 1;
  localparam int unsigned T_FLUSH      = 3;
  localparam int unsigned T_ROW        = 1;
  localparam int unsigned T_CAP        = 4;   // reuse path: last k-step issue to first row latch
  localparam int unsigned T_FIN        = 1;   // reuse path: last result beat leaves the output register

  // ---- identification -------------------------------------------------------------------------
  localparam int unsigned ID_VALUE      = 32'hE2A0_0001;
  localparam int unsigned VERSION_VALUE = 32'h0001_0001;

  // ---- CSR byte offsets -----------------------------------------------------------------------
  localparam int unsigned CSR_ID          = 'h000;
  localparam int unsigned CSR_VERSION     = 'h004;
  localparam int unsigned CSR_HWCFG       = 'h008;
  localparam int unsigned CSR_STATUS      = 'h00C;
  localparam int unsigned CSR_CTRL        = 'h010;
  localparam int unsigned CSR_IRQ_EN      = 'h014;
  localparam int unsigned CSR_HWCFG2      = 'h018;  // reuse-path geometry (RWS, Q)
  localparam int unsigned CSR_CMD_M       = 'h020;
  localparam int unsigned CSR_CMD_N       = 'h024;
  localparam int unsigned CSR_CMD_K       = 'h028;
  localparam int unsigned CSR_CMD_CFG     = 'h02C;
  localparam int unsigned CSR_CMD_PUSH    = 'h030;
  localparam int unsigned CSR_PSG_THR_LO  = 'h040;
  localparam int unsigned CSR_PSG_THR_HI  = 'h044;
  localparam int unsigned CSR_PSG_C       = 'h048;
  localparam int unsigned CSR_PSG_REF_LO  = 'h04C;
  localparam int unsigned CSR_PSG_REF_HI  = 'h050;
  localparam int unsigned CSR_PSG_MAXP_LO = 'h054;
  localparam int unsigned CSR_PSG_MAXP_HI = 'h058;
  localparam int unsigned CSR_CNT_BASE    = 'h100;  // counter i: LO at BASE + 8i, HI at BASE + 8i + 4
  localparam int unsigned CSR_CNT_STRIDE  = 8;

  // ---- counter indices (order of e2t_core::Counters::fields) ------------------------------------
  localparam int unsigned CNT_TOTAL_CYCLES  = 0;
  localparam int unsigned CNT_BUSY_CYCLES   = 1;
  localparam int unsigned CNT_STALL_IN      = 2;
  localparam int unsigned CNT_STALL_OUT     = 3;
  localparam int unsigned CNT_MACS_INT8     = 4;
  localparam int unsigned CNT_MACS_INT16    = 5;
  localparam int unsigned CNT_BYTES_IN      = 6;
  localparam int unsigned CNT_BYTES_OUT     = 7;
  localparam int unsigned CNT_PSG_PREDICTED = 8;
  localparam int unsigned CNT_PSG_UNCERTAIN = 9;
  localparam int unsigned CNT_PSG_RECOMPUTED = 10;
  localparam int unsigned CNT_GEMMS         = 11;

  // ---- STATUS fields --------------------------------------------------------------------------
  localparam int unsigned STATUS_BUSY_BIT      = 0;
  localparam int unsigned STATUS_DONE_BIT      = 1;
  localparam int unsigned STATUS_ERROR_BIT     = 2;
  localparam int unsigned STATUS_FIFO_FULL_BIT = 3;
  localparam int unsigned STATUS_FIFO_CNT_LSB  = 4;
  localparam int unsigned STATUS_FIFO_CNT_W    = 3;
  localparam int unsigned STATUS_DRAINING_BIT  = 7;
  localparam int unsigned STATUS_ERR_CODE_LSB  = 8;
  localparam int unsigned STATUS_ERR_CODE_W    = 8;

  // ---- CTRL bits (self-clearing commands) ------------------------------------------------------
  localparam int unsigned CTRL_SOFT_RESET_BIT   = 0;
  localparam int unsigned CTRL_CNT_SNAPSHOT_BIT = 1;
  localparam int unsigned CTRL_CNT_CLEAR_BIT    = 2;
  localparam int unsigned CTRL_MAXP_CLEAR_BIT   = 3;

  // ---- IRQ_EN bits ----------------------------------------------------------------------------
  localparam int unsigned IRQ_DONE_BIT  = 0;
  localparam int unsigned IRQ_ERROR_BIT = 1;

  // ---- CMD_CFG fields -------------------------------------------------------------------------
  localparam int unsigned CFG_OPCODE_LSB   = 0;
  localparam int unsigned CFG_OPCODE_W     = 4;
  localparam int unsigned CFG_MODE_BIT     = 4;
  localparam int unsigned CFG_OUT_FMT_LSB  = 5;
  localparam int unsigned CFG_OUT_FMT_W    = 2;
  localparam int unsigned CFG_SHIFT_LSB    = 8;
  localparam int unsigned CFG_SHIFT_W      = 6;
  localparam int unsigned CFG_ADAPTIVE_BIT = 16;
  localparam int unsigned CFG_REUSE_BIT    = 17;  // OP_GEMM on the operand-reuse path

  // ---- HWCFG2 fields --------------------------------------------------------------------------
  localparam int unsigned HWCFG2_RWS_LSB = 0;    // words per lane of a reuse buffer (KMAX = E * RWS)
  localparam int unsigned HWCFG2_RWS_W   = 16;
  localparam int unsigned HWCFG2_Q_LSB   = 16;   // column tiles per resident B block
  localparam int unsigned HWCFG2_Q_W     = 8;

  // ---- opcodes, modes, output formats ---------------------------------------------------------
  localparam int unsigned OP_GEMM = 1;
  localparam int unsigned OP_PSG  = 2;
  localparam int unsigned MODE_INT16 = 0;
  localparam int unsigned MODE_INT8  = 1;
  localparam int unsigned OUT_REQUANT = 0;
  localparam int unsigned OUT_RAW48   = 1;
  localparam int unsigned OUT_SIGN    = 2;

  // ---- sign encoding (2 bits per entry) --------------------------------------------------------
  localparam int unsigned SIGN_ZERO = 0;
  localparam int unsigned SIGN_POS  = 1;
  localparam int unsigned SIGN_NEG  = 3;

  // ---- PSG status beat fields -----------------------------------------------------------------
  localparam int unsigned PSG_ST_MAXP_LSB     = 0;
  localparam int unsigned PSG_ST_MAXP_W       = 48;
  localparam int unsigned PSG_ST_UNCERT_LSB   = 48;
  localparam int unsigned PSG_ST_UNCERT_W     = 15;
  localparam int unsigned PSG_ST_RECOMPUTE_BIT = 63;

  // ---- error codes ----------------------------------------------------------------------------
  localparam int unsigned ERR_NONE          = 0;
  localparam int unsigned ERR_BAD_OPCODE    = 1;
  localparam int unsigned ERR_ZERO_DIM      = 2;
  localparam int unsigned ERR_DIM_TOO_LARGE = 3;
  localparam int unsigned ERR_BAD_CFG       = 4;
  localparam int unsigned ERR_EARLY_TLAST   = 5;
  localparam int unsigned ERR_MISSING_TLAST = 6;
  localparam int unsigned ERR_FIFO_OVERFLOW = 7;

  // ---- one queued command, as captured at CMD_PUSH (flat, so Yosys 0.23 reads it) ------------
  localparam int unsigned CMD_W       = 176;
  localparam int unsigned CMD_M_LSB   = 144;  // [175:144] M
  localparam int unsigned CMD_N_LSB   = 112;  // [143:112] N
  localparam int unsigned CMD_K_LSB   = 80;   // [111:80]  K
  localparam int unsigned CMD_CFG_LSB = 48;   // [79:48]   CMD_CFG
  localparam int unsigned CMD_THR_LSB = 0;    // [47:0]    effective PSG threshold

endpackage
