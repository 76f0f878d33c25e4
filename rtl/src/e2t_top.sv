// e2t_top: the accelerator top. AXI4-Lite CSRs, AXI4-Stream operands in and results out (64-bit),
// a level interrupt. Port list and CSR map: rtl/README.md (stable).
module e2t_top #(
  parameter int unsigned R     = 4,
  parameter int unsigned C     = 4,
  parameter int unsigned DEPTH = 64,
  parameter int unsigned RWS   = 256,  // reuse path: KMAX = 4 * RWS (INT16), 8 * RWS (INT8)
  parameter int unsigned Q     = 8     // reuse path: column tiles per resident B block
) (
  input  logic                                 clk_i,
  input  logic                                 rst_ni,
  input  logic [e2t_pkg::AXIL_ADDR_W-1:0]      s_axil_awaddr_i,
  input  logic                                 s_axil_awvalid_i,
  output logic                                 s_axil_awready_o,
  input  logic [e2t_pkg::AXIL_DATA_W-1:0]      s_axil_wdata_i,
  input  logic [e2t_pkg::AXIL_DATA_W/8-1:0]    s_axil_wstrb_i,
  input  logic                                 s_axil_wvalid_i,
  output logic                                 s_axil_wready_o,
  output logic [1:0]                           s_axil_bresp_o,
  output logic                                 s_axil_bvalid_o,
  input  logic                                 s_axil_bready_i,
  input  logic [e2t_pkg::AXIL_ADDR_W-1:0]      s_axil_araddr_i,
  input  logic                                 s_axil_arvalid_i,
  output logic                                 s_axil_arready_o,
  output logic [e2t_pkg::AXIL_DATA_W-1:0]      s_axil_rdata_o,
  output logic [1:0]                           s_axil_rresp_o,
  output logic                                 s_axil_rvalid_o,
  input  logic                                 s_axil_rready_i,
  input  logic [e2t_pkg::AXIS_DATA_W-1:0]      s_axis_tdata_i,
  input  logic                                 s_axis_tvalid_i,
  output logic                                 s_axis_tready_o,
  input  logic                                 s_axis_tlast_i,
  output logic [e2t_pkg::AXIS_DATA_W-1:0]      m_axis_tdata_o,
  output logic                                 m_axis_tvalid_o,
  input  logic                                 m_axis_tready_i,
  output logic                                 m_axis_tlast_o,
  output logic                                 irq_o
);
  localparam int unsigned CMD_W = e2t_pkg::CMD_W;
  localparam int unsigned INC_W = 40;

  logic             push, pop, flush_abort, fifo_empty, fifo_full;
  logic [CMD_W-1:0] push_data, fifo_data;
  logic [$clog2(e2t_pkg::FIFO_DEPTH+1)-1:0] fifo_count;
  logic             soft_reset, snapshot, cnt_clear, maxp_clear;
  logic             busy, draining, done, err;
  logic [e2t_pkg::STATUS_ERR_CODE_W-1:0] err_code;
  logic [e2t_pkg::ACC_W-1:0] maxp;
  logic [e2t_pkg::NUM_COUNTERS*INC_W-1:0] cnt_inc;
  logic [e2t_pkg::NUM_COUNTERS*e2t_pkg::CNT_W-1:0] snap;

  e2t_csr #(.R(R), .C(C), .DEPTH(DEPTH), .RWS(RWS), .Q(Q)) u_csr (
    .clk_i, .rst_ni,
    .awaddr_i(s_axil_awaddr_i), .awvalid_i(s_axil_awvalid_i), .awready_o(s_axil_awready_o),
    .wdata_i(s_axil_wdata_i), .wstrb_i(s_axil_wstrb_i), .wvalid_i(s_axil_wvalid_i),
    .wready_o(s_axil_wready_o), .bresp_o(s_axil_bresp_o), .bvalid_o(s_axil_bvalid_o),
    .bready_i(s_axil_bready_i), .araddr_i(s_axil_araddr_i), .arvalid_i(s_axil_arvalid_i),
    .arready_o(s_axil_arready_o), .rdata_o(s_axil_rdata_o), .rresp_o(s_axil_rresp_o),
    .rvalid_o(s_axil_rvalid_o), .rready_i(s_axil_rready_i),
    .push_o(push), .push_data_o(push_data), .fifo_full_i(fifo_full),
    .fifo_count_i(e2t_pkg::STATUS_FIFO_CNT_W'(fifo_count)),
    .busy_i(busy || !fifo_empty), .draining_i(draining), .done_i(done), .err_i(err), .err_code_i(err_code),
    .maxp_i(maxp), .snap_i(snap),
    .soft_reset_o(soft_reset), .snapshot_o(snapshot), .cnt_clear_o(cnt_clear),
    .maxp_clear_o(maxp_clear), .irq_o
  );

  e2t_cmd_fifo #(.DEPTH(e2t_pkg::FIFO_DEPTH), .W(CMD_W)) u_fifo (
    .clk_i, .rst_ni,
    .flush_i(soft_reset || flush_abort),
    .push_i(push), .data_i(push_data),
    .pop_i(pop), .data_o(fifo_data),
    .empty_o(fifo_empty), .full_o(fifo_full), .count_o(fifo_count)
  );

  e2t_engine #(.R(R), .C(C), .DEPTH(DEPTH), .RWS(RWS), .Q(Q), .INC_W(INC_W)) u_engine (
    .clk_i, .rst_ni,
    .soft_reset_i(soft_reset),
    .cmd_valid_i(!fifo_empty), .cmd_i(fifo_data), .cmd_pop_o(pop), .cmd_flush_o(flush_abort),
    .s_tdata_i(s_axis_tdata_i), .s_tvalid_i(s_axis_tvalid_i), .s_tready_o(s_axis_tready_o),
    .s_tlast_i(s_axis_tlast_i),
    .m_tdata_o(m_axis_tdata_o), .m_tvalid_o(m_axis_tvalid_o), .m_tready_i(m_axis_tready_i),
    .m_tlast_o(m_axis_tlast_o),
    .busy_o(busy), .draining_o(draining), .done_o(done), .err_o(err), .err_code_o(err_code),
    .maxp_clear_i(maxp_clear), .maxp_o(maxp), .cnt_inc_o(cnt_inc)
  );

  e2t_counters #(.INC_W(INC_W)) u_cnt (
    .clk_i, .rst_ni,
    .inc_i(cnt_inc), .snapshot_i(snapshot), .clear_i(cnt_clear), .snap_o(snap)
  );
endmodule
