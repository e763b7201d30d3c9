"""The LM head and the next-token NLL together, in chunks of positions, with a backward written by hand.

    nll_BxS = token_nll(h_BxSxD, kernel_DxV, targets_BxS, chunk_size)

The fp32 logits of a whole batch are the largest activation of a small model (SmolLM2's M-step: 3.2 GB for 16k
tokens over a 49k vocabulary, against 50 MB for one layer's bf16 MLP activation), so they are computed `chunk_size`
positions at a time and never kept: the forward keeps only the log-normaliser (fp32 [B, S]) and the backward computes
each chunk's logits again. What autodiff of log-softmax would do in that backward, with the chunk rematerialised,
is to run the forward's two reductions (max, then sum of exp) a second time and write the logit cotangent in fp32
before the head's matmuls round it to bf16. Here the saved log-normaliser replaces the reductions, and the cotangent
`(softmax - onehot(target)) * g` is computed in fp32 and written once, in the compute dtype (XLA fuses it into the
recomputed logits' matmul on an H100). By the byte model of the H100 compile, SmolLM2's M-step moves 10% fewer HBM
bytes and TinyLlama's headline step 2.7% fewer (BENCHMARKS.md, "The head and its loss with their own backward").

The kernel's gradient sums over the chunks in fp32 and is rounded once; `h`'s gradient, a chunk at a time, is
rounded to `h`'s dtype as every activation gradient of the model is. The forward's arithmetic is the plain one
(logsumexp of fp32 logits minus the target's logit), so values equal the unchunked expression to rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bolt_jax.model.llama import head_logits
from bolt_jax.parallel import constrain

LOGITS_AXES = ("batch", "act_seq", "act_vocab")


def _logits(h_BxCxD, kernel_DxV):
    """The model's head (fp32 logits from compute-dtype operands), with the logits' sharding."""
    return constrain(head_logits(h_BxCxD, kernel_DxV), LOGITS_AXES)


def _chunk_length(s: int, chunk_size: int) -> int:
    """The chunk length: `chunk_size` when it divides the sequence, else the whole sequence (0 = whole)."""
    chunk = min(chunk_size, s) if chunk_size > 0 else s
    return chunk if s % chunk == 0 else s


def _split(x, chunk: int):
    """[B, S, ...] -> [N, B, C, ...] (N = S / C chunks, leading so that lax.map / scan walk them)."""
    b, s = x.shape[:2]
    return x.reshape(b, s // chunk, chunk, *x.shape[2:]).swapaxes(0, 1)


def _join(x):
    """[N, B, C, ...] -> [B, N * C, ...]."""
    n, b, c = x.shape[:3]
    return x.swapaxes(0, 1).reshape(b, n * c, *x.shape[3:])


def _forward_chunk(h_BxCxD, kernel_DxV, targets_BxC):
    logits = _logits(h_BxCxD, kernel_DxV)
    lse_BxC = jax.nn.logsumexp(logits, axis=-1)
    target_logit_BxC = jnp.take_along_axis(logits, targets_BxC[..., None], axis=-1)[..., 0]
    return lse_BxC - target_logit_BxC, lse_BxC


def _forward(h_BxSxD, kernel_DxV, targets_BxS, chunk_size: int):
    chunk = _chunk_length(h_BxSxD.shape[1], chunk_size)
    if chunk == h_BxSxD.shape[1]:
        return _forward_chunk(h_BxSxD, kernel_DxV, targets_BxS)
    nll, lse = jax.lax.map(lambda xs: _forward_chunk(xs[0], kernel_DxV, xs[1]),
                           (_split(h_BxSxD, chunk), _split(targets_BxS, chunk)))
    return _join(nll), _join(lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def token_nll(h_BxSxD, kernel_DxV, targets_BxS, chunk_size: int):
    """Per-token NLL [B, S] in fp32 of `targets` under logits h @ kernel, `chunk_size` positions at a time (0, or a
    size that does not divide S: one chunk). `h` and `kernel` in the compute dtype."""
    return _forward(h_BxSxD, kernel_DxV, targets_BxS, chunk_size)[0]


def _token_nll_fwd(h_BxSxD, kernel_DxV, targets_BxS, chunk_size: int):
    nll, lse = _forward(h_BxSxD, kernel_DxV, targets_BxS, chunk_size)
    return nll, (h_BxSxD, kernel_DxV, targets_BxS, lse)


def _backward_chunk(h_BxCxD, kernel_DxV, targets_BxC, lse_BxC, g_BxC):
    """d nll / d (h, kernel) of one chunk: the logit cotangent (softmax - onehot) * g in fp32, rounded once."""
    logits = _logits(h_BxCxD, kernel_DxV)
    vocab = jax.lax.broadcasted_iota(targets_BxC.dtype, logits.shape, 2)
    onehot = (vocab == targets_BxC[..., None]).astype(jnp.float32)
    d_logits = ((jnp.exp(logits - lse_BxC[..., None]) - onehot) * g_BxC[..., None]).astype(h_BxCxD.dtype)
    d_logits = constrain(d_logits, LOGITS_AXES)
    dh = jnp.einsum("bcv,dv->bcd", d_logits, kernel_DxV, preferred_element_type=jnp.float32)
    dk = jnp.einsum("bcd,bcv->dv", h_BxCxD, d_logits, preferred_element_type=jnp.float32)
    return dh.astype(h_BxCxD.dtype), dk


def _token_nll_bwd(chunk_size: int, residuals, g_BxS):
    h_BxSxD, kernel_DxV, targets_BxS, lse_BxS = residuals
    chunk = _chunk_length(h_BxSxD.shape[1], chunk_size)
    g_BxS = g_BxS.astype(jnp.float32)
    if chunk == h_BxSxD.shape[1]:
        dh, dk = _backward_chunk(h_BxSxD, kernel_DxV, targets_BxS, lse_BxS, g_BxS)
    else:
        def one(dk_sum, xs):
            dh_chunk, dk_chunk = _backward_chunk(xs[0], kernel_DxV, *xs[1:])
            return dk_sum + dk_chunk, dh_chunk

        parts = tuple(_split(x, chunk) for x in (h_BxSxD, targets_BxS, lse_BxS, g_BxS))
        dk, dh = jax.lax.scan(one, jnp.zeros(kernel_DxV.shape, jnp.float32), parts)
        dh = _join(dh)
    return dh, dk.astype(kernel_DxV.dtype), None


token_nll.defvjp(_token_nll_fwd, _token_nll_bwd)


def model_token_nll(model, h_BxSxD, targets_BxS, chunk_size: int):
    """`token_nll` under a Llama's head (its kernel, or the embedding transposed when tied) in `h`'s dtype."""
    return token_nll(h_BxSxD, model.head_kernel().astype(h_BxSxD.dtype), targets_BxS, chunk_size)
