"""The continuous-batching engine (`bolt_jax.sampling.engine`) against the static sampler, its oracle: the same
requests give the same tokens, log q and done flags whatever the slots, the chunking or the mesh; a reused slot
carries nothing of its earlier occupant; slots are kept busy."""

import jax
import numpy as np
import pytest
from flax import nnx

from bolt_jax import parallel
from bolt_jax.model import Llama, preset
from bolt_jax.sampling import engine, generate, generate_stream
from bolt_jax.sampling.slots import Settings, lower_decode

STOPS = list(range(3, 40))  # many stop ids, so lengths spread from 0 to max_new_tokens


@pytest.fixture(scope="module")
def model():
    return Llama(preset("tiny", compute_dtype="float32"), nnx.Rngs(0))


def _prompts(num: int, seed: int = 0, max_len: int = 30) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(40, 500, size=int(rng.integers(2, max_len))).tolist() for _ in range(num)]


def _same(a, b):
    assert a.tokens == b.tokens
    np.testing.assert_allclose(a.logq, b.logq, atol=1e-4)
    for x, y in zip(a.token_logq, b.token_logq, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-4)
    np.testing.assert_array_equal(a.done, b.done)
    np.testing.assert_array_equal(a.lengths, b.lengths)


@pytest.mark.parametrize("slots,steps", [(4, 3), (7, 1), (64, 16)])
def test_continuous_equals_static(model, slots, steps):
    kw = dict(n=3, max_new_tokens=24, temperature=1.0, top_k=50, stop_token_ids=STOPS, seed=5)
    prompts = _prompts(7)
    static = generate(model, prompts, scheduler="static", **kw)
    cont = generate(model, prompts, scheduler="continuous", decode_slots=slots, steps_per_sync=steps, **kw)
    assert len(set(static.lengths.tolist())) > 4  # the lengths really vary
    _same(static, cont)
    assert cont.stats["scheduler"] == "continuous" and cont.stats["slots"] == slots


def test_a_reused_slot_keeps_nothing_of_its_last_request(model):
    """One slot: request B runs after A in it; B alone in a fresh engine gives the same tokens and log q."""
    kw = dict(n=1, max_new_tokens=20, temperature=1.0, stop_token_ids=STOPS, scheduler="continuous",
              decode_slots=1, steps_per_sync=2)
    a, b = _prompts(2, seed=3, max_len=12)
    for seed_a in range(30):  # an A that generates more than B, so B's cache row holds A's stale entries
        both = generate(model, [a, b], prompt_seeds=[seed_a, 99], **kw)
        if both.lengths[0] > both.lengths[1] + 2:
            break
    else:
        pytest.fail("no seed made request A longer than B")
    alone = generate(model, [b, b], prompt_seeds=[99, 99], **dict(kw, decode_slots=2))
    assert both.tokens[1] == alone.tokens[0]
    np.testing.assert_allclose(both.token_logq[1], alone.token_logq[0], atol=1e-5)


def test_stop_strings_end_requests_early_with_the_static_result(model, tmp_path):
    from bolt_jax.data.tokenizer import load_tokenizer
    from tests.helpers import build_tokenizer
    tok = load_tokenizer(build_tokenizer(tmp_path / "tok", vocab_size=512)).hf
    prompts = _prompts(4, seed=7)
    texts = generate(model, prompts, n=2, max_new_tokens=16, seed=1, tokenizer=tok).texts
    stop = next(t[2:4] for t in texts if len(t) > 6)  # a string the samples really produce
    kw = dict(n=2, max_new_tokens=16, seed=1, tokenizer=tok, stop_strings=[stop])
    static = generate(model, prompts, scheduler="static", **kw)
    cont = generate(model, prompts, scheduler="continuous", decode_slots=3, steps_per_sync=1, **kw)
    assert static.texts == cont.texts and any(stop not in t and d for t, d in zip(static.texts, static.done))
    _same(static, cont)


def test_continuous_on_a_mesh_equals_static_on_one_device(model):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    kw = dict(n=2, max_new_tokens=12, temperature=1.0, stop_token_ids=STOPS, seed=2)
    prompts = _prompts(5, seed=4)
    _same(generate(model, prompts, scheduler="static", **kw),
          generate(model, prompts, scheduler="continuous", decode_slots=8, steps_per_sync=4, mesh=mesh, **kw))


def test_slots_stay_busy_on_spread_out_lengths(model):
    """Useful slot occupancy (slot-steps that decoded a live request) is high when requests outnumber slots."""
    kw = dict(n=4, max_new_tokens=32, temperature=1.0, stop_token_ids=STOPS, seed=0)
    prompts = _prompts(16, seed=5)
    static = generate(model, prompts, scheduler="static", **kw)
    cont = generate(model, prompts, scheduler="continuous", decode_slots=8, steps_per_sync=1, **kw)
    _same(static, cont)
    assert cont.stats["slot_occupancy"] > 0.8 > static.stats["slot_occupancy"]


@pytest.mark.parametrize("scheduler", ["static", "continuous"])
def test_on_done_counts_every_request_and_changes_nothing(model, scheduler):
    """`on_done(k)` reports finished requests from the host loop: the counts sum to prompts x n (the continuous engine
    in several rounds, the static batch at once), and the samples are exactly those of a call without it."""
    # test_continuous_equals_static's first case: the programs it compiled are reused
    kw = dict(n=3, max_new_tokens=24, temperature=1.0, top_k=50, stop_token_ids=STOPS, seed=5, scheduler=scheduler,
              **({"decode_slots": 4, "steps_per_sync": 3} if scheduler == "continuous" else {}))
    prompts = _prompts(7)
    calls: list[int] = []
    watched = generate(model, prompts, on_done=calls.append, **kw)
    plain = generate(model, prompts, **kw)
    assert sum(calls) == len(prompts) * 3 and all(k > 0 for k in calls)
    assert len(calls) > 2 if scheduler == "continuous" else calls == [21]
    assert watched.tokens == plain.tokens and watched.texts == plain.texts
    np.testing.assert_array_equal(watched.logq, plain.logq)
    for x, y in zip(watched.token_logq, plain.token_logq, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(watched.done, plain.done)


# ------------------------------------------------------------------------------------------------- streams
def _stream_batches(seed: int = 0):
    """Four batches of 3 prompts; the third has a prompt longer than the first batch's bucket (32)."""
    batches = [(f"b{k}", _prompts(3, seed=seed + k, max_len=30), [100 * k + i for i in range(3)]) for k in range(4)]
    batches[2][1][1] = list(range(40, 40 + 45))
    return batches


@pytest.mark.parametrize("sharing", [False, True])
def test_stream_equals_each_batch_alone(model, sharing):
    """Each batch of a stream gets what `generate` gives it alone (static path: the oracle), in order, including
    a batch whose longest prompt needs a larger bucket (the engine drains and starts again)."""
    kw = dict(n=2, max_new_tokens=20, temperature=1.0, top_k=50, stop_token_ids=STOPS, seed=5)
    batches = _stream_batches()
    got = list(generate_stream(model, batches, decode_slots=4, steps_per_sync=3, prefix_sharing=sharing, **kw))
    assert [k for k, _ in got] == [k for k, _, _ in batches]
    for (_, prompts, seeds), (_, result) in zip(batches, got, strict=True):
        _same(generate(model, prompts, prompt_seeds=seeds, scheduler="static", **kw), result)
    assert got[-1][1].stats["slots"] == 4
    buckets = [r.stats["prompt_bucket"] for _, r in got]  # the stream's bucket when each batch was handed back
    assert buckets[0] == 32 and buckets[-1] == 64  # the third batch's prompt of 45 made the engine start again


def test_stream_keeps_slots_busier_than_a_call_per_batch(model):
    """A batch's long tail no longer drains the slots: the stream takes fewer decode steps for the same samples
    than one call per batch, and its useful slot occupancy is higher."""
    kw = dict(n=2, max_new_tokens=24, temperature=1.0, stop_token_ids=STOPS[:6], seed=1, decode_slots=4,
              steps_per_sync=2)
    batches = [(k, _prompts(2, seed=k, max_len=16), None) for k in range(6)]
    apart = [generate(model, p, scheduler="continuous", **kw).stats for _, p, _ in batches]
    together = list(generate_stream(model, batches, **kw))[-1][1].stats
    assert together["decode_steps"] < sum(s["decode_steps"] for s in apart)
    useful_apart = sum(s["slot_occupancy"] * s["decode_steps"] * 4 for s in apart)
    assert together["slot_occupancy"] > useful_apart / (4 * sum(s["decode_steps"] for s in apart))


def test_a_stream_leaves_no_mesh_set_between_batches(model):
    """The mesh is set only while the engine works: a stream suspended between batches, or abandoned after one (as
    `generate` does), leaves the caller's thread without it (it once leaked, and every later compile in the process
    was sharded over it)."""
    import jax
    mesh = parallel.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
    batches = [("a", [[5, 6]], None), ("b", [[7, 8]], None)]
    stream = generate_stream(model, batches, max_new_tokens=4, decode_slots=2, mesh=mesh)
    next(stream)
    assert jax.sharding.get_abstract_mesh().empty
    generate(model, [[5, 6]], max_new_tokens=4, scheduler="continuous", decode_slots=2, mesh=mesh)
    assert jax.sharding.get_abstract_mesh().empty
    assert [k for k, _ in stream] == ["b"]


def test_stream_refuses_a_key_given_twice(model):
    batches = [("a", [[5, 6]], None), ("a", [[7, 8]], None)]
    with pytest.raises(ValueError, match="batch key 'a' given twice"):
        list(generate_stream(model, batches, max_new_tokens=4, decode_slots=2))


# ------------------------------------------------------------------------------------------------- prefix sharing
@pytest.mark.parametrize("slots,entries,steps", [(4, None, 3), (7, 1, 1), (8, 2, 4)])
def test_prefix_sharing_equals_static(model, slots, entries, steps):
    """The samples of a prompt reading its KV from one shared entry give the static path's tokens, log q and done
    flags (log q to float rounding: the two-part softmax sums in another order); one entry forces slots to wait."""
    kw = dict(n=3, max_new_tokens=24, temperature=1.0, top_k=50, stop_token_ids=STOPS, seed=5)
    prompts = _prompts(7)
    static = generate(model, prompts, scheduler="static", **kw)
    shared = generate(model, prompts, scheduler="continuous", decode_slots=slots, steps_per_sync=steps,
                      prefix_sharing=True, prompt_entries=entries, **kw)
    _same(static, shared)
    assert shared.stats["prompt_entries"] == (entries or 3)
    if entries == 1:
        assert shared.stats["entry_waits"] > 0  # slots really waited for the one entry


def test_prefix_sharing_reuses_slots_and_entries_cleanly(model):
    """One slot and one entry: request B's sample runs in the slot and the entry A used; B alone matches."""
    kw = dict(n=1, max_new_tokens=20, temperature=1.0, stop_token_ids=STOPS, scheduler="continuous",
              steps_per_sync=2, prefix_sharing=True)
    a, b = _prompts(2, seed=3, max_len=12)
    both = generate(model, [a, b], prompt_seeds=[0, 99], decode_slots=1, prompt_entries=1, **kw)
    alone = generate(model, [b], prompt_seeds=[99], decode_slots=1, prompt_entries=1, **kw)
    assert both.tokens[1] == alone.tokens[0]
    np.testing.assert_allclose(both.token_logq[1], alone.token_logq[0], atol=1e-5)


def test_prefix_sharing_on_a_mesh_equals_static_on_one_device(model):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    kw = dict(n=2, max_new_tokens=12, temperature=1.0, stop_token_ids=STOPS, seed=2)
    prompts = _prompts(5, seed=4)
    _same(generate(model, prompts, scheduler="static", **kw),
          generate(model, prompts, scheduler="continuous", decode_slots=8, steps_per_sync=4, mesh=mesh,
                   prefix_sharing=True, prompt_entries=4, **kw))


def test_prefix_sharing_reads_fewer_bytes_per_step():
    """XLA's own count of the bytes one decode chunk touches: shared prompts (entries = slots / n) against each slot
    holding its prompt, at a long prompt where prompt KV dominates. The XLA decode attention, named (not `auto`,
    which another test may have traced as the kernel for the same shapes)."""
    from flax import nnx as nnx_

    from bolt_jax.model.llama import pure_dict
    xla_model = Llama(preset("tiny", compute_dtype="float32", decode_impl="xla"), nnx.Rngs(0))
    graphdef, state = nnx_.split(xla_model)
    params = pure_dict(state)

    def chunk_bytes(entries: int) -> float:
        s = Settings(slots=16, prompt_len=512, max_new_tokens=128, temperature=1.0, top_k=0, top_p=1.0,
                            greedy=False, stop_ids=(3,), banned_ids=(), prefill_group=4, steps_per_sync=1,
                            prompt_entries=entries, samples_per_prompt=4 if entries else 1)
        compiled = lower_decode(graphdef, params, s).compile()
        return compiled.cost_analysis()["bytes accessed"]

    own, shared = chunk_bytes(0), chunk_bytes(4)
    assert shared < 0.6 * own, (shared, own)


@pytest.mark.parametrize("kernel", ["pallas_gpu", "pallas_tpu", "mosaic_gpu"])
def test_prefix_sharing_with_each_decode_kernel_equals_static(kernel):
    """Each decode kernel (interpret mode on CPU; mosaic_gpu as its twin, on heads of 64) under prefix sharing, with
    more entries than prompts so some are free: a free entry is given length 0 (the kernel reads none of it) and the
    samples still equal the static path."""
    cfg = preset("tiny", compute_dtype="float32", **({"hidden_size": 256} if kernel == "mosaic_gpu" else {}))
    kw = dict(n=2, max_new_tokens=8, temperature=1.0, stop_token_ids=STOPS, seed=3)
    prompts = _prompts(3, seed=6, max_len=12)
    static = generate(Llama(cfg, nnx.Rngs(0)), prompts, scheduler="static", **kw)
    with_kernel = Llama(cfg.replace(decode_impl=kernel), nnx.Rngs(0))
    _same(static, generate(with_kernel, prompts, scheduler="continuous", decode_slots=4, steps_per_sync=3,
                           prefix_sharing=True, prompt_entries=4, **kw))


def test_prefix_sharing_keeps_entries_on_their_slots_device(model):
    """On a mesh, an entry and its member slots sit on one device (the host places them so), so the decode chunk's
    gathers stay local: no more cross-device bytes than the unshared chunk (the real compiler's HLO, counted by
    bolt_jax.aot.hlo). Before, the members' queries and outputs were all-reduced across the batch devices."""
    import jax

    from bolt_jax.aot import hlo
    from bolt_jax.model.llama import pure_dict
    mesh = parallel.make_mesh({"data": 4, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:4])
    graphdef, state = nnx.split(model)

    def ring_bytes(sharing: bool) -> float:
        s = engine.make_settings(n=2, slots=8, num_prompts=4, prompt_len=64, max_new_tokens=32, temperature=1.0,
                                 top_k=0, top_p=1.0, greedy=False, stop_token_ids=(3,), banned_token_ids=(),
                                 steps_per_sync=2, mesh=mesh, prefix_sharing=sharing, prompt_entries=4 if sharing
                                 else None)
        assert s.shards == (4 if sharing else 1)
        with jax.set_mesh(mesh):
            params = jax.device_put(pure_dict(state), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
            text = lower_decode(graphdef, params, s).compile().as_text()
        return hlo.analyze(text, 4, unknown_trips=2).ring_bytes

    own, shared = ring_bytes(False), ring_bytes(True)
    assert shared <= own + 1024, (shared, own)


def test_prefix_sharing_places_prompts_by_device():
    """The host tables: a prompt's samples take slots on its entry's device only, indices within the device."""
    entries = engine._Entries(entries=4, members=2, slots=8, shards=2)  # 2 entries, 4 slots per device
    free = [[0, 1], [4, 5, 6]]
    shard, entry, new = entries.admit(prompt=7, n=2, free_by_shard=free)
    assert (shard, new) == (1, True) and entry in (2, 3)  # the device with more free slots
    entries.join(free[1].pop(0), entry)
    assert entries.admit(prompt=7, n=2, free_by_shard=[[0, 1], []]) is None  # its device is full: it waits
    assert entries.admit(prompt=7, n=2, free_by_shard=[[0], [5]]) == (1, entry, False)
    entries.join(5, entry)
    assert entries.members_ExM[entry].tolist() == [0, 1] and entries.entry_S[4] == entries.entry_S[5] == entry - 2
    entries.leave(4, 7)
    entries.leave(5, 7)
    assert entries.members_ExM[entry].tolist() == [4, 4] and entry in entries.free[1] and 7 not in entries.of_prompt


@pytest.mark.parametrize("kw,message", [
    ({"scheduler": "static", "prefix_sharing": True}, "prefix_sharing needs scheduler"),
    ({"scheduler": "continuous", "prompt_entries": 2}, "needs prefix_sharing=True"),
    ({"scheduler": "continuous", "prefix_sharing": True, "prompt_entries": 3, "mesh": "mesh"},
     "prompt_entries=3 must be a multiple"),
    ({"scheduler": "dynamic"}, "scheduler='dynamic'"),
    ({"scheduler": "continuous", "decode_slots": 3, "mesh": "mesh"}, "multiple of the mesh's batch devices"),
    ({"scheduler": "continuous", "steps_per_sync": 0}, "steps_per_sync=0"),
])
def test_bad_scheduler_arguments_are_refused(model, kw, message):
    if kw.get("mesh") == "mesh":
        kw = dict(kw, mesh=parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    with pytest.raises(ValueError, match=message):
        generate(model, [[1, 2, 3]], max_new_tokens=2, **kw)


def test_engine_programs_are_compiled_once_per_settings(model):
    """A second call with the same settings reuses the first one's programs (`slots.programs`): nothing compiles
    again, and the slot state each program makes is in the layout the decode chunk was compiled for."""
    from bolt_jax.sampling import slots
    kw = dict(n=2, max_new_tokens=6, temperature=1.0, stop_token_ids=STOPS, seed=1, scheduler="continuous",
              decode_slots=4)
    generate(model, _prompts(3, seed=2, max_len=10), **kw)
    kept = dict(slots._PROGRAMS)
    generate(model, _prompts(3, seed=4, max_len=10), **kw)
    assert slots._PROGRAMS == kept
    (programs,) = [p for key, p in kept.items() if key[1].slots == 4 and key[1].max_new_tokens == 6]
    graphdef, state = nnx.split(model)
    from bolt_jax.model.llama import pure_dict
    params = pure_dict(state)
    empty = programs.init(params)
    assert jax.tree.map(lambda x: x.format, empty) == programs.decode.input_formats[0][1]
    settings = next(key[1] for key, p in kept.items() if p is programs)
    with parallel.logical_rules({"cache_time": "fsdp"}):  # rules that would shard the caches otherwise: compiled anew
        assert slots.programs(graphdef, params, settings) is not programs
    assert slots.programs(graphdef, params, settings) is programs
