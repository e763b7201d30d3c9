"""Train a small byte-level BPE tokenizer with the BoLT special tokens, for demos and tests (nothing downloaded).

Layout like Llama's: <unk>=0, <s>=1 (BOS), </s>=2 (EOS); the four BoLT tokens are appended last, as
`convert --add-bolt-tokens` appends them to TinyLlama's vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from bolt_jax.data.formats import SPECIAL_TOKENS


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 512,
                        add_bolt_tokens: bool = True) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    n_base = vocab_size - (len(SPECIAL_TOKENS) if add_bolt_tokens else 0)
    tok.train_from_iterator(list(texts), trainer=trainers.BpeTrainer(
        vocab_size=n_base, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if add_bolt_tokens:
        hf.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    out_dir = str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    hf.save_pretrained(out_dir)
    return out_dir
