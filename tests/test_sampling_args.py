"""The sampler refuses arguments that would sample from something other than what was asked (one-line ValueErrors
naming the argument and its allowed range), and still takes the edge values that are allowed."""

import math
import re

import numpy as np
import pytest
from flax import nnx

from bolt_jax.model import Llama, LlamaConfig
from bolt_jax.sampling import generate

V = 64
PROMPTS = [[1, 5, 9, 33], [1, 7]]


@pytest.fixture(scope="module")
def model():
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=128, compute_dtype="float32")
    return Llama(cfg, nnx.Rngs(0))


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_p=0.0), "top_p=0.0 must be in (0, 1]"),
    (dict(top_p=-0.5), "top_p=-0.5 must be in (0, 1]"),
    (dict(top_p=1.5), "top_p=1.5 must be in (0, 1]"),
    (dict(top_p=math.nan), "top_p=nan must be in (0, 1]"),
    (dict(temperature=-1.0), "temperature=-1.0 must be a finite number >= 0"),
    (dict(temperature=math.nan), "temperature=nan must be a finite number >= 0"),
    (dict(temperature=math.inf), "temperature=inf must be a finite number >= 0"),
    (dict(temperature=0.0), "temperature=0 needs greedy=True"),
    (dict(top_k=-1), "top_k=-1 must be >= 0"),
    (dict(n=0), "n=0 must be >= 1"),
    (dict(n=-2), "n=-2 must be >= 1"),
    (dict(max_new_tokens=0), "max_new_tokens=0 must be >= 1"),
    (dict(banned_token_ids=[3, V]), f"banned_token_ids [{V}] must be in [0, vocab_size={V})"),
    (dict(banned_token_ids=[-1]), f"banned_token_ids [-1] must be in [0, vocab_size={V})"),
    (dict(stop_token_ids=[2, V + 5]), f"stop_token_ids [{V + 5}] must be in [0, vocab_size={V})"),
    (dict(stop_token_ids=[-1]), f"stop_token_ids [-1] must be in [0, vocab_size={V})"),
    (dict(banned_token_ids=list(range(V))), f"banned_token_ids ban all {V} tokens"),
    (dict(banned_token_ids=list(range(V)), greedy=True), f"banned_token_ids ban all {V} tokens"),
], ids=lambda x: repr(x) if isinstance(x, dict) else "")
def test_bad_arguments_are_refused_in_one_line(model, kwargs, message):
    args = dict(max_new_tokens=4) | kwargs
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        generate(model, PROMPTS, **args)
    assert "\n" not in str(err.value)


def test_temperature_zero_is_allowed_with_greedy(model):
    a = generate(model, PROMPTS, max_new_tokens=4, greedy=True, temperature=0.0)
    b = generate(model, PROMPTS, max_new_tokens=4, greedy=True)
    assert a.tokens == b.tokens and np.array_equal(a.logq, b.logq)


def test_edge_values_that_are_allowed(model):
    # a tiny top_p keeps only the most likely token: the same tokens as greedy decoding
    greedy = generate(model, PROMPTS, max_new_tokens=4, greedy=True)
    tiny = generate(model, PROMPTS, max_new_tokens=4, top_p=1e-6, top_k=0, seed=1)
    assert tiny.tokens == greedy.tokens
    # every token banned but one: that token each step, with log q 0; stop ids at both ends of the range
    only = generate(model, PROMPTS, n=2, max_new_tokens=4, top_p=1.0, banned_token_ids=list(range(V - 1)),
                    stop_token_ids=[0, V - 2], seed=2)
    assert only.tokens == [[V - 1] * 4] * 4 and np.allclose(only.logq, 0.0)
