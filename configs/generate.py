"""Sample from a model checkpoint:

    python -m bolt_jax.main --config configs/generate.py --config.generate.checkpoint=runs/demo/runs/iter_2/model \
        --config.generate.prompts="Ava has 3 boxes with 4 pens in each box.|Compute (2 + 3) * 4." \
        --config.generate.n=2 --config.generate.max_new_tokens=40
"""

from bolt_jax.config import base_config
from bolt_jax.sampling.cli import default_generate_config


def get_config():
    c = base_config()
    c.workflow = "generate"
    c.run_dir = "runs/generate"
    c.model.compute_dtype = "float32"  # runtime dtype of the loaded weights' matmuls; bfloat16 on accelerators
    c.generate = default_generate_config()
    return c
