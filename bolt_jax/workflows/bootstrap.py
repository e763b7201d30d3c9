"""The `bootstrap` workflow: BoLT's EM loop on a fixed corpus, with its baselines and a report (spec 4.6, 5, 6.3).

    base ─► warmstart (train on teacher/toy thoughts)
              └► E-step 1 (warmstart model writes thoughts for the fixed corpus) ─► M-step 1 (train from base)
                   └► E-step 2 (M-step 1's model) ─► M-step 2 (from base) ─► ...
    baselines: raw token-match and raw FLOP-match (train from base on the raw fixed corpus)
    report: validation loss and ELBO per model, thought correctness per iteration (a corpus whose answers can be
            checked: bootstrap.answer_check "toy" or "gsm8k"), held-out accuracy, plots, report.md

Every M-step starts from the *base* checkpoint with a fresh optimizer, as the original ("scratch" runs). Each stage
records itself in `run_dir/manifest.json` when done; a crashed run, rerun with the same command, skips finished
stages and resumes the unfinished one where it stopped (trainer checkpoints, E-step result shards).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from bolt_jax.config import derive
from bolt_jax.runtime.atomic import atomic_write_text
from bolt_jax.workflows.manifest import Manifest, adopt, run_stage, stage_settings

log = logging.getLogger("bolt_jax.workflows.bootstrap")


def default_bootstrap_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "iterations": 2,
        "base_checkpoint": "",  # the model every M-step starts from (converted TinyLlama); "" = pretrain one
        "pretrain_path": "",  # raw corpus for the base model when base_checkpoint is "" (toy demo)
        "pretrain_steps": 0,
        "warmstart_path": "",  # augmented records with teacher (API or toy) thoughts
        "bootstrap_path": "",  # the fixed raw corpus the E-step writes thoughts for
        "warmstart_steps": 100,
        "iteration_steps": 100,  # M-step steps per iteration
        "warmstart_global_batch_size": 0,  # 0 = config.train.global_batch_size (the paper: 96 vs 192)
        "raw_token_match_steps": 0,  # 0 = as many passes over the raw corpus as the M-step makes over its data
        "raw_flops_match_steps": 0,  # 0 = iteration_steps (same compute)
        "baselines": "raw_token_match,raw_flops_match",
        "elbo_samples": 4,  # validation ELBO_1..K per model (0 = skip)
        "elbo_docs": 16,
        "toy": False,  # the corpus is bolt_jax.data.toy: also report how often the chosen thought is correct
        "toy_eval_problems": 40,  # toy: greedy zero-shot accuracy of every model on this many held-out problems
        # whose answers the thoughts are checked against: "" (none), "toy" (bolt_jax.data.toy, the same as
        # toy=True) or "gsm8k" (bolt_jax.data.gsm8k documents: a thought is correct when it reaches the document's
        # final answer; held-out accuracy on gsm8k_test_path with the zero-shot latent prompt)
        "answer_check": "",
        "gsm8k_test_path": "",  # gsm8k: GSM8K test ({question, answer}), the held-out problems
        "gsm8k_eval_problems": 0,  # gsm8k: greedy accuracy of every model on the first N (0 = skip)
        "eval_max_new_tokens": 0,  # gsm8k: tokens a held-out answer may take (0 = estep.max_new_tokens + 16)
        # True: a given base_checkpoint is evaluated too, as model "base" (held-out accuracy, NLL), as the base the
        # demo pretrains always is
        "evaluate_base": False,
        # a finished bootstrap run whose base and warmstart stages (and their evaluations) this run reuses instead
        # of training them again (the K sweep: one warmstart, EM with several K); "" = none
        "shared_stages_from": "",
        # JAX's persistent compilation cache in <run_dir>/xla_cache: the stages compile the same programs again
        # (every train stage the same step, every evaluation the same sampler), so later stages load them
        # (bolt_jax.runtime.compile_cache; the small demo of tests/test_demo.py 61 -> 46 s on the 2-core CPU)
        "compilation_cache": True,
        # the paper's trials: a run (trial 0's run_dir) whose base, warmstart and E-step stages this run takes
        # instead of computing them, so only the M-steps and baselines are retrained with this run's seed, on the
        # same E-step data (spec 5.6: every iteration's thoughts come from trial 0); "" = compute everything here
        "reuse_estep_from": "",
        # a finished stage whose settings differ from this run's: "refuse" (stop before doing anything, naming the
        # changed keys) or "rerun" (redo it and every stage after it); see bolt_jax.workflows.manifest
        "on_change": "refuse",
        # the console while the stages run: "stages" (one line at each stage's start and end; everything a stage
        # logs or prints goes to <run_dir>/logs/<stage>.log) or "full" (all of it on the console as well)
        "console": "stages",
    })


SHARED_STAGES = ("base", "warmstart", "fewshot_base", "fewshot_warmstart", "elbo_warmstart", "nll_base")


def section_defaults() -> dict[str, Any]:
    """Flat defaults of the sections a stage's settings come from (`Manifest(defaults=...)`)."""
    from bolt_jax.config import flatten
    from bolt_jax.data.pipeline import default_data_config
    from bolt_jax.estep.run import default_estep_config
    from bolt_jax.train.loop import default_train_config
    from bolt_jax.train.optim import default_optim_config
    return flatten({"data": default_data_config().to_dict(), "estep": default_estep_config().to_dict(),
                    "train": default_train_config().to_dict(), "optim": default_optim_config().to_dict(),
                    "bootstrap": default_bootstrap_config().to_dict()})


def reuse_shared_stages(manifest: Manifest, source_dir: str) -> None:
    """Take the finished base and warmstart stages of another run (and their evaluations) into this manifest: they
    are then skipped when their settings match this run's, as any finished stage."""
    source = Manifest(os.path.abspath(source_dir))
    missing = [n for n in ("base", "warmstart") if not source.done(n)]
    if missing:
        raise ValueError(f"bootstrap.shared_stages_from={source_dir}: stages {missing} are not finished there")
    for name in SHARED_STAGES:
        adopt(manifest, source, name, ignored=())


TRAIN_SECTIONS = ("model", "optim", "data", "train", "seed")
ESTEP_SECTIONS = ("model", "estep", "seed")


# what a stage taken from another trial may differ in: the seed, the checkpoint that sampled, the stages upstream
ADOPTED_ACROSS = ("seed", "estep.checkpoint", "upstream.")


class TrialSource:
    """The run whose stages a trial adopts (`bootstrap.reuse_estep_from`); None-like when unset."""

    def __init__(self, config, manifest: Manifest):
        self.dir = config.bootstrap.get("reuse_estep_from", "")
        self.manifest = manifest
        if not self.dir:
            self.source = None
            return
        if os.path.abspath(self.dir) == os.path.abspath(config.run_dir):
            raise ValueError("config.bootstrap.reuse_estep_from names this run's own run_dir; name trial 0's")
        if not os.path.isfile(os.path.join(self.dir, "manifest.json")):
            raise FileNotFoundError(f"config.bootstrap.reuse_estep_from={self.dir}: no bootstrap run there "
                                    f"(manifest.json missing); run that trial first")
        self.source = Manifest(os.path.abspath(self.dir))

    def take(self, name: str, required: bool = True) -> None:
        """Adopt stage `name` from the source run; a required stage the source has not finished stops this run
        (what is done here is kept: rerun once the source has it)."""
        if self.source is None:
            return
        if not adopt(self.manifest, self.source, name, ADOPTED_ACROSS) and required:
            raise ValueError(f"config.bootstrap.reuse_estep_from={self.dir}: stage {name} is not finished there "
                             f"yet; let that run reach it, then rerun this command (finished stages are kept)")


ANSWER_CHECKS = ("", "toy", "gsm8k")


def validate_bootstrap_config(config) -> None:
    """The bootstrap section's enumerations, before anything runs."""
    from bolt_jax.runtime.console import STAGE_CONSOLE
    from bolt_jax.workflows.manifest import ON_CHANGE
    b = config.bootstrap
    answer_check(config)
    if b.get("on_change", "refuse") not in ON_CHANGE:
        raise ValueError(f"config.bootstrap.on_change={b.on_change!r}; choose one of {ON_CHANGE}")
    if b.get("console", "stages") not in STAGE_CONSOLE:
        raise ValueError(f"config.bootstrap.console={b.console!r}; choose one of {STAGE_CONSOLE}")


def answer_check(config) -> str:
    """Which corpus's answers thoughts and held-out problems are checked against: "toy" (bootstrap.toy=True, or
    answer_check="toy"), "gsm8k", or "" (none)."""
    b = config.bootstrap
    check = "toy" if b.get("toy") else b.get("answer_check", "")
    if check not in ANSWER_CHECKS:
        raise ValueError(f"config.bootstrap.answer_check={check!r}; choose one of {ANSWER_CHECKS}")
    return check


def eval_settings(config, upstream: dict[str, str]) -> dict[str, Any]:
    """What an evaluation of one model depends on: the model (its stage key), the validation text, the sampling
    and chunking settings (not num_samples: the ELBO uses bootstrap.elbo_samples), the evaluation sizes."""
    out = {k: v for k, v in stage_settings(config, ("estep", "seed"), upstream).items()
           if k not in ("estep.num_samples", "estep.elbo_samples", "estep.checkpoint", "estep.corpus_path")}
    b = config.bootstrap
    out.update({"bootstrap.toy": b.toy, "bootstrap.toy_eval_problems": b.get("toy_eval_problems", 0),
                "bootstrap.elbo_samples": b.elbo_samples, "bootstrap.elbo_docs": b.elbo_docs,
                "data.validation_path": config.data.validation_path})
    # keys added for GSM8K (a run recorded before them counts as computed under their defaults: Manifest)
    for key in ("answer_check", "gsm8k_test_path", "gsm8k_eval_problems", "eval_max_new_tokens"):
        out[f"bootstrap.{key}"] = b.get(key, default_bootstrap_config()[key])
    for key, path in (("data.validation_path", config.data.validation_path),
                      ("bootstrap.gsm8k_test_path", b.get("gsm8k_test_path", ""))):
        if path and os.path.isfile(path):
            out[f"{key}:size"] = os.path.getsize(path)
    return out


# ------------------------------------------------------------------------------------------------ stages
def _train_config(config, name: str, *, data_path: str, latent_type: str, steps: int, init: str):
    changes = {"workflow": "train", "run_dir": os.path.join(config.run_dir, "runs", name), "train.steps": int(steps),
               "train.init_checkpoint": init, "train.save_every": max(1, min(config.train.save_every, int(steps))),
               "data.train_path": data_path, "data.latent_type": latent_type}
    if name == "warmstart" and config.bootstrap.get("warmstart_global_batch_size", 0):
        changes["train.global_batch_size"] = config.bootstrap.warmstart_global_batch_size
    return derive(config, changes)


def train_stage(c) -> dict[str, Any]:
    """Trains one model with the stage's config (`_train_config`)."""
    from bolt_jax.eval.periodic import evaluators_for
    from bolt_jax.train.loop import train
    summary = train(c, evaluators_for(c))
    return {"model_dir": summary["model_dir"], "run_dir": c.run_dir, "final_loss": summary["final_loss"],
            "val_loss": summary["val_loss"], "tokens": c.train.steps * c.train.global_batch_size * c.data.seq_len,
            "steps": c.train.steps, "tokens_per_s": summary["tokens_per_s"]}


def _estep_config(config, iteration: int, model_dir: str):
    return derive(config, {"estep.checkpoint": model_dir, "estep.corpus_path": config.bootstrap.bootstrap_path,
                           "estep.iteration": iteration, "estep.run_name": "bootstrap",
                           "estep.store_dir": os.path.join(config.run_dir, "estep_store"),
                           "estep.output_path": os.path.join(config.run_dir, "data", f"iter_{iteration}.jsonl")})


def estep_stage(config, c, iteration: int) -> dict[str, Any]:
    """E-step `iteration` with the stage's config (`_estep_config`); with an answer check (toy, GSM8K): the thoughts'
    correctness too."""
    from bolt_jax.estep.run import run_estep
    result = run_estep(c)
    if "output_path" not in result:
        raise RuntimeError(f"E-step {iteration} did not finish every slice (estep.slice={c.estep.slice}); run the "
                           f"other slices, then rerun this command to merge")
    out = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    check = answer_check(config)
    if check:
        out["thought_correct"] = estep_correctness(config, result["store"], check)
    return out


def estep_correctness(config, store_dir: str, check: str = "toy") -> dict[str, float]:
    """How often the E-step's samples and its chosen thought are correct, and the ESS, over the chunks that state an
    answer: toy, the true chain of steps (bolt_jax.eval.toy); GSM8K, a thought that reaches the document's final
    answer (bolt_jax.data.gsm8k.thought_is_correct)."""
    from bolt_jax.data.readers import open_corpus
    from bolt_jax.estep.run import chunking_config, document_chunks
    if check == "gsm8k":
        from bolt_jax.data.gsm8k import estep_correctness as correctness
    else:
        from bolt_jax.eval.toy import estep_correctness as correctness
    rows = []
    for path in sorted(glob.glob(os.path.join(store_dir, "shards", "*", "*.jsonl"))):
        rows += [json.loads(line) for line in open(path) if line.strip()]
    records = open_corpus(config.bootstrap.bootstrap_path)
    chunks = document_chunks(records, range(len(records)), chunking_config(config.estep))
    return correctness(rows, chunks)


def toy_estep_correctness(config, store_dir: str) -> dict[str, float]:
    """Toy corpus: how often the E-step's samples and its chosen thought are the true chain of steps, and the ESS."""
    return estep_correctness(config, store_dir, "toy")


def elbo_stage(config, name: str, model_dir: str) -> dict[str, float]:
    """Validation ELBO_n per token of one model (bolt_jax.eval.validation.validation_elbo)."""
    from bolt_jax.eval.validation import validation_elbo
    out = validation_elbo(config, model_dir, config.data.validation_path, k=config.bootstrap.elbo_samples,
                          docs=config.bootstrap.elbo_docs, name=f"elbo_{name}",
                          store_dir=os.path.join(config.run_dir, "elbo_store"))
    out["neg_elbo_per_token"] = -out[f"elbo_{config.bootstrap.elbo_samples}_per_token"]
    return out


def toy_fewshot_stage(config, model_dir: str, latent: bool) -> dict[str, Any]:
    """Greedy accuracy on held-out toy problems (bolt_jax.eval.toy.heldout_accuracy), the prompt in the training
    format (latent prompt for models trained with thoughts). A toy document holds one problem, so the prompt is the
    question alone, as every training document begins: exemplars before it would be a layout no model trained on
    (with two problems per document, models copied the start number of the wrong question)."""
    from bolt_jax.data.readers import open_corpus
    from bolt_jax.eval import toy as toy_eval

    val = open_corpus(config.data.validation_path)
    problems = toy_eval.heldout_problems([val[j] for j in range(len(val))], config.bootstrap.toy_eval_problems)
    shots: list = []
    model, tok, mesh = load_eval_model(config, model_dir)
    out = toy_eval.heldout_accuracy(model, tok, problems, shots, latent=latent, mesh=mesh,
                                    max_new_tokens=config.estep.max_new_tokens + 8)
    atomic_write_text(os.path.join(config.run_dir, "eval", f"toy_{os.path.basename(os.path.dirname(model_dir))}.json"),
                      json.dumps(out, indent=1))
    return {k: v for k, v in out.items() if k != "examples"}


def load_eval_model(config, model_dir: str):
    """(model, tokenizer, mesh) of a checkpoint for an evaluation, with this run's mesh, rules and runtime settings."""
    from bolt_jax.config import make_sampling_mesh, rules_of, runtime_overrides
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.model import artifact as model_ckpt
    mesh = make_sampling_mesh(config)
    model, _, tok_dir = model_ckpt.load_model(model_dir, mesh, dtype="compute", rules=rules_of(config),
                                              **runtime_overrides(config))
    return model, load_tokenizer(tok_dir or config.data.tokenizer_path), mesh


def gsm8k_heldout_stage(config, model_dir: str, latent: bool) -> dict[str, Any]:
    """Greedy accuracy on the first bootstrap.gsm8k_eval_problems of GSM8K test, zero-shot with the prompt in the
    training format (bolt_jax.data.gsm8k.evaluation_prompt: the latent prompt for models trained with thoughts, so
    the model writes its thought, <EoL>, then "The answer is N."; the raw prompt for raw ones), graded by
    gsm8k.answer_is_correct. Zero-shot because every training document holds one problem: few-shot exemplars
    before it would be a layout no model here trained on, and would cost a 135M model ~900 prompt tokens each."""
    from bolt_jax.data import gsm8k
    from bolt_jax.eval.fewshot import bootstrap_se
    from bolt_jax.sampling import generate
    b = config.bootstrap
    problems = gsm8k.read_problems(b.gsm8k_test_path, range(b.gsm8k_eval_problems))
    model, tok, mesh = load_eval_model(config, model_dir)
    prompts = [[tok.bos_id] + tok.encode(gsm8k.evaluation_prompt(p.question, latent)) for p in problems]
    r = generate(model, prompts, n=1, max_new_tokens=b.get("eval_max_new_tokens") or config.estep.max_new_tokens + 16,
                 greedy=True, temperature=1.0, stop_token_ids=[tok.eos_id], mesh=mesh,
                 max_prompt_len=max(len(p) for p in prompts))
    texts = [tok.decode(t) for t in r.tokens]
    correct = [float(gsm8k.answer_is_correct(t, p.answer)) for t, p in zip(texts, problems)]
    stated = [float(gsm8k.evaluation_answer(t) is not None) for t in texts]
    out = {"accuracy": float(np.mean(correct)), "accuracy_se": bootstrap_se(correct), "problems": len(problems),
           "answer_stated": float(np.mean(stated)), "latent_prompt": latent,
           "examples": [{"question": p.question, "answer": p.answer, "output": t}
                        for p, t in zip(problems[:8], texts[:8])]}
    name = os.path.basename(os.path.dirname(model_dir)) if os.path.basename(model_dir) == "model" else \
        os.path.basename(model_dir)
    atomic_write_text(os.path.join(config.run_dir, "eval", f"gsm8k_{name}.json"), json.dumps(out, indent=1))
    return {k: v for k, v in out.items() if k != "examples"}


def count_tokens(path: str, tokenizer_path: str, latent_type: str, limit: int = 2000) -> float:
    """Mean tokens per document of a corpus in a format (a sample of up to `limit` documents)."""
    from bolt_jax.data.formats import format_document
    from bolt_jax.data.readers import open_corpus
    from bolt_jax.data.tokenizer import cached_tokenizer
    tok = cached_tokenizer(tokenizer_path)
    corpus = open_corpus(path)
    n = min(limit, len(corpus))
    rng = np.random.default_rng(0)
    total = sum(len(tok.encode_document(format_document(corpus[i], latent_type, rng))[0]) for i in range(n))
    return total / max(n, 1)


# ------------------------------------------------------------------------------------------------ driver
def dry_run_stages(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config.dry_run`: the run's largest programs compiled as its stages derive them (`_train_config`), nothing
    run, read or written (`bolt_jax.train.loop.dry_run`): the M-step's train step and, with `config.aot_topology`,
    the E-step's prefill, decode and scorer at the E-step's shape, with memory, collectives and roofline times
    (bolt_jax.aot); the warmstart's train step too where its batch differs (bootstrap.warmstart_global_batch_size).
    The baselines train the M-step's program; not compiled: a toy base's pretraining and the evaluations' programs.
    `config.aot_report`: the reports, keyed "mstep" and "warmstart", in one JSON file."""
    from bolt_jax.runtime.atomic import atomic_write_json
    from bolt_jax.train.loop import dry_run
    b = config.bootstrap
    reports = {}
    for name, steps, sampler in (("iter_1", b.iteration_steps, True), ("warmstart", b.warmstart_steps, False)):
        c = derive(_train_config(config, name, data_path="", latent_type="random", steps=max(1, steps), init=""),
                   {"aot_report": ""})
        if name == "warmstart" and c.train.global_batch_size == config.train.global_batch_size:
            break  # the M-step's program
        print(f"== {'M-step (and the raw baselines)' if sampler else 'warmstart'}: global batch "
              f"{c.train.global_batch_size} x {c.data.seq_len}", flush=True)
        reports["mstep" if sampler else "warmstart"] = dry_run(c, sampler=sampler)
    if config.get("aot_report") and config.get("aot_topology"):
        import jax
        if jax.process_index() == 0:
            atomic_write_json(config.aot_report, reports, indent=1)
            print(f"wrote {config.aot_report}")
    return reports


def run_bootstrap(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Base (or a given checkpoint), warmstart, the EM iterations, the raw baselines, evaluations, the report.
    Every stage is keyed by its settings (`bolt_jax.workflows.manifest`): a rerun skips what is current, and a
    change is refused or redone with everything after it (`bootstrap.on_change`). `config.dry_run`: compiles only
    (`dry_run_stages`)."""
    if config.get("dry_run", False):
        return dry_run_stages(config)
    with run_compilation_cache(config):
        return _run_stages(config)


def run_compilation_cache(config: ml_collections.ConfigDict) -> contextlib.AbstractContextManager:
    """`bootstrap.compilation_cache`: JAX's persistent compilation cache in <run_dir>/xla_cache while the run's
    stages compile (a context that does nothing when the setting is off)."""
    if not config.bootstrap.get("compilation_cache", True):
        return contextlib.nullcontext()
    from bolt_jax.runtime.compile_cache import persistent_compilation_cache
    return persistent_compilation_cache(os.path.join(os.path.abspath(config.run_dir), "xla_cache"))


def _run_stages(config: ml_collections.ConfigDict) -> dict[str, Any]:
    b = config.bootstrap
    run_dir = os.path.abspath(config.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    import jax
    manifest = Manifest(run_dir, b.get("on_change", "refuse"), defaults=section_defaults(),
                        stage_logs=b.get("console", "stages") == "stages" and jax.process_index() == 0)
    if manifest.stage_log_dir:
        print(f"each stage's log: {manifest.stage_log_dir}/<stage>.log (--config.bootstrap.console=full: the "
              "console shows it too)", flush=True)
    if b.get("shared_stages_from"):
        reuse_shared_stages(manifest, b.shared_stages_from)
    trial = TrialSource(config, manifest)
    models: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}

    def train(name: str, stage: str, upstream: dict[str, str], **kw) -> dict[str, Any]:
        if stage in ("base", "warmstart"):
            trial.take(stage)
        c = _train_config(config, name, **kw)
        models[name], keys[name] = run_stage(manifest, stage, stage_settings(c, TRAIN_SECTIONS, upstream),
                                             lambda: train_stage(c), work_dirs=[c.run_dir])
        return models[name]

    base = b.base_checkpoint
    if not base:
        if not b.pretrain_path or b.pretrain_steps <= 0:
            raise ValueError("config.bootstrap.base_checkpoint is empty: give a converted model "
                             "(python -m convert hf-to-orbax) or pretrain_path + pretrain_steps for a toy base")
        base = train("base", "base", {}, data_path=b.pretrain_path, latent_type="raw", steps=b.pretrain_steps,
                     init="")["model_dir"]
    from_base = {"base": keys["base"]} if "base" in keys else {}
    if b.base_checkpoint and b.get("evaluate_base"):
        from bolt_jax.model.artifact import model_identity
        models["base"] = {"model_dir": base, "steps": 0, "tokens": 0, "given": True}
        keys["base"] = model_identity(base)
    previous = train("warmstart", "warmstart", from_base, data_path=b.warmstart_path, latent_type="random",
                     steps=b.warmstart_steps, init=base)
    last = "warmstart"
    esteps: dict[int, dict[str, Any]] = {}
    for i in range(1, b.iterations + 1):
        c = _estep_config(config, i, previous["model_dir"])
        trial.take(f"estep_{i}")
        esteps[i], keys[f"estep_{i}"] = run_stage(manifest, f"estep_{i}",
                                                  stage_settings(c, ESTEP_SECTIONS, {last: keys[last]}),
                                                  lambda c=c, i=i: estep_stage(config, c, i),
                                                  work_dirs=[os.path.join(c.estep.store_dir, "bootstrap", f"iter_{i}")])
        previous = train(f"iter_{i}", f"mstep_{i}", {**from_base, f"estep_{i}": keys[f"estep_{i}"]},
                         data_path=esteps[i]["output_path"], latent_type="random", steps=b.iteration_steps,
                         init=base)
        last = f"iter_{i}"
    _train_baselines(config, esteps, base, from_base, train)
    for name in SHARED_STAGES[2:]:  # the shared models' evaluations, where the source has them
        trial.take(name, required=False)
    evaluations = evaluate_models(config, manifest, models, keys)
    return write_report(config, run_dir, manifest, models, esteps, evaluations)


def _train_baselines(config, esteps, base: str, from_base: dict[str, str], train) -> None:
    """Raw token-match (as many passes over the raw corpus as the last M-step made over its data) and raw
    FLOP-match (the M-step's steps), both from the base model."""
    b = config.bootstrap
    baselines = [x.strip() for x in b.baselines.split(",") if x.strip()]
    if "raw_token_match" in baselines:
        steps = b.raw_token_match_steps
        if not steps:
            aug = count_tokens(esteps[b.iterations]["output_path"], config.data.tokenizer_path, "random") \
                if b.iterations else count_tokens(b.warmstart_path, config.data.tokenizer_path, "random")
            raw = count_tokens(b.bootstrap_path, config.data.tokenizer_path, "raw")
            steps = max(1, round(b.iteration_steps * raw / aug))
        train("raw_token_match", "raw_token_match", from_base, data_path=b.bootstrap_path, latent_type="raw",
              steps=steps, init=base)
    if "raw_flops_match" in baselines:
        train("raw_flops_match", "raw_flops_match", from_base, data_path=b.bootstrap_path, latent_type="raw",
              steps=b.raw_flops_match_steps or b.iteration_steps, init=base)


def is_thought_model(name: str) -> bool:
    """Models trained with thoughts (warmstart, iter_N) get an ELBO; raw ones (base, raw baselines) an NLL."""
    return name == "warmstart" or name.startswith("iter_")


def evaluate_models(config, manifest: Manifest, models: dict[str, dict[str, Any]],
                    keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per model, on the validation documents: -ELBO_K per token (thought models; toy: with the posterior
    diagnostics) or NLL per token (raw models), over the same text tokens; toy and GSM8K: held-out
    accuracy (zero-shot, in the training format)."""
    b = config.bootstrap
    check = answer_check(config)
    out: dict[str, dict[str, Any]] = {name: {} for name in models}
    if not config.data.validation_path:
        return out
    heldout = {"toy": (toy_fewshot_stage, b.get("toy_eval_problems", 0)),
               "gsm8k": (gsm8k_heldout_stage, b.get("gsm8k_eval_problems", 0))}.get(check, (None, 0))
    for name, m in models.items():
        settings = eval_settings(config, {name: keys[name]})
        thought = is_thought_model(name)
        if heldout[1] > 0:
            out[name]["fewshot"], _ = run_stage(manifest, f"fewshot_{name}", settings, lambda m=m, t=thought:
                                                heldout[0](config, m["model_dir"], latent=t))
        if thought and b.elbo_samples > 0:
            fn = toy_posterior_stage if check == "toy" else elbo_stage
            out[name]["elbo"], _ = run_stage(manifest, f"elbo_{name}", settings,
                                             lambda fn=fn, n=name, m=m: fn(config, n, m["model_dir"]),
                                             work_dirs=[os.path.join(config.run_dir, "elbo_store", f"elbo_{name}")])
        elif not thought and b.elbo_samples > 0:
            out[name]["nll"], _ = run_stage(manifest, f"nll_{name}", settings,
                                            lambda m=m: nll_stage(config, m["model_dir"]))
    return out


def toy_posterior_stage(config, name: str, model_dir: str) -> dict[str, Any]:
    """-ELBO_K per token and the posterior diagnostics of one model on the toy validation documents
    (bolt_jax.eval.toy.posterior_diagnostics), with K = bootstrap.elbo_samples and the ELBO's chunking."""
    from bolt_jax.data.readers import open_corpus
    from bolt_jax.estep.backend import JaxBackend
    from bolt_jax.estep.run import chunking_config, document_chunks
    from bolt_jax.eval.toy import posterior_diagnostics
    k = config.bootstrap.elbo_samples
    c = derive(config, {"estep.checkpoint": model_dir, "estep.num_samples": k,
                        "estep.elbo_samples": [n for n in (1, 2, 4, 8) if n <= k], "estep.random_chunking": False,
                        "estep.include_all_prefix": True, "estep.seed": config.seed + 7})
    backend, tokenizer, _ = JaxBackend.from_config(c)
    records = open_corpus(config.data.validation_path)
    docs = min(config.bootstrap.elbo_docs, len(records))
    chunks = document_chunks(records, range(docs), chunking_config(c.estep))
    out = posterior_diagnostics(backend, tokenizer, chunks, c.estep)
    out["neg_elbo_per_token"] = out[f"neg_elbo_{k}_per_token"]
    out["neg_elbo_per_token_se"] = out[f"neg_elbo_{k}_per_token_se"]
    out["documents"] = docs
    return out


def nll_stage(config, model_dir: str) -> dict[str, Any]:
    """NLL per token of a raw model on the validation documents the ELBO uses (bolt_jax.eval.validation)."""
    from bolt_jax.data.readers import open_corpus
    from bolt_jax.eval.validation import validation_nll
    model, tok, mesh = load_eval_model(config, model_dir)
    records = open_corpus(config.data.validation_path)
    return validation_nll(model, tok, records, max_tokens=config.estep.max_tokens,
                          limit=config.bootstrap.elbo_docs, mesh=mesh)


# ------------------------------------------------------------------------------------------------ report
def write_report(config, run_dir: str, manifest: Manifest, models, esteps, evaluations) -> dict[str, Any]:
    """report.json, report.md and bootstrap.png (bolt_jax.workflows.report), and a console summary."""
    import bolt_jax.workflows.report as report_lib
    from bolt_jax.workflows import plots
    seconds = {name: stage["seconds"] for name, stage in manifest.stages.items() if "seconds" in stage}
    check = answer_check(config)
    report = report_lib.build_report(models=models, esteps=esteps, evaluations=evaluations, stage_seconds=seconds,
                                     config=config.to_dict(), toy=check == "toy", answer_check=check)
    atomic_write_text(os.path.join(run_dir, "report.json"), json.dumps(report, indent=2, default=str))
    plot = os.path.join(run_dir, "bootstrap.png")
    plots.bootstrap_figure(report, plot)
    atomic_write_text(os.path.join(run_dir, "report.md"),
                      report_lib.render_markdown(report, run_dir=run_dir, plot_name=os.path.basename(plot)))
    print("\nBoLT bootstrap summary (nats/token: -ELBO for thought models, NLL for raw ones; lower is better)")
    print(f"{'model':16s} {'steps':>6s} {'held-out acc':>15s} {'nats/token':>18s}")
    for name, m in report["models"].items():
        acc = report_lib._pm(m["heldout_accuracy"], m["heldout_accuracy_se"])
        nats = report_lib._pm(m["neg_elbo_per_token"] if m["neg_elbo_per_token"] is not None else m["nll_per_token"],
                              m["neg_elbo_per_token_se"] if m["neg_elbo_per_token"] is not None
                              else m["nll_per_token_se"], 4)
        print(f"{name:16s} {m['steps']:6d} {acc:>15s} {nats:>18s}")
    for r in report["iterations"]:
        if r.get("chosen_correct") is not None:
            print(f"E-step {r['iteration']}: sample correct {r['sample_correct']:.3f}, chosen correct "
                  f"{r['chosen_correct']:.3f}, ESS {r['ess']:.2f}")
    for c in report["checks"]:
        print(f"[{'ok' if c['passed'] else 'NOT MET'}] {c['name']}: {c['detail']}")
    print(f"report: {os.path.join(run_dir, 'report.md')} (and report.json, bootstrap.png)")
    return {"models": models, "esteps": esteps, "evaluations": evaluations, "report": report,
            "report_path": os.path.join(run_dir, "report.md")}
