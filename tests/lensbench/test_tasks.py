"""LensBench task folders: the test split holds out every row, the training split is the source's own."""

import json

import pytest

from lensllm_bench.corpora import Pair
from lensllm_bench.tasks import TaskError, TaskSource, write_task


def rows_of(path) -> list[Pair]:
    return [Pair(r["input"], r["target"]) for r in map(json.loads, path.read_text().splitlines())]


def pairs(*names: str) -> list[Pair]:
    return [Pair(name, name.upper()) for name in names]


def test_a_test_row_the_training_rows_repeat_is_replaced_from_the_reserve_in_order(tmp_path):
    source = TaskSource(pairs("t1", "x", "t2") + pairs("x", "y", "z", "w") + pairs("y", "r1", "r2"), related=[])
    task = write_task(tmp_path / "task", source, n_train=4, n_test=3)
    assert rows_of(task.folder / "train.jsonl") == pairs("x", "y", "z", "w")  # the source's own, untouched
    assert rows_of(task.folder / "test.jsonl") == pairs("t1", "t2", "r1")
    assert (task.n_train, task.n_test) == (4, 3)


def test_a_source_without_enough_held_out_rows_is_refused(tmp_path):
    source = TaskSource(pairs("x", "t1") + pairs("x", "y"), related=[])
    with pytest.raises(TaskError, match="^task task: only 1 of its rows are not training rows, the test split needs 2$"):
        write_task(tmp_path / "task", source, n_train=2, n_test=2)
