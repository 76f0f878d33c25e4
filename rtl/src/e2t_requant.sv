// e2t_requant: out = sat16((acc + (s > 0 ? 1 << (s-1) : 0)) >>> s), computed exactly in 49 bits
// (the rounding add cannot wrap), arithmetic shift, saturation to [-32768, 32767].
module e2t_requant (
  input  logic [e2t_pkg::ACC_W-1:0]       acc_i,
  input  logic [e2t_pkg::CFG_SHIFT_W-1:0] shift_i,
  output logic [e2t_pkg::CODE_W-1:0]      q_o
);
  localparam int unsigned WW = e2t_pkg::ACC_W + 1;

  logic signed [WW-1:0] wide, rnd, sum, shifted;

  always_comb begin
    wide = $signed({acc_i[e2t_pkg::ACC_W-1], acc_i});
    rnd  = (shift_i == '0) ? '0 : (WW'(1) << (shift_i - 1'b1));
    sum  = wide + rnd;
    shifted = sum >>> shift_i;
    if (shifted > WW'(32767))       q_o = 16'h7FFF;
    else if (shifted < -WW'(32768)) q_o = 16'h8000;
    else                            q_o = shifted[15:0];
  end
endmodule
