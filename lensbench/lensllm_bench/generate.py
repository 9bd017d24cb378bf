"""`lensllm lensbench generate`: build the tasks and the zoo, measure every curve, write the tables.

Steps, each skipped where its output is already on disk (so a killed run resumes; OUT/plan.json
holds what the files depend on, and a run with another plan is refused rather than mixed in):
1. tasks: every task's folder and its related text (Debian packages fetched into a cache);
2. tokenizers: byte-level BPE of two sizes, trained on the pre-training text;
3. zoo: every model built and pre-trained, one per worker process;
4. measurements (none with --zoo-only): per (model, task) the zero-shot loss, the NTK and the
   subsets with seed 0, the small subsets again with more seeds, and the ground truth (the full
   training set), each unit one runner call in a worker process;
5. tables: one curves table per task (see `lensllm_bench.tables`).
Everything is seeded; workers share nothing but files, so the result does not depend on
their number or on the order in which they finish.
"""

import json
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lensllm.errors import LensLLMError
from lensllm_bench import corpora, tables
from lensllm_bench.measure import Unit, pending, run_unit, trial_spec
from lensllm_bench.tasks import BUILT_IN, OFFLINE_TASKS, Task, TaskError, folder_task, write_task
from lensllm_bench.zoo import QUICK_ZOO, TASK_CORPUS, ZOO, ZooModel, build_model, pretraining_corpora

TOKENIZER_LINES_PER_CORPUS = 4000


@dataclass(frozen=True)
class Budget:
    """Subset sizes base * 2^k up to `largest`, the ground truth at `target` (the training-set size)."""

    base: int = 8
    largest: int = 256
    target: int = 2048
    n_test: int = 256
    seeds: int = 3  # seeds of the sizes up to `repeat_up_to`
    repeat_up_to: int = 64

    @property
    def sizes(self) -> tuple[int, ...]:
        out, size = [], self.base
        while size <= self.largest:
            out.append(size)
            size *= 2
        return tuple(out)


FULL = Budget()
QUICK = Budget(base=8, largest=32, target=256, n_test=32, seeds=2, repeat_up_to=16)


@dataclass(frozen=True)
class Settings:
    out: Path
    seed: int
    tasks: tuple[str, ...]
    quick: bool
    workers: int
    debs: Path
    zoo_only: bool = False  # build tasks, tokenizers and zoo, measure nothing (what `lensbench e2e` needs)

    @property
    def budget(self) -> Budget:
        return QUICK if self.quick else FULL

    @property
    def zoo(self) -> tuple[ZooModel, ...]:
        return QUICK_ZOO if self.quick else ZOO


class PlanMismatch(LensLLMError):
    """OUT holds a generation made with another plan: resuming would mix its files with this one's."""


def plan(settings: Settings) -> dict:
    """What every file of a generation depends on (not the workers, the package cache or --zoo-only). The
    tokenizers depend on every task's related text, so on the task list and the budget as well."""
    return {"seed": settings.seed, "tasks": sorted(settings.tasks), "budget": asdict(settings.budget),
            "zoo": [asdict(m) for m in settings.zoo]}


def claim(settings: Settings) -> None:
    """Record the plan in a new OUT, or check that OUT was made with this plan before resuming it."""
    path = settings.out / "plan.json"
    wanted = plan(settings)
    if path.exists():
        found = json.loads(path.read_text())
        if found != wanted:
            changed = sorted(k for k in wanted if found.get(k) != wanted[k])
            raise PlanMismatch(f"--out {settings.out}: made with another {', '.join(changed)} ({path}); "
                               "resuming would mix its files with new ones: give a new --out")
    elif any((settings.out / part).exists() for part in ("tokenizers", "zoo", "results")):
        raise PlanMismatch(f"--out {settings.out}: holds a generation without {path.name}; give a new --out")
    else:
        path.write_text(json.dumps(wanted, indent=1) + "\n")


def generate(settings: Settings, log: Callable[[str], None]) -> dict:
    """Run every step; returns the generation record (also written to OUT/generation.json)."""
    start, cpu = time.perf_counter(), time.process_time()
    zoo = pretrainable_zoo(settings)
    if len(zoo) < 2:  # before plan.json is claimed: a corrected command may use the same --out
        givers = [task for task, corpus in TASK_CORPUS.items() if corpus in {m.corpus for m in settings.zoo}]
        raise TaskError(f"--tasks: none gives text to pre-train the zoo on, which leaves only {', '.join(m.name for m in zoo)}"
                        f" (untrained): add {' or '.join(givers)}{', or drop --quick' if settings.quick else ''}")
    claim(settings)
    tasks, related, fortunes = _prepare_tasks(settings, log)
    corpora_lines = pretraining_corpora(related, fortunes, settings.seed)
    skipped = sorted({m.corpus for m in settings.zoo} - set(corpora_lines) - {"none"})
    if skipped:
        log(f"no text for corpora {', '.join(skipped)} (their tasks are not selected): their models are left out")
    _train_tokenizers(settings, zoo, corpora_lines, log)
    context = multiprocessing.get_context("spawn")  # a clean interpreter: no torch threads inherited
    with ProcessPoolExecutor(max_workers=settings.workers, mp_context=context, initializer=_worker_init) as pool:
        worker_cpu = _build_zoo(pool, settings, zoo, corpora_lines, log)
        outcomes = [] if settings.zoo_only else _measure(pool, settings, zoo, tasks, log)
    worker_cpu += sum(o["cpu_seconds"] for o in outcomes)
    failed = [o for o in outcomes if o["status"] != "Succeeded"]
    record = {
        "command": " ".join(["lensllm", *sys.argv[1:]]) if sys.argv else "",
        "settings": {**asdict(settings), "out": str(settings.out), "debs": str(settings.debs)},
        "budget": asdict(settings.budget),
        "zoo": [asdict(m) for m in zoo],
        "tasks": [t.name for t in tasks],
        "failed_units": failed,
        "wall_seconds": time.perf_counter() - start,
        "cpu_seconds_this_run": worker_cpu + time.process_time() - cpu,
    }
    (settings.out / "generation.json").write_text(json.dumps(record, indent=2) + "\n")
    if not failed and not settings.zoo_only:
        tables.write_tables(settings.out, [t.name for t in tasks], zoo, settings.budget)
        log(f"tables written to {settings.out / 'tables'}")
    return record


def pretrainable_zoo(settings: Settings) -> list[ZooModel]:
    """The zoo's models these settings give pre-training text to (a selected built-in task's related text; the fortunes,
    except with --quick; `mix` when there is any), and the untrained ones."""
    corpora = {TASK_CORPUS[task] for task in settings.tasks if task in TASK_CORPUS}
    if not settings.quick:
        corpora.add("fortunes")
    if corpora:
        corpora.add("mix")
    return [m for m in settings.zoo if m.corpus in corpora or m.corpus == "none"]


def _prepare_tasks(settings: Settings, log) -> tuple[list[Task], dict[str, list[str]], list[str] | None]:
    budget = settings.budget
    tasks, related = [], {}
    for name in settings.tasks:
        if name in BUILT_IN:
            folder = settings.out / "tasks" / name
            source = BUILT_IN[name](settings.debs, budget.n_test + budget.target, settings.seed)
            tasks.append(write_task(folder, source, budget.target, budget.n_test))
            related[name] = source.related
        else:
            task = folder_task(Path(name))
            if task.n_train < budget.sizes[-1]:
                raise TaskError(f"task folder {name}: {task.n_train} training rows, fewer than the largest subset")
            tasks.append(task)
        log(f"task {tasks[-1].name}: {tasks[-1].n_train} training rows, {tasks[-1].n_test} test rows")
    fortunes = None if settings.quick else corpora.fortunes(settings.debs)
    return tasks, related, fortunes


def _train_tokenizers(settings: Settings, zoo: list[ZooModel], lines: dict[str, list[str]], log) -> None:
    from lensllm_bench.vocab import train_bpe

    rng = random.Random(settings.seed)
    sample = [t for name in sorted(lines) if name != "mix" for t in rng.sample(lines[name], min(TOKENIZER_LINES_PER_CORPUS, len(lines[name])))]
    for vocab in sorted({m.vocab for m in zoo}):
        folder = settings.out / "tokenizers" / f"bpe{vocab}"
        if not (folder / "tokenizer.json").exists():
            train_bpe(sample, vocab).save_pretrained(folder)
            log(f"tokenizer bpe{vocab} trained")


def _build_zoo(pool: ProcessPoolExecutor, settings: Settings, zoo: list[ZooModel], lines: dict[str, list[str]], log) -> float:
    todo = [m for m in zoo if not (settings.out / "zoo" / m.name / "model.safetensors").exists()]
    jobs = [
        (build_model, m, settings.out / "tokenizers" / m.tokenizer, lines.get(m.corpus, []), settings.out / "zoo" / m.name, settings.seed)
        for m in todo
    ]
    cpu = 0.0
    for (_, model, *_), (params, seconds) in _in_workers(pool, jobs):
        cpu += seconds
        log(f"model {model.name}: {params:,} parameters, {model.steps} pre-training steps on {model.corpus} ({seconds:.0f} CPU-s)")
    return cpu


def units(zoo: Iterable[ZooModel], tasks: Iterable[Task], budget: Budget) -> list[Unit]:
    """Every runner call of a generation: subsets with NTK, repeats with more seeds, the ground truth."""
    out = []
    repeated = tuple(s for s in budget.sizes if s <= budget.repeat_up_to)
    for task in tasks:
        for model in zoo:
            out.append(Unit(model.name, task.name, 0, budget.sizes, ntk=True))
            out.extend(Unit(model.name, task.name, seed, repeated, ntk=False) for seed in range(1, budget.seeds))
            out.append(Unit(model.name, task.name, 0, (task.n_train,), ntk=False))
    return out


def _measure(pool: ProcessPoolExecutor, settings: Settings, zoo: list[ZooModel], tasks: list[Task], log) -> list[dict]:
    results = settings.out / "results"
    by_name = {t.name: t for t in tasks}
    todo = [u for u in units(zoo, tasks, settings.budget) if pending(u, results)]
    log(f"{len(todo)} measurement units to run")
    jobs = []
    for unit in todo:
        task = by_name[unit.task]
        spec = trial_spec(unit, settings.out / "zoo" / unit.model, task.folder, target=task.n_train, n_test=task.n_test)
        jobs.append((run_unit, replace(unit), spec, results))
    outcomes = []
    for i, (_, (outcome, _)) in enumerate(_in_workers(pool, jobs), start=1):
        outcomes.append(outcome)
        note = "" if outcome["status"] == "Succeeded" else f": {outcome['message']}"
        log(f"[{i}/{len(jobs)}] {outcome['unit']}: {outcome['status']} in {outcome['seconds']:.1f} s{note}")
    return outcomes


def _in_workers(pool: ProcessPoolExecutor, jobs: list[tuple]):
    """Run `job[0](*job[1:])` in the pool; yields (job, (value, CPU seconds)) as they finish."""
    futures = {pool.submit(_timed, job[0], *job[1:]): job for job in jobs}
    for future in as_completed(futures):
        yield futures[future], future.result()


def _worker_init() -> None:
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)  # tiny models: a second thread costs more than it gives


def _timed(func, *args):
    start = time.process_time()
    value = func(*args)
    return value, time.process_time() - start


def default_tasks(quick: bool) -> tuple[str, ...]:
    return OFFLINE_TASKS if quick else tuple(BUILT_IN)
