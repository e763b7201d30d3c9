"""Warmstart thoughts from GPT-4o-mini through the Batch API (as the original): latent thoughts per chunk.

    python -m bolt_jax.main --config configs/synth_gpt4o_mini.py --config.synth.corpus_path=data/x/warmstart \
        --config.synth.output_path=data/x/warmstart_with_thoughts.jsonl --config.synth.max_usd=50 \
        --config.synth.estimate_only=True        # look at the estimate first, then drop estimate_only
Methods: latent_thoughts | wrap_baseline (repeats=5 in the paper) | wrap_cot (repeats=4).
"""

from bolt_jax.config import base_config
from bolt_jax.synth.run import default_synth_config


def get_config():
    c = base_config()
    c.workflow = "synth"
    c.run_dir = "runs/synth"
    c.synth = default_synth_config()
    return c
