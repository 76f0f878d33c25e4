// e2t_engine: the GEMM / PSG sequencer. Takes one command at a time from the command FIFO, walks
// the output tiles (mt outer, nt inner) and the K chunks of each tile, loads operand lanes from the
// input stream into the banks, issues k-steps to the array (broadcast, output-stationary), and
// streams results out. The schedule is strictly sequential (load, compute, flush, output), so the
// cycle count of a command is the closed formula of rtl/README.md plus the stall cycles it counts.
// Errors never hang the block: bad commands are skipped, a malformed packet aborts the command and
// the input is drained until a new command is pushed.
//
// Two paths (rtl/README.md, "Tiling and the stream format"):
// * per-tile (CMD_CFG.REUSE = 0, and every PSG): the strictly sequential schedule above;
// * reuse (OP_GEMM with CMD_CFG.REUSE = 1, ceil(K/E) <= RWS): a block of Q column tiles of B stays
//   in the B banks while R-row panels of A stream through two A buffers (panel g+1 loads while g
//   computes against the Q column tiles); the B banks hold two blocks, and the next block arrives
//   in slices (one column tile after each A panel of the current block), so it loads while the
//   current block computes; a result shadow in every PE lets one tile's rows drain while the next
//   tile computes. Three processes run concurrently: loader, compute, drainer. Any
//   stream stall (loader waiting for a beat, or the drainer unable to hand a beat to the output
//   register) freezes all three for that cycle, so "total - stall cycles" is exactly the no-stall
//   schedule (the README's recurrence) whatever the back-pressure.
module e2t_engine #(
  parameter int unsigned R     = 4,
  parameter int unsigned C     = 4,
  parameter int unsigned DEPTH = 64,
  parameter int unsigned RWS   = 256,  // reuse path: words per lane of one A buffer / B sub-tile
  parameter int unsigned Q     = 8,    // reuse path: column tiles per resident B block
  parameter int unsigned INC_W = 40
) (
  input  logic                                      clk_i,
  input  logic                                      rst_ni,
  input  logic                                      soft_reset_i,
  // command FIFO
  input  logic                                      cmd_valid_i,
  input  logic [e2t_pkg::CMD_W-1:0]                 cmd_i,
  output logic                                      cmd_pop_o,
  output logic                                      cmd_flush_o,
  // operand stream
  input  logic [e2t_pkg::AXIS_DATA_W-1:0]           s_tdata_i,
  input  logic                                      s_tvalid_i,
  output logic                                      s_tready_o,
  input  logic                                      s_tlast_i,
  // result stream
  output logic [e2t_pkg::AXIS_DATA_W-1:0]           m_tdata_o,
  output logic                                      m_tvalid_o,
  input  logic                                      m_tready_i,
  output logic                                      m_tlast_o,
  // status
  output logic                                      busy_o,
  output logic                                      draining_o,
  output logic                                      done_o,      // pulse in S_DONE: a command completed
  output logic                                      err_o,       // pulse: err_code_o is valid
  output logic [e2t_pkg::STATUS_ERR_CODE_W-1:0]     err_code_o,
  input  logic                                      maxp_clear_i,
  output logic [e2t_pkg::ACC_W-1:0]                 maxp_o,
  output logic [e2t_pkg::NUM_COUNTERS*INC_W-1:0]    cnt_inc_o
);
  localparam int unsigned AW   = e2t_pkg::ACC_W;
  localparam int unsigned CW   = e2t_pkg::CODE_W;
  localparam int unsigned DW   = e2t_pkg::AXIS_DATA_W;
  localparam int unsigned BA   = $clog2(DEPTH);        // per-tile path word address width
  localparam int unsigned RW   = $clog2(RWS);          // reuse path word index width
  localparam int unsigned QW   = (Q > 1) ? $clog2(Q) : 1;  // sub-tile index width
  localparam int unsigned QS   = $clog2(Q);                // sub-tile field width in a B address
  localparam int unsigned AD   = (2 * RWS > DEPTH) ? 2 * RWS : DEPTH;   // A bank words
  localparam int unsigned BD   = (2 * Q * RWS > DEPTH) ? 2 * Q * RWS : DEPTH;   // B bank words
  localparam int unsigned ABA  = $clog2(AD);
  localparam int unsigned BBA  = $clog2(BD);
  localparam int unsigned KW   = 25;                   // K and chunk arithmetic (K < 2^24)
  localparam int unsigned LW   = 7;                    // lane index (R + C <= 64)
  localparam int unsigned LLW  = 13;                   // reuse loader lane (Q * C <= 2048)
  localparam int unsigned TW   = ((BA > RW) ? BA : RW) + 2;  // k-step index (< 4 * words)
  localparam int unsigned QC   = Q * C;                // columns of a B block
  localparam int unsigned RSW  = $clog2(R+1);          // array row select width
  localparam int unsigned SW   = e2t_pkg::CFG_SHIFT_W;
  localparam int unsigned NREQ = e2t_pkg::REQ_PER_BEAT;

  if (DEPTH < 2 || (DEPTH & (DEPTH - 1)) != 0) begin : g_bad_depth
    $error("e2t_engine: DEPTH must be a power of two, at least 2");
  end
  if (R < 1 || R > 32 || C < 2 || C > 32) begin : g_bad_shape
    $error("e2t_engine: need 1 <= R <= 32 and 2 <= C <= 32");
  end
  if (RWS < 2 || RWS > 32768 || (RWS & (RWS - 1)) != 0 || Q < 1 || Q > 64 || (Q & (Q - 1)) != 0)
  begin : g_bad_reuse
    $error("e2t_engine: RWS must be a power of two in 2..32768, Q a power of two in 1..64");
  end

  typedef enum logic [3:0] {
    S_IDLE, S_START, S_LOAD, S_COMP, S_FLUSH, S_ROW, S_CHK, S_STATUS, S_OUT, S_DONE, S_DRAIN,
    S_RUN, S_FIN
  } state_e;
  typedef enum logic [1:0] { D_IDLE, D_ROW, D_OUT } dstate_e;

  state_e state_q;
  logic [e2t_pkg::CMD_W-1:0] cmd_q;
  logic [31:0] cmd_m, cmd_n, cmd_k, cmd_cfg;
  assign cmd_m   = cmd_q[e2t_pkg::CMD_M_LSB +: 32];
  assign cmd_n   = cmd_q[e2t_pkg::CMD_N_LSB +: 32];
  assign cmd_k   = cmd_q[e2t_pkg::CMD_K_LSB +: 32];
  assign cmd_cfg = cmd_q[e2t_pkg::CMD_CFG_LSB +: 32];

  // command fields
  logic [3:0]    opcode;
  logic          cmd_int8, is_psg, cmd_reuse;
  logic [1:0]    fmt;
  logic [SW-1:0] shift;
  logic [AW-1:0] thr;
  logic [16:0]   m_dim, n_dim;
  logic [KW-1:0] k_dim;

  // tile / chunk / lane state
  logic [16:0]   m0_q, n0_q;
  logic [5:0]    rv, cv;                // valid rows / columns of the current tile (1..32)
  logic          pass8_q;               // current pass runs in INT8 mode
  logic          checking_q;            // ROW states feed the PSG check (not the output)
  logic [KW-1:0] k0_q;
  logic [LW-1:0] lane_q;
  logic [BA-1:0] word_q;
  logic [TW-1:0] t_q;
  logic [1:0]    flush_q;
  logic [5:0]    rowc_q;
  logic [5:0]    beat_q;
  logic [AW-1:0] rowd_q [C];
  logic [10:0]   unc_q;                 // uncertain entries in the tile (<= 32*32)
  logic [AW-1:0] tmax_q, maxp_q;

  // reuse path state
  logic          ru_q;                  // the running command uses the reuse path
  logic [1:0]    bfull_q;               // B buffer p holds a loaded block
  logic [1:0]    afull_q;               // A buffer p holds a loaded panel
  // loader
  logic          ld_kind_q;             // 0: B block packet, 1: A panel packet
  logic          ld_done_q;
  logic          ld_buf_q, ld_bbuf_q;
  logic [16:0]   ld_m0_q;
  logic [16:0]   ld_an0_q, ld_bn0_q;    // first column of the A panels' block / of the B block
  logic [QW:0]   ld_send_q;             // B packet ends at sub-tile ld_send_q (exclusive)
  logic [LLW-1:0] ld_lane_q;            // A: row in the panel
  logic [LLW-1:0] ld_col_q;             // B: column in the block
  logic [RW-1:0] ld_word_q;
  logic [4:0]    ld_j_q;                // B bank of the current column
  logic [QW-1:0] ld_s_q;                // B sub-tile of the current column
  // compute
  logic          c_buf_q, c_bbuf_q, c_done_q;
  logic [16:0]   c_m0_q, c_nb0_q, c_n0_q;
  logic [QW-1:0] c_s_q;
  logic [TW-1:0] c_t_q;
  // shadow ownership, capture delay, drainer
  logic          shq_q;                 // a captured or in-flight tile owns the shadows
  logic [2:0]    cd_q;                  // last-step issue -> shadows readable (T_CAP = 4)
  logic [5:0]    p_rv_q, p_cv_q;        // tile waiting for the drainer
  logic          p_last_q;
  dstate_e       d_state_q;
  logic [5:0]    d_row_q, d_beat_q, d_rv_q, d_cv_q;
  logic          d_last_q, d_pend_q;
  // output register of the reuse path (AXI4-Stream TVALID must hold until accepted)
  logic [DW-1:0] ob_q;
  logic          obl_q, obv_q;

  // ---- decoded command ----
  always_comb begin
    opcode   = cmd_cfg[e2t_pkg::CFG_OPCODE_LSB +: e2t_pkg::CFG_OPCODE_W];
    cmd_int8 = cmd_cfg[e2t_pkg::CFG_MODE_BIT];
    fmt      = cmd_cfg[e2t_pkg::CFG_OUT_FMT_LSB +: e2t_pkg::CFG_OUT_FMT_W];
    shift    = cmd_cfg[e2t_pkg::CFG_SHIFT_LSB +: SW];
    is_psg   = (opcode == 4'(e2t_pkg::OP_PSG));
    cmd_reuse = cmd_cfg[e2t_pkg::CFG_REUSE_BIT];
    thr      = cmd_q[e2t_pkg::CMD_THR_LSB +: AW];
    m_dim    = cmd_m[16:0];
    n_dim    = cmd_n[16:0];
    k_dim    = cmd_k[KW-1:0];
  end

  // ---- tile shape ----
  logic [16:0] m_rem, n_rem;
  always_comb begin
    m_rem = m_dim - m0_q;
    n_rem = n_dim - n0_q;
    rv = (m_rem >= 17'(R)) ? 6'(R) : m_rem[5:0];
    cv = (n_rem >= 17'(C)) ? 6'(C) : n_rem[5:0];
  end
  logic last_tile;
  assign last_tile = (m0_q + 17'(R) >= m_dim) && (n0_q + 17'(C) >= n_dim);

  // ---- chunk shape (from k0_q and the pass mode) ----
  logic [KW-1:0] k_rem, kch, kc, words, steps;
  logic          last_chunk;
  logic [LW-1:0] lanes_m1;
  always_comb begin
    k_rem      = k_dim - k0_q;
    kch        = pass8_q ? KW'(8 * DEPTH) : KW'(4 * DEPTH);
    last_chunk = (k_rem <= kch);
    kc         = last_chunk ? k_rem : kch;
    words      = pass8_q ? ((kc + KW'(7)) >> 3) : ((kc + KW'(3)) >> 2);
    steps      = pass8_q ? ((kc + KW'(1)) >> 1) : kc;
    lanes_m1   = LW'(rv) + LW'(cv) - LW'(1);
  end

  // ---- reuse path shapes ----
  logic [KW-1:0]  r_words, r_steps;     // words per lane, k-step issues per tile (mode of the cmd)
  logic [16:0]    ld_m_rem, ld_n_rem, c_m_rem, c_n_rem;
  logic [5:0]     ld_rv, c_rv, c_cv;
  logic [LLW-1:0] ld_bw, ld_pk_end;
  logic           ld_last_beat, ld_word_last, ld_slice_ok, c_last_step, c_last_sub, c_last_panel, c_last_block;
  always_comb begin
    r_words  = cmd_int8 ? ((k_dim + KW'(7)) >> 3) : ((k_dim + KW'(3)) >> 2);
    r_steps  = cmd_int8 ? ((k_dim + KW'(1)) >> 1) : k_dim;
    ld_m_rem = m_dim - ld_m0_q;
    ld_n_rem = n_dim - ld_bn0_q;
    ld_rv    = (ld_m_rem >= 17'(R)) ? 6'(R) : ld_m_rem[5:0];
    ld_bw    = (ld_n_rem >= 17'(QC)) ? LLW'(QC) : ld_n_rem[LLW-1:0];
    ld_pk_end = (LLW'(ld_send_q) * LLW'(C) < ld_bw) ? LLW'(ld_send_q) * LLW'(C) : ld_bw;
    ld_word_last = (KW'(ld_word_q) == r_words - KW'(1));
    ld_last_beat = ld_word_last && (ld_kind_q ? (ld_lane_q == LLW'(ld_rv) - LLW'(1))
                                              : (ld_col_q + LLW'(1) == ld_pk_end));
    // after an A panel: a slice of the next block (only the one after the A panels' block) if
    // that block has columns left to load
    ld_slice_ok = (ld_bn0_q == ld_an0_q + 17'(QC)) && (ld_bn0_q < n_dim) && (ld_col_q < ld_bw);
    c_m_rem  = m_dim - c_m0_q;
    c_n_rem  = n_dim - c_n0_q;
    c_rv     = (c_m_rem >= 17'(R)) ? 6'(R) : c_m_rem[5:0];
    c_cv     = (c_n_rem >= 17'(C)) ? 6'(C) : c_n_rem[5:0];
    c_last_step  = (KW'(c_t_q) == r_steps - KW'(1));
    c_last_sub   = (c_n0_q + 17'(C) >= n_dim) || (c_s_q == QW'(Q - 1));
    c_last_panel = (c_m0_q + 17'(R) >= m_dim);
    c_last_block = (c_nb0_q + 17'(QC) >= n_dim);
  end

  // ---- output beats per row (of the row being sent: per-tile path or drainer) ----
  logic [5:0] o_cv, o_beat, bpr;
  assign o_cv   = ru_q ? d_cv_q : cv;
  assign o_beat = ru_q ? d_beat_q : beat_q;
  always_comb begin
    if (is_psg || fmt == 2'(e2t_pkg::OUT_SIGN)) bpr = 6'((o_cv + 6'd31) >> 5);
    else if (fmt == 2'(e2t_pkg::OUT_RAW48))     bpr = o_cv;
    else                                        bpr = 6'((o_cv + 6'd3) >> 2);
  end

  // ---- reuse path: activity, freeze, issue ----
  logic l_act, d_push, frz_in, frz_out, adv, r_iss, r_res, cap_ev, d_tile_end;
  always_comb begin
    l_act   = (state_q == S_RUN) && !ld_done_q &&
              (ld_kind_q ? !afull_q[ld_buf_q] : !bfull_q[ld_bbuf_q]);
    d_push  = (state_q == S_RUN) && (d_state_q == D_OUT);
    frz_in  = l_act && !s_tvalid_i;
    frz_out = d_push && obv_q && !m_tready_i;
    adv     = (state_q == S_RUN) && !frz_in && !frz_out;
    r_iss   = adv && bfull_q[c_bbuf_q] && afull_q[c_buf_q] && !c_done_q &&
              !(c_last_step && shq_q);
    r_res   = r_iss && c_last_step;
    cap_ev  = adv && cd_q[2];
    d_tile_end = adv && (d_state_q == D_OUT) && (d_beat_q == bpr - 6'd1) &&
                 (d_row_q == d_rv_q - 6'd1);
  end

  // ---- streams ----
  logic in_fire, out_fire, old_v, old_fire;
  logic [DW-1:0] beat_data;
  logic          beat_last;
  // While draining, stop discarding as soon as a new command is queued: its data follows.
  assign s_tready_o = (state_q == S_LOAD) || (state_q == S_DRAIN && !cmd_valid_i) ||
                      (l_act && !frz_out);
  assign old_v      = (state_q == S_OUT) || (state_q == S_STATUS);
  // A beat left in the reuse output register (only after an abort) goes first.
  assign m_tvalid_o = obv_q || old_v;
  assign m_tdata_o  = obv_q ? ob_q : beat_data;
  assign m_tlast_o  = obv_q ? obl_q : beat_last;
  assign in_fire    = s_tvalid_i && s_tready_o;
  assign out_fire   = m_tvalid_o && m_tready_i;
  assign old_fire   = old_v && !obv_q && m_tready_i;

  // ---- operand banks ----
  // Per-tile path: both use words [0, DEPTH). Reuse path: A bank word {buffer, w}, B bank word
  // {buffer, sub-tile, w} (column n0 + s*C + j of a block lives in bank j, sub-tile s).
  logic [R*DW-1:0] a_rdata;
  logic [C*DW-1:0] b_rdata;
  logic [ABA-1:0]  a_raddr, a_waddr;
  logic [BBA-1:0]  b_raddr, b_waddr;
  logic [RW-1:0]   c_word;
  assign c_word  = RW'(c_t_q[TW-1:2]);
  assign a_raddr = ru_q ? ((ABA'(c_buf_q) << RW) | ABA'(c_word)) : ABA'(t_q[TW-1:2]);
  assign b_raddr = ru_q ? ((BBA'(c_bbuf_q) << (QS + RW)) | (BBA'(c_s_q) << RW) | BBA'(c_word))
                        : BBA'(t_q[TW-1:2]);
  assign a_waddr = ru_q ? ((ABA'(ld_buf_q) << RW) | ABA'(ld_word_q)) : ABA'(word_q);
  assign b_waddr = ru_q ? ((BBA'(ld_bbuf_q) << (QS + RW)) | (BBA'(ld_s_q) << RW) |
                          BBA'(ld_word_q))
                        : BBA'(word_q);

  for (genvar i = 0; i < R; i++) begin : g_abank
    logic we;
    assign we = in_fire && (((state_q == S_LOAD) && (lane_q == LW'(i))) ||
                            (l_act && ld_kind_q && (ld_lane_q == LLW'(i))));
    e2t_opbuf #(.DEPTH(AD)) u_buf (
      .clk_i, .we_i(we), .waddr_i(a_waddr), .wdata_i(s_tdata_i),
      .raddr_i(a_raddr), .rdata_o(a_rdata[i*DW +: DW])
    );
  end
  for (genvar j = 0; j < C; j++) begin : g_bbank
    logic we;
    assign we = in_fire && (((state_q == S_LOAD) && (lane_q == LW'(rv) + LW'(j))) ||
                            (l_act && !ld_kind_q && (ld_j_q == 5'(j))));
    e2t_opbuf #(.DEPTH(BD)) u_buf (
      .clk_i, .we_i(we), .waddr_i(b_waddr), .wdata_i(s_tdata_i),
      .raddr_i(b_raddr), .rdata_o(b_rdata[j*DW +: DW])
    );
  end

  // ---- issue pipeline: stage 1 (bank read), stage 2 (operand registers) ----
  logic          s1_v_q, s1_clr_q, s1_last_q, s1_int8_q, s1_m0_q, s1_m1_q;
  logic [1:0]    s1_sub_q;
  logic          op_v_q, op_clr_q, op_last_q, op_int8_q;
  logic [R*CW-1:0] op_a_q;
  logic [C*CW-1:0] op_b_q;
  logic [KW-1:0] kidx, iss_kc;
  logic [TW-1:0] iss_t;
  logic          iss_v, iss_clr, iss_last, pass_end;
  // pass_end: last k-step of a per-tile pass issued this cycle
  assign pass_end = (state_q == S_COMP) && (t_q == TW'(steps - KW'(1))) && last_chunk;
  assign iss_t    = ru_q ? c_t_q : t_q;
  assign iss_kc   = ru_q ? k_dim : kc;
  assign iss_v    = ru_q ? r_iss : (state_q == S_COMP);
  assign iss_clr  = ru_q ? (c_t_q == '0) : ((k0_q == '0) && (t_q == '0));
  assign iss_last = ru_q ? r_res : pass_end;
  assign kidx = pass8_q ? KW'({iss_t, 1'b0}) : KW'(iss_t);

  function automatic logic [CW-1:0] pick(input logic [DW-1:0] w, input logic [1:0] sub,
                                         input logic lo_ok, input logic hi_ok);
    logic [CW-1:0] e;
    e = w[sub*CW +: CW];
    pick = {hi_ok ? e[15:8] : 8'h00, lo_ok ? e[7:0] : 8'h00};
  endfunction

  always_ff @(posedge clk_i) begin
    if (!rst_ni || soft_reset_i) begin
      s1_v_q <= 1'b0; s1_clr_q <= 1'b0; s1_last_q <= 1'b0; s1_int8_q <= 1'b0;
      s1_m0_q <= 1'b0; s1_m1_q <= 1'b0; s1_sub_q <= '0;
      op_v_q <= 1'b0; op_clr_q <= 1'b0; op_last_q <= 1'b0; op_int8_q <= 1'b0;
      op_a_q <= '0; op_b_q <= '0;
    end else begin
      s1_v_q    <= iss_v;
      s1_clr_q  <= iss_v && iss_clr;
      s1_last_q <= iss_v && iss_last;
      s1_int8_q <= pass8_q;
      s1_sub_q  <= iss_t[1:0];
      // element masks: k-steps past the chunk end contribute nothing (stale or padding data)
      s1_m0_q   <= (kidx < iss_kc);
      s1_m1_q   <= pass8_q ? (kidx + KW'(1) < iss_kc) : (kidx < iss_kc);
      op_v_q    <= s1_v_q;
      op_clr_q  <= s1_clr_q;
      op_last_q <= s1_last_q;
      op_int8_q <= s1_int8_q;
      for (int unsigned i = 0; i < R; i++)
        op_a_q[i*CW +: CW] <= pick(a_rdata[i*DW +: DW], s1_sub_q, s1_m0_q, s1_m1_q);
      for (int unsigned j = 0; j < C; j++)
        op_b_q[j*CW +: CW] <= pick(b_rdata[j*DW +: DW], s1_sub_q, s1_m0_q, s1_m1_q);
    end
  end

  // ---- the array ----
  logic [C*AW-1:0] arr_row;
  e2t_array #(.R(R), .C(C)) u_array (
    .clk_i, .rst_ni,
    .valid_i(op_v_q), .clr_i(op_clr_q), .last_i(op_last_q), .int8_i(op_int8_q),
    .a_i(op_a_q), .b_i(op_b_q),
    .row_sel_i(RSW'(ru_q ? d_row_q : rowc_q)), .row_o(arr_row)
  );

  // ---- PSG check of one latched row ----
  logic [AW-1:0] absv [C];
  logic [10:0]   row_unc;
  logic [AW-1:0] row_max;
  always_comb begin
    row_unc = '0;
    row_max = '0;
    for (int unsigned j = 0; j < C; j++) begin
      absv[j] = rowd_q[j][AW-1] ? (~rowd_q[j] + AW'(1)) : rowd_q[j];
      if (6'(j) < cv) begin
        if (absv[j] < thr) row_unc = row_unc + 11'd1;
        if (absv[j] > row_max) row_max = absv[j];
      end
    end
  end

  // ---- result beat ----
  logic [CW-1:0] rq [NREQ];
  for (genvar e = 0; e < NREQ; e++) begin : g_rq
    logic [AW-1:0] src;
    always_comb begin
      src = '0;
      for (int unsigned j = 0; j < C; j++)
        if ((j % NREQ) == e && 6'(j / NREQ) == o_beat) src = rowd_q[j];
    end
    e2t_requant u_rq (.acc_i(src), .shift_i(shift), .q_o(rq[e]));
  end

  logic [AW-1:0] raw_sel;
  logic [DW-1:0] sign_beat, req_beat;
  always_comb begin
    raw_sel = '0;
    for (int unsigned j = 0; j < C; j++)
      if (6'(j) == o_beat) raw_sel = rowd_q[j];
    sign_beat = '0;
    for (int unsigned j = 0; j < C; j++) begin
      // C <= 32, so a row's signs always fit one beat
      if (6'(j) < o_cv && rowd_q[j] != '0)
        sign_beat[2*j +: 2] = rowd_q[j][AW-1] ? 2'(e2t_pkg::SIGN_NEG) : 2'(e2t_pkg::SIGN_POS);
    end
    req_beat = '0;
    for (int unsigned e = 0; e < NREQ; e++)
      if (6'(e) + (o_beat << 2) < o_cv) req_beat[e*CW +: CW] = rq[e];
  end

  always_comb begin
    beat_data = '0;
    beat_last = 1'b0;
    if (state_q == S_STATUS) begin
      beat_data[e2t_pkg::PSG_ST_MAXP_LSB +: AW] = tmax_q;
      beat_data[e2t_pkg::PSG_ST_UNCERT_LSB +: e2t_pkg::PSG_ST_UNCERT_W] =
          e2t_pkg::PSG_ST_UNCERT_W'(unc_q);
      beat_data[e2t_pkg::PSG_ST_RECOMPUTE_BIT] = (unc_q != '0);
      beat_last = 1'b1;
    end else begin
      if (is_psg || fmt == 2'(e2t_pkg::OUT_SIGN)) beat_data = sign_beat;
      else if (fmt == 2'(e2t_pkg::OUT_RAW48))     beat_data = {{(DW-AW){raw_sel[AW-1]}}, raw_sel};
      else                                        beat_data = req_beat;
      beat_last = ru_q ? ((d_row_q == d_rv_q - 6'd1) && (d_beat_q == bpr - 6'd1))
                       : ((rowc_q == rv - 6'd1) && (beat_q == bpr - 6'd1));
    end
  end

  // ---- command validation ----
  logic [7:0] start_err;
  always_comb begin
    start_err = 8'(e2t_pkg::ERR_NONE);
    if (opcode != 4'(e2t_pkg::OP_GEMM) && opcode != 4'(e2t_pkg::OP_PSG))
      start_err = 8'(e2t_pkg::ERR_BAD_OPCODE);
    else if (cmd_m == '0 || cmd_n == '0 || cmd_k == '0)
      start_err = 8'(e2t_pkg::ERR_ZERO_DIM);
    else if (cmd_m > e2t_pkg::DIM_MN_MAX || cmd_n > e2t_pkg::DIM_MN_MAX ||
             cmd_k > e2t_pkg::DIM_K_MAX || (cmd_reuse && r_words > KW'(RWS)))
      start_err = 8'(e2t_pkg::ERR_DIM_TOO_LARGE);
    else if (fmt == 2'd3 || 32'(shift) > e2t_pkg::SHIFT_MAX || (cmd_reuse && is_psg))
      start_err = 8'(e2t_pkg::ERR_BAD_CFG);
  end

  // ---- counter events ----
  logic [INC_W-1:0] inc [e2t_pkg::NUM_COUNTERS];
  logic [10:0]      rvcv;
  logic             mac_ev;
  // one multiplier for both paths (operands muxed, not products)
  logic [5:0]       mrv, mcv;
  assign mrv    = ru_q ? c_rv : rv;
  assign mcv    = ru_q ? c_cv : cv;
  // Shift-and-add, not '*': Yosys maps any 11-bit product to a DSP48E1, and the DSPs are the PEs'.
  always_comb begin
    rvcv = '0;
    for (int unsigned i = 0; i < 6; i++) if (mcv[i]) rvcv = rvcv + (11'(mrv) << i);
  end
  assign mac_ev = ru_q ? r_res : pass_end;

  always_comb begin
    for (int unsigned i = 0; i < e2t_pkg::NUM_COUNTERS; i++) inc[i] = '0;
    inc[e2t_pkg::CNT_TOTAL_CYCLES] = INC_W'(state_q != S_IDLE && state_q != S_DRAIN);
    inc[e2t_pkg::CNT_BUSY_CYCLES]  = INC_W'(iss_v);
    // Reuse path: a frozen cycle is counted once (input first), so total - stalls = schedule.
    inc[e2t_pkg::CNT_STALL_IN]     = INC_W'((state_q == S_LOAD && !s_tvalid_i) || frz_in);
    inc[e2t_pkg::CNT_STALL_OUT]    = INC_W'((old_v && !old_fire) || (frz_out && !frz_in) ||
                                            (state_q == S_FIN && obv_q && !m_tready_i));
    if (mac_ev) begin
      if (pass8_q) inc[e2t_pkg::CNT_MACS_INT8]  = INC_W'(rvcv) * INC_W'(k_dim);
      else         inc[e2t_pkg::CNT_MACS_INT16] = INC_W'(rvcv) * INC_W'(k_dim);
    end
    inc[e2t_pkg::CNT_BYTES_IN]  = in_fire  ? INC_W'(8) : '0;
    inc[e2t_pkg::CNT_BYTES_OUT] = out_fire ? INC_W'(8) : '0;
    if (state_q == S_STATUS && old_fire) begin
      inc[e2t_pkg::CNT_PSG_PREDICTED]  = INC_W'(rvcv);
      inc[e2t_pkg::CNT_PSG_UNCERTAIN]  = INC_W'(unc_q);
      inc[e2t_pkg::CNT_PSG_RECOMPUTED] = INC_W'(unc_q != '0);
    end
    inc[e2t_pkg::CNT_GEMMS] = INC_W'(state_q == S_DONE);
    for (int unsigned i = 0; i < e2t_pkg::NUM_COUNTERS; i++) cnt_inc_o[i*INC_W +: INC_W] = inc[i];
  end

  // ---- end-of-command events ----
  // Combinational, so the CSR latches DONE / ERROR on the same edge that drops BUSY (a host polling
  // "until not busy" always sees the outcome), and the FIFO flush of an abort lands on the edge that
  // enters DRAIN (so DRAIN never sees the flushed commands as a newly pushed one).
  logic last_word, abort_early, abort_missing;
  assign last_word     = last_chunk && lane_q == lanes_m1 && word_q == BA'(words - KW'(1));
  // Reuse path: TLAST ends each B block packet and each A panel packet.
  assign abort_early   = in_fire && s_tlast_i &&
                         (((state_q == S_LOAD) && !last_word) || (l_act && !ld_last_beat));
  assign abort_missing = in_fire && !s_tlast_i &&
                         (((state_q == S_LOAD) && last_word) || (l_act && ld_last_beat));
  always_comb begin
    done_o      = (state_q == S_DONE);
    cmd_flush_o = abort_early || abort_missing;
    err_o       = 1'b0;
    err_code_o  = 8'(e2t_pkg::ERR_NONE);
    if (state_q == S_START && start_err != 8'(e2t_pkg::ERR_NONE)) begin
      err_o      = 1'b1;
      err_code_o = start_err;
    end else if (abort_early) begin
      err_o      = 1'b1;
      err_code_o = 8'(e2t_pkg::ERR_EARLY_TLAST);
    end else if (abort_missing) begin
      err_o      = 1'b1;
      err_code_o = 8'(e2t_pkg::ERR_MISSING_TLAST);
    end
  end

  // ---- status outputs ----
  assign busy_o     = (state_q != S_IDLE) && (state_q != S_DRAIN);
  assign draining_o = (state_q == S_DRAIN);
  assign maxp_o     = maxp_q;
  assign cmd_pop_o  = (state_q == S_IDLE) && cmd_valid_i && !soft_reset_i;

  // ---- the sequencer ----
  always_ff @(posedge clk_i) begin
    if (!rst_ni || soft_reset_i) begin
      state_q    <= S_IDLE;
      cmd_q      <= '0;
      m0_q       <= '0;
      n0_q       <= '0;
      pass8_q    <= 1'b0;
      ru_q       <= 1'b0;
      checking_q <= 1'b0;
      k0_q       <= '0;
      lane_q     <= '0;
      word_q     <= '0;
      t_q        <= '0;
      flush_q    <= '0;
      rowc_q     <= '0;
      beat_q     <= '0;
      unc_q      <= '0;
      tmax_q     <= '0;
      for (int unsigned j = 0; j < C; j++) rowd_q[j] <= '0;
    end else begin
      unique case (state_q)
        S_IDLE: begin
          if (cmd_valid_i) begin
            cmd_q   <= cmd_i;
            state_q <= S_START;
          end
        end
        S_START: begin
          if (start_err != 8'(e2t_pkg::ERR_NONE)) begin
            state_q <= S_IDLE;             // err_o / err_code_o: see end-of-command events
          end else begin
            m0_q    <= '0;
            n0_q    <= '0;
            k0_q    <= '0;
            lane_q  <= '0;
            word_q  <= '0;
            pass8_q <= is_psg ? 1'b1 : cmd_int8;
            ru_q    <= cmd_reuse;
            state_q <= cmd_reuse ? S_RUN : S_LOAD;
          end
        end
        S_RUN: begin
          if (abort_early || abort_missing) begin
            state_q <= S_DRAIN;            // err_o and the FIFO flush: see end-of-command events
          end else if (d_tile_end && d_last_q) begin
            state_q <= S_FIN;
          end
          if (adv && d_state_q == D_ROW)
            for (int unsigned j = 0; j < C; j++) rowd_q[j] <= arr_row[j*AW +: AW];
        end
        S_FIN: begin
          if (!obv_q || m_tready_i) state_q <= S_DONE;
        end
        S_LOAD: begin
          if (in_fire) begin
            if (abort_early || abort_missing) begin
              state_q <= S_DRAIN;          // err_o and the FIFO flush: see end-of-command events
            end else if (word_q == BA'(words - KW'(1))) begin
              word_q <= '0;
              if (lane_q == lanes_m1) begin
                lane_q  <= '0;
                t_q     <= '0;
                state_q <= S_COMP;
              end else begin
                lane_q <= lane_q + LW'(1);
              end
            end else begin
              word_q <= word_q + BA'(1);
            end
          end
        end
        S_COMP: begin
          if (t_q == TW'(steps - KW'(1))) begin
            if (last_chunk) begin
              flush_q <= '0;
              state_q <= S_FLUSH;
            end else begin
              k0_q    <= k0_q + kch;
              state_q <= S_LOAD;
            end
          end else begin
            t_q <= t_q + TW'(1);
          end
        end
        S_FLUSH: begin
          if (flush_q == 2'(e2t_pkg::T_FLUSH - 1)) begin
            rowc_q     <= '0;
            checking_q <= is_psg && pass8_q;
            unc_q      <= '0;
            tmax_q     <= '0;
            state_q    <= S_ROW;
          end else begin
            flush_q <= flush_q + 2'd1;
          end
        end
        S_ROW: begin
          for (int unsigned j = 0; j < C; j++) rowd_q[j] <= arr_row[j*AW +: AW];
          beat_q  <= '0;
          state_q <= checking_q ? S_CHK : S_OUT;
        end
        S_CHK: begin
          unc_q <= unc_q + row_unc;
          if (row_max > tmax_q) tmax_q <= row_max;
          if (rowc_q == rv - 6'd1) begin
            state_q <= S_STATUS;
          end else begin
            rowc_q  <= rowc_q + 6'd1;
            state_q <= S_ROW;
          end
        end
        S_STATUS: begin
          if (old_fire) begin
            checking_q <= 1'b0;
            rowc_q     <= '0;
            if (unc_q != '0) begin
              // recompute the whole tile in INT16 from a re-sent packet
              pass8_q <= 1'b0;
              k0_q    <= '0;
              lane_q  <= '0;
              word_q  <= '0;
              state_q <= S_LOAD;
            end else begin
              state_q <= S_ROW;
            end
          end
        end
        S_OUT: begin
          if (old_fire) begin
            if (beat_q == bpr - 6'd1) begin
              beat_q <= '0;
              if (rowc_q == rv - 6'd1) begin
                rowc_q <= '0;
                if (last_tile) begin
                  state_q <= S_DONE;
                end else begin
                  if (n0_q + 17'(C) >= n_dim) begin
                    n0_q <= '0;
                    m0_q <= m0_q + 17'(R);
                  end else begin
                    n0_q <= n0_q + 17'(C);
                  end
                  k0_q    <= '0;
                  lane_q  <= '0;
                  word_q  <= '0;
                  pass8_q <= is_psg ? 1'b1 : cmd_int8;
                  state_q <= S_LOAD;
                end
              end else begin
                rowc_q  <= rowc_q + 6'd1;
                state_q <= S_ROW;
              end
            end else begin
              beat_q <= beat_q + 6'd1;
            end
          end
        end
        S_DONE: begin
          state_q <= S_IDLE;
        end
        S_DRAIN: begin
          if (cmd_valid_i) state_q <= S_IDLE;
        end
        default: state_q <= S_IDLE;
      endcase
    end
  end

  // ---- reuse path: loader, compute, shadow ownership, drainer, output register ----
  // All updates happen on `adv` cycles only (a stalled stream freezes the whole schedule), except
  // the output register, which hands its beat to the sink whenever TREADY allows.
  always_ff @(posedge clk_i) begin
    if (!rst_ni || soft_reset_i || state_q == S_START) begin
      bfull_q   <= '0;
      afull_q   <= '0;
      ld_kind_q <= 1'b0;
      ld_done_q <= 1'b0;
      ld_buf_q  <= 1'b0;
      ld_bbuf_q <= 1'b0;
      ld_m0_q   <= '0;
      ld_an0_q  <= '0;
      ld_bn0_q  <= '0;
      ld_send_q <= (QW+1)'(Q);
      ld_col_q  <= '0;
      ld_lane_q <= '0;
      ld_word_q <= '0;
      ld_j_q    <= '0;
      ld_s_q    <= '0;
      c_buf_q   <= 1'b0;
      c_bbuf_q  <= 1'b0;
      c_done_q  <= 1'b0;
      c_m0_q    <= '0;
      c_nb0_q   <= '0;
      c_n0_q    <= '0;
      c_s_q     <= '0;
      c_t_q     <= '0;
      shq_q     <= 1'b0;
      cd_q      <= '0;
      p_rv_q    <= '0;
      p_cv_q    <= '0;
      p_last_q  <= 1'b0;
      d_state_q <= D_IDLE;
      d_row_q   <= '0;
      d_beat_q  <= '0;
      d_rv_q    <= '0;
      d_cv_q    <= '0;
      d_last_q  <= 1'b0;
      d_pend_q  <= 1'b0;
    end else if (adv) begin
      // loader: B block 0, then per block its A panels, each followed by a slice of the next
      // block's B (one column tile; after the block's last panel, all that is left of it)
      if (in_fire) begin
        ld_word_q <= ld_word_last ? '0 : ld_word_q + RW'(1);
        if (ld_kind_q) begin
          // A panel: next row, or the panel is complete
          if (ld_word_last) ld_lane_q <= ld_last_beat ? '0 : ld_lane_q + LLW'(1);
          if (ld_last_beat) begin
            afull_q[ld_buf_q] <= 1'b1;
            ld_buf_q <= !ld_buf_q;
            if (ld_m0_q + 17'(R) >= m_dim) begin
              ld_m0_q <= '0;
              if (ld_an0_q + 17'(QC) >= n_dim) ld_done_q <= 1'b1;
              else                              ld_an0_q  <= ld_an0_q + 17'(QC);
            end else begin
              ld_m0_q <= ld_m0_q + 17'(R);
            end
            if (ld_slice_ok) begin
              ld_kind_q <= 1'b0;
              ld_send_q <= (ld_m0_q + 17'(R) >= m_dim) ? (QW+1)'(Q) : (QW+1)'(ld_s_q) + 1'b1;
            end
          end
        end else if (ld_word_last) begin
          // B: next column (columns of a block are contiguous across its slices)
          if (ld_last_beat && ld_col_q + LLW'(1) == ld_bw) begin
            bfull_q[ld_bbuf_q] <= 1'b1;
            ld_bbuf_q <= !ld_bbuf_q;
            ld_bn0_q  <= ld_bn0_q + 17'(QC);
            ld_col_q  <= '0;
            ld_j_q    <= '0;
            ld_s_q    <= '0;
          end else begin
            ld_col_q <= ld_col_q + LLW'(1);
            if (ld_j_q == 5'(C - 1)) begin
              ld_j_q <= '0;
              ld_s_q <= ld_s_q + QW'(1);
            end else begin
              ld_j_q <= ld_j_q + 5'd1;
            end
          end
          if (ld_last_beat) ld_kind_q <= 1'b1;
        end
      end

      // compute: per panel, the block's column tiles back to back; a tile's last k-step waits
      // until the shadows are free (the drainer has latched every row of the previous tile)
      if (r_iss) begin
        if (!c_last_step) begin
          c_t_q <= c_t_q + TW'(1);
        end else begin
          c_t_q    <= '0;
          shq_q    <= 1'b1;
          p_rv_q   <= c_rv;
          p_cv_q   <= c_cv;
          p_last_q <= c_last_sub && c_last_panel && c_last_block;
          if (c_last_sub) begin
            c_s_q <= '0;
            afull_q[c_buf_q] <= 1'b0;
            c_buf_q <= !c_buf_q;
            if (c_last_panel) begin
              c_m0_q   <= '0;
              bfull_q[c_bbuf_q] <= 1'b0;
              c_bbuf_q <= !c_bbuf_q;
              if (c_last_block) begin
                c_done_q <= 1'b1;
              end else begin
                c_nb0_q <= c_nb0_q + 17'(QC);
                c_n0_q  <= c_nb0_q + 17'(QC);
              end
            end else begin
              c_m0_q <= c_m0_q + 17'(R);
              c_n0_q <= c_nb0_q;
            end
          end else begin
            c_s_q  <= c_s_q + QW'(1);
            c_n0_q <= c_n0_q + 17'(C);
          end
        end
      end

      // capture delay: the shadows hold the tile T_CAP cycles after its last k-step issue
      cd_q <= {cd_q[1:0], r_res};

      // drainer
      unique case (d_state_q)
        D_IDLE: begin
          if (cap_ev) begin
            d_rv_q    <= p_rv_q;
            d_cv_q    <= p_cv_q;
            d_last_q  <= p_last_q;
            d_row_q   <= '0;
            d_state_q <= D_ROW;
          end
        end
        D_ROW: begin
          d_beat_q  <= '0;
          d_state_q <= D_OUT;
          if (d_row_q == d_rv_q - 6'd1) shq_q <= 1'b0;
          if (cap_ev) d_pend_q <= 1'b1;
        end
        D_OUT: begin
          if (d_beat_q == bpr - 6'd1) begin
            if (d_row_q == d_rv_q - 6'd1) begin
              if (!d_last_q && (d_pend_q || cap_ev)) begin
                d_rv_q    <= p_rv_q;
                d_cv_q    <= p_cv_q;
                d_last_q  <= p_last_q;
                d_row_q   <= '0;
                d_pend_q  <= 1'b0;
                d_state_q <= D_ROW;
              end else begin
                d_state_q <= D_IDLE;
              end
            end else begin
              d_row_q   <= d_row_q + 6'd1;
              d_state_q <= D_ROW;
              if (cap_ev) d_pend_q <= 1'b1;
            end
          end else begin
            d_beat_q <= d_beat_q + 6'd1;
            if (cap_ev) d_pend_q <= 1'b1;
          end
        end
        default: d_state_q <= D_IDLE;
      endcase
    end
  end

  always_ff @(posedge clk_i) begin
    if (!rst_ni || soft_reset_i) begin
      ob_q  <= '0;
      obl_q <= 1'b0;
      obv_q <= 1'b0;
    end else if (d_push && adv) begin
      ob_q  <= beat_data;
      obl_q <= beat_last;
      obv_q <= 1'b1;
    end else if (m_tready_i) begin
      obv_q <= 1'b0;
    end
  end

  // Running max|P| over all PSG predictions; kept across soft resets (cleared by MAXP_CLEAR).
  always_ff @(posedge clk_i) begin
    if (!rst_ni || maxp_clear_i) maxp_q <= '0;
    else if (state_q == S_CHK && row_max > maxp_q) maxp_q <= row_max;
  end
endmodule
