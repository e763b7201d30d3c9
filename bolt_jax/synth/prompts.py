"""Prompt templates for thought synthesis (spec 3.2), written for this project to the original's intent.

`latent_thoughts`: system + user message per chunk (prefix, suffix). `wrap_baseline`: one of four paraphrase styles
per document, chosen with default_rng(seed + document index). `wrap_cot`: a paraphrase with inserted reasoning.
A user template file (UTF-8 text with `{prefix}`/`{suffix}` or `{text}` placeholders, and an optional first block
`SYSTEM:` ... `USER:`) replaces the built-in one.
"""

from __future__ import annotations

import os

import numpy as np

LATENT_SYSTEM = (
    "You are an expert reader of technical and mathematical web documents. You understand every step of a text "
    "and can reconstruct the knowledge and reasoning an author relied on but did not write down.")

LATENT_USER = """You will see the beginning of a web document (the prefix) and the passage that follows it \
(the suffix). \
Write the latent thoughts that connect them: the background knowledge and the reasoning an expert would need in \
order to write the suffix after the prefix. Derive every claim of the suffix step by step; spell out calculations \
and logical steps in full.

### Prefix:
{prefix}

### Suffix:
{suffix}

### Your turn:
Write only the thoughts, in short, plain, declarative sentences. Do not mention the words "prefix" or "suffix", do \
not address the reader, and do not use markdown. Every sentence must carry information; avoid empty phrases. \
Concentrate on what the suffix leaves implicit (missing steps, definitions, facts), not on repeating the prefix."""

WRAP_STYLES = (
    # 1. very simple language
    "Rewrite the following website text so that a small child could follow it: use only very common words and very "
    "short, simple sentences. Keep every fact.\n\n## Website\n{text}",
    # 2. terse and erudite
    "Rewrite the following website text for a learned scholar: make it terse and dense, using precise, rare and "
    "sophisticated vocabulary. Keep every fact.\n\n## Website\n{text}",
    # 3. encyclopedic
    "Rewrite the following website text in clear, high-quality English, in the neutral style of an encyclopedia "
    "article. Keep every fact.\n\n## Website\n{text}",
    # 4. question and answer
    "Turn the following website text into a conversation made of several \"Question:\" and \"Answer:\" pairs that "
    "together convey all of its information.\n\n## Website\n{text}",
)

WRAP_COT = """Rewrite the following document in clear, high-quality English, keeping all of its information. Wherever \
the document states a result, a claim or a step, insert the detailed reasoning behind it: step-by-step mathematical \
derivations or logical arguments, so that nothing is left implicit. Output the rewritten document only, without a \
heading.

## Document
{text}"""

METHODS = ("latent_thoughts", "wrap_baseline", "wrap_cot")


def load_template_file(path: str) -> tuple[str | None, str]:
    """(system or None, user template) from a user's template file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"synth template file {path!r} does not exist")
    text = open(path, encoding="utf-8").read()
    if text.startswith("SYSTEM:") and "\nUSER:" in text:
        system, user = text[len("SYSTEM:"):].split("\nUSER:", 1)
        return system.strip(), user.lstrip("\n")
    return None, text


def latent_messages(prefix: str, suffix: str, template_file: str = "") -> list[dict[str, str]]:
    system, user = (LATENT_SYSTEM, LATENT_USER) if not template_file else load_template_file(template_file)
    prefix = prefix if prefix.strip() else "N/A"
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user.format(prefix=prefix, suffix=suffix)}]


def wrap_style(seed: int, document_index: int) -> int:
    """The paraphrase style of a document: rng.integers(0, 4) with rng = default_rng(seed + index) (spec 3.2)."""
    return int(np.random.default_rng(seed + document_index).integers(0, len(WRAP_STYLES)))


def wrap_messages(text: str, method: str, *, seed: int, document_index: int,
                  template_file: str = "") -> list[dict[str, str]]:
    if template_file:
        system, user = load_template_file(template_file)
    else:
        system = None
        user = WRAP_COT if method == "wrap_cot" else WRAP_STYLES[wrap_style(seed, document_index)]
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user.format(text=text)}]
