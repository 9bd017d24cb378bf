"""`lensllm bench`: score selection methods on a curves table under the papers' protocol,
or (`--strategy race`) replay the racing policy on it (`lensllm.cli.bench_race`)."""

import argparse
import sys
import warnings
from pathlib import Path

from lensllm.cli import bench_race, options, render
from lensllm.errors import LensLLMError, naming
from lensllm.science.benchmark import check_comparable, run_benchmark, usable_ratios
from lensllm.science.laws import LawWarning


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark selection methods on a curves CSV",
        description="For each budget ratio r, every method sees subset sizes up to TARGET/r and is "
        "scored (PearCorr, RelAcc) against the true loss at TARGET. With --strategy race, the racing "
        "policy runs its rounds on the table instead and is compared with fixed budgets at equal compute.",
    )
    p.add_argument("--strategy", choices=("fixed", "race"), default="fixed", help="fixed budgets (default) or a race")
    p.add_argument(
        "curves", metavar="CURVES.csv", help="model column, then one loss column per subset size (with CURVES.ntk.json "
        "beside it, a LensBench table: its NTK spectra and ground-truth size are used)"
    )
    p.add_argument("--methods", type=options.method_list, help="a,b,... or all (default all; fixed strategy only)")
    p.add_argument(
        "--ratios", type=options.int_list, help="default: 8,16,...,512, those that leave at least 3 subset sizes"
    )
    p.add_argument("--target", type=options.positive_int, help="size to predict (default: largest column)")
    p.add_argument("--format", choices=("table", "csv", "json", "markdown"), default="table")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw quality against the budget (or compute, for a race)")
    bench_race.add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.strategy == "race":
        return bench_race.run(args)
    race_options = bench_race.given_race_options(args)
    if race_options:
        raise LensLLMError(f"{', '.join(race_options)}: race options, which need --strategy race")
    methods = args.methods or options.method_list("all")
    options.check_plot_path(args.plot)
    curves = options.load_curves(args.curves)
    target = options.resolve_target(curves, args.target)
    with naming(args.curves), warnings.catch_warnings():
        warnings.simplefilter("ignore", LawWarning)  # a benchmark fits hundreds of curves; bounds are expected
        check_comparable(curves)
        rows = run_benchmark(curves, methods, args.ratios or usable_ratios(curves, target), target)
    if args.format == "table":
        render.print_tables(render.bench_tables(rows))
    else:
        text = {"csv": render.bench_csv, "json": render.bench_json, "markdown": render.bench_markdown}[args.format](rows)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if args.plot is not None:
        from lensllm.cli.plots import plot_bench

        plot_bench(rows, args.plot, title=f"{Path(args.curves).stem}: selection quality against budget")
    return 0
