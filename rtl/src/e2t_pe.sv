// e2t_pe: a pair of precision-scalable PEs, (row i, column j) and (row i, column j+1), sharing the
// row operand a. Two multipliers (one DSP48E1 each) serve the pair:
// - INT16 mode: multiplier X computes a * b0 for PE 0, multiplier Y computes a * b1 for PE 1.
// - INT8 mode: a, b0, b1 carry two signed bytes each ({k+1, k}). Multiplier X computes
//   a.lo * (b1.lo * 2^16 + b0.lo), i.e. both k-step-k products of the pair at once (the shared-operand
//   packing of Xilinx WP486); multiplier Y does the same for k+1 with the high bytes. Each PE then adds
//   its two products. So a PE takes two INT8 products per cycle with one DSP48 per PE.
// FABRIC = 1 builds both multipliers in LUTs instead (e2t_fmul, no DSP48; same addends, so the pair
// is bit- and cycle-identical to a DSP pair): the array uses it for some pairs to keep the DSP48E1
// count down.
// Accumulators are 48-bit two's complement and wrap. Two register stages: products, accumulators.
// Each PE also has a shadow register: the step marked last_i copies the final sum into it on the
// same edge as the accumulator update, so the result can be read out (sh*_o) while the accumulator
// already starts the next tile (overlap of result drain and compute).
module e2t_pe #(
  parameter bit FABRIC = 1'b0  // 1: multipliers in fabric (e2t_fmul), 0: one DSP48E1 per PE
) (
  input  logic                       clk_i,
  input  logic                       rst_ni,
  input  logic                       valid_i,  // operands hold a k-step (or a pair in INT8)
  input  logic                       clr_i,    // first k-step of a pass: start from zero
  input  logic                       last_i,   // last k-step of a tile: copy the sum to the shadow
  input  logic                       int8_i,   // 1: INT8 mode
  input  logic [e2t_pkg::CODE_W-1:0] a_i,
  input  logic [e2t_pkg::CODE_W-1:0] b0_i,
  input  logic [e2t_pkg::CODE_W-1:0] b1_i,
  output logic [e2t_pkg::ACC_W-1:0]  acc0_o,
  output logic [e2t_pkg::ACC_W-1:0]  acc1_o,
  output logic [e2t_pkg::ACC_W-1:0]  sh0_o,
  output logic [e2t_pkg::ACC_W-1:0]  sh1_o
);
  localparam int unsigned AW = e2t_pkg::ACC_W;

  logic               v_q, last_q;
  logic [AW-1:0]      acc0_q, acc1_q, sh0_q, sh1_q, acc0_d, acc1_d;
  logic [31:0]        add0, add1;  // this step's addend of PE 0 / PE 1 (sign-extended below)

  if (FABRIC) begin : g_fabric
    // Both PEs share a, so the per-mode multiplicands are built once for the pair.
    logic [15:0] ml, mu;
    logic [31:0] p0_d, p1_d, p0_q, p1_q;
    assign ml = int8_i ? 16'(signed'(a_i[7:0]))  : a_i;
    assign mu = int8_i ? 16'(signed'(a_i[15:8])) : a_i;
    e2t_fmul u_mul0 (.int8_i, .ml_i(ml), .mu_i(mu), .b_i(b0_i), .p_o(p0_d));
    e2t_fmul u_mul1 (.int8_i, .ml_i(ml), .mu_i(mu), .b_i(b1_i), .p_o(p1_d));
    always_ff @(posedge clk_i) begin
      if (!rst_ni) begin
        p0_q <= '0;
        p1_q <= '0;
      end else begin
        p0_q <= p0_d;
        p1_q <= p1_d;
      end
    end
    assign add0 = p0_q;
    assign add1 = p1_q;
  end else begin : g_dsp
    // Multiplier operands: A port 25 bits (packed pair in INT8), B port 18 bits (shared a).
    logic signed [24:0] ax, ay;
    logic signed [17:0] bx, by;
    logic signed [31:0] px_d, py_d;   // products mod 2^32: every needed field fits
    logic        [31:0] px_q, py_q;
    logic               int8_q;

    always_comb begin
      if (int8_i) begin
        // b1 * 2^16 + b0 fits 25 signed bits for any bytes; each product fits 16 signed bits.
        ax = (25'(signed'(b1_i[7:0])) <<< 16) + 25'(signed'(b0_i[7:0]));
        ay = (25'(signed'(b1_i[15:8])) <<< 16) + 25'(signed'(b0_i[15:8]));
        bx = 18'(signed'(a_i[7:0]));
        by = 18'(signed'(a_i[15:8]));
      end else begin
        ax = 25'(signed'(b0_i));
        ay = 25'(signed'(b1_i));
        bx = 18'(signed'(a_i));
        by = 18'(signed'(a_i));
      end
      px_d = ax * bx;
      py_d = ay * by;
    end

    always_ff @(posedge clk_i) begin
      if (!rst_ni) begin
        px_q   <= '0;
        py_q   <= '0;
        int8_q <= 1'b0;
      end else begin
        px_q   <= px_d;
        py_q   <= py_d;
        int8_q <= int8_i;
      end
    end

    // Unpack a packed product: low field = PE 0's product (16-bit signed), high field = PE 1's,
    // corrected by the borrow the negative low field took from it.
    function automatic logic [31:0] lo_field(input logic [15:0] p_lo);
      lo_field = 32'(signed'(p_lo));
    endfunction
    function automatic logic [31:0] hi_field(input logic [31:15] p_hi);
      logic [15:0] h;
      h = p_hi[31:16] + {15'b0, p_hi[15]};
      hi_field = 32'(signed'(h));
    endfunction

    always_comb begin
      if (int8_q) begin
        add0 = lo_field(px_q[15:0]) + lo_field(py_q[15:0]);
        add1 = hi_field(px_q[31:15]) + hi_field(py_q[31:15]);
      end else begin
        add0 = px_q;
        add1 = py_q;
      end
    end
  end

  // A step with clr_i zeroes the accumulators on the edge that samples it (one edge before its
  // products arrive), as a synchronous reset, instead of masking the old sum at the adder input:
  // the same sums, and the adder is one LUT per bit instead of two (mask and sum; Yosys feeds the
  // carry chain's DI from the masked operand), 48 LUTs per PE. The old sum is not lost: a step
  // with clr_i only follows a pass's last step, whose sum the shadow takes on that same edge (or a
  // discarded pass). Only the live accumulator output (acc*_o, unit tests) sees the zero a cycle
  // earlier.
  assign acc0_d = acc0_q + AW'(signed'(add0));
  assign acc1_d = acc1_q + AW'(signed'(add1));

  always_ff @(posedge clk_i) begin
    if (!rst_ni) begin
      v_q    <= 1'b0;
      last_q <= 1'b0;
      sh0_q  <= '0;
      sh1_q  <= '0;
    end else begin
      v_q    <= valid_i;
      last_q <= last_i;
      if (v_q && last_q) begin
        sh0_q <= acc0_d;
        sh1_q <= acc1_d;
      end
    end
  end

  always_ff @(posedge clk_i) begin
    if (!rst_ni || (valid_i && clr_i)) begin
      acc0_q <= '0;
      acc1_q <= '0;
    end else if (v_q) begin
      acc0_q <= acc0_d;
      acc1_q <= acc1_d;
    end
  end

  assign acc0_o = acc0_q;
  assign acc1_o = acc1_q;
  assign sh0_o  = sh0_q;
  assign sh1_o  = sh1_q;
endmodule
