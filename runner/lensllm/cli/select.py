"""`lensllm select SELECTION.yaml --local`: run a selection on this machine, no cluster needed."""

import argparse
import sys
import warnings
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lensllm.cli.report import plot_selection, print_tables
from lensllm.errors import LensLLMError
from lensllm.output_paths import check_folder


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select",
        help="run an LLMSelection manifest locally (--local) and rank its candidates",
        description="Run every candidate's trial as a local runner process, then rank them exactly as the "
        "operator would. Writes status.json (the resource's .status), selection.json (the whole resource, "
        "for `lensllm report`), per-trial results and curves.png.",
    )
    p.add_argument("selection", type=Path, metavar="SELECTION.yaml", help="an LLMSelection manifest")
    p.add_argument("--local", action="store_true", required=True, help="run here instead of on a cluster")
    p.add_argument("--workers", type=int, default=1,
                   help="trials to run at once (default 1); each computes on cores/N threads unless OMP_NUM_THREADS is "
                   "set, on its own GPU (CUDA_VISIBLE_DEVICES) or its share of one, and plans for that share of GPU "
                   "memory or, without a GPU, of the host's")
    p.add_argument("--out", type=Path, help="output folder (default lensllm-out/<selection name>); a run cut short "
                   "there resumes: its trials keep the sizes they finished")
    p.add_argument("--fresh", action="store_true",
                   help="measure every size anew, even those a run cut short left in --out (e.g. after the model "
                   "files changed)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lensllm.local import LocalRun, run_local
    from lensllm.science.laws import LawWarning
    from lensllm.selection.manifest import read_manifest

    # A fit on its bound is normal for short, flat curves; the ranking table says what matters.
    warnings.simplefilter("ignore", LawWarning)

    if args.workers < 1:
        raise LensLLMError(f"--workers must be >= 1, got {args.workers}")
    manifest = read_manifest(args.selection)
    if manifest.spec.suspend:
        raise LensLLMError(f"{args.selection}: spec.suspend is true: a suspended selection runs no trials; set it to "
                           "false to run it")
    out = args.out or Path("lensllm-out") / manifest.name
    check_folder(out, "--out")
    console = Console(stderr=True)
    # One step per subset size: a race's later rounds measure the zero-shot loss again, so it is not counted.
    steps = len(manifest.spec.budget.sizes)
    with Progress(
        TextColumn("{task.fields[candidate]:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as bars:
        tasks = {c.name: bars.add_task("pending", total=steps, candidate=c.name) for c in manifest.spec.candidates}

        def progress(candidate: str, event: dict) -> None:
            bars.update(tasks[candidate], description=_describe(event), advance=_advance(event))

        try:
            status = run_local(LocalRun(manifest=manifest, out=out, workers=args.workers, fresh=args.fresh), progress)
        except KeyboardInterrupt:
            print(f"lensllm select: interrupted; the sizes each trial finished are kept in {out / 'trials'}: "
                  "the same command again resumes them", file=sys.stderr)
            return 130
    print_tables(status, manifest.spec.budget.target_size)
    plot = ""
    if status.ranking:
        plot_selection(status, manifest.spec, out / "curves.png")
        plot = f"  plot: {out / 'curves.png'}"
    print(f"status: {out / 'status.json'}  resource: {out / 'selection.json'}{plot}", file=sys.stderr)
    return 0 if status.phase == "Complete" else 1


def _advance(event: dict) -> int:
    if event.get("event") == "resumed":
        return len(event.get("sizes", []))
    return 1 if event.get("event") == "size" else 0


def _describe(event: dict) -> str:
    kind = event.get("event", "")
    if kind == "size":
        return f"size {event.get('size')}: loss {event.get('test', {}).get('loss', float('nan')):.3f}"
    if kind == "resumed":
        return f"kept sizes {', '.join(str(size) for size in event.get('sizes', []))} from an earlier run"
    if kind == "testRowsInTrain":
        return f"left out {event.get('rows')} test rows the training split holds too"
    if kind == "notRun":
        return "not run: another trial found the dataset unusable"
    if kind == "zeroShot":
        return f"zero-shot loss {event.get('loss', float('nan')):.3f}"
    return str(kind)
