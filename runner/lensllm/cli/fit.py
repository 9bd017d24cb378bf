"""`lensllm fit`: fit one method to every model's curve within a budget and rank them."""

import argparse
import sys
import warnings
from pathlib import Path

from lensllm.cli import options, render
from lensllm.errors import CurvesFileError
from lensllm.science.laws import LawWarning
from lensllm.science.selectors import select


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit",
        help="fit curves within a budget and rank models by predicted loss",
        description="Fit every model's curve using subset sizes up to --max-n, predict its loss at "
        "--target, and rank the models.",
    )
    p.add_argument("curves", metavar="CURVES.csv|-", help="curves CSV, or - for standard input")
    p.add_argument("--max-n", type=options.positive_int, required=True, help="largest subset size to use (a column)")
    p.add_argument("--target", type=options.positive_int, help="size to predict (default: largest column)")
    p.add_argument("--method", type=options.method_name, default="default")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="observed points and fitted curves, log-log")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options.check_plot_path(args.plot)
    full = options.load_curves(args.curves)
    if args.max_n not in full.sizes:
        raise CurvesFileError(
            f"--max-n {args.max_n} is not a size column of {args.curves} "
            f"(columns: {', '.join(str(int(s)) for s in full.sizes)})"
        )
    target = options.resolve_target(full, args.target)
    if target < args.max_n:  # the laws extrapolate upward: below the fitted points they predict nothing sensible
        raise CurvesFileError(f"--target {target} is below {args.max_n}, the largest size fitted (--max-n)")
    curves = full.up_to(args.max_n)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LawWarning)
        selection = select(args.method, curves, target)
    records = render.fit_records(curves.models, selection, args.max_n, target)
    if args.format == "csv":
        sys.stdout.write(render.fit_csv(records))
    elif args.format == "json":
        doc = {"method": args.method, "max_n": args.max_n, "target_n": target, "models": records}
        sys.stdout.write(render.json_text(doc) + "\n")
    else:
        render.print_tables([render.fit_table(records, args.method, args.max_n, target)])
    for note in dict.fromkeys(str(w.message) for w in caught):
        print(f"note: {note}", file=sys.stderr)
    if args.plot is not None:
        from lensllm.cli.plots import plot_fits

        plot_fits(curves, full, selection, target, args.plot)
    return 0
