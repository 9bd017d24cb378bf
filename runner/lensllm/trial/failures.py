"""Classified trial failures: each carries the machine-readable reason the result reports.

The recipe and its helpers raise these; `lensllm run-trial` turns them into a Failed
result, one line on stderr and an exit code, never a traceback. `classify` maps the
errors that libraries raise for the same situations (an allocator out of memory) onto
them. No torch import at module level: the CLI imports this before it knows it needs torch.
"""

from typing import ClassVar

from lensllm.trial.result import Reason, TrialResult

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_DIVERGED = 4
# Exit codes a retry cannot change (the same input fails the same way): a Job fails at once on them.
FINAL_EXIT_CODES = (EXIT_USAGE, EXIT_OUT_OF_MEMORY, EXIT_DIVERGED)


class TrialFailure(Exception):
    """A failure with a known reason: show its one-line message, do not print a traceback."""

    reason: ClassVar[Reason]


class InvalidSpec(TrialFailure):
    """The spec (or a command-line argument) is malformed or inconsistent."""

    reason = "InvalidSpec"


class ModelNotFound(TrialFailure):
    """The candidate model (or its tokenizer or GGUF file) cannot be found or loaded."""

    reason = "ModelNotFound"


class DatasetNotFound(TrialFailure):
    """The dataset source, its config or one of its splits does not exist or cannot be read."""

    reason = "DatasetNotFound"


class DatasetFieldMissing(TrialFailure):
    """A column the spec names is not in the dataset."""

    reason = "DatasetFieldMissing"


class BudgetExceedsDataset(TrialFailure):
    """A subset size (or the NTK probe) needs more training examples than the split has."""

    reason = "BudgetExceedsDataset"


class SplitNotHeldOut(TrialFailure):
    """Every row of the test split is a row of the training split too: nothing held out is left to score."""

    reason = "TestSplitNotHeldOut"


class WillNotFit(TrialFailure):
    """The memory plan finds no setting under which the trial fits the device."""

    reason = "WillNotFit"


class Diverged(TrialFailure):
    """Training produced a non-finite loss or gradient."""

    reason = "Diverged"


class OutOfMemory(TrialFailure):
    """The device or host ran out of memory."""

    reason = "OutOfMemory"


def classify(err: BaseException) -> TrialFailure | None:
    """The failure a library error stands for, or None when it is not a known situation."""
    if isinstance(err, TrialFailure):
        return err
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        # torch.cuda.OutOfMemoryError; matched by name so this module needs no torch.
        return OutOfMemory(f"out of memory: {first_line(err)}; lower training.batchSize or maxSeqLength, or use LoRA")
    if isinstance(err, RuntimeError) and "can't allocate memory" in str(err):
        # The CPU allocator reports exhaustion as a plain RuntimeError.
        return OutOfMemory(f"host out of memory: {first_line(err)}")
    return None


def first_line(err: BaseException) -> str:
    """The first line of an error's message (library messages run to several lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# The dataset is the selection's, the same for every candidate: each of their trials would fail the same way.
DATASET_FAILURES = frozenset(
    cls.reason for cls in (DatasetNotFound, DatasetFieldMissing, BudgetExceedsDataset, SplitNotHeldOut)
)
# The user's input is wrong: the same spec fails the same way on every retry.
USER_ERRORS = DATASET_FAILURES | {cls.reason for cls in (InvalidSpec, ModelNotFound, WillNotFit)}


def exit_code(result: TrialResult) -> int:
    """0 on success; 2 when the input was wrong (spec, model, dataset, budget, memory); 3 out of
    memory; 4 diverged; 1 for any other failure.

    Kubernetes tells them apart (a Job's podFailurePolicy): a retry cannot fix 2, 3 or 4, which
    fail the Job at once, each with its own code; 1 (a bug, a transient fault) may not happen
    again on another node, so the Job retries it within its backoffLimit.
    """
    if result.status == "Succeeded":
        return 0
    if result.reason in USER_ERRORS:
        return EXIT_USAGE
    return {OutOfMemory.reason: EXIT_OUT_OF_MEMORY, Diverged.reason: EXIT_DIVERGED}.get(result.reason, EXIT_RUNTIME)
