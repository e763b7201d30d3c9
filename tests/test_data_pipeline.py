"""The Grain pipeline: determinism, exact resume (also through an Orbax checkpoint), per-process shares that are
disjoint and cover the data, global batches on the mesh; and the corpus readers' malformed-record reporting."""

import json

import ml_collections
import numpy as np
import pytest

from bolt_jax.data import pipeline
from bolt_jax.data.formats import format_document
from bolt_jax.data.packing import pack_documents, stack_rows
from bolt_jax.data.readers import MalformedRecordError, ReadReport, iter_corpus, open_corpus
from bolt_jax.data.tokenizer import load_tokenizer
from tests.helpers import data_config, write_toy_data


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return write_toy_data(tmp_path_factory.mktemp("pipe"))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_batch_layout_and_shifted_targets(env):
    b = next(pipeline.make_batches(data_config(env)))
    assert set(b) == {"inputs", "targets", "segment_ids", "positions", "categories", "loss_weights"}
    assert all(v.shape == (4, 48) for v in b.values())
    assert b["categories"].dtype == np.int8 and b["inputs"].dtype == np.int32
    np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])  # concat mode: one shifted stream
    assert set(np.unique(b["categories"])) <= {1, 2, 3}
    tok = load_tokenizer(env["tok"])
    assert b["inputs"][0, 0] == tok.bos_id  # the stream starts with the first document's BOS


@pytest.mark.parametrize("packing,shuffle", [("concat", False), ("document", True)])
def test_resume_restores_the_same_next_batches(env, packing, shuffle):
    cfg = data_config(env, packing=packing, shuffle_documents=shuffle)
    it = pipeline.make_batches(cfg)
    whole = _take(it, 14)  # 12 short documents: this crosses epoch boundaries
    for cut in (0, 3, 9):
        it = pipeline.make_batches(cfg)
        _take(it, cut)
        state = json.loads(json.dumps(it.get_state()))  # JSON-able
        resumed = pipeline.make_batches(cfg)
        resumed.set_state(state)
        assert _equal(_take(resumed, 14 - cut), whole[cut:])


def test_resume_through_an_orbax_checkpoint(env, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    cfg = data_config(env)
    it = pipeline.make_batches(cfg)
    _take(it, 2)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 3)
    fresh = pipeline.make_batches(cfg)
    mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert _equal(_take(fresh, 3), expected)


def test_deterministic_and_seeded(env):
    a = _take(pipeline.make_batches(data_config(env)), 4)
    assert _equal(a, _take(pipeline.make_batches(data_config(env)), 4))
    assert not _equal(a, _take(pipeline.make_batches(data_config(env, seed=99)), 4))  # other coin flips


def test_two_processes_read_disjoint_shares_that_cover_the_data(env):
    corpus = open_corpus(env["aug"])
    seen = {0: [], 1: []}

    class Counting:
        def __init__(self, k):
            self.k = k

        def __len__(self):
            return len(corpus)

        def __getitem__(self, i):
            seen[self.k].append(i)
            return corpus[i]

    tok = load_tokenizer(env["tok"])
    outputs = {}
    for k in (0, 1):
        ds = pipeline.build_dataset(corpus=Counting(k), tokenizer=tok, latent_type="random", seq_len=32, rows=2,
                                    seed=3, packing="document", num_epochs=1, shuffle=True, process_index=k,
                                    process_count=2)
        outputs[k] = list(ds)
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(len(corpus)))  # each record read once, by one process
    # Oracle: row slot j (of 4: 2 processes x 2 rows) packs the global stream's positions j, j+4, ... formatted with
    # default_rng([seed, 2, position]) (the documented contract) by pack_documents; process k owns slots 2k, 2k+1.
    order = pipeline.document_stream(len(corpus), seed=3, shuffle=True, num_epochs=1, process_index=0,
                                     process_count=1)
    for k in (0, 1):
        for local in (0, 1):
            docs = []
            for position in range(2 * k + local, len(corpus), 4):
                pos, doc_index = order[position]
                pieces = format_document(corpus[doc_index], "random", np.random.default_rng([3, 2, pos]),
                                         bos=tok.bos_text, eos=tok.eos_text)
                docs.append(tok.encode_document(pieces))
            want = stack_rows(list(pack_documents(docs, 32, "document", tok.eos_id)))["targets"]
            got = np.stack([b["targets"][local] for b in outputs[k]])
            np.testing.assert_array_equal(got[:len(want)], want)
            assert (got[len(want):] == 0).all()  # a slot that ended early gives empty rows


def test_global_batches_do_not_depend_on_the_process_count(env):
    """Row j of global batch i is the same on 1, 2 or 4 processes: a run can resume on another number of hosts."""
    tok = load_tokenizer(env["tok"])
    corpus = open_corpus(env["aug"])

    def global_batches(n, count=3):
        its = [iter(pipeline.build_dataset(corpus=corpus, tokenizer=tok, latent_type="random", seq_len=32,
                                           rows=4 // n, seed=5, packing="concat", shuffle=True, process_index=k,
                                           process_count=n)) for k in range(n)]
        return [np.concatenate([next(it)["targets"] for it in its]) for _ in range(count)]

    one = global_batches(1)
    for n in (2, 4):
        for a, b in zip(one, global_batches(n)):
            np.testing.assert_array_equal(a, b)


def test_validation_split_is_one_pass_of_raw_text(env):
    cfg = data_config(env, validation_path=env["aug"], packing="document")
    batches = list(pipeline.make_batches(cfg, split="validation"))
    cats = np.concatenate([b["categories"] for b in batches])
    assert 2 not in cats  # raw text: no thought tokens
    tok = load_tokenizer(env["tok"])
    n_pairs = sum(len(tok.encode(r["text"])) + 1 for r in iter_corpus(env["aug"]))
    assert sum(int((b["segment_ids"] > 0).sum()) for b in batches) == n_pairs


def test_global_batch_on_the_mesh(env):
    import jax

    from bolt_jax.parallel import make_mesh

    mesh = make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    b = next(pipeline.make_batches(data_config(env, global_batch_size=8)))
    g = pipeline.to_global(b, mesh)
    assert g["inputs"].shape == (8, 48) and len(g["inputs"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(jax.device_get(g["targets"])), b["targets"])


def test_config_errors(env):
    with pytest.raises(ValueError, match="train_path"):
        pipeline.make_batches(data_config(env, train_path=""))
    with pytest.raises(ValueError, match="packing"):
        pipeline.make_batches(data_config(env, packing="bestfit"))
    with pytest.raises(ValueError, match="divisible"):
        pipeline.make_batches(data_config(env, global_batch_size=3), process_index=0, process_count=2)
    c = data_config(env, global_batch_size=0)
    c.train = ml_collections.ConfigDict({"global_batch_size": 2})
    assert next(pipeline.make_batches(c))["inputs"].shape == (2, 48)


# ---- readers -----------------------------------------------------------------------------------------------


def test_malformed_jsonl_records_are_counted_with_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "good one"}\n{bad json\n\n[1, 2]\n{"content": "also good"}\n{"title": "no text"}\n')
    report = ReadReport()
    records = list(iter_corpus(str(path), report))
    assert [r.get("text", r.get("content")) for r in records] == ["good one", "also good"]
    assert report.num_read == 2 and report.num_malformed == 3
    assert report.malformed[0].startswith(f"{path}:2: invalid JSON")
    assert report.malformed[1].startswith(f"{path}:4: not a JSON object")
    assert report.malformed[2].startswith(f"{path}:6: no 'text'")
    with pytest.raises(MalformedRecordError, match=r"c\.jsonl:2"):
        list(iter_corpus(str(path), strict=True))
    src = open_corpus(str(path))  # random access skips them too, and reports them
    assert len(src) == 2 and src[1]["content"] == "also good" and src.report.num_malformed == 3


def test_parquet_reader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b", None, "c"], "id": [1, 2, 3]}), tmp_path / "d.parquet")
    report = ReadReport()
    assert [r["text"] for r in iter_corpus(str(tmp_path), report)] == ["a b", "c"]
    assert report.num_malformed == 1 and "row 2" in report.malformed[0]
    assert open_corpus(str(tmp_path / "d.parquet"))[1]["id"] == 3


def test_parquet_random_access_reads_row_groups_lazily(tmp_path):
    """Several files of several row groups, a malformed row in one: [i] in any order gives the i-th usable record
    of the iteration, reading only the row groups it needs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"doc {i}" for i in range(23)]
    texts[7] = None
    for part, (lo, hi) in enumerate([(0, 15), (15, 23)]):
        pq.write_table(pa.table({"text": texts[lo:hi], "id": list(range(lo, hi))}), tmp_path / f"p{part}.parquet",
                       row_group_size=4)
    want = list(iter_corpus(str(tmp_path)))
    src = open_corpus(str(tmp_path))
    assert len(src) == len(want) == 22 and src.report.num_malformed == 1
    for i in np.random.default_rng(0).permutation(len(src)):
        assert src[int(i)] == want[int(i)]
    assert len(src._row_groups._groups) <= src._row_groups.size  # a bounded cache, not the whole corpus


def test_tfds_builder_directory_reader(tmp_path):
    import tensorflow_datasets as tfds

    class ToyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        url_infos = {}  # no checksums file: TFDS would look for one next to this module's package (etils resources)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(5):
                yield i, {"text": f"document {i}."}

    builder = ToyText(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    spec = f"tfds_dir:{builder.data_dir}:train"
    texts = sorted(r["text"] for r in iter_corpus(spec))
    assert texts == [f"document {i}." for i in range(5)]
    assert len(open_corpus(spec)) == 5
    assert sorted(r["text"] for r in iter_corpus("tfds:toy_text:train", tfds_data_dir=str(tmp_path))) == texts
