"""Turn benchmark rows and fit results into tables, CSV, JSON and Markdown."""

import csv
import io
import json
import math
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from lensllm.science.benchmark import BenchRow, summarize

BENCH_CSV_HEADER = ("method", "ratio", "max_n", "target_n", "pearcorr", "relacc", "selected")
FIT_CSV_HEADER = ("model", "predicted_loss", "rank")


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _csv(rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def bench_csv(rows: Sequence[BenchRow]) -> str:
    return _csv([BENCH_CSV_HEADER] + [[getattr(r, k) for k in BENCH_CSV_HEADER] for r in rows])


def bench_json(rows: Sequence[BenchRow]) -> str:
    return json_text({"rows": [r.as_dict() for r in rows], "means": summarize(rows)})


def json_text(doc: object) -> str:
    """`doc` as JSON, undefined numbers (a correlation over equal losses is NaN) as null: a bare NaN is not JSON."""
    return json.dumps(_defined(doc), indent=2, allow_nan=False)


def _defined(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _defined(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_defined(item) for item in value]
    return value


def _bench_grid(rows: Sequence[BenchRow]) -> tuple[list[int], list[str], dict]:
    ratios = list(dict.fromkeys(r.ratio for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    return ratios, methods, {(r.method, r.ratio): r for r in rows}


def bench_tables(rows: Sequence[BenchRow]) -> list[Table]:
    """Two rich tables (PearCorr, RelAcc in %), one row per method, a column per ratio and the mean."""
    ratios, methods, cell = _bench_grid(rows)
    means = summarize(rows)
    tables = []
    for metric, title in (("pearcorr", "PearCorr (%)"), ("relacc", "RelAcc (%)")):
        table = Table(title=f"{title} by budget ratio (target {rows[0].target_n:,})")
        table.add_column("method")
        for ratio in ratios:
            table.add_column(f"1/{ratio}", justify="right")
        table.add_column("mean", justify="right", style="bold")
        for method in methods:
            values = [_pct(getattr(cell[method, r], metric)) for r in ratios]
            table.add_row(method, *values, _pct(means[method][metric]))
        tables.append(table)
    return tables


def bench_markdown(rows: Sequence[BenchRow]) -> str:
    ratios, methods, cell = _bench_grid(rows)
    means = summarize(rows)
    out = []
    for metric, title in (("pearcorr", "PearCorr (%)"), ("relacc", "RelAcc (%)")):
        out.append(f"| {title} | " + " | ".join(f"1/{r}" for r in ratios) + " | mean |")
        out.append("|---" * (len(ratios) + 2) + "|")
        for method in methods:
            values = [_pct(getattr(cell[method, r], metric)) for r in ratios]
            out.append(f"| {method} | " + " | ".join(values) + f" | **{_pct(means[method][metric])}** |")
        out.append("")
    errors = [(m, [cell[m, r].extrapolation_error for r in ratios]) for m in methods]
    errors = [(m, e) for m, e in errors if e[0] is not None]
    if errors:
        out.append("| extrapolation error (%) | " + " | ".join(f"1/{r}" for r in ratios) + " |")
        out.append("|---" * (len(ratios) + 1) + "|")
        out.extend(f"| {m} | " + " | ".join(_pct(v) for v in e) + " |" for m, e in errors)
        out.append("")
    return "\n".join(out)


def print_tables(tables: Sequence[Table]) -> None:
    console = Console()
    for table in tables:
        console.print(table)


def fit_records(models, selection, sizes_seen: int, target: int) -> list[dict]:
    predicted = selection.predicted_loss
    ranks = selection.ranks
    return [
        {
            "model": model,
            "predicted_loss": None if predicted is None else float(predicted[i]),
            "rank": int(ranks[i]),
            "params": {} if selection.fits is None else selection.fits[i],
        }
        for i, model in enumerate(models)
    ]


def fit_csv(records: Sequence[dict]) -> str:
    return _csv([FIT_CSV_HEADER] + [[r["model"], _number(r["predicted_loss"]), r["rank"]] for r in records])


def _number(value: float | None) -> str:
    return "" if value is None else repr(value)


def fit_table(records: Sequence[dict], method: str, max_n: int, target: int) -> Table:
    table = Table(title=f"{method}: predicted loss at {target:,} examples from sizes <= {max_n:,}")
    table.add_column("rank", justify="right")
    table.add_column("model")
    table.add_column("predicted loss", justify="right")
    table.add_column("fitted parameters")
    for r in sorted(records, key=lambda rec: rec["rank"]):
        loss = "n/a" if r["predicted_loss"] is None else f"{r['predicted_loss']:.4f}"
        params = ", ".join(f"{k}={v:.4g}" for k, v in r["params"].items())
        table.add_row(str(r["rank"]), r["model"], loss, params)
    return table
