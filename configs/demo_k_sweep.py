"""The toy demo's EM loop for K in {1, 4, 8} posterior samples per chunk, from one shared base and warmstart: does
choosing among more thoughts make EM better (the paper's claim that gains grow with K)?

    python -m bolt_jax.main --config configs/demo_k_sweep.py        # runs/demo_k_sweep/k_sweep.md, .json, .png

Each K gets the full demo report in run_dir/k_<K>; the raw baselines are trained once (they do not depend on K).
"""

import importlib.util
import os


def demo_config():
    """configs/demo.py's config (loaded by path: config files are not a package)."""
    spec = importlib.util.spec_from_file_location("_demo_config", os.path.join(os.path.dirname(__file__), "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = demo_config()
    c.workflow = "demo_k_sweep"
    c.run_dir = "runs/demo_k_sweep"
    c.demo.k_values = [1, 4, 8]
    c.demo.data_dir = ""  # set per K to the shared data of the sweep
    return c
