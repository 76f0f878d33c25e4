// e2t_csr: AXI4-Lite slave (32-bit) and the CSR file of rtl/README.md. Accepts AW and W in either
// order, one write and one read in flight. Computes the effective PSG threshold when a command is
// pushed, so later CSR writes never change a queued command.
module e2t_csr #(
  parameter int unsigned R     = 4,
  parameter int unsigned C     = 4,
  parameter int unsigned DEPTH = 64,
  parameter int unsigned RWS   = 256,
  parameter int unsigned Q     = 8
) (
  input  logic                                             clk_i,
  input  logic                                             rst_ni,
  // AXI4-Lite
  input  logic [e2t_pkg::AXIL_ADDR_W-1:0]                  awaddr_i,
  input  logic                                             awvalid_i,
  output logic                                             awready_o,
  input  logic [e2t_pkg::AXIL_DATA_W-1:0]                  wdata_i,
  input  logic [e2t_pkg::AXIL_DATA_W/8-1:0]                wstrb_i,
  input  logic                                             wvalid_i,
  output logic                                             wready_o,
  output logic [1:0]                                       bresp_o,
  output logic                                             bvalid_o,
  input  logic                                             bready_i,
  input  logic [e2t_pkg::AXIL_ADDR_W-1:0]                  araddr_i,
  input  logic                                             arvalid_i,
  output logic                                             arready_o,
  output logic [e2t_pkg::AXIL_DATA_W-1:0]                  rdata_o,
  output logic [1:0]                                       rresp_o,
  output logic                                             rvalid_o,
  input  logic                                             rready_i,
  // command FIFO
  output logic                                             push_o,
  output logic [e2t_pkg::CMD_W-1:0]                        push_data_o,
  input  logic                                             fifo_full_i,
  input  logic [e2t_pkg::STATUS_FIFO_CNT_W-1:0]            fifo_count_i,
  // engine
  input  logic                                             busy_i,
  input  logic                                             draining_i,
  input  logic                                             done_i,
  input  logic                                             err_i,
  input  logic [e2t_pkg::STATUS_ERR_CODE_W-1:0]            err_code_i,
  input  logic [e2t_pkg::ACC_W-1:0]                        maxp_i,
  input  logic [e2t_pkg::NUM_COUNTERS*e2t_pkg::CNT_W-1:0]  snap_i,
  output logic                                             soft_reset_o,
  output logic                                             snapshot_o,
  output logic                                             cnt_clear_o,
  output logic                                             maxp_clear_o,
  output logic                                             irq_o
);
  localparam int unsigned ADW = e2t_pkg::AXIL_ADDR_W;
  localparam int unsigned DW  = e2t_pkg::AXIL_DATA_W;

  // ---- write channel ----
  logic           aw_v_q, w_v_q, b_v_q;
  logic [ADW-1:0] aw_q;
  logic [DW-1:0]  wd_q;
  logic [3:0]     ws_q;
  logic           do_write;

  assign awready_o = !aw_v_q;
  assign wready_o  = !w_v_q;
  assign bvalid_o  = b_v_q;
  assign bresp_o   = 2'b00;
  assign do_write  = aw_v_q && w_v_q && !b_v_q;

  // ---- registers ----
  logic [1:0]  irq_en_q;
  logic [31:0] m_q, n_q, k_q, cfg_q, thr_lo_q, ref_lo_q;
  logic [15:0] thr_hi_q, c_q, ref_hi_q;
  logic        done_q, err_q;
  logic [7:0]  code_q;

  function automatic logic [31:0] merge(input logic [31:0] old, input logic [31:0] d,
                                        input logic [3:0] s);
    logic [31:0] r;
    for (int unsigned b = 0; b < 4; b++) r[b*8 +: 8] = s[b] ? d[b*8 +: 8] : old[b*8 +: 8];
    merge = r;
  endfunction

  logic [ADW-1:0] waddr;
  assign waddr = {aw_q[ADW-1:2], 2'b00};

  // effective PSG threshold, taken at push time
  logic [63:0] adapt_prod;
  logic [47:0] thr_eff;
  assign adapt_prod = 64'(c_q) * 64'({ref_hi_q, ref_lo_q});
  assign thr_eff    = cfg_q[e2t_pkg::CFG_ADAPTIVE_BIT] ? adapt_prod[63:16] : {thr_hi_q, thr_lo_q};

  logic [e2t_pkg::CMD_W-1:0] push_cmd;
  always_comb begin
    push_cmd = '0;
    push_cmd[e2t_pkg::CMD_M_LSB +: 32]   = m_q;
    push_cmd[e2t_pkg::CMD_N_LSB +: 32]   = n_q;
    push_cmd[e2t_pkg::CMD_K_LSB +: 32]   = k_q;
    push_cmd[e2t_pkg::CMD_CFG_LSB +: 32] = cfg_q;
    push_cmd[e2t_pkg::CMD_THR_LSB +: 48] = thr_eff;
  end

  // The push lands in the FIFO on the same edge that raises BVALID, so a host that waits for the
  // write response before starting its operand stream never races a draining engine.
  assign push_o      = do_write && (waddr == ADW'(e2t_pkg::CSR_CMD_PUSH));
  assign push_data_o = push_cmd;

  logic wr_status;
  assign wr_status = do_write && (waddr == ADW'(e2t_pkg::CSR_STATUS));

  always_ff @(posedge clk_i) begin
    if (!rst_ni) begin
      aw_v_q <= 1'b0; w_v_q <= 1'b0; b_v_q <= 1'b0;
      aw_q <= '0; wd_q <= '0; ws_q <= '0;
      irq_en_q <= '0;
      m_q <= '0; n_q <= '0; k_q <= '0; cfg_q <= '0;
      thr_lo_q <= '0; thr_hi_q <= '0; c_q <= '0; ref_lo_q <= '0; ref_hi_q <= '0;
      soft_reset_o <= 1'b0; snapshot_o <= 1'b0; cnt_clear_o <= 1'b0; maxp_clear_o <= 1'b0;
    end else begin
      soft_reset_o <= 1'b0;
      snapshot_o   <= 1'b0;
      cnt_clear_o  <= 1'b0;
      maxp_clear_o <= 1'b0;
      if (awvalid_i && awready_o) begin aw_v_q <= 1'b1; aw_q <= awaddr_i; end
      if (wvalid_i && wready_o) begin w_v_q <= 1'b1; wd_q <= wdata_i; ws_q <= wstrb_i; end
      if (b_v_q && bready_i) b_v_q <= 1'b0;
      if (do_write) begin
        aw_v_q <= 1'b0;
        w_v_q  <= 1'b0;
        b_v_q  <= 1'b1;
        unique case (waddr)
          ADW'(e2t_pkg::CSR_IRQ_EN):     irq_en_q <= 2'(merge({30'b0, irq_en_q}, wd_q, ws_q));
          ADW'(e2t_pkg::CSR_CMD_M):      m_q      <= merge(m_q, wd_q, ws_q);
          ADW'(e2t_pkg::CSR_CMD_N):      n_q      <= merge(n_q, wd_q, ws_q);
          ADW'(e2t_pkg::CSR_CMD_K):      k_q      <= merge(k_q, wd_q, ws_q);
          ADW'(e2t_pkg::CSR_CMD_CFG):    cfg_q    <= merge(cfg_q, wd_q, ws_q);
          ADW'(e2t_pkg::CSR_PSG_THR_LO): thr_lo_q <= merge(thr_lo_q, wd_q, ws_q);
          ADW'(e2t_pkg::CSR_PSG_THR_HI): thr_hi_q <= 16'(merge({16'b0, thr_hi_q}, wd_q, ws_q));
          ADW'(e2t_pkg::CSR_PSG_C):      c_q      <= 16'(merge({16'b0, c_q}, wd_q, ws_q));
          ADW'(e2t_pkg::CSR_PSG_REF_LO): ref_lo_q <= merge(ref_lo_q, wd_q, ws_q);
          ADW'(e2t_pkg::CSR_PSG_REF_HI): ref_hi_q <= 16'(merge({16'b0, ref_hi_q}, wd_q, ws_q));
          ADW'(e2t_pkg::CSR_CTRL): begin
            soft_reset_o <= wd_q[e2t_pkg::CTRL_SOFT_RESET_BIT];
            snapshot_o   <= wd_q[e2t_pkg::CTRL_CNT_SNAPSHOT_BIT];
            cnt_clear_o  <= wd_q[e2t_pkg::CTRL_CNT_CLEAR_BIT];
            maxp_clear_o <= wd_q[e2t_pkg::CTRL_MAXP_CLEAR_BIT];
          end
          default: ;
        endcase
      end
    end
  end

  // ---- sticky status: DONE, ERROR, ERR_CODE ----
  logic overflow;
  assign overflow = push_o && fifo_full_i;
  always_ff @(posedge clk_i) begin
    if (!rst_ni || soft_reset_o) begin
      done_q <= 1'b0;
      err_q  <= 1'b0;
      code_q <= '0;
    end else begin
      if (wr_status && wd_q[e2t_pkg::STATUS_DONE_BIT]) done_q <= 1'b0;
      if (wr_status && wd_q[e2t_pkg::STATUS_ERROR_BIT]) begin
        err_q  <= 1'b0;
        code_q <= '0;
      end
      if (done_i) done_q <= 1'b1;
      if (err_i) begin
        err_q  <= 1'b1;
        code_q <= err_code_i;
      end else if (overflow) begin
        err_q  <= 1'b1;
        code_q <= 8'(e2t_pkg::ERR_FIFO_OVERFLOW);
      end
    end
  end

  assign irq_o = (done_q && irq_en_q[e2t_pkg::IRQ_DONE_BIT]) ||
                 (err_q && irq_en_q[e2t_pkg::IRQ_ERROR_BIT]);

  // ---- read channel ----
  logic          r_v_q;
  logic [DW-1:0] rd_q, rmux;
  logic [ADW-1:0] raddr;
  assign raddr     = {araddr_i[ADW-1:2], 2'b00};
  assign arready_o = !r_v_q;
  assign rvalid_o  = r_v_q;
  assign rdata_o   = rd_q;
  assign rresp_o   = 2'b00;

  logic [31:0] status_word;
  always_comb begin
    status_word = '0;
    status_word[e2t_pkg::STATUS_BUSY_BIT]      = busy_i;
    status_word[e2t_pkg::STATUS_DONE_BIT]      = done_q;
    status_word[e2t_pkg::STATUS_ERROR_BIT]     = err_q;
    status_word[e2t_pkg::STATUS_FIFO_FULL_BIT] = fifo_full_i;
    status_word[e2t_pkg::STATUS_FIFO_CNT_LSB +: e2t_pkg::STATUS_FIFO_CNT_W] = fifo_count_i;
    status_word[e2t_pkg::STATUS_DRAINING_BIT]  = draining_i;
    status_word[e2t_pkg::STATUS_ERR_CODE_LSB +: e2t_pkg::STATUS_ERR_CODE_W] = code_q;
  end

  localparam int unsigned CNT_END = e2t_pkg::CSR_CNT_BASE +
                                    e2t_pkg::NUM_COUNTERS * e2t_pkg::CSR_CNT_STRIDE;
  logic [ADW-1:0] cnt_off;
  assign cnt_off = raddr - ADW'(e2t_pkg::CSR_CNT_BASE);

  always_comb begin
    rmux = '0;
    if (32'(raddr) >= e2t_pkg::CSR_CNT_BASE && 32'(raddr) < CNT_END) begin
      rmux = snap_i[32'(cnt_off[ADW-1:3]) * e2t_pkg::CNT_W + (cnt_off[2] ? 32 : 0) +: 32];
    end else begin
      unique case (raddr)
        ADW'(e2t_pkg::CSR_ID):          rmux = e2t_pkg::ID_VALUE;
        ADW'(e2t_pkg::CSR_VERSION):     rmux = e2t_pkg::VERSION_VALUE;
        ADW'(e2t_pkg::CSR_HWCFG):       rmux = {16'(DEPTH), 8'(C), 8'(R)};
        ADW'(e2t_pkg::CSR_HWCFG2):      rmux = {8'b0, 8'(Q), 16'(RWS)};
        ADW'(e2t_pkg::CSR_STATUS):      rmux = status_word;
        ADW'(e2t_pkg::CSR_IRQ_EN):      rmux = {30'b0, irq_en_q};
        ADW'(e2t_pkg::CSR_CMD_M):       rmux = m_q;
        ADW'(e2t_pkg::CSR_CMD_N):       rmux = n_q;
        ADW'(e2t_pkg::CSR_CMD_K):       rmux = k_q;
        ADW'(e2t_pkg::CSR_CMD_CFG):     rmux = cfg_q;
        ADW'(e2t_pkg::CSR_PSG_THR_LO):  rmux = thr_lo_q;
        ADW'(e2t_pkg::CSR_PSG_THR_HI):  rmux = {16'b0, thr_hi_q};
        ADW'(e2t_pkg::CSR_PSG_C):       rmux = {16'b0, c_q};
        ADW'(e2t_pkg::CSR_PSG_REF_LO):  rmux = ref_lo_q;
        ADW'(e2t_pkg::CSR_PSG_REF_HI):  rmux = {16'b0, ref_hi_q};
        ADW'(e2t_pkg::CSR_PSG_MAXP_LO): rmux = maxp_i[31:0];
        ADW'(e2t_pkg::CSR_PSG_MAXP_HI): rmux = {16'b0, maxp_i[47:32]};
        default:                        rmux = '0;
      endcase
    end
  end

  always_ff @(posedge clk_i) begin
    if (!rst_ni) begin
      r_v_q <= 1'b0;
      rd_q  <= '0;
    end else begin
      if (arvalid_i && arready_o) begin
        r_v_q <= 1'b1;
        rd_q  <= rmux;
      end else if (r_v_q && rready_i) begin
        r_v_q <= 1'b0;
      end
    end
  end
endmodule
