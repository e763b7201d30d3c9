"""Command line: `python -m bolt_jax.main --config configs/X.py [--config.key=value ...]`.

Loads the config file (ml_collections config_flags), applies overrides, validates, prints the resolved config and
runs `config.workflow`. `--list_workflows` lists what exists; `--dry_run` stops after validation.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from bolt_jax.runtime import xla_flags

xla_flags.apply_defaults()  # before anything starts the jax backend

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (a .py with get_config()); `path.py:arg` passes arg to get_config.", lock_config=True)
_LIST = flags.DEFINE_bool("list_workflows", False, "List the workflows a config can name and exit.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Validate and print the resolved config, then exit.")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _config_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _load_config_file(spec: str):
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        _fail(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("_bolt_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        _fail(f"config file {path} defines no get_config()")
    return module.get_config(arg) if arg else module.get_config()


def precheck_overrides(argv: list[str]) -> None:
    """Unknown `--config.x` keys fail here with the list of existing keys (config_flags would raise a bare
    AttributeError deep in absl)."""
    from bolt_jax.config import check_override_keys
    spec = _config_arg(argv)
    if spec is None:
        return
    keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if not keys:
        return
    try:
        check_override_keys(_load_config_file(spec), keys)
    except KeyError as e:
        _fail(e.args[0])


def _setup_logging() -> None:
    import jax
    level = logging.INFO if jax.process_index() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)


def main(argv: list[str]) -> None:
    from bolt_jax import workflows

    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; overrides are written --config.key=value")
    if _LIST.value:
        for name, entry in sorted(workflows.WORKFLOWS.items()):
            print(f"{name:16s} {entry.description}")
        return
    config = _CONFIG.value
    if config is None:
        _fail("--config is required, e.g. --config configs/demo.py (see README)")
    from bolt_jax.runtime import distributed
    try:
        distributed.initialize(config.get("distributed"))
    except (ValueError, RuntimeError) as e:
        _fail(str(e))
    _setup_logging()
    try:
        workflows.validate(config)
        distributed.check_processes_agree(config)
    except (ValueError, KeyError, RuntimeError) as e:
        _fail(str(e.args[0] if e.args else e))
    import jax
    if jax.process_index() == 0:
        print("# resolved config")
        print(config)
    if _DRY_RUN.value:
        return
    workflows.run(config)


def run() -> None:
    precheck_overrides(sys.argv[1:])
    app.run(main)


if __name__ == "__main__":
    run()
