"""Choosing `default` by leave-one-task-out, and its out-of-sample scores.

Each candidate rule (`lensllm.science.selectors.BlendRule`) is scored on every curve table
at every budget ratio: mean PearCorr, with a penalty for each RelAcc point lost against
AtS. Tables of one task (the same file name in several LensBench draws) count as one task:
its gain is their mean. For each task in turn, the rule that scores best on all the other
tasks is chosen and reported on the held-out task's tables: those out-of-sample numbers are
the ones the docs quote. The rule chosen on all tasks together is what `default` ships.

Every rule is scored with the from-scratch rule of `select_default`; the baseline is the
paper's AtS, without it. The AtS fits and the law fit of a (table, ratio) are shared by
every rule, so they are computed once; `BlendRule.combine` then gives exactly what
`select_default` would.
Pure computation on curve tables (numpy), no torch. Called by `lensllm lensbench loo`.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from lensllm.curves_io import read_curves
from lensllm.errors import LensLLMError, naming
from lensllm.science.benchmark import PAPER_RATIOS, check_comparable, usable_ratios
from lensllm.science.curves import Curves
from lensllm.science.laws import AtSLaw
from lensllm.science.metrics import pearcorr, relacc
from lensllm.science.selectors import BlendRule, backtest_gain, fit_each, select, worst_if_from_scratch

RULES = tuple(
    BlendRule(ats_k=k, ats_deltas=deltas, law_weight=w, vanilla_weight=v, gain=g)
    for g, v, w, k, deltas in product(
        (1.0, None, 0.75, 0.5, 1.25), (0.0, 0.25, 0.5), (0.0, 0.1, 0.2, 0.3, 0.5), (3, 2), ((3.0, 4.0, 5.0), (5.0,), (3.0,))
    )
)
ATS = BlendRule(ats_k=3, ats_deltas=(5.0,), law_weight=0.0)  # the paper's AtS, as a rule
RELACC_PENALTY = 2.0  # PearCorr points given up per RelAcc point lost against AtS


@dataclass(frozen=True)
class Table:
    """One curve table with its ground truth and the ratios it is scored at; `task` names what it measures
    (its file's stem: the draws of one LensBench task share it)."""

    name: str
    curves: Curves
    target: float
    ratios: tuple[int, ...]
    task: str
    source: Path | None = None  # the file it was read from, named by errors found in it later

    @property
    def truth(self) -> np.ndarray:
        return self.curves.loss_at(self.target)


def load(path: Path, name: str | None = None) -> Table:
    curves = read_curves(path)
    target = curves.target_size if curves.target_size is not None else float(curves.sizes[-1])
    with naming(path):  # checked here, where the file is known: the scores of many tables run together
        check_comparable(curves)
        ratios = tuple(usable_ratios(curves, target, PAPER_RATIOS))
    return Table(name or path.stem, curves, target, ratios, path.stem, path)


def load_all(paths: Sequence[Path]) -> list[Table]:
    """Every table, named by its file's stem, or by folder/stem where files of two draws share a stem
    (results are keyed by name: two tables under one name would be scored as one)."""
    resolved = [p.resolve() for p in paths]
    twice = sorted({str(p) for p in paths if resolved.count(p.resolve()) > 1})
    if twice:
        raise LensLLMError(f"table given twice: {', '.join(twice)}")
    stems = Counter(p.stem for p in paths)
    return [load(p, p.stem if stems[p.stem] == 1 else f"{p.resolve().parent.name}/{p.stem}") for p in paths]


@dataclass(frozen=True)
class Components:
    """Log predictions at the target of every AtS variant and of the two laws, and the last observed log loss."""

    ats: dict[tuple[int, float], np.ndarray]
    law: np.ndarray
    vanilla: np.ndarray
    last: np.ndarray
    gains: dict[tuple[int, tuple[float, ...]], float]  # calibrated gain per AtS variant
    scratch: np.ndarray  # which candidates learn the task from scratch


def components(table: Table, ratio: int) -> Components:
    seen = table.curves.up_to(table.target / ratio)
    variants = {(r.ats_k, d) for r in RULES for d in r.ats_deltas}
    ats = {
        (k, d): np.log([law.predict(table.target)[0] for law in fit_each(seen, lambda i, k=k, d=d: AtSLaw(k=k, delta=d))])
        for k, d in sorted(variants)
    }
    law = np.log(select("rectified", seen, table.target).predicted_loss)
    vanilla = np.log(select("vanilla", seen, table.target).predicted_loss)
    calibrated = {(r.ats_k, r.ats_deltas): r for r in RULES if r.gain is None}
    gains = {key: backtest_gain(seen, rule) for key, rule in calibrated.items()}
    return Components(ats, law, vanilla, np.log(seen.losses[:, -1]), gains, seen.from_scratch)


def predict(rule: BlendRule, parts: Components, from_scratch: bool = True) -> np.ndarray:
    """What `select_default(..., rule=rule)` predicts, from the shared fits (the blend alone without `from_scratch`)."""
    gain = rule.gain if rule.gain is not None else parts.gains[rule.ats_k, rule.ats_deltas]
    ats = [parts.ats[rule.ats_k, d] for d in rule.ats_deltas]
    blended = np.exp(rule.combine(ats, parts.law, parts.vanilla, parts.last, gain))
    scratch = parts.scratch if from_scratch else False
    return worst_if_from_scratch(blended, scratch, np.exp(parts.law), np.exp(parts.vanilla))


@dataclass(frozen=True)
class Score:
    pearcorr: float  # means over the table's ratios, fractions
    relacc: float


def score(rule: BlendRule, table: Table, parts: Sequence[Components], from_scratch: bool = True) -> Score:
    preds = [predict(rule, p, from_scratch) for p in parts]
    return Score(
        float(np.mean([pearcorr(p, table.truth) for p in preds])),
        float(np.mean([relacc(table.truth, int(np.argmin(p))) for p in preds])),
    )


def objective(scores: dict[str, Score], baseline: dict[str, Score], tasks: Sequence[Sequence[str]]) -> tuple[float, float]:
    """The worst gain over AtS among `tasks` (each the names of its tables), then the mean gain (to break ties).

    A table's gain is the PearCorr gained over AtS less RELACC_PENALTY times the RelAcc
    lost against it; a task's, the mean over its tables. The worst case, not the mean: a
    default must not trade one kind of task for another (averaging let the small-model tables
    outvote the published ones). The mean within a task: its draws are repeats of one
    experiment, and the worst of them would chase one draw's noise.
    """
    gains = [
        np.mean([scores[t].pearcorr - baseline[t].pearcorr
                 - RELACC_PENALTY * max(0.0, baseline[t].relacc - scores[t].relacc) for t in task])
        for task in tasks
    ]
    return float(min(gains)), float(np.mean(gains))


@dataclass(frozen=True)
class HeldOut:
    table: str
    rule: BlendRule  # chosen on every other table
    score: Score  # of that rule on this table: out of sample
    ats: Score


@dataclass(frozen=True)
class Evaluation:
    scores: dict[BlendRule, dict[str, Score]]  # every rule on every table
    ats: dict[str, Score]  # the paper's AtS on every table: the baseline
    held_out: list[HeldOut]  # every table, scored with the rule chosen without its task
    chosen: BlendRule  # best on all tasks together: what `default` ships
    tasks: dict[str, list[str]]  # each task's tables, by name


def tasks_of(tables: Sequence[Table]) -> dict[str, list[str]]:
    """Each task's table names, tasks in order of first appearance."""
    tasks: dict[str, list[str]] = {}
    for table in tables:
        tasks.setdefault(table.task, []).append(table.name)
    return tasks


def evaluate(tables: Sequence[Table]) -> Evaluation:
    parts = {t.name: _components_at_every_ratio(t) for t in tables}
    scores = {rule: {t.name: score(rule, t, parts[t.name]) for t in tables} for rule in RULES}
    ats = {t.name: score(ATS, t, parts[t.name], from_scratch=False) for t in tables}
    tasks = tasks_of(tables)

    def best(on: Sequence[Sequence[str]]) -> BlendRule:
        # max keeps the first of equal rules, and RULES lists simpler rules first.
        return max(RULES, key=lambda rule: objective(scores[rule], ats, on))

    held = []
    for task, names in tasks.items():
        rule = best([other for key, other in tasks.items() if key != task])
        held.extend(HeldOut(name, rule, scores[rule][name], ats[name]) for name in names)
    return Evaluation(scores, ats, held, best(list(tasks.values())), tasks)


def _components_at_every_ratio(table: Table) -> list[Components]:
    with naming(table.source or table.name):  # a fit that fails names the model; which of the tables holds it?
        return [components(table, r) for r in table.ratios]


def describe(rule: BlendRule) -> str:
    deltas = "/".join(f"{d:g}" for d in rule.ats_deltas)
    gain = "calibrated" if rule.gain is None else f"{rule.gain:g}"
    return (f"AtS k={rule.ats_k} delta={deltas}, rectified law {rule.law_weight:g}, vanilla law {rule.vanilla_weight:g}, "
            f"gain {gain}")


def markdown(evaluation: Evaluation) -> str:
    rows = [
        "| held-out table | rule chosen on the other tasks | PearCorr (%) | AtS PearCorr | RelAcc (%) | AtS RelAcc |",
        "|---|---|---|---|---|---|",
    ]
    held = {h.table: h for h in evaluation.held_out}
    for task, names in evaluation.tasks.items():
        for name in names:
            rows.append(_row(name, held[name].rule, held[name].score, held[name].ats))
        if len(names) > 1:
            rows.append(_row(f"{task}, mean of {len(names)}", held[names[0]].rule,
                             _mean([held[n].score for n in names]), _mean([held[n].ats for n in names])))
    return "\n".join(rows) + "\n"


def _mean(scores: Sequence[Score]) -> Score:
    return Score(float(np.mean([s.pearcorr for s in scores])), float(np.mean([s.relacc for s in scores])))


def _row(name: str, rule: BlendRule, score: Score, ats: Score) -> str:
    return (f"| {name} | {describe(rule)} | **{100 * score.pearcorr:.1f}** | {100 * ats.pearcorr:.1f} "
            f"| **{100 * score.relacc:.1f}** | {100 * ats.relacc:.1f} |")
