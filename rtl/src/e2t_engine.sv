// e2t_engine: the GEMM / PSG sequencer. Takes one command at a time from the command FIFO, walks
// the output tiles (mt outer, nt inner) and the K chunks of each tile, loads operand lanes from the
// input stream into the banks, issues k-steps to the array (broadcast, output-stationary), and
// streams results out. The schedule is strictly sequential (load, compute, flush, output), so the
// cycle count of a command is the closed formula of rtl/README.md plus the stall cycles it counts.
// Errors never hang the block: bad commands are skipped, a malformed packet aborts the command and
// the input is drained until a new command is pushed.
module e2t_engine #(
  parameter int unsigned R     = 4,
  parameter int unsigned C     = 4,
  parameter int unsigned DEPTH = 64,
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
  localparam int unsigned BA   = $clog2(DEPTH);        // bank address width
  localparam int unsigned KW   = 25;                   // K and chunk arithmetic (K < 2^24)
  localparam int unsigned LW   = 7;                    // lane index (R + C <= 64)
  localparam int unsigned TW   = BA + 2;               // k-step index inside a chunk (< 4*DEPTH)
  localparam int unsigned RSW  = $clog2(R+1);          // array row select width
  localparam int unsigned SW   = e2t_pkg::CFG_SHIFT_W;
  localparam int unsigned NREQ = e2t_pkg::REQ_PER_BEAT;

  if (DEPTH < 2 || (DEPTH & (DEPTH - 1)) != 0) begin : g_bad_depth
    $error("e2t_engine: DEPTH must be a power of two, at least 2");
  end
  if (R < 1 || R > 32 || C < 2 || C > 32) begin : g_bad_shape
    $error("e2t_engine: need 1 <= R <= 32 and 2 <= C <= 32");
  end

  typedef enum logic [3:0] {
    S_IDLE, S_START, S_LOAD, S_COMP, S_FLUSH, S_ROW, S_CHK, S_STATUS, S_OUT, S_DONE, S_DRAIN
  } state_e;

  state_e state_q;
  logic [e2t_pkg::CMD_W-1:0] cmd_q;
  logic [31:0] cmd_m, cmd_n, cmd_k, cmd_cfg;
  assign cmd_m   = cmd_q[e2t_pkg::CMD_M_LSB +: 32];
  assign cmd_n   = cmd_q[e2t_pkg::CMD_N_LSB +: 32];
  assign cmd_k   = cmd_q[e2t_pkg::CMD_K_LSB +: 32];
  assign cmd_cfg = cmd_q[e2t_pkg::CMD_CFG_LSB +: 32];

  // command fields
  logic [3:0]    opcode;
  logic          cmd_int8, is_psg;
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

  // ---- decoded command ----
  always_comb begin
    opcode   = cmd_cfg[e2t_pkg::CFG_OPCODE_LSB +: e2t_pkg::CFG_OPCODE_W];
    cmd_int8 = cmd_cfg[e2t_pkg::CFG_MODE_BIT];
    fmt      = cmd_cfg[e2t_pkg::CFG_OUT_FMT_LSB +: e2t_pkg::CFG_OUT_FMT_W];
    shift    = cmd_cfg[e2t_pkg::CFG_SHIFT_LSB +: SW];
    is_psg   = (opcode == 4'(e2t_pkg::OP_PSG));
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

  // ---- output beats per row ----
  logic [5:0] bpr;
  always_comb begin
    if (is_psg || fmt == 2'(e2t_pkg::OUT_SIGN)) bpr = 6'((cv + 6'd31) >> 5);
    else if (fmt == 2'(e2t_pkg::OUT_RAW48))     bpr = cv;
    else                                        bpr = 6'((cv + 6'd3) >> 2);
  end

  // ---- streams ----
  logic in_fire, out_fire;
  // While draining, stop discarding as soon as a new command is queued: its data follows.
  assign s_tready_o = (state_q == S_LOAD) || (state_q == S_DRAIN && !cmd_valid_i);
  assign m_tvalid_o = (state_q == S_OUT) || (state_q == S_STATUS);
  assign in_fire    = s_tvalid_i && s_tready_o;
  assign out_fire   = m_tvalid_o && m_tready_i;

  // ---- operand banks ----
  logic [R*DW-1:0] a_rdata;
  logic [C*DW-1:0] b_rdata;
  logic [BA-1:0]   raddr;
  assign raddr = t_q[TW-1:2];

  for (genvar i = 0; i < R; i++) begin : g_abank
    logic we;
    assign we = in_fire && (state_q == S_LOAD) && (lane_q == LW'(i));
    e2t_opbuf #(.DEPTH(DEPTH)) u_buf (
      .clk_i, .we_i(we), .waddr_i(word_q), .wdata_i(s_tdata_i),
      .raddr_i(raddr), .rdata_o(a_rdata[i*DW +: DW])
    );
  end
  for (genvar j = 0; j < C; j++) begin : g_bbank
    logic we;
    assign we = in_fire && (state_q == S_LOAD) && (lane_q == LW'(rv) + LW'(j));
    e2t_opbuf #(.DEPTH(DEPTH)) u_buf (
      .clk_i, .we_i(we), .waddr_i(word_q), .wdata_i(s_tdata_i),
      .raddr_i(raddr), .rdata_o(b_rdata[j*DW +: DW])
    );
  end

  // ---- issue pipeline: stage 1 (bank read), stage 2 (operand registers) ----
  logic          s1_v_q, s1_clr_q, s1_int8_q, s1_m0_q, s1_m1_q;
  logic [1:0]    s1_sub_q;
  logic          op_v_q, op_clr_q, op_int8_q;
  logic [R*CW-1:0] op_a_q;
  logic [C*CW-1:0] op_b_q;
  logic [KW-1:0] kidx;
  assign kidx = pass8_q ? KW'({t_q, 1'b0}) : KW'(t_q);

  function automatic logic [CW-1:0] pick(input logic [DW-1:0] w, input logic [1:0] sub,
                                         input logic lo_ok, input logic hi_ok);
    logic [CW-1:0] e;
    e = w[sub*CW +: CW];
    pick = {hi_ok ? e[15:8] : 8'h00, lo_ok ? e[7:0] : 8'h00};
  endfunction

  always_ff @(posedge clk_i) begin
    if (!rst_ni || soft_reset_i) begin
      s1_v_q <= 1'b0; s1_clr_q <= 1'b0; s1_int8_q <= 1'b0; s1_m0_q <= 1'b0; s1_m1_q <= 1'b0;
      s1_sub_q <= '0;
      op_v_q <= 1'b0; op_clr_q <= 1'b0; op_int8_q <= 1'b0; op_a_q <= '0; op_b_q <= '0;
    end else begin
      s1_v_q    <= (state_q == S_COMP);
      s1_clr_q  <= (state_q == S_COMP) && (k0_q == '0) && (t_q == '0);
      s1_int8_q <= pass8_q;
      s1_sub_q  <= t_q[1:0];
      // element masks: k-steps past the chunk end contribute nothing (stale or padding data)
      s1_m0_q   <= (kidx < kc);
      s1_m1_q   <= pass8_q ? (kidx + KW'(1) < kc) : (kidx < kc);
      op_v_q    <= s1_v_q;
      op_clr_q  <= s1_clr_q;
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
    .valid_i(op_v_q), .clr_i(op_clr_q), .int8_i(op_int8_q),
    .a_i(op_a_q), .b_i(op_b_q),
    .row_sel_i(RSW'(rowc_q)), .row_o(arr_row)
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
        if ((j % NREQ) == e && 6'(j / NREQ) == beat_q) src = rowd_q[j];
    end
    e2t_requant u_rq (.acc_i(src), .shift_i(shift), .q_o(rq[e]));
  end

  logic [AW-1:0] raw_sel;
  logic [DW-1:0] sign_beat, req_beat;
  always_comb begin
    raw_sel = '0;
    for (int unsigned j = 0; j < C; j++)
      if (6'(j) == beat_q) raw_sel = rowd_q[j];
    sign_beat = '0;
    for (int unsigned j = 0; j < C; j++) begin
      // C <= 32, so a row's signs always fit one beat
      if (6'(j) < cv && rowd_q[j] != '0)
        sign_beat[2*j +: 2] = rowd_q[j][AW-1] ? 2'(e2t_pkg::SIGN_NEG) : 2'(e2t_pkg::SIGN_POS);
    end
    req_beat = '0;
    for (int unsigned e = 0; e < NREQ; e++)
      if (6'(e) + (beat_q << 2) < cv) req_beat[e*CW +: CW] = rq[e];
  end

  always_comb begin
    m_tdata_o = '0;
    m_tlast_o = 1'b0;
    if (state_q == S_STATUS) begin
      m_tdata_o[e2t_pkg::PSG_ST_MAXP_LSB +: AW] = tmax_q;
      m_tdata_o[e2t_pkg::PSG_ST_UNCERT_LSB +: e2t_pkg::PSG_ST_UNCERT_W] =
          e2t_pkg::PSG_ST_UNCERT_W'(unc_q);
      m_tdata_o[e2t_pkg::PSG_ST_RECOMPUTE_BIT] = (unc_q != '0);
      m_tlast_o = 1'b1;
    end else if (state_q == S_OUT) begin
      if (is_psg || fmt == 2'(e2t_pkg::OUT_SIGN)) m_tdata_o = sign_beat;
      else if (fmt == 2'(e2t_pkg::OUT_RAW48))     m_tdata_o = {{(DW-AW){raw_sel[AW-1]}}, raw_sel};
      else                                        m_tdata_o = req_beat;
      m_tlast_o = (rowc_q == rv - 6'd1) && (beat_q == bpr - 6'd1);
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
             cmd_k > e2t_pkg::DIM_K_MAX)
      start_err = 8'(e2t_pkg::ERR_DIM_TOO_LARGE);
    else if (fmt == 2'd3 || 32'(shift) > e2t_pkg::SHIFT_MAX)
      start_err = 8'(e2t_pkg::ERR_BAD_CFG);
  end

  // ---- counter events ----
  logic [INC_W-1:0] inc [e2t_pkg::NUM_COUNTERS];
  logic             pass_end;           // last k-step of a pass issued this cycle
  logic [10:0]      rvcv;
  assign pass_end = (state_q == S_COMP) && (t_q == TW'(steps - KW'(1))) && last_chunk;
  assign rvcv     = 11'(rv) * 11'(cv);

  always_comb begin
    for (int unsigned i = 0; i < e2t_pkg::NUM_COUNTERS; i++) inc[i] = '0;
    inc[e2t_pkg::CNT_TOTAL_CYCLES] = INC_W'(state_q != S_IDLE && state_q != S_DRAIN);
    inc[e2t_pkg::CNT_BUSY_CYCLES]  = INC_W'(state_q == S_COMP);
    inc[e2t_pkg::CNT_STALL_IN]     = INC_W'(state_q == S_LOAD && !s_tvalid_i);
    inc[e2t_pkg::CNT_STALL_OUT]    = INC_W'(m_tvalid_o && !m_tready_i);
    if (pass_end) begin
      if (pass8_q) inc[e2t_pkg::CNT_MACS_INT8]  = INC_W'(rvcv) * INC_W'(k_dim);
      else         inc[e2t_pkg::CNT_MACS_INT16] = INC_W'(rvcv) * INC_W'(k_dim);
    end
    inc[e2t_pkg::CNT_BYTES_IN]  = in_fire  ? INC_W'(8) : '0;
    inc[e2t_pkg::CNT_BYTES_OUT] = out_fire ? INC_W'(8) : '0;
    if (state_q == S_STATUS && out_fire) begin
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
  assign abort_early   = (state_q == S_LOAD) && in_fire && s_tlast_i && !last_word;
  assign abort_missing = (state_q == S_LOAD) && in_fire && !s_tlast_i && last_word;
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
            state_q <= S_LOAD;
          end
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
          if (out_fire) begin
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
          if (out_fire) begin
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

  // Running max|P| over all PSG predictions; kept across soft resets (cleared by MAXP_CLEAR).
  always_ff @(posedge clk_i) begin
    if (!rst_ni || maxp_clear_i) maxp_q <= '0;
    else if (state_q == S_CHK && row_max > maxp_q) maxp_q <= row_max;
  end
endmodule
