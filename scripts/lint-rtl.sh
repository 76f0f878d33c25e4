#!/usr/bin/env bash
# Lints every RTL module with `verilator --lint-only -Wall` and the waivers of rtl/lint.vlt (each one
# justified there). Each module is linted as its own top (so unused ports of a submodule are seen),
# then the full top at the simulation and board array shapes. Exits non-zero on any warning.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rtl="$here/../rtl"
verilator="${VERILATOR:-verilator}"
command -v "$verilator" >/dev/null 2>&1 || { echo "lint-rtl.sh: '$verilator' not found (run scripts/setup.sh)" >&2; exit 2; }

files=("$rtl/pkg/e2t_pkg.sv")
for f in "$rtl"/src/*.sv; do files+=("$f"); done

fail=0
run() {
  local what="$1"; shift
  if out=$("$verilator" --lint-only -Wall "$rtl/lint.vlt" "${files[@]}" "$@" 2>&1); then
    echo "ok    $what"
  else
    echo "FAIL  $what"; echo "$out" | sed 's/^/      /'; fail=1
  fi
}

for f in "$rtl"/src/*.sv; do
  m="$(basename "$f" .sv)"
  run "$m" --top-module "$m"
done
run "e2t_pe FABRIC=1" --top-module e2t_pe "-GFABRIC=1'b1"
run "e2t_top R=16 C=16 DEPTH=512" --top-module e2t_top -GR=16 -GC=16 -GDEPTH=512
run "e2t_top R=8 C=6 DEPTH=8" --top-module e2t_top -GR=8 -GC=6 -GDEPTH=8
# Reuse-path geometry at its edges: one column tile per block, 2-word buffers; and the test model's.
run "e2t_top R=3 C=2 DEPTH=4 RWS=2 Q=1" --top-module e2t_top -GR=3 -GC=2 -GDEPTH=4 -GRWS=2 -GQ=1
run "e2t_top R=4 C=4 DEPTH=8 RWS=16 Q=2" --top-module e2t_top -GR=4 -GC=4 -GDEPTH=8 -GRWS=16 -GQ=2

exit $fail
