#!/usr/bin/env bash
# Resource estimate of the accelerator top (rtl/) with Yosys: synth_xilinx -family xc7, out of
# context (no I/O buffers), flattened (except leaf modules marked keep_hierarchy), for each requested
# array shape. Prints LUT, FF, DSP48E1 and block-RAM use with the share of an XC7Z045 (218,600 LUT,
# 437,200 FF, 900 DSP48E1, 545 RAMB36).
#
# Usage: scripts/estimate.sh [RxC ...]        default: 8x8 16x16
# Env:   YOSYS (default: yosys), DEPTH (operand bank words, default 512), RWS and Q (reuse-path
#        geometry, default: the top's defaults 256 and 8, i.e. the board build), KEEP_LOGS=1 to keep logs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rtl="$here/../rtl"
yosys="${YOSYS:-yosys}"
depth="${DEPTH:-512}"
rws="${RWS:-256}"
q="${Q:-8}"
shapes=("$@")
[ ${#shapes[@]} -eq 0 ] && shapes=(8x8 16x16)

command -v "$yosys" >/dev/null 2>&1 || { echo "estimate.sh: '$yosys' not found (run scripts/setup.sh, or set YOSYS)" >&2; exit 2; }

# Package first: the modules refer to e2t_pkg:: items.
files=("$rtl/pkg/e2t_pkg.sv")
for f in "$rtl"/src/*.sv; do files+=("$f"); done

work="$(mktemp -d)"
[ "${KEEP_LOGS:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

# XC7Z045 totals
LUT_T=218600; FF_T=437200; DSP_T=900; BRAM_T=545

rows=()
for shape in "${shapes[@]}"; do
  if ! [[ "$shape" =~ ^([0-9]+)x([0-9]+)$ ]]; then
    echo "estimate.sh: bad shape '$shape' (expected RxC, e.g. 16x16)" >&2; exit 2
  fi
  r="${BASH_REMATCH[1]}"; c="${BASH_REMATCH[2]}"
  log="$work/synth_${r}x${c}.log"
  {
    echo "read_verilog -sv ${files[*]}"
    echo "chparam -set R $r -set C $c -set DEPTH $depth -set RWS $rws -set Q $q e2t_top"
    echo "synth_xilinx -family xc7 -top e2t_top -noiopad -flatten"
    echo "tee -o $work/stat_${r}x${c}.txt stat"
  } > "$work/run_${r}x${c}.ys"
  start=$(date +%s)
  if ! "$yosys" -q -l "$log" "$work/run_${r}x${c}.ys" >/dev/null 2>&1; then
    echo "estimate.sh: yosys failed for ${r}x${c}; last lines of $log:" >&2
    tail -20 "$log" >&2
    KEEP_LOGS=1; exit 1
  fi
  secs=$(( $(date +%s) - start ))
  st="$work/stat_${r}x${c}.txt"
  # Small leaf modules marked (* keep_hierarchy *) (e2t_pp2) stay separate after -flatten; then stat
  # prints each module and, last, the whole design under "design hierarchy": count only that part.
  if grep -q '=== design hierarchy ===' "$st"; then
    sed -n '/=== design hierarchy ===/,$p' "$st" > "$st.total"
  else
    cp "$st" "$st.total"
  fi
  st="$st.total"
  # Sum cell counts by type from the design's statistics.
  count() { awk -v pat="$1" '$1 ~ pat && $2 ~ /^[0-9]+$/ {s += $2} END {print s+0}' "$st"; }
  cells() { awk -v name="$1" '$1 == name && $2 ~ /^[0-9]+$/ {s += $2} END {print s+0}' "$st"; }
  lut=$(count '^LUT[1-6]$')
  lutram=$(( $(cells RAM32M) * 4 + $(cells RAM64M) * 4 + $(cells RAM32X1D) * 2 + $(cells RAM64X1D) * 2 + $(cells RAM128X1D) * 4 + $(cells RAM256X1S) * 4 ))
  srl=$(( $(cells SRL16E) + $(cells SRLC32E) ))
  lut_all=$(( lut + lutram + srl ))
  ff=$(count '^FD[RSCP]E$')
  dsp=$(cells DSP48E1)
  b36=$(cells RAMB36E1)
  b18=$(cells RAMB18E1)
  bram36=$(awk -v a="$b36" -v b="$b18" 'BEGIN {printf "%.1f", a + b / 2}')
  pct() { awk -v u="$1" -v t="$2" 'BEGIN {printf "%.1f%%", 100 * u / t}'; }
  rows+=("$(printf '| %-7s | %8s (%6s) | %8s (%6s) | %5s (%6s) | %4s + %4s (%6s) | %5ss |' \
    "${r}x${c}" "$lut_all" "$(pct "$lut_all" $LUT_T)" "$ff" "$(pct "$ff" $FF_T)" \
    "$dsp" "$(pct "$dsp" $DSP_T)" "$b36" "$b18" "$(pct "$bram36" $BRAM_T)" "$secs")")
done

echo "Yosys $("$yosys" -V | awk '{print $2}') synth_xilinx -family xc7 (out of context), e2t_top, DEPTH=$depth RWS=$rws Q=$q; share of XC7Z045"
echo "LUT counts include LUT-RAM and SRLs; block RAM share counts a RAMB18 as half a RAMB36."
echo
echo "| array   | LUT               | FF                | DSP48E1        | RAMB36 + RAMB18 (share) | synth  |"
echo "| ------- | ----------------- | ----------------- | -------------- | ----------------------- | ------ |"
for row in "${rows[@]}"; do echo "$row"; done
[ "${KEEP_LOGS:-0}" = 1 ] && echo "logs kept in $work"
exit 0
