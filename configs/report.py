"""The paper's figures from finished runs (bolt_jax.workflows.paper_report): trials of the bootstrap experiment,
the synthetic-data comparison, finetuned accuracies.

    python -m bolt_jax.main --config configs/report.py \
        --config.report.bootstrap_runs=runs/bootstrap_fixed/trial_0,runs/bootstrap_fixed/trial_1,runs/bootstrap_fixed/trial_2
"""

from bolt_jax.config import base_config
from bolt_jax.workflows.paper_report import default_report_config


def get_config():
    c = base_config()
    c.workflow = "report"
    c.run_dir = "runs/report"
    c.report = default_report_config()
    # the paper's bootstrap trials (configs/bolt_bootstrap_fixed.py:0, :1, :2); override with your run_dirs
    c.report.bootstrap_runs = ",".join(f"runs/bootstrap_fixed/trial_{t}" for t in range(3))
    return c
