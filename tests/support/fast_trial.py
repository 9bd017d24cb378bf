"""The fastest honest stand-in for `lensllm run-trial`: a real process that writes a valid result document.

For the load suite (tests/reliability/test_load.py), where a thousand trials must each take milliseconds. The
kubelet runs `python -S fast_trial.py run-trial --spec-env VAR --out PATH --termination-log PATH [...]` in place of
`lensllm run-trial ...`. It reads the trial spec from VAR (as the runner does), picks the result document prepared
for that candidate's model in LENSLLM_FAST_RESULTS (`<model basename>.json`, made by the real result models through
`prepare()`), and writes it where the runner writes its results: the full document to --out, the compact one to the
termination log. A race runs a candidate's sizes over several trials, so a document is prepared per candidate and set
of sizes (`<model basename>@<sizes>.json`). Standard library only, so the process starts in about 20 ms.
"""

import json
import os
import sys
from pathlib import Path

RESULTS = "LENSLLM_FAST_RESULTS"


def option(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE`; unknown options are ignored (the runner may gain some)."""
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str]) -> int:
    spec = json.loads(os.environ[option(argv, "--spec-env") or "LENSLLM_TRIAL_SPEC"])
    prepared = Path(os.environ[RESULTS]) / document_name(spec["candidate"]["model"], spec["subsetSizes"])
    out, termination = option(argv, "--out"), option(argv, "--termination-log")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(prepared.with_suffix(".json").read_text())
    if termination:
        Path(termination).write_text(prepared.with_suffix(".termination").read_text())
    print(json.dumps({"event": "done", "model": prepared.name}), flush=True)
    return 0


def document_name(model: str, sizes: list[int]) -> str:
    return f"{model.rstrip('/').rsplit('/', 1)[-1]}@{'-'.join(map(str, sizes))}"


def prepare(folder: Path, selection_spec: object, candidates: list[str], size_sets: list[list[int]]) -> None:
    """Write each candidate's result document (full and compact) for each set of sizes a trial may be given, for
    `main` to hand out, using the stand-in recipe (tests/support/stand_in_trial.py) with no delay: real result
    models, real law fits."""
    from stand_in_trial import SIZE_SECONDS, run_trial

    folder.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get(SIZE_SECONDS)
    os.environ[SIZE_SECONDS] = "0"
    try:
        for name in candidates:
            for sizes in size_sets:
                trial = selection_spec.trial_spec(name, sizes)  # type: ignore[attr-defined]
                result = run_trial(trial)
                prepared = document_name(trial.candidate.model, sizes)
                (folder / f"{prepared}.json").write_text(result.to_json())
                (folder / f"{prepared}.termination").write_text(result.to_termination_message())
    finally:
        if previous is None:
            del os.environ[SIZE_SECONDS]
        else:
            os.environ[SIZE_SECONDS] = previous


if __name__ == "__main__":
    sys.exit(main(sys.argv[2:] if sys.argv[1:2] == ["run-trial"] else sys.argv[1:]))
