#!/usr/bin/env bash
# Regenerate docs/benchmarks.md: every number in it is printed by a command here, on the
# curve tables in the repository (data/curves: published; data/lensbench: LensBench).
# Usage: bash scripts/benchmarks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
lensllm=${LENSLLM:-.venv/bin/lensllm}
python=${PYTHON:-.venv/bin/python}
published=(data/curves/flan.csv data/curves/gigaword.csv data/curves/wmt19.csv)
# LensBench's first draw (seed 0) gets the detailed sections. Of the later draws, seeds 1 and 2 count
# in default's choice and the from-scratch threshold; seed 3, measured before those choices and read
# only after them, is held out. Seed 4, committed unread, is held out from the choice of the race's
# initial sizes (spec.race.initialSizes). Seed 5, generated after everything that ships was chosen, is
# held out from all of it; seed 6, generated after the race's interval backtest was chosen, from that too.
# Seed 7, committed unread after the floor of the race's intervals was measured on every earlier draw, is
# held out from that floor. Seed 8, committed unread after the race began to settle its laws' disagreement
# on the target, is held out from that rule.
draw_tables() { for task in de-en gloss docstring cipher; do echo "$1/$task.csv"; done; }
mapfile -t lensbench < <(draw_tables data/lensbench)
mapfile -t later < <(draw_tables data/lensbench-seed1; draw_tables data/lensbench-seed2)
mapfile -t held_out < <(draw_tables data/lensbench-seed3)
mapfile -t fifth < <(draw_tables data/lensbench-seed4)
mapfile -t sixth < <(draw_tables data/lensbench-seed5)
mapfile -t seventh < <(draw_tables data/lensbench-seed6)
mapfile -t eighth < <(draw_tables data/lensbench-seed7)
mapfile -t ninth < <(draw_tables data/lensbench-seed8)
# Every draw after the first that settling was measured on, in the order of their seeds; then the ninth too.
after_first=("${later[@]}" "${held_out[@]}" "${fifth[@]}" "${sixth[@]}" "${seventh[@]}" "${eighth[@]}")
later_draws=("${after_first[@]}" "${ninth[@]}")
# The prose between <!-- NAME --> and <!-- end NAME --> in scripts/benchmarks.md.in.
prose() { sed -n "/^<!-- $1 -->\$/,/^<!-- end $1 -->\$/p" scripts/benchmarks.md.in | sed '1d;$d'; }
tmp=$(mktemp -d)
trap 'rm -r "$tmp"' EXIT

start=$(date +%s.%N)
for table in "${published[@]}" "${lensbench[@]}"; do
  "$lensllm" bench "$table" --format markdown > "$tmp/$(basename "$table" .csv).md"
done
"$lensllm" lensbench ntk "${lensbench[@]}" > "$tmp/ntk.md"
# The held-out draw stays out of the choice: it tests it.
"$lensllm" lensbench loo "${published[@]}" "${lensbench[@]}" "${later[@]}" > "$tmp/loo.md"
"$lensllm" lensbench loo "${published[@]}" "${lensbench[@]}" "${later[@]}" "${held_out[@]}" | tail -1 > "$tmp/loo-all.md"
"$lensllm" lensbench ceiling "${published[@]}" > "$tmp/ceiling.md"
# Learned on the tables default is chosen on (the held-out draws stay out, as there).
"$lensllm" lensbench learned "${published[@]}" "${lensbench[@]}" "${later[@]}" > "$tmp/learned.md"
seconds=$("$python" -c "print(f'{$(date +%s.%N) - $start:.0f}')")
# The end-to-end selections of a LensBench draw (`lensllm lensbench e2e`), as a Markdown table.
e2e_table() {
  "$python" - "$1" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print("| task | strategy | picked | its true loss (bits/byte) | best model | best true loss | RelAcc (%) | compute / full fine-tuning (%) | the selection's own estimate (%) | rounds | largest point difference |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['task']} | {r['strategy']} | {r['picked']} | {float(r['picked_truth']):.4f} | {r['best']} | {float(r['best_truth']):.4f} "
          f"| {100 * float(r['relacc']):.1f} | {100 * float(r['compute_fraction']):.1f} | {100 * float(r['estimated_fraction']):.1f} "
          f"| {r['rounds']} | {float(r['max_point_difference']):g} |")
PY
}
e2e_table data/lensbench/e2e.csv > "$tmp/e2e.md"

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
  prose intro
  printf '\n## Published tables (30 real LLMs each)\n'
  section FLAN flan; section Gigaword gigaword; section WMT19 wmt19
  prose lensbench
  section "de-en (trans-de-en)" de-en; section "gloss (WordNet)" gloss
  section "docstring (Python standard library)" docstring; section "cipher (generated)" cipher
  prose noise
  printf '\n'; cat "$tmp/noise.md"
  prose ntk
  printf '\n'; cat "$tmp/ntk.md"
  prose e2e
  printf '\n'; cat "$tmp/e2e.md"
  prose default
  printf '\n'; cat "$tmp/loo.md"
  prose goals
  printf '\nWith the held-out draw counted too (nineteen tables): %s\n' "$(sed 's/^Chosen on all tables (what `default` ships): //' "$tmp/loo-all.md")"
  prose ceiling
  printf '\n'; cat "$tmp/ceiling.md"
  prose "ceiling verdict"
  prose learned
  printf '\n'; cat "$tmp/learned.md"
  prose "learned verdict"
  printf '\n## Speed\n\nEvery table above but the end-to-end one (read from data/lensbench/e2e.csv): %s s wall time on one %s machine with %s cores, measured by this script.\n' \
    "$seconds" "$(uname -m)" "$(nproc)"
} > docs/benchmarks.md

# ---------------------------------------------------------------------------------------------
# Racing (issue 11): a section of its own, appended to the page above. Every table in it is
# printed, and every figure drawn, by `lensllm bench CURVES --strategy race --format markdown`.
# ---------------------------------------------------------------------------------------------
race_tmp=$(mktemp -d)
mkdir -p docs/figures
race_start=$(date +%s.%N)
for table in flan gigaword wmt19; do
  "$lensllm" bench "data/curves/$table.csv" --strategy race --no-settle --format markdown \
    --plot "docs/figures/race-$table.png" > "$race_tmp/$table.md"
done
for table in "${lensbench[@]}"; do
  "$lensllm" bench "$table" --strategy race --no-settle --format markdown \
    > "$race_tmp/lensbench-$(basename "$table" .csv).md"
done
# The same races predicting with the vanilla law alone (spec.race.laws: [vanilla]), and starting on
# four sizes (spec.race.initialSizes: 4, the schedule before three became the default).
for table in flan gigaword wmt19 "${lensbench[@]}"; do
  case $table in
    *.csv) file=lensbench-$(basename "$table" .csv) ;;
    *) file=$table table=data/curves/$table.csv ;;
  esac
  "$lensllm" bench "$table" --strategy race --no-settle --laws vanilla --format csv > "$race_tmp/$file.vanilla.csv"
  "$lensllm" bench "$table" --strategy race --no-settle --initial-sizes 4 --format csv > "$race_tmp/$file.four.csv"
done
# Mean RelAcc and compute (%) of the race runs in a `--format csv` file, as two table cells.
race_means() { awk -F, 'NR > 1 {r += $5; c += $4; n++} END {printf "%.1f | %.2f", 100 * r / n, 100 * c / n}' "$1"; }
# The LensBench races again without the two candidates trained from random weights (`-none-`), next to
# fixed-budget AtS at 1/16 on the same rows: where the race's failures come from.
for table in "${lensbench[@]}"; do
  name=$(basename "$table" .csv)
  grep -v -- '-none-' "$table" > "$race_tmp/$name.pretrained.csv"
  "$lensllm" bench "$race_tmp/$name.pretrained.csv" --strategy race --no-settle --format csv \
    > "$race_tmp/$name.pretrained.race.csv"
  "$lensllm" bench "$race_tmp/$name.pretrained.csv" --methods ats --ratios 16 --format csv > "$race_tmp/$name.pretrained.ats.csv"
done
race_seconds=$("$python" -c "print(f'{$(date +%s.%N) - $race_start:.0f}')")
{
  cat <<'TXT'

## Racing: fine-tune only the candidates that can still win

`lensllm bench CURVES --strategy race` replays the racing policy (`lensllm.science.racing`) on a
table: reading a column stands for fine-tuning on that many examples. Round 0 fine-tunes every
candidate on 200, 400 and 800 examples; each later round adds the next doubling (1,600, then
3,200, ...) for the candidates still in the race, nested on what they measured, so no size is run
twice; at most 7 rounds, so the largest size is 51,200 (1/32 of the target). Three points leave the
laws below no residual to measure the noise by, so round 0 ranks by a plain power law, `B / D^beta`
fitted as a line in log-log space (one spare point per curve; its bootstrap is exact, in closed
form). A line cannot bend, and its draws do not see the error of extending it a thousandfold, so in
that round a candidate leaves only at P(best) under epsilon / 10, and no P(best) stops the race
there. From round 1 on the
remaining curves are fitted with the LENSLLM law (rectified form: these tables have no NTK) and with
the vanilla law; the law whose fits leave the smaller residual, pooled over the candidates, is refitted
to 200 parametric-bootstrap resamples of each curve (log-normal noise at that pooled residual level).
That gives each candidate's predictive distribution of the target loss and its probability of being
best, P(best). A candidate with P(best) < epsilon leaves the race (round and reason recorded), unless
it is a law's leader: the candidate that law's own fit (not bootstrapped) predicts best, for each law,
stays whatever its P(best), because P(best) comes from one law and the laws can disagree on the
winner. The race stops when one candidate has P(best) >= 1 - delta, when the schedule has no sizes
left, or, given a cap, when the next round would take the compute spent past it; "laws agree" below says
whether both laws named the same leader in the last round (a selection whose laws disagree completes
with the condition `LawsAgree=False`). The ranking lists the survivors by their
predicted loss (the bootstrap draws' mean in log space), then the eliminated candidates by the
prediction they left with, flagged as lower-confidence.

Since 2026-12-05 a race that would stop with its laws disagreeing settles the question by fine-tuning
their leaders on the target itself (`spec.race.settle`, on by default). Every race in this section and
in the held-out draws' table is replayed without it (`--no-settle`), the race as its laws ranked it and
as those tables were read; the section "When the race's laws disagree" at the end of the page gives
what settling changes, table by table.

Compute: a measured point costs subset size x parameters, counted as a fraction of fine-tuning every
candidate on all 1,638,400 examples. A fixed budget at ratio 1/r spends the sum of the sizes up to
1,638,400 / r over 1,638,400: 25.0% at 1/8, 3.1% at 1/64, 0.38% at 1/512, whatever the models.

Settings: epsilon 0.01, delta 0.05, no compute cap, the schedule above. They were first chosen on FLAN and
Gigaword only, with seeds 0-2, from a grid of 4 or 5 sizes in round 0, 1 or 2 sizes per later round,
epsilon 0.005, 0.01, 0.02 or 0.05 and delta 0.05 or 0.1: epsilon 0.05 eliminated the eventual winner
(RelAcc 85% on FLAN or 94% on Gigaword); with epsilon 0.005 to 0.02 every schedule found the best
model, and 4 sizes then 1 per round did it with the least compute (1.4% to 1.8%); epsilon 0.01, the
issue's default, was kept over 0.02, which saved less than 0.1 point; delta 0.1 stopped FLAN sooner
(1.1%) at the same RelAcc, and the more cautious 0.05 was kept. The races were first capped at the
issue's 5% bound; it never bound on these tables, and a race now has no cap unless a selection sets
one (`spec.budget.maxComputeFraction`): its ladder spends at most what a fixed budget over its sizes
would (settling, in the last section, adds to it).
Keeping each law's leader came later, after the LensBench test below: it raised the compute of FLAN
from 1.83% to 2.71% and of WMT19 from 1.06% to 1.33% (Gigaword unchanged), with the same picks.

Three initial sizes came last, again chosen on FLAN and Gigaword (seeds 0-2). Four sizes, the earlier
schedule, find the best model on both at 2.71% and 1.46%. Three sizes with the power law in round 0
and the full epsilon find it on FLAN at 1.12% but lose Gigaword (87.2%): round 0 gives T5 v1.1 base,
the true best, P(best) 0.003, as its curve still bends down at 800 examples. Eliminating in that
round only under epsilon / 3 still loses it (91.5%); under epsilon / 10, / 30 and / 100 both tables
get 100%, at 1.47% (FLAN) and 0.70%, 0.84% and 0.89% (Gigaword): a tenth was kept. Forbidding a
confident stop in the power law's round changed nothing on these two tables. On the LensBench draws
0-3 (16 tables) the same change raised the race's mean RelAcc then from 98.6% to 99.0% and cut its
mean compute by more than half; on today's tables from 95.0% to 99.1%, at 4.6% of full fine-tuning
instead of 11.5% (below; `--initial-sizes 4` keeps the earlier schedule). Its limit is in
its construction: three small sizes cannot show a curve that turns down late. On a synthetic late
bloomer (the tests' table where the best model at the target is the worst at 100 to 400 examples) the
three-size race eliminates it in round 0 and four sizes keep it.

WMT19 was held out, and the first race failed on it: with the LENSLLM law alone (then the only law),
RelAcc was 84.9%, 84.9% and 99.1% over seeds 0-2 (mean 89.7%) at 2.7% compute. In round 0 the six
T5 and Switch models, the best six on WMT19, all fell under epsilon: their zero-shot losses sit far
above their first fine-tuned points, which the rectified form fits badly, and the flat early curves of
the decoder-only models gave bootstrap draws near zero loss that took their P(best). Choosing the law
each round by its residual (the vanilla law fits WMT19's early rounds better) mended it, and changed
no outcome on FLAN and Gigaword: the LENSLLM law fitted better in 271 of the 272 rounds of the tuning
grid. So the WMT19 numbers below are no longer held out: they come from a change made after seeing
that table. `--laws lensllm` reproduces the held-out run; LensBench tables will be the next fresh test.

Each table below gives the race with these settings for seeds 0, 1, 2; the rounds of seed 0 (the law
chosen and each law's pooled log-space residual); and quality against compute, with fixed-budget AtS
at every ratio next to the race's Pareto front over epsilon (0.005, 0.01, 0.02, 0.05) and the cap
(0.1% to 25%), means over the three seeds. The figures draw the same, with RelAcc and PearCorr.

Two honest limits. PearCorr: eliminated candidates keep the prediction of the small sizes they left
at, so a race ranks the losers worse than a fixed budget of the same cost; it buys the winner, not
the whole order. Intervals: the bootstrap sees measurement noise, not the law being wrong far from
the data. Alone, its 90% intervals held the true loss of 21% of the candidates over the 27 tables of
this page before the seventh draw (three published, 24 LensBench; three seeds each) and of 51% of the
finalists. Since 2026-12-04 each interval is widened by a backtest (`lensllm.science.uncertainty`):
every measured curve, eliminated ones too, has its largest size predicted from its first sizes, and
the errors per unit of log reach, pooled, are scaled to each candidate's reach to the target. That
held 48% and 78% on those tables, in sample, and 33% and 50% on the seventh draw, held out. Since
2026-12-05 every interval also reaches at least as far as the laws erred on the benchmark's tables at
the same reach (its floor, `lensllm.science.benchmark_errors`, measured on this page's 31 tables before
the eighth draw). The column "90% intervals holding the truth" counts those, in sample: the floor was
measured on these tables too. The last section scores it with each group of tables left out of its own
floor, and on the held-out eighth draw. Eliminated candidates' intervals come from the small sizes
they left at. The draws, and so P(best) and every decision of the
race, are the bootstrap's: neither the backtest nor the floor changes a pick, round or stop.
TXT
  for table in flan:FLAN gigaword:Gigaword wmt19:WMT19; do
    file=${table%%:*} title=${table#*:}
    [ "$file" = wmt19 ] && title="$title (held out for the settings; the law choice came after it, see above)"
    printf '\n### %s\n\n![%s: quality against compute](figures/race-%s.png)\n\n' "$title" "$title" "$file"
    cat "$race_tmp/$file.md"
  done
  cat <<'TXT'

### The LensBench tables

None of the race's settings or laws was chosen on these tables. One rule was, after seeing them (the
from-scratch rule below), so they test the settings but no longer test that rule. Their ladder is 8
to 256 examples with the ground truth at 2,048: round 0 (8 to 32) already spends 2.7% of full
fine-tuning and every size up to 256 costs 25%. The old default cap of 5% would have ended most races
after round 0, so these races were first run with a cap of 30%, which never bound; they now run
uncapped, with the same numbers, and have four rounds at most.

Before the rule the race failed three of the four tables of then: mean RelAcc 36% (de-en), 48%
(gloss), 100% (docstring) and 33% (cipher) at 12% to 16% of full fine-tuning, where fixed-budget AtS
at 1/16 (12%) reached 99%, 100%, 100% and 22%. The failures came from candidates with nothing of the task's language
to transfer: the two models with random weights (`llama-m-none-4k`, `gpt2-l-none-1k`) on every task,
and on cipher the ten models pre-trained on neither the made-up language nor the mix. They learn the
task from scratch: with 2 to 64 optimizer steps on the small subsets their curves are flat, then drop
among the steepest of the zoo, and the LENSLLM law extends that drop far past 256 examples while they
level off before 2,048.

The from-scratch rule (`lensllm.science.uncertainty`): a candidate whose zero-shot loss is at least 95%
of what a uniform guess over its vocabulary scores on the same test set is predicted by whichever law
predicts it worst. The runner records the uniform guess's loss with every evaluation
(`uniformBitsPerByte`; the tables' `uniform` column). On this draw as it was then, the zero-shot loss
over the uniform guess's was 1.00 for the random models, 1.0 to 1.6 for models pre-trained on unrelated text and 0.55 to
0.96 for the rest, which looked like a gap, and the threshold was first set at 0.98. The later draws
filled it (0.966 to 0.989 for models pre-trained on text unlike the task's, then), and on the second draw
the race missed the best model on docstring because of a model at 0.968. The threshold was then chosen
on the first three draws from 0.98, 0.97, 0.95, 0.93 and 0.90: 0.95 is the highest that mends that race
(0.93 and below make `default` lose Gigaword to AtS out of sample); the fourth draw, held out, tests it
(last section). The published tables have no `uniform` column, so their races are unchanged; a
selection's candidates always have it.

With the rule the race's mean RelAcc is 100% on all four tables at 3.6% to 6.3% of full fine-tuning
(the tables below), against fixed-budget AtS at 1/16 (12.1%): 100%, 7.0% (gloss), 100% and 100%. Its Pareto front, over the initial sizes, epsilon and the cap, matches or beats every
fixed-budget AtS point on each of the four (the line under each table). The last section gives the
race on the later draws, and why it became the default strategy.

The same races with the vanilla law alone (`--laws vanilla`, `spec.race.laws: [vanilla]` in a
selection), and with four initial sizes, the schedule before three became the default
(`--initial-sizes 4`, `spec.race.initialSizes: 4`), means over seeds 0-2:

| table | race: RelAcc (%) | compute (%) | vanilla alone: RelAcc (%) | compute (%) | four initial sizes: RelAcc (%) | compute (%) |
|---|---|---|---|---|---|---|
TXT
  for file in flan gigaword wmt19 lensbench-de-en lensbench-gloss lensbench-docstring lensbench-cipher; do
    both=$(awk -F'|' '$2 ~ /mean/ {printf "%s | %s", $6, $5; exit}' "$race_tmp/$file.md")
    printf '| %s | %s | %s | %s |\n' "${file#lensbench-}" "$both" "$(race_means "$race_tmp/$file.vanilla.csv")" \
      "$(race_means "$race_tmp/$file.four.csv")"
  done
  cat <<'TXT'

The vanilla law alone loses FLAN. The residual rule still picks the LENSLLM law on LensBench from
round 1 (the rounds below name the law each round used); `spec.race.laws` lets a user choose the
vanilla law alone.

What a race can tell is when its pick hangs on the law. Before the from-scratch rule, over 21 such races
(seven tables of then, three seeds), the laws named the same leader at the end in 9 (Gigaword, WMT19, docstring),
and the race picked the true best or a model within 0.4% RelAcc of it in all 9. In the other 12 they
disagreed, and the LENSLLM law, which fitted better, was right on FLAN and wrong on de-en, gloss and
cipher (mean RelAcc 33% to 48%). So `LawsAgree=False` was the warning to heed: fine-tune both laws'
picks further, which the race now does itself (settling, at the end of the page).

The same races on the tables without the two random models (the table filtered by `grep -v -- -none-`;
RelAcc over the fourteen pre-trained models), means over seeds 0-2, with fixed-budget AtS at 1/16 (12.1%
of full fine-tuning) on the same rows:

| table | race: RelAcc (%) | compute (%) | laws agree (of 3 seeds) | AtS 1/16: RelAcc (%) |
|---|---|---|---|---|
TXT
  for table in "${lensbench[@]}"; do
    name=$(basename "$table" .csv)
    race="$(race_means "$race_tmp/$name.pretrained.race.csv") | $(awk -F, 'NR > 1 {a += ($10 == "True")} END {print a}' "$race_tmp/$name.pretrained.race.csv")"
    ats=$(awk -F, 'NR == 2 {printf "%.1f", 100 * $6}' "$race_tmp/$name.pretrained.ats.csv")
    printf '| %s | %s | %s |\n' "$name" "$race" "$ats"
  done
  cat <<'TXT'

Cipher shows the rule at work without the random models: eight of its fourteen remaining candidates
still learn it from scratch.
TXT
  for file in de-en gloss docstring cipher; do
    printf '\n#### %s\n\n' "$file"
    cat "$race_tmp/lensbench-$file.md"
  done
  printf '\nThe seven tables with both laws and with the vanilla law alone, three seeds each plus the front: %s s wall time on one %s machine with %s cores.\n' \
    "$race_seconds" "$(uname -m)" "$(nproc)"
} >> docs/benchmarks.md
rm -r "$race_tmp"

# ---------------------------------------------------------------------------------------------
# LensBench's later draws (seeds 1-8): the same recipe, new weights, splits and subsets; seeds 3 to 8
# held out. Appended to the page above.
# ---------------------------------------------------------------------------------------------
draw_tmp=$(mktemp -d)
for table in "${lensbench[@]}" "${later_draws[@]}"; do
  name=$(basename "$(dirname "$table")")-$(basename "$table" .csv)
  "$lensllm" bench "$table" --methods default,ats,subtuning --format csv > "$draw_tmp/$name.fixed.csv"
  # The same table without its `uniform` column: `default` as it would rank with the from-scratch rule unable to fire.
  "$python" -c 'import csv, sys; rows = list(csv.DictReader(open(sys.argv[1]))); w = csv.writer(sys.stdout, lineterminator="\n"); keep = [c for c in rows[0] if c != "uniform"]; w.writerow(keep); w.writerows([r[c] for c in keep] for r in rows)' \
    "$table" > "$draw_tmp/$name.csv"
  cp "${table%.csv}.ntk.json" "$draw_tmp/$name.ntk.json"
  "$lensllm" bench "$draw_tmp/$name.csv" --methods default --format csv > "$draw_tmp/$name.blind.csv"
  "$lensllm" bench "$table" --strategy race --no-settle --format csv > "$draw_tmp/$name.race.csv"
  "$lensllm" bench "$table" --strategy race --no-settle --initial-sizes 4 --format csv > "$draw_tmp/$name.race4.csv"
done
for table in "${published[@]}"; do
  "$lensllm" bench "$table" --methods default,ats,subtuning --format csv > "$draw_tmp/$(basename "$table" .csv).fixed.csv"
done
"$lensllm" lensbench ntk "${later_draws[@]}" > "$draw_tmp/ntk.md"
# How often a race's 90% intervals hold the true loss, by group of tables (label=table,table,...): each
# group with the floor measured on the others, the held-out draw with the floor as shipped.
joined() { local IFS=,; echo "$*"; }
"$python" - "published=$(joined "${published[@]}")" "seed 0=$(joined "${lensbench[@]}")" \
  "seed 1=$(joined "${later[@]:0:4}")" "seed 2=$(joined "${later[@]:4}")" "seed 3=$(joined "${held_out[@]}")" \
  "seed 4=$(joined "${fifth[@]}")" "seed 5=$(joined "${sixth[@]}")" "seed 6=$(joined "${seventh[@]}")" \
  "seed 7 (held out)=$(joined "${eighth[@]}")" "seed 8 (held out)=$(joined "${ninth[@]}")" \
  > "$draw_tmp/intervals.md" <<'PY'
import sys, warnings
from pathlib import Path
from lensllm_bench.calibrate import coverage_markdown
warnings.simplefilter("ignore")  # hundreds of bootstrap fits; bounds are expected
groups = {label: [Path(t) for t in tables.split(",")] for label, tables in (a.split("=") for a in sys.argv[1:])}
sys.stdout.write(coverage_markdown(groups, [label for label in groups if "held out" not in label]))
PY
"$lensllm" lensbench ntk-signal "${lensbench[@]}" "${later[@]}" "${held_out[@]}" "${fifth[@]}" > "$draw_tmp/ntk-signal.md"
# How often the race keeps the best model when its laws agree at the end and when they disagree, ranked by its
# law (--no-settle) and settled by fine-tuning the laws' leaders on the target (the default): over every table
# settling was measured on, then over the ninth draw, held out from it.
disagree_tables() {
  "$python" - "$@" <<'PY'
import statistics, sys, warnings
from pathlib import Path
from lensllm.cli import options
from lensllm.science.race_replay import replay_race
from lensllm.science.racing import RaceSettings
warnings.simplefilter("ignore")  # hundreds of bootstrap fits; bounds are expected
ended, settled_on = {}, {}
for table in sys.argv[1:]:
    curves = options.load_curves(table)
    target = options.resolve_target(curves, None)
    for seed in range(3):
        pair = (replay_race(curves, target, RaceSettings(settle=False), seed), replay_race(curves, target, RaceSettings(), seed))
        ended.setdefault(("agree" if pair[0].laws_agree else "disagree", pair[0].stop), []).append(pair)
        if pair[1].stop == "settled":
            settled_on.setdefault(f"{Path(table).parent.name}/{Path(table).stem}", []).append(pair)
def split(pairs, value, show):
    """`show` of `value` over the races ranked by the law, then over the same races settled."""
    return " / ".join(show([value(pair[i]) for pair in pairs]) for i in (0, 1))
relacc, compute = (lambda race: race.relacc), (lambda race: race.compute_fraction)
kept = lambda values: str(sum(v == 1.0 for v in values))
mean = lambda digits: lambda values: f"{100 * statistics.mean(values):.{digits}f}"
worst = lambda values: f"{100 * min(values):.1f}"
def row(label, pairs):
    print(f"| {label} | {len(pairs)} | {split(pairs, relacc, kept)} | {split(pairs, relacc, mean(1))} | {split(pairs, relacc, worst)} "
          f"| {split(pairs, compute, mean(2))} |")
print("| laws at the end, stop | races | best model kept: by the law / settled | mean RelAcc (%): by the law / settled "
      "| worst RelAcc (%): by the law / settled | mean compute (%): by the law / settled |")
print("|---|---|---|---|---|---|")
for (laws, stop), pairs in sorted(ended.items()):
    row(f"{laws}, {stop}", pairs)
row("all races", [p for pairs in ended.values() for p in pairs])
print()
print("The tables where a race settled (seeds 0-2):")
print()
print("| table | races settled | mean RelAcc (%): by the law / settled | mean compute (%): by the law / settled |")
print("|---|---|---|---|")
for table, pairs in settled_on.items():
    print(f"| {table} | {len(pairs)} of 3 | {split(pairs, relacc, mean(1))} | {split(pairs, compute, mean(2))} |")
PY
}
disagree_tables "${published[@]}" "${lensbench[@]}" "${after_first[@]}" > "$draw_tmp/disagree.md"
disagree_tables "${ninth[@]}" > "$draw_tmp/disagree-ninth.md"
{
  prose "second draw"
  printf '\n'
  "$python" - "$draw_tmp" "${lensbench[@]}" "${later_draws[@]}" <<'PY'
import csv, statistics, sys
from pathlib import Path
tmp, tables = Path(sys.argv[1]), [Path(t) for t in sys.argv[2:]]
rows = lambda path: list(csv.DictReader(open(path)))
print("| task | draw | `default` PearCorr (%) | AtS PearCorr | `default` RelAcc (%) | AtS RelAcc | `default` without the rule: PearCorr / RelAcc (%) | race RelAcc (%) @ compute (%) | race from four sizes | AtS 1/16 RelAcc (%) |")
print("|---|---|---|---|---|---|---|---|---|---|")
def print_row(task, folder, v):
    draw = {"lensbench": "seed 0", "lensbench-seed3": "seed 3 (held out)", "lensbench-seed4": "seed 4 (held out)",
            "lensbench-seed5": "seed 5 (held out)", "lensbench-seed6": "seed 6 (held out)",
            "lensbench-seed7": "seed 7 (held out)", "lensbench-seed8": "seed 8 (held out)"}.get(folder, f"seed {folder.removeprefix('lensbench-seed')}")
    print(f"| {task} | {draw} | " + " | ".join(f"{x:.1f}" for x in v[:4])
          + f" | {v[4]:.1f} / {v[5]:.1f} | {v[6]:.1f} @ {v[7]:.2f} | {v[8]:.1f} @ {v[9]:.2f} | {v[10]:.1f} |")
def race_cells(path):
    runs = rows(path)
    return [100 * statistics.mean(float(r[key]) for r in runs) for key in ("relacc", "compute_fraction")]
totals = {}
for table in sorted(tables, key=lambda t: (t.stem, t.parent.name)):
    name = f"{table.parent.name}-{table.stem}"
    fixed = rows(tmp / f"{name}.fixed.csv")
    mean = lambda method, key: 100 * statistics.mean(float(r[key]) for r in fixed if r["method"] == method)
    blind = rows(tmp / f"{name}.blind.csv")
    cells = [mean("default", "pearcorr"), mean("ats", "pearcorr"), mean("default", "relacc"), mean("ats", "relacc"),
             100 * statistics.mean(float(r["pearcorr"]) for r in blind), 100 * statistics.mean(float(r["relacc"]) for r in blind)]
    ats16 = 100 * next(float(r["relacc"]) for r in fixed if r["method"] == "ats" and r["ratio"] == "16")
    values = [*cells, *race_cells(tmp / f"{name}.race.csv"), *race_cells(tmp / f"{name}.race4.csv"), ats16]
    totals.setdefault(table.parent.name, []).append(values)
    print_row(table.stem, table.parent.name, values)
for folder, values in totals.items():
    print_row("mean", folder, [statistics.mean(col) for col in zip(*values)])
PY
  prose subtuning
  printf '\n'
  "$python" - "$draw_tmp" "${published[@]}" "${lensbench[@]}" "${later_draws[@]}" <<'PY'
import csv, statistics, sys, warnings
from pathlib import Path
import numpy as np
from lensllm_bench import loo
warnings.simplefilter("ignore")  # law fits at a bound are expected on these tables
tmp, paths = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
methods = ("ats", "default", "subtuning")
tasks = ("de-en", "gloss", "docstring", "cipher")
groups = {"flan": ["flan"], "gigaword": ["gigaword"], "wmt19": ["wmt19"],
          "LensBench, seeds 0-2 (12 tables; `default` was chosen on them)": [f"lensbench{d}-{t}" for d in ("", "-seed1", "-seed2")
                                                                          for t in tasks],
          "LensBench, seeds 3-8 (24 tables, held out)": [f"lensbench-seed{d}-{t}" for d in range(3, 9) for t in tasks]}
def cell(names, method, key):
    """Means over each table's ratios, then over the tables, as everywhere on this page."""
    return 100 * statistics.mean(statistics.mean(float(r[key]) for r in csv.DictReader(open(tmp / f"{name}.fixed.csv"))
                                                  if r["method"] == method) for name in names)
print("| tables | AtS: PearCorr / RelAcc (%) | `default` | `subtuning` |")
print("|---|---|---|---|")
for label, names in groups.items():
    print(f"| {label} | " + " | ".join(f"{cell(names, m, 'pearcorr'):.1f} / {cell(names, m, 'relacc'):.1f}" for m in methods) + " |")
tables = loo.load_all(paths)
parts = {t.name: [loo.components(t, r) for r in t.ratios] for t in tables}
flan = next(t for t in tables if t.name == "flan")
ats_flan = loo.score(loo.ATS, flan, parts["flan"], from_scratch=False).pearcorr
lensbench = [t for t in tables if t.task in tasks]
def lensbench_relacc(rule):
    return 100 * np.mean([loo.score(rule, t, parts[t.name]).relacc for t in lensbench])
keeping = [rule for rule in loo.RULES if loo.score(rule, flan, parts["flan"]).pearcorr >= ats_flan]
print()
print(f"Of the {len(loo.RULES)} rules of leave one task out's grid, {len(keeping)} keep FLAN's mean PearCorr at AtS's "
      f"({100 * ats_flan:.1f}) or above; the best of them reaches {max(map(lensbench_relacc, keeping)):.1f}% mean RelAcc over "
      f"the {len(lensbench)} LensBench tables (in sample: the nine draws), and the best of all {max(map(lensbench_relacc, loo.RULES)):.1f}%.")
draws = [name for label, names in groups.items() if label.startswith("LensBench") for name in names]
at_64 = lambda method: 100 * statistics.mean(float(r["relacc"]) for name in draws for r in csv.DictReader(open(tmp / f"{name}.fixed.csv"))
                                             if r["method"] == method and r["ratio"] == "64")
print(f"At 1/64 alone (sizes 8 to 32, 2.7% of full fine-tuning) `subtuning` reaches {at_64('subtuning'):.1f}% mean RelAcc over "
      f"those tables, `default` {at_64('default'):.1f}% and AtS {at_64('ats'):.1f}%.")
PY
  prose "subtuning verdict"
  prose "second draw e2e"
  printf '\n'; e2e_table data/lensbench-seed1/e2e.csv
  prose "sixth draw e2e"
  printf '\n'; e2e_table data/lensbench-seed5/e2e.csv
  prose intervals
  printf '\n'; cat "$draw_tmp/intervals.md"
  prose "intervals verdict"
  prose "laws disagree"
  printf '\n'; cat "$draw_tmp/disagree.md"
  prose "laws disagree verdict"
  prose "settling held out"
  printf '\n'; cat "$draw_tmp/disagree-ninth.md"
  prose "settling held out verdict"
  prose "second draw ntk"
  printf '\n'; cat "$draw_tmp/ntk.md"
  prose "ntk signal"
  printf '\n'; cat "$draw_tmp/ntk-signal.md"
} >> docs/benchmarks.md
rm -r "$draw_tmp"
echo "wrote docs/benchmarks.md"
