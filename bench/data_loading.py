"""What reading the task costs a trial on a large training split: Arrow conversion, the held-out check, the rows.

Writes a synthetic pair task as Parquet (`--rows` training rows of `--words` words in two fields, 2,000 test
rows, some of them copies of training rows spaced otherwise), then times, in this process, what every trial
pod does first: `datasets` converting the files to Arrow in an empty cache (each pod has its own), the
same with the cache warm, the held-out check alone, and `load_task_rows` whole, in a process of their own.
Prints one JSON line; its peak RSS counts the pages of the memory-mapped training split it touched.

    python bench/data_loading.py --rows 1000000
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"])
TEST_ROWS, COPIES = 2000, 300


def sentences(rng: np.random.Generator, rows: int, words: int) -> list[str]:
    return [" ".join(row) for row in WORDS[rng.integers(0, len(WORDS), size=(rows, words))]]


def write_task(folder: Path, rows: int, words: int) -> None:
    """Training and test Parquet files; the first COPIES test rows copy training rows, every other one spaced otherwise."""
    rng = np.random.default_rng(0)
    train = {"input": sentences(rng, rows, words), "target": sentences(rng, rows, words // 2)}
    test = {"input": sentences(rng, TEST_ROWS, words), "target": sentences(rng, TEST_ROWS, words // 2)}
    for i, j in enumerate(rng.integers(0, rows, size=COPIES)):
        test["input"][i] = train["input"][j].replace(" ", "  ") + "\n" if i % 2 else train["input"][j]
        test["target"][i] = train["target"][j]
    folder.mkdir(parents=True)
    pq.write_table(pa.table(train), folder / "train.parquet")
    pq.write_table(pa.table(test), folder / "test.parquet")


def seconds(fn) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def measure(folder: Path, need_train: int) -> dict:
    """The timings, in a process that has not held the generated rows (its peak RSS is the trial's own)."""
    os.environ["HF_DATASETS_CACHE"] = str(folder / "cache")  # before `datasets` is imported: it reads it then
    from lensllm.trial import data
    from lensllm.trial.spec import DatasetSpec

    spec = DatasetSpec(source=str(folder / "task"), input_field="input", target_field="target")
    cold, train = seconds(lambda: data._load_split(spec, "train", "trainSplit"))
    warm, train = seconds(lambda: data._load_split(spec, "train", "trainSplit"))
    test = data._load_split(spec, "test", "testSplit")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    check, shared = seconds(lambda: data._rows_also_in(spec, test, train))
    whole, _ = seconds(lambda: data.load_task_rows(spec, need_train=need_train, seed=0))
    return {
        "rows": len(train), "train_text_mib": round(train.data.nbytes / 2**20, 1), "arrow_conversion_s": round(cold, 2),
        "warm_load_s": round(warm, 2), "held_out_check_s": round(check, 2), "test_rows_in_train": int(shared.sum()),
        "load_task_rows_s": round(whole, 2), "peak_rss_after_loading_mib": loaded,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows (default 1,000,000)")
    parser.add_argument("--words", type=int, default=50, help="words of an input; a target has half (default 50)")
    parser.add_argument("--need-train", type=int, default=4096, help="training rows a trial draws (default 4,096)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process: time the task there
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.need_train)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_task(Path(tmp) / "task", args.rows, args.words)
        subprocess.run([sys.executable, __file__, "--measure", tmp, "--need-train", str(args.need_train)], check=True)


if __name__ == "__main__":
    main()
