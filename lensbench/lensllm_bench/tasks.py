"""LensBench tasks: input/target datasets in the runner's format, and text related to each.

A task is a folder with `train.jsonl` (the full training set: its size is the target size
whose loss is the ground truth) and `test.jsonl`, rows `{"input": ..., "target": ...}`,
exactly what `DatasetSpec(inputField="input", targetField="target")` reads. Each built-in
task also yields related text, drawn from the same source but disjoint from its rows,
which the zoo pre-trains some models on: that is what makes a candidate "related" to a task.

Built-in tasks: `de-en` (German word -> English, Debian trans-de-en), `gloss` (English word
-> WordNet definition, Debian wordnet-base), `docstring` (Python signature -> first line
of its docstring, the standard library), `cipher` (a generated made-up language, from
`lensllm.demo`). Any other folder in the same format is a task too (`folder_task`).
"""

import json
import random
from collections.abc import Callable
from itertools import chain, islice
from dataclasses import dataclass
from pathlib import Path

from lensllm.errors import LensLLMError
from lensllm_bench import corpora

PROMPT = "{input} ="
MAX_INPUT_CHARS = 60
MAX_TARGET_CHARS = 80
RELATED_LINES = 20_000  # plenty for a few thousand pre-training steps of 32 lines
OFFLINE_TASKS = ("docstring", "cipher")  # need no Debian package


class TaskError(LensLLMError):
    """A task name or folder that cannot be used."""


@dataclass(frozen=True)
class Task:
    """A task folder ready for the runner."""

    name: str
    folder: Path
    n_train: int
    n_test: int


@dataclass(frozen=True)
class TaskSource:
    """Rows of a task (seeded order) and text related to it. Rows past those a task asks for are a reserve that
    replaces test rows the training rows repeat (sources that repeat themselves have one)."""

    rows: list[corpora.Pair]
    related: list[str]


def _is_short(pair: corpora.Pair) -> bool:
    return len(pair.source) <= MAX_INPUT_CHARS and len(pair.target) <= MAX_TARGET_CHARS


def _short(pairs: list[corpora.Pair]) -> list[corpora.Pair]:
    return [p for p in pairs if _is_short(p)]


def _split(pairs: list[corpora.Pair], n_rows: int, seed: int) -> tuple[list[corpora.Pair], list[corpora.Pair]]:
    """A seeded draw of `n_rows` task rows and the rest, in a seeded order."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    if len(order) < n_rows:
        raise TaskError(f"the source has {len(order)} usable records, the task needs {n_rows}")
    return order[:n_rows], order[n_rows:]


def _related_count(n_rows: int) -> int:
    """How many related lines to keep: enough pre-training text, never more than a miniature needs."""
    return min(RELATED_LINES, 5 * n_rows)


def _as_lines(pairs: list[corpora.Pair], n_rows: int) -> list[str]:
    return [f"{p.source} = {p.target}" for p in pairs[: _related_count(n_rows)]]


def german_english(cache: Path, n_rows: int, seed: int) -> TaskSource:
    rows, rest = _split(_short(corpora.german_english(cache)), n_rows, seed)
    return TaskSource(rows, _as_lines(rest, n_rows))


def gloss(cache: Path, n_rows: int, seed: int) -> TaskSource:
    rows, rest = _split(_short(corpora.wordnet_glosses(cache, ("noun",))), n_rows, seed)
    others = _short(corpora.wordnet_glosses(cache, ("verb", "adj", "adv")))
    random.Random(seed).shuffle(others)
    return TaskSource(rows, _as_lines(rest[: _related_count(n_rows) // 2] + others, n_rows))


def docstring(cache: Path, n_rows: int, seed: int) -> TaskSource:
    # Modules in a seeded order, read until there are enough rows: a small task parses a few files.
    modules = corpora.stdlib_modules(tests=False)
    random.Random(seed).shuffle(modules)
    functions = filter(_is_short, corpora.python_functions(modules))
    rows = list(islice(functions, n_rows))
    if len(rows) < n_rows:
        raise TaskError(f"the standard library has {len(rows)} short documented functions, the task needs {n_rows}")
    rng = random.Random(seed)
    rng.shuffle(rows)
    # Some signatures and first docstring lines recur across modules (up to 31 of 256 test rows of a draw).
    reserve = list(islice(functions, n_rows // 4))
    rng.shuffle(reserve)
    # Related text is code of the test suites: Python, but never the task's own functions.
    suites = corpora.stdlib_modules(tests=True)
    random.Random(seed).shuffle(suites)
    snippets = (s for text in corpora.python_source(suites) for s in _snippets(text))
    return TaskSource(rows + reserve, list(islice(snippets, _related_count(n_rows))))


def _snippets(text: str, lines: int = 6) -> list[str]:
    rows = [r for r in text.splitlines() if r.strip()]
    return ["\n".join(rows[i : i + lines]) for i in range(0, len(rows), lines)]


def cipher(cache: Path, n_rows: int, seed: int) -> TaskSource:
    from lensllm.demo import task_rows, vocabulary  # the demo imports torch: seconds a check of --tasks must not wait

    dictionary = vocabulary(400, seed)
    # One-word phrases recur (64 to 86 of 256 test rows were training rows too): a reserve as large again.
    rows = [corpora.Pair(r["input"], r["target"]) for r in task_rows(dictionary, 2 * n_rows, random.Random(seed))]
    other = task_rows(dictionary, _related_count(n_rows), random.Random(seed + 1))
    return TaskSource(rows, [f"{r['input']} = {r['target']}" for r in other])


BUILT_IN: dict[str, Callable[[Path, int, int], TaskSource]] = {
    "de-en": german_english,
    "gloss": gloss,
    "docstring": docstring,
    "cipher": cipher,
}


def write_task(folder: Path, source: TaskSource, n_train: int, n_test: int) -> Task:
    """The first `n_test` rows are the test split, the next `n_train` the training set; a test row the training set
    holds too is replaced by the next reserve row it does not hold (the runner would leave it out)."""
    folder.mkdir(parents=True, exist_ok=True)
    train = source.rows[n_test : n_test + n_train]
    trained = set(train)
    candidates = chain(source.rows[:n_test], source.rows[n_test + n_train :])
    test = list(islice((row for row in candidates if row not in trained), n_test))
    if len(test) < n_test:
        raise TaskError(f"task {folder.name}: only {len(test)} of its rows are not training rows, the test split "
                        f"needs {n_test}")
    splits = {"test": test, "train": train}
    for split, rows in splits.items():
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"input": p.source, "target": p.target}, ensure_ascii=False) + "\n" for p in rows)
    return Task(folder.name, folder, n_train, n_test)


def folder_task(folder: Path) -> Task:
    """A user's dataset folder with train.jsonl and test.jsonl of input/target rows."""
    counts = {}
    for split in ("train", "test"):
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            raise TaskError(f"task folder {folder}: no {split}.jsonl")
        with open(path, encoding="utf-8") as f:
            counts[split] = sum(1 for line in f if line.strip())
    return Task(folder.name, folder, counts["train"], counts["test"])
