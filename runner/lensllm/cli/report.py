"""`lensllm report SELECTION.json|-`: the ranking table and curve plot of a finished selection; for a race,
its rounds and what it spent against a fixed budget and full fine-tuning.

Reads the whole resource, from a cluster (`kubectl get llmsel NAME -o json | lensllm report -`)
or from local mode (`lensllm-out/<name>/selection.json`). `lensllm select` prints the same table.
"""

import argparse
import sys
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lensllm.cli.race_render import law_leaders_text
from lensllm.errors import LensLLMError
from lensllm.science.curves import learns_from_scratch


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="ranking table and curve plot of a selection (a resource with its status)")
    p.add_argument("selection", type=Path, metavar="SELECTION.json|-", help="the LLMSelection with its status, or - for stdin")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="every candidate's curve and fit, log-log")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from lensllm.cli.options import check_plot_path
    from lensllm.selection.manifest import load_document, parse_manifest
    from lensllm.selection.status import LLMSelectionStatus
    from lensllm.trial.spec import validation_message

    check_plot_path(args.plot)
    doc = load_document(args.selection, stdin_text=sys.stdin.read() if str(args.selection) == "-" else None)
    manifest = parse_manifest(doc, args.selection, started=True)
    try:
        status = LLMSelectionStatus.model_validate(doc.get("status") or {})
    except ValidationError as err:
        raise LensLLMError(f"{args.selection}: {validation_message(err, 'status')}") from None
    if status.phase == "Pending" and not status.candidates:
        raise LensLLMError(f"{args.selection}: the selection has no status yet")
    print_tables(status, manifest.spec.budget.target_size)
    if args.plot is not None:
        plot_selection(status, manifest.spec, args.plot)
    return 0


def print_tables(status, target: int) -> None:
    """The ranking, and for a race its rounds and compute; `lensllm select` prints the same."""
    console = Console()
    console.print(ranking_table(status, target))
    if status.race is not None:
        console.print(rounds_table(status))


def ranking_table(status, target: int) -> Table:
    table = Table(title=f"{status.phase}: predicted bits per byte at {target:,} examples ({status.method})")
    race = status.race is not None
    columns = [("rank", "right"), ("candidate", "left"), ("predicted", "right"), ("observed (largest)", "right"),
               ("zero-shot", "right"), ("state", "left")]
    if race:
        columns[3:3] = [("interval (nominal 90%)", "right"), ("P(best)", "right")]
    for column, justify in columns:
        table.add_column(column, justify=justify)
    order = sorted(status.candidates.items(), key=lambda kv: (kv[1].rank is None, kv[1].rank or 0, kv[0]))
    for name, entry in order:
        cells = [
            str(entry.rank or "-"),
            name,
            f"{entry.predicted_loss:.4f}" if entry.predicted_loss is not None else "-",
            f"{entry.points[-1].bits_per_byte:.4f}" if entry.points else "-",
            _zero_shot(entry),
            _state(entry),
        ]
        if race:
            interval = f"{entry.interval[0]:.4f}-{entry.interval[1]:.4f}" if entry.interval else "-"
            cells[3:3] = [interval, f"{entry.p_best:.3f}" if entry.p_best is not None else "-"]
        table.add_row(*cells)
    in_train = max((entry.test_rows_in_train or 0 for entry in status.candidates.values()), default=0)
    captions = [f"{in_train} rows of the test split are rows of the training split too: the test losses leave them "
                "out"] if in_train else []
    captions += [f"{name} fine-tuned on {target:,} examples, saved in {entry.fine_tuned_model}"
                 for name, entry in order if entry.fine_tuned_model]
    table.caption = "\n".join(captions) or None
    return table


def _zero_shot(entry) -> str:
    """The zero-shot bits per byte, marked when it is no better than a uniform guess (the race's from-scratch rule)."""
    if entry.zero_shot is None:
        return "-"
    cell = f"{entry.zero_shot.bits_per_byte:.4f}"
    if learns_from_scratch(entry.zero_shot.bits_per_byte, entry.zero_shot.uniform_bits_per_byte):
        cell += " (from scratch)"
    return cell


def _state(entry) -> str:
    if entry.state == "Failed":
        return f"Failed: {entry.reason}"
    if entry.eliminated_in is not None:
        return f"out in round {entry.eliminated_in} (lower confidence)"
    return entry.state


def rounds_table(status) -> Table:
    """Each round of a race: who ran which sizes, the law, each law's leader, who left, and the compute spent after it;
    the caption says why the race failed, that its laws disagree on the best, and who learns the task from scratch."""
    race = status.race
    title = (f"race: {len(race.rounds)} rounds, stopped: {race.stop or 'not yet'}; compute {race.compute_fraction:.2%} of full "
             f"fine-tuning (a fixed budget over the same sizes: {race.fixed_budget_fraction:.2%})")
    table = Table(title=title)
    for column, justify in (("round", "right"), ("ran", "left"), ("law", "left"), ("best by law", "left"),
                            ("eliminated", "left"), ("compute", "right"), ("stop", "left")):
        table.add_column(column, justify=justify)
    for record in race.rounds:
        ran = "; ".join(_ran(record.sizes))
        table.add_row(str(record.round), ran, record.law, law_leaders_text(record.law_leaders),
                      ", ".join(e.candidate for e in record.eliminated) or "-", f"{record.compute_fraction:.2%}", _stop(record))
    caveats = [race.message, *(c.message for c in status.conditions if c.type == "LawsAgree" and c.status == "False")]
    if race.rounds and race.rounds[0].from_scratch:
        caveats.append(f"learn the task from scratch (predicted by their worst law): {', '.join(race.rounds[0].from_scratch)}")
    if any(caveats):
        table.caption = "\n".join(c for c in caveats if c)
    return table


def _stop(record) -> str:
    """Why the race stopped after the round; for a round it would have stopped after but settles, both."""
    if record.settles_instead_of:
        return f"{record.settles_instead_of}, laws disagree: settle on the target"
    return record.stop or "-"


def _ran(sizes: dict[str, list[int]]) -> list[str]:
    """'16,32,64,128: 3 candidates' per distinct set of sizes; the candidate's name when it ran alone."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, ran in sizes.items():
        groups.setdefault(tuple(ran), []).append(name)
    return [f"{','.join(map(str, ran))}: {names[0] if len(names) == 1 else f'{len(names)} candidates'}"
            for ran, names in groups.items()]


def plot_selection(status, spec, path: Path) -> None:
    """Observed points and the ranking method's fitted curves of the succeeded candidates; for a race, every
    point each candidate measured and the law its last round fitted."""
    from lensllm.cli.plots import plot_fits, plot_race_fits
    from lensllm.science.laws import LawWarning
    from lensllm.science.selectors import select
    from lensllm.selection.status import selection_curves

    if not status.ranking:
        raise LensLLMError("no candidate succeeded: nothing to plot")
    if status.race is not None:
        rows = race_curves(status)
        if not rows:
            raise LensLLMError("no candidate of the race has a decided round: nothing to plot")
        plot_race_fits(rows, spec.budget.target_size, path)
        return
    curves, spectra = selection_curves(status)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LawWarning)
        selection = select(spec.method, curves, spec.budget.target_size, ntk=spectra)
    plot_fits(curves, curves, selection, spec.budget.target_size, path, ylabel="test bits per byte")


def race_curves(status) -> list:
    """What a race plot shows of every candidate the race assessed (`lensllm.cli.plots.RaceCurve`)."""
    import numpy as np

    from lensllm.cli.plots import RaceCurve
    from lensllm.science.uncertainty import fit_law
    from lensllm.selection.status import race_candidates

    rounds = status.race.rounds
    rows = []
    for candidate in race_candidates(status):
        entry = status.candidates[candidate.name]
        decided = [r for r in rounds if candidate.name in r.sizes]
        if not decided or entry.predicted_loss is None:
            continue  # failed before a round assessed it
        law = decided[-1].law
        fit = fit_law(candidate.curve(), law)
        rows.append(RaceCurve(
            name=candidate.name, sizes=np.asarray(candidate.sizes, float), losses=np.asarray(candidate.losses),
            law=law,
            curve=fit.loss_at,
            predicted_loss=entry.predicted_loss, interval=tuple(entry.interval) if entry.interval else None,
            eliminated_in=entry.eliminated_in,
        ))
    return rows
