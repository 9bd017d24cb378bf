import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config

from lensllm.trial import losses
from lensllm.trial.data import load_task_rows
from lensllm.trial.examples import collate, encode_rows
from lensllm.trial.losses import backward_losses, chunked_head, token_losses
from lensllm.trial.modeling import apply_lora, load_candidate
from lensllm.trial.spec import CandidateSpec, DatasetSpec, LoraSpec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def rows(task_dir):
    spec = DatasetSpec(
        source=str(task_dir), input_field="input", target_field="target", prompt_template="translate : {input} =>"
    )
    return load_task_rows(spec, need_train=6, seed=0).train


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few scored positions, so every batch takes several trips through the LM head."""
    monkeypatch.setattr(losses, "HEAD_CHUNK_BYTES", 4 * 52 * 5)


def batch_of(tokenizer, rows):
    examples = encode_rows(tokenizer, rows, max_length=32, seq2seq=False)
    return collate(examples, pad_id=tokenizer.pad_token_id, seq2seq=False, device=CPU)


def hf_loss(model, batch):
    """The model's own mean loss over the scored tokens (Hugging Face shifts the labels itself)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    return model(**inputs).loss


@pytest.mark.parametrize("name", ["gpt2", "opt", "llama"])
def test_chunked_head_losses_equal_the_models_own_loss(tiny_models, rows, small_chunks, name):
    model, tokenizer = load_candidate(CandidateSpec(model=str(tiny_models[name])), dtype=torch.float32, device=CPU)
    batch = batch_of(tokenizer, rows)
    nats, scored = token_losses(model.eval(), batch, seq2seq=False)
    assert chunked_head(model)
    assert scored.tolist() == (batch["labels"][:, 1:] != -100).sum(1).tolist()
    assert (nats.sum() / scored.sum()).item() == pytest.approx(hf_loss(model, batch).item(), rel=1e-5)


def test_two_stage_backward_gives_the_gradients_of_the_full_logit_loss(tiny_models, rows, small_chunks):
    model, tokenizer = load_candidate(CandidateSpec(model=str(tiny_models["llama"])), dtype=torch.float32, device=CPU)
    model.eval()
    batch = batch_of(tokenizer, rows)
    scored = int((batch["labels"][:, 1:] != -100).sum())
    hf_loss(model, batch).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    nats = backward_losses(model, batch, seq2seq=False, scale=1 / scored)
    assert nats.item() / scored == pytest.approx(hf_loss(model, batch).item(), rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-7, msg=name)


def test_lora_adapters_get_their_gradients_through_the_two_stage_backward(tiny_models, rows):
    model, tokenizer = load_candidate(CandidateSpec(model=str(tiny_models["llama"])), dtype=torch.float32, device=CPU)
    torch.manual_seed(0)
    model = apply_lora(model, LoraSpec(r=4), seq2seq=False)
    batch = batch_of(tokenizer, rows)
    backward_losses(model, batch, seq2seq=False, scale=1.0)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_a_head_that_soft_caps_its_logits_keeps_the_models_own_forward(tokenizer, rows):
    config = Gemma2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=len(tokenizer),
        final_logit_softcapping=30.0,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    batch = batch_of(tokenizer, rows)
    nats, scored = token_losses(model, batch, seq2seq=False)
    assert not chunked_head(model)
    assert (nats.sum() / scored.sum()).item() == pytest.approx(hf_loss(model, batch).item(), rel=1e-5)
