"""The decode chunk on TPUs, compiled ahead of time: its attention (XLA or the Pallas TPU kernel) and the slot state's
layout (the default or the compiler's own).

    python bench/decode_layout.py                          # v5e:2x2 and v5p:2x2x1, four models, 64 and 256 slots/chip
    python bench/decode_layout.py --topologies v5e:2x2 --models small_8x512 --slots_per_chip 16 \
        --prompt_len 256 --new 256 --tag short                 # a shape where the compiler's layout moves more

The caches are [S, T, K * D] (`sampler.cache_layout`: a position's KV heads side by side, which fill the 128 lanes
where one head of 64 fills half). The XLA attention views them as [S, T, K, D] and keeps its fp32 scores in HBM; the
Pallas TPU kernel (`kernels.decode_tpu`) reads them as they lie and keeps its scores in VMEM. The slot state's layout
is the default or the compiler's own (`Layout.AUTO`); the engine compiles both on a TPU and keeps the one that moves
fewer HBM bytes per chunk (`bolt_jax.sampling.slots.compile_decode`). This bench shows every combination, per model
and shape, with the libtpu compiler on this CPU machine (nothing runs on a TPU):

- HBM bytes per chunk per chip (`bolt_jax.aot.hlo`: every instruction's operands and result, each loop step counted,
  each array at the bytes its tiled layout stores; the kernel counted as reading its whole cache operands, though it
  reads only the blocks its rows have written: an upper bound for it) and XLA's own `bytes accessed` (which counts a
  loop body once);
- memory per chip: arguments + temporaries (the copies are temporaries);
- cache copies outside the loop, and which layout `compile_decode` keeps.

The E-step's shape: prompts of up to 1024 tokens, thoughts of up to 1024 (a 2048-position cache per slot),
`--slots_per_chip` slots on each chip (batch over all chips, as the E-step's sampling mesh), 16 steps per chunk.
Written to bench/results/decode_layout[_TAG]-<date>.{json,md}. A prediction from the compiled programs, not a
measurement.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import time

from common import write_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = {  # preset and overrides; SmolLM2-135M is the real-model issue's model (9 query / 3 KV heads of 64)
    "tinyllama": ("tinyllama_1.1b_bolt", {}),
    "smollm2_135m": ("tinyllama_1.1b", dict(vocab_size=49156, hidden_size=576, intermediate_size=1536,
                                            num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                            tie_word_embeddings=True)),
    "small_8x512": ("tiny", dict(hidden_size=512, intermediate_size=1408, num_attention_heads=8,
                                 num_key_value_heads=4, num_hidden_layers=8, vocab_size=4096,
                                 max_position_embeddings=4096)),
    "small_2x512": ("tiny", dict(hidden_size=512, intermediate_size=1408, num_attention_heads=8,
                                 num_key_value_heads=4, num_hidden_layers=2, vocab_size=512,
                                 max_position_embeddings=4096)),
}


def measure(topology: str, model: str, slots_per_chip: int, impl: str, a) -> dict:
    import jax

    from bolt_jax import parallel
    from bolt_jax.aot import hlo
    from bolt_jax.aot.compiler import does_not_fit
    from bolt_jax.aot.report import abstract_sampler_model
    from bolt_jax.aot.topology import devices, parse_target
    from bolt_jax.model import preset
    from bolt_jax.sampling import engine, slots

    target = parse_target(topology)
    chips = target.num_devices
    mesh = parallel.make_mesh({"data": chips, "fsdp": 1, "tensor": 1}, devices(target))
    name, overrides = MODELS[model]
    cfg = preset(name, compute_dtype="bfloat16", decode_impl=impl, **overrides)
    graphdef, params = abstract_sampler_model(cfg, mesh)
    s = engine.make_settings(n=4, slots=slots_per_chip * chips, num_prompts=slots_per_chip * chips // 4,
                             prompt_len=a.prompt_len, max_new_tokens=a.new, temperature=1.0, top_k=0, top_p=1.0,
                             greedy=False, stop_token_ids=(2,), banned_token_ids=(), steps_per_sync=a.steps,
                             mesh=mesh)
    per_chip_cache = f"[{slots_per_chip},{s.cache_len},{cfg.num_key_value_heads * cfg.head_size}]"
    row = {"topology": topology, "model": model, "slots_per_chip": slots_per_chip, "decode_impl": impl,
           "cache_len": s.cache_len,
           "steps_per_chunk": s.steps_per_sync}
    with jax.set_mesh(mesh):
        for layout in ("default", "auto"):
            t0 = time.perf_counter()
            try:
                compiled = slots.lower_decode(graphdef, params, s, layout=layout).compile()
            except Exception as e:  # noqa: BLE001 - refused for memory: a result; anything else is a bug
                if does_not_fit(e) is None:
                    raise
                row[layout] = {"does_not_fit": does_not_fit(e), "compile_s": time.perf_counter() - t0}
                continue
            compile_s = time.perf_counter() - t0
            text = compiled.as_text()
            entry = next(c for c in hlo.parse_module(text).values() if c.entry)
            mem = compiled.memory_analysis()
            cost = compiled.cost_analysis() or {}
            cost = cost[0] if isinstance(cost, list) else cost
            row[layout] = {
                "hbm_bytes_per_chip": hlo.analyze(text, chips, unknown_trips=s.steps_per_sync).hbm_bytes,
                "xla_bytes_accessed": float(cost.get("bytes accessed", 0.0)),
                "memory_bytes": float(mem.argument_size_in_bytes + mem.temp_size_in_bytes),
                "cache_copies_outside_loop": sum(i.opcode == "copy" and per_chip_cache in i.shape
                                                 for i in entry.instructions),
                "compile_s": compile_s,
            }
    fitting = [k for k in ("default", "auto") if "hbm_bytes_per_chip" in row[k]]
    row["kept"] = min(fitting, key=lambda k: row[k]["hbm_bytes_per_chip"]) if fitting else None  # compile_decode's
    if len(fitting) == 2:
        row["auto_over_default_bytes"] = row["auto"]["hbm_bytes_per_chip"] / row["default"]["hbm_bytes_per_chip"]
        row["auto_over_default_memory"] = row["auto"]["memory_bytes"] / row["default"]["memory_bytes"]
    return row


def markdown(rows: list[dict], a) -> str:
    lines = [
        "# Decode chunk on TPUs: XLA attention vs the Pallas TPU kernel, default slot-state layout vs the compiler's "
        "(ahead of time)",
        "",
        f"`python bench/decode_layout.py --topologies {a.topologies} --models {a.models} "
        f"--slots_per_chip {a.slots_per_chip} --decode_impls {a.decode_impls}`: prompts {a.prompt_len} + new "
        f"{a.new} positions, {a.steps} steps per "
        "chunk, K=4. HBM GB per chunk per chip by `bolt_jax.aot.hlo` (each loop step counted, arrays at their tiled "
        "layouts' bytes); memory = arguments + temporaries per chip; copies = KV cache buffers copied outside the "
        "decode loop; the kernel counted as reading its whole cache operands (an upper bound: it reads only the "
        "blocks its rows have written). A prediction from the compiled programs, not a measurement.",
        "",
        "| topology | model | slots/chip | attention | HBM GB default | HBM GB auto | auto/default | "
        "memory GB default | memory GB auto | copies default | copies auto | kept |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        d, u = r["default"], r["auto"]
        ratio = f"{r['auto_over_default_bytes']:.2f}" if "auto_over_default_bytes" in r else "-"
        lines.append(f"| {r['topology']} | {r['model']} | {r['slots_per_chip']} | {r['decode_impl']} | "
                     f"{_gb(d, 'hbm_bytes_per_chip')} | "
                     f"{_gb(u, 'hbm_bytes_per_chip')} | {ratio} | {_gb(d, 'memory_bytes')} | {_gb(u, 'memory_bytes')} "
                     f"| {d.get('cache_copies_outside_loop', '-')} | {u.get('cache_copies_outside_loop', '-')} | "
                     f"{r['kept'] or 'neither fits'} |")
    lines += ["", "Kept program per attention (bytes and memory of the layout `compile_decode` keeps), "
              "kernel / XLA:", "",
              "| topology | model | slots/chip | HBM GB xla | HBM GB kernel | kernel/xla | memory GB xla | "
              "memory GB kernel |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in compare(rows):
        lines.append(f"| {c['topology']} | {c['model']} | {c['slots_per_chip']} | {c['xla_gb']:.2f} | "
                     f"{c['kernel_gb']:.2f} | {c['kernel_over_xla_bytes']:.2f} | {c['xla_memory_gb']:.2f} | "
                     f"{c['kernel_memory_gb']:.2f} |")
    refused = [(r, k) for r in rows for k in ("default", "auto") if "does_not_fit" in r[k]]
    if refused:
        lines += ["", "Refused by the compiler for memory (\"does not fit\"):", ""]
        lines += [f"- {r['topology']} {r['model']} {r['slots_per_chip']} slots/chip, {r['decode_impl']}, {k}: "
                  f"{r[k]['does_not_fit']}"
                  for r, k in refused]
    return "\n".join(lines) + "\n"


def compare(rows: list[dict]) -> list[dict]:
    """For each (topology, model, slots) measured with both attentions: the kept programs side by side."""
    kept = {(r["topology"], r["model"], r["slots_per_chip"], r["decode_impl"]): r[r["kept"]]
            for r in rows if r["kept"]}
    out = []
    for (topo, model, per_chip, impl), xla in kept.items():
        kernel = kept.get((topo, model, per_chip, "pallas_tpu"))
        if impl != "xla" or kernel is None:
            continue
        out.append({"topology": topo, "model": model, "slots_per_chip": per_chip,
                    "xla_gb": xla["hbm_bytes_per_chip"] / 1e9, "kernel_gb": kernel["hbm_bytes_per_chip"] / 1e9,
                    "kernel_over_xla_bytes": kernel["hbm_bytes_per_chip"] / xla["hbm_bytes_per_chip"],
                    "xla_memory_gb": xla["memory_bytes"] / 1e9, "kernel_memory_gb": kernel["memory_bytes"] / 1e9})
    return out


def _gb(result: dict, key: str) -> str:
    return f"{result[key] / 1e9:.2f}" if key in result else "does not fit"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topologies", default="v5e:2x2,v5p:2x2x1")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--slots_per_chip", default="64,256")
    p.add_argument("--prompt_len", type=int, default=1024)
    p.add_argument("--new", type=int, default=1024)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--decode_impls", default="xla,pallas_tpu", help="the decode attentions to compile with")
    p.add_argument("--tag", default="", help="appended to the results' file name (another shape on the same day)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    a = p.parse_args()
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    rows = []
    for topology in a.topologies.split(","):
        for model in a.models.split(","):
            if model not in MODELS:
                raise SystemExit(f"error: unknown model {model!r}; choose from {sorted(MODELS)}")
            for per_chip, impl in itertools.product((int(x) for x in a.slots_per_chip.split(",")),
                                                    a.decode_impls.split(",")):
                r = measure(topology, model, per_chip, impl, a)
                rows.append(r)
                d, u = r["default"], r["auto"]
                print(f"{topology:10s} {model:13s} {per_chip:4d} slots/chip {impl:10s}: HBM GB per chunk default "
                      f"{_gb(d, 'hbm_bytes_per_chip')}, auto {_gb(u, 'hbm_bytes_per_chip')}; memory GB "
                      f"{_gb(d, 'memory_bytes')} -> {_gb(u, 'memory_bytes')}; kept {r['kept']}", flush=True)
    text = markdown(rows, a)
    print(text)
    stem = f"decode_layout{a.tag and '_' + a.tag}-{datetime.date.today()}"
    write_results(os.path.join(a.out, stem), {"args": vars(a), "rows": rows, "kernel_vs_xla": compare(rows)}, text)


if __name__ == "__main__":
    main()
