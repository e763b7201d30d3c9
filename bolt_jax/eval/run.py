"""The `eval` workflow: few-shot GSM8K / MATH (plain and latent variants) and validation NLL of a model checkpoint;
one results JSON per benchmark, a metrics.json summary and the resolved config.json in `config.eval.output_dir`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from bolt_jax.runtime import console
from bolt_jax.runtime.atomic import atomic_write_text


def default_eval_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "checkpoint": "",  # a model checkpoint (bolt_jax.model.artifact)
        "output_dir": "",  # "" = <run_dir>/eval
        "gsm8k_path": "",  # GSM8K test.jsonl ({question, answer}); "" = skip
        "math_path": "",  # MATH test (.jsonl/.parquet with problem, solution); "" = skip
        # the paper's plots read the synthetic variants (bolt_jax.eval.prompts.VARIANTS lists all, with the compact
        # gsm8k_cot / math_cot and their latent twins); a variant whose benchmark file is not set is skipped
        "variants": "gsm8k_cot_synthetic_alt,latent_gsm8k_cot_synthetic_alt,hendrycks_math_cot_synthetic,"
                    "latent_hendrycks_math_cot_synthetic",
        "limit": 0,  # examples per benchmark (0 = all)
        "num_samples": 1,
        "temperature": 0.0,  # greedy, as the original's few-shot evaluation
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": 0,  # 0 = the variant's (the paper's: 1024)
        "max_prompt_tokens": 0,  # 0 = the variant's (the paper's: 1024); shortened prompts are counted
        "truncation": "",  # "" = the variant's (the paper's: left_truncate), or drop_exemplars
        "validation_path": "",  # raw documents for NLL per token / per char
        "validation_docs": 1000,
        "elbo_samples": 0,  # > 0: also the validation ELBO_1..K per token (E-step code; K = 4 in the paper)
        "elbo_docs": 1000,
        "seed": 1234,
        "scheduler": "continuous",  # the sampler's (bolt_jax.sampling.schedulers): "continuous" or "static"
        "decode_slots": 0,  # continuous: rows decoded together (0 = every request at once, up to 256)
    })


def run_eval(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Loads the checkpoint, runs each benchmark variant and the validation NLL/ELBO, and writes
    `<output_dir>/<variant>.json`, `metrics.json` and `config.json` (the resolved config); the last line printed says
    where. The progress display counts prompts and moves as the sampler finishes them (its `on_done`), so a long
    benchmark shows a rate and an ETA instead of sitting at 0 until it is done."""
    import jax

    from bolt_jax.config import make_sampling_mesh, rules_of, runtime_overrides
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.eval import fewshot
    from bolt_jax.model import artifact as model_ckpt
    e = config.eval
    if not e.checkpoint:
        raise ValueError("config.eval.checkpoint is empty: name a model checkpoint")
    out_dir = e.output_dir or os.path.join(config.run_dir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    primary = jax.process_index() == 0
    if primary:
        atomic_write_text(os.path.join(out_dir, "config.json"), config.to_json_best_effort(indent=2))
    jobs = _fewshot_jobs(e)  # read before the model loads: a bad benchmark file fails fast
    mesh = make_sampling_mesh(config)
    model, _, tok_dir = model_ckpt.load_model(e.checkpoint, mesh, dtype="compute",
                                             rules=rules_of(config), **runtime_overrides(config))
    tok = load_tokenizer(tok_dir)
    gen = fewshot.sampler_generate_fn(model, tok, mesh, seed=e.seed, scheduler=e.scheduler,
                                      decode_slots=e.decode_slots or None)
    summary: dict[str, Any] = {"checkpoint": os.path.abspath(e.checkpoint)}
    echo = console.echo if primary else _quiet  # one copy of each line, not one per process
    bar = console.progress(total=sum(len(examples) for _, examples in jobs), desc="eval", unit="prompt",
                           enabled=primary and bool(jobs))
    with bar:
        for name, examples in jobs:
            bar.set_postfix_str(name)
            result = fewshot.evaluate_fewshot(
                examples, name, gen, tokenizer=tok, num_samples=e.num_samples, max_new_tokens=e.max_new_tokens,
                temperature=e.temperature, top_p=e.top_p, top_k=e.top_k, max_prompt_tokens=e.max_prompt_tokens,
                truncation=e.truncation, output_path=os.path.join(out_dir, f"{name}.json"), on_done=bar.update)
            summary[name] = m = result["metrics"]
            echo(f"{name:20s} accuracy {m['accuracy']:.4f} +- {m['accuracy_se']:.4f} on {m['examples']} "
                 f"examples ({m['prompts_shortened']} prompts shortened)")
    if e.validation_path:
        summary.update(_validation(config, model, tok, mesh, out_dir, echo))
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(summary, indent=2))
    written = ", ".join(["metrics.json", *(f"{name}.json" for name, _ in jobs), "config.json"])
    echo(f"eval results written to {os.path.abspath(out_dir)} ({written})")
    return summary


def _quiet(_line: str) -> None:
    """`echo` on the processes other than the primary."""


def _fewshot_jobs(e: ml_collections.ConfigDict) -> list[tuple[str, list[Any]]]:
    """(variant, examples) for each configured variant whose benchmark file is set, in `variants` order."""
    from bolt_jax.eval import fewshot, prompts
    sources = {"gsm8k": (e.gsm8k_path, fewshot.read_gsm8k), "math": (e.math_path, fewshot.read_math)}
    jobs = []
    for name in [v.strip() for v in e.variants.split(",") if v.strip()]:
        if name not in prompts.VARIANTS:
            raise ValueError(f"config.eval.variants: unknown {name!r}; known: {sorted(prompts.VARIANTS)}")
        path, reader = sources.get(prompts.VARIANTS[name].benchmark, ("", None))
        if path:
            jobs.append((name, reader(path, e.limit)))
    return jobs


def _validation(config: ml_collections.ConfigDict, model, tok, mesh, out_dir: str,
                echo: Callable[[str], None]) -> dict[str, Any]:
    """Validation NLL per token (and, with `elbo_samples`, the ELBO) on `validation_path`'s raw documents."""
    from bolt_jax.data.readers import open_corpus
    from bolt_jax.eval import validation
    e = config.eval
    out = {"validation": validation.validation_nll(model, tok, open_corpus(e.validation_path),
                                                   limit=e.validation_docs, mesh=mesh)}
    echo(f"validation NLL {out['validation']['nll_per_token']:.4f} / token")
    if e.elbo_samples > 0:
        out["validation_elbo"] = validation.validation_elbo(
            config, e.checkpoint, e.validation_path, k=e.elbo_samples, docs=e.elbo_docs,
            store_dir=os.path.join(out_dir, "elbo_store"))
        echo(f"validation ELBO: {out['validation_elbo']}")
    return out
