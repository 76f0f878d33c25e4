// e2t_counters: the 64-bit performance counters. The engine reports per-cycle increments; a
// snapshot copies all live counters in one cycle (a consistent set for the host to read while
// counting goes on); clear zeroes the live set. Snapshot and clear in the same cycle snapshot the
// old values first. Counter order is e2t_core::Counters::fields().
module e2t_counters #(
  parameter int unsigned INC_W = 40
) (
  input  logic                                           clk_i,
  input  logic                                           rst_ni,
  input  logic [e2t_pkg::NUM_COUNTERS*INC_W-1:0]         inc_i,      // counter i at [INC_W*i +: INC_W]
  input  logic                                           snapshot_i,
  input  logic                                           clear_i,
  output logic [e2t_pkg::NUM_COUNTERS*e2t_pkg::CNT_W-1:0] snap_o     // counter i at [64i +: 64]
);
  localparam int unsigned N  = e2t_pkg::NUM_COUNTERS;
  localparam int unsigned CW = e2t_pkg::CNT_W;

  logic [CW-1:0] live_q [N];
  logic [CW-1:0] snap_q [N];

  always_ff @(posedge clk_i) begin
    for (int unsigned i = 0; i < N; i++) begin
      if (!rst_ni) begin
        live_q[i] <= '0;
        snap_q[i] <= '0;
      end else begin
        if (snapshot_i) snap_q[i] <= live_q[i];
        if (clear_i) live_q[i] <= '0;
        else         live_q[i] <= live_q[i] + CW'(inc_i[i*INC_W +: INC_W]);
      end
    end
  end

  always_comb begin
    for (int unsigned i = 0; i < N; i++) snap_o[i*CW +: CW] = snap_q[i];
  end
endmodule
