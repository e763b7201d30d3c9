"""Ahead-of-time compilation for a named topology on a machine without it (`--config.dry_run=True
--config.aot_topology=v5p:4x4x8`, `h100:8`, or `cpu:8` with `--config.aot_chip=h100`): `topology` (names and devices;
the chips' published figures are in bolt_jax.runtime.chips), `hlo` (collectives and HBM bytes per step read from the
compiled HLO, loops counted), `report` (compile the train step and the E-step's prefill, decode and scorer; memory,
collectives, roofline step time).

On the 2-core development machine (jax 0.12.0.1, libtpu 0.0.50.1, other jobs running), TinyLlama's train step at
seq 2048 compiles in 145 s for a v5e-64 and 230 s for a v5p-128 (prefill and decode 10-50 s), and in 12 s on 8 CPU
devices standing in for 8 H100s (bench/results/aot_predictions-2026-12-06.md), and in 60-80 s for one or 8 H100s
with XLA's GPU compiler (bench/results/aot_predictions_gpu-2026-12-07.md); the tiny test model in about 10 s for
v5e:2x2 and 20 s for h100:2."""
