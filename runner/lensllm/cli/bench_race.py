"""`lensllm bench --strategy race`: replay the racing policy on a curves table.

Prints the race's RelAcc, PearCorr, compute fraction and rounds per seed, the rounds of the
first seed, and (except for CSV) the race over a grid of settings next to fixed-budget AtS
at equal compute; `--plot` draws that comparison.
"""

import argparse
import sys
import warnings
from pathlib import Path

from lensllm.cli import options, race_render
from lensllm.errors import LensLLMError, naming
from lensllm.science.benchmark import check_comparable, usable_ratios
from lensllm.science.laws import LawWarning
from lensllm.science.race_replay import capped, fixed_budget_points, race_grid, race_points, race_runs
from lensllm.science.racing import MAX_COMPUTE_FRACTION, RaceSettings
from lensllm.science.uncertainty import LAWS


# RaceSettings fields the command line sets (as --epsilon, --max-compute-fraction, ...).
SETTINGS_FIELDS = ("epsilon", "delta", "max_compute_fraction", "initial_sizes", "sizes_per_round", "max_rounds", "laws", "settle")
DEFAULT_SEEDS = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The race's options on the `bench` parser (unset ones take RaceSettings' defaults)."""
    d = RaceSettings()
    race = p.add_argument_group("race (with --strategy race)")
    race.add_argument("--epsilon", type=options.fraction, help=f"eliminate when P(best) < this (default {d.epsilon:g})")
    race.add_argument("--delta", type=options.fraction, help=f"stop when P(best) >= 1 - this (default {d.delta:g})")
    race.add_argument(
        "--max-compute-fraction",
        type=compute_fraction,
        help="stop before a round would spend more than this share of fully fine-tuning every candidate "
        "(default: no cap, at most what a fixed budget over the same sizes spends)",
    )
    race.add_argument("--initial-sizes", type=options.positive_int, help=f"sizes of round 0 (default {d.initial_sizes})")
    race.add_argument("--sizes-per-round", type=options.positive_int, help=f"sizes each later round adds (default {d.sizes_per_round})")
    race.add_argument("--max-rounds", type=options.positive_int, help=f"rounds at most (default {d.max_rounds})")
    race.add_argument("--laws", type=law_list, help=f"laws whose bootstrap draws are pooled (default {','.join(d.laws)})")
    race.add_argument(
        "--settle",
        action=argparse.BooleanOptionalAction,
        help="when the laws disagree at the stop, fine-tune their leaders on the target (read from its column) and "
        "rank them by it (default: on)",
    )
    race.add_argument("--seeds", type=options.positive_int, help=f"replay with seeds 0..N-1 (default {DEFAULT_SEEDS})")


def compute_fraction(text: str) -> float:
    """A cap as the spec's budget.maxComputeFraction takes it: above 0, at most MAX_COMPUTE_FRACTION."""
    value = options.positive_float(text)
    if value > MAX_COMPUTE_FRACTION:
        raise argparse.ArgumentTypeError(f"expected a number above 0 and at most {MAX_COMPUTE_FRACTION:g}, got {text!r}")
    return value


def law_list(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in LAWS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected laws among {', '.join(LAWS)}, got {text!r}")
    return names


def given_race_options(args: argparse.Namespace) -> list[str]:
    """The race options set on the command line, as the user spelt them."""
    names = [*SETTINGS_FIELDS, "seeds"]
    return ["--" + name.replace("_", "-") for name in names if getattr(args, name) is not None]


def run(args: argparse.Namespace) -> int:
    if args.methods is not None:
        raise LensLLMError("--methods applies to --strategy fixed; a race ranks with its own law")
    options.check_plot_path(args.plot)
    curves = options.load_curves(args.curves)
    target = options.resolve_target(curves, args.target)
    settings = RaceSettings(**{name: getattr(args, name) for name in SETTINGS_FIELDS if getattr(args, name) is not None})
    seeds = list(range(args.seeds or DEFAULT_SEEDS))
    name = Path(args.curves).stem
    with naming(args.curves), warnings.catch_warnings():
        warnings.simplefilter("ignore", LawWarning)  # hundreds of bootstrap fits; bounds are expected
        check_comparable(curves)
        if args.format == "csv":
            sys.stdout.write(race_render.runs_csv(race_runs(curves, target, settings, seeds)))
            return 0
        races = race_grid(curves, target, settings, seeds)
        runs = [capped(curves, target, r, settings.max_compute_fraction) for r in races[settings.initial_sizes, settings.epsilon]]
        front = race_points(curves, target, races)
        fixed = fixed_budget_points(curves, target, "ats", args.ratios or usable_ratios(curves, target))
    if args.format == "table":
        race_render.print_race_tables(name, runs, front, fixed)
    else:
        text = {"json": race_render.race_json, "markdown": race_render.race_markdown}[args.format](runs, front, fixed)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if args.plot is not None:
        from lensllm.cli.plots import plot_race

        plot_race(runs, front, fixed, args.plot, title=f"{name}: race against fixed budgets")
    return 0
