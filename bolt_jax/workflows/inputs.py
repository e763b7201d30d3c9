"""The files and directories a workflow reads, checked before anything is built: `check_inputs(config)`.

`bolt_jax.main` calls it (through `bolt_jax.workflows.validate(..., check_files=True)`) after the settings are
validated, so a missing corpus, tokenizer or checkpoint fails in a second with a message naming the key, its value
and the fix, on a real run and on `--dry_run` alike, instead of as a traceback after the model is built. Each
workflow lists what it reads (`inputs_of`), and the outputs it cannot run without (synth.output_path: only that
it is set); bootstrap's demo variants create their own data and are only checked for what the user gives them (a
base checkpoint, a finished run to share stages from).
"""

from __future__ import annotations

import glob
import os
from typing import Any

import ml_collections

# what a key must name: kind -> (check, the fix shown when it fails)
CORPUS, RECORDS, FILE, TOKENIZER, CHECKPOINT, MODEL, RUN, OUTPUT = (
    "corpus", "records", "file", "tokenizer", "checkpoint", "model", "run", "output")
_FIX = {
    CORPUS: "a .jsonl/.parquet file, a directory of them, tfds:NAME[:SPLIT] or tfds_dir:PATH[:SPLIT]",
    RECORDS: "a .jsonl/.parquet file, tfds:NAME[:SPLIT] or tfds_dir:PATH[:SPLIT]",
    FILE: "an existing file",
    TOKENIZER: "a Hugging Face tokenizer directory (tokenizer.json, e.g. <model checkpoint>/tokenizer)",
    CHECKPOINT: "a model checkpoint (`python -m convert hf-to-orbax`, or a run's model/ directory)",
    MODEL: "a model checkpoint with its tokenizer (`python -m convert hf-to-orbax`, or a run's model/ directory)",
    RUN: "the run_dir of a finished run (it holds manifest.json)",
    OUTPUT: "the file to write (it need not exist)",  # an output that must be named: only set is checked
}


LIST_KEYS = {"finetune.checkpoint"}  # comma-separated: every entry is checked


class MissingInputError(FileNotFoundError):
    """An input a workflow reads is not set or does not exist (the message names the key, value and fix)."""


def _tfds_dir_target(spec: str) -> str:
    rest = spec.partition(":")[2]
    return rest.rpartition(":")[0] if rest.count(":") else rest


def _data_problem(path: str, directory_ok: bool) -> str | None:
    """Why `path` is not a readable corpus (directory_ok) or records file; None when it is."""
    if path.startswith("tfds:"):
        return None  # a TFDS name: resolved (maybe downloaded) by TFDS itself
    if path.startswith("tfds_dir:"):
        target = _tfds_dir_target(path)
        return None if os.path.isdir(target) else f"names a TFDS builder directory {target!r} that does not exist"
    if os.path.isfile(path):
        return None if path.endswith((".jsonl", ".parquet")) or not directory_ok else "is not a .jsonl/.parquet file"
    if os.path.isdir(path):
        if not directory_ok:
            return "is a directory, not a file"
        found = any(glob.glob(os.path.join(path, p)) for p in ("*.jsonl", "*.parquet"))
        return None if found else "is a directory without *.jsonl or *.parquet files"
    return "does not exist"


def _checkpoint_problem(path: str, with_tokenizer: bool) -> str | None:
    from bolt_jax.model.artifact import MARKER, TOKENIZER_DIR
    from bolt_jax.runtime.atomic import PARTIAL_SUFFIX
    if not os.path.isdir(path):
        partial = os.path.abspath(path) + PARTIAL_SUFFIX
        return f"does not exist ({partial} is an interrupted save)" if os.path.isdir(partial) else "does not exist"
    if not os.path.isfile(os.path.join(path, MARKER)):
        return f"is not a complete model checkpoint (no {MARKER})"
    if with_tokenizer and not os.path.isdir(os.path.join(path, TOKENIZER_DIR)):
        return f"is a model checkpoint without a {TOKENIZER_DIR}/ directory"
    return None


def problem(kind: str, path: str) -> str | None:
    """Why `path` is not a usable input of `kind`; None when it is."""
    if kind in (CORPUS, RECORDS):
        return _data_problem(path, directory_ok=kind == CORPUS)
    if kind == FILE:
        return None if os.path.isfile(path) else ("is a directory" if os.path.isdir(path) else "does not exist")
    if kind == TOKENIZER:
        if not os.path.isdir(path):
            return "does not exist"
        names = ("tokenizer.json", "tokenizer_config.json")
        return None if any(os.path.isfile(os.path.join(path, n)) for n in names) else "holds no tokenizer.json"
    if kind in (CHECKPOINT, MODEL):
        return _checkpoint_problem(path, with_tokenizer=kind == MODEL)
    if kind == OUTPUT:
        return None
    if kind == RUN:
        return None if os.path.isfile(os.path.join(path, "manifest.json")) else "holds no manifest.json"
    raise ValueError(f"unknown input kind {kind!r}")


# ------------------------------------------------------------------------------------------------ per workflow
Entry = tuple[str, str, bool]  # (dotted key under config, kind, required)


def _train_inputs(config: ml_collections.ConfigDict) -> list[Entry]:
    data = config.get("data") or ml_collections.ConfigDict()
    source = data.get("source", "corpus")
    out: list[Entry] = []
    if source == "corpus":
        evaluates = bool(config.get("train") and config.train.get("eval_every", 0))
        out += [("data.train_path", CORPUS, True), ("data.tokenizer_path", TOKENIZER, True),
                ("data.validation_path", CORPUS, evaluates)]
    elif source == "sft":
        out += [("data.sft_path", RECORDS, True), ("data.tokenizer_path", TOKENIZER, True)]
    return out + [("train.init_checkpoint", CHECKPOINT, False)]


def _bootstrap_inputs(config: ml_collections.ConfigDict) -> list[Entry]:
    b = config.bootstrap
    own = config.workflow == "bootstrap"  # the demos write their own corpora, tokenizer and validation set
    # without a base checkpoint, bootstrap pretrains one from pretrain_path (the demos always do)
    out: list[Entry] = [("bootstrap.base_checkpoint", CHECKPOINT, own and not b.pretrain_path),
                        ("bootstrap.shared_stages_from", RUN, False), ("estep.tokenizer_path", TOKENIZER, False)]
    if not own:
        return out
    if not b.base_checkpoint:
        out.append(("bootstrap.pretrain_path", CORPUS, False))
    needs_raw = b.iterations > 0 or any(x.strip() for x in b.baselines.split(","))
    out += [("bootstrap.warmstart_path", CORPUS, True), ("bootstrap.bootstrap_path", CORPUS, needs_raw),
            ("data.tokenizer_path", TOKENIZER, True), ("data.validation_path", CORPUS, False)]
    return out


def inputs_of(config: ml_collections.ConfigDict) -> list[Entry]:
    """The inputs `config.workflow` reads: (dotted key, kind, required), in the order they are reported."""
    w = config.workflow
    if config.get("dry_run", False):
        return []  # compiles only, from the config's shapes: reads no file
    if w == "train":
        return _train_inputs(config) + _train_eval_inputs(config)
    if w in ("bootstrap", "demo", "demo_k_sweep"):
        return _bootstrap_inputs(config) + _train_eval_inputs(config)
    if w == "compare":
        return [("train.init_checkpoint", CHECKPOINT, False)] + _train_eval_inputs(config)
    if w == "estep":
        e = config.estep
        return [("estep.checkpoint", CHECKPOINT if e.tokenizer_path else MODEL, True),
                ("estep.tokenizer_path", TOKENIZER, False), ("estep.corpus_path", CORPUS, True)]
    if w == "synth":
        return [("synth.corpus_path", CORPUS, True), ("synth.output_path", OUTPUT, True),
                ("synth.template_file", FILE, False)]
    if w == "prepare":
        toy = config.prepare.source.startswith(("toy:", "toy_thoughts:"))
        return ([] if toy else [("prepare.source", CORPUS, True)]) + [("prepare.tokenizer_path", TOKENIZER, False)]
    if w == "eval":
        return [("eval.checkpoint", MODEL, True), ("eval.gsm8k_path", RECORDS, False),
                ("eval.math_path", RECORDS, False), ("eval.validation_path", CORPUS, False)]
    if w == "generate":
        return [("generate.checkpoint", MODEL, True), ("generate.prompts_file", FILE, False)]
    if w == "finetune_eval":
        return [("finetune.checkpoint", MODEL, True), ("finetune.train_path", RECORDS, True),
                ("finetune.test_path", RECORDS, True)]
    return []  # model_summary reads nothing (model.hf_config is checked with the model section)


def _train_eval_inputs(config: ml_collections.ConfigDict) -> list[Entry]:
    """The benchmark files of evaluation during training (bolt_jax.eval.periodic), when it runs."""
    t = config.get("train_eval")
    if not t or not (t.every or t.elbo_every):
        return []
    return [("train_eval.gsm8k_path", RECORDS, False), ("train_eval.math_path", RECORDS, False)]


def _lookup(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            return None
        node = node[part]
    return node


def check_inputs(config: ml_collections.ConfigDict) -> None:
    """Raises MissingInputError when an input of the workflow is not set (and required) or is not there. Line 1
    names the first key, its value and what it must be; line 2, when there are more, lists the other keys. A synth
    run that will send requests also needs its API key (SynthError)."""
    problems: list[tuple[str, str]] = []
    for key, kind, required in inputs_of(config):
        value = _lookup(config, key)
        if not value:
            if required:
                problems.append((key, f"config.{key} is not set; point --config.{key} at {_FIX[kind]}"))
            continue
        parts = str(value).split(",") if key in LIST_KEYS else [str(value)]
        why = next((f"({part.strip()!r}) {w}" if len(parts) > 1 else w
                    for part in parts if (w := problem(kind, part.strip()))), None)
        if why:
            problems.append((key, f"config.{key}={value!r} {why}; point --config.{key} at {_FIX[kind]}"))
    if problems:
        more = [key for key, _ in problems[1:]]
        raise MissingInputError(problems[0][1] + (f"\nalso missing or invalid: config.{', config.'.join(more)}"
                                                   if more else ""))
    if config.workflow == "synth" and not config.synth.estimate_only:
        from bolt_jax.synth.api import api_key
        api_key(config.synth.env_file)  # SynthError naming OPENAI_API_KEY and config.synth.env_file
