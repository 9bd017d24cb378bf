"""Chaos: seeded fault schedules over a selection of three stand-in candidates, through the real operator process.

Each run (tests/support/chaos_run.py) gets its own emulated cluster and draws its schedule from its seed
(tests/support/chaos.py): a fixed budget, a race, or a race that settles on the target size, the operator's API calls refused now and then (5xx, 429, 409,
410 on watches), and in the first seconds operator SIGKILLs, pod evictions, Job deletions, compactions and dropped
watches; a race that settles draws one more of these, carried out while its settling round's trials run. Every run
must keep every invariant: terminal within the bound, no Job created twice for a trial attempt,
no point measured twice, no planned point lost, the fault-free verdict of its strategy (ranking, and a race's
rounds). Runs go one per core at a time: each keeps a core busy (its operator, its trials, its share of the emulated
cluster), so more at once only stretch every run towards the bound (4 at once on 2 cores took a race past 90 s that
took 32 s alone, and finished the suite no sooner).

Knobs (environment): LENSLLM_CHAOS_RUNS (50), LENSLLM_CHAOS_SEEDS (e.g. "7,19": exactly these, to reproduce),
LENSLLM_CHAOS_WORKERS (the cores this process may use), LENSLLM_CHAOS_BOUND (seconds, 90).
"""

import concurrent.futures
import os
from pathlib import Path

import pytest
from chaos import STRATEGIES, Outcome, Schedule
from chaos_run import run_chaos

pytestmark = pytest.mark.chaos


def seeds() -> list[int]:
    if chosen := os.environ.get("LENSLLM_CHAOS_SEEDS"):
        return [int(seed) for seed in chosen.split(",")]
    return list(range(int(os.environ.get("LENSLLM_CHAOS_RUNS", "50"))))


def test_every_fault_schedule_keeps_every_invariant(tmp_path: Path, figures) -> None:
    bound = float(os.environ.get("LENSLLM_CHAOS_BOUND", "90"))
    workers = int(os.environ.get("LENSLLM_CHAOS_WORKERS", len(os.sched_getaffinity(0))))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        fault_free = dict(zip(STRATEGIES, pool.map(
            lambda strategy: run_chaos(tmp_path / f"fault-free-{strategy}", None, bound, strategy=strategy),
            STRATEGIES)))
        for outcome in fault_free.values():
            assert outcome.phase == "Complete" and not outcome.violations, (outcome.strategy, outcome.violations)
        assert fault_free["settle"].verdict.stop == "settled", fault_free["settle"].verdict
        outcomes: list[Outcome] = list(pool.map(
            lambda schedule: run_chaos(tmp_path / f"seed-{schedule.seed}", schedule, bound,
                                       baseline=fault_free[schedule.strategy].verdict),
            map(Schedule.draw, seeds())))
    for outcome in outcomes:
        figures("chaos", outcome.figures())
    failed = [o for o in outcomes if o.violations]
    report = "\n".join(f"seed {o.seed}, {o.strategy} ({dict(o.faults)}): " + "; ".join(o.violations)
                       + "\n  operator log:\n    " + "\n    ".join(o.log_tail) for o in failed)
    assert not failed, (f"{len(failed)} of {len(outcomes)} runs broke an invariant (reproduce one with "
                        f"LENSLLM_CHAOS_SEEDS=<seed>):\n{report}")
