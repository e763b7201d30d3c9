"""Command line: `python -m bolt_jax.main --config configs/X.py [--config.key=value ...]`.

Loads the config file (ml_collections config_flags), applies overrides, validates (the settings, and that every
file the workflow reads exists), prints one line saying what will run (`--print_config`: the whole resolved config)
and runs `config.workflow`. `--list_workflows` lists what exists; `--dry_run` stops after validation; `--describe`
lists every key of the resolved config with its value, default and documentation, and exits. `--verbose` (or
BOLT_VERBOSE=1) lets other libraries' INFO lines through (bolt_jax.runtime.console). A user's mistake (a bad value,
a missing input, an existing output, the synth budget reached) prints `error: ...` (at most two lines: what, and the
fix) and exits with status 2, before anything is built where it can be known then; a bug keeps its traceback
(BOLT_TRACEBACK=1: always).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from bolt_jax.runtime import console, xla_flags
from bolt_jax.runtime.config_docs import key_docs

xla_flags.apply_defaults()  # before anything starts the jax backend

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (a .py with get_config()); `path.py:arg` passes arg to get_config.", lock_config=True)
_LIST = flags.DEFINE_bool("list_workflows", False, "List the workflows a config can name and exit.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Validate the config (and the files it names), then exit.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the whole resolved config before running.")
_DESCRIBE = flags.DEFINE_bool("describe", False, "List every config key with its value, default and documentation, "
                              "then exit without running anything.")
_VERBOSE = flags.DEFINE_bool("verbose", False, f"INFO lines from every library (absl, orbax, grain, transformers); "
                             f"also {console.VERBOSE_ENV}=1.")


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
    fit = sys.modules.get("bolt_jax.aot.compiler")  # a KV cache or decode program too large for the device
    return (isinstance(e, USER_ERRORS) or (api is not None and isinstance(e, api.BudgetExceeded))
            or (fit is not None and isinstance(e, fit.DoesNotFit))
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


def main(argv: list[str]) -> None:
    console.quiet_third_party(_VERBOSE.value or console.verbose_from_env())  # before a workflow imports them
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
    if _DESCRIBE.value:
        print(describe(config, config_file=(_config_arg(sys.argv[1:]) or "").partition(":")[0]))
        return
    _prepare_aot(config)
    from bolt_jax.runtime import distributed
    try:
        distributed.initialize(config.get("distributed"))
    except (ValueError, RuntimeError) as e:
        _fail(str(e))
    import jax
    console.setup(verbose=_VERBOSE.value, primary=jax.process_index() == 0)
    try:
        workflows.validate(config, check_files=True)
        distributed.check_processes_agree(config)
    except (ValueError, KeyError, RuntimeError, *USER_ERRORS) as e:
        _fail(_message(e))
    if jax.process_index() == 0:
        print(run_line(config))
        if _PRINT_CONFIG.value:
            print("# resolved config")
            print(config)
    if _DRY_RUN.value:
        return
    run_workflow(config)


def _prepare_aot(config) -> None:
    """An ahead-of-time dry run (`config.aot_topology`, bolt_jax.aot) sets what must precede jax's backends: the CPU
    device count of cpu:N and (JAX_PLATFORMS unset) the CPU platform alone, since it runs nothing on a local
    accelerator. A bad name fails here in one line."""
    if not config.get("aot_topology"):
        return
    from bolt_jax.aot.topology import parse_target, prepare_process
    try:
        target = parse_target(config.aot_topology, config.get("aot_chip", ""))
    except ValueError as e:
        _fail(_message(e))
    import jax
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    prepare_process(target)


# --------------------------------------------------------------------------------------------------- run line
# workflow -> the section naming the checkpoint its model comes from (config.model only sets how it computes)
_CHECKPOINT_SECTIONS = {"eval": "eval", "generate": "generate", "estep": "estep", "finetune_eval": "finetune"}
_NO_MODEL = ("prepare", "synth")  # workflows that build no model


def run_line(config) -> str:
    """What will run, in one line (workflow, model size, mesh, steps, run_dir): the full config is in
    run_dir/config.json for training runs, and on the console with --print_config."""
    import jax

    from bolt_jax.config import llama_config, validate_mesh
    parts = [f"workflow {config.workflow}"]
    section = _CHECKPOINT_SECTIONS.get(config.workflow)
    if section and section in config and config[section].get("checkpoint"):
        parts.append(f"checkpoint {config[section].checkpoint}")
    elif "model" in config and config.workflow not in _NO_MODEL:
        name = config.model.get("hf_config") or config.model.get("preset", "")
        parts.append(f"model {name} ({llama_config(config.model).num_params() / 1e6:,.1f}M params)")
    from bolt_jax.aot.topology import target_of
    shape = dict(zip(("data", "fsdp", "tensor"), validate_mesh(config)))
    target = target_of(config)
    devices = f"ahead of time for {target.describe()}" if target else (
        f"{jax.device_count()} {jax.default_backend()} devices")
    parts.append("mesh " + " x ".join(f"{k}={v}" for k, v in shape.items()) + f" ({devices})")
    if config.workflow == "train" and "train" in config:
        parts.append(f"steps {config.train.steps}")
    parts.append(f"run_dir {os.path.abspath(config.run_dir)}")
    return " | ".join(parts) + "   (--print_config: the whole config)"


# --------------------------------------------------------------------------------------------------- describe
# Where each section's keys are defined, and documented: the comment beside a key (or the comment lines just above
# it) in these functions and classes is its documentation, read from their source, so each key's doc has one home.
# Besides these two, a section `x` is defined by the `def default_x_config()` found under bolt_jax (section_sources).
ROOT_SOURCES: dict[str, list[str]] = {
    "": ["bolt_jax.config:base_config", "bolt_jax.config:add_dry_run"],
    "model": ["bolt_jax.config:model_config_dict", "bolt_jax.model.config:LlamaConfig"],
}
_DEFAULT_FN = re.compile(r"default_(\w+)_config")


def section_sources() -> dict[str, list[str]]:
    """Section -> the "module:function" refs that define its keys: ROOT_SOURCES, and every top-level
    `def default_<section>_config()` in bolt_jax's source (found by parsing, so nothing is imported here)."""
    out = {k: list(v) for k, v in ROOT_SOURCES.items()}
    package = os.path.dirname(os.path.abspath(__file__))
    for dirpath, _, files in sorted(os.walk(package)):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            parts = os.path.relpath(path[:-3], os.path.dirname(package)).split(os.sep)
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            with open(path) as f:
                body = ast.parse(f.read(), path).body
            for node in body:
                match = isinstance(node, ast.FunctionDef) and _DEFAULT_FN.fullmatch(node.name)
                if match:
                    out.setdefault(match.group(1), []).append(f"{module}:{node.name}")
    return out


def _resolve(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A config (or its dict) as dotted keys (bolt_jax.config.flatten)."""
    from bolt_jax.config import flatten
    return flatten(tree.to_dict() if hasattr(tree, "to_dict") else tree, prefix)


def _defaults_and_docs(config, config_file: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Every key's default (the section's default function; the model's: its preset) and documentation (the
    defining source first, then the config file's own comments)."""
    from bolt_jax.config import base_config
    defaults, docs = _flat(base_config()), {}
    for section, refs in section_sources().items():
        if section and section not in config:
            continue
        prefix = f"{section}." if section else ""
        for ref in refs:
            obj = _resolve(ref)
            for key, doc in key_docs(inspect.getsource(obj), prefix).items():
                docs[key] = docs.get(key) or doc
        if section:
            factory = _resolve(refs[0])
            made = factory(config.model.get("preset")) if section == "model" else factory()
            defaults.update(_flat(made, prefix))
    if config_file and os.path.isfile(config_file):
        with open(config_file) as f:
            for key, doc in key_docs(f.read()).items():
                docs[key] = docs.get(key) or doc
    return defaults, docs


def describe(config, config_file: str = "") -> str:
    """Every key of the resolved config: value, default and one line of documentation; then "N keys, M
    undocumented" (a key without a comment where it is defined is listed with an empty doc and counted)."""
    defaults, docs = _defaults_and_docs(config, config_file)
    values = _flat(config)
    unset = object()
    rows = [(key, repr(value), repr(defaults[key]) if defaults.get(key, unset) is not unset else "-",
             docs.get(key, "")) for key, value in sorted(values.items())]
    w_key = max(len(r[0]) for r in rows)
    w_val = min(max(len(r[1]) for r in rows), 28)
    w_def = min(max(len(r[2]) for r in rows), 28)
    lines = [f"{'key'.ljust(w_key)}  {'value'.ljust(w_val)}  {'default'.ljust(w_def)}  doc"]
    lines += [f"{k.ljust(w_key)}  {v.ljust(w_val)}  {d.ljust(w_def)}  {doc}".rstrip() for k, v, d, doc in rows]
    undocumented = sum(1 for r in rows if not r[3])
    lines.append(f"{len(rows)} keys, {undocumented} undocumented")
    return "\n".join(lines)


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
