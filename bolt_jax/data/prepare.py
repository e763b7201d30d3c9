"""`prepare`: a corpus -> the spec's splits as dataset directories with manifests, deterministically (spec 2.2).

The corpus's usable records are put in one order (a seeded permutation, standing in for the original's terashuf;
or file order with shuffle=False), then, by position j in that order and slices "start:end:step" (a record is in
the slice when start <= idx % step < end, the original's non-continuous split):
  validation   j in validation_slice (default 0:1:1000: every 1000th record)
  train        every other record; t = its index within train
  warmstart    t in warmstart_slice (default 0:1:20, the original's "500m" split)
  bootstrap    t in bootstrap_slice (default 13:17:20, the "2b" split; disjoint from warmstart and validation)
Each split is written to `<output_dir>/<split>/` as `<split>.chunk.00.jsonl` (validation: `validation.val.jsonl`),
plus `<file>.idx.npy` (line offsets, so training processes read only their share) and `manifest.json`
(source, counts, malformed-record report, word and token statistics, sha256 of the file, the settings). A
top-level `<output_dir>/manifest.json` lists all splits. Same input and settings -> byte-identical outputs.

Sources: anything bolt_jax.data.readers takes, or "toy:NUM_DOCS[:SEED]" (the toy corpus, bolt_jax.data.toy), or
"toy_thoughts:NUM_DOCS[:SEED]" (the toy corpus augmented with its true thoughts, the stand-in for API thoughts).
`run_prepare(config)` is the workflow entry (config.prepare = default_prepare_config()). While it writes, a progress
display counts the records (a bar on a terminal, `n/total | rate | ETA` lines in a file); its last printed line is
"prepare: wrote <split> <count>, ... records (of N read) in T s -> <output_dir>".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from typing import Any

import ml_collections
import numpy as np

from bolt_jax.data.formats import raw_text
from bolt_jax.data.readers import (
    CorpusSource,
    ReadReport,
    build_line_index,
    open_corpus,
    save_line_index,
)
from bolt_jax.data.schema import write_jsonl
from bolt_jax.runtime.atomic import atomic_write_text
from bolt_jax.runtime.console import progress

log = logging.getLogger("bolt_jax.data.prepare")  # not __name__: under `python -m` that is __main__, outside bolt_jax
WORD_RE = re.compile(r"\b\w+\b")
SPLITS = ("validation", "train", "warmstart", "bootstrap")


def default_prepare_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.source = ""  # corpus file/dir, tfds:NAME[:SPLIT], tfds_dir:PATH[:SPLIT], toy:N[:SEED], toy_thoughts:N[:SEED]
    c.tfds_data_dir = ""  # where TFDS sources are read from ("" = TFDS's default)
    c.output_dir = ""  # where the split directories go
    c.tokenizer_path = ""  # optional: token statistics in the manifests ("" = words only)
    c.seed = 42  # order permutation
    c.shuffle = True  # records in a seeded random order (False: file order)
    c.strict = False  # malformed records fatal (else counted and listed in the manifest)
    c.validation_slice = "0:1:1000"  # start:end:step over all records: every 1000th (the original's validation)
    c.warmstart_slice = "0:1:20"  # start:end:step over the non-validation records (the original's "500m" split)
    c.bootstrap_slice = "13:17:20"  # start:end:step over the non-validation records (the "2b" split)
    c.write_train = False  # also write the whole train split (the raw-fresh baseline)
    c.overwrite = False  # replace a prepared dataset already in output_dir
    return c


def check_output_dir(output_dir: str) -> None:
    """FileExistsError (two lines: what, and the fix) when `output_dir` already holds a prepared dataset."""
    if os.path.exists(os.path.join(output_dir, "manifest.json")):
        raise FileExistsError(f"config.prepare.output_dir={output_dir!r} already holds a prepared dataset "
                              f"(manifest.json)\nrerun with --config.prepare.overwrite=True to replace it, or choose "
                              f"another --config.prepare.output_dir")


def validate_prepare_config(config: ml_collections.ConfigDict) -> None:
    """config.prepare before anything is read or written (ValueError naming the key): source and output_dir set,
    the split slices and a toy source well formed, and output_dir not already a prepared dataset unless
    overwrite=True (FileExistsError). Whether the source exists is checked by `bolt_jax.workflows.inputs`."""
    p = config.prepare
    for key in ("source", "output_dir"):
        if not p[key]:
            raise ValueError(f"config.prepare.{key} is not set; set --config.prepare.{key}=PATH")
    for key in ("validation_slice", "warmstart_slice", "bootstrap_slice"):
        try:
            parse_split_slice(p[key])
        except ValueError as e:
            raise ValueError(f"config.prepare.{key}: {e}") from None
    if p.source.startswith(("toy:", "toy_thoughts:")):
        parts = p.source.split(":")
        if len(parts) not in (2, 3) or not all(x.isdigit() for x in parts[1:]):
            raise ValueError(f"config.prepare.source={p.source!r} is not a toy source; use toy:NUM_DOCS[:SEED] or "
                             "toy_thoughts:NUM_DOCS[:SEED]")
    if not p.overwrite:
        check_output_dir(p.output_dir)


def parse_split_slice(spec: str) -> tuple[int, int, int]:
    """Spec "start:end:step": record i belongs to the split when start <= i % step < end (the original's modular splits;
    not the E-step's job slice "i:n", `bolt_jax.estep.run.parse_slice`)."""
    try:
        start, end, step = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ValueError(f"bad split slice {spec!r}: expected 'start:end:step', e.g. '13:17:20'") from None
    if not 0 <= start < end <= step:
        raise ValueError(f"bad split slice {spec!r}: need 0 <= start < end <= step")
    return start, end, step


def _toy_source(spec: str, workdir: str) -> str:
    from bolt_jax.data import toy

    parts = spec.split(":")
    try:
        num_docs, seed = int(parts[1]), int(parts[2]) if len(parts) > 2 else 0
    except (IndexError, ValueError):
        raise ValueError(f"bad toy source {spec!r}: use toy:NUM_DOCS[:SEED] or toy_thoughts:NUM_DOCS[:SEED]") from None
    path = os.path.join(workdir, f"{parts[0]}_{num_docs}_{seed}.jsonl")
    toy.write_toy_corpus(path, "thoughts" if parts[0] == "toy_thoughts" else "raw", num_docs, seed)
    return path


def split_assignment(num_records: int, seed: int, shuffle: bool, validation_slice: str, warmstart_slice: str,
                     bootstrap_slice: str) -> dict[str, np.ndarray]:
    """Record indices of every split, in output order."""
    order = np.random.default_rng(seed).permutation(num_records) if shuffle else np.arange(num_records)
    val_sl, warm_sl, boot_sl = map(parse_split_slice, (validation_slice, warmstart_slice, bootstrap_slice))
    j = np.arange(num_records)
    is_val = (j % val_sl[2] >= val_sl[0]) & (j % val_sl[2] < val_sl[1])
    train = order[~is_val]
    t = np.arange(len(train))
    pick = lambda sl: train[(t % sl[2] >= sl[0]) & (t % sl[2] < sl[1])]  # noqa: E731
    return {"validation": order[is_val], "train": train, "warmstart": pick(warm_sl), "bootstrap": pick(boot_sl)}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_split(path: str, corpus: CorpusSource, indices: np.ndarray, tokenizer, bar) -> dict[str, Any]:
    """Writes the split's records to `path` and returns their statistics, measured in the same pass (each record is
    read once: a Parquet row group or a TFDS record is not free to read twice); `bar` advances per record."""
    words = np.zeros(len(indices), np.int64)
    tokens = np.zeros(len(indices), np.int64)

    def records():
        for k, i in enumerate(indices):
            record = corpus[int(i)]
            text = raw_text(record)
            words[k] = len(WORD_RE.findall(text))
            if tokenizer is not None:
                tokens[k] = len(tokenizer.encode(text)) + 2  # + BOS, EOS
            yield record
            bar.update(1)

    write_jsonl(path, records())
    return _stats(words, tokens, tokenizer is not None)


def _stats(words: np.ndarray, tokens: np.ndarray, with_tokens: bool) -> dict[str, Any]:
    """A split manifest's `stats`: samples and words, and token statistics when a tokenizer was given."""
    out = {"num_samples": int(len(words)), "content_word_length": int(words.sum())}
    if with_tokens:
        out.update(total_tokens=int(tokens.sum()), mean_tokens=float(tokens.mean()) if len(tokens) else 0.0,
                   max_tokens=int(tokens.max()) if len(tokens) else 0,
                   p50_tokens=float(np.median(tokens)) if len(tokens) else 0.0)
    return out


def prepare(*, source: str, output_dir: str, tokenizer_path: str = "", seed: int = 42, shuffle: bool = True,
            strict: bool = False, validation_slice: str = "0:1:1000", warmstart_slice: str = "0:1:20",
            bootstrap_slice: str = "13:17:20", write_train: bool = False, overwrite: bool = False,
            tfds_data_dir: str = "") -> dict[str, Any]:
    """Write the splits; returns the top-level manifest."""
    if not source or not output_dir:
        raise ValueError("prepare needs a source and an output_dir")
    if not overwrite:
        check_output_dir(output_dir)
    corpus = _open_source(source, output_dir, strict, tfds_data_dir)
    tokenizer = None
    if tokenizer_path:
        from bolt_jax.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path)
    settings = dict(source=source, seed=seed, shuffle=shuffle, strict=strict, validation_slice=validation_slice,
                    warmstart_slice=warmstart_slice, bootstrap_slice=bootstrap_slice, tokenizer_path=tokenizer_path)
    assignment = split_assignment(len(corpus), seed, shuffle, validation_slice, warmstart_slice, bootstrap_slice)
    top: dict[str, Any] = {"source": source, "num_source_records": len(corpus),
                           "read_report": corpus.report.as_dict(), "settings": settings, "splits": {}}
    splits = [split for split in SPLITS if split != "train" or write_train]
    with progress(total=sum(len(assignment[split]) for split in splits), desc="prepare", unit="record") as bar:
        for split in splits:
            bar.set_postfix_str(split)
            top["splits"][split] = _prepare_split(split, output_dir, corpus, assignment[split], tokenizer, bar,
                                                  source, settings)
    atomic_write_text(os.path.join(output_dir, "manifest.json"), json.dumps(top, indent=2) + "\n")
    return top


def _open_source(source: str, output_dir: str, strict: bool, tfds_data_dir: str) -> CorpusSource:
    """The corpus, indexed (a pass over a JSONL or Parquet source, logged since it can take a while). A real source
    is opened before output_dir is created, so a missing one leaves nothing behind; a toy one is written into it."""
    toy = source.startswith(("toy:", "toy_thoughts:"))
    log.info("prepare: indexing %s", source)
    start = time.perf_counter()
    corpus = None if toy else open_corpus(source, strict=strict, tfds_data_dir=tfds_data_dir or None,
                                          show_progress=True)
    os.makedirs(output_dir, exist_ok=True)
    if toy:
        corpus = open_corpus(_toy_source(source, output_dir), strict=strict)
    log.info("prepare: %d records in %s (%.1f s)", len(corpus), source, time.perf_counter() - start)
    return corpus


def _prepare_split(split: str, output_dir: str, corpus: CorpusSource, indices: np.ndarray, tokenizer, bar,
                   source: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One split's directory: its records, their line index and its manifest. Returns its entry in the top-level
    manifest."""
    split_dir = os.path.join(output_dir, split)
    filename = f"{split}.val.jsonl" if split == "validation" else f"{split}.chunk.00.jsonl"
    path = os.path.join(split_dir, filename)
    stats = _write_split(path, corpus, indices, tokenizer, bar)
    save_line_index(path, build_line_index(path, ReadReport(), strict=True))
    manifest = {"name": split, "file": filename, "source": source, "format": "final", "stats": stats,
                "sha256": _sha256(path), "settings": settings}
    atomic_write_text(os.path.join(split_dir, "manifest.json"), json.dumps(manifest, indent=2) + "\n")
    log.info("prepare: %s -> %s (%d records)", split, path, len(indices))
    return {"dir": split_dir, "num_samples": int(len(indices)), "sha256": manifest["sha256"]}


def done_line(manifest: dict[str, Any], output_dir: str, seconds: float) -> str:
    """The last line `prepare` prints: the records of each written split, of how many read, and where they went."""
    counts = ", ".join(f"{split} {info['num_samples']}" for split, info in manifest["splits"].items())
    malformed = manifest["read_report"]["num_malformed"]
    return (f"prepare: wrote {counts} records (of {manifest['num_source_records']} read"
            + (f", {malformed} malformed skipped" if malformed else "")
            + f") in {seconds:.1f} s -> {os.path.abspath(output_dir)}")


def split_summary(manifest: dict[str, Any], settings: dict[str, Any]) -> str:
    """Why the splits hold the records they do: the rule of each, and how many records are in none of the written
    splits (e.g. 200 toy records -> validation 1, warmstart 10, bootstrap 40; the other 149 are train only)."""
    n = manifest["num_source_records"]
    counts = {k: v["num_samples"] for k, v in manifest["splits"].items()}
    val = counts.get("validation", 0)
    written = sum(v for k, v in counts.items() if k != "train")
    rules = [f"validation = records {settings['validation_slice']} ({val})",
             f"warmstart = train records {settings['warmstart_slice']} ({counts.get('warmstart', 0)})",
             f"bootstrap = train records {settings['bootstrap_slice']} ({counts.get('bootstrap', 0)})"]
    rest = n - written
    tail = (f"the train split ({n - val}) is written too" if "train" in counts else
            f"the other {rest} are train records in no written split (write_train=True writes the whole train split)")
    return (f"{n} records; a slice start:end:step takes record i when start <= i % step < end: " + "; ".join(rules)
            + f"; {tail}")


def run_prepare(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Workflow entry: `config.prepare` (default_prepare_config() fields) or a prepare section itself."""
    section = config.prepare if "prepare" in config else config
    defaults = default_prepare_config()
    kw = {k: section.get(k, defaults[k]) for k in defaults}
    start = time.perf_counter()
    manifest = prepare(**kw)
    print(split_summary(manifest, kw))
    for split, info in manifest["splits"].items():
        print(f"{split:<11} {info['num_samples']:>9} records  {info['dir']}")
    if manifest["read_report"]["num_malformed"]:
        print(f"malformed records skipped: {manifest['read_report']['num_malformed']} "
              f"(first: {manifest['read_report']['malformed'][:3]})")
    print(done_line(manifest, kw["output_dir"], time.perf_counter() - start))
    return manifest


def _flag_value(kind: type):
    """argparse type of one config field: booleans accept the bare flag, `=true/false`, `=1/0` (as bolt_jax.main)."""
    if kind is not bool:
        return kind

    def parse(text: str) -> bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(text)
    parse.__name__ = "bool"
    return parse


def build_parser():
    """Every field of default_prepare_config() as a flag, documented by the comment next to it there (the same
    doc `python -m bolt_jax.main --describe` shows)."""
    import argparse
    import inspect

    from bolt_jax.runtime.config_docs import key_docs
    docs = key_docs(inspect.getsource(default_prepare_config))
    ap = argparse.ArgumentParser(
        prog="python -m bolt_jax.data.prepare",
        description="Write the validation / warmstart / bootstrap splits of a corpus with manifests. The same as "
                    "`python -m bolt_jax.main --config configs/prepare_toy.py --config.prepare.<flag>=...`.")
    for key, value in default_prepare_config().items():
        kind = type(value)
        extra = {"nargs": "?", "const": True} if kind is bool else {}
        ap.add_argument(f"--{key}", type=_flag_value(kind), default=value, metavar=kind.__name__.upper(),
                        help=f"{docs.get(key) or key} (default: {value!r})", **extra)
    return ap


def main(argv: list[str] | None = None) -> None:
    """python -m bolt_jax.data.prepare --source S --output_dir D [--tokenizer_path T] [--overwrite] [--<field> ...]"""
    import sys

    from bolt_jax.runtime import console
    args = build_parser().parse_args(argv)
    console.setup()
    config = ml_collections.ConfigDict({"prepare": vars(args)})
    try:
        validate_prepare_config(config)
        run_prepare(config)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        # the messages name the workflow's keys (--config.prepare.x); here the same flag is --x
        print(f"error: {str(e).replace('--config.prepare.', '--')}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
