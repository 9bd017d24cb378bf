"""`lensllm plan SELECTION.yaml`: every candidate's memory plan, before anything is applied or loaded.

Reads each candidate's config (no weights) and prints what its trial would hold on the
device in each phase, and the micro-batch, checkpointing and NTK method chosen to fit.
`lensllm run-trial --plan-only` prints the same for one trial spec.
"""

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lensllm.errors import LensLLMError
from lensllm.trial.failures import TrialFailure
from lensllm.trial.memory import GIB, MemoryPlan
from lensllm.trial.spec import TrialSpec


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="show the memory plan of every candidate of a selection (what fits on the GPU, and how)",
        description="Plan each candidate's trial from its config alone: peak memory of training, evaluation "
        "and the NTK, and the micro-batch, gradient checkpointing and NTK method that make it fit. Exit 2 when "
        "some candidate cannot be planned (its model not found, a config not understood), else 1 when some "
        "candidate will not fit.",
    )
    p.add_argument("selection", type=Path, metavar="SELECTION.yaml", help="an LLMSelection manifest")
    add_device_arguments(p)
    p.set_defaults(run=run)


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpu-memory", metavar="SIZE", help="device memory to plan for, e.g. 80Gi (default: the GPU nvidia-smi lists)"
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")


def run(args: argparse.Namespace) -> int:
    from lensllm.selection.manifest import read_manifest
    from lensllm.trial.model_files import plan_spec, planning_device

    manifest = read_manifest(args.selection)
    device, note = planning_device("auto", args.gpu_memory)
    rows: list[tuple[str, MemoryPlan | str]] = []
    for candidate in manifest.spec.candidates:
        spec = _beside(manifest.spec.trial_spec(candidate.name, manifest.spec.budget.sizes), manifest.folder)
        try:
            rows.append((candidate.name, plan_spec(spec, device)))
        except (TrialFailure, LensLLMError) as err:
            rows.append((candidate.name, str(err)))
    show(rows, args.format, note)
    errors = [(name, p) for name, p in rows if isinstance(p, str)]
    for name, error in errors:  # the others' plans are still shown: one bad candidate need not hide them
        print(f"lensllm plan: error: candidate {name}: {error}", file=sys.stderr)
    if errors:
        return 2
    return 0 if all(p.fits for _, p in rows) else 1


def _beside(spec: TrialSpec, folder: Path) -> TrialSpec:
    """A relative model path is read from the manifest's folder, as `select --local` does."""
    beside = folder / spec.candidate.model
    if Path(spec.candidate.model).is_absolute() or not beside.exists():
        return spec
    return spec.model_copy(update={"candidate": spec.candidate.model_copy(update={"model": str(beside.resolve())})})


def show(rows: list[tuple[str, MemoryPlan | str]], fmt: str, note: str | None) -> None:
    if fmt == "json":
        print(json.dumps({name: _as_json(p) for name, p in rows}, indent=2))
        return
    console = Console()
    console.width = max(console.width, 132)  # pipes and CI logs get 80 columns otherwise
    console.print(plan_table(rows))
    if len(rows) == 1 and isinstance(rows[0][1], MemoryPlan):
        console.print(parts_table(rows[0][1]))
    if note:
        console.print(f"note: {note}", style="yellow")


def _as_json(plan: MemoryPlan | str) -> dict:
    return plan.model_dump(mode="json", by_alias=True) if isinstance(plan, MemoryPlan) else {"error": plan}


def plan_table(rows: list[tuple[str, MemoryPlan | str]]) -> Table:
    """One row per candidate: sizes, the chosen settings, the peak of each phase and what a GPU trial holds on the
    host beyond the process (GiB)."""
    capacity = next((p.capacity_bytes for _, p in rows if isinstance(p, MemoryPlan)), 0)
    table = Table(title=f"Memory plan (GiB of {capacity / GIB:.1f} usable)")
    for column in ("candidate", "params", "trainable", "micro x accum", "ckpt", "eval tokens", "NTK"):
        table.add_column(column, justify="left" if column in ("candidate", "NTK") else "right", no_wrap=True)
    for column in ("train", "eval", "ntk", "host", "fits"):
        table.add_column(column, justify="right")
    for name, plan in rows:
        if isinstance(plan, str):
            table.add_row(name, *[""] * 10, "[red]error[/red]")
            continue
        peaks = {p.name: f"{p.bytes / GIB:.1f}" for p in plan.phases}
        ntk = f"{plan.ntk_scope}/{plan.ntk_method}" if plan.ntk_method else "off"
        table.add_row(
            name,
            _count(plan.parameters),
            _count(plan.trainable_parameters),
            f"{plan.micro_batch_size} x {plan.gradient_accumulation}",
            "on" if plan.gradient_checkpointing else "off",
            str(plan.eval_batch_tokens),
            ntk,
            peaks.get("train", ""),
            peaks.get("evaluate", ""),
            peaks.get("ntk", ""),
            f"{plan.host_bytes / GIB:.1f}" if plan.host_bytes else "",
            "[green]yes[/green]" if plan.fits else "[red]WillNotFit[/red]",
        )
    return table


def parts_table(plan: MemoryPlan) -> Table:
    """What each phase's peak is made of (GiB)."""
    table = Table(title="Peak by part (GiB)")
    table.add_column("phase")
    kinds = list(dict.fromkeys(k for p in plan.phases for k, size in p.parts.items() if size))
    for kind in kinds:
        table.add_column(kind, justify="right")
    for phase in plan.phases:
        table.add_row(phase.name, *[f"{phase.parts.get(k, 0) / GIB:.2f}" for k in kinds])
    return table


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
