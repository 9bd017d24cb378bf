#!/usr/bin/env bash
# Regenerate docs/benchmarks.md: every number in it is printed by a command here, on the
# curve tables in the repository (data/curves: published; data/lensbench: LensBench).
# Usage: bash scripts/benchmarks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
lensllm=${LENSLLM:-.venv/bin/lensllm}
python=${PYTHON:-.venv/bin/python}
published=(data/curves/flan.csv data/curves/gigaword.csv data/curves/wmt19.csv)
lensbench=(data/lensbench/de-en.csv data/lensbench/gloss.csv data/lensbench/docstring.csv data/lensbench/cipher.csv)
tmp=$(mktemp -d)
trap 'rm -r "$tmp"' EXIT

start=$(date +%s.%N)
for table in "${published[@]}" "${lensbench[@]}"; do
  "$lensllm" bench "$table" --format markdown > "$tmp/$(basename "$table" .csv).md"
done
"$lensllm" lensbench ntk "${lensbench[@]}" > "$tmp/ntk.md"
"$lensllm" lensbench loo "${published[@]}" "${lensbench[@]}" > "$tmp/loo.md"
seconds=$("$python" -c "print(f'{$(date +%s.%N) - $start:.0f}')")
"$python" - > "$tmp/e2e.md" <<'PY'
import csv
rows = list(csv.DictReader(open("data/lensbench/e2e.csv")))
print("| task | picked by `default` | its true loss (bits/byte) | best model | best true loss | RelAcc (%) | compute / full fine-tuning (%) | the selection's own estimate (%) | largest point difference |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['task']} | {r['picked']} | {float(r['picked_truth']):.4f} | {r['best']} | {float(r['best_truth']):.4f} "
          f"| {100 * float(r['relacc']):.1f} | {100 * float(r['compute_fraction']):.1f} | {100 * float(r['estimated_fraction']):.1f} "
          f"| {float(r['max_point_difference']):g} |")
PY

"$python" - "${lensbench[@]}" > "$tmp/noise.md" <<'PY'
import csv, statistics, sys
from collections import defaultdict
print("| task | " + " | ".join(f"size {s}" for s in (8, 16, 32, 64)) + " |")
print("|---|---|---|---|---|")
for table in sys.argv[1:]:
    by = defaultdict(list)
    for r in csv.DictReader(open(table.replace(".csv", ".points.csv"))):
        by[r["model"], int(r["size"])].append(float(r["bits_per_byte"]))
    cells = []
    for size in (8, 16, 32, 64):
        spreads = [statistics.stdev(v) / statistics.mean(v) for (m, s), v in by.items() if s == size and len(v) > 1]
        cells.append(f"{100 * statistics.mean(spreads):.2f}%")
    print(f"| {table.split('/')[-1][:-4]} | " + " | ".join(cells) + " |")
PY

section() { printf '\n### %s\n\n' "$1"; cat "$tmp/$2.md"; }
{
  sed -n '/^<!-- intro -->$/,/^<!-- end intro -->$/p' scripts/benchmarks.md.in | sed '1d;$d'
  printf '\n## Published tables (30 real LLMs each)\n'
  section FLAN flan; section Gigaword gigaword; section WMT19 wmt19
  sed -n '/^<!-- lensbench -->$/,/^<!-- end lensbench -->$/p' scripts/benchmarks.md.in | sed '1d;$d'
  section "de-en (trans-de-en)" de-en; section "gloss (WordNet)" gloss
  section "docstring (Python standard library)" docstring; section "cipher (generated)" cipher
  sed -n '/^<!-- noise -->$/,/^<!-- end noise -->$/p' scripts/benchmarks.md.in | sed '1d;$d'
  printf '\n'; cat "$tmp/noise.md"
  sed -n '/^<!-- ntk -->$/,/^<!-- end ntk -->$/p' scripts/benchmarks.md.in | sed '1d;$d'
  printf '\n'; cat "$tmp/ntk.md"
  sed -n '/^<!-- e2e -->$/,/^<!-- end e2e -->$/p' scripts/benchmarks.md.in | sed '1d;$d'
  printf '\n'; cat "$tmp/e2e.md"
  sed -n '/^<!-- default -->$/,/^<!-- end default -->$/p' scripts/benchmarks.md.in | sed '1d;$d'
  printf '\n'; cat "$tmp/loo.md"
  sed -n '/^<!-- goals -->$/,/^<!-- end goals -->$/p' scripts/benchmarks.md.in | sed '1d;$d'
  printf '\n## Speed\n\nEvery table above but the end-to-end one (read from data/lensbench/e2e.csv): %s s wall time on one %s machine with %s cores, measured by this script.\n' \
    "$seconds" "$(uname -m)" "$(nproc)"
} > docs/benchmarks.md
echo "wrote docs/benchmarks.md"
