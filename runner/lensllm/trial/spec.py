"""The trial spec: what one runner pod is asked to do for one candidate model.

`lensllm run-trial` reads it from a YAML/JSON file; the operator fills the same models
from an `LLMSelection` custom resource and generates the CRD's OpenAPI schema from them,
which is why every field has a description, a camelCase alias, `extra="forbid"` and only
plain JSON types (Literal enums, numbers, strings, lists). Pure pydantic: no torch here.
"""

from itertools import pairwise
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StringConstraints, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel


# Bounds on free text: an LLMSelection's CEL rules compare these fields, and a real API server refuses a
# CRD whose rules could cost too much on unbounded strings.
NAME_LIMIT = 512
TEMPLATE_LIMIT = 4096
# Each size is a fine-tune from the pre-trained weights: far more than any learning curve needs (a selection
# allows 16), and a bound on what one spec can make a GPU do.
MAX_TRIAL_SIZES = 64


class WireModel(BaseModel):
    """Shared by spec and result: camelCase on the wire, snake_case in Python, unknown keys rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class CandidateSpec(WireModel):
    """The pre-trained model to fine-tune."""

    model: str = Field(
        min_length=1,
        max_length=NAME_LIMIT, description="Hugging Face hub id (org/name) or a local directory saved with save_pretrained."
    )
    revision: str | None = Field(
        default=None, max_length=NAME_LIMIT, description="Hub revision (branch, tag or commit); ignored for local directories."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weight dtype; auto picks bfloat16 on a GPU that supports it, else float32."
    )
    gguf_file: str | None = Field(
        default=None,
        max_length=NAME_LIMIT, description="File name of a GGUF checkpoint inside `model`; its weights are de-quantised on load."
    )


class DatasetSpec(WireModel):
    """The downstream task: a train split to draw subsets from and a test split to score on."""

    source: str = Field(
        min_length=1,
        max_length=NAME_LIMIT,
        description="Hub dataset name, a local data file (.json, .jsonl, .csv, .parquet, .txt) or a local "
        "directory of such files (split names come from the file names, e.g. train.jsonl, test.jsonl). Every row a "
        "trial draws needs a value in each column named below (numbers are read as text; a null, missing or nested "
        "value fails the trial as DatasetFieldMissing, naming the row).",
    )
    config: str | None = Field(
        default=None, max_length=NAME_LIMIT, description="Dataset configuration name, for hub datasets that have several."
    )
    revision: str | None = Field(
        default=None,
        max_length=NAME_LIMIT,
        description="Hub dataset revision (branch, tag or commit); pin one so every trial reads the same data.",
    )
    train_split: str = Field(
        max_length=NAME_LIMIT,
        default="train", description="Split to draw the training subsets from; slices such as train[:90%] work."
    )
    test_split: str = Field(
        max_length=NAME_LIMIT,
        default="test",
        description="Split to measure test loss on, not the trainSplit; slices of one split such as train[90%:] work.",
    )
    text_field: str | None = Field(
        default=None,
        max_length=NAME_LIMIT, description="Column of plain text for language modelling (loss on all tokens)."
    )
    input_field: str | None = Field(
        default=None,
        max_length=NAME_LIMIT, description="Column of task inputs (with targetField; loss on target tokens only)."
    )
    target_field: str | None = Field(default=None, max_length=NAME_LIMIT, description="Column of task targets (with inputField).")
    prompt_template: str = Field(
        default="{input}\n",
        max_length=TEMPLATE_LIMIT, description="Prompt built from the input; {input} is replaced by the input column's text."
    )
    max_test_examples: int = Field(
        default=256, ge=1, description="Test examples to score (a seeded sample when the split is larger)."
    )

    @field_validator("prompt_template")
    @classmethod
    def _template_has_input(cls, value: str) -> str:
        if "{input}" not in value:
            raise ValueError("must contain {input}")
        return value

    @model_validator(mode="after")
    def _one_task_kind(self) -> "DatasetSpec":
        pair = (self.input_field, self.target_field)
        if self.text_field is not None and any(f is not None for f in pair):
            raise ValueError("give either textField or inputField + targetField, not both")
        if self.text_field is None and None in pair:
            raise ValueError("give textField, or both inputField and targetField")
        return self

    @model_validator(mode="after")
    def _test_split_is_held_out(self) -> "DatasetSpec":
        if self.test_split == self.train_split:
            # The test loss would score examples the subsets train on: memorising would look like generalising.
            raise ValueError(f"testSplit {self.test_split!r} is the trainSplit too; give a held-out split, or slices "
                             "of one split such as train[:90%] and train[90%:]")
        return self

    @property
    def is_text(self) -> bool:
        return self.text_field is not None

    @property
    def scored_field(self) -> tuple[str, str]:
        """The spec key and the column of the text the loss scores: textField, else targetField."""
        return ("textField", self.text_field) if self.is_text else ("targetField", self.target_field)


class LoraSpec(WireModel):
    """Low-rank adapters (peft LoRA), used when training.method is lora."""

    r: int = Field(default=8, ge=1, description="Adapter rank.")
    alpha: FiniteFloat = Field(default=16.0, gt=0, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: FiniteFloat = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[Annotated[str, StringConstraints(max_length=NAME_LIMIT)]] = Field(
        default_factory=list,
        max_length=64, description="Module names to adapt; empty means every linear layer but the output head."
    )


class TrainingSpec(WireModel):
    """How each subset is fine-tuned: AdamW with linear warmup and decay, one fresh start per size."""

    method: Literal["full", "lora"] = Field(
        default="full", description="Fine-tune every weight, or LoRA adapters only."
    )
    learning_rate: FiniteFloat = Field(default=1e-4, gt=0, description="Peak AdamW learning rate.")
    epochs: int = Field(default=1, ge=1, description="Passes over each subset.")
    batch_size: int = Field(
        default=8,
        ge=1,
        description="Examples per forward pass; the optimizer step takes batchSize x gradientAccumulation examples.",
    )
    gradient_accumulation: int = Field(default=1, ge=1, description="Forward passes per optimizer step.")
    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Examples per forward pass when the memory plan must split batchSize (gradients accumulate, "
        "the step keeps batchSize x gradientAccumulation examples); default: the largest that fits.",
    )
    max_seq_length: int = Field(
        default=512, ge=4, description="Longest tokenised example; prompts are cut from the left first."
    )
    warmup_ratio: FiniteFloat = Field(
        default=0.0, ge=0, le=1, description="Fraction of the steps spent warming the learning rate up from 0."
    )
    weight_decay: FiniteFloat = Field(default=0.0, ge=0, description="AdamW decoupled weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient norm clipping threshold.")
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Recompute activations in backward to save memory; default: only when the memory plan needs it.",
    )
    compile: bool = Field(
        default=False, description="torch.compile the model's transformer body (CUDA; pays off on long trials)."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="Adapter settings (used when method is lora).")


class NTKSpec(WireModel):
    """The empirical NTK summary the LENSLLM law uses, measured at the pre-trained weights."""

    enabled: bool | None = Field(
        default=None,
        description="Measure the NTK. Unset: a selection measures it only when its method uses it (lensllm), since "
        "on LensBench it did not improve predictions (docs/benchmarks.md); a trial spec run on its own measures it.",
    )
    probe_size: int = Field(
        default=32,
        ge=1,
        description="Probe examples n (the first n of the seeded training order); the Gram matrix is n x n.",
    )
    eta: FiniteFloat | None = Field(
        default=None, gt=0, description="Learning rate of the NTK dynamics; defaults to training.learningRate."
    )
    scope: Literal["auto", "all", "lora", "lastBlocks"] = Field(
        default="auto",
        description="Parameters the kernel differentiates: all, the LoRA adapters, or the last blocks; "
        "auto follows training.method (lora for LoRA, all for full fine-tuning).",
    )
    last_blocks: int = Field(default=1, ge=1, description="How many final transformer blocks scope lastBlocks covers.")
    method: Literal["auto", "exact", "sketch"] = Field(
        default="auto",
        description="exact: the Gram matrix of per-example gradients, accumulated over parameter chunks within "
        "maxResidentBytes; sketch: the Gram matrix of their seeded CountSketches of sketchDim numbers (unbiased; "
        "entry ij has a standard deviation of at most sqrt(2 / sketchDim) x sqrt(G_ii G_jj)); "
        "auto: exact when the probe's gradients fit the device at once, else sketch.",
    )
    sketch_dim: int = Field(default=65536, ge=64, description="Numbers per example in the sketch (method sketch).")
    max_resident_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Device bytes the exact method may hold in per-example gradients at once; "
        "default: what the memory plan leaves free.",
    )


class OutputSpec(WireModel):
    """Where the result goes; command-line flags override these."""

    result_path: str | None = Field(
        default=None, description="File for the full result document (also rewritten after each size)."
    )
    termination_log_path: str | None = Field(
        default=None,
        description="File for the compact result (<= 4096 bytes); defaults to /dev/termination-log when it exists.",
    )
    model_dir: str | None = Field(
        default=None,
        description="Folder to save the model fine-tuned on targetSize in, when the trial runs that size (a race's "
        "settling round): the weights, or a LoRA trial's adapter, with the tokenizer, as save_pretrained writes them. "
        "A folder that cannot be written loses the weights, not the trial.",
    )


class TrialSpec(WireModel):
    """One candidate's learning-curve trial: fine-tune on nested subsets, fit the laws, predict at targetSize."""

    candidate: CandidateSpec = Field(description="The pre-trained model.")
    dataset: DatasetSpec = Field(description="The downstream task data.")
    subset_sizes: list[int] = Field(
        min_length=1,
        max_length=MAX_TRIAL_SIZES,
        description="Training subset sizes, strictly increasing; each subset contains the smaller ones.",
    )
    target_size: int = Field(
        ge=1, description="Training-set size whose loss the laws predict (usually the full dataset)."
    )
    seed: int = Field(default=0, ge=0, description="Seed for subset draws, data order, adapter init and dropout.")
    fit_metric: Literal["loss", "lossPerExample", "bitsPerByte"] = Field(
        default="loss",
        description="Test metric the laws are fitted to: mean token loss as in the papers, or lossPerExample / "
        "bitsPerByte, which stay comparable between candidates with different tokenizers.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where to run; auto takes a CUDA device when one is visible."
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Fine-tuning settings.")
    ntk: NTKSpec = Field(default_factory=NTKSpec, description="Empirical NTK settings.")
    measure_zero_shot: bool = Field(
        default=True,
        description="Measure the test loss before fine-tuning. A race's later rounds skip it: the candidate's first "
        "trial measured it on the same model and test set. Without it the trial's own fits see the fine-tuned points "
        "alone.",
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="Output locations.")

    @field_validator("subset_sizes")
    @classmethod
    def _sizes_increase(cls, sizes: list[int]) -> list[int]:
        if sizes[0] < 1:
            raise ValueError(f"sizes must be >= 1, got {sizes}")
        if any(b <= a for a, b in pairwise(sizes)):
            raise ValueError(f"sizes must be strictly increasing, got {sizes}")
        return sizes

    @model_validator(mode="after")
    def _consistent(self) -> "TrialSpec":
        if self.ntk.enabled is None:  # nothing decided for it: a lone trial measures everything its fits can use
            self.ntk = self.ntk.model_copy(update={"enabled": True})
        if self.target_size < self.subset_sizes[-1]:
            raise ValueError(f"targetSize {self.target_size} is below the largest subset size {self.subset_sizes[-1]}")
        if self.ntk.enabled and self.ntk.scope == "lora" and self.training.method != "lora":
            raise ValueError("ntk.scope lora needs training.method lora")
        return self

    @property
    def ntk_eta(self) -> float:
        return self.ntk.eta if self.ntk.eta is not None else self.training.learning_rate

    @property
    def ntk_scope(self) -> str:
        """The NTK scope, with auto resolved by the training method."""
        if self.ntk.scope != "auto":
            return self.ntk.scope
        return "lora" if self.training.method == "lora" else "all"


def validation_message(err: ValidationError, under: str = "") -> str:
    """One line naming the first offending field by its spec (camelCase) path, below `under` (e.g. status) if given."""
    errors = err.errors()
    first = errors[0]
    # Our own validators word their message around the field names; pydantic prefixes it.
    text = first["msg"].removeprefix("Value error, ")
    where = ".".join(str(part) for part in (under, *first["loc"]) if part != "")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {text}{more}" if where else f"{text}{more}"
