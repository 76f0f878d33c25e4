// e2t_array: R x C output-stationary array. The A operand of row i is broadcast to every PE of row
// i and the B operand of column j to every PE of column j (operands come from on-chip banks, so no
// systolic skew is needed). One row of result shadows (see e2t_pe) at a time is read out through
// row_o, so the accumulators can already work on the next tile.
module e2t_array #(
  parameter int unsigned R = 4,
  parameter int unsigned C = 4
) (
  input  logic                               clk_i,
  input  logic                               rst_ni,
  input  logic                               valid_i,
  input  logic                               clr_i,
  input  logic                               last_i,
  input  logic                               int8_i,
  input  logic [R*e2t_pkg::CODE_W-1:0]       a_i,       // row i at [16i +: 16]
  input  logic [C*e2t_pkg::CODE_W-1:0]       b_i,       // column j at [16j +: 16]
  input  logic [$clog2(R+1)-1:0]             row_sel_i,
  output logic [C*e2t_pkg::ACC_W-1:0]        row_o      // column j at [48j +: 48]
);
  localparam int unsigned AW = e2t_pkg::ACC_W;
  localparam int unsigned CW = e2t_pkg::CODE_W;

  logic [C*AW-1:0] rows [R];

  // PEs come in pairs of adjacent columns that share one row operand (see e2t_pe), so C is even.
  if (C % 2 != 0) begin : g_bad_c
    $error("e2t_array: C must be even");
  end

  for (genvar i = 0; i < R; i++) begin : g_row
    for (genvar j = 0; j < C / 2; j++) begin : g_pair
      e2t_pe u_pe (
        .clk_i,
        .rst_ni,
        .valid_i,
        .clr_i,
        .last_i,
        .int8_i,
        .a_i    (a_i[i*CW +: CW]),
        .b0_i   (b_i[(2*j)*CW +: CW]),
        .b1_i   (b_i[(2*j+1)*CW +: CW]),
        .acc0_o (),
        .acc1_o (),
        .sh0_o  (rows[i][(2*j)*AW +: AW]),
        .sh1_o  (rows[i][(2*j+1)*AW +: AW])
      );
    end
  end

  always_comb begin
    row_o = '0;
    for (int unsigned i = 0; i < R; i++) begin
      if (row_sel_i == ($clog2(R+1))'(i)) row_o = rows[i];
    end
  end
endmodule
