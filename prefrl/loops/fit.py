"""Reward-model fitting: a whole fit of :mod:`prefrl.learners.reward_model` as one ``lax.scan``.

:func:`fit` is pure and jittable (``jax.vmap`` it over seeds): each step
samples a minibatch of the labelled queries, weights it by every member's
bootstrap counts (Christiano et al. 2017; B-Pref) and applies the learner's
``update``; every ``eval_every`` steps each member's validation loss picks its
best parameters (early stopping without leaving the scan); at the end the
output is standardised (:func:`normalize`).
:func:`check_finite` turns a diverged fit into a clear host-side error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prefrl.data import pairs
from prefrl.learners import reward_model as rm

Array = jax.Array
PRNGKey = jax.Array


class NonFiniteError(ValueError):
    """Training produced NaN/inf; the message names the step and the metric."""


class FitResult(NamedTuple):
    """``state``: best-by-validation parameters (per member), normalised.

    ``metrics``: ``train_loss``/``train_accuracy``/``grad_norm`` ``[S, M]``
    per step; ``valid_loss``/``valid_accuracy`` ``[E, M]`` per evaluation
    (E = num_steps / eval_every); ``best_step`` ``[M]``; ``skipped`` ``[S]``
    (1 where a non-finite update was not applied).
    """

    state: rm.RewardModelState
    metrics: dict[str, Array]


def bootstrap_weights(key: PRNGKey, num_members: int, include: Array) -> Array:
    """``[M, N]`` bootstrap counts over the rows where ``include [N]`` is True.

    The classic bootstrap (Efron) of each member's training set, as in
    Christiano 2017 / B-Pref ensembles: member m draws n = Σ include rows
    with replacement from the included rows; count c_mi is how often row i
    was drawn (Σ_i c_mi = n, c_mi = 0 for excluded rows). n may be traced:
    N draws are made and only the first n kept, so shapes stay static.
    """
    num = include.shape[0]
    n = jnp.sum(include)
    p = include.astype(jnp.float32) / jnp.maximum(n, 1)
    draws = jax.random.choice(key, num, (num_members, num), p=p)
    keep = (jnp.arange(num) < n).astype(jnp.float32)
    counts = jax.vmap(lambda d: jnp.zeros((num,), jnp.float32).at[d].add(keep))(draws)
    return counts


def fit(
    key: PRNGKey,
    config: rm.RewardModelConfig,
    train: rm.PairBatch,
    valid: rm.PairBatch | None = None,
    *,
    optimizer: optax.GradientTransformation | None = None,
    network: nn.Module | None = None,
    init_params: Any | None = None,
) -> FitResult:
    """Fit a reward model: ``config.num_steps`` updates in one ``lax.scan``.

    Pure and jittable; ``jax.vmap(lambda k: fit(k, cfg, train, valid))(keys)``
    fits many seeds in one compiled call. Each step draws ``batch_size``
    queries uniformly (with replacement) from the rows of ``train`` with
    positive weight (rows of weight 0 — skipped or not yet labelled — are
    never drawn, so a fixed-size, partly filled ``train`` compiles once);
    member m weights them by its bootstrap counts (``config.bootstrap``)
    times the row's own weight. Every ``eval_every`` steps the validation loss of each member is
    computed and that member's best parameters are kept (early stopping
    without leaving the scan). A step whose loss or update is non-finite is
    not applied and is recorded in ``metrics["skipped"]``; call
    :func:`check_finite` on the host to turn that into an error.

    ``init_params`` (stacked ``[M, …]``, e.g. a loaded model's) warm-starts
    the members instead of a fresh initialisation.

    Host-side value checks (``prefrl.data.pairs.validate``) are the caller's job.
    """
    model = rm.model(config, network)
    learner = rm.make(config, model.network, optimizer)
    num_train = train.size
    num_evals = max(int(config.num_steps) // int(config.eval_every), 1)
    inner = int(config.num_steps) // num_evals
    members = int(config.ensemble_size)
    key_init, key_boot, key_steps = jax.random.split(key, 3)
    del key

    if train.weight is None:
        base_w = jnp.ones((members, num_train), jnp.float32)
    else:
        base_w = jnp.broadcast_to(train.weight, (members, num_train)).astype(jnp.float32)
    include = jnp.any(base_w > 0, axis=0)
    # Sampling distribution over rows: uniform over the included ones.
    row_p = include.astype(jnp.float32) / jnp.maximum(jnp.sum(include), 1)
    if config.bootstrap and members > 1:
        train_w = base_w * bootstrap_weights(key_boot, members, include)
    else:
        train_w = base_w
    state = learner.init(key_init, train)
    if init_params is not None:
        shapes = jax.tree.map(jnp.shape, state.params)
        if jax.tree.map(jnp.shape, init_params) != shapes:
            raise ValueError(
                "init_params do not match this config's network "
                f"(expected shapes {shapes}, got {jax.tree.map(jnp.shape, init_params)})"
            )
        state = state.replace(params=init_params, opt_state=jax.vmap(
            (rm.default_optimizer(config) if optimizer is None else optimizer).init)(init_params))

    def step(state: rm.RewardModelState, step_key: PRNGKey):
        idx = jax.random.choice(step_key, num_train, (int(config.batch_size),), p=row_p)
        batch = pairs.take(train._replace(weight=train_w), idx)
        new_state, m = learner.update(state, batch)
        finite = jnp.all(jnp.isfinite(m["loss"])) & jnp.all(jnp.isfinite(m["grad_norm"]))
        finite = finite & jnp.all(jnp.array(
            [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_state.params)]
        ))
        state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        return state, {
            "train_loss": m["loss"],
            "train_accuracy": m["accuracy"],
            "grad_norm": m["grad_norm"],
            "skipped": 1.0 - finite.astype(jnp.float32),
        }

    def select(better: Array, new: Any, old: Any) -> Any:
        # better [M]: per-member choice between two stacked parameter trees.
        return jax.tree.map(
            lambda n, o: jnp.where(better.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old
        )

    def block(carry, block_index: Array):
        state, best_params, best_loss, best_step = carry
        step_keys = jax.random.split(jax.random.fold_in(key_steps, block_index), inner)
        state, hist = jax.lax.scan(step, state, step_keys)
        if valid is not None:
            v = rm.evaluate(model, state, valid)
            better = v["loss"] < best_loss
            best_params = select(better, state.params, best_params)
            best_loss = jnp.where(better, v["loss"], best_loss)
            best_step = jnp.where(better, state.step, best_step)
        else:
            v = {"loss": jnp.full((members,), jnp.nan), "accuracy": jnp.full((members,), jnp.nan)}
            best_params, best_step = state.params, jnp.broadcast_to(state.step, (members,))
        return (state, best_params, best_loss, best_step), (hist, v)

    init_carry = (state, state.params, jnp.full((members,), jnp.inf),
                  jnp.zeros((members,), jnp.int32))
    (state, best_params, _, best_step), (hist, v) = jax.lax.scan(
        block, init_carry, jnp.arange(num_evals)
    )
    state = state.replace(params=best_params)
    if config.normalize:
        state = normalize(model, state, train)
    metrics = {k: x.reshape(num_evals * inner, *x.shape[2:]) for k, x in hist.items()}
    metrics.update(valid_loss=v["loss"], valid_accuracy=v["accuracy"], best_step=best_step)
    return FitResult(state, metrics)


def check_finite(metrics: Mapping[str, Any]) -> None:
    """Raise :class:`NonFiniteError` naming the first step and metric that went non-finite.

    Works on :func:`fit`'s metrics (per-step arrays ``[S, …]``); the step is
    the 0-based index of the update.
    """
    first: tuple[int, str] | None = None
    skipped = np.asarray(metrics.get("skipped", np.zeros(0)))
    if skipped.size and skipped.reshape(skipped.shape[0], -1).max() > 0:
        s = int(np.argmax(skipped.reshape(skipped.shape[0], -1).max(axis=1) > 0))
        first = (s, "update (non-finite parameters)")
    for name in ("train_loss", "grad_norm"):
        values = np.asarray(metrics.get(name, np.zeros(0)))
        if values.size == 0:
            continue
        bad = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
        if bad.any():
            s = int(np.argmax(bad))
            if first is None or s <= first[0]:
                first = (s, name)
    if first is not None:
        step, name = first
        raise NonFiniteError(
            f"training diverged: metric {name!r} became non-finite at step {step}; "
            "no model saved (lower the learning rate or check the data)"
        )


def standardize_on_steps(model: rm.RewardModel, state: Any, obs: jax.Array,
                         action: jax.Array) -> tuple[Any, jax.Array]:
    """``(state, raw)``: r̂ set to mean 0 / std 1 over these state-actions (traceable).

    The online loops' scale for PPO: the newest rollout's ``obs [..., obs]`` and
    ``action [..., act]``; ``raw`` is the combined output before the rescale.
    """
    raw = rm.combined_output(model, state, obs, action)
    return state.replace(reward_mean=jnp.mean(raw), reward_std=jnp.std(raw) + 1e-8), raw


def normalize(model: rm.RewardModel, state: rm.RewardModelState, batch: rm.PairBatch,
              chunk: int = 512) -> rm.RewardModelState:
    """Store mean and std of the combined output over the batch's (masked) steps.

    Rows of weight 0 are left out. After this, :func:`reward_fn` has mean 0
    and std 1 over those states —
    a fixed scale for PPO whatever scale the BT fit happened to find (the
    preference model only identifies f up to the temperature).
    """
    obs = jnp.concatenate([batch.obs_1, batch.obs_2], axis=0)
    action = jnp.concatenate([batch.action_1, batch.action_2], axis=0)
    mask = jnp.concatenate([batch.mask_1, batch.mask_2], axis=0).astype(jnp.float32)
    if batch.weight is not None:
        # Rows of weight 0 (skipped / not yet labelled) do not set the scale.
        keep = jnp.any(batch.weight.reshape(-1, batch.size) > 0, axis=0).astype(jnp.float32)
        mask = mask * jnp.concatenate([keep, keep])[:, None]
    num = obs.shape[0]
    pad = (-num) % min(chunk, num)
    pad_rows = lambda x: jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    obs, action, mask = pad_rows(obs), pad_rows(action), pad_rows(mask)
    split = lambda x: x.reshape(-1, min(chunk, num), *x.shape[1:])
    # Segments a chunk at a time: one pass for Σ m f and Σ m f², in float32.
    value = jax.lax.map(lambda xs: rm.combined_output(model, state, xs[0], xs[1]),
                        (split(obs), split(action)))
    value = value.reshape(mask.shape)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(mask * value) / count
    var = jnp.sum(mask * (value - mean) ** 2) / count
    return state.replace(reward_mean=mean, reward_std=jnp.sqrt(var) + 1e-8)


__all__ = ["FitResult", "NonFiniteError", "bootstrap_weights", "check_finite", "fit",
           "normalize", "standardize_on_steps"]
