"""The trial recipe: one candidate, zero-shot loss, NTK, a fine-tune per subset size, law fits.

Shaped like a torchtune recipe: `__init__(spec)` reads every setting, `setup()` builds the
model and data, `train()` is the whole training loop in one place, `cleanup()` frees the
device. `run_trial` is the entry point `lensllm run-trial` calls; it turns every failure
into a Failed result with its reason, keeping the points already measured.
"""

import gc
import math
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import datasets
import torch
import transformers

from lensllm.trial import memory
from lensllm.trial.data import load_task_rows
from lensllm.trial.examples import Batch, Example, encode_rows, length_grouped, make_batch, token_budget_batches
from lensllm.trial.failures import Diverged, InvalidSpec, ModelNotFound, OutOfMemory, WillNotFit, classify, first_line
from lensllm.trial.fits import fit_all
from lensllm.trial.losses import backward_losses, token_losses
from lensllm.trial.memory import EVAL_MAX_EXAMPLES, Device, MemoryPlan, PlanError, plan_trial, unplanned
from lensllm.trial.model_files import count_parameters, host_memory_bytes, read_config
from lensllm.trial.modeling import (
    apply_lora,
    check_tokenizer_reads,
    choose_device,
    choose_dtype,
    compile_body_,
    describe,
    enable_gradient_checkpointing_,
    evaluation_flops,
    load_model,
    load_tokenizer,
    parameter_counts,
    peak_memory,
    restore_,
    snapshot,
    training_flops,
)
from lensllm.trial.ntk import measure_kernel, scoped_parameters, spectrum
from lensllm.trial.optim import adamw, fp32_masters, grads_to_masters_, linear_warmup_then_decay, masters_to_weights_
from lensllm.trial.result import Evaluation, NTKSummary, Resources, SizePoint, TrainingStats, TrialResult
from lensllm.trial.spec import TrialSpec

Progress = Callable[[dict], None]
Checkpoint = Callable[[TrialResult], None]
# Spec fields a resumed trial may change: where results go and which sizes to run or predict.
RESUMABLE_CHANGES = {"output", "subset_sizes", "target_size"}


class TrialRecipe:
    """Fine-tune one candidate on nested subsets and measure its learning curve."""

    def __init__(
        self,
        spec: TrialSpec,
        *,
        resume: TrialResult | None = None,
        on_progress: Progress | None = None,
        on_checkpoint: Checkpoint | None = None,
        device_memory: int | None = None,
    ) -> None:
        self.spec = spec
        self.sizes = spec.subset_sizes
        self.seed = spec.seed
        training = spec.training
        self.method = training.method
        self.learning_rate = training.learning_rate
        self.epochs = training.epochs
        self.batch_size = training.batch_size
        self.accumulation = training.gradient_accumulation
        self.max_length = training.max_seq_length
        self.warmup_ratio = training.warmup_ratio
        self.weight_decay = training.weight_decay
        self.max_grad_norm = training.max_grad_norm
        self.ntk = spec.ntk
        self.device = choose_device(spec.device)  # fails fast on device: cuda without a GPU
        self.dtype = choose_dtype(spec.candidate.dtype, self.device)
        self.device_memory = device_memory or _device_memory(self.device)
        self.on_progress = on_progress or (lambda event: None)
        self.on_checkpoint = on_checkpoint or (lambda result: None)
        self.result = _start_result(spec, resume)

    def setup(self) -> None:
        """Data and tokenizer first (cheap to get wrong), then the memory plan, then the weights, once."""
        self.setup_data()
        self.setup_model(load_model(self.spec.candidate, dtype=self.dtype, device=self.device))

    def setup_data(self) -> None:
        """Tokenizer, training and test examples, and the memory plan for them (WillNotFit before any weights)."""
        rows = load_task_rows(self.spec.dataset, need_train=self._train_examples_needed(), seed=self.seed)
        self.result.train_examples, self.result.test_rows_in_train = rows.train_split_size, rows.test_rows_in_train
        if rows.test_rows_in_train:
            self.on_progress({"event": "testRowsInTrain", "rows": rows.test_rows_in_train})
        self.tokenizer = load_tokenizer(self.spec.candidate)
        key, column = self.spec.dataset.scored_field
        check_tokenizer_reads(self.tokenizer, self.spec.candidate, [row.scored for row in rows.test],
                              f"dataset.{key} {column!r} (test split {self.spec.dataset.test_split!r})")
        config = read_config(self.spec.candidate)  # once: for a GGUF or hub model, each read parses or fetches it
        self.seq2seq = bool(config.get("is_encoder_decoder"))
        if self.seq2seq and self.spec.dataset.is_text:
            raise InvalidSpec("dataset.textField: an encoder-decoder model needs inputField and targetField")
        self.train_examples: list[Example] = self._encode(rows.train)
        self.test_examples: list[Example] = self._encode(rows.test)
        self._check_token_ids(config.get("vocab_size"))
        self.plan = self._plan(config)

    def setup_model(self, model) -> None:
        """Adapters, checkpointing and compilation as planned; snapshot the starting weights.

        The benchmark hands in a randomly initialised model here; trials load the candidate's weights.
        """
        self.model = model
        torch.manual_seed(self.seed)  # LoRA adapter init
        if self.method == "lora":
            self.model = apply_lora(self.model, self.spec.training.lora, seq2seq=self.seq2seq)
        if self.plan.gradient_checkpointing:
            enable_gradient_checkpointing_(self.model)
        if self.spec.training.compile:
            compile_body_(self.model)
        self.initial = snapshot(self.model)
        self.parameters, self.trainable = parameter_counts(self.model)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _plan(self, config: dict) -> MemoryPlan:
        """The memory plan for the longest example actually present; WillNotFit when nothing fits."""
        longest = max(len(e.input_ids) for e in self.train_examples + self.test_examples)
        device = Device(kind=self.device.type, total_bytes=self.device_memory)
        try:
            plan = plan_trial(
                self.spec,
                config,
                device,
                parameters=count_parameters(self.spec.candidate),
                sequence_length=longest,
                eval_lengths=[len(e.input_ids) for e in self.test_examples],
            )
        except PlanError as err:  # an architecture without a memory model runs as the spec says
            self.on_progress({"event": "plan", "unplanned": str(err)})
            return unplanned(self.spec, device, longest)
        if not plan.fits:
            raise WillNotFit(plan.refusal())
        if refusal := plan.host_refusal(host_memory_bytes()):
            raise WillNotFit(refusal)
        self.on_progress({"event": "plan", "plan": plan.explain()})
        return plan

    def _check_token_ids(self, size: object) -> None:
        """Every token id the data encodes to has a row in the model's embedding: a tokenizer of another model (a
        larger vocabulary) would otherwise end the trial in an IndexError deep in torch. `size`: the config's
        vocab_size (a model that nests it, multimodal say, is not checked)."""
        examples = self.train_examples + self.test_examples
        largest = max(max(e.input_ids + e.labels) for e in examples)
        if isinstance(size, int) and largest >= size:
            raise ModelNotFound(f"candidate.model {self.spec.candidate.model!r}: its tokenizer gives token id {largest} "
                                f"on this dataset, and the model's vocabulary (config vocab_size) has {size}: is the "
                                "tokenizer this model's?")

    def _train_examples_needed(self) -> int:
        return max(self.sizes[-1], self.ntk.probe_size if self.ntk.enabled else 0)

    def _encode(self, rows) -> list[Example]:
        return encode_rows(self.tokenizer, rows, max_length=self.max_length, seq2seq=self.seq2seq)

    def run(self) -> TrialResult:
        """Zero-shot loss, NTK, then one fresh fine-tune per size not done yet, then the fits."""
        result = self.result
        result.resources = self.resources()  # a failed trial still tells what it ran on
        if result.points:
            self.on_progress({"event": "resumed", "sizes": [p.size for p in result.points]})
        if result.zero_shot is None and self.spec.measure_zero_shot:
            result.zero_shot = self.evaluate()
            self.on_progress({"event": "zeroShot", **_wire(result.zero_shot)})
        result.plan = self.plan
        if self.ntk.enabled and result.ntk is None:
            result.ntk = self.measure_ntk()
            self.on_progress({"event": "ntk", **_wire(result.ntk, exclude={"eigenvalues", "projections_sq"})})
        for size in self.sizes:
            if any(p.size == size for p in result.points):
                continue  # measured by an earlier attempt
            restore_(self.model, self.initial)
            stats = self.train(size)
            point = SizePoint(size=size, test=self.evaluate(after=size), train=stats)
            if size == self.spec.target_size and self.spec.output.model_dir:
                result.model_dir = self.save_model(Path(self.spec.output.model_dir))  # before the point is kept
            result.points = sorted([*result.points, point], key=lambda p: p.size)
            result.resources = self.resources()
            self.on_progress({"event": "size", **_wire(point)})
            self.on_checkpoint(result)
        result.fits = fit_all(
            result.zero_shot, result.points, target=self.spec.target_size, metric=self.spec.fit_metric, ntk=result.ntk
        )
        result.resources = self.resources()
        result.status = "Succeeded"
        return result

    def train(self, size: int) -> TrainingStats:
        """Fine-tune the current weights on the first `size` examples of the seeded order."""
        examples = self.train_examples[:size]
        # Seeded per size, so a size trains the same whichever sizes ran before it (resume reproduces it).
        torch.manual_seed(self.seed + size)
        shuffle = torch.Generator().manual_seed(self.seed + size)
        params = [p for p in self.model.parameters() if p.requires_grad]
        masters = fp32_masters(params)
        optimizer = adamw(masters, lr=self.learning_rate, weight_decay=self.weight_decay, device=self.device)
        step_examples = self.batch_size * self.accumulation
        total_steps = math.ceil(size / step_examples) * self.epochs
        scheduler = linear_warmup_then_decay(optimizer, round(self.warmup_ratio * total_steps), total_steps)
        lengths = [len(e.input_ids) for e in examples]
        start, steps, tokens, positions = time.perf_counter(), 0, 0, 0
        self.model.train()
        for _ in range(self.epochs):
            epoch_nats, epoch_scored = 0.0, 0
            groups = iter(length_grouped(lengths, step_examples, shuffle))
            upcoming = self._micro_batches(examples, next(groups, None))
            while upcoming:
                micro_batches = upcoming
                scored = max(sum(b.scored for b in micro_batches), 1)
                step_nats = torch.zeros((), dtype=torch.float32, device=self.device)
                for batch in micro_batches:  # token-weighted: each scored token counts 1 / scored
                    step_nats += backward_losses(self.model, batch.tensors, seq2seq=self.seq2seq, scale=1 / scored)
                    tokens, positions = tokens + batch.tokens, positions + batch.positions
                upcoming = self._micro_batches(examples, next(groups, None))  # collated while the device works
                grads_to_masters_(params, masters)
                norm = torch.nn.utils.clip_grad_norm_(masters, self.max_grad_norm)
                loss, norm = torch.stack([step_nats / scored, norm.float()]).tolist()  # the step's one host sync
                _check_finite(loss, f"training loss at size {size}, step {steps + 1}")
                _check_finite(norm, f"gradient norm at size {size}, step {steps + 1}")
                optimizer.step()
                scheduler.step()
                masters_to_weights_(params, masters)
                optimizer.zero_grad(set_to_none=True)
                epoch_nats, epoch_scored, steps = epoch_nats + loss * scored, epoch_scored + scored, steps + 1
        return TrainingStats(
            steps=steps,
            tokens=tokens,
            final_loss=epoch_nats / max(epoch_scored, 1),
            seconds=time.perf_counter() - start,
            flops=training_flops(self.parameters, self.trainable, tokens),
            padding_fraction=1 - tokens / max(positions, 1),
        )

    def save_model(self, folder: Path) -> str | None:
        """Save the weights just fine-tuned (a LoRA trial: its adapter) and the tokenizer into `folder`, whole or not
        at all: written beside it, then renamed into place. Saved before the point is checkpointed, so a trial
        resumed after it does not lose them. A folder that cannot be written costs the weights, not the
        measurement: reported as an event, and the trial goes on."""
        partial = folder.with_name(folder.name + ".partial")
        config = self.model.config
        try:
            shutil.rmtree(partial, ignore_errors=True)
            config.use_cache = True  # off for training only: whoever loads the model generates with it
            # In one shard (transformers' default allows 50 GB) a GPU model would be copied to host memory whole, at
            # the end of the costliest trial, where a pod's limit kills it and the retry fine-tunes the target again.
            self.model.save_pretrained(partial, max_shard_size=memory.SAVE_SHARD_BYTES)
            self.tokenizer.save_pretrained(partial)
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
        except OSError as err:
            shutil.rmtree(partial, ignore_errors=True)
            self.on_progress({"event": "modelNotSaved", "folder": str(folder), "error": err.strerror or str(err)})
            return None
        finally:
            config.use_cache = False
        self.on_progress({"event": "modelSaved", "folder": str(folder)})
        return str(folder)

    def _micro_batches(self, examples: list[Example], group: list[int] | None) -> list[Batch]:
        """One optimizer step's examples (longest first) cut into the plan's micro-batches."""
        if group is None:
            return []
        micro = self.plan.micro_batch_size
        return [self._batch([examples[i] for i in group[j : j + micro]]) for j in range(0, len(group), micro)]

    def _batch(self, examples: list[Example]) -> Batch:
        return make_batch(examples, pad_id=self.tokenizer.pad_token_id, seq2seq=self.seq2seq, device=self.device)

    @torch.no_grad()
    def evaluate(self, after: int | None = None) -> Evaluation:
        """Test loss of the current weights: per token, summed per example, and bits per byte."""
        start, positions = time.perf_counter(), 0
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        self.model.eval()
        for chunk in token_budget_batches(self.test_examples, self.plan.eval_batch_tokens, EVAL_MAX_EXAMPLES):
            batch = self._batch(chunk)
            nats, _ = token_losses(self.model, batch.tensors, seq2seq=self.seq2seq)
            total += nats.sum()
            positions += batch.positions
        nats = total.item()  # the evaluation's one host sync
        _check_finite(nats, "zero-shot test loss" if after is None else f"test loss after size {after}")
        n_bytes = sum(e.n_bytes for e in self.test_examples)
        tokens = sum(e.n_tokens for e in self.test_examples)
        scored = sum(e.n_scored for e in self.test_examples)
        return Evaluation(
            loss=nats / max(scored, 1),
            loss_per_example=nats / len(self.test_examples),
            bits_per_byte=nats / math.log(2) / max(n_bytes, 1),
            examples=len(self.test_examples),
            tokens=scored,
            seconds=time.perf_counter() - start,
            flops=evaluation_flops(self.parameters, tokens),
            padding_fraction=1 - tokens / max(positions, 1),
            uniform_bits_per_byte=scored * math.log(self.model.config.vocab_size) / math.log(2) / max(n_bytes, 1),
        )

    def measure_ntk(self) -> NTKSummary:
        """Empirical NTK at the starting weights on the first probeSize training examples."""
        start = time.perf_counter()
        scope = self.spec.ntk_scope
        params = scoped_parameters(self.model, scope, self.ntk.last_blocks)
        sketch = self.plan.ntk_method == "sketch"
        try:
            kernel = measure_kernel(
                self.model,
                self.train_examples[: self.ntk.probe_size],
                params=params,
                seq2seq=self.seq2seq,
                pad_id=self.tokenizer.pad_token_id,
                chunks=self.plan.ntk_chunks or 1,
                sketch_dim=self.ntk.sketch_dim if sketch else None,
                seed=self.seed,
            )
        except (MemoryError, RuntimeError) as err:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not isinstance(classify(err), OutOfMemory):
                raise
            # The n x P Jacobian, not the training, is what did not fit: say which settings shrink it.
            size = sum(p.numel() for p in params.values())
            raise OutOfMemory(
                f"out of memory in the NTK over {size} parameters x {self.ntk.probe_size} examples; "
                "use ntk.method sketch, ntk.scope lora or lastBlocks, or a smaller ntk.probeSize"
            ) from None
        eigenvalues, projections = spectrum(kernel)
        return NTKSummary(
            n=len(kernel.residuals),
            eta=self.spec.ntk_eta,
            scope=f"lastBlocks:{self.ntk.last_blocks}" if scope == "lastBlocks" else scope,
            parameters=kernel.parameters,
            method=f"sketch:{self.ntk.sketch_dim}" if sketch else "exact",
            eigenvalues=eigenvalues.tolist(),
            projections_sq=projections.tolist(),
            residual_norm_sq=float(kernel.residuals @ kernel.residuals),
            seconds=time.perf_counter() - start,
        )

    def resources(self) -> Resources:
        peak, kind = peak_memory(self.device)
        return Resources(
            device=describe(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            parameters=self.parameters,
            trainable_parameters=self.trainable,
            peak_memory_bytes=peak,
            peak_memory_kind=kind,
        )

    def cleanup(self) -> None:
        """Drop the model and its snapshot so a long-lived process (or the next trial) gets the memory back."""
        for name in ("model", "initial", "train_examples", "test_examples", "plan"):
            self.__dict__.pop(name, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _device_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return host_memory_bytes()


def _check_finite(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise Diverged(f"{what} is {value}; lower training.learningRate")


def _wire(model, exclude: set[str] | None = None) -> dict:
    return model.model_dump(mode="json", by_alias=True, exclude=exclude)


def _fresh_result(spec: TrialSpec) -> TrialResult:
    return TrialResult(status="Running", candidate=spec.candidate.model, target_size=spec.target_size, spec=spec)


def _start_result(spec: TrialSpec, resume: TrialResult | None) -> TrialResult:
    """A Running result, holding what a compatible earlier attempt already measured."""
    result = _fresh_result(spec)
    if resume is None:
        return result
    if resume.spec is None:
        raise InvalidSpec(
            "--resume: the document has no spec echo (a compact termination message?); use the full result file"
        )
    fields = type(spec).model_fields
    changed = sorted(
        field.alias
        for key, field in fields.items()
        if key not in RESUMABLE_CHANGES and getattr(spec, key) != getattr(resume.spec, key)
    )
    if changed:
        raise InvalidSpec(f"--resume: it was made with a different spec ({', '.join(changed)} differ)")
    result.zero_shot = resume.zero_shot
    result.ntk = resume.ntk
    result.points = [p for p in resume.points if p.size in spec.subset_sizes]
    if any(p.size == spec.target_size for p in result.points):
        result.model_dir = resume.model_dir  # saved with that point, or never
    return result


def run_trial(
    spec: TrialSpec,
    *,
    resume: TrialResult | None = None,
    on_progress: Progress | None = None,
    on_checkpoint: Checkpoint | None = None,
    device_memory: int | None = None,
) -> TrialResult:
    """Run the recipe end to end; a failure becomes a Failed result that keeps the points measured so far."""
    start = time.perf_counter()
    # Pod logs carry JSON progress lines and one-line errors; library progress bars would bury them.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    recipe = None
    try:
        recipe = TrialRecipe(
            spec, resume=resume, on_progress=on_progress, on_checkpoint=on_checkpoint, device_memory=device_memory
        )
        recipe.setup()
        result = recipe.run()
    except Exception as err:  # noqa: BLE001 - every failure must still leave a result document
        failure = classify(err)
        if failure is None:
            traceback.print_exc(file=sys.stderr)  # a bug: keep its traceback for whoever debugs it
        base = recipe.result if recipe is not None else _fresh_result(spec)
        result = base.model_copy(
            update={
                "status": "Failed",
                "reason": failure.reason if failure else "InternalError",
                "message": str(failure) if failure else f"{type(err).__name__}: {first_line(err)}",
            }
        )
    finally:
        if recipe is not None:
            recipe.cleanup()
    result.seconds = time.perf_counter() - start
    return result
