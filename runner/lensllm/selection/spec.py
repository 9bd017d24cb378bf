"""`LLMSelection.spec`: the models the operator validates with and the CRD is generated from.

Dataset, training and NTK settings are the runner's own models (`lensllm.trial.spec`), so a
selection and the trials it spawns can never disagree on a field. Everything a Job carries is
checked here in the API server's own terms (`formats.py`), and the sizes are bounded so that a
selection's status stays far below the API server's object size limit (about 1.5 MB) and every
trial's compact result keeps all its points.
"""

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, FiniteFloat, StringConstraints, ValidationInfo, field_validator, model_validator

from lensllm.errors import LensLLMError
from lensllm.science.laws import MIN_FIT_POINTS
from lensllm.science.racing import MAX_COMPUTE_FRACTION, MIN_INITIAL_SIZES, RaceSettings
from lensllm.science.selectors import NTK_METHODS
from lensllm.selection.formats import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ENV_NAME,
    EXTENDED_RESOURCE,
    LABEL_LIMIT,
    LABEL_VALUE,
    QUANTITY,
    QUANTITY_LIMIT,
    SECRET_KEY,
    SUBDOMAIN_LIMIT,
)
from lensllm.selection.scheduling import Affinity, LabelKey, LabelValue, Toleration
from lensllm.trial.spec import NAME_LIMIT, CandidateSpec, DatasetSpec, NTKSpec, TrainingSpec, TrialSpec, WireModel

GROUP = "lensllm.io"
VERSION = "v1alpha1"
KIND = "LLMSelection"
PLURAL = "llmselections"
SHORT_NAME = "llmsel"

MethodName = Literal["zeroshot", "subtuning", "modelsize", "vanilla", "rectified", "ats", "lensllm", "default"]
MAX_CANDIDATE_NAME = 40  # leaves room in 63-character Job names for the selection name and a hash
# A status holds every candidate's points: 50 x 16 keeps it under a tenth of the object size limit,
# and 16 points always fit a trial's 4 KiB compact result (tests/selection/test_bounds.py).
MAX_CANDIDATES = 50
MAX_SUBSET_SIZES = 16
# Fields that decide what is measured: changing one after trials ran would mix incomparable
# results, so the CRD refuses the change (CEL) and the operator fails a selection whose spec
# changed anyway (on API servers that skip CEL). parallelism, suspend and the pod settings stay mutable.
IMMUTABLE_FIELDS = ("candidates", "dataset", "budget", "method", "seed", "training", "ntk", "strategy", "race")
# With the fixed strategy these decide nothing that is measured; leaving them out of the digest
# keeps the digests of selections started before they existed (an operator upgrade fails none).
RACE_ONLY_FIELDS = ("strategy", "race")
DEFAULT_RACE_LAWS = tuple(RaceSettings().laws)
# What every race ran with before these fields existed: left out of the digest at these values, so an
# upgraded operator finds those races unchanged.
RACE_VALUES_BEFORE_FIELDS = {"laws": list(DEFAULT_RACE_LAWS), "initialSizes": 4, "settle": False}
# Defaults that have changed, oldest first: what each field meant, when left out, to the releases before the
# change. The CRD declares no defaults, so the API server stores none: a selection that leaves a field out
# keeps the value it started with only because the operator finds it again from the digest in its status
# (with_defaults), and a change of default never changes, or fails, the work in flight.
EARLIER_DEFAULTS: tuple[dict[tuple[str, ...], object], ...] = (
    # until race.initialSizes existed (default 3)
    {("strategy",): "fixed", ("race", "initialSizes"): 4, ("budget", "maxComputeFraction"): 0.05, ("race", "settle"): False},
    # until race became the default strategy, uncapped by default
    {("strategy",): "fixed", ("budget", "maxComputeFraction"): 0.05, ("race", "settle"): False},
    # until race.settle existed (default true)
    {("race", "settle"): False},
)
# Variables the operator sets in every runner pod; spec.env may not override them.
RESERVED_ENV = frozenset({
    "LENSLLM_TRIAL_SPEC", "HF_HOME", "HF_TOKEN", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE", "PYTHONUNBUFFERED",
})

Quantity = Annotated[str, StringConstraints(pattern=QUANTITY, max_length=QUANTITY_LIMIT)]
ObjectName = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=SUBDOMAIN_LIMIT)]
ExtendedResourceName = Annotated[str, StringConstraints(pattern=EXTENDED_RESOURCE, max_length=NAME_LIMIT)]


class SpecError(LensLLMError):
    """A spec and the status or plan built from it do not fit together (e.g. an unknown candidate)."""


class Resources(WireModel):
    """Compute for one runner pod; GPUs, extended resources and memory are requested and limited alike."""

    cpu: Quantity | None = Field(default=None, description="CPU request, e.g. '4' or '3500m'.")
    memory: Quantity | None = Field(default=None, description="Memory request and limit, e.g. '32Gi'.")
    gpu: int | None = Field(default=None, ge=0, le=64, alias="nvidia.com/gpu", description="NVIDIA GPUs (request = limit).")
    extended: dict[ExtendedResourceName, int] = Field(
        default_factory=dict,
        max_length=16,
        description="Other extended resources (request = limit), e.g. {amd.com/gpu: 1, rdma/ib: 1}.",
    )
    shm_size: Quantity | None = Field(default=None, description="Size of the in-memory /dev/shm for data loaders (default 1Gi).")

    @field_validator("extended")
    @classmethod
    def _not_a_core_resource(cls, extended: dict[str, int]) -> dict[str, int]:
        for name, count in extended.items():
            if name == "nvidia.com/gpu":
                raise ValueError("give nvidia.com/gpu as resources.nvidia.com/gpu, not under extended")
            if count < 0:
                raise ValueError(f"{name}: a count must be >= 0, got {count}")
        return extended

    def merged(self, override: "Resources | None") -> "Resources":
        """These resources with every field `override` sets (extended resources merged by name)."""
        if override is None:
            return self
        changes = {name: getattr(override, name) for name in override.model_fields_set}
        changes["extended"] = {**self.extended, **override.extended}
        return self.model_copy(update=changes)

    @property
    def gpus(self) -> int:
        return gpus_in({"nvidia.com/gpu": self.gpu or 0, **self.extended})


def gpus_in(counts: Mapping[str, int]) -> int:
    """GPUs among a pod's resource counts: nvidia.com/gpu and every extended resource named <vendor>/gpu."""
    return sum(count for name, count in counts.items() if name.endswith("/gpu"))


class SelectionCandidate(CandidateSpec):
    """One model to evaluate, with a name unique within the selection."""

    name: str = Field(
        pattern=DNS_LABEL,
        max_length=MAX_CANDIDATE_NAME,
        description="Candidate name: a DNS label (lowercase letters, digits, '-'), at most 40 characters.",
    )
    resources: Resources | None = Field(default=None, description="Fields that override spec.resources for this candidate.")


class Budget(WireModel):
    """Subset sizes to fine-tune on, and the size to predict."""

    subset_sizes: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        min_length=MIN_FIT_POINTS,
        max_length=MAX_SUBSET_SIZES,
        description=f"Explicit subset sizes, strictly increasing ({MIN_FIT_POINTS} to {MAX_SUBSET_SIZES}: a law needs "
        f"{MIN_FIT_POINTS} points).",
    )
    base_size: int | None = Field(default=None, ge=1, description="Smallest subset when sizes are generated by doubling.")
    doublings: int | None = Field(
        default=None,
        ge=MIN_FIT_POINTS - 1,
        le=MAX_SUBSET_SIZES - 1,
        description="Sizes are baseSize x 2^0 .. 2^doublings.",
    )
    target_size: int = Field(ge=1, le=2**53, description="Training-set size to predict the loss at (usually the full dataset).")
    max_compute_fraction: FiniteFloat | None = Field(
        default=None,
        gt=0.0,
        le=MAX_COMPUTE_FRACTION,
        description="Strategy race: stop before a round would spend more than this fraction of fully fine-tuning "
        "every candidate on targetSize (subset size x parameters, summed over measured points). Without it a race's "
        "ladder spends at most what a fixed budget over the same sizes would, and a settling round (race.settle) adds "
        "its contenders' fine-tuning on targetSize.",
    )

    @model_validator(mode="after")
    def _one_way(self) -> "Budget":
        explicit = self.subset_sizes is not None
        generated = self.base_size is not None or self.doublings is not None
        if explicit == generated:
            raise ValueError("give either subsetSizes, or baseSize and doublings")
        if generated and (self.base_size is None or self.doublings is None):
            raise ValueError("baseSize and doublings go together")
        sizes = self.sizes
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"subset sizes must be strictly increasing, got {sizes}")
        if self.target_size < sizes[-1]:
            raise ValueError(f"targetSize {self.target_size} is below the largest subset size {sizes[-1]}")
        return self

    @property
    def sizes(self) -> list[int]:
        if self.subset_sizes is not None:
            return list(self.subset_sizes)
        return [self.base_size * 2**k for k in range(self.doublings + 1)]


class RaceSpec(WireModel):
    """How sure the race must be (strategy race): eliminate at P(best) < epsilon, stop at P(best) >= 1 - delta."""

    epsilon: FiniteFloat = Field(
        default=0.01, gt=0.0, le=0.5, description="Eliminate a candidate whose probability of being best falls below this."
    )
    delta: FiniteFloat = Field(
        default=0.05, gt=0.0, le=0.5, description="Stop once one candidate is best with probability >= 1 - delta."
    )
    initial_sizes: int = Field(
        default=RaceSettings().initial_sizes,
        ge=MIN_INITIAL_SIZES,
        le=MAX_SUBSET_SIZES,
        description="Subset sizes every candidate runs in round 0; each later round adds the next size for the "
        f"candidates still in the race. With {MIN_INITIAL_SIZES} the laws leave no residual, so round 0 ranks by a "
        "plain power law and eliminates only at P(best) < epsilon / 10; 4 ranks round 0 by the laws, at more compute "
        "(docs/benchmarks.md).",
    )
    laws: list[Literal["lensllm", "vanilla"]] = Field(
        default_factory=lambda: list(DEFAULT_RACE_LAWS),
        min_length=1,
        max_length=2,
        json_schema_extra={"x-kubernetes-list-type": "set"},  # the API server refuses a law named twice
        description="Laws the race may predict with; after each round it uses the one whose fits leave the smaller "
        "residual. [vanilla] for curves that level off soon after a flat start (docs/benchmarks.md: the LensBench "
        "tables, where the LENSLLM law misleads the race).",
    )

    settle: bool = Field(
        default=RaceSettings().settle,
        description="When the race would stop with its laws naming different best candidates, fine-tune each law's "
        "leader on targetSize itself and rank them by the loss measured there (stop: settled). Costs their full "
        "fine-tuning; skipped when the training split holds fewer than targetSize rows or budget.maxComputeFraction "
        "would not pay for it (docs/benchmarks.md).",
    )

    @field_validator("laws")
    @classmethod
    def _distinct(cls, laws: list[str]) -> list[str]:
        if len(set(laws)) != len(laws):
            raise ValueError(f"laws must be distinct, got {laws}")
        return laws


class RunnerSettings(WireModel):
    """The container image that runs trials."""

    image: str | None = Field(
        default=None,
        max_length=NAME_LIMIT,
        description="Runner image; defaults to the operator's runner image. Must be one the operator allows.",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(default=None, description="Image pull policy.")


class ModelCache(WireModel):
    """A PersistentVolumeClaim mounted as the Hugging Face cache (HF_HOME) at /cache/huggingface."""

    claim_name: ObjectName = Field(description="Name of the PersistentVolumeClaim.")
    read_only: bool = Field(
        default=True,
        description="Mount read-only (a pre-filled cache; the runner then works offline). A writable cache "
        "must be allowed by the operator (chart value runner.allowWritableModelCache).",
    )


class WorkVolume(WireModel):
    """A PersistentVolumeClaim for trial results: a trial killed after some sizes resumes after them."""

    claim_name: ObjectName = Field(description="Name of a ReadWriteMany (or ReadWriteOnce, single node) claim.")


class SecretKeyRef(WireModel):
    """A key of a Secret in the selection's namespace; the operator never reads it, the pod does."""

    name: ObjectName = Field(description="Secret name (one the operator allows: chart value runner.allowedTokenSecrets).")
    key: str = Field(default="token", pattern=SECRET_KEY, max_length=SUBDOMAIN_LIMIT, description="Key inside the Secret.")


class EnvVar(WireModel):
    """A plain environment variable of the runner container (proxies, HF_ENDPOINT, ...)."""

    name: str = Field(pattern=ENV_NAME, max_length=NAME_LIMIT, description="Variable name.")
    value: str = Field(default="", max_length=4096, description="Its value.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_ENV:
            raise ValueError(f"{name} is set by the operator and cannot be overridden")
        return name


class LocalObjectReference(WireModel):
    name: ObjectName = Field(description="Object name.")


class LLMSelectionSpec(WireModel):
    """Which candidate LLM will be best on this dataset after full fine-tuning?"""

    candidates: list[SelectionCandidate] = Field(min_length=1, max_length=MAX_CANDIDATES, description="Models to compare.")
    dataset: DatasetSpec = Field(description="The downstream task data.")
    budget: Budget = Field(description="Subset sizes to fine-tune on and the size to predict.")
    method: MethodName = Field(default="default", description="Selector that ranks the candidates (strategy fixed).")
    # race picks the best model more often than a fixed budget on every table we have, at a fifth of its
    # compute or less; a fixed budget ranks the losers better (docs/benchmarks.md).
    strategy: Literal["fixed", "race"] = Field(
        default="race",
        description="race (the default): rounds; after each, candidates that cannot be best (P(best) < race.epsilon) "
        "are eliminated and only the others run the next, larger sizes. fixed: every candidate runs every subset size "
        "in one round, ranked by method.",
    )
    race: RaceSpec = Field(default_factory=RaceSpec, description="Elimination and stopping thresholds of strategy race.")
    seed: int = Field(default=0, ge=0, description="Seed shared by every trial (same subsets for every candidate).")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Fine-tuning settings of every trial.")
    ntk: NTKSpec = Field(default_factory=NTKSpec, description="Empirical NTK settings of every trial.")
    resources: Resources = Field(default_factory=Resources, description="Default compute for each runner pod.")
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=32, description="Node labels runner pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations of runner pods (those the operator allows)."
    )
    affinity: Affinity | None = Field(default=None, description="Affinity of runner pods (core/v1 Affinity).")
    parallelism: int = Field(default=4, ge=1, description="How many trial Jobs may run at once.")
    max_failed_candidates: int = Field(default=0, ge=0, description="Candidates that may fail before the selection fails.")
    runner: RunnerSettings = Field(default_factory=RunnerSettings, description="Runner image settings.")
    model_cache: ModelCache | None = Field(default=None, description="Shared Hugging Face cache volume.")
    work_volume: WorkVolume | None = Field(
        default=None,
        description="Persistent volume for trial results, so an interrupted trial resumes where it stopped, and for "
        "the models fine-tuned on targetSize (a race's settling round; size the claim for them); without it a "
        "writable modelCache claim serves, else every attempt starts afresh and no model is kept.",
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(default=None, description="Secret key passed to runners as HF_TOKEN.")
    env: list[EnvVar] = Field(default_factory=list, max_length=64, description="Extra environment of runner containers.")
    priority_class_name: ObjectName | None = Field(default=None, description="PriorityClass of runner pods.")
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Secrets to pull the runner image with."
    )
    queue: str | None = Field(
        default=None,
        min_length=1,
        max_length=LABEL_LIMIT,
        pattern=LABEL_VALUE,
        description="Kueue LocalQueue; set as the kueue.x-k8s.io/queue-name label on Jobs.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Deadline of each trial Job (in local mode, of each trial process)."
    )
    pending_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Fail a candidate whose trial has not started this long after its newest pod (else its Job) "
        "was created: a replacement pod after an eviction waits anew, a Job Kueue holds waits until Kueue admits "
        "it or calls it inadmissible (or, when Kueue makes no Workload for it, from its creation); defaults to the "
        "operator's setting.",
    )
    backoff_limit: int = Field(
        default=1, ge=0, le=20,
        description="Retries of a trial pod that failed (disruptions do not count; in local mode, of the trial process).",
    )
    suspend: bool = Field(
        default=False, description="Create no new trial Jobs while true (local mode refuses to run a suspended selection)."
    )

    @classmethod
    def from_wire(cls, raw: object, *, started: bool = False) -> "LLMSelectionSpec":
        """The spec validated strictly, as the CRD's types are (nothing coerced); `started`: the spec of work that
        already ran, which checks added since do not refuse."""
        return cls.model_validate(raw, strict=True, context={"started": started})

    @field_validator("candidates")
    @classmethod
    def _unique_names(cls, candidates: list[SelectionCandidate]) -> list[SelectionCandidate]:
        seen: set[str] = set()
        for candidate in candidates:
            if candidate.name in seen:
                raise ValueError(f"candidate name {candidate.name!r} is used twice")
            seen.add(candidate.name)
        return candidates

    @model_validator(mode="after")
    def _ntk_scope_fits_training(self) -> "LLMSelectionSpec":
        if self.trial_ntk.enabled and self.ntk.scope == "lora" and self.training.method != "lora":
            raise ValueError("ntk.scope lora needs training.method lora")
        return self

    @model_validator(mode="after")
    def _race_can_run(self, info: ValidationInfo) -> "LLMSelectionSpec":
        if self.strategy != "race":
            return self
        sizes, first = self.budget.sizes, self.race.initial_sizes
        if len(sizes) < first:
            raise ValueError(
                f"budget: strategy race needs at least race.initialSizes = {first} subset sizes "
                f"(round 0 runs that many), got {len(sizes)}"
            )
        cap, round_zero = self.budget.max_compute_fraction, sum(sizes[:first]) / self.budget.target_size
        # Work started before this check keeps its spec (from_wire started): such a race stopped after round 0.
        if cap is not None and len(sizes) > first and round_zero >= cap and not (info.context or {}).get("started"):
            raise ValueError(
                f"budget.maxComputeFraction: {cap:g} is spent by round 0 alone (sizes {', '.join(map(str, sizes[:first]))} "
                f"cost {round_zero:.3g} of fine-tuning every candidate on targetSize {self.budget.target_size}), so the "
                "race could never run a larger size: raise it, leave it out, or start from smaller sizes"
            )
        return self

    def race_settings(self) -> RaceSettings:
        return RaceSettings(
            epsilon=self.race.epsilon, delta=self.race.delta, max_compute_fraction=self.budget.max_compute_fraction,
            laws=tuple(self.race.laws), initial_sizes=self.race.initial_sizes, settle=self.race.settle,
        )

    @property
    def trial_ntk(self) -> NTKSpec:
        """The NTK settings of every trial: measured when asked for, else only if the method uses it."""
        if self.ntk.enabled is not None:
            return self.ntk
        return self.ntk.model_copy(update={"enabled": self.method in NTK_METHODS})

    def candidate(self, name: str) -> SelectionCandidate:
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise SpecError(f"candidate {name!r} is not in spec.candidates")

    def trial_spec(self, name: str, sizes: list[int], round: int = 0) -> TrialSpec:
        """The runner's spec for one trial of candidate `name` on `sizes`; rounds after the first measure neither
        the NTK nor the zero-shot loss (round 0 did, on the same model and test set)."""
        candidate = self.candidate(name)
        ntk = self.trial_ntk if round == 0 else self.ntk.model_copy(update={"enabled": False})
        return TrialSpec(
            candidate=CandidateSpec.model_validate(candidate.model_dump(include=set(CandidateSpec.model_fields))),
            dataset=self.dataset,
            subset_sizes=sizes,
            target_size=self.budget.target_size,
            seed=self.seed,
            training=self.training,
            ntk=ntk,
            measure_zero_shot=round == 0,
            # The trial's own fits use the metric the selection ranks by: comparable across tokenizers.
            fit_metric="bitsPerByte",
        )

    def resources_for(self, name: str) -> Resources:
        return self.resources.merged(self.candidate(name).resources)

    def digest(self) -> str:
        """A fingerprint of the fields that may not change once a selection started (IMMUTABLE_FIELDS)."""
        fields = self.model_dump(mode="json", by_alias=True, include=set(IMMUTABLE_FIELDS))
        if self.strategy == "fixed":
            for name in RACE_ONLY_FIELDS:
                fields.pop(name)
            fields["budget"].pop("maxComputeFraction")
        else:
            for name, before in RACE_VALUES_BEFORE_FIELDS.items():
                if fields["race"][name] == before:
                    fields["race"].pop(name)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def with_defaults(raw: dict, defaults: dict[tuple[str, ...], object]) -> dict:
    """A copy of the raw spec `raw` in which every field of `defaults` it leaves out has that value."""
    filled = copy.deepcopy(raw)
    for (*parents, leaf), value in defaults.items():
        node: object = filled
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(node, dict) else None
        if isinstance(node, dict):  # else not an object, which validation refuses by name
            node.setdefault(leaf, value)
    return filled
