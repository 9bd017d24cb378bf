"""`lensllm lensbench`: generate the LensBench tables (models, tasks and curves measured by the runner).

The benchmark lives in its own package, `lensllm_bench`, which the product never imports:
this module loads it only when the subcommand runs.
"""

import argparse
import os
import sys
from pathlib import Path

from lensllm.cli import options
from lensllm.errors import LensLLMError


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
    gen.add_argument("--seed", type=int, default=0, help="seed of tasks, zoo and measurements (default 0)")
    gen.add_argument("--tasks", type=_task_list, help="comma-separated built-in task names or dataset folders")
    gen.add_argument("--quick", action="store_true", help="a miniature: 3 models, 2 offline tasks, tiny sizes")
    gen.add_argument("--workers", type=options.positive_int, default=1, help="worker processes (default 1)")
    gen.add_argument("--debs", type=Path, help="cache of Debian packages (default OUT/debs)")
    gen.set_defaults(run=run_generate)


def _task_list(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one task")
    return names


def run_generate(args: argparse.Namespace) -> int:
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    from lensllm_bench.generate import Settings, default_tasks, generate
    from lensllm_bench.tasks import BUILT_IN

    tasks = args.tasks or default_tasks(args.quick)
    for name in tasks:
        if name not in BUILT_IN and not Path(name).is_dir():
            raise LensLLMError(f"--tasks: {name!r} is neither a built-in task ({', '.join(BUILT_IN)}) nor a folder")
    settings = Settings(
        out=args.out, seed=args.seed, tasks=tasks, quick=args.quick, workers=args.workers,
        debs=args.debs or args.out / "debs",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    record = generate(settings, log=lambda line: print(line, flush=True))
    if record["failed_units"]:
        print(f"lensllm lensbench: {len(record['failed_units'])} units failed; see {args.out / 'generation.json'}", file=sys.stderr)
        return 1
    print(f"done in {record['wall_seconds']:.0f} s wall, {record['cpu_seconds_this_run']:.0f} CPU-s")
    return 0
