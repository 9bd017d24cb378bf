"""Read curves tables (CSV): a model column, one loss column per subset size.

Format: the first column names the model (any header), then columns named by subset
size (`0` = zero-shot, then 200, 400, ...), and optionally `size` (parameter count) and
`family`. A LensBench table has a JSON file beside it (`TABLE.ntk.json`, see
`NTK_FORMAT`) with the ground-truth size and every model's NTK spectrum; the curves then
carry both. Every problem raises `CurvesFileError` naming the file, row, column or field.
"""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from lensllm.errors import CurveError, CurvesFileError
from lensllm.science.curves import Curves
from lensllm.science.laws import NTKSpectrum

OPTIONAL_COLUMNS = ("size", "family", "uniform")
# {"format": NTK_FORMAT, "target": N, "metric": ..., "models": {model: {"eta", "eigenvalues", "projectionsSq", ...}}}
NTK_FORMAT = "lensbench-ntk/1"
NTK_SUFFIX = ".ntk.json"


def read_curves(path: str | Path, *, stdin_text: str | None = None) -> Curves:
    """Parse a curves CSV from `path` (or from `stdin_text` when path is '-')."""
    name = "<stdin>" if str(path) == "-" else str(path)
    text = stdin_text if str(path) == "-" else _read_text(Path(path))
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        raise CurvesFileError(f"{name}: file is empty")
    header, body = [cell.strip() for cell in rows[0]], rows[1:]
    if not body:
        raise CurvesFileError(f"{name}: no model rows after the header")
    size_cols = _size_columns(name, header)
    models = [_model_name(name, i, row) for i, row in enumerate(body, start=2)]
    _check_unique(name, models)
    losses = np.array(
        [[_number(name, i, row, j, header[j]) for j in size_cols] for i, row in enumerate(body, start=2)]
    )
    sizes = np.array([float(header[j]) for j in size_cols])
    beside = None if str(path) == "-" else _ntk_path(Path(path))
    target, ntk = _read_ntk(beside, models) if beside is not None and beside.exists() else (None, None)
    try:
        return Curves(
            models=tuple(models),
            sizes=sizes[sizes > 0],
            losses=losses[:, sizes > 0],
            zero_shot=losses[:, 0] if sizes[0] == 0 else None,
            params=_optional_numbers(name, header, body, "size"),
            families=_optional_text(header, body, "family"),
            ntk=ntk,
            target_size=target,
            uniform=_optional_numbers(name, header, body, "uniform"),
        )
    except CurveError as err:
        raise CurvesFileError(f"{beside if target is not None else name}: {err}") from None


def _ntk_path(path: Path) -> Path:
    return path.with_name(path.stem + NTK_SUFFIX)


def _read_ntk(path: Path, models: list[str]) -> tuple[float, tuple[NTKSpectrum, ...]]:
    """The ground-truth size and the spectrum of every model, from a LensBench NTK file."""
    try:
        doc = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise CurvesFileError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != NTK_FORMAT:
        raise CurvesFileError(f"{path}: field 'format' must be {NTK_FORMAT!r}")
    target, entries = doc.get("target"), doc.get("models")
    if not isinstance(target, int) or isinstance(target, bool) or target <= 0:
        raise CurvesFileError(f"{path}: field 'target' must be a positive integer, got {target!r}")
    if not isinstance(entries, dict):
        raise CurvesFileError(f"{path}: field 'models' must map model names to NTK summaries")
    spectra = []
    for model in models:
        if model not in entries:
            raise CurvesFileError(f"{path}: no NTK summary for model {model!r}")
        spectra.append(_spectrum(path, model, entries[model]))
    return float(target), tuple(spectra)


def _spectrum(path: Path, model: str, entry: object) -> NTKSpectrum:
    try:
        return NTKSpectrum(
            eigenvalues=np.asarray(entry["eigenvalues"], dtype=float),
            projections_sq=np.asarray(entry["projectionsSq"], dtype=float),
            eta=float(entry["eta"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CurvesFileError(f"{path}: model {model!r}: NTK summary needs eigenvalues, projectionsSq and eta ({err})") from None
    except CurveError as err:
        raise CurvesFileError(f"{path}: model {model!r}: {err}") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CurvesFileError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise CurvesFileError(f"{path}: cannot read ({type(err).__name__})") from None


def _size_columns(name: str, header: list[str]) -> list[int]:
    if not header or _is_number(header[0]):
        raise CurvesFileError(f"{name}: the first column must name the model (header is {header[:3]}...)")
    cols, seen = [], set()
    for j, cell in enumerate(header[1:], start=1):
        if cell in OPTIONAL_COLUMNS:
            continue
        if not _is_number(cell) or float(cell) < 0 or not float(cell).is_integer():
            raise CurvesFileError(f"{name}: column {cell!r} is neither a subset size nor one of {OPTIONAL_COLUMNS}")
        if cell in seen:
            raise CurvesFileError(f"{name}: column {cell!r} appears twice")
        seen.add(cell)
        cols.append(j)
    sizes = [float(header[j]) for j in cols]
    if len(sizes) == 0:
        raise CurvesFileError(f"{name}: no subset-size columns (expected headers like 0,200,400,...)")
    for a, b in zip(sizes, sizes[1:]):
        if b <= a:
            raise CurvesFileError(f"{name}: size columns must increase left to right, but {b:g} follows {a:g}")
    if sizes == [0.0]:
        raise CurvesFileError(f"{name}: only a zero-shot column; need at least one subset size > 0")
    return cols


def _model_name(name: str, line: int, row: list[str]) -> str:
    model = row[0].strip() if row else ""
    if not model:
        raise CurvesFileError(f"{name}: row {line} has an empty model name")
    return model


def _check_unique(name: str, models: list[str]) -> None:
    first_row: dict[str, int] = {}
    for line, model in enumerate(models, start=2):
        if model in first_row:
            raise CurvesFileError(f"{name}: model {model!r} appears in rows {first_row[model]} and {line}")
        first_row[model] = line


def _cell(name: str, line: int, row: list[str], j: int, column: str) -> str:
    if j >= len(row) or not row[j].strip():
        raise CurvesFileError(f"{name}: row {line} ({row[0].strip()}) has no value in column {column!r}")
    return row[j].strip()


def _number(name: str, line: int, row: list[str], j: int, column: str) -> float:
    cell = _cell(name, line, row, j, column)
    where = f"{name}: row {line} ({row[0].strip()}), column {column!r}"
    if not _is_number(cell):
        raise CurvesFileError(f"{where}: {cell!r} is not a number")
    value = float(cell)
    if not math.isfinite(value):
        raise CurvesFileError(f"{where}: {cell!r} is not finite")
    if value <= 0:
        raise CurvesFileError(f"{where}: {cell} must be positive")
    return value


def _optional_numbers(name: str, header: list[str], body: list[list[str]], column: str) -> np.ndarray | None:
    if column not in header:
        return None
    j = header.index(column)
    return np.array([_number(name, i, row, j, column) for i, row in enumerate(body, start=2)])


def _optional_text(header: list[str], body: list[list[str]], column: str) -> tuple[str, ...] | None:
    if column not in header:
        return None
    j = header.index(column)
    return tuple(row[j].strip() if j < len(row) else "" for row in body)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
