// Test fixture for vlharness: a loadable counter plus ports of every width class
// (bool, narrow, 48-bit signed, 64-bit, 100-bit wide) so the generated wrapper is exercised.
`include "counter_defs.svh"

module counter #(
    parameter int unsigned W = 8
) (
    input  logic                    clk_i,
    input  logic                    rst_ni,
    input  logic                    en_i,
    input  logic                    load_i,
    input  logic [W-1:0]            load_val_i,
    output logic [W-1:0]            count_o,
    // signed multiply-accumulate: acc += a * b each enabled cycle
    input  logic signed [15:0]      a_i,
    input  logic signed [15:0]      b_i,
    output logic signed [ACC_W-1:0] acc_o,
    output logic signed [7:0]       neg_o,
    input  logic [63:0]             big_i,
    output logic [63:0]             big_o,
    input  logic [99:0]             wide_i,
    output logic [99:0]             wide_o,
    input  logic                    fatal_i
);
`ifdef COUNTER_STEP
  localparam logic [W-1:0] Step = W'(`COUNTER_STEP);
`else
  localparam logic [W-1:0] Step = W'(1);
`endif

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      count_o <= '0;
      acc_o   <= '0;
    end else begin
      if (load_i) count_o <= load_val_i;
      else if (en_i) count_o <= count_o + Step;
      if (en_i) acc_o <= acc_o + ACC_W'(a_i * b_i);
    end
  end

  always_ff @(posedge clk_i) begin
    if (fatal_i) $fatal(1, "fatal_i was raised");
  end

  assign neg_o  = -8'sd5;
  assign big_o  = ~big_i;
  assign wide_o = {wide_i[98:0], wide_i[99]};  // rotate left by one
endmodule
