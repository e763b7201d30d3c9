"""Evaluation during training (spec 7.1-7.3): few-shot accuracy, validation NLL and, for models trained with
thoughts, the validation ELBO, at fixed step intervals and at the end, recorded against training tokens.

    hook = TrainEval(config, tokenizer)          # config.train_eval = default_train_eval_config()
    metrics = hook(step, model, mesh)            # {} when nothing is due at `step`

Inline, on the training mesh, with the model the trainer holds (nnx.merge of its parameters) and our sampler. The
original evaluated asynchronously, from saved checkpoints converted to Hugging Face, because its harness
(lm-eval + vLLM) needed another process; ours needs neither, and inline evaluation costs no checkpoint round trip,
no second copy of the model and no second job to schedule, and its numbers are in `metrics.jsonl` next to the loss
of the same step. What it costs is training time: the periods (`every`, `elbo_every`) say how much. Checkpoints
that were evaluated can be kept for later re-evaluation (`keep_eval_checkpoints`).
"""

from __future__ import annotations

import ml_collections


def default_train_eval_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "every": 0,  # few-shot accuracy and validation NLL every N training steps, and at the end (0 = off)
        "also_at": "",  # more steps to evaluate at, comma-separated (the original's must_eval_steps, e.g. "500,1250")
        # the paper's plots read the synthetic variants (bolt_jax.eval.prompts.VARIANTS); a variant whose
        # benchmark file is not set is skipped
        "variants": "gsm8k_cot_synthetic_alt,latent_gsm8k_cot_synthetic_alt,hendrycks_math_cot_synthetic,"
                    "latent_hendrycks_math_cot_synthetic",
        "gsm8k_path": "",  # GSM8K test ({question, answer}); "" = no GSM8K
        "math_path": "",  # MATH test ({problem, solution}); "" = no MATH
        "limit": 0,  # examples per benchmark (0 = all: 1319 for GSM8K)
        "max_new_tokens": 0,  # 0 = the variant's (1024 for the paper's)
        "max_prompt_tokens": 0,  # 0 = the variant's (1024, left-truncated, for the paper's)
        "validation_docs": 1000,  # validation NLL on data.validation_path's first N documents (0 = off)
        "elbo_every": 5000,  # the validation ELBO every N steps and at the end (the original: 5000); 0 = off
        "elbo_samples": 4,  # K of the ELBO (ELBO_1..K per token are recorded)
        "elbo_docs": 1000,
        "keep_eval_checkpoints": False,  # keep every checkpoint taken at an evaluation step (beyond keep_checkpoints)
        "seed": 1234,
    })


def validate_train_eval_config(config: ml_collections.ConfigDict) -> None:
    """config.train_eval's numbers and variant names (ValueError naming the key), before anything is built."""
    from bolt_jax.eval import prompts
    t = config.train_eval
    for key in ("every", "limit", "max_new_tokens", "max_prompt_tokens", "validation_docs", "elbo_every",
                "elbo_samples", "elbo_docs"):
        value = t[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"config.train_eval.{key}={value!r} must be an integer >= 0")
    for name in _names(t.variants):
        if name not in prompts.VARIANTS:
            raise ValueError(f"config.train_eval.variants: unknown {name!r}; known: {sorted(prompts.VARIANTS)}")
    try:
        [int(x) for x in str(t.also_at).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"config.train_eval.also_at={t.also_at!r} must be comma-separated steps, e.g. '500,1250'"
                         ) from None
    if t.elbo_every and t.elbo_samples < 1:
        raise ValueError("config.train_eval.elbo_samples must be >= 1 when elbo_every > 0")


def _names(variants: str) -> list[str]:
    return [v.strip() for v in str(variants).split(",") if v.strip()]


def enabled(config: ml_collections.ConfigDict) -> bool:
    t = config.get("train_eval")
    return bool(t and (t.every or t.elbo_every))


class TrainEval:
    """The evaluations due at a step, run on the model the trainer holds. Few-shot benchmark files are read once,
    when the hook is built, so a bad path fails before training starts."""

    def __init__(self, config: ml_collections.ConfigDict, tokenizer):
        from bolt_jax.eval import fewshot, prompts
        self.config, self.t, self.tokenizer = config, config.train_eval, tokenizer
        readers = {"gsm8k": (self.t.gsm8k_path, fewshot.read_gsm8k), "math": (self.t.math_path, fewshot.read_math)}
        self.jobs = []
        for name in _names(self.t.variants):
            path, reader = readers[prompts.VARIANTS[name].benchmark]
            if path:
                self.jobs.append((name, reader(path, self.t.limit)))
        self.also_at = {int(x) for x in str(self.t.also_at).split(",") if x.strip()}
        self.thought_model = config.data.get("latent_type", "raw") != "raw"
        self.validation_path = config.data.get("validation_path", "")

    def due(self, step: int, total_steps: int) -> dict[str, bool]:
        """Which evaluations run after `step`: few-shot + NLL every `every` steps, the ELBO every `elbo_every`
        steps (thought models only), both at the last step and at the `also_at` steps."""
        last = step == total_steps or step in self.also_at
        return {"fewshot": bool(self.t.every) and (step % self.t.every == 0 or last),
                "elbo": bool(self.t.elbo_every) and self.thought_model and bool(self.validation_path)
                and (step % self.t.elbo_every == 0 or last)}

    def __call__(self, step: int, total_steps: int, model, mesh) -> dict[str, float]:
        """Flat metrics (`fewshot/<variant>/accuracy`, `val_nll_per_token`, `elbo_<n>_per_token`) for `step`; the
        trainer writes them to metrics.jsonl with the training tokens (`eval/` prefix)."""
        due = self.due(step, total_steps)
        out: dict[str, float] = {}
        if due["fewshot"]:
            out.update(self.fewshot(model, mesh))
            if self.validation_path and self.t.validation_docs:
                out.update(self.nll(model, mesh))
        if due["elbo"]:
            out.update(self.elbo(step, model, mesh))
        return out

    def fewshot(self, model, mesh) -> dict[str, float]:
        from bolt_jax.eval import fewshot
        gen = fewshot.sampler_generate_fn(model, self.tokenizer, mesh, seed=self.t.seed)
        out = {}
        for name, examples in self.jobs:
            m = fewshot.evaluate_fewshot(examples, name, gen, tokenizer=self.tokenizer,
                                         max_new_tokens=self.t.max_new_tokens or None,
                                         max_prompt_tokens=self.t.max_prompt_tokens or None)["metrics"]
            for key, value in m.items():
                if key.endswith("accuracy") or key.endswith("accuracy_se") or key == "prompts_shortened":
                    out[f"fewshot/{name}/{key}"] = float(value)
        return out

    def nll(self, model, mesh) -> dict[str, float]:
        from bolt_jax.data.readers import open_corpus
        from bolt_jax.eval.validation import validation_nll
        m = validation_nll(model, self.tokenizer, open_corpus(self.validation_path),
                           max_tokens=self.config.get("estep", {}).get("max_tokens", 2048),
                           limit=self.t.validation_docs, mesh=mesh)
        return {"val_nll_per_token": m["nll_per_token"], "val_nll_per_token_se": m["nll_per_token_se"]}

    def elbo(self, step: int, model, mesh) -> dict[str, float]:
        import os

        from bolt_jax.estep.backend import JaxBackend
        from bolt_jax.estep.run import run_estep
        from bolt_jax.eval.validation import elbo_config, elbo_of_store
        c = elbo_config(self.config, "", self.validation_path, k=self.t.elbo_samples, docs=self.t.elbo_docs,
                        store_dir=os.path.join(self.config.run_dir, "train_eval_elbo"), name=f"step_{step}",
                        max_pos=model.config.max_position_embeddings)
        backend = JaxBackend(model, self.tokenizer, c.estep, mesh)
        result = run_estep(c, backend, self.tokenizer, model_id=f"{os.path.abspath(self.config.run_dir)}@{step}")
        return {k: v for k, v in elbo_of_store(c, result).items() if k.startswith("elbo_")}


def evaluators_for(config: ml_collections.ConfigDict) -> list[TrainEval]:
    """The trainer's evaluators for a run (`train(config, evaluators_for(config))`): a TrainEval when
    config.train_eval asks for one, else none. The tokenizer is the run's data tokenizer."""
    if not enabled(config):
        return []
    from bolt_jax.data.tokenizer import load_tokenizer
    return [TrainEval(config, load_tokenizer(config.data.tokenizer_path))]
