"""The trial recipe: one candidate, zero-shot loss, NTK, a fine-tune per subset size, law fits.

Shaped like a torchtune recipe: `__init__(spec)` reads every setting, `setup()` builds the
model and data, `train()` is the whole training loop in one place, `cleanup()` frees the
device. `run_trial` is the entry point `lensllm run-trial` calls; it turns every failure
into a Failed result with its reason, keeping the points already measured.
"""

import gc
import math
import sys
import time
import traceback
from collections.abc import Callable

import datasets
import torch
import transformers
from transformers import get_linear_schedule_with_warmup

from lensllm.trial.data import load_task_rows
from lensllm.trial.examples import Example, batches, collate, encode_rows
from lensllm.trial.failures import Diverged, InvalidSpec, OutOfMemory, classify, first_line
from lensllm.trial.fits import fit_all
from lensllm.trial.modeling import (
    apply_lora,
    choose_device,
    choose_dtype,
    describe,
    enable_gradient_checkpointing_,
    evaluation_flops,
    load_candidate,
    parameter_counts,
    peak_memory,
    restore_,
    snapshot,
    token_losses,
    training_flops,
)
from lensllm.trial.ntk import measure_kernel, scoped_parameters, spectrum
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
        self.on_progress = on_progress or (lambda event: None)
        self.on_checkpoint = on_checkpoint or (lambda result: None)
        self.result = _start_result(spec, resume)

    def setup(self) -> None:
        """Data first (cheap to get wrong), then model and tokenizer, once; snapshot the starting weights."""
        torch.manual_seed(self.seed)  # LoRA adapter init
        rows = load_task_rows(self.spec.dataset, need_train=self._train_examples_needed(), seed=self.seed)
        self.model, self.tokenizer = load_candidate(self.spec.candidate, dtype=self.dtype, device=self.device)
        self.seq2seq = bool(self.model.config.is_encoder_decoder)
        if self.seq2seq and self.spec.dataset.is_text:
            raise InvalidSpec("dataset.textField: an encoder-decoder model needs inputField and targetField")
        if self.method == "lora":
            self.model = apply_lora(self.model, self.spec.training.lora, seq2seq=self.seq2seq)
        if self.spec.training.gradient_checkpointing:
            enable_gradient_checkpointing_(self.model)
        self.train_examples: list[Example] = self._encode(rows.train)
        self.test_examples: list[Example] = self._encode(rows.test)
        self.initial = snapshot(self.model)
        self.parameters, self.trainable = parameter_counts(self.model)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _train_examples_needed(self) -> int:
        return max(self.sizes[-1], self.ntk.probe_size if self.ntk.enabled else 0)

    def _encode(self, rows) -> list[Example]:
        return encode_rows(self.tokenizer, rows, max_length=self.max_length, seq2seq=self.seq2seq)

    def run(self) -> TrialResult:
        """Zero-shot loss, NTK, then one fresh fine-tune per size not done yet, then the fits."""
        result = self.result
        result.resources = self.resources()  # a failed trial still tells what it ran on
        if result.zero_shot is None:
            result.zero_shot = self.evaluate()
            self.on_progress({"event": "zeroShot", **_wire(result.zero_shot)})
        if self.ntk.enabled and result.ntk is None:
            result.ntk = self.measure_ntk()
            self.on_progress({"event": "ntk", **_wire(result.ntk, exclude={"eigenvalues", "projections_sq"})})
        for size in self.sizes:
            if any(p.size == size for p in result.points):
                continue  # measured by an earlier attempt
            restore_(self.model, self.initial)
            stats = self.train(size)
            point = SizePoint(size=size, test=self.evaluate(after=size), train=stats)
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
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        micro_batches = math.ceil(size / self.batch_size)
        total_steps = math.ceil(micro_batches / self.accumulation) * self.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, round(self.warmup_ratio * total_steps), total_steps)
        start, steps, tokens = time.perf_counter(), 0, 0
        self.model.train()
        for _ in range(self.epochs):
            epoch_nats, epoch_scored = 0.0, 0
            order = torch.randperm(size, generator=shuffle).tolist()
            for i, chunk in enumerate(batches(examples, self.batch_size, order)):
                batch = collate(chunk, pad_id=self.tokenizer.pad_token_id, seq2seq=self.seq2seq, device=self.device)
                nats, scored = token_losses(self.model, batch, seq2seq=self.seq2seq)
                loss = nats.sum() / scored.sum().clamp(min=1)
                group = min(self.accumulation, micro_batches - (i // self.accumulation) * self.accumulation)
                (loss / group).backward()
                _check_finite(loss.item(), f"training loss at size {size}, step {steps + 1}")
                epoch_nats += nats.sum().item()
                epoch_scored += int(scored.sum().item())
                tokens += sum(e.n_tokens for e in chunk)
                if (i + 1) % self.accumulation == 0 or i + 1 == micro_batches:
                    norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
                    _check_finite(norm.item(), f"gradient norm at size {size}, step {steps + 1}")
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    steps += 1
        return TrainingStats(
            steps=steps,
            tokens=tokens,
            final_loss=epoch_nats / max(epoch_scored, 1),
            seconds=time.perf_counter() - start,
            flops=training_flops(self.parameters, self.trainable, tokens),
        )

    @torch.no_grad()
    def evaluate(self, after: int | None = None) -> Evaluation:
        """Test loss of the current weights: per token, summed per example, and bits per byte."""
        start, nats, scored = time.perf_counter(), 0.0, 0
        self.model.eval()
        for chunk in batches(self.test_examples, self.batch_size):
            batch = collate(chunk, pad_id=self.tokenizer.pad_token_id, seq2seq=self.seq2seq, device=self.device)
            batch_nats, batch_scored = token_losses(self.model, batch, seq2seq=self.seq2seq)
            nats += batch_nats.sum().item()
            scored += int(batch_scored.sum().item())
        _check_finite(nats, "zero-shot test loss" if after is None else f"test loss after size {after}")
        n_bytes = sum(e.n_bytes for e in self.test_examples)
        tokens = sum(e.n_tokens for e in self.test_examples)
        return Evaluation(
            loss=nats / max(scored, 1),
            loss_per_example=nats / len(self.test_examples),
            bits_per_byte=nats / math.log(2) / max(n_bytes, 1),
            examples=len(self.test_examples),
            tokens=scored,
            seconds=time.perf_counter() - start,
            flops=evaluation_flops(self.parameters, tokens),
        )

    def measure_ntk(self) -> NTKSummary:
        """Empirical NTK at the starting weights on the first probeSize training examples."""
        start = time.perf_counter()
        params = scoped_parameters(self.model, self.ntk.scope, self.ntk.last_blocks)
        try:
            kernel = measure_kernel(
                self.model,
                self.train_examples[: self.ntk.probe_size],
                params=params,
                seq2seq=self.seq2seq,
                pad_id=self.tokenizer.pad_token_id,
            )
        except (MemoryError, RuntimeError) as err:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not isinstance(classify(err), OutOfMemory):
                raise
            # The n x P Jacobian, not the training, is what did not fit: say which settings shrink it.
            size = sum(p.numel() for p in params.values())
            raise OutOfMemory(
                f"out of memory in the NTK over {size} parameters x {self.ntk.probe_size} examples; "
                "use ntk.scope lora or lastBlocks, or a smaller ntk.probeSize"
            ) from None
        eigenvalues, projections = spectrum(kernel)
        scope = f"lastBlocks:{self.ntk.last_blocks}" if self.ntk.scope == "lastBlocks" else self.ntk.scope
        return NTKSummary(
            n=len(kernel.residuals),
            eta=self.spec.ntk_eta,
            scope=scope,
            parameters=kernel.parameters,
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
        for name in ("model", "initial", "train_examples", "test_examples"):
            self.__dict__.pop(name, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


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
    return result


def run_trial(
    spec: TrialSpec,
    *,
    resume: TrialResult | None = None,
    on_progress: Progress | None = None,
    on_checkpoint: Checkpoint | None = None,
) -> TrialResult:
    """Run the recipe end to end; a failure becomes a Failed result that keeps the points measured so far."""
    start = time.perf_counter()
    # Pod logs carry JSON progress lines and one-line errors; library progress bars would bury them.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    recipe = None
    try:
        recipe = TrialRecipe(spec, resume=resume, on_progress=on_progress, on_checkpoint=on_checkpoint)
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
