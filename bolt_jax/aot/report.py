"""The ahead-of-time dry run: compile the train step and the E-step's prefill, decode and scorer for a named topology
on this machine (no accelerator), and report per function the memory per chip, the collectives per step and a
roofline step time from the chip's published figures.

    python -m bolt_jax.main --config configs/train_synthetic.py:tinyllama_1.1b_bolt --config.dry_run=True \\
        --config.aot_topology=v5p:4x4x8 --config.data.seq_len=2048 --config.train.global_batch_size=1024 \\
        [--config.aot_report=PATH.json]

Every input is a `jax.ShapeDtypeStruct` carrying its sharding on a mesh of the topology's devices (nothing is
allocated). The roofline (per chip) is compute = FLOPs / peak, memory = HBM bytes / HBM bandwidth, communication =
ring bytes of every collective / interconnect bandwidth (bolt_jax.aot.hlo, bolt_jax.aot.topology); the step time
lies between max(compute, memory, communication) (all overlapped) and max(compute, memory) + communication (no
overlap of communication). It is a bound derived from the compiled program, not a measurement: kernels run below
peak, and a ring over one torus axis has fewer links than the chip.

FLOPs are our own count (`LlamaConfig.flops_per_token`, the convention of every MFU figure here; recomputation under
remat is not in it), with XLA's cost analysis beside it as a cross-check, which counts a while body once.
"""

from __future__ import annotations

import inspect
import time
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from bolt_jax import kernels, parallel
from bolt_jax.aot import hlo
from bolt_jax.aot.compiler import does_not_fit
from bolt_jax.aot.topology import Target, devices, target_of
from bolt_jax.runtime.chips import GIB, gpu_mem_fraction

ROOFLINE_NOTE = "a roofline bound from the compiled program, not a measurement"


# ------------------------------------------------------------------------------------------------------ memory
def memory_bytes(compiled) -> dict[str, float] | None:
    """Per-device bytes from the compiler's buffer assignment; `total` counts a donated (aliased) buffer once. The one
    formula the plain dry run (`bolt_jax.train.loop.dry_run`) uses too."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    out = {"arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
           "aliased": mem.alias_size_in_bytes, "temps": mem.temp_size_in_bytes,
           "code": mem.generated_code_size_in_bytes}
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temps"] + out["code"]
    return {k: float(v) for k, v in out.items()}


def _fits(memory: dict[str, float] | None, target: Target) -> dict[str, Any]:
    """Whether the compiled program fits the chip's HBM, and on GPUs the share of it jax's allocator takes
    (`chips.gpu_mem_fraction`: 75% unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise), the limit a run meets
    first. Not judged for cpu:N: the CPU compiler's buffers (with the XLA reference attention, no GPU kernels) are
    not the GPU's."""
    if target.platform == "cpu" or memory is None:
        return {"fits": None}
    out: dict[str, Any] = {"fits": memory["total"] <= target.chip.hbm_bytes}
    if not out["fits"]:
        out["does_not_fit"] = (f"needs {memory['total'] / GIB:.2f} GiB per chip, the {target.chip.name} has "
                               f"{target.chip.hbm_bytes / GIB:.0f} GiB")
    if target.platform == "gpu":
        fraction = gpu_mem_fraction()
        limit = fraction * (target.chip.device_memory_bytes or target.chip.hbm_bytes)
        out.update(allocator_fraction=fraction, fits_allocator=memory["total"] <= limit)
    return out


# ------------------------------------------------------------------------------------------------------ roofline
def forward_flops_per_token(model_cfg, context: int, causal: bool = True) -> float:
    """Forward FLOPs of one token that attends to `context` positions: a third of `flops_per_token` (its forward +
    backward = 3 x forward), whose attention term is causal (half of the dense 4 L S D); a decode step reads its whole
    cache (`causal=False`), the dense term, which `flops_per_token` at twice the length gives."""
    return model_cfg.flops_per_token(context if causal else 2 * context) / 3


def roofline(target: Target, *, flops: float, hbm_bytes: float, ring_bytes: float, tokens: float,
             network_ring_bytes: float = 0.0) -> dict[str, float]:
    """Per-chip times of the three resources, the step time range, and tokens/s and MFU at both ends. Of the ring
    bytes, `network_ring_bytes` (rings across GPU hosts) go at the chip's network rate, the rest over its links."""
    chip = target.chip
    compute, memory = flops / chip.peak_flops, hbm_bytes / chip.hbm_bytes_per_s
    comm = (ring_bytes - network_ring_bytes) / chip.link_bytes_per_s
    if network_ring_bytes:
        comm += network_ring_bytes / chip.network_bytes_per_s
    fast, slow = max(compute, memory, comm), max(compute, memory) + comm
    out = {"compute_s": compute, "memory_s": memory, "comm_s": comm, "step_s_min": fast, "step_s_max": slow}
    if fast > 0:
        out.update(tokens_per_s_max=tokens / fast, tokens_per_s_min=tokens / slow,
                   mfu_max=compute / fast, mfu_min=compute / slow)
    return out


# ------------------------------------------------------------------------------------------------------ one function
def compile_and_report(name: str, build: Callable[[], Any], target: Target, *, flops: float, tokens: float,
                       what: str, loop_trips: int = 1, attention_len: int = 0) -> dict[str, Any]:
    """Compiles one function for the target (`build()` lowers and compiles it) and reports it. A program the compiler
    refuses for memory is a result ("does not fit"), not an error, so the other functions still compile; any other
    failure is a bug. `loop_trips`: how many times a loop runs whose trip count the program does not hold (the
    decode chunk's).
    `attention_len`: for cpu:N, the sequence length whose [S, S] attention scores the XLA reference writes to memory
    and the GPUs' flash kernels do not: left out of the HBM bytes (the figure with them is reported beside)."""
    t0 = time.perf_counter()
    try:
        compiled = build()
    except Exception as e:  # noqa: BLE001 - re-raised unless it is the compiler's out-of-memory verdict
        refused = does_not_fit(e)
        if refused is None:
            raise
        return {"name": name, "what": what, "compile_s": time.perf_counter() - t0, "fits": False,
                "does_not_fit": refused}
    compile_s = time.perf_counter() - t0
    memory = memory_bytes(compiled)
    analysis = hlo.analyze(compiled.as_text(), target.num_devices, unknown_trips=loop_trips,
                           attention_len=attention_len if target.platform == "cpu" else 0)
    # GPUs in several hosts: the rings that cross hosts run at the network's rate (TPU slices: ICI throughout)
    across = analysis.ring_bytes_across(target.num_devices // target.hosts) if target.hosts > 1 else 0.0
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "name": name, "what": what, "compile_s": compile_s, **_fits(memory, target),
        "memory_bytes": memory,
        "flops_per_chip": flops, "xla_flops_per_chip": float(cost.get("flops", 0.0)),
        "hbm_bytes_per_chip": analysis.hbm_bytes, "hbm_bytes_with_attention_scores": analysis.hbm_bytes_all,
        "xla_bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        "tokens": tokens,
        "collectives": analysis.summary(), "largest_collectives": analysis.largest(),
        "largest_hbm": analysis.largest_hbm(),
        "ring_bytes_per_chip": analysis.ring_bytes, "loops_of_unknown_trip_count": analysis.unknown_loops,
        "unknown_loops_taken_as": loop_trips,
        "network_ring_bytes_per_chip": across,
        "roofline": roofline(target, flops=flops, hbm_bytes=analysis.hbm_bytes, ring_bytes=analysis.ring_bytes,
                             tokens=tokens, network_ring_bytes=across),
    }


# ------------------------------------------------------------------------------------------------------ train step
def config_for(config: ml_collections.ConfigDict, target: Target) -> ml_collections.ConfigDict:
    """The config with attention `auto` resolved for the target's platform, not this machine's: the TPU compile gets
    the splash kernel (pallas_tpu), cpu:N the XLA reference. On GPUs `auto` stays, to be resolved where the model
    traces under the GPUs' mesh (`kernels.resolve_impl`): its choice there depends on whether the rows hold packed
    documents."""
    from bolt_jax.config import derive
    if config.model.attention_impl != "auto" or target.platform == "gpu":
        return config
    return derive(config, {"model.attention_impl": kernels.resolve_impl("auto", backend=target.platform)})


def train_report(config: ml_collections.ConfigDict, setup, target: Target) -> dict[str, Any]:
    """The train step (`TrainSetup.train_step`) on the setup's abstract state and batch."""
    seq, batch = config.data.seq_len, config.train.global_batch_size
    tokens = batch * seq
    what = (f"global batch {batch} x {seq}, {setup.accum} micro-step(s), remat={setup.model_cfg.remat_policy}, "
            f"attention={setup.model_cfg.attention_impl}")

    def build():
        with setup.mesh_context():
            return setup.train_step.lower(setup.abstract_state, setup.abstract_batch).compile()

    flops = setup.model_cfg.flops_per_token(seq) * tokens / target.num_devices
    return compile_and_report("train_step", build, target, flops=flops, tokens=tokens, what=what, attention_len=seq)


# ------------------------------------------------------------------------------------------------------ sampler
def _steps_per_sync() -> int:
    """The continuous engine's chunk length when the caller names none (the E-step names none)."""
    from bolt_jax.sampling import schedulers
    return inspect.signature(schedulers.generate).parameters["steps_per_sync"].default


def estep_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.estep`, or where the config has none `default_estep_config()`."""
    from bolt_jax.estep.run import default_estep_config
    return config.estep if "estep" in config else default_estep_config()


def scorer_call(mesh, row_len: int) -> tuple[int, int, int]:
    """(rows, row length, log-softmax chunk) of the scorer's largest call at the E-step's joints of up to `row_len`
    tokens, by `score`'s defaults: `max_rows_per_call` rounded up to whole buckets of rows the mesh's batch devices
    divide, the bucketed length, `chunk_size`."""
    import math

    from bolt_jax.sampling import scorer
    defaults = inspect.signature(scorer.score).parameters
    step = math.lcm(defaults["batch_bucket"].default, parallel.batch_divisor(mesh))
    rows = math.ceil(defaults["max_rows_per_call"].default / step) * step
    return rows, scorer._bucket(row_len), defaults["chunk_size"].default


def estep_settings(config: ml_collections.ConfigDict, mesh, model_cfg):
    """The continuous engine's Settings for one E-step sampler call, by `engine.make_settings` with the decode slots
    and prompt entries `estep.backend.JaxBackend` derives, from `config.estep`, or where the config has none from
    `default_estep_config()`: K=4 samples of 64 chunks per call, prompts of up to 1024 tokens (the bucket: 1024),
    thoughts of up to 1024 (cache 2048 positions); decode slots a quarter of a batch's requests (64) per batch device
    of the sampling mesh, prefill groups of up to slots / K of a batch's prompts, both rounded up to a multiple of the
    mesh's batch devices."""
    from bolt_jax.estep.backend import JaxBackend
    from bolt_jax.sampling import engine
    e = estep_section(config)
    n = e.num_samples
    settings_only = types.SimpleNamespace(e=e, mesh=mesh)  # the backend's rules read these two alone
    stop = () if model_cfg.eos_token_id is None else (int(model_cfg.eos_token_id),)
    return engine.make_settings(
        n=n, slots=JaxBackend.decode_slots(settings_only, e.chunks_per_batch * n), num_prompts=e.chunks_per_batch,
        prompt_len=e.max_prompt_len, max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_k=e.top_k,
        top_p=e.top_p, greedy=False, stop_token_ids=stop, banned_token_ids=(), steps_per_sync=_steps_per_sync(),
        mesh=mesh, prefix_sharing=e.get("prefix_sharing", False),
        prompt_entries=JaxBackend.prompt_entries(settings_only))


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_sampler_model(model_cfg, mesh, rules=None):
    """(graphdef, abstract params) as the E-step's sampler holds the model on `mesh`: in the compute dtype
    (`load_model(dtype="compute")`), sharded by the logical-axis `rules` (None: the current ones); nothing
    allocated."""
    import dataclasses

    from flax import nnx

    from bolt_jax.model.llama import Llama, pure_dict
    cfg = dataclasses.replace(model_cfg, param_dtype=model_cfg.compute_dtype)
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0))))
    rules = rules if rules is not None else parallel.current_rules()
    shardings = pure_dict(parallel.state_shardings(abstract_state, mesh, rules))
    return graphdef, _abstract(pure_dict(abstract_state), shardings)


def sampling_setup(config: ml_collections.ConfigDict, setup):
    """(graphdef, mesh, abstract params, mesh context) the sampler runs with: `config.sampling_mesh` over the same
    chips, the parameters in the compute dtype, as the E-step loads them (`load_model(dtype="compute")`)."""
    from bolt_jax.config import make_sampling_mesh
    mesh = make_sampling_mesh(config, list(setup.mesh.devices.flat))
    graphdef, params = abstract_sampler_model(setup.model_cfg, mesh, setup.rules)
    return graphdef, mesh, params, lambda: parallel.use_mesh(mesh, setup.rules)


def sampler_reports(config: ml_collections.ConfigDict, setup, target: Target) -> list[dict[str, Any]]:
    """`estep_reports` on the sampling mesh over the train setup's chips, with compute-dtype parameters
    (`sampling_setup`)."""
    return estep_reports(config, setup.model_cfg, sampling_setup(config, setup), target)


def estep_reports(config: ml_collections.ConfigDict, cfg, sampler, target: Target) -> list[dict[str, Any]]:
    """The engine's `prefill_group` (one group of prompts) and `decode_chunk` (one chunk: its loop stops after
    `steps_per_sync` steps or when no slot is live, a count the program does not hold; taken as every slot live,
    all `steps_per_sync` steps) at the E-step's shape (`estep_settings`), and the scorer's largest call over the
    joints (`scorer_call`), for model `cfg` held as `sampler` = (graphdef, mesh, abstract params, mesh context), as
    `sampling_setup` gives them. The decode chunk is compiled as the engine compiles it (`slots.compile_decode`: the
    slot state sharded as `init_slots` makes it, in the layout that moves fewer bytes)."""
    from bolt_jax.sampling import slots
    graphdef, mesh, params, context = sampler
    s = estep_settings(config, mesh, cfg)
    prompt = jax.ShapeDtypeStruct((s.prefill_group, s.prompt_len), jnp.int32,
                                  sharding=parallel.batch_sharding(mesh, 2))
    pad = jax.ShapeDtypeStruct((s.prefill_group,), jnp.int32, sharding=parallel.batch_sharding(mesh, 1))

    def build_prefill():
        with context():
            return slots.prefill_group.lower(graphdef, params, prompt, pad).compile()

    def build_decode():
        with context():
            return slots.compile_decode(graphdef, params, s)

    from bolt_jax.sampling.scorer import _score_core
    rows, row_len, chunk = scorer_call(mesh, min(estep_section(config).max_tokens, cfg.max_position_embeddings))
    ids = jax.ShapeDtypeStruct((rows, row_len), jnp.int32, sharding=parallel.batch_sharding(mesh, 2))

    def build_score():
        with context():
            return _score_core.lower(graphdef, params, ids, ids, ids, chunk_size=chunk).compile()

    n, steps = target.num_devices, s.steps_per_sync
    prefill_tokens = s.prefill_group * s.prompt_len
    impl = kernels.resolve_decode_impl(cfg.decode_impl, target.platform, cfg.compute_dtype, cfg.head_size)
    attention = f"; decode attention {impl}" + ("" if impl == "xla" else " (its reads counted as every cache "
                                                "position: an upper bound, it reads only the written blocks)")
    on_mesh = " (sampling mesh " + " x ".join(f"{a}={mesh.shape[a]}" for a in parallel.MESH_AXES) + ")"
    where = (f", prefix sharing over {s.prompt_entries} prompt entries" if s.prompt_entries else "") + on_mesh
    return [
        compile_and_report("prefill", build_prefill, target, tokens=prefill_tokens, attention_len=s.prompt_len,
                           flops=prefill_tokens * forward_flops_per_token(cfg, s.prompt_len) / n,
                           what=f"E-step prefill: a group of {s.prefill_group} prompts x {s.prompt_len} tokens"
                                f"{where}"),
        compile_and_report("decode", build_decode, target, tokens=s.slots * steps, loop_trips=steps,
                           flops=steps * s.slots * forward_flops_per_token(cfg, s.cache_len, causal=False) / n,
                           what=f"E-step decode, one chunk of {steps} steps with every slot live: {s.slots} slots, "
                                f"cache {s.cache_len} positions ({s.prompt_len} prompt + {s.max_new_tokens} new)"
                                f"{where}{attention}"),
        compile_and_report("score", build_score, target, tokens=rows * row_len, attention_len=row_len,
                           flops=rows * row_len * forward_flops_per_token(cfg, row_len) / n,
                           what=f"E-step scorer: its largest call, {rows} rows of {row_len} joint tokens, log-softmax "
                                f"in chunks of {chunk} positions{on_mesh}"),  # no prompt entries: it scores joints
    ]


# ------------------------------------------------------------------------------------------------------ together
def run(config: ml_collections.ConfigDict, setup, target: Target, sampler: bool = True) -> dict[str, Any]:
    """All three functions for the target (the train step alone without `sampler`): the report dict, printed on
    process 0 and written to `config.aot_report` as JSON when set."""
    report = {
        "topology": target.name, "platform": target.platform, "chips": target.num_devices,
        "devices": target.describe(), "chip": target.chip.name, "chip_figures": chip_figures(target),
        "mesh": {a: int(setup.mesh.shape[a]) for a in parallel.MESH_AXES},
        "model": config.model.get("hf_config") or config.model.get("preset", ""),
        "params": setup.model_cfg.num_params(),
        "note": ROOFLINE_NOTE,
        "functions": [train_report(config, setup, target), *(sampler_reports(config, setup, target) if sampler
                                                              else [])],
    }
    if jax.process_index() == 0:
        print(format_report(report, target))
        path = config.get("aot_report", "")
        if path:
            from bolt_jax.runtime.atomic import atomic_write_json
            atomic_write_json(path, report, indent=1)
            print(f"wrote {path}")
    return report


def chip_figures(target: Target) -> dict[str, float]:
    c = target.chip
    return {"peak_bf16_flops": c.peak_flops, "hbm_bytes": c.hbm_bytes, "hbm_bytes_per_s": c.hbm_bytes_per_s,
            "interconnect_bytes_per_s_one_way": c.link_bytes_per_s,
            "network_bytes_per_s_one_way": c.network_bytes_per_s if target.hosts > 1 else 0.0}


def prepare(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Target, list]:
    """For `bolt_jax.train.loop.dry_run`: the config to build the TrainSetup from (`config_for`), the target and its
    devices (the trainer builds the setup, so this package does not import it)."""
    target = target_of(config)
    return config_for(config, target), target, devices(target)


# ------------------------------------------------------------------------------------------------------ printing
def _gib(x: float) -> str:
    return f"{x / GIB:.2f} GiB"


def _seconds(x: float) -> str:
    return f"{x * 1e6:.1f} us" if x < 1e-3 else f"{x * 1e3:.1f} ms" if x < 10 else f"{x:.1f} s"


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}".rstrip()


def _function_lines(f: dict[str, Any], target: Target) -> list[str]:
    lines = [f"{f['name']}: {f['what']}", f"  compile {f['compile_s']:.1f} s"]
    m = f.get("memory_bytes")
    if m:
        share = (f" = {m['total'] / target.chip.hbm_bytes:.0%} of the {target.chip.name}'s "
                 f"{target.chip.hbm_bytes / GIB:.0f} GiB" if f["fits"] is not None else " (CPU compiler: not judged)")
        lines.append(f"  memory per chip: arguments {_gib(m['arguments'])}, outputs {_gib(m['outputs'])} "
                     f"({_gib(m['aliased'])} aliased), temps {_gib(m['temps'])}, total {_gib(m['total'])}{share}")
    if f["fits"] is False:
        lines.append(f"  does not fit: {f['does_not_fit']}")
    elif f.get("fits_allocator") is False:
        smaller = "the micro-batch lowered: train.micro_batch_size" if f["name"] == "train_step" else "it made smaller"
        lines.append(f"  ABOVE the {f['allocator_fraction']:.0%} of the device that jax's allocator takes "
                     f"(XLA_PYTHON_CLIENT_MEM_FRACTION): a run fails unless that is raised (or {smaller})")
    if "roofline" not in f:
        return lines
    coll = f["collectives"]
    lines.append("  collectives per step, per chip: " + ("; ".join(
        f"{k} x{v['executions']:.0f} ({v['ops']} ops) {_si(v['bytes'], 'B')} -> ring {_si(v['ring_bytes'], 'B')}"
        for k, v in sorted(coll.items())) or "none"))
    if f.get("network_ring_bytes_per_chip"):
        lines.append(f"  of the ring bytes, {_si(f['network_ring_bytes_per_chip'], 'B')} cross hosts (groups larger "
                     f"than a host), at the network's rate")
    if f["loops_of_unknown_trip_count"]:
        lines.append(f"  ({f['loops_of_unknown_trip_count']} loop(s) of unknown trip count, taken to run "
                     f"{f['unknown_loops_taken_as']} times)")
    scores = f["hbm_bytes_with_attention_scores"]
    kept = f"; {_si(scores, 'B')} with the XLA attention's scores" if scores != f["hbm_bytes_per_chip"] else ""
    if f["xla_flops_per_chip"] or f["xla_bytes_accessed"]:
        xla_flops, xla_bytes = f"XLA cost analysis {_si(f['xla_flops_per_chip'])}, loop bodies once", (
            f"XLA {_si(f['xla_bytes_accessed'], 'B')}{kept}")
    else:  # the GPU compiler without a device reports no cost analysis
        xla_flops, xla_bytes = "no XLA cost analysis from this compiler", kept.lstrip("; ")
    lines.append(f"  FLOPs per chip {_si(f['flops_per_chip'])} (model count; {xla_flops}), HBM bytes "
                 f"{_si(f['hbm_bytes_per_chip'], 'B')}" + (f" ({xla_bytes})" if xla_bytes else ""))
    movers = f.get("largest_hbm", [])[:3]
    if movers:
        lines.append("  largest HBM movers per step: " + "; ".join(
            f"{m['opcode']} {m['op'] or '?'} {m['shape']} x{m['instructions']} {_si(m['bytes_per_step'], 'B')}"
            for m in movers))
    r = f["roofline"]
    lines.append(f"  roofline: compute {_seconds(r['compute_s'])}, memory {_seconds(r['memory_s'])}, "
                 f"interconnect {_seconds(r['comm_s'])} -> {_seconds(r['step_s_min'])} .. {_seconds(r['step_s_max'])}")
    trips = f["unknown_loops_taken_as"] if f["loops_of_unknown_trip_count"] else 1
    if trips > 1:
        lines.append(f"  per loop step: {_seconds(r['step_s_min'] / trips)} .. {_seconds(r['step_s_max'] / trips)}")
    if "tokens_per_s_max" in r:
        lines.append(f"  at that time: {_si(r['tokens_per_s_min'])} .. {_si(r['tokens_per_s_max'])} tokens/s, MFU "
                     f"{r['mfu_min']:.0%} .. {r['mfu_max']:.0%} ({ROOFLINE_NOTE})")
    return lines


def format_report(report: dict[str, Any], target: Target) -> str:
    """The console form of `run`'s report."""
    lines = [f"ahead-of-time compile for {target.describe()}, mesh "
             + " x ".join(f"{k}={v}" for k, v in report["mesh"].items())
             + f"; model {report['model'] or 'from config.model'} ({report['params'] / 1e6:,.1f}M parameters)",
             f"  chip figures (datasheets, bolt_jax/runtime/chips.py): {target.chip.describe()}"]
    if target.platform == "cpu":
        lines.append("  compiled by the CPU compiler as a stand-in: memory is its buffer assignment, attention the XLA "
                     "reference (no GPU kernels), whose scores are left out of the HBM bytes as a flash kernel keeps "
                     "them on chip")
    if target.platform == "gpu":
        lines.append("  compiled by XLA's GPU compiler without a GPU: nothing autotuned (its default tilings), which a "
                     "run on the GPUs may change")
    for f in report["functions"]:
        lines += _function_lines(f, target)
    return "\n".join(lines)

