"""The trial result: the document one runner pod leaves behind, and its compact form.

The runner writes the full document to the result file (also after every subset size, so
an interrupted trial can resume) and a compact copy, at most 4096 bytes, to the Kubernetes
termination log. The operator parses either with `TrialResult.model_validate_json`, so
compaction only rounds, truncates and drops optional fields: the shape never changes.
Pure pydantic: no torch here.
"""

import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from lensllm import __version__
from lensllm.trial.memory import MemoryPlan
from lensllm.trial.spec import TrialSpec, WireModel

Reason = Literal[
    "InvalidSpec",
    "ModelNotFound",
    "DatasetNotFound",
    "DatasetFieldMissing",
    "BudgetExceedsDataset",
    "WillNotFit",
    "Diverged",
    "OutOfMemory",
    "InternalError",
]
Status = Literal["Running", "Succeeded", "Failed"]
Method = Literal["vanilla", "rectified", "ats", "lensllm", "default"]
METHODS: tuple[Method, ...] = ("vanilla", "rectified", "ats", "lensllm", "default")
TERMINATION_LIMIT = 4096


class Evaluation(WireModel):
    """Test-set loss of the model at one point (zero-shot or after fine-tuning)."""

    loss: float = Field(
        description="Mean cross-entropy per scored token, in nats (target tokens, or all tokens for text)."
    )
    loss_per_example: float = Field(
        description="Summed cross-entropy per example, in nats (comparable across tokenizers)."
    )
    bits_per_byte: float = Field(
        description="Summed cross-entropy in bits per UTF-8 byte of scored text (comparable across tokenizers)."
    )
    examples: int = Field(description="Test examples scored.")
    tokens: int = Field(description="Scored tokens.")
    seconds: float = Field(description="Wall time of the evaluation.")
    flops: float = Field(description="Estimated FLOPs: 2 x parameters x tokens processed.")
    padding_fraction: float | None = Field(
        default=None, description="Share of the token positions computed that were padding."
    )


class TrainingStats(WireModel):
    """What fine-tuning on one subset cost."""

    steps: int = Field(description="Optimizer steps taken.")
    tokens: int = Field(description="Tokens processed in training, all epochs (prompt and target, no padding).")
    final_loss: float = Field(description="Mean training loss over the last epoch, in nats per scored token.")
    seconds: float = Field(description="Wall time of the fine-tuning.")
    flops: float = Field(
        description="Estimated FLOPs: about 6 x parameters x tokens (4x frozen + 6x trainable with LoRA)."
    )
    padding_fraction: float | None = Field(
        default=None, description="Share of the token positions computed that were padding."
    )


class SizePoint(WireModel):
    """One point of the learning curve."""

    size: int = Field(description="Training subset size.")
    test: Evaluation = Field(description="Test loss after fine-tuning on the subset.")
    train: TrainingStats | None = Field(
        default=None, description="Fine-tuning cost (left out of compact results when space is short)."
    )


class NTKSummary(WireModel):
    """The empirical NTK at the pre-trained weights, reduced to what the LENSLLM law needs."""

    n: int = Field(description="Probe examples (the Gram matrix is n x n).")
    eta: float = Field(description="Learning rate of the NTK dynamics F(t) = sum_k c_k^2 exp(-2 eta lambda_k t).")
    scope: str = Field(description="Parameters differentiated: all, lora or lastBlocks:k.")
    parameters: int = Field(description="Number of parameters in that scope.")
    method: str = Field(
        default="exact", description="exact (Gram of the gradients) or sketch:k (of their k-dimensional CountSketch)."
    )
    eigenvalues: list[float] = Field(
        description="Eigenvalues lambda_k of the Gram matrix, largest first (top ones only in compact results)."
    )
    projections_sq: list[float] = Field(
        description="Squared projections c_k^2 of the initial residual on each eigenvector, same order."
    )
    residual_norm_sq: float = Field(
        description="||r0||^2 = F(0): squared norm of the initial residuals (per-example losses against 0)."
    )
    seconds: float = Field(description="Wall time of the NTK computation.")


class LawFit(WireModel):
    """One law fitted to the curve and its prediction at the target size."""

    method: Method = Field(description="Selection method (law) name.")
    predicted_loss: float | None = Field(
        default=None, description="Predicted test loss at targetSize; absent when the fit failed."
    )
    params: dict[str, float] = Field(default_factory=dict, description="Fitted parameters.")
    warning: str | None = Field(default=None, description="A valid but suspicious fit, e.g. a parameter on its bound.")
    error: str | None = Field(default=None, description="Why the law could not be fitted (e.g. fewer than 3 points).")


class Resources(WireModel):
    """Where the trial ran and what it held."""

    device: str = Field(description="Device the model ran on, e.g. cpu or cuda:0 (NVIDIA H100).")
    dtype: str = Field(description="Weight dtype.")
    parameters: int = Field(description="Parameters of the model (adapters included).")
    trainable_parameters: int = Field(description="Parameters updated by fine-tuning.")
    peak_memory_bytes: int = Field(
        description="Peak memory: CUDA allocated on a GPU, else the process's peak resident set."
    )
    peak_memory_kind: Literal["cudaAllocated", "processRss"] = Field(description="What peakMemoryBytes measures.")


class TrialResult(WireModel):
    """Everything one trial produced; also the partial document of a running or failed trial."""

    runner_version: str = Field(default=__version__, description="lensllm version that produced the result.")
    status: Status = Field(description="Running (partial document), Succeeded or Failed.")
    reason: Reason | None = Field(default=None, description="Machine-readable failure reason.")
    message: str | None = Field(default=None, description="One-line failure message.")
    candidate: str | None = Field(default=None, description="The candidate model (spec candidate.model).")
    target_size: int | None = Field(default=None, description="Size the laws predict the loss at.")
    spec: TrialSpec | None = Field(
        default=None, description="The spec the trial ran (left out of compact results when space is short)."
    )
    zero_shot: Evaluation | None = Field(default=None, description="Test loss before fine-tuning.")
    points: list[SizePoint] = Field(default_factory=list, description="Learning-curve points, by increasing size.")
    ntk: NTKSummary | None = Field(default=None, description="Empirical NTK summary.")
    fits: list[LawFit] = Field(default_factory=list, description="Law fits and predictions, one per method.")
    resources: Resources | None = Field(default=None, description="Device and memory.")
    plan: MemoryPlan | None = Field(
        default=None, description="The memory plan the trial ran (left out of compact results first)."
    )
    seconds: float = Field(default=0.0, description="Wall time of this attempt.")

    def to_json(self) -> str:
        """The full document."""
        return self.model_dump_json(by_alias=True, indent=2)

    def to_termination_message(self, limit: int = TERMINATION_LIMIT) -> str:
        """Compact JSON of at most `limit` bytes that still validates as a `TrialResult`.

        Shrinks step by step, each step keeping the previous ones, and stops as soon as it
        fits: round floats, keep the top NTK modes, drop the spec echo, the fit parameters,
        the training stats, shorten messages, and last of all leave out the oldest points.
        """
        doc = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        for shrink in _SHRINKS:
            doc = shrink(doc)
            text = _compact(doc)
            if len(text.encode()) <= limit:
                return text
        while doc["points"] and len(_compact(doc).encode()) > limit:
            doc["points"].pop(0)
            doc["message"] = _clip(f"{_dropped_note(self, doc)} {self.message or ''}".strip(), 256)
        return _compact(doc)


def _compact(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _dropped_note(result: TrialResult, doc: dict[str, Any]) -> str:
    return f"compact result: {len(result.points) - len(doc['points'])} oldest points left out, see the result file."


def _round_floats(value: Any) -> Any:
    """Six significant digits: far below the noise of a test loss, a third of the bytes."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _round_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round_floats(v) for v in value]
    return value


def _top_modes(k: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def shrink(doc: dict[str, Any]) -> dict[str, Any]:
        # Eigenvalues are stored largest first, so the head of both lists is the top-k modes.
        if "ntk" in doc:
            doc["ntk"]["eigenvalues"] = doc["ntk"]["eigenvalues"][:k]
            doc["ntk"]["projectionsSq"] = doc["ntk"]["projectionsSq"][:k]
        return doc

    return shrink


def _drop_plan(doc: dict[str, Any]) -> dict[str, Any]:
    doc.pop("plan", None)
    for evaluation in [doc.get("zeroShot"), *(p["test"] for p in doc["points"])]:
        if evaluation:
            evaluation.pop("paddingFraction", None)
    return doc


def _drop_spec(doc: dict[str, Any]) -> dict[str, Any]:
    doc.pop("spec", None)
    return doc


def _drop_fit_details(doc: dict[str, Any]) -> dict[str, Any]:
    for fit in doc["fits"]:
        fit.pop("params", None)
        fit.pop("warning", None)
        if "error" in fit:
            fit["error"] = _clip(fit["error"], 80)
    return doc


def _drop_training_stats(doc: dict[str, Any]) -> dict[str, Any]:
    for point in doc["points"]:
        point.pop("train", None)
    return doc


def _shorten_texts(doc: dict[str, Any]) -> dict[str, Any]:
    for key in ("message", "candidate"):
        if key in doc:
            doc[key] = _clip(doc[key], 256)
    return doc


_SHRINKS: tuple[Callable[[dict[str, Any]], dict[str, Any]], ...] = (
    lambda doc: doc,
    _round_floats,
    _drop_plan,
    _top_modes(8),
    _drop_spec,
    _drop_fit_details,
    _drop_training_stats,
    _shorten_texts,
    _top_modes(1),
)
