"""Chunking on crafted documents (spec 2.5): units, boundaries, prefixes, seeds, and the original's crash cases."""

import hashlib
import math

import numpy as np
import pytest

from bolt_jax.data.chunking import ChunkingConfig, chunk_boundaries, chunk_text, split_paragraphs, split_units

DOC = "One is first. Two follows! Is three next?\n\nFour starts a paragraph. Five ends it.\n\nSix. Seven. Eight."


def test_sentence_units_literal():
    assert split_units(DOC) == ["One is first.", " Two follows!", " Is three next?\n\n", "Four starts a paragraph.",
                                " Five ends it.\n\n", "Six.", " Seven.", " Eight."]


def test_paragraph_and_word_modes():
    assert split_paragraphs(DOC) == ["One is first. Two follows! Is three next?\n\n",
                                     "Four starts a paragraph. Five ends it.\n\n", "Six. Seven. Eight."]
    assert split_units("a  b\nc ", "word") == ["a", "  b", "\nc "]


@pytest.mark.parametrize("text", [DOC, "\n\nLeading newlines. Then text.", "Ends in blank line.\n\n   ",
                                  "Only one", "  \n\n  ", "x.\r\n\r\ny.", "Dr. Smith came. He sat."])
def test_units_concatenate_back_to_the_text(text):
    assert "".join(split_units(text)) == text


def test_whitespace_only_tail_does_not_crash():
    # The original raises IndexError here (spec 11.16); we attach the whitespace to the last unit.
    assert split_units("Ends in blank line. Yes.\n\n   ") == ["Ends in blank line.", " Yes.\n\n   "]


def test_leading_newlines_are_kept_with_the_first_unit():
    assert split_units("\n\nAlpha beta. Gamma delta.") == ["\n\nAlpha beta.", " Gamma delta."]


def test_empty_document_has_no_chunks():
    assert chunk_text("") == []
    assert chunk_text("   \n\n ") != []  # whitespace is text: one chunk holding it, nothing lost
    assert "".join(c.suffix for c in chunk_text("   \n\n ")) == "   \n\n "


def _oracle_lengths(text, total, avg, lo, hi, seed):
    """The spec's formula, written out: md5 seeding and Poisson(avg - min) + min capped."""
    rng = np.random.default_rng((int(hashlib.md5(text.encode()).hexdigest(), 16) + seed) & 0xFFFFFFFF)
    out, left = [], total
    while left > 0:
        n = min(int(rng.poisson(avg - lo)) + lo, hi, left)
        out.append(n)
        left -= n
    return out


@pytest.mark.parametrize("seed", [42, 7])
def test_random_boundaries_match_the_spec_formula(seed):
    text = " ".join(f"Sentence number {i} is here." for i in range(60))
    cfg = ChunkingConfig(units_per_chunk=8, min_units_per_chunk=1, max_units_per_chunk=20, chunk_seed=seed)
    bounds = chunk_boundaries(text, 60, cfg)
    assert bounds == [0] + np.cumsum(_oracle_lengths(text, 60, 8, 1, 20, seed)).tolist()
    assert bounds[-1] == 60 and all(1 <= b - a <= 20 for a, b in zip(bounds, bounds[1:]))


def test_seeds_and_text_change_the_boundaries():
    text = " ".join(f"Sentence {i}." for i in range(80))
    b42 = chunk_boundaries(text, 80, ChunkingConfig(chunk_seed=42))
    assert b42 == chunk_boundaries(text, 80, ChunkingConfig(chunk_seed=42))
    assert b42 != chunk_boundaries(text, 80, ChunkingConfig(chunk_seed=43))
    assert b42 != chunk_boundaries(text + " ", 80, ChunkingConfig(chunk_seed=42))


def test_max_cap_and_min_assertion():
    text = " ".join(f"S {i}." for i in range(50))
    bounds = chunk_boundaries(text, 50, ChunkingConfig(units_per_chunk=30, max_units_per_chunk=4))
    assert max(b - a for a, b in zip(bounds, bounds[1:])) <= 4
    with pytest.raises(ValueError, match="0 < min"):
        chunk_boundaries(text, 50, ChunkingConfig(units_per_chunk=1, min_units_per_chunk=1))


def test_uniform_chunking_literal():
    # 10 units, avg 4: ceil(10/4) = 3 chunks, linspace(0, 10, 4) = [0, 3.33, 6.67, 10] -> [0, 3, 6, 10]
    assert chunk_boundaries("x", 10, ChunkingConfig.elbo(units_per_chunk=4)) == [0, 3, 6, 10]
    assert math.ceil(8 / 8) == 1 and chunk_boundaries("x", 8, ChunkingConfig.elbo()) == [0, 8]


def test_units_per_chunk_none_uses_num_chunks():
    cfg = ChunkingConfig(units_per_chunk=None, num_chunks=4, random_chunking=False)
    assert chunk_boundaries("x", 20, cfg) == [0, 5, 10, 15, 20]


UNIFORM = dict(units_per_chunk=2, random_chunking=False)  # 8 units of DOC -> 4 chunks of 2


def test_pairs_previous_one_chunk():
    pairs = chunk_text(DOC, ChunkingConfig(**UNIFORM, num_prefix_chunks=1))
    assert [p.suffix for p in pairs] == ["One is first. Two follows!", " Is three next?\n\nFour starts a paragraph.",
                                         " Five ends it.\n\nSix.", " Seven. Eight."]
    assert [p.prefix for p in pairs] == ["N/A", "One is first. Two follows!",
                                         " Is three next?\n\nFour starts a paragraph.", " Five ends it.\n\nSix."]


def test_pairs_previous_three_chunks_and_all_prefix():
    p2 = chunk_text(DOC, ChunkingConfig(**UNIFORM, num_prefix_chunks=2))
    assert p2[3].prefix == " Is three next?\n\nFour starts a paragraph. Five ends it.\n\nSix."
    assert p2[2].prefix == "One is first. Two follows! Is three next?\n\nFour starts a paragraph."
    p3 = chunk_text(DOC, ChunkingConfig(**UNIFORM, num_prefix_chunks=3))
    assert p3[3].prefix == "".join(p.suffix for p in p3[:3])
    everything = chunk_text(DOC, ChunkingConfig(**UNIFORM, include_all_prefix=True))
    for i, p in enumerate(everything[1:], 1):
        assert p.prefix == "".join(q.suffix for q in everything[:i])
    assert "".join(p.suffix for p in everything) == DOC


def test_presets():
    assert ChunkingConfig.estep().num_prefix_chunks == 3
    elbo = ChunkingConfig.elbo()
    assert not elbo.random_chunking and elbo.include_all_prefix and elbo.units_per_chunk == 8
