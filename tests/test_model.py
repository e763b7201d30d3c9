"""The Llama against its oracle, transformers.LlamaForCausalLM (PyTorch), and its structural invariants."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from bolt_jax.model import TINYLLAMA_1_1B, Llama, LlamaConfig, param_count, preset
from bolt_jax.model.hf_layout import hf_from_params, load_params_into, params_from_hf
from bolt_jax.model.llama import pure_dict
from tests.helpers import build_hf_model, hf_logits


def load_hf_dir(model_dir, **runtime) -> Llama:
    cfg = LlamaConfig.from_hf_json(str(model_dir), **runtime)
    model = Llama(cfg, nnx.Rngs(123))
    tensors = load_file(str(model_dir / "model.safetensors"))
    load_params_into(model, params_from_hf(cfg, tensors.__getitem__))
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def hf_dir(request, tmp_path_factory):
    return build_hf_model(tmp_path_factory.mktemp("hf"), tie=request.param, tokenizer=False)


def test_logits_match_transformers_fp32(hf_dir):
    from pathlib import Path
    model = load_hf_dir(Path(hf_dir), compute_dtype="float32")
    tokens = np.random.default_rng(0).integers(0, 512, (2, 24))
    ref = hf_logits(hf_dir, tokens)
    ours = np.asarray(model(jnp.asarray(tokens)))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_bf16_compute_close_to_transformers(hf_dir):
    from pathlib import Path
    model = load_hf_dir(Path(hf_dir), compute_dtype="bfloat16")
    assert model.layers.self_attn.q_proj.kernel[...].dtype == jnp.float32  # fp32 master weights
    tokens = np.random.default_rng(1).integers(0, 512, (2, 16))
    ref = hf_logits(hf_dir, tokens)
    ours = np.asarray(model(jnp.asarray(tokens)))
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 0.05  # bf16 rounding of a 2-layer model with 0.02-std weights


def test_hf_layout_round_trip_is_exact(hf_dir):
    from pathlib import Path
    model = load_hf_dir(Path(hf_dir))
    tensors = load_file(str(Path(hf_dir) / "model.safetensors"))
    back = dict(hf_from_params(model.config, pure_dict(nnx.state(model, nnx.Param))))
    assert set(back) == set(tensors) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    for name, value in back.items():
        np.testing.assert_array_equal(value, tensors[name], err_msg=name)


def test_gradients_match_transformers_fp32(hf_dir):
    """Every parameter's gradient of the next-token loss against PyTorch's autograd on the same HF model (fp32): the
    backward passes written by hand (the head's, the SwiGLU's, and the training loss's head + NLL) and everything
    autodiff derives, in HF's names."""
    from pathlib import Path

    import torch
    from transformers import LlamaForCausalLM

    from bolt_jax.model.head_loss import model_token_nll
    model = load_hf_dir(Path(hf_dir), compute_dtype="float32")
    tokens = np.random.default_rng(1).integers(0, 512, (2, 25))
    inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])

    def logits_loss(m):  # the model's logits, autodiff's log-softmax
        logp = jax.nn.log_softmax(m(inputs), axis=-1)
        return -jnp.take_along_axis(logp, targets[..., None], axis=-1).mean()

    def training_loss(m):  # the training loss's path: the head and NLL in three chunks with their own backward
        return model_token_nll(m, m.hidden_states(inputs), targets, chunk_size=8).mean()

    hf = LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    hf(torch.tensor(tokens), labels=torch.tensor(tokens)).loss.backward()
    theirs = {name: p.grad.numpy() for name, p in hf.named_parameters()}
    for loss_fn in (logits_loss, training_loss):
        grads = nnx.grad(loss_fn)(model)
        ours = dict(hf_from_params(model.config, pure_dict(nnx.state(grads, nnx.Param))))
        assert set(ours) <= set(theirs) and len(ours) >= 2 + 9 * model.config.num_hidden_layers
        for name, value in ours.items():
            scale = np.abs(theirs[name]).max()
            np.testing.assert_allclose(value, theirs[name], atol=2e-5 * scale, rtol=0,
                                       err_msg=f"{loss_fn.__name__}: {name}")


def test_swiglu_backward_equals_autodiff():
    """The SwiGLU's hand-written backward against autodiff of silu(gate) * up: equal in fp32 to rounding; in bf16
    within one bf16 step of the exact gradient rounded to bf16 (it computes in fp32 and rounds once)."""
    from bolt_jax.model.llama import swiglu
    keys = jax.random.split(jax.random.key(0), 3)
    gate, up, ct = (4 * jax.random.normal(k, (64, 96), jnp.float32) for k in keys)

    def grads(f, *xs):
        return jax.grad(lambda g, u: (f(g, u) * xs[2]).sum(), argnums=(0, 1))(xs[0], xs[1])

    reference = grads(lambda g, u: jax.nn.silu(g) * u, gate, up, ct)
    for ours, ref in zip(grads(swiglu, gate, up, ct), reference):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    low = [x.astype(jnp.bfloat16) for x in (gate, up, ct)]
    exact = grads(lambda g, u: jax.nn.silu(g) * u, *[x.astype(jnp.float32) for x in low])
    for ours, ref in zip(grads(swiglu, *low), exact):
        assert ours.dtype == jnp.bfloat16
        rounded = np.asarray(ref.astype(jnp.bfloat16), np.float32)
        ulp = np.spacing(np.abs(rounded).astype(np.float32)) * 2.0 ** 16  # bf16 keeps 16 bits fewer than fp32
        assert np.all(np.abs(np.asarray(ours, np.float32) - rounded) <= ulp)
    np.testing.assert_array_equal(swiglu(*low[:2]), jax.nn.silu(low[0]) * low[1])


def test_packed_documents_equal_separate_runs():
    cfg = preset("tiny", compute_dtype="float32")
    model = Llama(cfg, nnx.Rngs(0))
    rng = np.random.default_rng(2)
    lengths = [5, 9, 7]
    docs = [rng.integers(0, cfg.vocab_size, n) for n in lengths]
    tokens = np.concatenate(docs)[None]
    segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])[None]
    positions = np.concatenate([np.arange(n) for n in lengths])[None]
    packed = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids)))
    start = 0
    for doc in docs:
        alone = np.asarray(model(jnp.asarray(doc[None])))
        np.testing.assert_allclose(packed[:, start:start + len(doc)], alone, atol=1e-5)
        start += len(doc)
    # without segment ids the later documents see the earlier ones: the mask is what makes them equal
    unmasked = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions)))
    assert np.abs(unmasked[:, lengths[0]:] - packed[:, lengths[0]:]).max() > 1e-3


@pytest.mark.parametrize("policy", ["full", "dots", "save_attn_out"])
def test_remat_and_unrolled_layers_do_not_change_values(policy):
    base = preset("tiny", compute_dtype="float32")
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, base.vocab_size, (2, 12)))

    def loss_and_grad(cfg):
        model = Llama(cfg, nnx.Rngs(0))
        loss_fn = lambda m: jnp.mean(jax.nn.log_softmax(m(tokens))[..., 0])  # noqa: E731
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        return loss, jax.tree.leaves(grads)

    ref_loss, ref_grads = loss_and_grad(base.replace(scan_layers=True))
    for cfg in (base.replace(scan_layers=True, remat_policy=policy), base.replace(scan_layers=False),
                base.replace(scan_layers=False, remat_policy=policy)):
        loss, grads = loss_and_grad(cfg)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        for g, r in zip(grads, ref_grads):
            np.testing.assert_allclose(g, r, atol=1e-6)


def test_tinyllama_parameter_count_from_eval_shape():
    assert param_count(TINYLLAMA_1_1B) == 1_100_048_384
    assert TINYLLAMA_1_1B.num_params() == 1_100_048_384
    assert param_count(preset("tinyllama_1.1b_bolt")) == 1_100_048_384 + 2 * 4 * 2048


def test_tinyllama_flops_per_token_by_hand_from_layer_shapes():
    """The MFU convention (LlamaConfig.flops_per_token's docstring), computed here from TinyLlama's layer shapes."""
    d, f, layers, kv, seq = 2048, 5632, 22, 4 * 64, 2048
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * f + 2 * d  # q, k and v, o, gate/up/down, two RMSNorms
    for vocab in (32000, 32004):  # TinyLlama, and with the four BoLT tokens
        head = d * vocab  # the untied LM head counts; the input embedding (a lookup) does not
        by_hand = 6 * (layers * per_layer + d + head) + 6 * layers * seq * d  # + final norm; + causal attention
        cfg = TINYLLAMA_1_1B.replace(vocab_size=vocab)
        assert cfg.flops_per_token(seq) == by_hand
        assert abs(cfg.flops_per_token(seq) - 6.76e9) < 0.01e9
    # the original's count (quoted figures only): 6 N_nonembed + 3.5 x 4LSD/2 = 6.46 GFLOP/token
    n_nonembed = 1_100_048_384 - 2 * 32000 * 2048
    assert TINYLLAMA_1_1B.flops_per_token_original(seq) == 6 * n_nonembed + 3.5 * (4 * 22 * 2048 * 2048 / 2)
    assert abs(TINYLLAMA_1_1B.flops_per_token_original(seq) - 6.46e9) < 0.01e9


def test_config_json_reads_transformers5_and_legacy_and_writes_loadable(tmp_path):
    from transformers import LlamaConfig as HFConfig

    v5 = HFConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=5000.0)
    v5.save_pretrained(tmp_path / "v5")
    on_disk = json.loads((tmp_path / "v5" / "config.json").read_text())
    assert "rope_theta" not in on_disk and on_disk["rope_parameters"]["rope_theta"] == 5000.0
    ours = LlamaConfig.from_hf_json(str(tmp_path / "v5"))
    assert ours.rope_theta == 5000.0 and ours.num_key_value_heads == 2 and ours.head_size == 8

    legacy = dict(on_disk)
    legacy.pop("rope_parameters")
    legacy["rope_theta"] = 7000.0
    assert LlamaConfig.from_hf_dict(legacy).rope_theta == 7000.0

    ours.write_hf_json(str(tmp_path / "ours"))
    reloaded = HFConfig.from_pretrained(tmp_path / "ours")
    assert reloaded.rope_parameters["rope_theta"] == 5000.0
    assert (reloaded.num_key_value_heads, reloaded.head_dim, reloaded.vocab_size) == (2, 8, 100)
    assert LlamaConfig.from_hf_json(str(tmp_path / "ours")) == ours


@pytest.mark.parametrize("bad, message", [
    (dict(num_attention_heads=4, num_key_value_heads=3), "not divisible by num_key_value_heads"),
    (dict(compute_dtype="fp8"), "compute_dtype"),
    (dict(remat_policy="sometimes"), "remat_policy"),
    (dict(hidden_size=0), "hidden_size must be positive"),
])
def test_bad_model_config_fails_clearly(bad, message):
    with pytest.raises(ValueError, match=message):
        preset("tiny", **bad)


def test_unsupported_rope_scaling_is_refused():
    hf = LlamaConfig().to_hf_dict()
    hf["rope_parameters"] = {"rope_theta": 10000.0, "rope_type": "llama3", "factor": 8.0}
    with pytest.raises(ValueError, match="llama3"):
        LlamaConfig.from_hf_dict(hf)
