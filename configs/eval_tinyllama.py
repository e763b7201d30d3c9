"""Few-shot GSM8K and MATH (plain and latent variants, greedy) and validation NLL of a model checkpoint.

    python -m bolt_jax.main --config configs/eval_tinyllama.py --config.eval.checkpoint=runs/x/model \
        --config.eval.gsm8k_path=data/gsm8k/test.jsonl --config.eval.math_path=data/math/test.jsonl
"""

from bolt_jax.config import base_config, model_config_dict
from bolt_jax.eval.run import default_eval_config


def get_config():
    c = base_config()
    c.workflow = "eval"
    c.run_dir = "runs/eval"
    c.model = model_config_dict("tinyllama_1.1b_bolt")
    c.eval = default_eval_config()
    return c
