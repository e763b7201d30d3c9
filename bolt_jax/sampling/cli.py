"""The `generate` workflow: sample from a model checkpoint for prompts from the command line or a file."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import ml_collections

# A special token's name: `<|START_OF_LATENT|>` (bolt_jax.data.formats.SPECIAL_TOKENS) and any other `<|NAME|>`
# (Llama 3's `<|eot_id|>`). Kept whole when a list is split on `|`.
SPECIAL_TOKEN_RE = re.compile(r"<\|[^|<>\s]+\|>")


def default_generate_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "checkpoint": "",
        "prompts": "",  # a JSON list ["p1", "p2"], or separated by "|" outside <|TOKEN|> names ("" = prompts_file)
        "prompts_file": "",  # one prompt per line (JSONL lines with "prompt" also work)
        "n": 1,
        "max_new_tokens": 128,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "greedy": False,
        "stop_strings": "",  # as prompts: a JSON list, or "|"-separated outside <|TOKEN|> names
        "seed": 0,
        "scheduler": "continuous",  # or "static" (bolt_jax.sampling.schedulers)
        "decode_slots": 0,  # continuous: rows decoded together (0 = every request at once, up to 256)
        "prefix_sharing": False,  # continuous, n > 1: a prompt's n samples read its KV once (bolt_jax.sampling.engine)
        "prompt_entries": 0,  # with prefix_sharing: shared prompt entries (0 = 2 x decode_slots / n)
        "output_path": "",  # JSONL of the samples ("" = print only)
    })


def split_list(text: str, key: str) -> list[str]:
    """`config.generate.<key>` as a list of strings. The special tokens' names contain `|` (`<|END_OF_LATENT|>`), so
    a plain `|` split cut them apart; now either a JSON list (`["a<|START_OF_LATENT|>", "b"]`, any text) or
    `|`-separated with every `<|NAME|>` kept whole. A `<|` or `|>` that is part of no such name could be either a
    separator or a broken name: refused (one-line ValueError) rather than guessed. Empty entries are dropped."""
    if text.lstrip().startswith("["):
        return _json_list(text, key)
    out, pos = [""], 0
    for match in [*SPECIAL_TOKEN_RE.finditer(text), None]:
        plain = text[pos:match.start() if match else len(text)]
        if "<|" in plain or "|>" in plain:
            raise ValueError(f"config.generate.{key}={text!r} is ambiguous: {plain!r} has a '<|' or '|>' that is not "
                             f"part of a <|NAME|> token; pass a JSON list instead, e.g. [\"first\", \"second\"]")
        first, *rest = plain.split("|")
        out[-1] += first
        out.extend(rest)
        if match:
            out[-1] += match.group()
            pos = match.end()
    return [x for x in out if x]


def _json_list(text: str, key: str) -> list[str]:
    """The JSON form of `split_list`: a list of strings, or a one-line ValueError saying what it got."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config.generate.{key} starts with '[' but is not a JSON list ({e.msg} at character "
                         f"{e.pos}); write it as a JSON list of strings, e.g. [\"[1, 2] first\", \"second\"]") from None
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ValueError(f"config.generate.{key} must be a JSON list of strings, got {text!r}")
    return [x for x in value if x]


def read_prompts(g: ml_collections.ConfigDict) -> list[str]:
    """The prompts of `config.generate`: `prompts` (split_list) then the lines of `prompts_file`."""
    texts = split_list(g.prompts, "prompts") if g.prompts else []
    if g.prompts_file:
        for line in open(g.prompts_file):
            line = line.rstrip("\n")
            if line.strip():
                texts.append(json.loads(line)["prompt"] if line.lstrip().startswith("{") else line)
    if not texts:
        raise ValueError("no prompts: set config.generate.prompts or config.generate.prompts_file")
    return texts


def run_generate(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    from bolt_jax.config import make_sampling_mesh, rules_of, runtime_overrides
    from bolt_jax.data.schema import write_jsonl
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.model import artifact as model_ckpt
    from bolt_jax.sampling import generate
    g = config.generate
    if not g.checkpoint:
        raise ValueError("config.generate.checkpoint is empty")
    texts = read_prompts(g)
    stop_strings = split_list(g.stop_strings, "stop_strings")  # before the model loads: a bad list fails fast
    mesh = make_sampling_mesh(config)
    model, _, tok_dir = model_ckpt.load_model(g.checkpoint, mesh, dtype="compute",
                                             rules=rules_of(config), **runtime_overrides(config))
    tok = load_tokenizer(tok_dir)
    ids = [[tok.bos_id] + tok.encode(t) for t in texts]
    kw = dict(n=g.n, max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
              greedy=g.greedy, stop_token_ids=[tok.eos_id], stop_strings=stop_strings,
              seed=g.seed, mesh=mesh, tokenizer=tok.hf, scheduler=g.scheduler, decode_slots=g.decode_slots or None,
              prefix_sharing=g.prefix_sharing, prompt_entries=g.prompt_entries or None)
    t0 = time.perf_counter()
    r = generate(model, ids, **kw)
    seconds = time.perf_counter() - t0
    rows = []
    for i, text in enumerate(texts):
        for j in range(g.n):
            k = i * g.n + j
            rows.append({"prompt": text, "sample": j, "text": r.texts[k], "logq": float(r.logq[k]),
                         "tokens": int(r.lengths[k]), "done": bool(r.done[k])})
            print(f"--- prompt {i} sample {j} (log q {r.logq[k]:.2f}, {r.lengths[k]} tokens)\n{text}{r.texts[k]}")
    total = int(r.lengths.sum())
    print(f"\n{total} tokens in {seconds:.2f}s (compile included): {total / seconds:,.1f} tokens/s; "
          f"{r.num_truncated_prompts} prompts truncated")
    if g.output_path:
        write_jsonl(g.output_path, rows)
    return rows
