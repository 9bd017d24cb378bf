import numpy as np
import pytest
import torch

from lensllm.science.laws import NTKSpectrum
from lensllm.trial.data import load_task_rows
from lensllm.trial.examples import collate, encode_rows
from lensllm.trial.failures import InvalidSpec
from lensllm.trial.modeling import apply_lora, load_candidate
from lensllm.trial.ntk import measure_kernel, scoped_parameters, spectrum
from lensllm.trial.spec import CandidateSpec, DatasetSpec, LoraSpec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def probe_rows(task_dir):
    spec = DatasetSpec(
        source=str(task_dir), input_field="input", target_field="target", prompt_template="translate : {input} =>"
    )
    return load_task_rows(spec, need_train=8, seed=0).train


def load(folder):
    return load_candidate(CandidateSpec(model=str(folder)), dtype=torch.float32, device=CPU)


def kernel_of(model, tokenizer, rows, scope="all", last_blocks=1):
    seq2seq = model.config.is_encoder_decoder
    probe = encode_rows(tokenizer, rows, max_length=32, seq2seq=seq2seq)
    params = scoped_parameters(model, scope, last_blocks)
    return measure_kernel(model, probe, params=params, seq2seq=seq2seq, pad_id=tokenizer.pad_token_id), probe


@pytest.mark.parametrize("name", ["gpt2", "opt", "llama", "t5"])
def test_kernel_is_symmetric_and_positive_semidefinite(tiny_models, probe_rows, name):
    model, tokenizer = load(tiny_models[name])
    kernel, _ = kernel_of(model, tokenizer, probe_rows)
    eigenvalues = np.linalg.eigvalsh(kernel.gram)
    assert kernel.gram.shape == (8, 8)
    np.testing.assert_allclose(kernel.gram, kernel.gram.T, rtol=1e-10, atol=1e-10 * np.abs(kernel.gram).max())
    assert eigenvalues.min() >= -1e-9 * eigenvalues.max()
    assert kernel.parameters == sum(p.numel() for p in model.parameters())


def test_projections_sum_to_the_squared_residual_and_the_residual_term_never_increases(tiny_models, probe_rows):
    model, tokenizer = load(tiny_models["llama"])
    kernel, _ = kernel_of(model, tokenizer, probe_rows)
    eigenvalues, projections = spectrum(kernel)
    ntk = NTKSpectrum(eigenvalues=eigenvalues, projections_sq=projections, eta=1e-3)
    residual_sq = float(kernel.residuals @ kernel.residuals)
    values = ntk.residual_term(np.concatenate([[0.0], np.logspace(-2, 6, 60)]))
    assert list(eigenvalues) == sorted(eigenvalues, reverse=True)
    assert values[0] == pytest.approx(residual_sq, rel=1e-12)
    assert np.all(np.diff(values) <= 1e-12 * residual_sq)
    assert values[-1] < 0.01 * values[0]  # the kernel is full rank on 8 examples: training can fit them


def test_kernel_entries_are_dot_products_of_the_per_example_loss_gradients(tiny_models, probe_rows):
    """Checked against plain autograd on the model's own (Hugging Face) loss."""
    model, tokenizer = load(tiny_models["opt"])
    kernel, probe = kernel_of(model, tokenizer, probe_rows[:3])
    grads, losses = [], []
    for example in probe:
        batch = collate([example], pad_id=tokenizer.pad_token_id, seq2seq=False, device=CPU)
        loss = model(**batch).loss
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
        losses.append(loss.item())
    expected = torch.stack(grads) @ torch.stack(grads).T
    np.testing.assert_allclose(kernel.gram, expected.double().numpy(), rtol=1e-4)
    np.testing.assert_allclose(kernel.residuals, losses, rtol=1e-5)


def test_last_blocks_scope_takes_the_final_blocks_of_the_decoder(tiny_models):
    llama, _ = load(tiny_models["llama"])
    t5, _ = load(tiny_models["t5"])
    assert {n.split(".")[2] for n in scoped_parameters(llama, "lastBlocks", 2)} == {"2", "3"}
    assert all(n.startswith("decoder.block.0.") for n in scoped_parameters(t5, "lastBlocks", 1))
    assert len(scoped_parameters(llama, "lastBlocks", 99)) == len(
        [n for n, _ in llama.named_parameters() if ".layers." in n]
    )


def test_lora_scope_differentiates_the_adapters_only(tiny_models, probe_rows):
    model, tokenizer = load(tiny_models["llama"])
    with pytest.raises(InvalidSpec, match="no LoRA adapters"):
        scoped_parameters(model, "lora", 1)
    torch.manual_seed(0)
    peft_model = apply_lora(model, LoraSpec(r=4), seq2seq=False)
    kernel, _ = kernel_of(peft_model, tokenizer, probe_rows, scope="lora")
    assert kernel.parameters == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert np.linalg.eigvalsh(kernel.gram).max() > 0  # B starts at zero, but the gradient through B does not
