"""Successor features ψ^π of a policy library, fitted by regression on its rollouts.

For the regret-model reward learner (:mod:`prefrl.learners.regret_sf`;
Knox et al. 2022) each library policy π ∈ Π has a ψ head
``ψ^π(s) = E_π[Σ_t γ^t φ(s_t, a_t) | s_0 = s]`` (Barreto et al. 2017). The
heads are regressed on Monte-Carlo or TD targets from rollouts of their own
policy (:func:`successor_targets`, :func:`fit_successor_features`), never by
the preference loss.

With a learned φ, ψ goes stale as φ moves: :func:`make_refit` refits ψ to the
current φ, and :func:`alternate` runs the alternation (on the host, or in one
``lax.scan``)::

    learner = regret_sf.make(cfg, phi_net, psi_network=psi_net)
    refit = successor_features.make_refit(cfg, successor_features.SFFitConfig(),
                                          phi_net, psi_net)
    state = learner.init(key_init, batch)
    for i in range(num_updates):
        if i % refit_every == 0:
            state, _ = refit(state, jax.random.fold_in(key_refit, i), library_rollouts)
        state, metrics = learner.update(state, next_batch())

Between refits ψ is stale and the gradient through ψ is ignored (ψ is a
constant of each update): the preference gradient reaches φ only through the
Σ γ^t w·φ_t term.

Public API: ``SFFitConfig``, ``LibraryRollouts``, ``successor_targets(…)``,
``fit_successor_features(…)``, ``make_refit(…)``, ``alternate(update, refit,
state, key, rollouts, sample_batch, *, num_updates, refit_every)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prefrl.config import field
from prefrl.learners import sf_networks as nets
from prefrl.learners.regret_sf import RegretSFConfig, RegretSFState, SFPairBatch
from prefrl.learners.sf_networks import PhiFn

Array = jax.Array
PRNGKey = jax.Array
Params = Any


@dataclasses.dataclass(frozen=True)
class SFFitConfig:
    """Options of :func:`fit_successor_features` (regression of ψ^π on rollouts of π)."""

    method: Literal["mc", "td"] = field(
        "mc", "targets: Monte-Carlo sums (bootstrap at truncation) or one-step TD")
    num_rounds: int = field(10, "target recomputations (the bootstrap uses the current ψ)")
    steps_per_round: int = field(100, "gradient steps per round")
    batch_size: int = field(0, "rows (time × batch) per step; 0: all rows")
    learning_rate: float = field(1e-3, "Adam step size when no optimizer is given")

    def __post_init__(self) -> None:
        if self.method not in ("mc", "td"):
            raise ValueError(f"method must be 'mc' or 'td', got {self.method!r}")
        for name in ("num_rounds", "steps_per_round"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.batch_size) < 0:
            raise ValueError(f"batch_size must be >= 0, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


class LibraryRollouts(NamedTuple):
    """Rollouts of every library policy, policy axis first, time-major: ``[Π, T, B, …]``.

    ``next_obs[π, t]`` is the true s_{t+1}, also on a step that ends an episode
    (as ``prefrl.types.Trajectory``). ``truncated`` marks a time limit (bootstrap
    with ψ(s_{t+1})); ``terminated`` an MDP terminal state (no bootstrap).
    """

    obs: Array  # [Π, T, B, obs]
    action: Array  # [Π, T, B, act]
    next_obs: Array  # [Π, T, B, obs]
    terminated: Array  # [Π, T, B] bool
    truncated: Array  # [Π, T, B] bool


def successor_targets(
    phi_t: Array,
    next_psi_t: Array,
    terminated_t: Array,
    truncated_t: Array,
    *,
    discount: float | Array,
    method: Literal["mc", "td"] = "mc",
) -> Array:
    """Regression targets for ψ^π from one policy's rollouts, time-major ``[T, B, …]``.

    * ``"td"``: ``G_t = φ_t + γ (1 − term_t) ψ(s_{t+1})``.
    * ``"mc"``: the discounted sum of φ to the end of the episode,
      ``G_t = φ_t + γ (1 − term_t) [trunc_t ψ(s_{t+1}) + (1 − trunc_t) G_{t+1}]``,
      bootstrapping with ψ(s_{t+1}) where a time limit cut the episode and at
      the end of the data (t = T − 1), which is a truncation too.

    Args:
      phi_t: ``[T, B, d]`` φ(s_t, a_t).
      next_psi_t: ``[T, B, d]`` the current ψ^π(s_{t+1}) (treated as a constant).
      terminated_t, truncated_t: ``[T, B]`` bool.
      discount: γ.
      method: ``"mc"`` or ``"td"``.

    Returns:
      ``[T, B, d]`` targets.
    """
    chex.assert_rank([phi_t, next_psi_t, terminated_t, truncated_t], [3, 3, 2, 2])
    chex.assert_equal_shape([phi_t, next_psi_t])
    chex.assert_equal_shape([terminated_t, truncated_t, phi_t[..., 0]])
    next_psi_t = jax.lax.stop_gradient(next_psi_t)
    alive_t = (1.0 - terminated_t.astype(phi_t.dtype))[..., None]
    if method == "td":
        return phi_t + discount * alive_t * next_psi_t
    if method != "mc":
        raise ValueError(f"method must be 'mc' or 'td', got {method!r}")
    cut_t = truncated_t.at[-1].set(True)[..., None]

    def step(g_next: Array, xs: tuple[Array, ...]) -> tuple[Array, Array]:
        phi, next_psi, alive, cut = xs
        g = phi + discount * alive * jnp.where(cut, next_psi, g_next)
        return g, g

    _, g_t = jax.lax.scan(step, jnp.zeros_like(phi_t[0]), (phi_t, next_psi_t, alive_t, cut_t),
                          reverse=True)
    return g_t


def _check_rollouts(psi_network: nn.Module, psi_params: Params, rollouts: LibraryRollouts,
                    phi_t: Array) -> tuple[int, int, int, int]:
    if rollouts.obs.ndim != 4:
        raise ValueError(f"rollouts.obs must be [Π, T, B, obs], got {rollouts.obs.shape}")
    num_policies, steps, batch, obs_dim = rollouts.obs.shape
    if rollouts.next_obs.shape != rollouts.obs.shape:
        raise ValueError(f"rollouts.next_obs {rollouts.next_obs.shape} must match rollouts.obs "
                         f"{rollouts.obs.shape}")
    for name in ("terminated", "truncated"):
        if getattr(rollouts, name).shape != (num_policies, steps, batch):
            raise ValueError(f"rollouts.{name} must be [Π, T, B] = "
                             f"{(num_policies, steps, batch)}, got {getattr(rollouts, name).shape}")
    if phi_t.ndim != 4 or phi_t.shape[:3] != (num_policies, steps, batch):
        raise ValueError(f"phi_t must be [Π, T, B, d] with [Π, T, B] = "
                         f"{(num_policies, steps, batch)}, got {phi_t.shape}")
    leaves = jax.tree.leaves(psi_params)
    if not leaves:
        raise ValueError("psi_params is empty: fitting ψ needs a ψ network's parameters")
    if any(leaf.shape[:1] != (num_policies,) for leaf in leaves):
        raise ValueError(
            f"library size mismatch: the rollouts hold {num_policies} policies but psi_params "
            f"are stacked over {leaves[0].shape[:1]}"
        )
    one = jax.tree.map(lambda x: x[0], psi_params)
    out = nets.shape_of(psi_network.apply, one, rollouts.obs[0, 0],
                        what=f"the library's ψ network rejects observations of size {obs_dim}")
    if out[-1:] != phi_t.shape[-1:]:
        raise ValueError(f"feature width mismatch: φ has width {phi_t.shape[-1]} but the ψ "
                         f"network outputs width {out[-1] if out else out}")
    return num_policies, steps, batch, obs_dim


def fit_successor_features(
    key: PRNGKey,
    config: SFFitConfig,
    psi_network: nn.Module,
    psi_params: Params,
    rollouts: LibraryRollouts,
    phi_t: Array,
    *,
    discount: float | Array,
    optimizer: optax.GradientTransformation | None = None,
) -> tuple[Params, dict[str, Array]]:
    """Regress each ψ^π on its own policy's rollouts (Barreto et al. 2017; Knox et al. 2022).

    ``config.num_rounds`` rounds; each recomputes the targets of
    :func:`successor_targets` with the current ψ (the bootstrap) and then
    takes ``config.steps_per_round`` optimiser steps on the squared error
    ``mean_{t,b,d} (ψ^π_θ(s_t) − G_t)²`` of every policy (each policy's
    parameters have their own optimizer state: the heads are independent).
    Minibatches of ``config.batch_size`` rows (time × batch, shared by all
    policies) are drawn with replacement; 0 uses every row each step.
    Pure and jittable.

    Args:
      key: PRNG key for minibatches.
      config: :class:`SFFitConfig`.
      psi_network: one ψ head ``[..., obs] -> [..., d]``.
      psi_params: its parameters stacked ``[Π, …]`` (the starting point).
      rollouts: :class:`LibraryRollouts` ``[Π, T, B, …]``; policy π's rows train ψ^π only.
      phi_t: ``[Π, T, B, d]`` φ(s_t, a_t) on those rollouts.
      discount: γ (the regret model's).
      optimizer: default Adam(``config.learning_rate``).

    Returns:
      ``(psi_params, metrics)`` with ``loss [num_rounds, Π]`` (mean squared
      error at the end of each round, against that round's targets).
    """
    num_policies, steps, batch, obs_dim = _check_rollouts(psi_network, psi_params, rollouts, phi_t)
    rollouts = LibraryRollouts(*(jnp.asarray(x) for x in rollouts))
    phi_t = jnp.asarray(phi_t)
    optimizer = optax.adam(config.learning_rate) if optimizer is None else optimizer
    rows = steps * batch
    width = phi_t.shape[-1]
    obs = rollouts.obs.reshape(num_policies, rows, obs_dim)
    next_obs = rollouts.next_obs.reshape(num_policies, rows, obs_dim)
    apply = jax.vmap(psi_network.apply)  # params [Π, …], obs [Π, N, obs] -> [Π, N, d]
    batch_size = int(config.batch_size)

    def sq_error(params: Params, x: Array, target: Array) -> Array:
        err = apply(params, x) - target
        return jnp.mean(err**2, axis=(1, 2))  # [Π]

    def round_(carry: tuple[Params, Any], round_key: PRNGKey) -> tuple[tuple, Array]:
        params, opt_state = carry
        next_psi = apply(params, next_obs).reshape(num_policies, steps, batch, width)
        targets = jax.vmap(lambda p, n, te, tr: successor_targets(
            p, n, te, tr, discount=discount, method=config.method))(
                phi_t, next_psi, rollouts.terminated, rollouts.truncated)
        targets = targets.reshape(num_policies, rows, width)

        def step(carry: tuple[Params, Any], step_key: PRNGKey) -> tuple[tuple, Array]:
            params, opt_state = carry
            if batch_size == 0:
                x, y = obs, targets
            else:
                idx = jax.random.randint(step_key, (batch_size,), 0, rows)
                x, y = obs[:, idx], targets[:, idx]
            loss_fn = lambda p: jnp.sum(sq_error(p, x, y))
            grads = jax.grad(loss_fn)(params)
            updates, opt_state = jax.vmap(optimizer.update)(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(
            step, (params, opt_state), jax.random.split(round_key, int(config.steps_per_round)))
        return (params, opt_state), sq_error(params, obs, targets)

    opt_state = jax.vmap(optimizer.init)(psi_params)
    round_keys = jax.random.split(key, int(config.num_rounds))
    (psi_params, _), losses = jax.lax.scan(round_, (psi_params, opt_state), round_keys)
    return psi_params, {"loss": losses}


def make_refit(
    config: RegretSFConfig,
    sf_config: SFFitConfig,
    phi: PhiFn | nn.Module,
    psi_network: nn.Module,
    optimizer: optax.GradientTransformation | None = None,
) -> Callable[[RegretSFState, PRNGKey, LibraryRollouts], tuple[RegretSFState, dict]]:
    """``refit(state, key, rollouts) -> (state, metrics)``: ψ refitted to the current φ.

    Computes φ on the library's rollouts with the state's φ parameters and
    runs :func:`fit_successor_features` from the state's ψ parameters (warm
    start) with γ = ``config.discount``. The alternation step of learned φ;
    with frozen φ call it once before training.
    """
    model = nets.make_model(phi, psi_network, num_policies=config.num_policies)

    def refit(state: RegretSFState, key: PRNGKey,
              rollouts: LibraryRollouts) -> tuple[RegretSFState, dict]:
        phi_t = model.phi(state.params["phi"], rollouts.obs, rollouts.action)
        psi_params, metrics = fit_successor_features(
            key, sf_config, psi_network, state.psi_params, rollouts, phi_t,
            discount=config.discount, optimizer=optimizer)
        return state.replace(psi_params=psi_params), metrics

    return refit


def alternate(
    update: Callable[[RegretSFState, SFPairBatch], tuple[RegretSFState, dict]],
    refit: Callable[[RegretSFState, PRNGKey, LibraryRollouts], tuple[RegretSFState, dict]],
    state: RegretSFState,
    key: PRNGKey,
    rollouts: LibraryRollouts,
    sample_batch: Callable[[PRNGKey], SFPairBatch],
    *,
    num_updates: int,
    refit_every: int,
) -> tuple[RegretSFState, dict[str, Array]]:
    """Learned φ and ψ in alternation: ``num_updates`` updates in one ``lax.scan``.

    Before update i, when ``i % refit_every == 0``, ψ is refitted to the
    current φ with key ``fold_in(key_refit, i)``; update i uses the batch
    ``sample_batch(fold_in(key_batch, i))`` (``key_refit, key_batch =
    split(key)``), so a host loop with the same keys gives the same result.
    Between refits ψ is stale and the preference gradient ignores it.

    Returns:
      ``(state, metrics)``: the update's metrics stacked ``[num_updates]``
      plus ``psi_loss`` (the refit's last-round mean squared error; NaN on
      steps without a refit).
    """
    if int(refit_every) < 1 or int(num_updates) < 1:
        raise ValueError(f"num_updates and refit_every must be >= 1, got {num_updates}, "
                         f"{refit_every}")
    key_refit, key_batch = jax.random.split(key)
    del key

    def do_refit(s: RegretSFState, i: Array) -> tuple[RegretSFState, Array]:
        s, m = refit(s, jax.random.fold_in(key_refit, i), rollouts)
        return s, jnp.mean(m["loss"][-1]).astype(jnp.float32)

    def skip(s: RegretSFState, i: Array) -> tuple[RegretSFState, Array]:
        return s, jnp.full((), jnp.nan, jnp.float32)

    def body(s: RegretSFState, i: Array) -> tuple[RegretSFState, dict]:
        s, psi_loss = jax.lax.cond(i % refit_every == 0, do_refit, skip, s, i)
        s, metrics = update(s, sample_batch(jax.random.fold_in(key_batch, i)))
        return s, {**metrics, "psi_loss": psi_loss}

    return jax.lax.scan(body, state, jnp.arange(int(num_updates)))


__all__ = [
    "LibraryRollouts",
    "SFFitConfig",
    "alternate",
    "fit_successor_features",
    "make_refit",
    "successor_targets",
]
