"""Splits of a corpus (validation / warmstart / bootstrap, as the original) with manifests; here the toy corpus.

    python -m bolt_jax.main --config configs/prepare_toy.py --config.prepare.output_dir=data/toy
    python -m bolt_jax.main --config configs/prepare_toy.py --config.prepare.source=path/to/finemath.jsonl ...
"""

from bolt_jax.config import base_config
from bolt_jax.data.prepare import default_prepare_config


def get_config():
    c = base_config()
    c.workflow = "prepare"
    c.run_dir = "runs/prepare"
    c.prepare = default_prepare_config()
    c.prepare.source = "toy:2000:0"
    c.prepare.output_dir = "data/toy"
    c.prepare.validation_slice = "0:1:20"  # 5% of a small corpus for validation
    return c
