"""Ahead-of-time compiles for named topologies on this CPU machine (bolt_jax.aot): the HLO collective and HBM-byte
counts against hand-written modules whose bytes are worked out by hand, the tiny model compiled for a v5e:2x2 slice
by the real TPU compiler (libtpu) and for cpu:8 standing in for 8 H100s, and the user's mistakes as one-line errors."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bolt_jax.aot import hlo
from bolt_jax.aot.report import estep_settings
from bolt_jax.aot.topology import cuda_plugin, parse_target
from bolt_jax.runtime.chips import CHIPS
from tests.helpers import repo_root

ROOT = repo_root()
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
needs_cuda_plugin = pytest.mark.skipif(cuda_plugin() is None, reason="jax's CUDA plugin is not installed")

# An outer loop of 6 trips (the CPU compiler's known_trip_count) holding an all-gather, an async all-reduce and an
# inner loop whose condition is `i < 3` from i = 0 (the TPU compiler writes no trip count) holding a reduce-scatter;
# one collective-permute outside the loops. The -done halves must not count again, nor the all-gather's second copy
# in a fusion under the same channel_id (the TPU compiler's async collective fusions). (A backslash joins two lines.)
LOOPS_HLO = """HloModule jit_step, entry_computation_layout={()->f32[]}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%inner_body (p.1: (s32[], f32[256])) -> (s32[], f32[256]) {
  %p.1 = (s32[], f32[256]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  %one = s32[] constant(1)
  %next = s32[] add(%i.1, %one)
  %v = f32[256]{0} get-tuple-element(%p.1), index=1
  %rs = f32[64]{0} reduce-scatter(%v), channel_id=3, replica_groups=mesh['d'=2,'f'=4] {'f'}, dimensions={0}, \
to_apply=%add
  %zero = f32[] constant(0)
  %pad = f32[256]{0} pad(%rs, %zero), padding=0_192
  ROOT %t.1 = (s32[], f32[256]{0}) tuple(%next, %pad)
}

%inner_cond (p.2: (s32[], f32[256])) -> pred[] {
  %p.2 = (s32[], f32[256]{0}) parameter(0)
  %i.2 = s32[] get-tuple-element(%p.2), index=0
  %three = s32[] constant(3)
  ROOT %lt = pred[] compare(%i.2, %three), direction=LT
}

%fused_ag (param_0: bf16[2,128]) -> bf16[8,128] {
  %param_0 = bf16[2,128]{1,0} parameter(0)
  ROOT %ag.1 = bf16[8,128]{1,0} all-gather(%param_0), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}
}

%outer_body (p.3: (s32[], bf16[8,128], f32[256])) -> (s32[], bf16[8,128], f32[256]) {
  %p.3 = (s32[], bf16[8,128]{1,0}, f32[256]{0}) parameter(0)
  %j = s32[] get-tuple-element(%p.3), index=0
  %w = bf16[8,128]{1,0} get-tuple-element(%p.3), index=1
  %shard = bf16[2,128]{1,0} slice(%w), slice={[0:2], [0:128]}
  %ag = bf16[8,128]{1,0} all-gather(%shard), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}
  %overlapped = bf16[8,128]{1,0} fusion(%shard), kind=kOutput, calls=%fused_ag
  %g = f32[256]{0} get-tuple-element(%p.3), index=2
  %ars = f32[256]{0} all-reduce-start(%g), channel_id=2, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %ard = f32[256]{0} all-reduce-done(%ars)
  %zero.1 = s32[] constant(0)
  %init = (s32[], f32[256]{0}) tuple(%zero.1, %ard)
  %inner = (s32[], f32[256]{0}) while(%init), condition=%inner_cond, body=%inner_body
  %h = f32[256]{0} get-tuple-element(%inner), index=1
  %one.1 = s32[] constant(1)
  %j1 = s32[] add(%j, %one.1)
  ROOT %t.3 = (s32[], bf16[8,128]{1,0}, f32[256]{0}) tuple(%j1, %ag, %h)
}

%outer_cond (p.4: (s32[], bf16[8,128], f32[256])) -> pred[] {
  %p.4 = (s32[], bf16[8,128]{1,0}, f32[256]{0}) parameter(0)
  %k = s32[] get-tuple-element(%p.4), index=0
  %six = s32[] constant(6)
  ROOT %lt.1 = pred[] compare(%k, %six), direction=LT
}

ENTRY %main (a: bf16[8,128], b: f32[256], c: bf16[32]) -> f32[] {
  %a = bf16[8,128]{1,0} parameter(0)
  %b = f32[256]{0} parameter(1)
  %c = bf16[32]{0} parameter(2)
  %zero.2 = s32[] constant(0)
  %t0 = (s32[], bf16[8,128]{1,0}, f32[256]{0}) tuple(%zero.2, %a, %b)
  %loop = (s32[], bf16[8,128]{1,0}, f32[256]{0}) while(%t0), condition=%outer_cond, body=%outer_body, \
backend_config={"known_trip_count":{"n":"6"}}
  %cps = (bf16[32]{0}, bf16[32]{0}, u32[], u32[]) collective-permute-start(%c), channel_id=4, \
source_target_pairs={{0,1},{1,0}}
  %cpd = bf16[32]{0} collective-permute-done(%cps)
  ROOT %r = f32[] constant(0)
}
"""


def test_collectives_count_loop_trips_and_ring_bytes():
    a = hlo.analyze(LOOPS_HLO, num_devices=8)
    s = a.summary()
    assert a.unknown_loops == 0
    # all-gather: bf16[8,128] = 2048 B, 6 times, groups of 4: ring (3/4) x 2048 x 6
    assert s["all-gather"] == {"ops": 1, "executions": 6, "bytes": 2048 * 6, "ring_bytes": 0.75 * 2048 * 6}
    # async all-reduce of f32[256] = 1024 B over 8 devices, 6 times: ring 2 x 7/8 x 1024 x 6; the -done not again
    assert s["all-reduce"] == {"ops": 1, "executions": 6, "bytes": 1024 * 6, "ring_bytes": 2 * 7 / 8 * 1024 * 6}
    # reduce-scatter to f32[64] over 'f' (4 devices): full input 4 x 256 B, 3 inner x 6 outer = 18 times
    assert s["reduce-scatter"] == {"ops": 1, "executions": 18, "bytes": 1024 * 18, "ring_bytes": 0.75 * 1024 * 18}
    # collective-permute of bf16[32] = 64 B, once, all of it sent
    assert s["collective-permute"] == {"ops": 1, "executions": 1, "bytes": 64, "ring_bytes": 64}
    assert a.ring_bytes == pytest.approx(9216 + 10752 + 13824 + 64)


# What XLA's GPU compiler writes: two gradients reduce-scattered by one async combined op (its shape: the operands,
# then the shards), and a cuBLAS matmul whose second result is its 32 MiB workspace. (A backslash joins two lines.)
GPU_HLO = """HloModule jit_step

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

ENTRY %main (a: bf16[1024,512], b: bf16[2048,512], w: bf16[512,256]) -> bf16[1024,256] {
  %a = bf16[1024,512]{1,0} parameter(0)
  %b = bf16[2048,512]{1,0} parameter(1)
  %w = bf16[512,256]{1,0} parameter(2)
  %rss = ((bf16[1024,512]{1,0}, bf16[2048,512]{1,0}), (bf16[128,512]{1,0}, bf16[256,512]{1,0})) \
reduce-scatter-start(%a, %b), channel_id=7, replica_groups=mesh['fsdp'=8] {'fsdp'}, use_global_device_ids=true, \
dimensions={0}, to_apply=%add
  %rsd = (bf16[128,512]{1,0}, bf16[256,512]{1,0}) reduce-scatter-done(%rss)
  %mm = (bf16[1024,256]{1,0}, s8[33554432]{0}) custom-call(%a, %w), custom_call_target="__cublas$gemm"
  ROOT %out = bf16[1024,256]{1,0} get-tuple-element(%mm), index=0
}
"""


def test_gpu_async_reduce_scatter_and_cublas_workspace():
    a = hlo.analyze(GPU_HLO, num_devices=8)
    # the full operands, 1 MiB + 2 MiB, once (not the shards too, nor times the group); ring 7/8 of it
    assert a.summary()["reduce-scatter"] == {"ops": 1, "executions": 1, "bytes": 3 * 2 ** 20,
                                             "ring_bytes": 7 / 8 * 3 * 2 ** 20}
    # HBM: the reduce-scatter reads its operands (3 MiB) and writes the shards (384 KiB); the matmul reads a (1 MiB)
    # and w (256 KiB) and writes 512 KiB, its workspace being scratch, not an output
    assert a.hbm_bytes == pytest.approx(3 * 2 ** 20 + 3 * 2 ** 17 + 2 ** 20 + 2 ** 18 + 2 ** 19)


# A stacked [6, 256] f32 buffer read one row per trip by a fusion that dynamic-slices it, and a [6, 256] buffer
# written one row per trip in place by another.
SLICES_HLO = """HloModule jit_scan

%fused_row (param_0: f32[6,256], param_1: s32[]) -> f32[256] {
  %param_0 = f32[6,256]{1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  %ds = f32[1,256]{1,0} dynamic-slice(%param_0, %param_1, %zero), dynamic_slice_sizes={1,256}
  %row = f32[256]{0} bitcast(%ds)
  ROOT %sq = f32[256]{0} multiply(%row, %row)
}

%fused_put (param_0.1: f32[6,256], param_1.1: f32[256], param_2: s32[]) -> f32[6,256] {
  %param_0.1 = f32[6,256]{1,0} parameter(0)
  %param_1.1 = f32[256]{0} parameter(1)
  %upd = f32[1,256]{1,0} bitcast(%param_1.1)
  %param_2 = s32[] parameter(2)
  %zero.1 = s32[] constant(0)
  ROOT %dus = f32[6,256]{1,0} dynamic-update-slice(%param_0.1, %upd, %param_2, %zero.1)
}

%body (p: (s32[], f32[6,256], f32[6,256])) -> (s32[], f32[6,256], f32[6,256]) {
  %p = (s32[], f32[6,256]{1,0}, f32[6,256]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %xs = f32[6,256]{1,0} get-tuple-element(%p), index=1
  %ys = f32[6,256]{1,0} get-tuple-element(%p), index=2
  %y = f32[256]{0} fusion(%xs, %i), kind=kLoop, calls=%fused_row
  %ys2 = f32[6,256]{1,0} fusion(%ys, %y, %i), kind=kLoop, calls=%fused_put
  %one = s32[] constant(1)
  %i2 = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[6,256]{1,0}, f32[6,256]{1,0}) tuple(%i2, %xs, %ys2)
}

%cond (q: (s32[], f32[6,256], f32[6,256])) -> pred[] {
  %q = (s32[], f32[6,256]{1,0}, f32[6,256]{1,0}) parameter(0)
  %n = s32[] get-tuple-element(%q), index=0
  %six = s32[] constant(6)
  ROOT %lt = pred[] compare(%six, %n), direction=GT
}

ENTRY %main (x: f32[6,256], y: f32[6,256]) -> f32[6,256] {
  %x = f32[6,256]{1,0} parameter(0)
  %y0 = f32[6,256]{1,0} parameter(1)
  %start = s32[] constant(0)
  %t0 = (s32[], f32[6,256]{1,0}, f32[6,256]{1,0}) tuple(%start, %x, %y0)
  %w = (s32[], f32[6,256]{1,0}, f32[6,256]{1,0}) while(%t0), condition=%cond, body=%body
  ROOT %out = f32[6,256]{1,0} get-tuple-element(%w), index=2
}
"""


def test_hbm_bytes_count_slices_and_in_place_updates_per_trip():
    a = hlo.analyze(SLICES_HLO, num_devices=1)
    assert a.unknown_loops == 0 and not a.collectives  # `6 > i` read as i < 6
    row = 1024 + 4 + 1024  # reads the row it slices (not all 6) and the index, writes the squared row
    put = 1024 + 4 + 1024  # reads the update and the index, writes the update in place (not the whole buffer)
    counter = 4 + 4 + 4  # i + 1
    condition = 4 + 4 + 1  # 6 > i
    assert a.hbm_bytes == pytest.approx(6 * (row + put + counter + condition))
    top = a.largest_hbm(2)  # where the bytes go: the two fusions, six trips each, shapes without layouts
    assert [(t["opcode"], t["shape"], t["bytes_per_step"]) for t in top] == [
        ("fusion", "f32[256]", 6 * row), ("fusion", "f32[6,256]", 6 * put)]
    assert sum(b for b, _ in a.hbm_breakdown.values()) == pytest.approx(a.hbm_bytes_all)


def _fold_tuple_elements(text: str) -> str:
    """The same module as XLA's dump files print it: each get-tuple-element folded into its users as `%tuple#k`."""
    import re
    folded = {}
    for name, tup, k in re.findall(r"^\s*%([\w.]+) = \S+ get-tuple-element\(%([\w.]+)\), index=(\d+)$", text, re.M):
        folded[name] = f"{tup}#{k}"
    text = re.sub(r"^\s*%[\w.]+ = \S+ get-tuple-element\(.*\n", "", text, flags=re.M)
    return re.sub(r"%([\w.]+)\b(?!#)", lambda m: "%" + folded.get(m.group(1), m.group(1)), text)


def test_hbm_bytes_read_tuple_elements_printed_as_dump_files_print_them():
    """XLA's dump files fold a get-tuple-element into its users (`fusion(%p#1, %p#0)`); read as the whole tuple,
    every loop body's operand counted all of the loop's state (20 GB more for a 4-layer TinyLlama step than the
    same compile's `as_text()`). Both printings give the same bytes and trip counts."""
    dumped = _fold_tuple_elements(SLICES_HLO)
    assert dumped.count("get-tuple-element") == 1 and "%p#1" in dumped and "%q#0" in dumped  # the ROOT one stays
    plain, folded = hlo.analyze(SLICES_HLO, num_devices=1), hlo.analyze(dumped, num_devices=1)
    assert folded.unknown_loops == 0 and folded.hbm_bytes == pytest.approx(plain.hbm_bytes)
    assert folded.largest_hbm(2) == plain.largest_hbm(2)


def test_hbm_bytes_of_asynchronous_fusions_are_their_fused_computations():
    """The GPU compiler wraps some fusions in a loop as `fusion-start` / `fusion-done` (a scanned layer's slices and
    in-place updates of its stacked residuals): counted as the fusion they wrap, not as every buffer in their shape
    (that counted the whole stacked buffer, read and written, on every trip: 2.1x a SmolLM2 train step's bytes)."""
    text = SLICES_HLO.replace(
        "%y = f32[256]{0} fusion(%xs, %i), kind=kLoop, calls=%fused_row",
        "%ys_s = ((f32[6,256]{1,0}, s32[]), f32[256]{0}, u32[]) fusion-start(%xs, %i), kind=kLoop, calls=%fused_row\n"
        "  %y = f32[256]{0} fusion-done(%ys_s)").replace(
        "%ys2 = f32[6,256]{1,0} fusion(%ys, %y, %i), kind=kLoop, calls=%fused_put",
        "%put_s = ((f32[6,256]{1,0}, f32[256]{0}, s32[]), f32[6,256]{1,0}, u32[]) fusion-start(%ys, %y, %i), "
        "kind=kLoop, calls=%fused_put\n  %ys2 = f32[6,256]{1,0} fusion-done(%put_s)")
    assert text.count("fusion-start") == 2
    assert hlo.analyze(text, num_devices=1).hbm_bytes == hlo.analyze(SLICES_HLO, num_devices=1).hbm_bytes


# A matmul fusion whose weight passes through a nested fusion that only re-views it (as the TPU compiler nests one
# around a decode step's weights): the weight is read whole by the dot, once per execution.
NESTED_HLO = """HloModule jit_step

%view (param_0.2: bf16[256,512]) -> bf16[256,512] {
  %param_0.2 = bf16[256,512]{1,0} parameter(0)
  ROOT %b = bf16[256,512]{1,0} bitcast(%param_0.2)
}

%fused_dot (param_0.1: bf16[256,512], param_1.1: bf16[8,256]) -> bf16[8,512] {
  %param_0.1 = bf16[256,512]{1,0} parameter(0)
  %param_1.1 = bf16[8,256]{1,0} parameter(1)
  %w = bf16[256,512]{1,0} fusion(%param_0.1), kind=kLoop, calls=%view
  ROOT %dot = bf16[8,512]{1,0} convolution(%param_1.1, %w), dim_labels=bf_io->bf
}

ENTRY %main (w: bf16[256,512], x: bf16[8,256]) -> bf16[8,512] {
  %w0 = bf16[256,512]{1,0} parameter(0)
  %x0 = bf16[8,256]{1,0} parameter(1)
  ROOT %y = bf16[8,512]{1,0} fusion(%w0, %x0), kind=kOutput, calls=%fused_dot
}
"""


def test_hbm_bytes_follow_a_value_through_a_nested_fusion_that_only_views_it():
    assert hlo.analyze(NESTED_HLO, num_devices=1).hbm_bytes == 256 * 512 * 2 + 8 * 256 * 2 + 8 * 512 * 2


@pytest.mark.parametrize("shape, stored", [
    ("bf16[256,2048,4,64]{3,2,1,0:T(4,128)(2,1)}", (256, 2048, 4, 128)),  # head_dim 64 on 128 lanes: twice the bytes
    ("bf16[256,2048,4,64]{1,3,2,0:T(8,128)(2,1)}", (256, 2048, 4, 64)),  # positions minor: whole tiles already
    ("f32[256,4,8]{2,1,0:T(4,128)}", (256, 4, 128)),  # 8 of 128 lanes: 16 times
    ("f32[300]{0:T(256)}", (512,)),  # a one-dim tile
    ("s32[]{:T(128)}", None),  # a scalar
    ("bf16[3,5]{1,0}", None),  # CPU and GPU layouts: no tiles
])
def test_tpu_tiles_pad_the_two_most_minor_dims(shape, stored):
    (a,) = hlo.arrays_of(shape)
    assert a.stored_dims == stored
    dims = stored or a.dims
    assert a.stored_nbytes == a.nbytes * np.prod(dims) / np.prod(a.dims)


@pytest.mark.parametrize("dims, scores", [
    ((16, 4, 8, 2048, 2048), True),  # [B, K, G, S, T]
    ((16, 4, 2048, 16384), True),  # [B, K, S, G*T]
    ((16, 2048, 2048), False),  # hidden states [B, S, D] with D = S
    ((16, 2048, 32, 64), False),  # q [B, S, H, D]
    ((16, 4, 16384, 64), False),  # grouped q [B, K, G*S, D]
    ((32768, 5632), False),  # the MLP's [B*S, F]
])
def test_attention_scores_are_told_from_activations(dims, scores):
    assert hlo.attention_scores(hlo.Array("f32", dims), 2048) is scores


@pytest.mark.parametrize("kind, peak, hbm", [
    ("NVIDIA H100 80GB HBM3", 989e12, 3.35e12), ("NVIDIA H100 PCIe", 756e12, 2.0e12),
    ("NVIDIA H100 NVL", 835e12, 3.9e12), ("NVIDIA H200", 989e12, 4.8e12), ("NVIDIA GH200 480GB", 989e12, 4.0e12),
    ("TPU v5 lite", 197e12, 819e9), ("TPU v5", 459e12, 2765e9), ("cpu", None, None)])
def test_device_kinds_find_their_datasheet_figures(kind, peak, hbm):
    """A running device's peak and HBM bandwidth by jax's device kind, the longest key first (a PCIe H100 is not an
    SXM one); each chip the compile-time predictions use finds its datasheet figures the same way."""
    from bolt_jax.runtime.chips import HBM_BYTES_PER_S, PEAK_BF16_FLOPS, for_device_kind
    assert (for_device_kind(PEAK_BF16_FLOPS, kind), for_device_kind(HBM_BYTES_PER_S, kind)) == (peak, hbm)
    datasheets = {"v5e": (197e12, 819e9), "v5p": (459e12, 2765e9), "h100": (989e12, 3.35e12), "h200": (989e12, 4.8e12)}
    assert {name: (c.peak_flops, c.hbm_bytes_per_s) for name, c in CHIPS.items()} == datasheets


def test_replica_group_spellings():
    def group(attrs):
        return hlo.group_size(hlo.Instruction("x", "f32[4]", "all-reduce", [], "", attrs), num_devices=16)
    assert group("replica_groups={{0,2},{1,3}}, to_apply=%add") == 2
    assert group("replica_groups=[4,4]<=[16], to_apply=%add") == 4
    assert group("replica_groups=[2,8]<=[8,2]T(1,0), to_apply=%add") == 8
    assert group("replica_groups=mesh['data'=2,'fsdp'=4,'tensor'=2] {'fsdp','tensor'}, to_apply=%add") == 8
    assert group("replica_groups={}, to_apply=%add") == 16


# ------------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("topology, chip, needle", [
    ("v9x:2x2", "", "is not a known topology"),
    ("tpu-pod", "", "is not a known topology"),
    ("v5e:32x32", "", "has 1024 chips"),
    ("v5p:8x8x8", "", "has 512 chips"),
    ("cpu:8", "", "--config.aot_chip=h100"),
    ("cpu:8", "a100", "is not a known chip"),
    ("v5e:2x2", "v5p", "contradicts"),
    ("h100:0", "", "names no GPUs"),
    ("h100:64x8", "", "has 512 chips"),
    ("h200:8", "h100", "contradicts"),
    ("a100:8", "", "is not a known topology"),
])
def test_bad_topology_names_fail_in_one_line(topology, chip, needle):
    with pytest.raises(ValueError, match=needle) as e:
        parse_target(topology, chip)
    assert "\n" not in str(e.value)


@needs_libtpu
def test_a_shape_libtpu_refuses_fails_in_one_line():
    from bolt_jax.aot.topology import devices
    with pytest.raises(ValueError, match=r"config.aot_topology=v5e:3x3: libtpu refuses it: .*not divisible") as e:
        devices(parse_target("v5e:3x3"))
    assert "\n" not in str(e.value)


def test_names_libtpu_accepts():
    assert parse_target("v5e_4x4").num_devices == 16
    assert parse_target("v5p=4x4x8").num_devices == 128
    assert parse_target("v5e:16x16").chip is CHIPS["v5e"]
    assert parse_target("cpu:64", "h200").chip.name == "h200"
    gpus = parse_target("h100:4x8")
    assert (gpus.platform, gpus.num_devices, gpus.hosts, gpus.chip) == ("gpu", 32, 4, CHIPS["h100"])
    assert parse_target("H200_8").describe() == "H200_8: 8 NVIDIA H200 GPUs"


def test_a_gpu_topology_without_the_cuda_plugin_or_cudnns_library_fails_in_one_line(tmp_path, monkeypatch):
    from bolt_jax.aot import topology
    from bolt_jax.config import validate_common
    c = tiny_config(tmp_path, "h100:8")
    c.model.attention_impl = "cudnn"
    monkeypatch.setattr(topology, "cudnn_compiles", lambda chip: False)
    with pytest.raises(ValueError, match=r"attention_impl=cudnn on h100:8: jax .* cannot compile cuDNN's") as e:
        validate_common(c)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(topology, "cudnn_available", lambda: False)
    with pytest.raises(ValueError, match=r"attention_impl=cudnn on h100:8 needs cuDNN's library.*nvidia-cudnn") as e:
        validate_common(c)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(topology, "cuda_plugin", lambda: None)
    with pytest.raises(ValueError, match=r"h100:3 needs XLA's GPU compiler.*pip install 'bolt_jax\[gpu-aot\]'") as e:
        topology.devices(parse_target("h100:3"))
    assert "\n" not in str(e.value)


def tiny_config(tmp_path, topology: str, chip: str = ""):
    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / "train_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.run_dir = str(tmp_path / "run")
    c.dry_run, c.aot_topology, c.aot_chip = True, topology, chip
    c.data.seq_len = 128  # whole blocks of the TPU attention kernel
    c.aot_report = str(tmp_path / "aot.json")
    return c


def test_mesh_that_does_not_fit_the_topology_fails_before_compiling(tmp_path):
    from bolt_jax.config import validate_common
    c = tiny_config(tmp_path, "cpu:8", "h100")
    c.mesh.data, c.mesh.fsdp = 3, 1
    with pytest.raises(ValueError, match=r"config.mesh: .*needs 3 devices but 8 .*cpu:8 has 8 chips"):
        validate_common(c)
    c = tiny_config(tmp_path, "cpu:8", "h100")
    c.dry_run = False
    with pytest.raises(ValueError, match="add --config.dry_run=True"):
        validate_common(c)


def test_command_line_names_the_mistake_without_a_traceback(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = subprocess.run([sys.executable, "-m", "bolt_jax.main", "--config", "configs/train_synthetic.py",
                        "--config.dry_run=True", "--config.aot_topology=v5e:64x64", f"--config.run_dir={tmp_path}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert lines == ["error: config.aot_topology=v5e:64x64 has 4096 chips; ahead-of-time compiles go up to 256"]


# ------------------------------------------------------------------------------------------------------ compiles
def check_report(report, chips: int):
    names = [f["name"] for f in report["functions"]]
    assert names == ["train_step", "prefill", "decode", "score"] and report["chips"] == chips
    for f in report["functions"]:
        assert f["fits"] is (None if report["platform"] == "cpu" else True), f  # CPU buffers: not judged
        assert f["memory_bytes"]["total"] > 0
        r = f["roofline"]
        assert 0 < r["step_s_min"] <= r["step_s_max"] and r["tokens_per_s_max"] > 0
        assert r["step_s_min"] == max(r["compute_s"], r["memory_s"], r["comm_s"])
    train = report["functions"][0]
    # fsdp over every chip: parameters gathered, gradients reduced
    assert train["ring_bytes_per_chip"] > 0 and any(v["bytes"] > 0 for v in train["collectives"].values())
    assert train["loops_of_unknown_trip_count"] == 0
    decode = report["functions"][2]  # its loop stops when no slot is live: taken as a whole chunk of 16 steps
    assert decode["loops_of_unknown_trip_count"] == 1 and decode["unknown_loops_taken_as"] == 16


@needs_libtpu
def test_tiny_model_compiles_for_a_v5e_slice(tmp_path, capsys):
    """The train step, prefill, decode and scorer compiled by the TPU compiler for 4 v5e chips, nothing allocated; the
    splash attention kernel is the Mosaic kernel there (not the interpreter this machine would otherwise pick)."""
    from bolt_jax.train.loop import dry_run
    c = tiny_config(tmp_path, "v5e:2x2")
    before = {k: os.environ.get(k) for k in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE")}
    report = dry_run(c)
    check_report(report, chips=4)
    # libtpu's settings last only while it loads: a TPU_WORKER_HOSTNAMES left behind reads as a TPU pod to
    # bolt_jax.runtime.distributed, here and in every process started after
    assert {k: os.environ.get(k) for k in before} == before
    assert report["chip_figures"]["peak_bf16_flops"] == 197e12 and report["mesh"]["fsdp"] == 4
    assert "decode attention pallas_tpu (its reads counted as every cache position" in report["functions"][2]["what"]
    out = capsys.readouterr().out
    assert "ahead-of-time compile for v5e:2x2: 4 TPU v5 lite chips" in out and "not a measurement" in out
    assert "attention=pallas_tpu" in out and "largest HBM movers per step: " in out
    assert json.loads((tmp_path / "aot.json").read_text())["functions"][0]["name"] == "train_step"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tiny_model_compiles_for_cpu8_standing_in_for_h100s(tmp_path):
    from bolt_jax.train.loop import dry_run
    c = tiny_config(tmp_path, "cpu:8", "h100")
    report = dry_run(c)
    check_report(report, chips=8)
    assert report["functions"][2]["what"].endswith("; decode attention xla")
    assert report["chip"] == "h100" and report["mesh"]["fsdp"] == 8


def gpu_config(tmp_path, topology: str):
    """The tiny model in bf16 with heads of 64 (what the Mosaic GPU attention takes), for GPUs."""
    c = tiny_config(tmp_path, topology)
    c.model.compute_dtype, c.model.hidden_size, c.model.num_attention_heads = "bfloat16", 256, 4
    return c


@needs_cuda_plugin
def test_tiny_model_compiles_for_h100s_in_two_hosts(tmp_path, capsys, caplog, monkeypatch):
    """The train step, prefill, decode and scorer compiled by XLA's GPU compiler for 2 hosts of 4 H100s on this CPU
    machine, nothing allocated: our GPU kernels, not the interpreter this machine would otherwise pick (packed
    documents: the Mosaic GPU attention on Hopper; decode: the Triton-lowered kernel), memory judged against the
    H100's, and fsdp's rings over all 8 GPUs, which cross the hosts, at a GPU's share of the network (50 GB/s), not
    NVLink's 450."""
    from bolt_jax import kernels
    from bolt_jax.train.loop import dry_run
    monkeypatch.setattr(kernels, "_announced", set())  # `auto` logs each choice once a process: not an earlier test's
    caplog.set_level("INFO", logger="bolt_jax.kernels")
    report = dry_run(gpu_config(tmp_path, "h100:2x4"))
    check_report(report, chips=8)
    assert report["platform"] == "gpu" and report["chip_figures"]["peak_bf16_flops"] == 989e12
    assert "attention impl 'auto' on gpu with packed documents -> mosaic_gpu" in caplog.text
    assert "decode attention pallas_gpu" in report["functions"][2]["what"]
    train = report["functions"][0]
    assert report["mesh"]["fsdp"] == 8 and report["chip_figures"]["network_bytes_per_s_one_way"] == 50e9
    assert train["network_ring_bytes_per_chip"] == train["ring_bytes_per_chip"] > 0
    assert train["roofline"]["comm_s"] == pytest.approx(train["ring_bytes_per_chip"] / 50e9)
    out = capsys.readouterr().out
    assert "ahead-of-time compile for h100:2x4: 8 NVIDIA H100 80GB HBM3 GPUs (2 hosts of 4)" in out
    assert "compiled by XLA's GPU compiler without a GPU" in out and "cross hosts" in out


def load_config(name: str, variant: str = ""):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


@needs_cuda_plugin
def test_em_dry_run_compiles_its_stages_for_an_h100_and_touches_no_file(tmp_path, capsys):
    """configs/smol_gsm8k.py with --config.dry_run and an H100 target (its model shrunk to 2 layers of 256): the
    M-step's train step with the E-step's prefill, decode and scorer at the E-step's shape, and the warmstart's train
    step at its own batch; the GGUF, the GSM8K files and the run directory are never touched."""
    from bolt_jax import workflows
    c = load_config("smol_gsm8k")
    c.model.update(num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=1024)
    c.run_dir, c.smol.gsm8k_dir, c.smol.gguf = str(tmp_path / "run"), str(tmp_path / "none"), str(tmp_path / "x")
    c.dry_run, c.aot_topology, c.aot_report = True, "h100:1", str(tmp_path / "aot.json")
    workflows.validate(c, check_files=True)  # nothing it would read has to exist
    reports = workflows.run(c)
    assert list(reports) == ["mstep", "warmstart"] and not os.path.exists(tmp_path / "run")
    assert json.loads((tmp_path / "aot.json").read_text()) == json.loads(json.dumps(reports))
    mstep, warm = reports["mstep"], reports["warmstart"]
    assert [f["name"] for f in mstep["functions"]] == ["train_step", "prefill", "decode", "score"]
    assert [f["name"] for f in warm["functions"]] == ["train_step"]
    assert "global batch 32 x 512" in mstep["functions"][0]["what"] and "16 x 512" in warm["functions"][0]["what"]
    assert "256 slots, cache 768 positions (512 prompt + 256 new)" in mstep["functions"][2]["what"]
    assert "64 rows of 1024 joint tokens" in mstep["functions"][3]["what"]  # estep.max_tokens=1024
    assert all(f["fits"] for r in reports.values() for f in r["functions"])
    out = capsys.readouterr().out
    assert "== M-step (and the raw baselines): global batch 32 x 512" in out and "== warmstart" in out


def test_a_gpu_program_above_the_allocators_share_is_flagged(monkeypatch):
    """jax's allocator takes 75% of a GPU by default: a program between that and the device's memory fits the chip
    but fails in a run, and the report says so (and honours XLA_PYTHON_CLIENT_MEM_FRACTION where it is set)."""
    from bolt_jax.aot.report import _fits, _function_lines
    h100 = parse_target("h100:1")
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    memory = {"total": 61.44 * 2**30, "arguments": 0.0, "outputs": 0.0, "aliased": 0.0, "temps": 0.0}
    verdict = _fits(memory, h100)
    assert verdict == {"fits": True, "allocator_fraction": 0.75, "fits_allocator": False}
    lines = _function_lines({"name": "train_step", "what": "", "compile_s": 1.0, "memory_bytes": memory, **verdict},
                            h100)
    assert any(line.startswith("  ABOVE the 75% of the device that jax's allocator takes") for line in lines)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    assert _fits(memory, h100)["fits_allocator"] is True
    assert "fits_allocator" not in _fits(memory, parse_target("v5p:2x2x1"))  # TPUs: no such share


def test_dry_run_is_refused_by_a_workflow_without_one(tmp_path):
    from bolt_jax import workflows
    from bolt_jax.config import add_dry_run, base_config
    c = add_dry_run(base_config())
    c.workflow, c.dry_run = "estep", True
    with pytest.raises(ValueError, match="the estep workflow has no compile-only dry run"):
        workflows.validate(c)


def _h100_compiled(fn, *shapes):
    """fn jitted and compiled for one H100 on this CPU machine (jax's Compiled)."""
    import jax

    from bolt_jax.aot.topology import devices
    mesh = jax.sharding.Mesh(devices(parse_target("h100:1")), ("x",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    args = [jax.ShapeDtypeStruct(shape, dtype, sharding=replicated) for shape, dtype in shapes]
    with jax.set_mesh(mesh):
        return jax.jit(fn).lower(*args).compile()


def _h100_compile(fn, *shapes):
    """fn compiled for one H100 on this CPU machine: (its HLO text, its serialized executable)."""
    from jax.experimental.serialize_executable import serialize
    compiled = _h100_compiled(fn, *shapes)
    return compiled.as_text(), serialize(compiled)[0]


@needs_cuda_plugin
def test_cudnn_attention_for_an_h100_compiles_or_auto_compiles_its_fallback(caplog, monkeypatch):
    """cuDNN's flash attention, forward and backward, as the custom call an H100 runs, where this jax can emit it
    without the GPU (jax 0.12.0 with cuDNN's library; the train step's memory then equals the H100's measured peak:
    bench/gpu_aot_memory.py). Where it cannot (jax 0.12.1's XLA wants a cuDNN handle; or no library) the probe says
    so, and `auto` compiles its fallback instead of failing the dry run, saying so."""
    import logging

    import jax
    import jax.numpy as jnp

    from bolt_jax import kernels
    from bolt_jax.aot.topology import cudnn_available, cudnn_compiles
    from bolt_jax.kernels.cudnn import cudnn_attention
    from bolt_jax.runtime.chips import CHIPS
    bf16 = jnp.bfloat16
    shapes = (((2, 256, 4, 64), bf16), ((2, 256, 2, 64), bf16), ((2, 256, 2, 64), bf16))
    if cudnn_compiles(CHIPS["h100"]):
        def loss(q, k, v):
            return cudnn_attention(q, k, v, causal=True).astype(jnp.float32).sum()

        text, _ = _h100_compile(jax.grad(loss, argnums=(0, 1, 2)), *shapes)
        assert "__cudnn$fmhaSoftmax" in text and "__cudnn$fmhaSoftmaxBackward" in text
        return
    newer = tuple(map(int, jax.__version__.split(".")[:3])) >= (0, 12, 1)
    assert newer or not cudnn_available(), "the probe fails where jax 0.12.0 compiles cuDNN's attention"
    monkeypatch.setattr(kernels, "_announced", set())  # the fallback is said once a process: not an earlier test's
    with caplog.at_level(logging.WARNING, logger="bolt_jax.kernels"):
        text, _ = _h100_compile(lambda q, k, v: kernels.attention(q, k, v, causal=True), *shapes)
    assert "__cudnn$fmha" not in text
    assert any("cuDNN attention refused these inputs" in r.getMessage() for r in caplog.records)


@needs_cuda_plugin
def test_swiglu_backward_holds_no_more_than_autodiffs_on_an_h100():
    """Three MLP blocks at TinyLlama's width and a micro-batch of 16 x 2048 tokens, compiled with their backward for
    an H100: the SwiGLU's own backward needs no more temporary memory than autodiff's. (Under jax 0.12.1 it needs
    less: autodiff's forward writes silu(gate) out for the backward, model.llama.swiglu.)"""
    import jax
    import jax.numpy as jnp

    from bolt_jax.model.llama import swiglu
    layers, tokens, hidden, width, bf16 = 3, 16 * 2048, 2048, 5632, jnp.bfloat16

    def step(act):
        def loss(x, gate_w, up_w, down_w):
            for i in range(layers):
                x = x + act(x @ gate_w[i], x @ up_w[i]) @ down_w[i]
            return x.astype(jnp.float32).sum()
        return jax.grad(loss, argnums=(1, 2, 3))

    shapes = (((tokens, hidden), bf16), ((layers, hidden, width), bf16), ((layers, hidden, width), bf16),
              ((layers, width, hidden), bf16))
    temps = {}
    for name, act in (("autodiff", lambda g, u: jax.nn.silu(g) * u), ("swiglu", swiglu)):
        temps[name] = _h100_compiled(step(act), *shapes).memory_analysis().temp_size_in_bytes
    assert 0 < temps["swiglu"] <= temps["autodiff"], temps


@needs_cuda_plugin
def test_head_loss_moves_less_than_autodiff_on_an_h100():
    """The head + NLL with its own backward (bolt_jax.model.head_loss) against autodiff of the same chunk
    rematerialised (the code it replaced), compiled with the backward for an H100 at SmolLM2's head (576 x 49156) and
    2048 tokens: fewer temporaries, and a quarter less HBM traffic by the byte model (no second max and sum over the
    fp32 logits, the logit cotangent written once in bf16). Measured: 0.75 -> 0.56 GiB, 3.20 -> 2.40 GB."""
    import jax
    import jax.numpy as jnp

    from bolt_jax.aot.hlo import analyze
    from bolt_jax.model.head_loss import token_nll
    from bolt_jax.model.llama import head_logits

    def autodiff_nll(h, kernel, targets):
        @jax.checkpoint
        def one(h, targets):
            logits = head_logits(h, kernel)
            return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
        return one(h, targets)

    def grads(nll):
        return jax.grad(lambda h, k, t, w: (nll(h, k, t) * w).sum(), argnums=(0, 1))

    b, s, d, v, bf16 = 4, 512, 576, 49156, jnp.bfloat16
    shapes = (((b, s, d), bf16), ((d, v), bf16), ((b, s), jnp.int32), ((b, s), jnp.float32))
    temps, hbm = {}, {}
    for name, nll in (("autodiff", autodiff_nll), ("head_loss", lambda h, k, t: token_nll(h, k, t, 0))):
        compiled = _h100_compiled(grads(nll), *shapes)
        temps[name] = compiled.memory_analysis().temp_size_in_bytes
        hbm[name] = analyze(compiled.as_text(), 1).hbm_bytes
    assert 0 < temps["head_loss"] <= temps["autodiff"], temps
    assert hbm["head_loss"] <= 0.8 * hbm["autodiff"], hbm


def _single_pass_update(tx):
    """The update as the train step applied it before its finiteness got its own pass: the flag read from the
    updated state, then a select between it and the old one."""
    import jax
    import jax.numpy as jnp
    import optax

    from bolt_jax.train.step import all_finite

    def update(grads, opt_state, params):
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = all_finite((new_params, new_opt))
        keep = lambda n, o: jax.tree.map(lambda a, b: jnp.where(finite, a, b), n, o)  # noqa: E731
        return keep(new_params, params), keep(new_opt, opt_state), finite
    return update


@pytest.mark.parametrize("lr", [1e-4, 1e38])  # a finite update, and one whose product with the lr overflows
def test_update_with_its_own_finiteness_pass_equals_the_single_pass_one(lr):
    import jax
    import jax.numpy as jnp
    import optax

    from bolt_jax.train.step import apply_update_if_finite
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=10.0))
    keys = jax.random.split(jax.random.key(0), 2)
    params = {"w": jax.random.normal(keys[0], (8, 16)), "b": jnp.ones((16,))}
    grads = jax.tree.map(lambda p: jax.random.normal(keys[1], p.shape), params)
    opt_state = tx.init(params)
    want = jax.jit(_single_pass_update(tx))(grads, opt_state, params)
    p, o, update_finite, finite = jax.jit(lambda g, s, p: apply_update_if_finite(tx, g, s, p, jnp.array(True)))(
        grads, opt_state, params)
    assert bool(finite) == bool(update_finite) == bool(want[2]) == (lr < 1)
    # two programs, so XLA may fuse the arithmetic differently (within an ulp); a kept state is the old one exactly
    for got, ref in zip(jax.tree.leaves((p, o)), jax.tree.leaves(want[:2])):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)
    if lr > 1:
        for got, old in zip(jax.tree.leaves((p, o)), jax.tree.leaves((params, opt_state))):
            np.testing.assert_array_equal(got, old)


@needs_cuda_plugin
def test_update_with_its_own_finiteness_pass_moves_less_on_an_h100():
    """AdamW over 31.5M fp32 parameters, compiled for an H100: the finiteness computed in its own pass (so that the
    applied update fuses with the keep-the-old-state select) moves a fifth less than the flag read from the updated
    state (1.89 -> 1.51 GB by the byte model). Guards the optimization barrier: were XLA to merge the two passes
    again, the bytes would be the single pass's."""
    import jax
    import jax.numpy as jnp
    import optax

    from bolt_jax.aot.hlo import analyze
    from bolt_jax.train.step import apply_update_if_finite
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.01))
    params = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in
              {"up": (4, 1024, 2816), "down": (4, 2816, 1024), "embed": (8192, 1024)}.items()}
    leaves, tree = jax.tree.flatten((params, jax.eval_shape(tx.init, params), params))

    def compiled_bytes(update):
        def on_leaves(*xs):
            grads, opt_state, p = jax.tree.unflatten(tree, xs)
            return update(grads, opt_state, p)
        return analyze(_h100_compiled(on_leaves, *[(x.shape, x.dtype) for x in leaves]).as_text(), 1).hbm_bytes

    single = compiled_bytes(_single_pass_update(tx))
    two = compiled_bytes(lambda g, s, p: apply_update_if_finite(tx, g, s, p, jnp.array(True)))
    assert two <= 0.85 * single, (two, single)


@needs_cuda_plugin
def test_gpu_kernels_compile_to_sm90_cubins_without_a_gpu():
    """The Triton-lowered kernels go through XLA and the plugin's PTX compiler to a cubin for compute capability 9.0:
    the decode kernel (several queries per row, with the log-sum-exp) and the flash attention's forward and
    backward. The Mosaic GPU kernel is a custom call whose cubin is built when it first runs (on the GPU): here it is
    lowered and placed."""
    import jax
    import jax.numpy as jnp

    from bolt_jax.kernels.decode import pallas_decode_attention
    from bolt_jax.kernels.pallas_gpu import mosaic_gpu_attention, pallas_gpu_attention
    b, t, h, k, d, bf16, i32 = 4, 512, 8, 2, 64, jnp.bfloat16, jnp.int32

    def decode(q, kc, vc, seg, lengths):
        return pallas_decode_attention(q, kc, vc, kv_segment_ids_BxT=seg, lengths_B=lengths, return_lse=True)

    text, exe = _h100_compile(decode, ((b, 4, h, d), bf16), ((b, t, k * d), bf16), ((b, t, k * d), bf16),
                              ((b, t), i32), ((b,), i32))
    assert 'custom_call_target="__gpu$xla.gpu.triton"' in text and b"\x7fELF" in exe and b"sm_90" in exe
    qkv = [((2, 256, h, d), bf16), ((2, 256, k, d), bf16), ((2, 256, k, d), bf16)]
    grad = jax.grad(lambda q, kk, v: pallas_gpu_attention(q, kk, v).astype(jnp.float32).sum(), argnums=(0, 1, 2))
    text, exe = _h100_compile(grad, *qkv)
    assert text.count('custom_call_target="__gpu$xla.gpu.triton"') == 3 and b"\x7fELF" in exe  # fwd, dk/dv, dq
    text, _ = _h100_compile(lambda q, kk, v: mosaic_gpu_attention(q, kk, v), *qkv)
    assert 'custom_call_target="mosaic_gpu' in text


def test_estep_shape_follows_the_estep_settings(tmp_path):
    """Without an estep section: the E-step's defaults (64 chunks x K=4 -> 64 slots per batch device, prompts and
    thoughts of 1024); slots and prefill group rounded up to the mesh's batch devices."""
    import jax

    from bolt_jax import parallel
    from bolt_jax.config import llama_config
    c = tiny_config(tmp_path, "cpu:8", "h100")
    mesh = parallel.make_mesh({"fsdp": -1}, jax.devices()[:8])
    s = estep_settings(c, mesh, llama_config(c.model))
    # 64 slots per batch device (a quarter of a batch's 256 requests, as one device alone); groups of a batch's prompts
    assert (s.slots, s.prefill_group, s.prompt_len, s.max_new_tokens, s.cache_len) == (512, 64, 1024, 1024, 2048)
    from bolt_jax.estep.run import default_estep_config
    c.unlock()
    c.estep = default_estep_config()
    c.estep.chunks_per_batch, c.estep.num_samples, c.estep.max_prompt_len = 3, 2, 100
    s = estep_settings(c, mesh, llama_config(c.model))
    assert (s.slots, s.prefill_group, s.prompt_len) == (64, 8, 128)  # at least 8 slots per device


def test_compile_time_oom_becomes_one_line():
    from bolt_jax.aot.compiler import does_not_fit
    error = RuntimeError("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total memory "
                         "required for HLO temporaries (32.00G) exceeds available HBM (15.75G). HLO module: jit_f.\n"
                         "See https://openxla.org/xla/errors/error_1000 for more details.")
    assert does_not_fit(error) == ("Ran out of memory on HBM, the total memory required for HLO temporaries "
                                    "(32.00G) exceeds available HBM (15.75G)")
    assert does_not_fit(ValueError("Mosaic kernels cannot be automatically partitioned")) is None


def test_two_processes_compile_for_a_tpu_at_once():
    """libtpu's one-process lockfile guards a real TPU only: a compile beside another process that holds libtpu
    (two dry runs, or this suite beside one) works, where it failed with "libtpu multi-process lockfile"."""
    import subprocess
    import sys
    hold = ("import time; from bolt_jax.aot.topology import devices, parse_target; "
            "devices(parse_target('v5e:2x2')); print('held', flush=True); time.sleep(20)")
    probe = "from bolt_jax.aot.topology import devices, parse_target; print(len(devices(parse_target('v5e:2x2'))))"
    env = {k: v for k, v in os.environ.items() if k != "ALLOW_MULTIPLE_LIBTPU_LOAD"}
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0 and r.stdout.strip().endswith("4"), r.stderr[-2000:]
    finally:
        holder.kill()


def _tpu_decode_chunk(kv_heads: int, decode_impl: str, layout: str | None, prompt_len: int = 512):
    """A 2-layer model with heads of 64 compiled for v5e:2x2 with the real TPU compiler: the decode chunk in the given
    slot-state layout (None: as `compile_decode` keeps it). Returns (KV cache buffers copied outside the decode loop,
    HBM bytes per chunk per chip, the program's text)."""
    import jax

    from bolt_jax import parallel
    from bolt_jax.aot.report import abstract_sampler_model
    from bolt_jax.aot.topology import devices
    from bolt_jax.model import preset
    from bolt_jax.sampling import engine, slots

    mesh = parallel.make_mesh({"data": 4, "fsdp": 1, "tensor": 1}, devices(parse_target("v5e:2x2")))
    cfg = preset("tiny", compute_dtype="bfloat16", hidden_size=2 * kv_heads * 64, num_attention_heads=2 * kv_heads,
                 num_key_value_heads=kv_heads, num_hidden_layers=2, decode_impl=decode_impl)
    graphdef, params = abstract_sampler_model(cfg, mesh)
    s = engine.make_settings(n=4, slots=256, num_prompts=64, prompt_len=prompt_len, max_new_tokens=prompt_len,
                             temperature=1.0, top_k=0, top_p=1.0, greedy=False, stop_token_ids=(2,),
                             banned_token_ids=(), steps_per_sync=4, mesh=mesh)
    with jax.set_mesh(mesh):
        compiled = (slots.compile_decode(graphdef, params, s) if layout is None
                    else slots.lower_decode(graphdef, params, s, layout=layout).compile())
    text = compiled.as_text()
    entry = next(c for c in hlo.parse_module(text).values() if c.entry)  # outside the decode loop
    per_device = f"[64,{2 * prompt_len},{kv_heads * 64}]"  # one layer's K or V cache on one chip
    copies = sum(inst.opcode == "copy" and per_device in inst.shape for inst in entry.instructions)
    return copies, hlo.analyze(text, 4, unknown_trips=s.steps_per_sync).hbm_bytes, text


@needs_libtpu
def test_decode_caches_fill_the_lanes_and_the_kept_layout_copies_none():
    """The real TPU compiler (v5e:2x2). Caches hold a position's KV heads side by side ([S, T, K * D]): with 4 heads
    of 64 (TinyLlama's) they fill the 128-lane tiles, and the decode chunk in the default layout copies no cache
    buffer. With 3 heads of 64 (SmolLM2's, 192 lanes) the default layout pads them and copies every buffer before the
    loop and back after it; `compile_decode` (the engine's and the AOT report's decode) compiles that and the
    compiler's own layout and keeps the latter here: no copies, fewer bytes. (bench/decode_layout.py: every model,
    and a shape where it keeps the default.)"""
    assert _tpu_decode_chunk(4, "xla", "default")[0] == 0
    default = _tpu_decode_chunk(3, "xla", "default", prompt_len=1024)
    kept = _tpu_decode_chunk(3, "xla", None, prompt_len=1024)
    assert default[0] >= 2 * 2 * 2, default[:2]  # k and v of both layers, in and out
    assert kept[0] == 0 and kept[1] < 0.95 * default[1], (kept[:2], default[:2])


@needs_libtpu
def test_tpu_decode_kernel_compiles_into_the_decode_chunk():
    """`decode_impl="pallas_tpu"` (what `auto` picks on a TPU): the decode chunk calls the Mosaic kernel once per layer
    (the real Mosaic compiler accepted it) and, counted as reading its whole cache (it reads only the written blocks),
    moves no more HBM bytes than the XLA attention."""
    copies, kernel_bytes, text = _tpu_decode_chunk(4, "pallas_tpu", None)
    assert text.count('custom_call_target="tpu_custom_call"') == 2 and copies == 0
    assert kernel_bytes <= 1.02 * _tpu_decode_chunk(4, "xla", None)[1]


@needs_libtpu
def test_decode_slots_that_fit_no_layout_fail_in_one_line():
    """More decode slots than a v5e chip holds in either layout: `DoesNotFit` (a MemoryError), one line naming the
    shape, the compiler's words and what to lower; bolt_jax.main reports it without a traceback."""
    import jax

    from bolt_jax import parallel
    from bolt_jax.aot.compiler import DoesNotFit
    from bolt_jax.aot.report import abstract_sampler_model
    from bolt_jax.aot.topology import devices
    from bolt_jax.main import _is_user_error
    from bolt_jax.model import preset
    from bolt_jax.sampling import engine, slots

    mesh = parallel.make_mesh({"data": 4, "fsdp": 1, "tensor": 1}, devices(parse_target("v5e:2x2")))
    cfg = preset("tiny", compute_dtype="bfloat16", hidden_size=512, num_attention_heads=8,
                 num_key_value_heads=4, max_position_embeddings=4096)
    graphdef, params = abstract_sampler_model(cfg, mesh)
    s = engine.make_settings(n=4, slots=4 * 2048, num_prompts=64, prompt_len=2048, max_new_tokens=2048,
                             temperature=1.0, top_k=0, top_p=1.0, greedy=False, stop_token_ids=(2,),
                             banned_token_ids=(), steps_per_sync=4, mesh=mesh)  # 17 GB of KV cache per chip
    with jax.set_mesh(mesh), pytest.raises(DoesNotFit) as e:
        slots.compile_decode(graphdef, params, s)
    assert "\n" not in str(e.value) and _is_user_error(e.value)
    assert str(e.value).startswith("the decode chunk for 8192 slots x 4096 positions does not fit on the tpu (")
    assert "lower the decode slots, max_new_tokens or the prompt length" in str(e.value)
