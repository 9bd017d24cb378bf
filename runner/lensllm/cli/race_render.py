"""Turn race replays into tables, CSV, JSON and Markdown for `lensllm bench --strategy race`.

Every text format is built from the same sections (title, header, rows), so the terminal
table and the Markdown in docs/benchmarks.md cannot disagree.
"""

import dataclasses
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

from lensllm.cli.render import _csv, _pct, json_text
from lensllm.science.race_replay import QualityPoint, RaceReplay, pareto_front, undominated
from lensllm.science.racing import RaceSettings, leaders_agree

RUNS_CSV_HEADER = (
    "seed", "rounds", "stop", "compute_fraction", "relacc", "pearcorr", "coverage", "selected", "survivors", "laws_agree"
)

Section = tuple[str, list[str], list[list[str]]]


def describe(settings: RaceSettings) -> str:
    """The settings in one line."""
    cap = settings.max_compute_fraction
    return (
        f"epsilon {settings.epsilon:g}, delta {settings.delta:g}, "
        f"{'no compute cap' if cap is None else f'compute cap {100 * cap:g}%'}, "
        f"{settings.initial_sizes} sizes then {settings.sizes_per_round} per round, at most {settings.max_rounds} rounds, "
        f"laws {' + '.join(settings.laws)}, {'settling' if settings.settle else 'not settling'} their disagreement on the target"
    )


def law_leaders_text(leaders: Mapping[str, str]) -> str:
    """'A (every law)' when the laws agree, else 'lensllm: A; vanilla: B'."""
    if len(leaders) > 1 and leaders_agree(leaders):
        return f"{next(iter(leaders.values()))} (every law)"
    return "; ".join(f"{law}: {name}" for law, name in leaders.items()) or "-"


def runs_csv(runs: Sequence[RaceReplay]) -> str:
    return _csv([RUNS_CSV_HEADER] + [[getattr(r, k) for k in RUNS_CSV_HEADER] for r in runs])


def _runs_section(runs: Sequence[RaceReplay]) -> Section:
    header = ["seed", "rounds", "stop", "compute (%)", "RelAcc (%)", "PearCorr (%)", f"{100 * runs[0].settings.interval_level:g}% intervals holding the truth (%)", "selected", "survivors", "laws agree"]
    rows = [
        [str(r.seed), str(r.rounds), r.stop, f"{100 * r.compute_fraction:.2f}", _pct(r.relacc), _pct(r.pearcorr), _pct(r.coverage), r.selected, str(r.survivors), "yes" if r.laws_agree else "no"]
        for r in runs
    ]
    n = len(runs)
    mean = {k: sum(getattr(r, k) for r in runs) / n for k in ("rounds", "compute_fraction", "relacc", "pearcorr", "coverage")}
    rows.append(
        ["mean", f"{mean['rounds']:.1f}", "", f"{100 * mean['compute_fraction']:.2f}", _pct(mean["relacc"]), _pct(mean["pearcorr"]), _pct(mean["coverage"]), "", "", ""]
    )
    return f"Race ({describe(runs[0].settings)})", header, rows


def _rounds_section(run: RaceReplay) -> Section:
    header = ["round", "sizes up to", "candidates", "eliminated", "compute after (%)", "leader", "its P(best)", "law (pooled noise per law, log)", "best by law"]
    rows = []
    for d in run.decisions:
        leader = max(d.assessments, key=lambda a: a.p_best)
        rows.append(
            [
                str(d.round),
                f"{max(a.largest_size for a in d.assessments):,}",
                str(len(d.assessments)),
                str(len(d.eliminated)),
                f"{100 * d.compute_fraction:.2f}",
                leader.name,
                f"{leader.p_best:.3f}",
                f"{d.law} (" + ", ".join(f"{law} {value:.4f}" for law, value in d.noise.items()) + ")",
                law_leaders_text(d.law_leaders),
            ]
        )
    return f"Rounds of the race with seed {run.seed} (stopped: {run.stop})", header, rows


def _front_section(front: Sequence[QualityPoint], fixed: Sequence[QualityPoint]) -> Section:
    header = ["strategy", "compute (%)", "RelAcc (%)", "min RelAcc over seeds (%)", "PearCorr (%)"]
    rows = [
        [p.label, f"{100 * p.compute_fraction:.2f}", _pct(p.relacc), _pct(p.min_relacc), _pct(p.pearcorr)]
        for p in [*fixed, *pareto_front(front)]
    ]
    return "Quality against compute: fixed-budget AtS, and the race's Pareto front over its settings", header, rows


def _verdict(front: Sequence[QualityPoint], fixed: Sequence[QualityPoint]) -> str:
    left = undominated(pareto_front(front), fixed)
    if not left:
        return "Every fixed-budget AtS point is matched or beaten by a race setting (compute <=, mean RelAcc >=)."
    return "Fixed-budget AtS points no race setting matches (compute <=, mean RelAcc >=): " + ", ".join(p.label for p in left) + "."


def sections(runs: Sequence[RaceReplay], front: Sequence[QualityPoint], fixed: Sequence[QualityPoint]) -> list[Section]:
    return [_runs_section(runs), _rounds_section(runs[0]), _front_section(front, fixed)]


def print_race_tables(name: str, runs, front, fixed) -> None:
    console = Console()
    for title, header, rows in sections(runs, front, fixed):
        table = Table(title=f"{name}: {title}")
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(_verdict(front, fixed))


def race_markdown(runs, front, fixed) -> str:
    out = []
    for title, header, rows in sections(runs, front, fixed):
        out += [f"{title}:", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        out.append("")
    out += [_verdict(front, fixed), ""]
    return "\n".join(out)


def race_json(runs, front, fixed) -> str:
    return json_text(
        {
            "settings": dataclasses.asdict(runs[0].settings),
            "runs": [_run_record(r) for r in runs],
            "front": [dataclasses.asdict(p) for p in pareto_front(front)],
            "fixed": [dataclasses.asdict(p) for p in fixed],
            "undominated_fixed": [p.label for p in undominated(pareto_front(front), fixed)],
        }
    )


def _run_record(run: RaceReplay) -> dict:
    return {
        "seed": run.seed,
        "rounds": run.rounds,
        "stop": run.stop,
        "compute_fraction": run.compute_fraction,
        "relacc": run.relacc,
        "pearcorr": run.pearcorr,
        "coverage": run.coverage,
        "selected": run.selected,
        "ranking": [{**dataclasses.asdict(r), "lower_confidence": r.lower_confidence} for r in run.ranking],
        "decisions": [
            {
                "round": d.round,
                "stop": d.stop,
                "compute_fraction": d.compute_fraction,
                "law": d.law,
                "noise": d.noise,
                "law_leaders": dict(d.law_leaders),
                "from_scratch": list(d.from_scratch),
                "assessments": [dataclasses.asdict(a) for a in d.assessments],
                "eliminated": [dataclasses.asdict(e) for e in d.eliminated],
                "next_sizes": {name: list(sizes) for name, sizes in d.next_sizes.items()},
            }
            for d in run.decisions
        ],
    }
