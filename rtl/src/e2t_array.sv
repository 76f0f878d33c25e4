// e2t_array: R x C output-stationary array. The A operand of row i is broadcast to every PE of row
// i and the B operand of column j to every PE of column j (operands come from on-chip banks, so no
// systolic skew is needed). One row of result shadows (see e2t_pe) at a time is read out through
// row_o, so the accumulators can already work on the next tile.
//
// PE pairs (see e2t_pe) are numbered column-major, pair (i, j) = row i, columns 2j and 2j+1, number
// j*R + i; the first FP pairs build their multipliers in fabric (e2t_fmul), the rest use one DSP48E1
// per PE. The default, one pair in six (rounded up), keeps the 16x16 array's DSP48E1 use under
// 25% of an XC7Z045 with some margin (22 fabric pairs, 106 DSP pairs = 212 DSP48E1, plus 5 outside
// the array). Column-major, so the fabric pairs share their columns' Booth digit decode (e2t_fmul)
// down the column. Both kinds give identical results.
module e2t_array #(
  parameter int unsigned R  = 4,
  parameter int unsigned C  = 4,
  parameter int unsigned FP = (R * C / 2 + 5) / 6   // fabric PE pairs (0 .. R*C/2)
) (
  input  logic                               clk_i,
  input  logic                               rst_ni,
  input  logic                               valid_i,
  input  logic                               clr_i,
  input  logic                               last_i,
  input  logic                               int8_i,
  input  logic [R*e2t_pkg::CODE_W-1:0]       a_i,       // row i at [16i +: 16]
  input  logic [C*e2t_pkg::CODE_W-1:0]       b_i,       // column j at [16j +: 16]
  input  logic [$clog2(R+1)-1:0]             row_sel_i, // 0 .. R-1 (the engine reads rows < R only)
  output logic [C*e2t_pkg::ACC_W-1:0]        row_o      // column j at [48j +: 48]
);
  localparam int unsigned AW = e2t_pkg::ACC_W;
  localparam int unsigned CW = e2t_pkg::CODE_W;
  localparam int unsigned LS = (R > 1) ? $clog2(R) : 1;  // row-select bits the mux uses
  localparam int unsigned RP = 1 << LS;                  // rows padded to a power of two

  logic [C*AW-1:0] rows [RP];

  // PEs come in pairs of adjacent columns that share one row operand (see e2t_pe), so C is even.
  if (C % 2 != 0) begin : g_bad_c
    $error("e2t_array: C must be even");
  end
  if (FP > R * C / 2) begin : g_bad_fp
    $error("e2t_array: FP exceeds the number of PE pairs");
  end

  for (genvar i = 0; i < R; i++) begin : g_row
    for (genvar j = 0; j < C / 2; j++) begin : g_pair
      e2t_pe #(.FABRIC(j * R + i < FP)) u_pe (
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
  for (genvar i = R; i < RP; i++) begin : g_pad
    assign rows[i] = '0;
  end

  // Row read-out: a balanced tree of 2:1 multiplexers on the select bits. (The earlier priority
  // chain of comparisons cost about twice the LUTs: 9.2k against 4.2k for 16 rows of 768 bits,
  // Yosys 0.23 measured alone.) Select values >= R give 0, as before.
  always_comb begin
    logic [C*AW-1:0] t [RP];
    for (int unsigned i = 0; i < RP; i++) t[i] = rows[i];
    // level l halves the candidates; t[2i], t[2i+1] are still level l's when t[i] is overwritten
    for (int unsigned l = 0; l < LS; l++) begin
      for (int unsigned i = 0; i < (RP >> (l + 1)); i++) t[i] = row_sel_i[l] ? t[2*i+1] : t[2*i];
    end
    row_o = (row_sel_i < ($clog2(R+1))'(R)) ? t[0] : '0;
  end
endmodule
