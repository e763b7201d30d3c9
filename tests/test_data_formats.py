"""Text formats on literal strings (spec 4.1), and the tokenizer (special tokens single ids, categories, errors)."""

import numpy as np
import pytest

from bolt_jax.data import formats as F
from bolt_jax.data.formats import CATEGORY_IDS, FormatError, format_document, render
from bolt_jax.data.tokenizer import TokenizerError, load_tokenizer
from tests.helpers import build_tokenizer

SOL, EOL, PRI, POS = "<|START_OF_LATENT|>", "<|END_OF_LATENT|>", "<|PRIOR_PREFIX|>", "<|POSTERIOR_PREFIX|>"
REC = {"text": "A. B.", "chunks": [{"suffix": "A.", "latent": "za"}, {"suffix": " B.", "latent": "zb"}]}


def test_special_token_strings_are_the_originals():
    assert F.SPECIAL_TOKENS == (SOL, EOL, PRI, POS)


def test_raw():
    assert render(format_document(REC, "raw", np.random.default_rng(0))) == "A. B."
    assert render(format_document({"content": "c"}, None, np.random.default_rng(0))) == "c"
    assert render(F.format_raw({"chunks": REC["chunks"]})) == "A. B."


def test_prior():
    assert render(F.format_prior(REC)) == f"{SOL}{PRI}za{EOL}A.{SOL}{PRI}zb{EOL} B."


def test_posterior():
    assert render(F.format_posterior(REC)) == f"{SOL}{EOL}A.{SOL}{POS}za{EOL}{SOL}{EOL} B.{SOL}{POS}zb{EOL}"


def test_prior_only_has_no_prior_token():
    assert render(F.format_prior_only(REC)) == f"{SOL}za{EOL}A.{SOL}zb{EOL} B."


def test_posterior_only_has_no_posterior_token_nor_marker():
    assert render(F.format_posterior_only(REC)) == f"A.{SOL}za{EOL} B.{SOL}zb{EOL}"


def test_random_flips_one_coin_per_chunk():
    # default_rng(0).random() -> 0.637, 0.270: posterior (>= 0.5), then prior (< 0.5)
    out = render(format_document(REC, "random", np.random.default_rng(0)))
    assert out == f"{SOL}{EOL}A.{SOL}{POS}za{EOL}{SOL}{PRI}zb{EOL} B."
    # default_rng(3).random() -> 0.086, 0.237: prior, prior
    assert render(F.format_random(REC, np.random.default_rng(3))) == render(F.format_prior(REC))
    with pytest.raises(ValueError, match="rng"):
        F.format_random(REC, None)


def test_pure():
    assert render(F.format_pure({"text": "orig", "latent": "para phrase"})) == "para phrase"
    assert render(F.format_pure(REC, bos="<s>", eos="</s>")) == "za</s><s>zb"


def test_missing_latent_gives_the_suffix_alone_and_empty_latent_is_formatted():
    rec = {"chunks": [{"suffix": "A.", "latent": None}, {"suffix": " B.", "latent": ""}]}
    assert render(F.format_prior(rec)) == f"A.{SOL}{PRI}{EOL} B."


def test_mix_in_raw_ratio():
    assert render(format_document(REC, "prior", np.random.default_rng(0), mix_in_raw_ratio=1.0)) == "A. B."
    # ratio 0.5: default_rng(0).random() = 0.637 >= 0.5 -> augmented; the next draw (0.270) is the first coin
    out = render(format_document(REC, "random", np.random.default_rng(0), mix_in_raw_ratio=0.5))
    assert out == f"{SOL}{PRI}za{EOL}A.{SOL}{PRI}zb{EOL} B."
    # default_rng(3).random() = 0.086 < 0.5 -> raw
    assert render(format_document(REC, "random", np.random.default_rng(3), mix_in_raw_ratio=0.5)) == "A. B."


def test_errors():
    with pytest.raises(FormatError, match="chunks"):
        format_document({"text": "x"}, "random", np.random.default_rng(0))
    assert render(format_document({"text": "x"}, "random", np.random.default_rng(0), fall_back_to_raw=True)) == "x"
    with pytest.raises(ValueError, match="latent_type"):
        format_document(REC, "prior_and_posterior", np.random.default_rng(0))
    with pytest.raises(ValueError, match="mix_in_raw_ratio"):
        format_document(REC, "random", np.random.default_rng(0), mix_in_raw_ratio=2.0)


def test_piece_kinds():
    kinds = [(p.text, p.kind) for p in F.format_posterior(REC)][:5]
    assert kinds == [(SOL, "special"), (EOL, "special"), ("A.", "text"), (SOL, "special"), (POS, "special")]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(build_tokenizer(tmp_path_factory.mktemp("tok")))


def test_tokenizer_special_ids_and_parity_with_transformers(tok):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tok.path)
    assert tok.special_ids == {t: hf.convert_tokens_to_ids(t) for t in F.SPECIAL_TOKENS}
    assert sorted(tok.special_ids.values()) == [508, 509, 510, 511]  # appended after the 508 base tokens
    text = f"{SOL}{PRI}Natalia sold 48/2 = 24 clips.{EOL} She sold 72.{SOL}{EOL}"
    assert tok.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(tok.encode(text)) == text


def test_encode_document_adds_bos_eos_and_categories(tok):
    pieces = F.format_prior({"chunks": [{"suffix": " 12 apples.", "latent": "3 * 4 = 12"}]})
    tokens, cats = tok.encode_document(pieces)
    assert tokens[0] == tok.bos_id and tokens[-1] == tok.eos_id
    assert tokens[1:-1].tolist() == tok.encode(render(pieces))
    z_ids, x_ids = tok.encode("3 * 4 = 12"), tok.encode(" 12 apples.")
    expected = ([3, 3, 3] + [CATEGORY_IDS["thought"]] * len(z_ids) + [3] + [CATEGORY_IDS["text"]] * len(x_ids)
                + [3])
    assert cats.tolist() == expected


def test_tokenizer_without_bolt_tokens_is_a_clear_error(tmp_path):
    path = build_tokenizer(tmp_path / "plain", add_bolt_tokens=False)
    with pytest.raises(TokenizerError, match="START_OF_LATENT.*not one"):
        load_tokenizer(path)
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_estep_posterior_prompt_and_joint_literal():
    assert F.posterior_prompt("N/A", "x1.") == f"x1.{SOL}{POS}"
    assert F.posterior_prompt("", "x1.") == f"x1.{SOL}{POS}"
    assert F.posterior_prompt("p0.", " x1.") == f"p0.{SOL}{EOL} x1.{SOL}{POS}"
    assert F.joint_text("N/A", "z", "x1.") == ("", f"{SOL}{PRI}z{EOL}x1.")
    assert F.joint_text("p0.", "z", " x1.") == ("p0.", f"{SOL}{PRI}z{EOL} x1.")
