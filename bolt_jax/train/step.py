"""The jitted M-step: loss, gradient accumulation over micro-batches, one clipped AdamW update.

The loss is the token-weighted mean of the next-token NLL over the whole global batch, so accumulating A
micro-batches gives exactly the gradient of one batch A times larger (the original divides each micro-batch's mean
by A, which differs when micro-batches hold different numbers of target tokens). The head and log-softmax run in
sequence chunks with their own backward (bolt_jax.model.head_loss), so the fp32 logits of a batch never sit in memory
at once.

A step is applied only when it is finite throughout: the loss and gradient norm (computed from the parameters before
the update) and the updated parameters and optimizer state themselves (a finite gradient can still give a
non-finite update: a learning rate whose product with the update overflows; optim.eps=0 with a zero gradient would,
but validation refuses eps=0). Otherwise the state is left as it was, and the loop stops on the step's `finite` flag
before any checkpoint of it is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bolt_jax.data.formats import CATEGORY_IDS
from bolt_jax.model.head_loss import model_token_nll
from bolt_jax.parallel import constrain

CATEGORIES = CATEGORY_IDS  # a target position's category, for the loss split (0 = not a target)
BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_weights", "categories")


def loss_sums(model, batch: dict[str, jax.Array], chunk_size: int,
              document_mask: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sum of weighted NLL over the batch, and per-category sums and counts for the loss split.

    `document_mask=False` (the original's concatenate-and-split packing, where a row is one causal stream) passes no
    segment ids to attention: plain causal attention, which cuDNN runs 1.45x faster than with a dense mask.
    """
    segment_ids = batch["segment_ids"] if document_mask else None
    h = model.hidden_states(batch["inputs"], batch["positions"], segment_ids)
    nll = model_token_nll(model, h, batch["targets"], chunk_size)
    weights = batch["loss_weights"].astype(jnp.float32)
    total = jnp.sum(nll * weights)
    aux = {"weight": jnp.sum(weights)}
    for name, cat in CATEGORIES.items():
        is_cat = (batch["categories"] == cat).astype(jnp.float32)
        aux[f"nll_{name}"] = jnp.sum(nll * is_cat)
        aux[f"count_{name}"] = jnp.sum(is_cat)
    return total, aux


def split_micro_batches(batch: dict[str, jax.Array], accum_steps: int) -> dict[str, jax.Array]:
    """[B, S] -> [A, B/A, S]; micro-batch a takes rows a, a+A, ... so every micro-batch spans all devices."""
    def split(x):
        b = x.shape[0]
        x = x.reshape(b // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
        return constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
    return {k: split(v) for k, v in batch.items()}


def all_finite(tree: Any) -> jax.Array:
    """One on-device flag: every floating-point leaf of `tree` is finite (integer leaves, e.g. Adam's count, are
    skipped). A reduction per leaf and one over the leaves: cheap next to the update itself."""
    flags = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(flags).all() if flags else jnp.array(True)


def update_is_finite(tx: optax.GradientTransformation, grads, opt_state, params) -> jax.Array:
    """Whether the update would leave the parameters and optimizer state finite (a finite loss and gradient can
    still give non-finite parameters: an overflowing learning rate), computed before the update is applied.

    The update is computed twice on purpose: here only to reduce to one flag (reading params, gradients and state,
    writing nothing), then again where it is applied, fused with the select that keeps the old state on a non-finite
    step and written in place. Computed once, XLA writes the new state out and then reads it and the old state again
    to select (35 GB per TinyLlama step); computed twice, the H100 compile's byte model counts 10.4 GB less per step
    in all (BENCHMARKS.md). The barrier keeps XLA from merging the two computations back into one.
    """
    opt_state, params = jax.lax.optimization_barrier((opt_state, params))
    updates, new_opt_state = tx.update(grads, opt_state, params)
    return all_finite((optax.apply_updates(params, updates), new_opt_state))


def apply_update_if_finite(tx: optax.GradientTransformation, grads, opt_state, params, inputs_finite: jax.Array):
    """(params, opt_state, update_finite, finite) after one update, or the old ones where `finite` (the inputs'
    flag and the update's) is false: a non-finite step changes nothing (the loop stops on it, and the last good
    state stays intact)."""
    update_finite = update_is_finite(tx, grads, opt_state, params)
    finite = inputs_finite & update_finite
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    return keep(new_params, params), keep(new_opt_state, opt_state), update_finite, finite


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule: Callable, *, accum_steps: int,
                    loss_chunk_size: int, document_mask: bool = True):
    """Returns step(state, batch) -> (state, metrics); state = {params, opt_state, step, rng}. metrics["finite"]:
    the step was applied (loss, gradient norm, updated params and optimizer state all finite); "update_finite": the
    updated params and optimizer state alone."""

    def loss_fn(params, micro):
        model = nnx.merge(graphdef, params)
        return loss_sums(model, micro, loss_chunk_size, document_mask)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: dict[str, Any], batch: dict[str, jax.Array]):
        params = state["params"]
        micro = split_micro_batches(batch, accum_steps)
        zeros = jax.tree.map(jnp.zeros_like, params)

        def accumulate(carry, mb):
            grads, sums = carry
            (loss, aux), g = grad_fn(params, mb)
            sums = jax.tree.map(jnp.add, sums, dict(aux, loss=loss))
            return (jax.tree.map(jnp.add, grads, g), sums), None

        sums0 = {k: jnp.zeros((), jnp.float32) for k in ["loss", "weight"] + [
            f"{p}_{c}" for c in CATEGORIES for p in ("nll", "count")]}
        if accum_steps == 1:
            (grads, sums), _ = accumulate((zeros, sums0), jax.tree.map(lambda x: x[0], micro))
        else:
            (grads, sums), _ = jax.lax.scan(accumulate, (zeros, sums0), micro)
        denom = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = sums["loss"] / denom
        grad_norm = optax.tree.norm(grads)
        new_params, new_opt_state, update_finite, finite = apply_update_if_finite(
            tx, grads, state["opt_state"], params, jnp.isfinite(loss) & jnp.isfinite(grad_norm))
        new_state = {
            "params": new_params,
            "opt_state": new_opt_state,
            "step": state["step"] + finite.astype(state["step"].dtype),
            "rng": jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])),
        }
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]), "finite": finite,
                   "update_finite": update_finite, "target_tokens": sums["weight"]}
        for c in CATEGORIES:
            count = sums[f"count_{c}"]
            metrics[f"loss_{c}"] = jnp.where(count > 0, sums[f"nll_{c}"] / jnp.maximum(count, 1.0), jnp.nan)
            metrics[f"tokens_{c}"] = count
        return new_state, metrics

    return step


def make_eval_step(graphdef, loss_chunk_size: int, document_mask: bool = True):
    """Returns eval(params, batch) -> sums (weighted NLL, weight, per-category), for validation loss."""

    def evaluate(params, batch):
        model = nnx.merge(graphdef, params)
        total, aux = loss_sums(model, batch, loss_chunk_size, document_mask)
        return dict(aux, loss=total)

    return evaluate
