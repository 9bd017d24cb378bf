"""Byte-level BPE tokenizers trained on the zoo's pre-training text.

Byte-level, so every task's text is encodable (no unknown tokens), and of different sizes,
so candidates differ in tokenizer as real ones do (which is why LensBench measures bits per
byte). Called by `lensllm_bench.zoo`.
"""

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lensllm.demo import SPECIALS


def train_bpe(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of `vocab_size` tokens (the four specials first) learned from `texts`."""
    # One trainer thread: the merges then come out in the same order on every run.
    os.environ["RAYON_NUM_THREADS"] = "1"
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
