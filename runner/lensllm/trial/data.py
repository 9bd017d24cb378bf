"""Dataset loading and the seeded, nested draw of training subsets.

The recipe calls `load_task_rows` once; it returns plain Python rows for the largest subset
(the smaller subsets and the NTK probe are prefixes of it, so subsets are nested by
construction) and for the test sample. `datasets.load_dataset` does all file parsing:
local files go through its packaged json/csv/parquet/text builders.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, load_dataset
from datasets.exceptions import DatasetGenerationError

from lensllm.trial.failures import (
    BudgetExceedsDataset,
    DatasetFieldMissing,
    DatasetNotFound,
    SplitNotHeldOut,
    first_line,
)
from lensllm.trial.spec import DatasetSpec

# Rows of the training split whose normalised text the held-out check holds at once.
TRAIN_SLICE_ROWS = 1 << 16
# File suffix -> packaged `datasets` builder.
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".text": "text"}


@dataclass(frozen=True)
class Row:
    """One example as text: the prompt (empty for language modelling) and the scored text."""

    prompt: str | None
    scored: str


@dataclass(frozen=True)
class TaskRows:
    """Training rows in the seeded order (size n = the first n) and the test sample, drawn from the rows of the
    test split that the training split does not hold too."""

    train: list[Row]
    test: list[Row]
    train_split_size: int
    test_rows_in_train: int


def load_task_rows(spec: DatasetSpec, *, need_train: int, seed: int) -> TaskRows:
    """Rows for the first `need_train` examples of the seeded training order and the test sample."""
    train = _load_split(spec, spec.train_split, "trainSplit")
    test = _load_split(spec, spec.test_split, "testSplit")
    for split, name in ((train, spec.train_split), (test, spec.test_split)):
        _check_fields(spec, split, name)
    if need_train > len(train):
        raise BudgetExceedsDataset(
            f"subsetSizes/ntk.probeSize need {need_train} training examples, "
            f"split {spec.train_split!r} has {len(train)}"
        )
    if len(test) == 0:
        raise DatasetNotFound(f"dataset.testSplit {spec.test_split!r} is empty")
    order = np.random.default_rng(seed).permutation(len(train))[:need_train]
    in_train = _rows_also_in(spec, test, train)
    if in_train.all():
        raise SplitNotHeldOut(
            f"all {len(test)} rows of dataset.testSplit {spec.test_split!r} are rows of dataset.trainSplit "
            f"{spec.train_split!r} too: the test loss would measure memorising; give a held-out split"
        )
    # A separate stream for the test sample, so changing the budget never changes the test set.
    test_order = np.random.default_rng([seed, 1]).permutation(len(test))
    test_order = np.sort(test_order[~in_train[test_order]][: spec.max_test_examples])
    test_rows = _rows(spec, test, test_order, spec.test_split)
    if not any(row.scored for row in test_rows):
        # Bits per byte over zero bytes: any number the trial reported would be noise.
        key, column = spec.scored_field
        raise DatasetFieldMissing(f"dataset.{key} {column!r}: all {len(test_rows)} test rows drawn from split "
                                  f"{spec.test_split!r} are empty: there is no text to score")
    return TaskRows(train=_rows(spec, train, order, spec.train_split), test=test_rows, train_split_size=len(train),
                    test_rows_in_train=int(in_train.sum()))


def _rows_also_in(spec: DatasetSpec, test: Dataset, train: Dataset) -> np.ndarray:
    """A mask over `test`: the rows whose every field the spec reads equals that of some row of `train`, up to
    whitespace.

    Overlapping slices of one split (train[:90%] and train[80%:]) and duplicated rows both end up here, and so do
    copies that differ only in spacing or line breaks (a scrape's trailing newline): a test loss on them would
    reward memorising. Case is kept apart, since it can be what a task is about. All in Arrow, no Python objects
    per row: a semi-join on the fields (a null matches nothing), after dropping the rows of either side with a
    field value the other side lacks. The training split is read in slices, so that its text is never copied
    whole (a million rows of 360 MiB took 1.6 GiB more memory at once, and 13.5 s where they now take 1.7 s).
    """
    fields = [spec.text_field] if spec.is_text else [spec.input_field, spec.target_field]
    test_table = _normalized(test, fields, 0, len(test)).append_column("row", pa.array(np.arange(len(test))))
    keys = test_table.column_names[:-1]
    in_test = {k: pc.unique(test_table[k]) for k in keys}
    train_table = pa.concat_tables(
        part.filter(_values_in(part, in_test))
        for start in range(0, max(len(train), 1), TRAIN_SLICE_ROWS)
        for part in [_normalized(train, fields, start, TRAIN_SLICE_ROWS)]
    )
    in_train = {k: pc.unique(train_table[k]) for k in keys}
    shared = test_table.filter(_values_in(test_table, in_train)).join(train_table, keys, join_type="left semi", use_threads=False)
    mask = np.zeros(len(test), dtype=bool)
    mask[shared.column("row").to_numpy()] = True
    return mask


def _values_in(table: pa.Table, value_sets: dict[str, pa.Array]) -> pa.ChunkedArray:
    """Rows of `table` whose every key value is in that key's set."""
    return functools.reduce(pc.and_, (pc.is_in(table[k], value_set=values, skip_nulls=True) for k, values in value_sets.items()))


def _normalized(split: Dataset, fields: list[str], start: int, rows: int) -> pa.Table:
    """`rows` rows of the fields from `start` on, as text with whitespace runs made one space and ends trimmed."""
    return pa.table({f"field{i}": _as_text(split.data.column(f).slice(start, rows)) for i, f in enumerate(fields)})


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as Arrow text with its whitespace runs made one space and its ends trimmed; all nulls when its
    values are not text or numbers (those rows are refused when drawn, and cannot equal a text)."""
    try:
        text = pc.cast(column, pa.large_string()).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.chunked_array([pa.nulls(len(column), pa.large_string())])
    # The rewrite is slow (7 s per million rows of 360 bytes), and most rows need none: finding those that do (two
    # whitespace characters in a row, one other than a plain space, or ends to trim) is 15 times cheaper.
    trimmed = pc.utf8_trim_whitespace(text)
    spaced = pc.match_substring_regex(text, r"[\s\p{Z}]{2}|[^ \P{Z}]|[\t\n\f\r]")
    rewrite = pc.or_(spaced, pc.not_equal(pc.binary_length(trimmed), pc.binary_length(text))).fill_null(False)
    rewritten = pc.utf8_trim_whitespace(pc.replace_substring_regex(text.filter(rewrite), r"[\s\p{Z}]+", " "))
    return pa.chunked_array([pc.replace_with_mask(trimmed, rewrite, rewritten)])


def _load_split(spec: DatasetSpec, split: str, key: str) -> Dataset:
    try:
        return load_dataset(**_load_arguments(spec), split=split)
    except ValueError as err:  # an unknown or malformed split, a missing or unknown config
        if "split" in str(err).lower():
            raise DatasetNotFound(f"dataset.{key} {split!r}: {first_line(err)}") from None
        raise DatasetNotFound(f"dataset.source {spec.source!r} (config {spec.config!r}): {first_line(err)}") from None
    except DatasetGenerationError as err:  # unparsable data: the reason is in what it wraps
        raise DatasetNotFound(f"dataset.source {spec.source!r}: {first_line(err.__cause__ or err)}") from None
    except OSError as err:  # missing file, unreachable hub
        raise DatasetNotFound(f"dataset.source {spec.source!r}: {first_line(err)}") from None
    except StopIteration:  # datasets' json builder reads a first record from the first file, and finds none
        raise DatasetNotFound(f"dataset.source {spec.source!r}: {_empty_files(spec.source)} no record") from None


def _empty_files(source: str) -> str:
    """Which of a local source's data files are empty, as a phrase ("train.jsonl has"); "a data file has" else."""
    path = Path(source).expanduser()
    files = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
    empty = [f for f in files if f.suffix.lower() in BUILDERS and f.is_file() and f.stat().st_size == 0]
    if not empty:
        return "a data file has"
    names = ", ".join(str(f.relative_to(path)) if path.is_dir() else f.name for f in empty)
    return f"{names} {'has' if len(empty) == 1 else 'have'}"


def _load_arguments(spec: DatasetSpec) -> dict[str, object]:
    path = Path(spec.source).expanduser()
    if path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DatasetNotFound(
                f"dataset.source {spec.source!r}: unknown file type; use one of {', '.join(BUILDERS)}"
            )
        return {"path": builder, "data_files": str(path)}
    if path.is_dir():
        return {"path": str(path)}
    if path.is_absolute() or path.suffix.lower() in BUILDERS or spec.source.startswith("."):
        raise DatasetNotFound(f"dataset.source {spec.source!r}: no such file or directory")
    return {"path": spec.source, "name": spec.config, "revision": spec.revision}


def _check_fields(spec: DatasetSpec, split: Dataset, name: str) -> None:
    wanted = {"textField": spec.text_field, "inputField": spec.input_field, "targetField": spec.target_field}
    for key, column in wanted.items():
        if column is not None and column not in split.column_names:
            raise DatasetFieldMissing(
                f"dataset.{key} {column!r} is not a column of split {name!r} (columns: {', '.join(split.column_names)})"
            )


def _rows(spec: DatasetSpec, split: Dataset, indices: np.ndarray, name: str) -> list[Row]:
    """The rows at `indices` of `split` as text."""
    drawn = split.select(indices)
    if spec.is_text:
        return [Row(prompt=None, scored=text) for text in _texts(drawn, "textField", spec.text_field, indices, name)]
    inputs = _texts(drawn, "inputField", spec.input_field, indices, name)
    prompts = [spec.prompt_template.replace("{input}", x) for x in inputs]
    return [Row(prompt=p, scored=t) for p, t in zip(prompts, _texts(drawn, "targetField", spec.target_field, indices, name))]


def _texts(drawn: Dataset, key: str, column: str, indices: np.ndarray, name: str) -> list[str]:
    """A column's values as text; numbers are written out, a null (a JSON line without the field, say) or a nested
    value is refused: written out, it would be trained on and scored as the text "None" or "{...}"."""
    values = drawn[column]
    for index, value in zip(indices, values):
        if value is None or isinstance(value, (dict, list)):
            what = "no value (null or missing)" if value is None else f"a {type(value).__name__}, not text"
            raise DatasetFieldMissing(f"dataset.{key} {column!r}: row {index} (from 0) of split {name!r} has {what}")
    return [str(value) for value in values]
