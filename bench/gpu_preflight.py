"""Will the headline fit on the GPU it is lent? Every large program bench/headline.py runs, at the headline's exact
arguments, compiled by XLA's GPU compiler on this CPU machine (jax's CUDA plugin in compile-only mode,
bolt_jax.aot.topology: no GPU), its per-device memory against the device's and against the share of it that jax's
allocator takes in that step's process (75% by default; the train steps set 90%, bench/train_step.py
--mem_fraction). A lent GPU gives 15 minutes for every try: a step that runs out of memory there costs a
rerun; here it costs a few minutes of CPU.

    python bench/gpu_preflight.py                  # one H100 (about 6 minutes on 2 cores)
    python bench/gpu_preflight.py --gpu h200
    python bench/gpu_preflight.py --only decode,estep

The arguments are not repeated here: each step's are parsed from bench/headline.py's STEPS by that script's own
parser, with its defaults. Per step, the programs that hold the most memory:
- train_packed, train_concat: the train step (bench/train_step.py's `build_config`, as it runs it). train_concat's
  `auto` is cuDNN's attention, which compiles here where cuDNN's library is installed; where it is not, our Mosaic
  GPU kernel stands in (the 2026-11-22 H100 measured both at micro-batch 16 within 0.11 GiB: run15's log in
  bench/results/2026-11-22-h100/), labelled in the row.
- score: the scorer's pass over `--rows_per_call` rows (at most `--sequences`) of `--seq` tokens.
- decode: the static sampler's whole call (prefill, the decode loop, its KV cache) at each `--batch`, prompts in the
  bucket of `--prompt`, `--new` tokens; the decode attention `auto` resolves for the GPU (our Triton kernel).
- decode_kernels: the same at batch 256 with the Triton and the Mosaic GPU decode kernels (so the Mosaic one is
  lowered inside the whole sampler for the GPU before a GPU runs it).
- estep: the continuous engine's prefill group and decode chunk at the bench's slots and prompt bucket, and the
  scorer's largest call, as the AOT dry run compiles them (bolt_jax.aot.report.estep_reports); with `--overlap` the
  scorer runs while the engine holds its slots, so the E-step's row is the decode chunk + the scorer - the weights
  (held once).
- attention is not compiled: its inputs are under 0.1 GiB (8 x 2048 tokens x 32 heads of 64 in bf16).

Writes bench/results/gpu_preflight-<date>-<gpu>.{json,md} (`--results` elsewhere); exits 1 when a program does
not fit its process's allocator share. Memory only: whether the kernels run and how fast is
for the GPU (bench/gpu_aot_memory.py shows this compiler's memory equal to the H100's measured peaks).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
from collections.abc import Callable

from common import commit, write_results
from gpu_aot_memory import GIB, RESULTS

from bolt_jax.runtime.chips import DEFAULT_GPU_MEM_FRACTION  # what jax's allocator takes unless a step sets another


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled program of a headline step: its memory (bolt_jax.aot.report.memory_bytes) and what it is."""

    step: str
    what: str
    memory: dict[str, float]
    compile_s: float
    allocator_fraction: float = DEFAULT_GPU_MEM_FRACTION  # the share of the GPU jax's allocator takes in its process


def headline_args(name: str):
    """The headline step's arguments as its script parses them (bench/headline.py's STEPS)."""
    import importlib

    from headline import STEPS
    step = next(s for s in STEPS if s.name == name)
    return importlib.import_module(step.script.removesuffix(".py")).parser().parse_args(list(step.args))


def timed_memory(build: Callable[[], object]) -> tuple[dict[str, float], float]:
    from bolt_jax.aot.report import memory_bytes
    t0 = time.perf_counter()
    compiled = build()
    return memory_bytes(compiled), time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------- programs
def train_programs(name: str, target, devices) -> list[Program]:
    from gpu_aot_memory import predicted

    from bolt_jax.aot.topology import cudnn_compiles
    from bolt_jax.kernels import cudnn
    a = headline_args(name)
    attention = ("mosaic_gpu" if a.attention == "auto" and a.docs == 1 and not cudnn_compiles(target.chip)
                 else a.attention)
    out = []
    for batch in (int(b) for b in a.micro_batches.split(",")):
        p = predicted(batch, a.docs, attention, a.layers, devices, seq_len=a.seq_len, remat=a.remat,
                      preset=a.preset)
        what = (f"train step, {a.preset}, seq {a.seq_len}, micro-batch {batch}, {a.docs} doc(s)/row, attention "
                f"{attention}" + (f" (in place of auto's cuDNN: {cudnn.DEVICELESS_REFUSAL})"
                                  if attention != a.attention else " (cuDNN)" if a.docs == 1 and a.attention == "auto"
                                  else ""))
        out.append(Program(name, what, p["memory_bytes"], p["compile_s"],
                           a.mem_fraction or DEFAULT_GPU_MEM_FRACTION))
    return out


def score_programs(devices) -> list[Program]:
    from gpu_aot_memory import score_memory
    a = headline_args("score")
    rows = min(a.rows_per_call, a.sequences)
    p = score_memory(rows, devices, seq=a.seq, preset=a.preset, vocab=a.vocab, max_positions=max(a.seq, 2048))
    return [Program("score", f"scorer pass, {rows} rows x {a.seq} tokens", p["memory_bytes"], p["compile_s"])]


def sampler_model(preset_name: str, mesh, **overrides):
    from bolt_jax.aot.report import abstract_sampler_model
    from bolt_jax.model import preset
    cfg = preset(preset_name, param_dtype="bfloat16", compute_dtype="bfloat16", **overrides)
    return (cfg, *abstract_sampler_model(cfg, mesh))


def decode_programs(devices, step: str) -> list[Program]:
    """bench/sampler.py's generate calls (the headline `step`'s: decode, decode_kernels): the static sampler, one row
    per prompt (n=1), temperature 1, with each of its `--decode` attentions."""
    import jax
    import jax.numpy as jnp
    from sampler import overrides

    from bolt_jax import parallel
    from bolt_jax.sampling.sampler import _bucket, _generate_core, cache_time
    a = headline_args(step)
    mesh = parallel.make_mesh({}, devices)
    p_len = _bucket(a.prompt)

    def spec(*shape, dtype=jnp.int32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh, len(shape)))

    out = []
    for impl in a.decode.split(","):
        _, graphdef, params = sampler_model(a.preset, mesh, decode_impl=impl, **overrides(a.model_overrides))
        for batch in (int(b) for b in a.batch.split(",")):
            def build():
                with parallel.use_mesh(mesh):
                    return _generate_core.lower(
                        graphdef, params, spec(batch, p_len), spec(batch), spec(batch, 2, dtype=jnp.uint32), n=1,
                        max_new_tokens=a.new, temperature=1.0, top_k=0, top_p=1.0, greedy=False, stop_ids=(),
                        banned_ids=()).compile()
            memory, seconds = timed_memory(build)
            out.append(Program(step, f"static generate, batch {batch}, prompts in a bucket of {p_len}, {a.new} new "
                                     f"(KV cache {batch} x {cache_time(p_len, a.new)} positions), decode attention "
                                     f"{impl}", memory, seconds))
    return out


def estep_programs(target, devices) -> list[Program]:
    """bench/estep.py's E-step: its config (`build`, without the checkpoint), and its prefill group, decode chunk and
    scorer as the AOT dry run compiles them (bolt_jax.aot.report.estep_reports: the engine's settings as the backend
    derives them, the scorer's largest call)."""
    import jax
    from estep import VOCAB

    from bolt_jax import parallel
    from bolt_jax.aot.report import estep_reports
    from bolt_jax.config import base_config
    from bolt_jax.estep.run import default_estep_config
    a = headline_args("estep")
    mesh = parallel.make_mesh({}, devices)
    cfg, graphdef, params = sampler_model(a.preset, mesh, vocab_size=VOCAB,
                                          max_position_embeddings=max(2048, a.prompt_len + a.new))
    c = base_config()
    c.estep = default_estep_config()
    c.estep.update(num_samples=a.k, max_new_tokens=a.new, max_prompt_len=a.prompt_len,
                   max_tokens=a.prompt_len + a.new, chunks_per_batch=a.chunks_per_batch, decode_slots=a.decode_slots,
                   prefix_sharing="shared" in a.scheduler.split(","))
    reports = estep_reports(c, cfg, (graphdef, mesh, params, lambda: parallel.use_mesh(mesh)), target)
    out = [Program("estep", r["what"], r["memory_bytes"], r["compile_s"]) for r in reports]
    if "on" in a.overlap.split(",") or "auto" in a.overlap.split(","):
        decode, score = (next(r for r in reports if r["name"] == n)["memory_bytes"] for n in ("decode", "score"))
        weights = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(params))
        out.append(Program("estep", "decode chunk and scorer live together (overlap; the weights once)",
                           {"total": decode["total"] + score["total"] - weights}, 0.0))
    return out


# step -> its programs, from (the target, its devices)
PROGRAMS = {"train_packed": lambda t, d: train_programs("train_packed", t, d),
            "train_concat": lambda t, d: train_programs("train_concat", t, d),
            "score": lambda t, d: score_programs(d), "decode": lambda t, d: decode_programs(d, "decode"),
            "decode_kernels": lambda t, d: decode_programs(d, "decode_kernels"),
            "estep": estep_programs}


# ---------------------------------------------------------------------------------------------------- report
def row(p: Program, device_bytes: float) -> dict:
    total = p.memory["total"]
    return {"step": p.step, "program": p.what, "gib": total / GIB, "share_of_device": total / device_bytes,
            "fits_device": total <= device_bytes,
            "allocator_fraction": p.allocator_fraction,
            "fits_allocator": total <= p.allocator_fraction * device_bytes,
            "memory_bytes": p.memory, "compile_s": p.compile_s}


def markdown(gpu: str, device_gib: float, rows: list[dict], command: str, jax_version: str) -> str:
    verdict = ("every program fits its process's allocator share" if all(r["fits_allocator"] for r in rows) else
               "NOT every program fits its process's allocator share: raise that step's share (a train step's "
               "--mem_fraction, XLA_PYTHON_CLIENT_MEM_FRACTION for the others) above its program's share")
    lines = [f"# Headline preflight for one {gpu.upper()}: memory, predicted without the GPU", "",
             f"Commit {commit()}, {time.strftime('%Y-%m-%d')}, jax {jax_version}: `{command}` (its docstring says "
             f"which programs and why). Per device, by XLA's GPU compiler on a CPU machine; the device has "
             f"{device_gib:.2f} GiB, of which jax's allocator takes 75% by default and the share a step sets "
             f"otherwise. Verdict: {verdict}.", "",
             "| step | program | GiB | share of the device | allocator share | fits it |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['program']} | {r['gib']:.2f} | {r['share_of_device']:.0%} | "
              f"{r['allocator_fraction']:.0%} | {'yes' if r['fits_allocator'] else 'NO'} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    from bolt_jax.aot.topology import GPUS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", default="h100", choices=GPUS)
    p.add_argument("--only", default="", help=f"comma list of steps (default: all of {', '.join(PROGRAMS)})")
    p.add_argument("--results", default=RESULTS, help="where gpu_preflight-<date>-<gpu>.{json,md} go")
    a = p.parse_args()
    steps = [s for s in a.only.split(",") if s] or list(PROGRAMS)
    unknown = sorted(set(steps) - set(PROGRAMS))
    if unknown:
        p.error(f"--only: unknown {unknown}; choose from {list(PROGRAMS)}")
    import jax
    if jax.default_backend() != "cpu":
        sys.exit("run this on a machine without a GPU (JAX_PLATFORMS=cpu): it compiles for one")
    from bolt_jax.aot.topology import devices, parse_target
    target = parse_target(f"{a.gpu}:1")
    device_bytes = target.chip.device_memory_bytes
    rows = []
    for step in steps:
        for program in PROGRAMS[step](target, devices(target)):
            rows.append(row(program, device_bytes))
            r = rows[-1]
            print(f"{step}: {program.what}: {r['gib']:.2f} GiB ({r['share_of_device']:.0%} of the device"
                  f"{'' if r['fits_allocator'] else ', above its allocator share'}; compile "
                  f"{program.compile_s:.0f} s)", flush=True)
    command = "python bench/gpu_preflight.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    text = markdown(a.gpu, device_bytes / GIB, rows, command.strip(), jax.__version__)
    print("\n" + text)
    write_results(os.path.join(a.results, f"gpu_preflight-{time.strftime('%Y-%m-%d')}-{a.gpu}"),
                  {"command": command.strip(), "gpu": a.gpu, "device_bytes": device_bytes, "rows": rows}, text)
    if not all(r["fits_allocator"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
