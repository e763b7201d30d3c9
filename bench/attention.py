"""Attention benchmark: each implementation, forward and forward+backward, at TinyLlama's shape; one table.

    python bench/attention.py                      # B=8, S=2048, H=32, K=4, D=64, bf16, causal, 4 documents per row
    python bench/attention.py --headline           # our kernel on plain causal rows, and packed rows (equal and ragged
                                                   # documents) against the fair baselines on the same problem
    python bench/attention.py --sweep              # also the Pallas GPU kernel over tile sizes / warps / stages
    python bench/attention.py --mosaic_sweep       # also the Mosaic GPU (Hopper) forward over block_kv / stages
    python bench/attention.py --smoke [--headline] # tiny shapes on CPU (Pallas in interpret mode; cuDNN skipped)

Every implementation is first checked against the XLA reference computed in fp32 on the same bf16 inputs
(relative error of the output and of dq, dk, dv, compared in the packed layout). Timing: each sample is `--inner`
calls back to back then one wait; min / median / max over `--runs` samples after warm-up.

TFLOP/s count the work actually done: QK^T and PV are 4 L^2 H D FLOPs per sequence of L tokens dense, half of it
causal, summed over the documents of a packed row (only within-document causal work; a plain causal row is one
document); forward+backward counts 3.5x the forward (the backward is 2.5x: FlashAttention-2's count). The train
step's MFU uses another convention (LlamaConfig.flops_per_token).

Fair baselines for packed rows (`--headline`): "attention 3.0x cuDNN with packed documents" compared our kernel with
cuDNN's dense-mask path, which computes every other document's block too. The same packed problem is also given to
cuDNN in the layouts it is fast in, timed on inputs already in that layout (the relayout is not charged to it):
`cudnn_per_doc`, one sequence per document (equal lengths: [B x docs, S / docs] plain causal; ragged: padded to the
longest document, with `query_seq_lengths` / `key_value_seq_lengths`, cuDNN's padding-causal mask), and
`cudnn_thd`, cuDNN's packed (THD) layout on the rows as they are, through `q_offsets` / `kv_offsets` of
`jax._src.cudnn.fused_attention_stablehlo.dot_product_attention` (private in jax 0.12: `jax.nn.dot_product_attention`
exposes only the sequence lengths; Hopper or newer; jax 0.12.0.1 scales the kv offsets by the KV heads, the GQA fix
of jax PR 39521: without it the results are silently wrong). A baseline whose error exceeds `--max_err` is reported
and left out. Two packed problems: `--docs` equal documents per row, and ragged ones (lengths uniform in [S/32, S/2],
not tile multiples). `packed_vs_fair_baseline` = our fwd+bwd time / the best valid baseline's on the same problem,
run i against run i; the headline figure is the worse of the two problems. On a CPU the cuDNN rows are skipped with
the reason printed, and the baselines are XLA's (`xla_mask`, `xla_per_doc`), labelled: smoke figures only.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from common import Samples, header, pairwise, run_info, smoke_defaults, time_samples, write_json

MAX_REL_ERR = 2e-2  # bf16 kernels measure ~3.3e-3 against the fp32 oracle; well above that is a wrong result


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# ----------------------------------------------------------------------------------------------------- problems
@dataclasses.dataclass(frozen=True)
class Packed:
    """Rows of documents packed back to back (each row's lengths sum to `seq`); a plain causal row is one document."""

    name: str
    seq: int
    lengths: tuple[tuple[int, ...], ...]  # per row

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def all_lengths(self) -> list[int]:
        return [n for row in self.lengths for n in row]

    def segment_ids(self) -> np.ndarray:
        """[B, S] int32, documents numbered from 1 in each row."""
        return np.stack([np.repeat(np.arange(1, len(row) + 1), row) for row in self.lengths]).astype(np.int32)

    def fwd_flops(self, heads: int, head_dim: int) -> float:
        """Within-document causal QK^T and PV of the forward: sum over documents of 4 L^2 H D / 2."""
        return sum(4 * n * n * heads * head_dim / 2 for n in self.all_lengths)

    def describe(self) -> str:
        lens = self.all_lengths
        return (f"{self.name}: {self.batch} rows of {self.seq}, {len(lens)} documents of {min(lens)}-{max(lens)} "
                f"tokens (mean {np.mean(lens):.0f})")


def causal_rows(batch: int, seq: int) -> Packed:
    return Packed("causal", seq, ((seq,),) * batch)


def equal_docs(batch: int, seq: int, docs: int) -> Packed:
    if seq % docs:
        raise ValueError(f"--docs {docs} must divide --seq {seq}")
    return Packed(f"packed_equal_{docs}", seq, ((seq // docs,) * docs,) * batch)


def ragged_docs(batch: int, seq: int, *, min_len: int, max_len: int, seed: int = 0) -> Packed:
    """Document lengths drawn uniformly from [min_len, max_len] until the row is full; the last takes the rest
    (merged into the one before when shorter than min_len). Not tile multiples, as real documents."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch):
        row: list[int] = []
        while sum(row) < seq:
            row.append(min(int(rng.integers(min_len, max_len + 1)), seq - sum(row)))
        if len(row) > 1 and row[-1] < min_len:
            last = row.pop()
            row[-1] += last
        rows.append(tuple(row))
    return Packed("packed_ragged", seq, tuple(rows))


def thd_offsets(p: Packed) -> tuple[np.ndarray, np.ndarray]:
    """cuDNN's packed layout: per row the document lengths [B, M] and start offsets [B, M + 1] (the last entry is
    the end of the last document), -1 past a row's documents."""
    m = max(len(row) for row in p.lengths)
    seqlen = np.full((p.batch, m), -1, np.int32)
    offsets = np.full((p.batch, m + 1), -1, np.int32)
    for b, row in enumerate(p.lengths):
        seqlen[b, :len(row)] = row
        offsets[b, :len(row) + 1] = np.concatenate([[0], np.cumsum(row)])
    return seqlen, offsets


def doc_index(p: Packed, multiple: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One sequence per document, padded to the longest (rounded up to `multiple`): gather [N, L] indices into the
    flattened B*S tokens (0 at padding), valid [N, L], scatter [B*S] indices back into the flattened N*L, and the
    lengths [N]."""
    lens = p.all_lengths
    longest = -(-max(lens) // multiple) * multiple
    gather = np.zeros((len(lens), longest), np.int32)
    valid = np.zeros((len(lens), longest), bool)
    scatter = np.zeros(p.batch * p.seq, np.int32)
    n = 0
    for b, row in enumerate(p.lengths):
        start = b * p.seq
        for length in row:
            gather[n, :length] = start + np.arange(length)
            valid[n, :length] = True
            scatter[start:start + length] = n * longest + np.arange(length)
            start, n = start + length, n + 1
    return gather, valid, scatter, np.asarray(lens, np.int32)


# --------------------------------------------------------------------------------------------------- candidates
@dataclasses.dataclass(frozen=True)
class Candidate:
    """One implementation on one problem: `prepare` lays the packed inputs out as it wants them (untimed),
    `attend(*args)` is what is timed, `unpack` brings an output or q/k/v gradient back to the packed layout."""

    name: str
    attend: Callable
    prepare: Callable
    unpack: Callable = lambda x: x
    baseline: bool = False
    skip: str = ""  # why it cannot run here


def packed_candidate(name: str, p: Packed, impl: str, blocks=None, *, baseline: bool = False) -> Candidate:
    """Our dispatch (`bolt_jax.kernels.attention`) on the packed rows with segment ids; one-document problems run
    without segment ids (plain causal)."""
    from bolt_jax import kernels
    from bolt_jax.kernels.pallas_gpu import pallas_gpu_attention
    seg = jnp.asarray(p.segment_ids()) if p.name != "causal" else None

    def attend(q, k, v):
        if blocks is not None:
            return pallas_gpu_attention(q, k, v, q_segment_ids_BxS=seg, kv_segment_ids_BxT=seg, blocks=blocks)
        return kernels.attention(q, k, v, segment_ids=seg, impl=impl)

    gpu_only = impl in ("cudnn", "mosaic_gpu", "tokamax") and jax.default_backend() != "gpu"
    return Candidate(name, attend, lambda q, k, v, w: ((q, k, v), w), baseline=baseline,
                     skip=f"{impl} needs an NVIDIA GPU" if gpu_only else "")


def per_doc_candidate(p: Packed, implementation: str) -> Candidate:
    """`jax.nn.dot_product_attention` on one sequence per document (padded, with sequence lengths, when ragged)."""
    gather, valid, scatter, lens = doc_index(p)
    equal = len(set(p.all_lengths)) == 1 and gather.shape[1] == p.all_lengths[0]
    n, longest = gather.shape

    def to_docs(x):
        return x.reshape(-1, *x.shape[2:])[gather]

    def prepare(q, k, v, w):
        w_doc = to_docs(w) * jnp.asarray(valid)[..., None, None]
        return (to_docs(q), to_docs(k), to_docs(v), jnp.asarray(lens)), w_doc

    def attend(q, k, v, lengths):
        kw = {} if equal else dict(query_seq_lengths=lengths, key_value_seq_lengths=lengths)
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation, **kw)

    def unpack(x):
        return x.reshape(n * longest, *x.shape[2:])[scatter].reshape(p.batch, p.seq, *x.shape[2:])

    skip = "cuDNN needs an NVIDIA GPU" if implementation == "cudnn" and jax.default_backend() != "gpu" else ""
    return Candidate(f"{implementation}_per_doc", attend, prepare, unpack, baseline=True, skip=skip)


def thd_candidate(p: Packed) -> Candidate:
    """cuDNN's packed (THD) layout: the rows as they are, each document found by its offset and length."""
    seqlen, offsets = (jnp.asarray(x) for x in thd_offsets(p))

    def attend(q, k, v, seqlen, offsets):
        from jax._src.cudnn.fused_attention_stablehlo import MaskType, dot_product_attention
        return dot_product_attention(q, k, v, q_seqlen=seqlen, kv_seqlen=seqlen, q_offsets=offsets,
                                     kv_offsets=offsets, scale=q.shape[-1] ** -0.5,
                                     mask_type=MaskType.PADDING_CAUSAL)

    gpu = jax.default_backend() == "gpu"
    hopper = gpu and float(getattr(jax.devices()[0], "compute_capability", "0")) >= 9.0
    skip = "" if hopper else ("cuDNN needs an NVIDIA GPU" if not gpu else "cuDNN's packed layout needs Hopper or newer")
    return Candidate("cudnn_thd", attend, lambda q, k, v, w: ((q, k, v, seqlen, offsets), w), baseline=True,
                     skip=skip)


def fair_baselines(p: Packed) -> list[Candidate]:
    """The baselines of a packed problem: cuDNN with the dense document mask (the old comparison), one sequence per
    document, and the THD layout; on a CPU, XLA's dense mask and per-document paths instead (labelled smoke)."""
    if jax.default_backend() != "gpu":
        cpu = [packed_candidate("xla_mask", p, "xla", baseline=True), per_doc_candidate(p, "xla")]
        return cpu + [packed_candidate("cudnn_mask", p, "cudnn", baseline=True), per_doc_candidate(p, "cudnn"),
                      thd_candidate(p)]
    return [packed_candidate("cudnn_mask", p, "cudnn", baseline=True), per_doc_candidate(p, "cudnn"),
            thd_candidate(p)]


def our_impl() -> str:
    """What `auto` runs on packed rows here, forced onto plain causal rows too: the kernel the targets speak of
    (Mosaic GPU on Hopper, the Triton-lowered Pallas kernel on other GPUs; XLA on a CPU, smoke only)."""
    from bolt_jax import kernels
    return kernels.resolve_impl("auto", documents=True)


# ------------------------------------------------------------------------------------------------------ measuring
@dataclasses.dataclass
class Inputs:
    q: jax.Array
    k: jax.Array
    v: jax.Array
    w: jax.Array  # cotangent weights: a loss sum(out * w) with a non-trivial dO, so a wrong dO indexing shows


def make_inputs(batch: int, seq: int, heads: int, kv_heads: int, head_dim: int, seed: int = 0) -> Inputs:
    rng = np.random.default_rng(seed)
    q_shape, kv_shape = (batch, seq, heads, head_dim), (batch, seq, kv_heads, head_dim)

    def normal(shape, dtype=jnp.bfloat16):
        return jnp.asarray(rng.normal(size=shape), dtype)

    return Inputs(normal(q_shape), normal(kv_shape), normal(kv_shape), normal(q_shape, jnp.float32))


def oracle(p: Packed, x: Inputs):
    """The XLA reference in fp32 on the same (bf16-rounded) inputs: output and (dq, dk, dv)."""
    from bolt_jax.kernels.xla import xla_attention
    seg = jnp.asarray(p.segment_ids())

    def ref(q, k, v):
        return xla_attention(q, k, v, q_segment_ids_BxS=seg, kv_segment_ids_BxT=seg)

    q, k, v = (t.astype(jnp.float32) for t in (x.q, x.k, x.v))
    grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(ref(q, k, v) * x.w), argnums=(0, 1, 2)))(q, k, v)
    return jax.jit(ref)(q, k, v), grads


def timed(fn: Callable, args: tuple, *, runs: int, inner: int) -> Samples:
    """Seconds per call: each sample is `inner` calls back to back, then one wait (a sub-ms kernel timed alone is
    mostly launch jitter); two warm-up samples."""
    per_sample = time_samples(lambda: jax.block_until_ready([fn(*args) for _ in range(inner)]), runs=runs, warmup=2)
    return per_sample.map(lambda t: t / inner)


def measure(c: Candidate, x: Inputs, ref, *, runs: int, inner: int) -> dict:
    """Checks `c` against the oracle, then times its forward and forward+backward. A refused shape or a failed
    compile is a row with its error, not the end of the run."""
    if c.skip:
        return {"name": c.name, "skipped": c.skip, "baseline": c.baseline}
    try:
        args, w = c.prepare(x.q, x.k, x.v, x.w)
        fwd = jax.jit(c.attend)
        bwd = jax.jit(jax.grad(lambda *a: jnp.sum(c.attend(*a[:-1]).astype(jnp.float32) * a[-1]),
                               argnums=(0, 1, 2)))  # a = (*args, w): the loss weights come last
        out, grads = fwd(*args), bwd(*args, w)
        err = max([rel_err(c.unpack(out), ref[0])] + [rel_err(c.unpack(g), r) for g, r in zip(grads, ref[1])])
        t_f = timed(fwd, args, runs=runs, inner=inner)
        t_b = timed(bwd, (*args, w), runs=runs, inner=inner)
    except Exception as e:  # noqa: BLE001
        return {"name": c.name, "error": (str(e).splitlines() or [type(e).__name__])[0][:120], "baseline": c.baseline}
    return {"name": c.name, "baseline": c.baseline, "max_rel_err": err, "fwd_s": t_f.summary(),
            "fwd_bwd_s": t_b.summary()}


def run_problem(p: Packed, candidates: list[Candidate], x: Inputs, *, runs: int, inner: int) -> list[dict]:
    ref = oracle(p, x)
    rows = []
    for c in candidates:
        rows.append(measure(c, x, ref, runs=runs, inner=inner))
        print(short(rows[-1]), flush=True)
    return rows


def short(row: dict) -> str:
    if "fwd_s" not in row:
        return f"{row['name']}: {'skipped: ' + row['skipped'] if 'skipped' in row else 'failed: ' + row['error']}"
    return (f"{row['name']}: err {row['max_rel_err']:.2e}, fwd {row['fwd_s']['median'] * 1e3:.3f} ms, "
            f"fwd+bwd {row['fwd_bwd_s']['median'] * 1e3:.3f} ms")


def samples(row: dict, key: str) -> Samples:
    return Samples.of(row[key]["samples"])


def print_table(p: Packed, rows: list[dict], heads: int, head_dim: int, *, versus: str = "") -> None:
    """min / median / max of fwd and fwd+bwd ms and TFLOP/s on the work done; `versus`: a row to compare f+b with."""
    flops = p.fwd_flops(heads, head_dim)
    base = next((samples(r, "fwd_bwd_s") for r in rows if r["name"] == versus and "fwd_s" in r), None)
    print(f"\n{p.describe()}; fwd FLOPs of the work done {flops:.3g}")
    print(f"{'impl':>26} {'max rel err':>11} {'fwd ms':>20} {'fwd TFLOP/s':>24} {'f+b ms':>20} {'f+b TFLOP/s':>24} "
          f"{(versus + ' f+b / this') if versus else '':>22}")
    for r in rows:
        if "fwd_s" not in r:
            print(f"{r['name']:>26}  {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed: ' + r['error']}")
            continue
        t_f, t_b = samples(r, "fwd_s"), samples(r, "fwd_bwd_s")
        rel = pairwise(base, t_b, lambda x, y: x / y).fmt(".2f") if base else "-"
        bad = "  WRONG: excluded" if r["baseline"] and r["max_rel_err"] > MAX_REL_ERR else ""
        print(f"{r['name']:>26} {r['max_rel_err']:11.2e} {t_f.fmt('.3f', 1e3):>20} "
              f"{t_f.map(lambda t: flops / t / 1e12).fmt('.4g'):>24} {t_b.fmt('.3f', 1e3):>20} "
              f"{t_b.map(lambda t: 3.5 * flops / t / 1e12).fmt('.4g'):>24} {rel:>22}{bad}")


# ------------------------------------------------------------------------------------------------------ headline
def versus_best_baseline(rows: list[dict], ours: str, max_err: float) -> dict | None:
    """Our fwd+bwd (and fwd) time over the best valid baseline's (by median), run i against run i."""
    mine = next((r for r in rows if r["name"] == ours and "fwd_s" in r), None)
    valid = [r for r in rows if r["baseline"] and "fwd_s" in r and r["max_rel_err"] <= max_err]
    if mine is None or not valid:
        return None
    best = min(valid, key=lambda r: r["fwd_bwd_s"]["median"])
    ratio = pairwise(samples(mine, "fwd_bwd_s"), samples(best, "fwd_bwd_s"), lambda a, b: a / b)
    ratio_fwd = pairwise(samples(mine, "fwd_s"), samples(best, "fwd_s"), lambda a, b: a / b)
    return {"best_baseline": best["name"], "ratio_fwd_bwd": ratio.summary(), "ratio_fwd": ratio_fwd.summary()}


def headline(a) -> dict:
    """Our kernel's plain-causal forward TFLOP/s, and our packed rows against the fair baselines."""
    ours = our_impl()
    x = make_inputs(a.batch, a.seq, a.heads, a.kv_heads, a.head_dim)
    causal = causal_rows(a.batch, a.seq)
    cands = [packed_candidate(f"{ours}_causal", causal, ours)]
    if jax.default_backend() == "gpu":
        cands.append(packed_candidate("cudnn_causal", causal, "cudnn"))
    out: dict = {"attention_impl": ours, "problems": {}}
    rows = run_problem(causal, cands, x, runs=a.runs, inner=a.inner)
    print_table(causal, rows, a.heads, a.head_dim)
    out["problems"]["causal"] = {"describe": causal.describe(), "rows": rows}
    if "fwd_s" in rows[0]:
        out["fwd_tflops_causal"] = samples(rows[0], "fwd_s").map(
            lambda t: causal.fwd_flops(a.heads, a.head_dim) / t / 1e12).summary()
    worst = None
    for p in (equal_docs(a.batch, a.seq, a.docs), ragged_docs(a.batch, a.seq, min_len=a.seq // 32,
                                                                 max_len=a.seq // 2)):
        rows = run_problem(p, [packed_candidate(ours, p, ours)] + fair_baselines(p), x, runs=a.runs, inner=a.inner)
        print_table(p, rows, a.heads, a.head_dim, versus=ours)
        vs = versus_best_baseline(rows, ours, a.max_err)
        out["problems"][p.name] = {"describe": p.describe(), "rows": rows, "versus_best_baseline": vs}
        if vs:
            print(f"{p.name}: {ours} fwd+bwd / best valid baseline ({vs['best_baseline']}): "
                  f"{Samples.of(vs['ratio_fwd_bwd']['samples']).fmt('.2f')} (min / median / max; fwd alone "
                  f"{Samples.of(vs['ratio_fwd']['samples']).fmt('.2f')})")
            if worst is None or vs["ratio_fwd_bwd"]["median"] > worst[1]["ratio_fwd_bwd"]["median"]:
                worst = (p.name, vs)
    if worst:
        out["packed_vs_fair_baseline"] = {**worst[1]["ratio_fwd_bwd"], "problem": worst[0],
                                          "best_baseline": worst[1]["best_baseline"]}
    return out


# ------------------------------------------------------------------------------------------------- the old table
def table_candidates(a, packed: Packed, causal: Packed, impls: list[str]) -> list[tuple[Packed, Candidate]]:
    """Each impl on the packed problem (a `_causal` suffix: on plain causal rows), then the sweeps' variants."""
    from bolt_jax.kernels.mosaic_gpu import MosaicBlocks
    from bolt_jax.kernels.pallas_gpu import Blocks

    def one(impl: str, blocks=None, name: str = "") -> tuple[Packed, Candidate]:
        p = causal if impl.endswith("_causal") else packed
        return p, packed_candidate(name or impl, p, impl.removesuffix("_causal"), blocks)

    out = [one(impl) for impl in impls]
    if a.sweep:  # one factor at a time around the defaults: tiles of the forward, of the backward, then launch
        d = Blocks()
        variants = [dict(fwd_q=fq, fwd_k=fk) for fq, fk in ((128, 64), (128, 32), (64, 32))]
        variants += [dict(bwd_q=bq, bwd_k=bk) for bq, bk in ((64, 64), (128, 32), (64, 128))]
        variants += [dict(num_warps=nw, num_stages=ns) for nw, ns in ((4, 2), (4, 4), (8, 3))]
        for kw in variants:
            b = dataclasses.replace(d, **kw)
            out.append(one("pallas_gpu", b, f"pg f{b.fwd_q}x{b.fwd_k} b{b.bwd_q}x{b.bwd_k} w{b.num_warps}"
                                            f"s{b.num_stages}"))
    if a.mosaic_sweep or a.mosaic_variants:
        variants = [dict(backward=False), dict(schedule_barrier=True), dict(block_kv=64), dict(stages=3),
                    dict(bwd_stages=3), dict(bwd_stages=4)]
        if a.mosaic_variants:
            variants = [{k: int(x) for k, x in (kv.split("=") for kv in v.split(","))}
                        for v in a.mosaic_variants.split(";")]
        for impl in a.mosaic_rows.split(","):
            for kw in variants:
                m = MosaicBlocks(**kw)
                name = (f"mgpu q{m.tile_q} kv{m.block_kv} s{m.stages}{' pp' if m.schedule_barrier else ''} "
                        f"{f'b{m.bwd_block}s{m.bwd_stages}' if m.backward else 'bwd=pallas'}"
                        f"{' causal' if impl.endswith('_causal') else ''}")
                out.append(one(impl, Blocks(mosaic=m), name))
    return out


def table(a) -> dict:
    backend = jax.default_backend()
    impls = a.impls.split(",") if a.impls else (["cudnn_causal", "cudnn", "pallas_gpu", "mosaic_gpu",
                                                  "mosaic_gpu_causal", "tokamax", "xla"]
                                                if backend == "gpu"
                                                else ["pallas_tpu", "xla"] if backend == "tpu"
                                                else ["pallas_gpu", "xla"])
    x = make_inputs(a.batch, a.seq, a.heads, a.kv_heads, a.head_dim)
    packed, causal = equal_docs(a.batch, a.seq, a.docs), causal_rows(a.batch, a.seq)
    out = {}
    for p in (packed, causal):
        cands = [c for q, c in table_candidates(a, packed, causal, impls) if q is p]
        if cands:
            rows = run_problem(p, cands, x, runs=a.runs, inner=a.inner)
            print_table(p, rows, a.heads, a.head_dim, versus="cudnn" if p is packed else "cudnn_causal")
            out[p.name] = {"describe": p.describe(), "rows": rows}
    return out


def parser() -> argparse.ArgumentParser:
    """This script's arguments (bench/gpu_preflight.py parses the headline's with it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv_heads", type=int, default=4)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--docs", type=int, default=4, help="documents per row of the equal-length packed problem")
    p.add_argument("--impls", default="")
    p.add_argument("--runs", type=int, default=10, help="timed samples (min / median / max over them)")
    p.add_argument("--inner", type=int, default=10, help="calls per timed sample")
    p.add_argument("--headline", action="store_true", help="causal TFLOP/s and packed rows vs the fair baselines")
    p.add_argument("--max_err", type=float, default=MAX_REL_ERR, help="a baseline beyond this error is left out")
    p.add_argument("--sweep", action="store_true", help="Pallas GPU tiles x warps x stages")
    p.add_argument("--mosaic_sweep", action="store_true", help="Mosaic GPU kernels: tiles, stages, ping-pong")
    p.add_argument("--mosaic_variants", default="",
                   help="instead of the sweep's list: MosaicBlocks fields per variant, e.g. 'block_q=128;block_kv=64'")
    p.add_argument("--mosaic_rows", default="mosaic_gpu,mosaic_gpu_causal", help="rows the Mosaic variants run on")
    p.add_argument("--smoke", action="store_true", help="tiny shapes for CPU (explicit arguments win)")
    p.add_argument("--json", default="", help="write every row, with its samples, to this JSON file")
    return p


def main() -> None:
    p = parser()
    a = p.parse_args()
    if a.smoke:
        smoke_defaults(a, p, batch=1, seq=256, heads=4, kv_heads=2, head_dim=64)
    print(f"attention, bf16, {a.heads} query / {a.kv_heads} KV heads of {a.head_dim}; {header()}; min / median / "
          f"max of {a.runs} samples of {a.inner} calls; TFLOP/s on the work actually done (module docstring)"
          + ("; SMOKE: CPU figures, meaningless" if a.smoke else ""), flush=True)
    result = headline(a) if a.headline else table(a)
    if a.json:
        write_json(a.json, {**run_info(), "args": vars(a), "smoke": a.smoke, **result})


if __name__ == "__main__":
    main()
