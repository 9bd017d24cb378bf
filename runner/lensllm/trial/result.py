"""The trial result: the document one runner pod leaves behind, and its compact form.

The runner writes the full document to the result file (also after every subset size, so
an interrupted trial can resume) and a compact copy, at most 4096 bytes, to the Kubernetes
termination log. The operator parses either with `TrialResult.model_validate_json`, so
compaction only rounds, truncates and drops optional fields: the shape never changes.
Pure pydantic: no torch here.
"""

import json
import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import ConfigDict, Field, FiniteFloat

from lensllm import __version__
from lensllm.science.laws import NULL_MODE_TOLERANCE
from lensllm.trial.memory import MemoryPlan
from lensllm.trial.spec import TrialSpec, WireModel

Reason = Literal[
    "InvalidSpec",
    "ModelNotFound",
    "DatasetNotFound",
    "DatasetFieldMissing",
    "BudgetExceedsDataset",
    "TestSplitNotHeldOut",
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

    loss: FiniteFloat = Field(
        description="Mean cross-entropy per scored token, in nats (target tokens, or all tokens for text)."
    )
    loss_per_example: FiniteFloat = Field(
        description="Summed cross-entropy per example, in nats (comparable across tokenizers)."
    )
    bits_per_byte: FiniteFloat = Field(
        description="Summed cross-entropy in bits per UTF-8 byte of scored text (comparable across tokenizers)."
    )
    examples: int = Field(description="Test examples scored.")
    tokens: int = Field(description="Scored tokens.")
    seconds: float = Field(description="Wall time of the evaluation.")
    flops: float = Field(description="Estimated FLOPs: 2 x parameters x tokens processed.")
    padding_fraction: float | None = Field(
        default=None, description="Share of the token positions computed that were padding."
    )
    uniform_bits_per_byte: FiniteFloat | None = Field(
        default=None,
        description="What a uniform guess over the model's output vocabulary scores on the same tokens, in bits "
        "per byte: the loss of a model that knows nothing of the text.",
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
    """The empirical NTK at the pre-trained weights, reduced to what the LENSLLM law needs.

    A selection's status keeps it, so it ignores keys it does not know, as the status does (see StatusModel)."""

    model_config = ConfigDict(extra="ignore")

    n: int = Field(description="Probe examples (the Gram matrix is n x n).")
    eta: float = Field(description="Learning rate of the NTK dynamics F(t) = sum_k c_k^2 exp(-2 eta lambda_k t).")
    scope: str = Field(description="Parameters differentiated: all, lora or lastBlocks:k.")
    parameters: int = Field(description="Number of parameters in that scope.")
    method: str = Field(
        default="exact", description="exact (Gram of the gradients) or sketch:k (of their k-dimensional CountSketch)."
    )
    eigenvalues: list[float] = Field(
        description="Eigenvalues lambda_k of the Gram matrix, largest first; compact results keep the top modes and "
        "lump the rest into one decaying and one null mode, which keeps F(0) and F(inf) exact."
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
    train_examples: int | None = Field(
        default=None,
        description="Rows of the training split: a race fine-tunes on targetSize itself only if the split holds that many.",
    )
    test_rows_in_train: int | None = Field(
        default=None,
        description="Rows of the test split that are rows of the training split too (every field the spec reads "
        "equal, up to whitespace); the test sample is drawn from the others, so every test loss is of held-out rows.",
    )
    model_dir: str | None = Field(
        default=None, description="Where the model fine-tuned on targetSize was saved (spec output.modelDir)."
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
    flops: float | None = Field(
        default=None,
        description="Estimated FLOPs of every point and evaluation here; set by compaction when it leaves out "
        "the training stats of all but the largest point.",
    )

    def total_flops(self) -> float:
        """FLOPs of the fine-tuning and the evaluations this result holds."""
        if self.flops is not None:
            return self.flops
        evaluations = [p.test.flops for p in self.points] + ([self.zero_shot.flops] if self.zero_shot else [])
        return math.fsum([p.train.flops for p in self.points if p.train] + evaluations)

    def to_json(self) -> str:
        """The full document."""
        return self.model_dump_json(by_alias=True, indent=2)

    def to_termination_message(self, limit: int = TERMINATION_LIMIT) -> str:
        """Compact JSON of at most `limit` bytes that still validates as a `TrialResult`.

        This compact document is what the ranking is built from, on a cluster and in local
        mode alike, so every step keeps what the status and the ranking need exactly: every
        point with its bits per byte unrounded, and the NTK summary's F(0) and F(inf) (the
        law's bounds) to the last bit. Shrinks step by step, each step keeping the previous
        ones, and stops as soon as it fits: drop the memory plan, the spec echo and the trial's
        own law fits (the selection fits its laws itself), lump the NTK's small modes, keep only
        the total FLOPs and the largest point's training stats, round the other floats, shorten
        messages. Leaving out the oldest points is the very last resort; a selection's bounds on
        subset sizes keep it from ever being needed.
        """
        doc = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        for shrink in _SHRINKS:
            doc = shrink(doc)
            text = _compact(doc)
            if len(text.encode()) <= limit:
                return text
        return _compact(self._newest_points_that_fit(doc, limit))

    def _newest_points_that_fit(self, doc: dict[str, Any], limit: int) -> dict[str, Any]:
        """`doc` with as many of its newest points as fit in `limit` bytes, and a message saying how many went.
        A binary search over how many to keep: dropping them one by one re-serialised the document each time,
        minutes for a trial of thousands of sizes."""
        points = doc["points"]

        def keeping(n: int) -> dict[str, Any]:
            kept = {**doc, "points": points[len(points) - n:]}
            kept["message"] = _clip(f"{_dropped_note(self, kept)} {self.message or ''}".strip(), 256)
            return kept

        low, high = 0, len(points) - 1  # all of them did not fit
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if len(_compact(keeping(middle)).encode()) <= limit else (low, middle - 1)
        return keeping(low)


def _compact(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _dropped_note(result: TrialResult, doc: dict[str, Any]) -> str:
    return f"compact result: {len(result.points) - len(doc['points'])} oldest points left out, see the result file."


# What the ranking reads: never rounded (the NTK summary is left whole for the same reason).
_EXACT_KEYS = frozenset({"bitsPerByte", "ntk"})


def _round_floats(value: Any) -> Any:
    """Six significant digits: far below the noise of a test loss, a third of the bytes."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: v if k in _EXACT_KEYS else _round_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round_floats(v) for v in value]
    return value


def lumped_modes(eigenvalues: list[float], projections_sq: list[float], keep: int) -> tuple[list[float], list[float]]:
    """The spectrum with its `keep` largest modes and two lumped modes standing for the rest.

    The LENSLLM law uses the NTK through the bounds of F: F(0) = sum c_k^2 and F(inf), the
    energy of the modes the kernel never decays (eigenvalue <= NULL_MODE_TOLERANCE x the largest,
    as `NTKSpectrum.limit` counts them). Both survive exactly: the decaying modes past the
    first `keep` become one mode with their total energy at their energy-weighted mean
    eigenvalue, the null modes one mode of eigenvalue 0. F(t) in between stays close.
    """
    lam = [max(v, 0.0) for v in eigenvalues]
    top = max(lam, default=0.0)
    decaying = [(v, c) for v, c in zip(lam, projections_sq) if v > NULL_MODE_TOLERANCE * top]
    null = [c for v, c in zip(lam, projections_sq) if v <= NULL_MODE_TOLERANCE * top]
    if len(decaying) <= keep + 1 and len(null) <= 1:
        return list(eigenvalues), list(projections_sq)
    kept, rest = decaying[:keep], decaying[keep:]
    energy = math.fsum(c for _, c in rest)
    if rest:
        mean = math.fsum(v * c for v, c in rest) / energy if energy > 0 else math.fsum(v for v, _ in rest) / len(rest)
        kept.append((mean, energy))
    if null:
        kept.append((0.0, math.fsum(null)))
    return [v for v, _ in kept], [c for _, c in kept]


def _lumped(keep: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def shrink(doc: dict[str, Any]) -> dict[str, Any]:
        # Eigenvalues are stored largest first, so the head of both lists is the top modes.
        if "ntk" in doc:
            ntk = doc["ntk"]
            ntk["eigenvalues"], ntk["projectionsSq"] = lumped_modes(ntk["eigenvalues"], ntk["projectionsSq"], keep)
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


def _drop_fits(doc: dict[str, Any]) -> dict[str, Any]:
    doc["fits"] = []
    return doc


def _shorten_texts(doc: dict[str, Any]) -> dict[str, Any]:
    # The candidate is only an echo (the operator knows which candidate ran); the message is the news.
    for key, limit in (("message", 256), ("candidate", 64)):
        if key in doc:
            doc[key] = _clip(doc[key], limit)
    return doc


def _fold_training_stats(doc: dict[str, Any]) -> dict[str, Any]:
    """Keep the total FLOPs and the largest point's training stats (the full fine-tuning estimate scales it)."""
    doc["flops"] = TrialResult.model_validate(doc).total_flops()
    trained = [p for p in doc["points"] if "train" in p]
    for point in trained[:-1]:
        del point["train"]
    return doc


_SHRINKS: tuple[Callable[[dict[str, Any]], dict[str, Any]], ...] = (
    lambda doc: doc,
    _drop_plan,
    _drop_spec,
    _drop_fits,
    _lumped(8),
    _fold_training_stats,
    _round_floats,
    _shorten_texts,
    _lumped(1),
)
