// e2t_pp2: two adjacent radix-4 Booth partial-product rows of a fabric multiplier (see e2t_fmul),
// summed: s = pp0 + 4 * pp1 + neg0, where ppX = (|dX| * m) ^ {negX} (one's complement for a
// negative digit) and neg0 completes the two's complement of row 0 in the free bit under row 1.
// Row 1's own completion bit (neg1) is added by the caller. Exact: s fits 21 signed bits.
//
// keep_hierarchy: with the rows and their adder in one small module, ABC maps each partial-product
// bit into the LUT that feeds the carry chain (37 LUTs); flattened into the whole PE it duplicated
// the Booth selection logic (Yosys 0.23, a PE pair's two multipliers: 613 LUTs with this leaf, 932
// flattened).
(* keep_hierarchy *)
module e2t_pp2 (
  input  logic [1:0]  one_i,  // digit magnitude is 1 (row 0, row 1)
  input  logic [1:0]  two_i,  // digit magnitude is 2
  input  logic [1:0]  neg_i,  // digit is negative
  input  logic [16:0] m_i,    // multiplicand, signed
  output logic [20:0] s_o
);
  logic [17:0] p0, p1;
  assign p0 = (({18{one_i[0]}} & {m_i[16], m_i}) | ({18{two_i[0]}} & {m_i, 1'b0})) ^ {18{neg_i[0]}};
  assign p1 = (({18{one_i[1]}} & {m_i[16], m_i}) | ({18{two_i[1]}} & {m_i, 1'b0})) ^ {18{neg_i[1]}};
  assign s_o = 21'(signed'(p0)) + 21'(signed'({p1, 1'b0, neg_i[0]}));
endmodule
