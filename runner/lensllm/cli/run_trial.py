"""`lensllm run-trial`: run one candidate's learning-curve trial from a spec file.

The runner container's entry point. Progress goes to stdout as one JSON line per event;
the full result to --out (rewritten after each subset size, so --resume can pick it up);
the compact result to the termination log. torch is imported only once the spec is valid.
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from lensllm.errors import LensLLMError
from lensllm.output_paths import check_file
from lensllm.trial import documents
from lensllm.trial.failures import EXIT_RUNTIME, EXIT_USAGE, TrialFailure, exit_code
from lensllm.trial.memory import PlanError, parse_bytes
from lensllm.trial.result import TrialResult


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run-trial",
        help="fine-tune one candidate on nested subsets and fit the laws (runner pod entry point)",
        description="Measure the zero-shot loss, the empirical NTK and the test loss after fine-tuning on each "
        "subset size, fit the scaling laws and predict the loss at the target size.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", metavar="SPEC.yaml|json", help="trial spec file (TrialSpec fields, camelCase)")
    source.add_argument(
        "--spec-env", metavar="NAME", help="environment variable holding the spec as JSON (how Jobs pass it)"
    )
    p.add_argument("--out", metavar="RESULT.json", help="full result document (default: spec output.resultPath)")
    p.add_argument(
        "--termination-log",
        metavar="PATH",
        help="compact result, <= 4096 bytes (default: /dev/termination-log if present)",
    )
    p.add_argument(
        "--model-dir",
        metavar="DIR",
        help="folder to save the model fine-tuned on targetSize in, if the trial runs that size (default: spec "
        "output.modelDir)",
    )
    p.add_argument("--resume", metavar="RESULT.json", help="result of an earlier attempt: skip the sizes it finished")
    p.add_argument(
        "--plan-only",
        action="store_true",
        help="print the memory plan (from the model config, for training.maxSeqLength) and exit: 0 fits, 2 will not",
    )
    p.add_argument(
        "--gpu-memory", metavar="SIZE", help="memory to plan for on the trial's device (a GPU's; on the CPU, the "
        "host's), e.g. 80Gi (default: what the device reports)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    spec = None
    try:
        spec = documents.read_spec(args.spec) if args.spec else documents.read_spec_env(args.spec_env)
        if args.model_dir:
            spec = spec.model_copy(update={"output": spec.output.model_copy(update={"model_dir": args.model_dir})})
        resume = documents.read_resume(args.resume) if args.resume else None
        device_memory = parse_bytes(args.gpu_memory) if args.gpu_memory else None
    except TrialFailure as failure:
        result = TrialResult(status="Failed", reason=failure.reason, message=str(failure), spec=spec)
    except PlanError as err:
        result = TrialResult(status="Failed", reason="InvalidSpec", message=f"--gpu-memory: {err}", spec=spec)
    else:
        if args.plan_only:
            return _plan_only(spec, args.gpu_memory)
        unwritable = _unwritable_output(args, spec)
        if unwritable:  # before hours of training whose result would have nowhere to go; to the other output
            path, why = unwritable
            failed = TrialResult(status="Failed", reason="InvalidSpec", message=why, spec=spec)
            return _deliver(failed, args, spec, skip=path)
        # torch and transformers load here, not at CLI start: a bad spec fails fast and light.
        from lensllm.trial.recipe import run_trial

        out = documents.result_path(args.out, spec)
        result = run_trial(
            spec,
            resume=resume,
            on_progress=_print_event,
            on_checkpoint=lambda r: documents.write_result(out, r),
            device_memory=device_memory,
        )
    return _deliver(result, args, spec)


def _plan_only(spec, gpu_memory: str | None) -> int:
    """Print the trial's memory plan; exit 2 with the numbers when it will not fit."""
    from lensllm.cli.plan import show
    from lensllm.trial.model_files import plan_spec, planning_device

    try:
        device, note = planning_device(spec.device, gpu_memory)
        plan = plan_spec(spec, device)
    except (TrialFailure, LensLLMError) as err:
        print(f"lensllm run-trial: {getattr(err, 'reason', 'InvalidSpec')}: {err}", file=sys.stderr)
        return EXIT_USAGE
    show([(spec.candidate.model, plan)], "table", note)
    if not plan.fits:
        print(f"lensllm run-trial: WillNotFit: {plan.refusal()}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _print_event(event: dict) -> None:
    print(json.dumps(event), flush=True)


def _outputs(args: argparse.Namespace, spec) -> list[tuple[Path | None, str, Callable[[Path, TrialResult], None]]]:
    """Where the result goes: the result document and the termination log, each with the flag or spec field that
    names it and the function that writes it."""
    return [
        (documents.result_path(args.out, spec), "--out" if args.out else "output.resultPath", documents.write_result),
        (documents.termination_log_path(args.termination_log, spec),
         "--termination-log" if args.termination_log else "output.terminationLogPath",
         documents.write_termination_message),
    ]


def _unwritable_output(args: argparse.Namespace, spec) -> tuple[Path, str] | None:
    """The result's or the termination log's path, if it cannot be written, and why."""
    for path, flag, _ in _outputs(args, spec):
        try:
            if path is not None:
                check_file(path, flag)
        except LensLLMError as err:
            return path, str(err)
    return None


def _deliver(result: TrialResult, args: argparse.Namespace, spec, skip: Path | None = None) -> int:
    """Write the result everywhere it is expected (but `skip`), each place whatever becomes of the other; a failure
    also gets one line on stderr."""
    unwritten = False
    for path, _, write in _outputs(args, spec):
        if path is None or path == skip:
            continue
        try:
            write(path, result)
        except OSError as err:
            print(f"lensllm run-trial: error: cannot write the result: {err}", file=sys.stderr)
            unwritten = True
    if result.status != "Succeeded":
        print(f"lensllm run-trial: {result.reason}: {result.message}", file=sys.stderr)
    return EXIT_RUNTIME if unwritten and result.status == "Succeeded" else exit_code(result)
