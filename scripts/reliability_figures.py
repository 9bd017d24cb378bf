"""Run the reliability suites (chaos, load, bad input) and print the figures issue 8 asks for.

    .venv/bin/python scripts/reliability_figures.py [--suites chaos,load,fuzz]

Each suite is the pytest marker of the same name (tests/reliability/); it writes one JSON record per measurement to
the file named by LENSLLM_FIGURES, which this script reads back and sums up. The suites' own knobs (for example
LENSLLM_CHAOS_RUNS, LENSLLM_LOAD_SELECTIONS, LENSLLM_FUZZ_EXAMPLES) pass through. Exit code: 0 when every suite
passed, 1 otherwise (the figures are printed either way).
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUITES = ("chaos", "load", "fuzz")


def run_suite(suite: str, figures: Path) -> int:
    command = [sys.executable, "-m", "pytest", "-m", suite, "-q", "--no-header", str(REPO / "tests" / "reliability")]
    return subprocess.run(command, cwd=REPO, env={**os.environ, "LENSLLM_FIGURES": str(figures)}).returncode


def chaos_lines(records: list[dict[str, Any]]) -> list[str]:
    faults: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    for record in records:
        faults.update(record["faults"])
        kinds.update(violation.split(":")[0].split(" size ")[0] for violation in record["violations"])
    broken = [record for record in records if record["violations"]]
    seconds = sorted(record["seconds"] for record in records)
    strategies = collections.Counter(record["strategy"] for record in records)
    return [f"runs: {len(records)} ({', '.join(f'{k} {v}' for k, v in sorted(strategies.items()))}), "
            f"runs with an invariant violation: {len(broken)} "
            f"({sum(len(r['violations']) for r in records)} violations)",
            f"faults injected: {sum(faults.values())} ({', '.join(f'{k} {v}' for k, v in faults.most_common())})",
            f"seconds to a terminal phase: median {seconds[len(seconds) // 2]:.1f}, max {seconds[-1]:.1f}",
            f"operator exceptions logged: {sum(r['operator_tracebacks'] for r in records)}",
            *(f"violating seeds: {', '.join(str(r['seed']) for r in broken)}" for _ in [0] if broken)]


def summary(suite: str, records: list[dict[str, Any]]) -> list[str]:
    if not records:
        return ["no figures (the suite did not get to measure)"]
    if suite == "chaos":
        return chaos_lines(records)
    return [f"{key}: {value}" for record in records for key, value in record.items() if key != "suite"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default=",".join(SUITES), help="comma-separated, of chaos, load, fuzz")
    args = parser.parse_args()
    chosen = [suite for suite in args.suites.split(",") if suite]
    unknown = set(chosen) - set(SUITES)
    if unknown:
        parser.error(f"--suites: unknown suite(s) {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")
    codes = {}
    with tempfile.TemporaryDirectory() as folder:
        figures = Path(folder) / "figures.jsonl"
        for suite in chosen:
            codes[suite] = run_suite(suite, figures)
        records = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
    for suite in chosen:
        print(f"\n== {suite}: {'passed' if codes[suite] == 0 else 'FAILED'}")
        for line in summary(suite, [record for record in records if record["suite"] == suite]):
            print(f"  {line}")
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
