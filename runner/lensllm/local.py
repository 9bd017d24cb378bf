"""Run an LLMSelection on this machine: each trial is a local `lensllm run-trial` process.

The same plan and status updates as the operator (`lensllm.selection`) decide what runs
(round after round for a race) and what the status says, and they read the same document:
the trial's compact result (its termination message on a cluster), not the full result
file. So the status written here is the one the operator would write into the resource,
ranking included. A run cut short resumes when run again into the same folder: each trial
made with the same spec keeps the sizes it finished (`run-trial --resume`), as a pod on a
persistent volume does; so does a retry after a transient failure, and the deadline ends a
trial, as spec.backoffLimit and spec.activeDeadlineSeconds rule a Job, and a trial that finds
the dataset unusable leaves unrun the candidates not yet started, as the operator leaves them
without a Job. Called by `lensllm select --local`.
"""

import fcntl
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from lensllm.errors import LensLLMError
from lensllm.local_devices import Slot, visible_gpus, worker_slots
from lensllm.selection import status as st
from lensllm.selection.manifest import Manifest, selection_object
from lensllm.selection.plan import Trial, advance, next_trials
from lensllm.trial.failures import DATASET_FAILURES, FINAL_EXIT_CODES
from lensllm.trial.result import TrialResult
from lensllm.trial.spec import validation_message

Progress = Callable[[str, dict], None]
LOCK_FILE = ".lensllm-select.lock"  # held while a run writes into the folder; names its process
# A runner ended by Ctrl-C or a kill was stopped by someone: not retried (Python dies of the signal it did not handle).
STOPPED_BY_HAND = {-signal.SIGINT, 128 + signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM}


@dataclass(frozen=True)
class LocalRun:
    manifest: Manifest
    out: Path
    workers: int
    fresh: bool = False  # measure everything, even what a run cut short left


def run_local(run: LocalRun, progress: Progress) -> st.LLMSelectionStatus:
    """Run every trial the plan asks for, round by round, each round's trials `workers` at a time; return the
    final status. One run at a time into a folder: two would overwrite each other's trials."""
    with _only_run_into(run.out):
        return _run_rounds(run, progress)


@contextmanager
def _only_run_into(out: Path) -> Iterator[None]:
    """Hold the folder's lock for the run, or refuse at once, naming the process that holds it."""
    with open(out / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise LensLLMError(f"--out {out}: another lensllm select is running into it (process {holder}); wait for "
                               "it, or give another --out") from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield  # the lock goes with the file's closing, also when this process dies


def _run_rounds(run: LocalRun, progress: Progress) -> st.LLMSelectionStatus:
    spec = run.manifest.spec
    status = st.initial_status(spec, 1, st.now_iso())
    (run.out / "trials").mkdir(parents=True, exist_ok=True)
    finished = run.out / "status.json"
    # Written last: without it, the last run into this folder was cut short, and its trials resume.
    resume = not (finished.exists() or run.fresh)
    finished.unlink(missing_ok=True)
    lock = threading.Lock()
    dataset_unusable = threading.Event()
    free_slots: queue.SimpleQueue[Slot] = queue.SimpleQueue()
    for slot in worker_slots(run.workers, visible_gpus()):
        free_slots.put(slot)
    while trials := next_trials(spec, status := advance(spec, status)):
        # As on a cluster, a trial that finds the dataset unusable leaves unrun the candidates no trial has started
        # for (recording its result fails them); the others' trials run, their failure is their own.
        unstarted = {t.candidate for t in trials if not status.candidates[t.candidate].trials}

        def run_unless_unusable(trial: Trial) -> tuple[TrialResult | None, tuple[str, str]] | None:
            if trial.candidate in unstarted and dataset_unusable.is_set():
                with lock:
                    progress(trial.candidate, {"event": "notRun"})
                return None
            slot = free_slots.get()  # a worker's trials run one at a time: one is always free here
            try:
                outcome = _run_trial(run, trial, slot, progress, lock, resume)
            finally:
                free_slots.put(slot)
            if outcome[0] is not None and outcome[0].reason in DATASET_FAILURES:
                dataset_unusable.set()
            return outcome

        with ThreadPoolExecutor(max_workers=run.workers) as pool:
            outcomes = list(pool.map(run_unless_unusable, trials))
        ran = [(trial, outcome) for trial, outcome in zip(trials, outcomes) if outcome is not None]
        for trial, _ in ran:
            record = st.TrialRecord(job_name=_trial_id(run, trial), round=trial.round, sizes=list(trial.sizes), state="Queued")
            status = st.mark_trial(status, trial.candidate, record)
        for trial, (result, failure) in ran:
            trial_id = _trial_id(run, trial)
            if result is not None:
                status = st.record_result(status, spec, trial.candidate, trial_id, result, gpus=spec.resources_for(trial.candidate).gpus)
            else:
                status = st.record_failure(status, trial.candidate, trial_id, *failure)
    status = st.finalize(status, spec, 1, st.now_iso())
    selection = selection_object(run.manifest, status.dump())
    (run.out / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    finished.write_text(json.dumps(status.dump(), indent=2) + "\n")
    return status


def _trial_id(run: LocalRun, trial: Trial) -> str:
    return f"{run.manifest.name}-{trial.candidate}-r{trial.round}"


def _local_spec(run: LocalRun, trial: Trial) -> dict:
    """The trial spec, with relative local paths taken from the manifest's folder; a trial on the target size
    saves the model it fine-tuned there in models/<candidate>."""
    trial_spec = run.manifest.spec.trial_spec(trial.candidate, list(trial.sizes), round=trial.round)
    spec = trial_spec.model_dump(mode="json", by_alias=True)
    if trial.ends_on(trial_spec.target_size):
        spec["output"]["modelDir"] = str((run.out / "models" / trial.candidate).resolve())
    for section, key in (("candidate", "model"), ("dataset", "source")):
        beside = run.manifest.folder / spec[section][key]
        if not Path(spec[section][key]).is_absolute() and beside.exists():
            spec[section][key] = str(beside.resolve())
    return spec


def _threads_per_trial(workers: int) -> str:
    """OMP_NUM_THREADS of each trial: the user's own setting, else the cores shared out among the workers."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // workers))


def _run_trial(
    run: LocalRun, trial: Trial, slot: Slot, progress: Progress, lock: threading.Lock, resume: bool
) -> tuple[TrialResult | None, tuple[str, str]]:
    """Run the trial's runner as a Job would, on `slot`'s share of the machine: retried up to spec.backoffLimit times
    (each retry resuming after the sizes finished) unless its exit code says a retry cannot help, and stopped at
    spec.activeDeadlineSeconds."""
    trial_id = _trial_id(run, trial)
    base = run.out / "trials" / trial_id
    spec_path, result_path, log_path = base.with_suffix(".spec.json"), base.with_suffix(".json"), base.with_suffix(".log")
    compact_path = base.with_suffix(".termination")
    spec = _local_spec(run, trial)
    resume = resume and _left_by_an_earlier_run(spec_path, result_path, spec)
    if not resume:  # else a retry after a first attempt that saved nothing would resume the earlier run's result
        result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec, indent=2))
    env = {**os.environ, "OMP_NUM_THREADS": _threads_per_trial(run.workers), **slot.env}

    def report(event: dict) -> None:
        with lock:
            progress(trial.candidate, event)

    report({"event": "started"})
    job = run.manifest.spec
    started = time.monotonic()
    for attempt in range(job.backoff_limit + 1):
        compact_path.unlink(missing_ok=True)  # a runner killed outright writes none: an earlier one's must not stand in
        resume = resume or (attempt > 0 and _left_by_an_earlier_run(spec_path, result_path, spec))
        kept = ["--resume", str(result_path)] if resume else []
        command = [sys.executable, "-m", "lensllm.cli.main", "run-trial", "--spec", str(spec_path), "--out",
                   str(result_path), "--termination-log", str(compact_path), *kept, *slot.args]
        deadline = job.active_deadline_seconds
        left = None if deadline is None else deadline - (time.monotonic() - started)  # the Job's, over every attempt
        code, stopped = _run_runner(command, env, log_path, report, left, attempt)
        if stopped:
            why = f"stopped after spec.activeDeadlineSeconds ({deadline} s), as its Job would be"
            return None, ("DeadlineExceeded", why)
        if code == 0 or code in FINAL_EXIT_CODES or code in STOPPED_BY_HAND:
            break
    return _outcome(compact_path, log_path, code)


def _run_runner(
    command: list[str], env: dict, log_path: Path, report: Callable[[dict], None], deadline: float | None, attempt: int
) -> tuple[int, bool]:
    """Run a runner process, passing on its progress lines, its stderr to the trial's log (after the attempts before
    it); kill it `deadline` seconds on, as Kubernetes kills a Job's pods at its activeDeadlineSeconds. Its exit code,
    and whether the deadline stopped it."""
    stopped = threading.Event()
    with open(log_path, "a" if attempt else "w") as log:
        if attempt:
            log.write(f"--- attempt {attempt + 1} (spec.backoffLimit) ---\n")
            log.flush()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env) as proc:
            def stop() -> None:
                stopped.set()
                proc.kill()

            timer = None if deadline is None else threading.Timer(max(deadline, 0.0), stop)
            if timer:
                timer.start()
            try:
                for line in proc.stdout:
                    event = _progress_event(line)
                    if event is not None:
                        report(event)
            finally:
                if timer:
                    timer.cancel()
    return proc.returncode, stopped.is_set()


def _progress_event(line: str) -> dict | None:
    """The runner's progress event on a line of its output; None for anything else a library printed there."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _left_by_an_earlier_run(spec_path: Path, result_path: Path, spec: dict) -> bool:
    """Whether the cut-short run before left a readable result of this trial made with this very spec: its finished
    sizes are then kept, not measured again. Any other leftover is replaced."""
    try:
        same_spec = json.loads(spec_path.read_text()) == spec
        return same_spec and TrialResult.model_validate_json(result_path.read_text()).spec is not None
    except (OSError, ValueError):  # none yet, or not readable: a fresh start
        return False


def _outcome(compact_path: Path, log_path: Path, code: int) -> tuple[TrialResult | None, tuple[str, str]]:
    """The trial's compact result, the one the operator reads from a pod's termination message."""
    text = compact_path.read_text() if compact_path.exists() else ""
    if not text:
        tail = [line for line in log_path.read_text().splitlines() if line.strip()][-1:] or ["no output"]
        return None, ("ResultMissing", f"runner exited {code} without a result: {tail[0][:300]}")
    try:
        return TrialResult.model_validate_json(text), ("", "")
    except ValidationError as err:
        return None, ("ResultInvalid", f"{compact_path}: {validation_message(err)}")
