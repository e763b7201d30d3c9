"""Mesh, rules and sharded model creation on 8 simulated devices; the oracle is the single-device model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from bolt_jax import parallel
from bolt_jax.model import create_model, preset


def test_eight_simulated_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize("sizes, shape", [
    ({"data": 2, "fsdp": 2, "tensor": 2}, (2, 2, 2)),
    ({"fsdp": -1}, (1, 8, 1)),
    ({"data": 2, "fsdp": -1, "tensor": 2}, (2, 2, 2)),
    ({"data": -1, "tensor": 4}, (2, 1, 4)),
])
def test_mesh_shape_resolution(sizes, shape):
    assert parallel.resolve_mesh_shape(sizes, 8) == shape


@pytest.mark.parametrize("sizes, message", [
    ({"data": 3, "fsdp": -1}, "do not divide"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, "needs 4 devices but 8 are available"),
    ({"data": -1, "fsdp": -1}, "at most one"),
    ({"pipeline": 2}, "unknown mesh axes"),
])
def test_bad_mesh_fails_clearly(sizes, message):
    with pytest.raises(ValueError, match=message):
        parallel.resolve_mesh_shape(sizes, 8)


def test_logical_to_spec_uses_each_mesh_axis_once_and_skips_indivisible():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert parallel.logical_to_spec(("layers", "embed", "mlp")) == P(None, "fsdp", "tensor")
    assert parallel.logical_to_spec(("batch", "act_seq")) == P(("data", "fsdp"), None)
    assert parallel.logical_to_spec(("mlp", "vocab")) == P("tensor", None)  # 'tensor' already taken
    assert parallel.logical_to_spec(("vocab", "embed"), mesh=mesh, shape=(7, 64)) == P(None, "fsdp")
    with parallel.logical_rules({"vocab": None}):
        assert parallel.logical_to_spec(("vocab", "embed")) == P(None, "fsdp")
    with pytest.raises(ValueError, match="unknown mesh axis"):
        parallel.normalize_rules({"vocab": "model"})


def _tokens(cfg, batch=8, seq=16):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32)
    segs = np.repeat(np.array([[1] * 6 + [2] * 10]), batch, axis=0).astype(np.int32)
    pos = np.concatenate([np.arange(6), np.arange(10)])[None].repeat(batch, 0).astype(np.int32)
    return tokens, segs, pos


def test_sharded_forward_equals_single_device_and_shardings_follow_rules():
    cfg = preset("tiny", compute_dtype="float32", num_attention_heads=4, num_key_value_heads=2)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = create_model(cfg, mesh, seed=7)
    single = create_model(cfg, None, seed=7)

    # every parameter carries exactly the sharding the rules table gives for its logical axes
    for path, var in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        expected = parallel.logical_to_spec(var.get_metadata()["axes"], mesh=mesh, shape=var.shape)
        assert var[...].sharding.spec == expected, path
        assert var[...].sharding.mesh.shape == mesh.shape
    specs = parallel.state_specs(nnx.state(sharded, nnx.Param), mesh)
    assert specs["layers/self_attn/q_proj/kernel"] == P(None, "fsdp", "tensor")
    assert specs["layers/mlp/down_proj/kernel"] == P(None, "tensor", "fsdp")
    assert specs["embed_tokens"] == P("tensor", "fsdp")
    assert specs["layers/input_layernorm/weight"] == P(None, None)
    # created in place: each device holds a quarter of q_proj (fsdp x tensor), not the whole
    q = sharded.layers.self_attn.q_proj.kernel[...]
    assert q.addressable_shards[0].data.shape == (cfg.num_hidden_layers, cfg.hidden_size // 2, cfg.q_size // 2)

    for a, b in zip(jax.tree.leaves(nnx.state(sharded)), jax.tree.leaves(nnx.state(single))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    tokens, segs, pos = _tokens(cfg)
    ref = np.asarray(single(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(segs)))
    batch = parallel.shard_batch({"tokens": tokens, "segs": segs, "pos": pos}, mesh)
    assert batch["tokens"].sharding.spec == P(("data", "fsdp"), None)

    @nnx.jit
    def forward(m, t, p, s):
        return m(t, p, s)

    with jax.set_mesh(mesh):
        out = forward(sharded, batch["tokens"], batch["pos"], batch["segs"])
    assert out.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_batch_divisor():
    assert parallel.batch_divisor(parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})) == 4
    assert parallel.batch_divisor(parallel.make_mesh({"fsdp": -1})) == 8


def test_rules_from_config_strings():
    from bolt_jax.config import base_config
    c = base_config()
    rules = dict(parallel.normalize_rules(dict(c.rules)))
    assert rules == dict(parallel.DEFAULT_RULES)
    c.rules.vocab = ""
    c.rules.batch = "data"
    rules = dict(parallel.normalize_rules(dict(c.rules)))
    assert rules["vocab"] is None and rules["batch"] == "data"


@pytest.mark.parametrize("impl", ["pallas_gpu", "mosaic_gpu"])
def test_custom_call_kernels_run_per_shard_on_a_mesh(impl):
    """Pallas / Mosaic kernels are custom calls XLA cannot partition: under a mesh the dispatch runs them per shard
    (rows over data x fsdp, KV heads over tensor), with the same values and gradients as one device."""
    from bolt_jax import kernels
    from bolt_jax.kernels.xla import xla_attention
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(4, 128, h, 64)), jnp.float32) for h in (8, 2, 2))
    seg = jnp.asarray(np.repeat([[1] * 50 + [2] * 78], 4, 0), jnp.int32)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    attend = lambda q, k, v: kernels.attention(q, k, v, segment_ids=seg, impl=impl)  # noqa: E731
    with jax.set_mesh(mesh):
        jaxpr = str(jax.make_jaxpr(attend)(q, k, v))
        got = jax.jit(jax.value_and_grad(loss(attend), argnums=(0, 1, 2)))(q, k, v)
    assert "shard_map" in jaxpr
    ref = lambda q, k, v: xla_attention(q, k, v, q_segment_ids_BxS=seg, kv_segment_ids_BxT=seg)  # noqa: E731
    want = jax.value_and_grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    # the loss is a float32 sum over every output element (about 222 here): compare it relatively; jax 0.12.1's CPU
    # reductions round it 8e-7 apart from the reference
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5)


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu", "mosaic_gpu"])
def test_decode_kernel_runs_per_shard_on_a_mesh(impl):
    from bolt_jax import kernels
    from bolt_jax.kernels.decode import xla_decode_attention
    rng = np.random.default_rng(1)
    d = 64 if impl == "mosaic_gpu" else 32  # wgmma's head tiles
    q = jnp.asarray(rng.normal(size=(4, 1, 8, d)), jnp.float32)
    kc, vc = (jnp.asarray(rng.normal(size=(4, 128, 2 * d)), jnp.float32) for _ in range(2))
    seg = jnp.ones((4, 128), jnp.int32).at[1, :9].set(0)
    lengths = jnp.asarray([128, 40, 1, 77], jnp.int32)
    kw = dict(kv_segment_ids_BxT=seg, lengths_B=lengths)
    with jax.set_mesh(parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})):
        got = jax.jit(lambda *a: kernels.decode_attention(*a, impl=impl, **kw))(q, kc, vc)
    np.testing.assert_allclose(np.asarray(got), np.asarray(xla_decode_attention(q, kc, vc, **kw)), atol=2e-6)


def _abstract_state(vocab_size: int):
    from bolt_jax.model.llama import Llama
    cfg = preset("tiny", vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2)
    return nnx.split(nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0))))[1]


def test_an_indivisible_dimension_is_replicated_loudly_and_the_sharding_check_sees_it(caplog):
    """vocab 130 on tensor=4 cannot be split: the embedding and head sit whole on every device, with a warning;
    check_sharding measures the replicated bytes against numpy arithmetic on the shapes."""
    mesh = parallel.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    good, bad = _abstract_state(128), _abstract_state(130)
    with caplog.at_level("WARNING", logger="bolt_jax.parallel"):
        parallel.state_shardings(bad, mesh)
    assert any("'vocab' of size 130" in r.getMessage() and "REPLICATED" in r.getMessage() for r in caplog.records)
    # oracle: per device, a parameter split over mesh axes of total size s holds bytes / s
    n = mesh.devices.size
    for state, _vocab in ((good, 128), (bad, 130)):
        total = per_device = 0
        for _, var in nnx.to_flat_state(state):
            size = int(np.prod(var.shape)) * 4
            spec = parallel.logical_to_spec(parallel.variable_axes(var), mesh=mesh, shape=var.shape)
            split = int(np.prod([mesh.shape[a] for e in spec if e is not None for a in (e if isinstance(e, tuple)
                                                                                          else (e,))]))
            total, per_device = total + size, per_device + size / split
        expected = (per_device - total / n) / total
        assert parallel.replicated_fraction(state, mesh) == pytest.approx(expected)
    assert parallel.replicated_fraction(bad, mesh) > parallel.replicated_fraction(good, mesh) + 0.05
    parallel.check_sharding(good, mesh, max_replicated=0.05)
    with pytest.raises(ValueError, match="replicated beyond each device's share"):
        parallel.check_sharding(bad, mesh, max_replicated=0.05)
