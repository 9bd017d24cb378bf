"""`lensllm lensbench`: generate the LensBench tables (models, tasks and curves measured by the runner).

The benchmark lives in its own package, `lensllm_bench`, which the product never imports:
this module loads it only when the subcommand runs.
"""

import argparse
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

from lensllm.cli import options
from lensllm.errors import LensLLMError, naming
from lensllm.output_paths import check_folder
from lensllm.science.laws import LawWarning


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lensbench",
        help="generate the LensBench curve tables on this machine",
        description="Build a zoo of small causal LMs and tasks from offline text, and measure every "
        "learning curve, NTK and ground truth with the runner.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = actions.add_parser("generate", help="build the zoo and tasks, measure, write the tables")
    gen.add_argument("--out", type=Path, required=True, help="folder for everything (resumes what is there)")
    gen.add_argument("--seed", type=options.seed, default=0, help="seed of tasks, zoo and measurements (default 0)")
    gen.add_argument("--tasks", type=_task_list, help="comma-separated built-in task names or dataset folders")
    gen.add_argument("--quick", action="store_true", help="a miniature: 3 models, 2 offline tasks, tiny sizes")
    gen.add_argument("--workers", type=options.positive_int, default=1, help="worker processes (default 1)")
    gen.add_argument("--debs", type=Path, help="cache of Debian packages (default OUT/debs)")
    gen.add_argument("--zoo-only", action="store_true", help="build the tasks and the zoo, measure nothing (enough for e2e)")
    gen.set_defaults(run=run_generate)
    e2e = actions.add_parser("e2e", help="run lensllm select --local per task of a generation and score its pick")
    e2e.add_argument("--out", type=Path, required=True, help="the folder of a `lensbench generate` (--zoo-only is enough)")
    e2e.add_argument("--tables", type=Path, help="LensBench tables holding the truth, TASK.points.csv "
                     "(default OUT/tables; the repository's are in data/lensbench)")
    e2e.add_argument("--tasks", type=_task_list, help="comma-separated task names (default: all of the generation)")
    e2e.add_argument("--workers", type=options.positive_int, default=2, help="trials at once (default 2, one thread each)")
    e2e.add_argument("--strategy", choices=("fixed", "race"),
                     help="race: only those that may still win (the default, as in a selection); "
                     "fixed: every candidate on every size")
    e2e.set_defaults(run=run_e2e)
    loo = actions.add_parser("loo", help="choose default's rule by leave-one-task-out; Markdown of the held-out scores")
    loo.add_argument("tables", nargs="+", type=Path, metavar="CURVES.csv", help="curve tables (published or LensBench)")
    loo.set_defaults(run=run_loo)
    ntk = actions.add_parser("ntk", help="lensllm with the measured NTK vs rectified vs ats, with bootstrap intervals")
    ntk.add_argument("tables", nargs="+", type=Path, metavar="CURVES.csv", help="LensBench tables (with CURVES.ntk.json)")
    ntk.add_argument("--seed", type=options.seed, default=0, help="seed of the bootstrap (default 0)")
    ntk.set_defaults(run=run_ntk)
    signal = actions.add_parser("ntk-signal", help="do NTK statistics predict where default errs, beyond the zero-shot "
                                "loss? Correlations, and a correction fitted leaving one task out")
    signal.add_argument("tables", nargs="+", type=Path, metavar="CURVES.csv",
                        help="LensBench tables (with CURVES.ntk.json) of at least two tasks")
    signal.set_defaults(run=run_ntk_signal)
    ceiling = actions.add_parser("ceiling", help="AtS and default against the best score of curve statistics "
                                 "fitted to the truth (a hindsight ceiling)")
    ceiling.add_argument("tables", nargs="+", type=Path, metavar="CURVES.csv", help="curve tables (published or LensBench)")
    ceiling.set_defaults(run=run_ceiling)
    learned = actions.add_parser("learned", help="AtS reweighted by the ceiling's statistics, weights learned on the "
                                 "other tasks (leave one task out), against AtS and default")
    learned.add_argument("tables", nargs="+", type=Path, metavar="CURVES.csv",
                         help="curve tables (published or LensBench) of at least two tasks")
    learned.set_defaults(run=run_learned)
    calibrate = actions.add_parser("calibrate", help="measure how far the race's predictions missed on TABLES: print the "
                                   "module that floors its intervals (lensllm/science/benchmark_errors.py)")
    calibrate.add_argument("tables", nargs="+", type=Path, metavar="CURVES.csv",
                           help="curve tables with parameter counts (published or LensBench)")
    calibrate.set_defaults(run=run_calibrate)


def _check_installed() -> None:
    """The images ship the product only; the benchmark comes with a source checkout."""
    if importlib.util.find_spec("lensllm_bench") is None:
        raise LensLLMError("lensllm lensbench needs the lensbench/ sources: pip install -e . in a checkout of the repository")


def _task_list(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one task")
    return names


def run_generate(args: argparse.Namespace) -> int:
    _check_installed()
    from lensllm_bench.tasks import BUILT_IN

    for name in args.tasks or ():  # checked before the generator's imports: torch and transformers take seconds
        if name not in BUILT_IN and not Path(name).is_dir():
            raise LensLLMError(f"--tasks: {name!r} is neither a built-in task ({', '.join(BUILT_IN)}) nor a folder")
    check_folder(args.out, "--out")
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    from lensllm_bench.generate import Settings, default_tasks, generate

    tasks = args.tasks or default_tasks(args.quick)
    settings = Settings(
        out=args.out, seed=args.seed, tasks=tasks, quick=args.quick, workers=args.workers,
        debs=args.debs or args.out / "debs", zoo_only=args.zoo_only,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    record = generate(settings, log=lambda line: print(line, flush=True))
    if record["failed_units"]:
        print(f"lensllm lensbench: {len(record['failed_units'])} units failed; see {args.out / 'generation.json'}", file=sys.stderr)
        return 1
    print(f"done in {record['wall_seconds']:.0f} s wall, {record['cpu_seconds_this_run']:.0f} CPU-s")
    return 0


def e2e_strategy(args: argparse.Namespace) -> str:
    """--strategy, or what a selection that names none runs: the benchmark measures what users get."""
    from lensllm.selection.spec import LLMSelectionSpec

    return args.strategy or LLMSelectionSpec.model_fields["strategy"].default


def run_e2e(args: argparse.Namespace) -> int:
    _check_installed()
    record_path = args.out / "generation.json"
    if not record_path.exists():
        raise LensLLMError(f"--out {args.out}: no generation.json (run `lensllm lensbench generate --out {args.out}` first)")
    record = _generation_record(record_path)
    tasks = args.tasks or tuple(record["tasks"])
    unknown = sorted(set(tasks) - set(record["tasks"]))
    if unknown:
        raise LensLLMError(f"--tasks: {', '.join(unknown)} not in this generation ({', '.join(record['tasks'])})")
    tables = args.tables or args.out / "tables"
    missing = [f"{task}.points.csv" for task in tasks if not (tables / f"{task}.points.csv").is_file()]
    if missing:
        raise LensLLMError(f"--tables {tables}: no {', '.join(missing)} (the truth to score against)")
    # Imported once the arguments are known good: they load torch and transformers (seconds), bad input answers at once.
    from lensllm_bench.endtoend import SelectionFailed, check_same_plan, check_truth, run_task, write
    from lensllm_bench.generate import Budget

    check_same_plan(args.out, tables)
    models = [m["name"] for m in record["zoo"]]
    try:
        budget = Budget(**record["budget"])
    except TypeError as err:
        raise LensLLMError(f"{record_path}: not a generation record (budget: {err})") from None
    check_truth(list(tasks), models, tables, budget)
    strategy = e2e_strategy(args)
    path = args.out / "e2e" / "e2e.csv"
    for task in tasks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LawWarning)  # re-ranking fits every candidate's laws
            try:
                outcome = run_task(task, models, args.out, tables, budget, args.workers, strategy)
            except SelectionFailed as err:
                print(f"lensllm lensbench: error: {err}", file=sys.stderr)
                return err.code
        print(f"{task} ({strategy}): picked {outcome.picked} (RelAcc {100 * outcome.relacc:.1f}%), "
              f"compute {100 * outcome.compute_fraction:.1f}% of full fine-tuning", flush=True)
        if outcome.max_point_difference > 0:
            print(f"lensllm lensbench e2e: {task}: the selection's points differ from --tables {tables} by up to "
                  f"{outcome.max_point_difference:.3g} bits per byte: are they this zoo's?", file=sys.stderr)
        write([outcome], path)  # each task as it is scored: a later failure loses no finished selection
    print(f"written to {path}")
    return 0


def _generation_record(path: Path) -> dict:
    """generation.json, with what e2e reads from it."""
    try:
        record = json.loads(path.read_text())
        if not (isinstance(record["tasks"], list) and isinstance(record["zoo"], list) and isinstance(record["budget"], dict)):
            raise TypeError("tasks, zoo or budget of the wrong type")
    except (ValueError, KeyError, TypeError) as err:
        raise LensLLMError(f"{path}: not a generation record ({type(err).__name__}: {err})") from None
    return record


def _tables(paths: list[Path]):
    from lensllm_bench.loo import load_all

    return load_all(paths)


def run_loo(args: argparse.Namespace) -> int:
    _check_installed()
    from lensllm_bench.loo import describe, evaluate, markdown

    if len({path.stem for path in args.tables}) < 2:  # the draws of one task share its file name
        raise LensLLMError("loo leaves one task out: give tables of at least two tasks")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LawWarning)  # hundreds of fits; bounds are expected
        evaluation = evaluate(_tables(args.tables))
    sys.stdout.write(markdown(evaluation))
    chosen = evaluation.scores[evaluation.chosen]
    print(f"\nChosen on all tables (what `default` ships): {describe(evaluation.chosen)}; in sample: "
          + ", ".join(f"{t} {100 * s.pearcorr:.1f} / {100 * s.relacc:.1f}" for t, s in chosen.items()))
    return 0


def run_learned(args: argparse.Namespace) -> int:
    _check_installed()
    from lensllm_bench.learned import hold_out, markdown, seen_at_ratios

    tables = _tables(args.tables)
    tasks = list(dict.fromkeys(t.task for t in tables))
    if len(tasks) < 2:
        raise LensLLMError("learned leaves one task out: give tables of at least two tasks")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LawWarning)
        found = []
        for path, table in zip(args.tables, tables):
            with naming(path):  # a table too small or without zero-shot losses is found only here
                found += seen_at_ratios(table)
    sys.stdout.write(markdown([hold_out(found, task) for task in tasks]))
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    _check_installed()
    from lensllm_bench.calibrate import final_predictions, module_text

    predictions = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LawWarning)
        for path in args.tables:
            with naming(path):
                predictions += final_predictions(path)
    sys.stdout.write(module_text(args.tables, predictions))
    return 0


def run_ntk(args: argparse.Namespace) -> int:
    _check_installed()
    from lensllm_bench.ntk_answer import answer, markdown

    tables = _ntk_tables(args.tables)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LawWarning)
        sys.stdout.write(markdown([answer(t) for t in tables], seed=args.seed))
    return 0


def run_ntk_signal(args: argparse.Namespace) -> int:
    _check_installed()
    from lensllm_bench.ntk_signal import errors, markdown

    tables = _ntk_tables(args.tables)
    if len({t.task for t in tables}) < 2:
        raise LensLLMError("ntk-signal leaves one task out: give tables of at least two tasks")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LawWarning)
        sys.stdout.write(markdown([e for t in tables for e in errors(t)]))
    return 0


def _ntk_tables(paths: list[Path]):
    """The tables at `paths`, each with its NTK spectra (CURVES.ntk.json beside it)."""
    tables = _tables(paths)
    missing = [t.name for t in tables if t.curves.ntk is None]
    if missing:
        raise LensLLMError(f"no NTK spectra for {', '.join(missing)}: give LensBench tables (CURVES.ntk.json beside them)")
    return tables


def run_ceiling(args: argparse.Namespace) -> int:
    _check_installed()
    from lensllm_bench.ceiling import ceilings, markdown

    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LawWarning)
        for path, table in zip(args.tables, _tables(args.tables)):
            with naming(path):  # a table too small or without zero-shot losses is found only here
                results.append(ceilings(table))
    sys.stdout.write(markdown(results))
    return 0
