// e2t_opbuf: one operand bank, DEPTH x 64-bit, one write port and one registered read port
// (the shape Yosys and Vivado map to a simple-dual-port block RAM).
module e2t_opbuf #(
  parameter int unsigned DEPTH = 64
) (
  input  logic                         clk_i,
  input  logic                         we_i,
  input  logic [$clog2(DEPTH)-1:0]     waddr_i,
  input  logic [e2t_pkg::AXIS_DATA_W-1:0] wdata_i,
  input  logic [$clog2(DEPTH)-1:0]     raddr_i,
  output logic [e2t_pkg::AXIS_DATA_W-1:0] rdata_o
);
  logic [e2t_pkg::AXIS_DATA_W-1:0] mem [DEPTH];

  // No reset: block RAM contents cannot be reset, and the engine never reads a word it has not
  // written for the current chunk (unwritten lanes are never output).
  always_ff @(posedge clk_i) begin
    if (we_i) mem[waddr_i] <= wdata_i;
    rdata_o <= mem[raddr_i];
  end
endmodule
