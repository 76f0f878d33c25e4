#!/usr/bin/env bash
# Verilator coverage of rtl/ from the RTL regression suite (sim/tests): builds the models with
# `--coverage` (E2T_SIM_COVERAGE=1, in a separate target dir so the normal build's models are kept),
# runs the suite, merges the per-test .dat files and prints line/toggle/branch coverage per module.
#
# Usage: scripts/coverage.sh [extra args for `cargo test`, e.g. a test-name filter]
# Output: target/coverage/ (merged.dat, annotated sources in annotated/, summary.txt).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/target/coverage"
command -v verilator_coverage >/dev/null || {
    echo "error: verilator_coverage not found; install Verilator (sudo scripts/setup.sh, or apt-get install verilator)" >&2
    exit 1
}
rm -rf "$out/dat" "$out/annotated"
mkdir -p "$out/dat"

# Failing tests still leave coverage data; report the failure after the summary.
status=0
E2T_SIM_COVERAGE=1 E2T_COVERAGE_DIR="$out/dat" CARGO_TARGET_DIR="$root/target/coverage-build" \
    cargo test -p e2t-sim --test regression "$@" || status=$?

shopt -s nullglob
dats=("$out"/dat/*.dat)
if [ ${#dats[@]} -eq 0 ]; then
    echo "error: the suite wrote no coverage data to $out/dat" >&2
    exit 1
fi
verilator_coverage --write "$out/merged.dat" "${dats[@]}"
verilator_coverage --annotate "$out/annotated" "$out/merged.dat" | tail -n 1

# Per module (source file) and kind: points hit at least once / all points.
python3 - "$out/merged.dat" <<'PY' | tee "$out/summary.txt"
import collections, os, sys
hit = collections.Counter()
tot = collections.Counter()
for line in open(sys.argv[1], encoding="latin-1"):
    if not line.startswith("C '"):
        continue
    key, _, count = line.rstrip("\n").rpartition(" ")
    fields = dict(f.split("\x02", 1) for f in key[3:-1].split("\x01") if "\x02" in f)
    page = fields.get("page", "?")
    kind = page.split("/")[0].removeprefix("v_")
    module = os.path.basename(fields.get("f", "?")).removesuffix(".sv")
    tot[(module, kind)] += 1
    hit[(module, kind)] += int(count) > 0
kinds = sorted({k for _, k in tot})
print(f"{'module':<16}" + "".join(f"{k:>20}" for k in kinds))
for module in sorted({m for m, _ in tot}):
    cells = []
    for k in kinds:
        t = tot[(module, k)]
        cells.append(f"{hit[(module, k)]:>6}/{t:<6} {100 * hit[(module, k)] / t:5.1f}%" if t else f"{'-':>20}")
    print(f"{module:<16}" + "".join(f"{c:>20}" for c in cells))
for k in kinds:
    t = sum(v for (m, kk), v in tot.items() if kk == k)
    h = sum(v for (m, kk), v in hit.items() if kk == k)
    print(f"total {k}: {h}/{t} = {100 * h / t:.1f}%")
PY
exit $status
