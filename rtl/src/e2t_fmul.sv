// e2t_fmul: the multiplier of a fabric PE (no DSP48), with the same result as a DSP PE's product
// path after its INT8 unpack (see e2t_pe):
// - INT16 mode: p = a * b, exact signed 32-bit product.
// - INT8 mode:  p = a.lo * b.lo + a.hi * b.hi (two signed byte products, both k-steps of the PE at
//   once), exact, sign-extended to 32 bits.
// Radix-4 Booth on the column operand b: 8 digits d0..d7 in {-2..2}, rows di * m. Digits 0-3 take the
// low multiplicand ml, digits 4-7 the high one mu (both a in INT16; the sign-extended low / high byte
// of a in INT8, prepared once per PE pair by the caller since both PEs of a pair share a). The rows
// form two halves, L (digits 0-3) and U (digits 4-7, each shifted 2*(i-4)), so that
// p = L + 256 * U in INT16 and p = L + U in INT8: the mode only changes how U lines up in the last
// addition. In INT8 digit 4 starts a new signed byte, so its lower neighbour bit b[7] reads as 0.
// A negative row is its one's complement plus a completion bit; each completion bit rides in the
// vacant bit under the next row, except the top row's of each half (digits 3 and 7), which the last
// addition adds.
module e2t_fmul (
  input  logic        int8_i,
  input  logic [15:0] ml_i,   // multiplicand of digits 0-3 (signed)
  input  logic [15:0] mu_i,   // multiplicand of digits 4-7 (signed)
  input  logic [15:0] b_i,
  output logic [31:0] p_o
);
  logic [17:0] bx;  // b with the implicit bit b[-1] = 0 below it
  logic [7:0]  one, two, neg;
  assign bx = {b_i[15], b_i, 1'b0};

  always_comb begin
    logic [2:0] t;
    for (int unsigned i = 0; i < 8; i++) begin
      t = bx[2*i +: 3];
      if (i == 4 && int8_i) t[0] = 1'b0;
      one[i] = t[0] ^ t[1];
      two[i] = (t[2] & ~t[1] & ~t[0]) | (~t[2] & t[1] & t[0]);
      neg[i] = t[2];
    end
  end

  logic [20:0] s [4];  // rows 2i and 2i+1, at 4i within their half
  for (genvar i = 0; i < 4; i++) begin : g_rows
    e2t_pp2 u_pp2 (
      .one_i (one[2*i +: 2]),
      .two_i (two[2*i +: 2]),
      .neg_i (neg[2*i +: 2]),
      .m_i   (i < 2 ? {ml_i[15], ml_i} : {mu_i[15], mu_i}),
      .s_o   (s[i])
    );
  end

  // Halves: the completion bits of rows 1 and 5 sit under the upper pair (bit 2 of the half).
  logic [24:0] l, u;
  assign l = 25'(signed'(s[0])) + 25'(signed'({s[1], 1'b0, neg[1], 2'b00}));
  assign u = 25'(signed'(s[2])) + 25'(signed'({s[3], 1'b0, neg[5], 2'b00}));

  // Last addition. INT16: U moves up 8 bits and row 3's completion bit (bit 6) fits under it; row 7's
  // is bit 14. INT8: both halves' top completion bits have weight 64.
  logic [31:0] ub, z;
  logic [1:0]  n37;
  assign n37 = {1'b0, neg[3]} + {1'b0, neg[7]};
  assign ub  = int8_i ? 32'(signed'(u)) : {u[23:0], 1'b0, neg[3], 6'b0};
  assign z   = int8_i ? (32'(n37) << 6) : (32'(neg[7]) << 14);
  assign p_o = 32'(signed'(l)) + ub + z;
endmodule
