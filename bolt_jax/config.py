"""Shared config pieces (ml_collections ConfigDict) and their validation.

A config file under `configs/` defines `get_config()` and builds on `base_config()`. Every section is validated
before a workflow runs, so a bad value fails with a message naming the key and the fix, not deep inside jit.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from bolt_jax.model.config import LlamaConfig, preset

_FIELD_TYPES = {"head_dim": int, "bos_token_id": int, "eos_token_id": int, "pad_token_id": int}


def check_choice(key: str, value: Any, choices, default: Any) -> None:
    """ValueError naming `config.<key>`, its value, the choices and a fix unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"config.{key}={value!r} is not one of {sorted(choices)}; set e.g. --config.{key}={default}")


def check_whole(key: str, value: Any, low: int, example: Any, note: str = "") -> None:
    """ValueError naming `config.<key>`, its value and a fix unless `value` is an int >= `low` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"config.{key}={value!r} must be a whole number >= {low}{note}; "
                         f"set e.g. --config.{key}={example}")


def model_config_dict(preset_name: str = "tinyllama_1.1b", **overrides: Any) -> ml_collections.ConfigDict:
    """All LlamaConfig fields as a ConfigDict (so any can be set from the command line), from a preset."""
    cfg = preset(preset_name, **overrides)
    d = ml_collections.ConfigDict()
    d.preset = preset_name
    d.hf_config = ""  # a HF config.json (or its directory): architecture fields are read from it when set
    for field in dataclasses.fields(LlamaConfig):
        value = getattr(cfg, field.name)
        if value is None:
            value = config_dict.placeholder(_FIELD_TYPES.get(field.name, int))
        d[field.name] = value
    return d


def llama_config(model: ml_collections.ConfigDict) -> LlamaConfig:
    """The config section -> LlamaConfig (validated). With `hf_config` set, architecture comes from that file."""
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    values = {k: model[k] for k in fields if k in model}
    if model.get("hf_config"):
        runtime = {k: values[k] for k in LlamaConfig().runtime_dict()}
        return LlamaConfig.from_hf_json(model.hf_config, **runtime)
    return LlamaConfig(**values)


# The runtime settings a run applies to every checkpoint it loads. A model checkpoint fixes the architecture and
# the parameters' dtype; how the run computes with it (kernels, precision, memory) is the run's own choice, so these
# come from config.model (command line included), never silently from what the checkpoint's writer used.
RUNTIME_OVERRIDES = ("compute_dtype", "remat_policy", "attention_impl", "decode_impl", "scan_layers")


def runtime_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config.model`'s runtime settings, for `bolt_jax.model.artifact.load_model(..., **runtime_overrides(c))`."""
    return {k: config.model[k] for k in RUNTIME_OVERRIDES}


def rules_of(config: ml_collections.ConfigDict):
    """The config's logical-axis rules, normalized for `bolt_jax.parallel` (None: the default table)."""
    from bolt_jax.parallel import normalize_rules
    return normalize_rules(dict(config.rules)) if "rules" in config else None


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workflow = "model_summary"  # see `python -m bolt_jax.main --list_workflows`
    c.run_dir = "runs/default"  # all outputs of a run go here
    c.seed = 42
    c.model = model_config_dict("tinyllama_1.1b")
    # Device mesh ('data', 'fsdp', 'tensor'); one size may be -1 (all remaining devices).
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    # The mesh sampling and scoring run on (E-step, evaluation, generation): data parallel with the weights in full on
    # every device by default, since a decode step over fsdp-sharded weights all-gathers every weight every step
    # (`--config.aot_topology` shows it: 2.5-4.1 GB per chip per step on TPU slices). A model too large for one
    # device takes tensor (or fsdp) here. The samples do not depend on the mesh (tested), so it is no stage's setting.
    c.sampling_mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # Logical axis -> mesh axes ("data,fsdp"; "" = replicated): bolt_jax.parallel.DEFAULT_RULES, as strings so
    # the command line can change one, e.g. --config.rules.vocab= to replicate the vocabulary dimension.
    from bolt_jax.parallel import rules_as_strings
    c.rules = ml_collections.ConfigDict(rules_as_strings())
    # Multi-host: bolt_jax.runtime.distributed (single process unless configured, set by a launcher, or under
    # SLURM/TPU).
    from bolt_jax.runtime.distributed import default_distributed_config
    c.distributed = default_distributed_config()
    # Inputs of the model_summary workflow (a forward pass on random tokens).
    c.summary = ml_collections.ConfigDict({"batch_size": 0, "seq_len": 128})  # batch_size 0: one row per device
    return c


DRY_RUN_WORKFLOWS = ("train", "bootstrap", "smol_gsm8k")  # the workflows that honour config.dry_run


def add_dry_run(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The compile-only dry run's keys, in the configs whose workflow honours them (DRY_RUN_WORKFLOWS; for another
    workflow `validate_dry_run` refuses dry_run=True). Not in `base_config`: a config without them cannot set them."""
    c.dry_run = False  # True: compile the run's largest programs and print per-device memory; run and write nothing
    # With dry_run: compile for this topology instead of the local devices (v5e:8x8, v5p:4x4x8, h100:8, h200:4x8, up
    # to 256 chips; or cpu:N standing in for N GPUs), the E-step's prefill, decode and scorer too; memory,
    # collectives, roofline step time (bolt_jax.aot)
    c.aot_topology = ""
    c.aot_chip = ""  # cpu:N only: whose published figures predict the step time (h100, h200)
    c.aot_report = ""  # a path: the AOT report as JSON too
    return c


def validate_dry_run(c: ml_collections.ConfigDict) -> None:
    """dry_run=True only where the workflow honours it (never silently ignored)."""
    if c.get("dry_run", False) and c.workflow not in DRY_RUN_WORKFLOWS:
        raise ValueError(f"config.dry_run=True: the {c.workflow} workflow has no compile-only dry run (those with "
                         f"one: {', '.join(DRY_RUN_WORKFLOWS)}); the command line's --dry_run validates any config")


def make_sampling_mesh(c: ml_collections.ConfigDict, devices=None):
    """The mesh of `config.sampling_mesh` (see `base_config`), for every workflow that samples or scores."""
    from bolt_jax.parallel import make_mesh
    return make_mesh(dict(c.sampling_mesh), devices)


def validate_mesh(c: ml_collections.ConfigDict, num_devices: int | None = None, key: str = "mesh") -> tuple[int, ...]:
    """The shape of `config.<key>` (mesh or sampling_mesh) for `num_devices`, by default the devices it will be built
    from: the chips of `config.aot_topology` in an ahead-of-time dry run (bolt_jax.aot), else every device."""
    import jax

    from bolt_jax.aot.topology import target_of
    from bolt_jax.parallel import resolve_mesh_shape
    target = target_of(c) if num_devices is None else None
    n = num_devices if num_devices is not None else target.num_devices if target else jax.device_count()
    try:
        return resolve_mesh_shape(dict(c[key]), n)
    except ValueError as e:
        where = f" (config.aot_topology={target.name} has {n} chips)" if target else ""
        raise ValueError(f"config.{key}: {e}{where}") from None


def validate_common(c: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Checks the sections every workflow uses (model, mesh, rules). Raises ValueError naming the key.
    `bolt_jax.workflows.validate` calls it, then the named workflow's own validator."""
    try:
        cfg = llama_config(c.model)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise ValueError(f"config.model: {e}") from None
    from bolt_jax.aot.topology import validate as validate_aot
    validate_dry_run(c)
    validate_aot(c)  # aot_topology / aot_chip: known names, a dry run, the devices there
    for key in ("mesh", "sampling_mesh"):
        if key not in c:
            continue
        mesh = dict(zip(("data", "fsdp", "tensor"), validate_mesh(c, num_devices, key)))
        if mesh["tensor"] > 1:
            for name, value in (("num_attention_heads", cfg.num_attention_heads),
                                ("num_key_value_heads", cfg.num_key_value_heads)):
                if value % mesh["tensor"]:
                    raise ValueError(f"config.{key}.tensor={mesh['tensor']} does not divide config.model.{name}="
                                     f"{value}; tensor parallelism splits whole heads")
    from bolt_jax.parallel import normalize_rules
    try:
        normalize_rules(dict(c.rules))
    except ValueError as e:
        raise ValueError(f"config.rules: {e}") from None


def derive(config: ml_collections.ConfigDict, changes: typing.Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config a stage runs with: a locked copy of `config` with `changes` (`{"train.steps": 300, ...}`) applied.

    This is how one workflow hands settings to another (bootstrap -> train, E-step, ELBO): every change is spelled
    out in one dict at the call site, and every key must already exist, so a misspelt one fails here instead of
    being written where nobody reads it. `config` itself is never changed."""
    check_override_keys(config, changes)
    out = copy.deepcopy(config)
    out.unlock()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[leaf] = value
    out.lock()
    return out


def check_override_keys(config: ml_collections.ConfigDict, overrides: typing.Iterable[str]) -> None:
    """Fails on `--config.a.b=` overrides that name no key, listing the keys that exist at that level."""
    for dotted in overrides:
        node: Any = config
        walked = []
        for part in dotted.split("."):
            if isinstance(node, (ml_collections.ConfigDict, dict)) and part in node:
                node = node[part]
                walked.append(part)
                continue
            where = "config" + "".join(f".{w}" for w in walked)
            keys = sorted(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
            hint = f"; keys of {where}: {', '.join(keys)}" if keys else f" ({where} is a value, not a section)"
            raise KeyError(f"unknown config key --config.{dotted}{hint}")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys ("data.seq_len": 256), sequences as lists: the one flattening the
    trainer's resume check, the bootstrap manifest and --describe share."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, (tuple, list)) else value
    return out
