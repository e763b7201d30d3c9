"""The chunked head + NLL with its own backward (bolt_jax.model.head_loss) against autodiff of the plain expression."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bolt_jax.model.head_loss import token_nll


def plain_nll(h, kernel, targets):
    """The oracle: log-softmax of the whole batch's fp32 logits, autodiff's gradient."""
    logits = jnp.einsum("bsd,dv->bsv", h.astype(jnp.float32), kernel.astype(jnp.float32))
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]


def _inputs(dtype, b=3, s=16, d=24, v=40, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    h = jax.random.normal(keys[0], (b, s, d), jnp.float32).astype(dtype)
    kernel = (0.5 * jax.random.normal(keys[1], (d, v), jnp.float32)).astype(dtype)
    targets = jax.random.randint(keys[2], (b, s), 0, v)
    weights = jax.random.uniform(keys[3], (b, s), jnp.float32)  # a weighted sum, as the loss is
    return h, kernel, targets, weights


def _value_and_grads(f, h, kernel, targets, weights):
    return jax.value_and_grad(lambda h, k: (f(h, k, targets) * weights).sum(), argnums=(0, 1))(h, kernel)


@pytest.mark.parametrize("chunk_size", [0, 16, 4, 5])  # whole, one chunk, four chunks, uneven (-> one chunk)
def test_values_and_gradients_equal_autodiff_fp32(chunk_size):
    h, kernel, targets, weights = _inputs(jnp.float32)
    ours = jax.jit(lambda h, k, t: token_nll(h, k, t, chunk_size))
    np.testing.assert_allclose(ours(h, kernel, targets), plain_nll(h, kernel, targets), rtol=1e-6, atol=1e-6)
    value, grads = _value_and_grads(ours, h, kernel, targets, weights)
    ref_value, ref_grads = _value_and_grads(plain_nll, h, kernel, targets, weights)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bf16_gradients_are_the_exact_ones_rounded_once():
    """In bf16 the kernel's gradient sums the chunks in fp32 and rounds once; h's is rounded to bf16 (after the
    logit cotangent, as every matmul's). Both within a few bf16 steps of the exact gradient of the same operands."""
    h, kernel, targets, weights = _inputs(jnp.bfloat16, s=64, d=32, v=96)
    _, exact = _value_and_grads(plain_nll, h.astype(jnp.float32), kernel.astype(jnp.float32), targets, weights)
    _, ours = _value_and_grads(lambda h, k, t: token_nll(h, k, t, 16), h, kernel, targets, weights)
    for got, want in zip(ours, exact):
        assert got.dtype == jnp.bfloat16
        err = np.abs(np.asarray(got, np.float32) - np.asarray(want))
        assert err.max() <= 4 * 2.0 ** -8 * np.abs(np.asarray(want)).max()
        # relative error of the whole array: bf16 rounding of the cotangent and the result, a fraction of a percent
        assert np.linalg.norm(err) <= 0.01 * np.linalg.norm(np.asarray(want))


def test_target_gradient_is_none_and_integer_targets_pass_through():
    h, kernel, targets, weights = _inputs(jnp.float32)
    vjp_out = jax.vjp(lambda h, k: token_nll(h, k, targets, 4), h, kernel)[1](weights)
    assert len(vjp_out) == 2 and vjp_out[0].shape == h.shape and vjp_out[1].shape == kernel.shape


def test_on_a_mesh_with_the_vocabulary_split_equals_one_device():
    """data=2 x fsdp=2 x tensor=2 (the logits' vocabulary over `tensor`, the batch over data x fsdp, the kernel split
    as the model splits it): the same values and gradients as on one device, four chunks."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from bolt_jax import parallel
    h, kernel, targets, weights = _inputs(jnp.float32, b=4, s=16, d=24, v=48)

    def loss(h, k, t, w):
        return (token_nll(h, k, t, 4) * w).sum()

    expected = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(h, kernel, targets, weights)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with parallel.use_mesh(mesh):
        place = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
        args = (place(h, P(("data", "fsdp"))), place(kernel, P("fsdp", "tensor")),
                place(targets, P(("data", "fsdp"))), place(weights, P(("data", "fsdp"))))
        got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(*args)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
