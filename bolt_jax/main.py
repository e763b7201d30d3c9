"""Command line: `python -m bolt_jax.main --config configs/X.py [--config.key=value ...]`.

Loads the config file (ml_collections config_flags), applies overrides, validates (the settings, and that every
file the workflow reads exists), prints the resolved config and runs `config.workflow`. `--list_workflows` lists
what exists; `--dry_run` stops after validation. A user's mistake (a bad value, a missing input, an existing
output, the synth budget reached) prints `error: ...` (at most two lines: what, and the fix) and exits with status
2, before anything is built where it can be known then; a bug keeps its traceback (BOLT_TRACEBACK=1: always).
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


def _message(e: BaseException) -> str:
    """An exception's message without KeyError's quotes (one argument) or with OSError's file (several)."""
    return str(e.args[0]) if len(e.args) == 1 else str(e)


# Raised while a workflow runs, these are the user's to fix (an input that went missing, an output that exists, the
# synth budget reached): printed as `error: ...` without a traceback. Anything else is a bug and keeps its traceback
# (BOLT_TRACEBACK=1 shows one for these too).
USER_ERRORS = (FileNotFoundError, FileExistsError)


def _is_user_error(e: BaseException) -> bool:
    if os.environ.get("BOLT_TRACEBACK"):
        return False
    api = sys.modules.get("bolt_jax.synth.api")  # loaded by the synth workflow, the only one that raises it
    manifest = sys.modules.get("bolt_jax.workflows.manifest")  # a rerun under changed settings (bootstrap, demo)
    return (isinstance(e, USER_ERRORS) or (api is not None and isinstance(e, api.BudgetExceeded))
            or (manifest is not None and isinstance(e, manifest.StaleStageError)))


def _config_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _load_config_file(spec: str):
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        _fail(f"config file {path!r} does not exist; pass --config configs/NAME.py (see configs/ and the README)")
    module_spec = importlib.util.spec_from_file_location("_bolt_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        _fail(f"config file {path} defines no get_config()")
    try:
        return module.get_config(arg) if arg else module.get_config()
    except ValueError as e:  # a bad `path.py:arg`
        _fail(f"config file {spec}: {_message(e)}")


def precheck_overrides(argv: list[str]) -> None:
    """Before absl loads the config: a missing config file, or a bad `path.py:arg`, fails in one line (config_flags
    would print a double traceback), and unknown `--config.x` keys with the list of existing keys (config_flags
    would raise a bare AttributeError deep in absl)."""
    from bolt_jax.config import check_override_keys
    spec = _config_arg(argv)
    if spec is None:
        return
    config = _load_config_file(spec)
    keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    try:
        check_override_keys(config, keys)
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
        workflows.validate(config, check_files=True)
        distributed.check_processes_agree(config)
    except (ValueError, KeyError, RuntimeError, *USER_ERRORS) as e:
        _fail(_message(e))
    import jax
    if jax.process_index() == 0:
        print("# resolved config")
        print(config)
    if _DRY_RUN.value:
        return
    run_workflow(config)


def run_workflow(config):
    """Runs `config.workflow`; the user's mistakes that only show while it runs (USER_ERRORS, the synth budget)
    become `error: ...` and exit status 2, anything else keeps its traceback."""
    from bolt_jax import workflows
    try:
        return workflows.run(config)
    except Exception as e:  # noqa: BLE001 - re-raised unless it is the user's to fix
        if not _is_user_error(e):
            raise
        _fail(_message(e))


def run() -> None:
    precheck_overrides(sys.argv[1:])
    app.run(main)


if __name__ == "__main__":
    run()
