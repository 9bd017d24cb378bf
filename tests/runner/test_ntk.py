import numpy as np
import pytest
import torch

from lensllm.science.laws import NTKSpectrum
from lensllm.trial.data import load_task_rows
from lensllm.trial.examples import collate, encode_rows
from lensllm.trial.failures import InvalidSpec
from lensllm.trial.modeling import apply_lora, load_candidate
from lensllm.trial.ntk import _tensor_hashes, count_sketch_, measure_kernel, parameter_chunks, scoped_parameters, spectrum
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
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
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


def test_exact_kernel_over_parameter_chunks_equals_the_one_pass_kernel(tiny_models, probe_rows):
    model, tokenizer = load(tiny_models["llama"])
    probe = encode_rows(tokenizer, probe_rows, max_length=32, seq2seq=False)
    params = scoped_parameters(model, "all", 1)
    groups = parameter_chunks(params, 5)
    whole = measure_kernel(model, probe, params=params, seq2seq=False, pad_id=tokenizer.pad_token_id)
    chunked = measure_kernel(model, probe, params=params, seq2seq=False, pad_id=tokenizer.pad_token_id, chunks=5)
    assert len(groups) == 5 and [n for g in groups for n in g] == list(params)
    np.testing.assert_allclose(chunked.gram, whole.gram, rtol=1e-6)
    np.testing.assert_allclose(chunked.residuals, whole.residuals, rtol=1e-6)


def test_sketched_kernel_is_within_its_stated_error_of_the_exact_one(tiny_models, probe_rows):
    """Each entry within 4 standard deviations of the CountSketch bound; the top eigenvalues within 10%."""
    model, tokenizer = load(tiny_models["llama"])  # ~1M weights sketched to 4096 numbers
    probe = encode_rows(tokenizer, probe_rows, max_length=32, seq2seq=False)
    params = scoped_parameters(model, "all", 1)
    exact = measure_kernel(model, probe, params=params, seq2seq=False, pad_id=tokenizer.pad_token_id).gram
    k = 4096
    sketched = measure_kernel(model, probe, params=params, seq2seq=False, pad_id=tokenizer.pad_token_id, sketch_dim=k)
    diagonal = np.diag(exact)
    bound = np.sqrt((np.outer(diagonal, diagonal) + exact**2) / k)
    assert np.all(np.abs(sketched.gram - exact) <= 4 * bound)
    top = np.linalg.eigvalsh(exact)[::-1][:3]
    np.testing.assert_allclose(np.linalg.eigvalsh(sketched.gram)[::-1][:3], top, rtol=0.1)


def test_sketch_is_seeded(tiny_models, probe_rows):
    model, tokenizer = load(tiny_models["gpt2"])
    probe = encode_rows(tokenizer, probe_rows[:3], max_length=32, seq2seq=False)
    params = scoped_parameters(model, "all", 1)

    def sketch(seed):
        kernel = measure_kernel(
            model, probe, params=params, seq2seq=False, pad_id=tokenizer.pad_token_id, sketch_dim=256, seed=seed
        )
        return kernel.gram

    np.testing.assert_array_equal(sketch(1), sketch(1))
    assert not np.allclose(sketch(1), sketch(2))


def test_count_sketch_preserves_inner_products_on_average():
    """Unbiased: over many seeds the sketched inner product averages to the true one."""
    torch.manual_seed(0)
    u, v = torch.randn(5000), torch.randn(5000)
    v = v + 0.5 * u  # correlated, so the true inner product is far from zero
    estimates = []
    for seed in range(200):
        hashes = _tensor_hashes(["w"], seed)["w"]
        su, sv = torch.zeros(64), torch.zeros(64)
        count_sketch_(su, u, hashes)
        count_sketch_(sv, v, hashes)
        estimates.append(float(su @ sv))
    spread = np.sqrt((float(u @ u) * float(v @ v) + float(u @ v) ** 2) / 64)
    assert np.mean(estimates) == pytest.approx(float(u @ v), abs=4 * spread / np.sqrt(200))
    assert np.std(estimates) <= 1.2 * spread
