"""Packing invariants: the original's concat mode (every stream token a target exactly once, spec 4.3) and the
document-masked mode (no attention or targets across documents)."""

import numpy as np
import pytest

from bolt_jax.data.packing import LossWeights, pack_documents, stack_rows

BOS, EOS = 1, 2


def _docs(lengths, seed=0):
    """[BOS] body [EOS] documents with distinct body tokens (>= 10) and categories cycling 1, 2, 3."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        body = rng.integers(10, 500, size=n).astype(np.int32)
        tokens = np.concatenate([[BOS], body, [EOS]]).astype(np.int32)
        cats = np.concatenate([[3], (np.arange(n) % 2) + 1, [3]]).astype(np.int8)
        out.append((tokens, cats))
    return out


@pytest.mark.parametrize("seq_len", [1, 7, 16, 64])
def test_concat_every_stream_token_is_a_target_exactly_once(seq_len):
    docs = _docs([5, 0, 30, 3, 17, 40, 1])
    stream = np.concatenate([t for t, _ in docs])
    rows = stack_rows(list(pack_documents(docs, seq_len, "concat", EOS, pad_last=False)))
    n_full = (len(stream) - 1) // seq_len
    assert rows["inputs"].shape == (n_full, seq_len)
    # windows of seq_len + 1 overlapping by one token: inputs = w[:-1], targets = w[1:]
    for r in range(n_full):
        window = stream[r * seq_len: r * seq_len + seq_len + 1]
        np.testing.assert_array_equal(rows["inputs"][r], window[:-1])
        np.testing.assert_array_equal(rows["targets"][r], window[1:])
    np.testing.assert_array_equal(rows["targets"].ravel(), stream[1:1 + n_full * seq_len])
    assert (rows["segment_ids"] == 1).all()
    np.testing.assert_array_equal(rows["positions"], np.broadcast_to(np.arange(seq_len), rows["positions"].shape))
    cats = np.concatenate([c for _, c in docs])
    np.testing.assert_array_equal(rows["categories"].ravel(), cats[1:1 + n_full * seq_len])
    assert (rows["loss_weights"] == 1).all()


def test_concat_last_row_is_padded_with_zero_weight():
    docs = _docs([5, 6])  # stream of 15 tokens -> 14 pairs -> one row of 8 and a padded row of 6
    rows = stack_rows(list(pack_documents(docs, 8, "concat", EOS)))
    assert rows["inputs"].shape == (2, 8)
    assert rows["segment_ids"][1].tolist() == [1] * 6 + [0] * 2
    assert rows["loss_weights"][1].tolist() == [1] * 6 + [0] * 2
    assert rows["categories"][1, 6:].tolist() == [0, 0]


def _attention_mask(segment_ids):
    """Who may attend to whom: same nonzero segment and causal (the model's rule)."""
    s = segment_ids
    same = (s[:, :, None] == s[:, None, :]) & (s[:, :, None] > 0)
    return same & np.tril(np.ones((s.shape[1], s.shape[1]), bool))[None]


@pytest.mark.parametrize("seq_len", [4, 13, 32])
def test_document_mode_never_crosses_documents(seq_len):
    lengths = [5, 0, 30, 3, 17, 40, 1]
    docs = _docs(lengths)
    rows = stack_rows(list(pack_documents(docs, seq_len, "document", EOS)))
    # Rebuild each document from the rows: segment by segment, pairs must be consecutive tokens of ONE document.
    pieces = []
    for r in range(rows["inputs"].shape[0]):
        seg = rows["segment_ids"][r]
        for s in np.unique(seg[seg > 0]):
            idx = np.nonzero(seg == s)[0]
            assert (np.diff(idx) == 1).all()  # a segment is contiguous
            np.testing.assert_array_equal(rows["positions"][r, idx], np.arange(len(idx)))
            pieces.append((rows["inputs"][r, idx], rows["targets"][r, idx]))
    # Concatenating the pieces gives, per document, exactly its (t_i, t_{i+1}) pairs, in order.
    all_inputs = np.concatenate([p[0] for p in pieces])
    all_targets = np.concatenate([p[1] for p in pieces])
    expected_in = np.concatenate([t[:-1] for t, _ in docs])
    expected_tg = np.concatenate([t[1:] for t, _ in docs])
    np.testing.assert_array_equal(all_inputs, expected_in)
    np.testing.assert_array_equal(all_targets, expected_tg)
    assert not ((all_inputs == EOS) & (all_targets == BOS)).any()  # never EOS -> next BOS
    # No attention across documents: within a segment every pair belongs to one document (checked above), and
    # the mask built from segment ids never links positions of different segments.
    mask = _attention_mask(rows["segment_ids"])
    seg = rows["segment_ids"]
    cross = mask & (seg[:, :, None] != seg[:, None, :])
    assert not cross.any()


def test_document_mode_segments_restart_per_row_and_count_from_one():
    docs = _docs([3, 3])  # pairs: 4 + 4 = 8
    rows = stack_rows(list(pack_documents(docs, 6, "document", EOS)))
    assert rows["segment_ids"].tolist() == [[1, 1, 1, 1, 2, 2], [1, 1, 0, 0, 0, 0]]
    assert rows["positions"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 0, 0, 0, 0]]


def test_loss_weights_by_category():
    docs = _docs([10])
    w = LossWeights(text=1.0, thought=0.0, special=0.5)
    rows = stack_rows(list(pack_documents(docs, 11, "concat", EOS, weights=w)))
    table = {0: 0.0, 1: 1.0, 2: 0.0, 3: 0.5}
    expected = np.vectorize(table.get)(rows["categories"]).astype(np.float32)
    np.testing.assert_array_equal(rows["loss_weights"], expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="packing mode"):
        list(pack_documents(_docs([3]), 4, "bestfit", EOS))
    with pytest.raises(ValueError, match="seq_len"):
        list(pack_documents(_docs([3]), 0, "concat", EOS))


def test_document_mode_rows_through_the_model_attention_equal_each_document_alone():
    """Oracle: jax.nn.dot_product_attention on each document piece by itself. The packed row run through the
    project's attention dispatch with the row's segment ids must give the same outputs position by position."""
    import jax
    import jax.numpy as jnp

    from bolt_jax.kernels import attention

    rows = stack_rows(list(pack_documents(_docs([3, 9, 2, 20]), 24, "document", EOS)))
    seg = rows["segment_ids"][:1]
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 24, 4, 8)), jnp.float32) for _ in range(3))
    packed = np.asarray(attention(q, k, v, segment_ids=jnp.asarray(seg), causal=True, impl="xla"))
    for s in np.unique(seg[seg > 0]):
        idx = np.nonzero(seg[0] == s)[0]
        alone = jax.nn.dot_product_attention(q[:, idx], k[:, idx], v[:, idx], is_causal=True)
        np.testing.assert_allclose(packed[0, idx], np.asarray(alone[0]), atol=1e-5)
