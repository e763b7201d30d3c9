"""Resuming the corpus pipeline exactly: on another number of processes (the saved row-slot states redistributed,
through the trainer's checkpointer and Grain's per-process files), behind a prefetch thread, with the shuffle buffer
(the original's prefetch shuffle) and with worker processes (Grain's mp_prefetch). Several processes are simulated
in this one: each "process" is a make_batches(process_index=i, process_count=n) iterator, and Grain's handler is
told which process saves or restores."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bolt_jax.data import pipeline, row_slots
from bolt_jax.train.checkpointing import TrainCheckpointer
from tests.helpers import data_config, write_toy_data


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return write_toy_data(tmp_path_factory.mktemp("resume"))


def _processes(cfg, n):
    return [pipeline.make_batches(cfg, process_index=i, process_count=n) for i in range(n)]


def _global(its, count):
    """`count` global batches: the processes' batches in process order."""
    return [{k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
            for parts in ([next(it) for it in its] for _ in range(count))]


def _equal(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


@pytest.fixture
def as_process(monkeypatch):
    """as_process(i, n): Grain's checkpoint handler (and the checkpointer) now run as process i of n."""
    from grain._src.core import sharding

    def set_process(i, n):
        monkeypatch.setattr(sharding, "get_process_index_and_count", lambda: (i, n))
    return set_process


TRAIN_STATE = {"w": jnp.arange(4.0)}


def _save(directory, step, its, as_process):
    """Each process saves its iterator as the trainer does: process 0 through TrainCheckpointer (Orbax, with Grain's
    handler for the data item), the others through Grain's handler into the same step's data directory (what their
    own handler writes in a multi-process save)."""
    import grain

    as_process(0, len(its))
    ckpt = TrainCheckpointer(str(directory), async_save=False)
    ckpt.save(step, TRAIN_STATE, its[0], force=True)
    ckpt.close()
    data_dir = directory / str(step) / "data"
    for i, it in enumerate(its[1:], start=1):
        as_process(i, len(its))
        grain.checkpoint.CheckpointHandler().save(data_dir, args=grain.checkpoint.CheckpointSave(it))
    names = sorted(p.name for p in data_dir.iterdir() if p.suffix == ".json")
    assert names == [f"process_{i}-of-{len(its)}.json" for i in range(len(its))]  # Grain's file names


def _restore(directory, step, its, as_process):
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), TRAIN_STATE)
    for i, it in enumerate(its):
        as_process(i, len(its))
        ckpt = TrainCheckpointer(str(directory), async_save=False)
        state, meta = ckpt.restore(step, abstract, it)
        ckpt.close()
        assert meta["step"] == step and np.array_equal(state["w"], TRAIN_STATE["w"])


@pytest.mark.parametrize("saved,restored,data", [
    (2, 2, {}),  # the same count: Grain's handler restores each process's own file, as before
    (2, 1, {}),
    (1, 2, {"prefetch_threads": 2, "read_threads": 3}),  # a batch thread, and reader threads per slot
    (2, 4, {"shuffle_documents": True, "packing": "document"}),
    (2, 1, {"shuffle_buffer_batches": 3}),  # saved mid-block: the block is re-read and re-permuted
    (4, 2, {"num_epochs": 1, "packing": "document"}),  # a finite stream: some slots are done when saved
], ids=["2to2", "2to1", "1to2_prefetch_and_readers", "2to4_shuffled_docs", "2to1_shuffle_buffer", "4to2_finite"])
def test_resume_on_another_process_count(env, tmp_path, as_process, saved, restored, data):
    cfg = data_config(env, **data)
    cut, more = 4, 3
    whole = _global(_processes(cfg, 1), cut + more)  # one process, uninterrupted
    before = _processes(cfg, saved)
    assert _equal(_global(before, cut), whole[:cut])
    _save(tmp_path / "ckpt", cut, before, as_process)
    after = _processes(cfg, restored)
    _restore(tmp_path / "ckpt", cut, after, as_process)
    assert _equal(_global(after, more), whole[cut:])


def test_another_global_batch_is_refused(env, tmp_path, as_process):
    its = _processes(data_config(env), 2)
    _global(its, 2)
    _save(tmp_path / "ckpt", 2, its, as_process)
    other = _processes(data_config(env, global_batch_size=2), 1)
    with pytest.raises(ValueError, match=r"saved for a global batch of 4 rows \(2 processes\) and this run has 2"):
        _restore(tmp_path / "ckpt", 2, other, as_process)
    four = pipeline.make_batches(data_config(env)).get_state()
    with pytest.raises(ValueError, match="4 row slots and this iterator 2"):  # the same process count
        pipeline.make_batches(data_config(env, global_batch_size=2)).set_state(four)
    with pytest.raises(ValueError, match="4 row slots and this iterator 2"):  # checked before workers start
        pipeline.make_batches(data_config(env, global_batch_size=2, worker_count=2)).set_state(four)


def test_prefetch_thread_state_is_the_slot_state(env):
    """ThreadPrefetchIterDataset's iterator reports and restores the slots' state (of the batch last taken)."""
    cfg = data_config(env, prefetch_threads=3)
    whole = _global([pipeline.make_batches(data_config(env))], 6)
    it = pipeline.make_batches(cfg)
    assert type(it).__name__ == "ThreadPrefetchDatasetIterator"
    assert _equal(_global([it], 2), whole[:2])
    state = json.loads(json.dumps(it.get_state()))
    assert set(state) == {"slots", "done"} and len(state["slots"]) == 4
    fresh = pipeline.make_batches(cfg)
    fresh.set_state(state)
    assert _equal(_global([fresh], 4), whole[2:])
    plain = pipeline.make_batches(data_config(env))  # and the state fits the pipeline without the thread
    plain.set_state(state)
    assert _equal(_global([plain], 4), whole[2:])


def _slot_rows(batches, slot):
    return [tuple(b[k][slot].tobytes() for k in sorted(b)) for b in batches]


def test_shuffle_buffer_permutes_each_block_of_each_slot(env):
    """Each slot's rows come in blocks of K = shuffle_buffer_batches, each block a permutation of the unshuffled
    rows of that block: over a pass every row appears exactly once, in another order."""
    plain = list(pipeline.make_batches(data_config(env, num_epochs=2, packing="document")))
    shuffled = list(pipeline.make_batches(data_config(env, num_epochs=2, packing="document", shuffle_buffer_batches=3)))
    assert len(shuffled) == len(plain) > 6
    moved = 0
    for slot in range(4):
        a, b = _slot_rows(plain, slot), _slot_rows(shuffled, slot)
        for start in range(0, len(a), 3):
            assert sorted(a[start:start + 3]) == sorted(b[start:start + 3])
            moved += a[start:start + 3] != b[start:start + 3]
    assert moved > 0
    assert sorted(r for s in range(4) for r in _slot_rows(plain, s)) == sorted(
        r for s in range(4) for r in _slot_rows(shuffled, s))


def test_shuffle_buffer_resumes_exactly(env):
    cfg = data_config(env, shuffle_buffer_batches=3)
    whole = _global([pipeline.make_batches(cfg)], 9)
    for cut in (0, 2, 3, 4, 7):  # block starts, middles and the last row of a block
        it = pipeline.make_batches(cfg)
        _global([it], cut)
        state = json.loads(json.dumps(it.get_state()))
        resumed = pipeline.make_batches(cfg)
        resumed.set_state(state)
        assert _equal(_global([resumed], 9 - cut), whole[cut:])
    assert not _equal(whole, _global([pipeline.make_batches(data_config(env))], 9))
    other = pipeline.make_batches(data_config(env))
    with pytest.raises(ValueError, match="saved with data.shuffle_buffer_batches=3 and this run has 0"):
        other.set_state(state)
    with pytest.raises(ValueError, match="saved with data.shuffle_buffer_batches=0 and this run has 5"):
        pipeline.make_batches(data_config(env, shuffle_buffer_batches=5)).set_state(other.get_state())


# slow (spawns worker processes, ~20 s): make test-slow; the worker grouping is tested below
@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_state(env, monkeypatch):
    """data.worker_count=2: Grain's mp_prefetch packs the slots in two spawned processes (two slots each). A state
    saved without workers, restored with them, gives the same batches and the same end of a finite stream; their
    state restored without workers gives the exact continuation. (One start of the workers: they take seconds.)
    The workers never start a jax backend (on a GPU each would take most of its memory): they are spawned with
    JAX_PLATFORMS naming a platform this machine lacks, where starting one fails."""
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")  # this process's backend is up already; the workers inherit it
    data = dict(num_epochs=1, packing="document", shuffle_buffer_batches=2)
    plain = pipeline.make_batches(data_config(env, **data))
    whole = list(plain)
    workers = pipeline.make_batches(data_config(env, worker_count=2, prefetch_threads=2, **data))  # a thread on top
    assert type(workers._maybe_nonnative_parent).__name__ == "_WorkerBatchesIterator"
    plain = pipeline.make_batches(data_config(env, **data))
    _global([plain], 2)
    workers.set_state(json.loads(json.dumps(plain.get_state())))  # before the workers start: they start there
    got = []
    for batch in workers:
        got.append(batch)
        if len(got) == 3:
            state = json.loads(json.dumps(workers.get_state()))
    assert _equal(got, whole[2:])
    plain = pipeline.make_batches(data_config(env, **data))
    plain.set_state(state)
    assert _equal(list(plain), whole[5:])
    workers.close()


def test_worker_groups(env):
    """Worker w packs a contiguous group of the slots; never more workers than rows (a worker without slots would
    have no part to give). Grain tells a worker its index through RowSlotBatches.set_slice."""
    assert row_slots.worker_groups(5, 2) == [range(0, 3), range(3, 5)]
    assert row_slots.worker_groups(4, 4) == [range(i, i + 1) for i in range(4)]
    assert pipeline.make_batches(data_config(env, worker_count=8))._workers == 4  # nothing spawned before next()
    ds = row_slots.RowSlotBatches([None] * 5, parts=True)
    ds.set_slice(slice(1, None, 2))
    assert ds._group == range(3, 5)
    with pytest.raises(ValueError, match="slice"):
        ds.set_slice(slice(0, 4, 2))


def test_new_settings_are_validated(env):
    for key, bad in (("worker_count", -1), ("worker_count", 1.5), ("shuffle_buffer_batches", True),
                     ("read_threads", -1), ("read_threads", 2.5), ("prefetch_threads", 1.5)):
        c = ml_collections.ConfigDict({"data": {"source": "corpus", key: bad}})
        with pytest.raises(ValueError, match=f"config.data.{key}="):
            pipeline.validate_data_config(c)
    pipeline.validate_data_config(data_config(env, worker_count=2, shuffle_buffer_batches=4, read_threads=3))


def test_read_threads_is_how_many_grain_reader_threads_run(env):
    """data.read_threads reaches Grain: no reader thread at 0 (Grain's own default started 16 per row slot), and
    threads named grain-prefetch at 2, with the same batches."""
    import threading

    def readers() -> int:
        return sum(t.name.startswith("grain-prefetch") for t in threading.enumerate())

    before = readers()
    plain = pipeline.make_batches(data_config(env))
    first = _global([plain], 2)
    assert readers() == before
    threaded = pipeline.make_batches(data_config(env, read_threads=2))
    assert _equal(_global([threaded], 2), first)
    assert readers() > before
