"""Reward learning under the regret preference model, via successor features and GPI.

Knox et al. (2022, "Models of human preference for learning reward
functions", §successor features) learn a reward r̂ whose *regret* explains the
preferences. Unlike ``reward_model(assumption="regret")``, which fits the
advantage Â by the partial-return loss form, here regret is computed *from
r̂ itself*, so the learner really assumes the regret model:

    r̂(s, a)       = w · φ(s, a)                                   φ: [d]
    ψ^π(s)        = E_π[Σ_t γ^t φ(s_t, a_t) | s_0 = s]             per π ∈ Π, [d]
    V^π_r̂(s)      = w · ψ^π(s)
    V̂*_r̂(s)       = max_{π∈Π} w · ψ^π(s)                 (GPI, τ = 0)
                  or τ log Σ_π exp(w · ψ^π(s) / τ)        (soft; ≤ max + τ log|Π|)
    regret_r̂(σ)   = V̂*(s_0) − [Σ_{t<k} γ^t r̂(s_t, a_t) + γ^k V̂*(s_k)]
    P(σ¹ ≻ σ²)    = sigmoid((regret_r̂(σ²) − regret_r̂(σ¹)) / β)

and the loss is the Bradley–Terry cross-entropy with soft labels (ties ½),
per-query weights and step masks, exactly as ``prefrl.preference``:
the score is ``preference.regret_score_from_values`` (so γ, the step mask
and termination are handled as the regret oracle handles them) and the loss
``preference.bt_loss(preference.logit(…))``.

**What the approximation costs.** With τ = 0, V̂* ≤ V*_r̂ everywhere
(every V^π ≤ V*), with equality where the optimal policy *of r̂* is in Π
(Barreto et al. 2017's GPI theorem). That policy moves as r̂ is learned, so
a fixed library is exact only for rewards whose optimum it happens to hold.
A bound on V does not bound the regret: V̂* enters with opposite signs at
s_0 and s_k, so approximate regret can be *negative* (a segment that beats
every policy of Π from s_0) or too large. The soft maximum (Knox's code uses
τ = 1e-3) adds up to τ log|Π| to each V̂*.

**ψ: two sources.** (a) A network ψ_θ(s): one module, its parameters
stacked ``[Π, …]`` and vmapped over policies, so ψ_θ(s) is ``[Π, d]``; it is
fitted by regression (:func:`fit_successor_features`, Monte-Carlo or TD
targets on rollouts of each library policy), never by the preference loss.
(b) Precomputed ψ values carried by the batch (tabular: the exact linear
solve ``prefrl.tabular.successor_features``).

**φ: two kinds.** (i) Frozen: any ``phi(obs, action) -> [..., d]`` (e.g.
:func:`reward_model_features`, the last hidden layer of a partial-return
reward model); only w is learned. (ii) Learned: a flax module on
``concat(obs, action)``; w and φ are trained by the preference loss while ψ
is held fixed, and ψ is refitted to the current φ every N updates
(:func:`make_refit`): an alternation. Between refits ψ is stale and the
gradient through ψ is ignored (ψ is a constant of each update): the
preference gradient reaches φ only through the Σ γ^t w·φ_t term.

Alternation, on the host (or in one ``lax.scan``: :func:`alternate`)::

    learner = regret_sf.make(cfg, phi_net, psi_network=psi_net)
    refit = regret_sf.make_refit(cfg, regret_sf.SFFitConfig(), phi_net, psi_net)
    state = learner.init(key_init, batch)
    for i in range(num_updates):
        if i % refit_every == 0:
            state, _ = refit(state, jax.random.fold_in(key_refit, i), library_rollouts)
        state, metrics = learner.update(state, next_batch())

Public API:
  ``RegretSFConfig``, ``SFFitConfig``, ``SFPairBatch``, ``SFSegments``,
  ``LibraryRollouts``, ``RegretSFState``;
  ``gpi_value(w, psi, *, temperature)``, ``segment_regret(w, phi_t, psi_0,
  psi_k, *, discount, gpi_temperature, mask_t, terminal_k)``;
  ``make(config, phi, optimizer=None, *, psi_network=None) -> Learner``;
  ``make_regret_fn(config, phi, *, psi_network=None, chunk=None)``;
  ``successor_targets(…)``, ``fit_successor_features(…)``, ``make_refit(…)``,
  ``alternate(update, refit, state, key, rollouts, sample_batch, *, num_updates,
  refit_every)``;
  ``pair_batch(pool, first, second, label, weight=None)``,
  ``from_pair_batch(batch, psi_in_1, psi_in_2)``, ``psi_inputs(segments)``,
  ``reward_fn(state, phi)``, ``reward_model_features(state)``, ``default_optimizer(config)``,
  ``default_phi_network``, ``default_psi_network``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl import preference
from prefrl.config import field
from prefrl.learners import Learner
from prefrl.networks import MLP

Array = jax.Array
PRNGKey = jax.Array
Params = Any
PhiFn = Callable[[Array, Array], Array]


# --------------------------------------------------------------------------- #
# Configs and data
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class RegretSFConfig:
    """Options of the regret-model reward learner (Knox et al. 2022)."""

    discount: float = field(0.99, "γ of the regret model and of ψ (the oracle's γ)")
    temperature: float = field(1.0, "Boltzmann β of the preference model")
    gpi_temperature: float = field(0.0, "τ of the soft GPI maximum; 0 = hard max")
    num_policies: int = field(0, "|Π| of a ψ network (one head per policy); 0: ψ in the batch")
    learning_rate: float = field(3e-4, "Adam step size of default_optimizer")
    l2: float = field(0.0, "L2 penalty l2/2 (‖w‖² + ‖θ_φ‖²)")
    label_smoothing: float = field(0.0, "ε: targets μ(1 − ε) + ε/2")
    init_scale: float = field(0.1, "w ~ N(0, init_scale² / d) at init")

    def __post_init__(self) -> None:
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.gpi_temperature >= 0:
            raise ValueError(f"gpi_temperature must be >= 0, got {self.gpi_temperature}")
        if int(self.num_policies) < 0:
            raise ValueError(f"num_policies must be >= 0, got {self.num_policies}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {self.init_scale}")


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


class SFPairBatch(NamedTuple):
    """Labelled queries for the regret-SF learner, batch axis ``B`` first.

    Per step, the φ-inputs of each segment (as ``prefrl.types.PairBatch``):
    ``obs_i [B, k, obs]``, ``action_i [B, k, act]``, ``mask_i [B, k]`` (1 inside
    the episode; a 0 means it terminated inside the segment).

    Per segment, the ψ-inputs at s_0 and s_k stacked on axis 1, in one of two forms:

    * ``psi_in_i [B, 2, obs]``: the states s_0 and s_k, for a ψ network;
    * ``psi_in_i [B, 2, Π, d]``: precomputed ψ^π(s_0), ψ^π(s_k) of every π ∈ Π.

    ``label [B]`` = P(σ¹ ≻ σ²) (½ a tie); ``weight [B]`` optional per-query
    weight (0 drops a query); ``terminal_i [B]`` optional bool: s_k is an MDP
    terminal state with the mask all ones (drops the bootstrap γ^k V̂*(s_k)).
    """

    obs_1: Array  # [B, k, obs]
    action_1: Array  # [B, k, act]
    mask_1: Array  # [B, k]
    obs_2: Array  # [B, k, obs]
    action_2: Array  # [B, k, act]
    mask_2: Array  # [B, k]
    label: Array  # [B]
    psi_in_1: Array  # [B, 2, obs] or [B, 2, Π, d]
    psi_in_2: Array  # [B, 2, obs] or [B, 2, Π, d]
    weight: Array | None = None  # [B]
    terminal_1: Array | None = None  # [B] bool
    terminal_2: Array | None = None  # [B] bool

    @property
    def size(self) -> int:
        return self.label.shape[0]


class SFSegments(NamedTuple):
    """A pool of segments ``[N, …]`` with their ψ-inputs (fields as in :class:`SFPairBatch`)."""

    obs: Array  # [N, k, obs]
    action: Array  # [N, k, act]
    mask: Array  # [N, k]
    psi_in: Array  # [N, 2, obs] or [N, 2, Π, d]
    terminal: Array | None = None  # [N] bool


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


@struct.dataclass
class RegretSFState:
    """Training state: arrays only.

    ``params = {"w": [d], "phi": φ-network parameters ({} for frozen φ)}`` is
    what the optimizer trains; ``psi_params`` are the ψ network's parameters
    stacked ``[Π, …]`` ({} when ψ values come with the batch), set by
    :func:`make_refit` / :func:`fit_successor_features`, never by the update.
    """

    params: Params
    psi_params: Params
    opt_state: optax.OptState
    step: Array  # int32 scalar


def default_optimizer(config: RegretSFConfig) -> optax.GradientTransformation:
    """Adam with ``config.learning_rate``."""
    return optax.adam(config.learning_rate)


def default_phi_network(feature_dim: int, hidden: tuple[int, ...] = (64, 64)) -> nn.Module:
    """A learned φ: ``[..., obs + act] -> [..., d]``."""
    return MLP(hidden, feature_dim, nn.relu)


def default_psi_network(feature_dim: int, hidden: tuple[int, ...] = (64, 64)) -> nn.Module:
    """One ψ head: ``[..., obs] -> [..., d]`` (parameters stacked over Π by the learner)."""
    return MLP(hidden, feature_dim, nn.relu)


# --------------------------------------------------------------------------- #
# The regret of one segment
# --------------------------------------------------------------------------- #


def gpi_value(w: Array, psi: Array, *, temperature: float = 0.0) -> Array:
    """GPI value ``V̂*(s) = max_π w·ψ^π(s)``, or ``τ logsumexp_π(w·ψ^π(s)/τ)`` for τ > 0.

    Args:
      w: ``[d]`` reward weights.
      psi: ``[..., Π, d]`` successor features of each library policy at a state.
      temperature: τ ≥ 0 (a Python float: it picks the code path).

    Returns:
      ``[...]``. With τ = 0 a lower bound on V*_r̂, exact when π*_r̂ ∈ Π
      (Barreto et al. 2017); the soft form exceeds the max by at most τ log|Π|.
    """
    chex.assert_rank(w, 1)
    q = jnp.einsum("...pd,d->...p", psi, w)
    if temperature == 0:
        return jnp.max(q, axis=-1)
    return temperature * jax.nn.logsumexp(q / temperature, axis=-1)


def segment_regret(
    w: Array,
    phi_t: Array,
    psi_0: Array,
    psi_k: Array,
    *,
    discount: float | Array,
    gpi_temperature: float = 0.0,
    mask_t: Array | None = None,
    terminal_k: Array | bool | None = None,
) -> Array:
    """Regret of one segment under r̂ = w·φ (Knox et al. 2022, SF/GPI form).

    ``regret = V̂*(s_0) − [Σ_{t<k} γ^t w·φ_t + γ^k V̂*(s_k)]`` with V̂* from
    :func:`gpi_value`; the bracket and termination are
    ``preference.regret_score_from_values`` (regret = −score), so a mask with
    a 0 or ``terminal_k`` drops the bootstrap and masked steps count 0.

    Args:
      w: ``[d]``.
      phi_t: ``[k, d]`` φ(s_t, a_t).
      psi_0, psi_k: ``[Π, d]`` ψ^π(s_0), ψ^π(s_k).
      discount: γ.
      gpi_temperature: τ of :func:`gpi_value`.
      mask_t: optional ``[k]`` prefix-of-ones step mask.
      terminal_k: optional scalar bool.

    Returns:
      Scalar regret (0 for a segment that follows π*_r̂ when GPI is exact;
      may be negative when it is not).
    """
    chex.assert_rank([w, phi_t, psi_0, psi_k], [1, 2, 2, 2])
    chex.assert_equal_shape([psi_0, psi_k])
    rewards_t = phi_t @ w
    if mask_t is not None:
        # Padding after an episode ended may hold anything; 0 · NaN would be NaN.
        rewards_t = jnp.where(mask_t > 0, rewards_t, 0.0)
    v_0 = gpi_value(w, psi_0, temperature=gpi_temperature)
    v_k = gpi_value(w, psi_k, temperature=gpi_temperature)
    score = preference.regret_score_from_values(
        rewards_t, v_0, v_k, discount=discount, mask_t=mask_t, terminal_k=terminal_k
    )
    return -score


# --------------------------------------------------------------------------- #
# φ and ψ as functions of parameters
# --------------------------------------------------------------------------- #


class _Model(NamedTuple):
    """φ and ψ as pure functions of their parameters, and how to initialise them."""

    phi: Callable[[Params, Array, Array], Array]  # (θ_φ, obs, act) -> [..., d]
    phi_init: Callable[[PRNGKey, Array, Array], Params]
    psi: Callable[[Params, Array], Array]  # (θ_ψ, psi_in) -> [..., Π, d]
    psi_init: Callable[[PRNGKey, Array], Params]
    psi_network: nn.Module | None


def _model(config: RegretSFConfig, phi: PhiFn | nn.Module,
           psi_network: nn.Module | None) -> _Model:
    if isinstance(phi, nn.Module):
        module = phi

        def phi_fn(params: Params, obs: Array, action: Array) -> Array:
            return module.apply(params, jnp.concatenate([obs, action.astype(obs.dtype)], -1))

        def phi_init(key: PRNGKey, obs: Array, action: Array) -> Params:
            return module.init(key, jnp.concatenate([obs, action.astype(obs.dtype)], -1))

    elif callable(phi):
        frozen = phi

        def phi_fn(params: Params, obs: Array, action: Array) -> Array:
            del params
            return frozen(obs, action)

        def phi_init(key: PRNGKey, obs: Array, action: Array) -> Params:
            del key, obs, action
            return {}

    else:
        raise TypeError(f"phi must be a function phi(obs, action) or a flax module, got {phi!r}")

    if psi_network is None:
        if int(config.num_policies) != 0:
            raise ValueError(
                f"num_policies={config.num_policies} is for a ψ network; without psi_network "
                "the ψ values come with the batch (set num_policies=0)"
            )

        def psi_fn(params: Params, psi_in: Array) -> Array:
            del params
            return psi_in

        def psi_init(key: PRNGKey, psi_in: Array) -> Params:
            del key, psi_in
            return {}

    else:
        num_policies = int(config.num_policies)
        if num_policies < 1:
            raise ValueError(
                "a ψ network needs config.num_policies >= 1 (one head per library policy)"
            )
        net = psi_network

        def psi_fn(params: Params, psi_in: Array) -> Array:
            out = jax.vmap(lambda p: net.apply(p, psi_in))(params)  # [Π, ..., d]
            return jnp.moveaxis(out, 0, -2)

        def psi_init(key: PRNGKey, psi_in: Array) -> Params:
            keys = jax.random.split(key, num_policies)
            return jax.vmap(lambda k: net.init(k, psi_in))(keys)

    return _Model(phi_fn, phi_init, psi_fn, psi_init, psi_network)


# --------------------------------------------------------------------------- #
# Shape checks (trace-time, so they raise before any fitting)
# --------------------------------------------------------------------------- #


def _shape_of(fn: Callable[..., Array], *args: Any, what: str) -> tuple[int, ...]:
    try:
        out = jax.eval_shape(fn, *args)
    except Exception as err:  # flax raises its own error types for shape mismatches
        raise ValueError(f"{what}: {err}") from err
    if not hasattr(out, "shape"):
        raise ValueError(f"{what}: expected one array, got {out}")
    return tuple(out.shape)


def _segment_dims(obs: Array, action: Array, mask: Array, psi_in: Array, terminal: Array | None,
                  name: str) -> tuple[int, int, int, int]:
    if obs.ndim != 3:
        raise ValueError(f"obs{name} must be [B, k, obs], got shape {obs.shape}")
    size, length, obs_dim = obs.shape
    if action.ndim != 3 or action.shape[:2] != (size, length):
        raise ValueError(f"action{name} must be [B, k, act] = [{size}, {length}, act], "
                         f"got {action.shape}")
    if mask.shape != (size, length):
        raise ValueError(f"mask{name} must be [B, k] = {(size, length)}, got {mask.shape}")
    if psi_in.ndim not in (3, 4) or psi_in.shape[:2] != (size, 2):
        raise ValueError(
            f"psi_in{name} must be [B, 2, obs] (states s_0, s_k) or [B, 2, Π, d] (ψ values) "
            f"with B = {size}, got {psi_in.shape}"
        )
    if terminal is not None and terminal.shape != (size,):
        raise ValueError(f"terminal{name} must be [B] = ({size},), got {terminal.shape}")
    return size, length, obs_dim, action.shape[2]


def _check_batch(model: _Model, state_like: tuple[Params, Params], batch: SFPairBatch) -> int:
    """Raise ``ValueError`` naming the mismatch; return the feature width d."""
    dims_1 = _segment_dims(batch.obs_1, batch.action_1, batch.mask_1, batch.psi_in_1,
                           batch.terminal_1, "_1")
    dims_2 = _segment_dims(batch.obs_2, batch.action_2, batch.mask_2, batch.psi_in_2,
                           batch.terminal_2, "_2")
    if dims_1[1:] != dims_2[1:] or dims_1[0] != dims_2[0]:
        raise ValueError(f"the two segments' shapes differ: obs_1 {batch.obs_1.shape}, action_1 "
                         f"{batch.action_1.shape} vs obs_2 {batch.obs_2.shape}, action_2 "
                         f"{batch.action_2.shape}")
    if batch.psi_in_1.shape != batch.psi_in_2.shape:
        raise ValueError(f"psi_in_1 {batch.psi_in_1.shape} and psi_in_2 "
                         f"{batch.psi_in_2.shape} differ")
    size = dims_1[0]
    if batch.label.shape != (size,):
        raise ValueError(f"label must be [B] = ({size},), got {batch.label.shape}")
    if batch.weight is not None and batch.weight.shape != (size,):
        raise ValueError(f"weight must be [B] = ({size},), got {batch.weight.shape}")
    return _check_widths(model, state_like, batch.obs_1, batch.action_1, batch.psi_in_1)


def _check_widths(model: _Model, state_like: tuple[Params, Params], obs: Array, action: Array,
                  psi_in: Array) -> int:
    phi_params, psi_params = state_like
    phi_shape = _shape_of(model.phi, phi_params, obs, action,
                          what="φ(obs, action) failed on the batch's observations and actions")
    if phi_shape[:-1] != obs.shape[:-1]:
        raise ValueError(f"φ(obs, action) must return [..., d] for obs {obs.shape}, "
                         f"got {phi_shape}")
    width = phi_shape[-1]
    if model.psi_network is None:
        if psi_in.ndim != 4:
            raise ValueError(
                f"without a ψ network psi_in must hold ψ values [B, 2, Π, d], got {psi_in.shape} "
                "(states [B, 2, obs] need psi_network=…)"
            )
        if psi_in.shape[-1] != width:
            raise ValueError(
                f"feature width mismatch: φ(obs, action) has width {width} but the batch's ψ "
                f"values have width {psi_in.shape[-1]}"
            )
        return width
    if psi_in.ndim != 3:
        raise ValueError(f"with a ψ network psi_in must hold the states s_0, s_k [B, 2, obs], "
                         f"got {psi_in.shape}")
    if psi_in.shape[-1] != obs.shape[-1]:
        raise ValueError(
            f"library observation size mismatch: psi_in has observations of size "
            f"{psi_in.shape[-1]} but the segments' observations have size {obs.shape[-1]}"
        )
    psi_shape = _shape_of(model.psi, psi_params, psi_in,
                          what=f"the library's ψ network rejects observations of size "
                               f"{psi_in.shape[-1]}")
    if psi_shape[-1] != width:
        raise ValueError(f"feature width mismatch: φ(obs, action) has width {width} but the "
                         f"ψ network outputs width {psi_shape[-1]}")
    return width


# --------------------------------------------------------------------------- #
# The learner
# --------------------------------------------------------------------------- #


def _regrets(config: RegretSFConfig, model: _Model, params: Params, psi_params: Params,
             obs: Array, action: Array, mask: Array, psi_in: Array,
             terminal: Array | None) -> Array:
    """``[N]`` regrets of N segments; ψ is a constant (no gradient flows into it)."""
    phi_ntd = model.phi(params["phi"], obs, action)
    psi = jax.lax.stop_gradient(model.psi(psi_params, psi_in))  # [N, 2, Π, d]
    one = lambda phi_t, psi_2, mask_t, term: segment_regret(
        params["w"], phi_t, psi_2[0], psi_2[1], discount=config.discount,
        gpi_temperature=config.gpi_temperature, mask_t=mask_t.astype(phi_t.dtype),
        terminal_k=term,
    )
    if terminal is None:
        return jax.vmap(lambda a, b, c: one(a, b, c, None))(phi_ntd, psi, mask)
    return jax.vmap(one)(phi_ntd, psi, mask, terminal)


def make(
    config: RegretSFConfig,
    phi: PhiFn | nn.Module,
    optimizer: optax.GradientTransformation | None = None,
    *,
    psi_network: nn.Module | None = None,
) -> Learner:
    """Build the regret-model reward learner (Knox et al. 2022, SF/GPI).

    Args:
      config: :class:`RegretSFConfig`.
      phi: frozen features ``phi(obs [..., obs], action [..., act]) -> [..., d]``
        (only w is learned), or a flax module ``[..., obs + act] -> [..., d]``
        (learned φ, trained with w; refit ψ with :func:`make_refit`). ψ is a
        constant of every update (``stop_gradient``): no gradient reaches ψ.
      optimizer: any optax transform over ``{"w": [d], "phi": θ_φ}``;
        default :func:`default_optimizer`.
      psi_network: a flax module ``[..., obs] -> [..., d]`` for one policy's ψ
        (parameters stacked over ``config.num_policies``); ``None``: the batch
        carries ψ values ``psi_in [B, 2, Π, d]``.

    Returns:
      ``Learner(init, update)``:
        ``init(key, example_batch) -> RegretSFState`` (shape errors raise
        ``ValueError`` naming the mismatch);
        ``update(state, batch) -> (state, metrics)``: one optimiser step on
        ``Σ_b w_b bt_loss(logit_b, μ_b) / Σ_b w_b`` (+ L2) with
        ``logit = (regret(σ²) − regret(σ¹)) / β``. Metrics (scalars):
        ``loss``, ``accuracy`` (ties count ½), ``grad_norm``, ``regret_mean``,
        ``negative_regret_fraction`` (segments with regret < 0: GPI is
        inexact there).
    """
    model = _model(config, phi, psi_network)
    optimizer = default_optimizer(config) if optimizer is None else optimizer

    def init(key: PRNGKey, example_batch: SFPairBatch) -> RegretSFState:
        key_w, key_phi, key_psi = jax.random.split(key, 3)
        del key
        _require_sf_batch(example_batch)
        obs0, act0 = example_batch.obs_1[0, 0], example_batch.action_1[0, 0]
        phi_params = model.phi_init(key_phi, obs0, act0)
        psi_params = model.psi_init(key_psi, example_batch.psi_in_1[0, 0])
        width = _check_batch(model, (phi_params, psi_params), example_batch)
        dtype = jnp.result_type(example_batch.obs_1.dtype, jnp.float32)
        w = config.init_scale / math.sqrt(width) * jax.random.normal(key_w, (width,), dtype)
        params = {"w": w, "phi": phi_params}
        return RegretSFState(params=params, psi_params=psi_params,
                             opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))

    def loss_fn(params: Params, psi_params: Params, batch: SFPairBatch) -> tuple[Array, dict]:
        regret_1 = _regrets(config, model, params, psi_params, batch.obs_1, batch.action_1,
                            batch.mask_1, batch.psi_in_1, batch.terminal_1)
        regret_2 = _regrets(config, model, params, psi_params, batch.obs_2, batch.action_2,
                            batch.mask_2, batch.psi_in_2, batch.terminal_2)
        logits = preference.logit(-regret_1, -regret_2, temperature=config.temperature)
        label = batch.label.astype(logits.dtype)
        target = label * (1.0 - config.label_smoothing) + 0.5 * config.label_smoothing
        losses = preference.bt_loss(logits, target)
        weight = jnp.ones_like(losses) if batch.weight is None else batch.weight.astype(
            losses.dtype)
        total = jnp.maximum(jnp.sum(weight), 1e-8)
        loss = jnp.sum(weight * losses) / total
        if config.l2 > 0:
            loss = loss + 0.5 * config.l2 * optax.tree.norm(params, squared=True)
        correct = jnp.where(label == 0.5, 0.5, ((logits > 0) == (label > 0.5)).astype(
            logits.dtype))
        regrets = jnp.concatenate([regret_1, regret_2])
        metrics = {
            "loss": loss,
            "accuracy": jnp.sum(weight * correct) / total,
            "regret_mean": jnp.mean(regrets),
            "negative_regret_fraction": jnp.mean((regrets < 0).astype(regrets.dtype)),
        }
        return loss, metrics

    def update(state: RegretSFState, batch: SFPairBatch) -> tuple[RegretSFState, dict]:
        _require_sf_batch(batch)
        width = _check_batch(model, (state.params["phi"], state.psi_params), batch)
        if state.params["w"].shape[-1:] != (width,):
            raise ValueError(f"feature width mismatch: the state's w has shape "
                             f"{state.params['w'].shape}, φ has width {width}")
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, state.psi_params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return Learner(init=init, update=update)


def _require_sf_batch(batch: SFPairBatch) -> None:
    if not isinstance(batch, SFPairBatch):
        raise TypeError(f"expected an SFPairBatch, got {type(batch).__name__} "
                        "(from_pair_batch adds the ψ-inputs to a PairBatch)")


def make_regret_fn(
    config: RegretSFConfig,
    phi: PhiFn | nn.Module,
    *,
    psi_network: nn.Module | None = None,
    chunk: int | None = None,
) -> Callable[[RegretSFState, SFSegments], Array]:
    """``regret(state, pool) -> [N]``: the learner's regret of every segment of a pool.

    Pure and jittable; the same computation as the loss (for query selection,
    evaluation against the oracle's regret, or labelling). ``chunk`` bounds
    memory: segments are processed ``chunk`` at a time by ``lax.map``.
    """
    model = _model(config, phi, psi_network)

    def regret(state: RegretSFState, pool: SFSegments) -> Array:
        _segment_dims(pool.obs, pool.action, pool.mask, pool.psi_in, pool.terminal, "")
        _check_widths(model, (state.params["phi"], state.psi_params), pool.obs, pool.action,
                      pool.psi_in)
        one = lambda x: _regrets(config, model, state.params, state.psi_params, *x)
        if chunk is None:
            return one(tuple(pool))
        # lax.map over rows of size `chunk`: vmap inside each block.
        rows = (pool.obs, pool.action, pool.mask, pool.psi_in, pool.terminal)
        single = lambda x: one(tuple(None if a is None else a[None] for a in x))[0]
        return jax.lax.map(single, rows, batch_size=int(chunk))

    return regret


def reward_fn(state: RegretSFState, phi: PhiFn | nn.Module) -> Callable[[Array, Array], Array]:
    """A pure ``(obs [..., obs], action [..., act]) -> r̂ [...]`` = w·φ for RL."""
    model = _model(RegretSFConfig(), phi, None)

    def fn(obs: Array, action: Array) -> Array:
        return model.phi(state.params["phi"], obs, action) @ state.params["w"]

    return fn


# --------------------------------------------------------------------------- #
# Batches from pools
# --------------------------------------------------------------------------- #


def psi_inputs(segments: Any) -> Array:
    """``[N, 2, obs]``: s_0 and s_k of a ``prefrl.types.Segments`` pool (ψ-network inputs)."""
    return jnp.stack([jnp.asarray(segments.obs)[:, 0], jnp.asarray(segments.next_obs)[:, -1]],
                     axis=1)


def pair_batch(pool: SFSegments, first: Array, second: Array, label: Array,
               weight: Array | None = None) -> SFPairBatch:
    """:class:`SFPairBatch` of queries ``(pool[first[q]], pool[second[q]])``, labels ``[Q]``."""
    take = lambda x, i: None if x is None else jnp.take(x, i, axis=0)
    return SFPairBatch(
        obs_1=take(pool.obs, first), action_1=take(pool.action, first),
        mask_1=take(pool.mask, first),
        obs_2=take(pool.obs, second), action_2=take(pool.action, second),
        mask_2=take(pool.mask, second),
        label=jnp.asarray(label), psi_in_1=take(pool.psi_in, first),
        psi_in_2=take(pool.psi_in, second), weight=None if weight is None else jnp.asarray(weight),
        terminal_1=take(pool.terminal, first), terminal_2=take(pool.terminal, second),
    )


def from_pair_batch(batch: Any, psi_in_1: Array, psi_in_2: Array) -> SFPairBatch:
    """An :class:`SFPairBatch` from a ``prefrl.types.PairBatch`` plus ψ-inputs ``[B, 2, …]``."""
    return SFPairBatch(batch.obs_1, batch.action_1, batch.mask_1, batch.obs_2, batch.action_2,
                       batch.mask_2, batch.label, psi_in_1, psi_in_2, weight=batch.weight)


# --------------------------------------------------------------------------- #
# Successor features from rollouts
# --------------------------------------------------------------------------- #


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
    out = _shape_of(psi_network.apply, one, rollouts.obs[0, 0],
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
    model = _model(config, phi, psi_network)

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


# --------------------------------------------------------------------------- #
# Frozen features from a partial-return reward model
# --------------------------------------------------------------------------- #


def reward_model_features(state: Any) -> PhiFn:
    """φ(s, a) = the last hidden layer of a fitted ``reward_model`` (all members, concatenated).

    ``[..., obs], [..., act] -> [..., M·h]``: with these features w can
    represent the ensemble-mean output exactly (the output layers are linear,
    their biases only shift r̂, which the regret is invariant to when γ < 1).
    Needs the reward model's default MLP network.
    """
    network = state.network
    if not isinstance(network, MLP) or not network.hidden:
        raise ValueError("reward_model_features needs a reward model with the default MLP network "
                         f"(at least one hidden layer), got {network!r}")
    hidden = tuple(network.hidden)
    trunk = MLP(hidden[:-1], hidden[-1], network.activation, network.kernel_scale,
                network.kernel_scale)
    last = f"Dense_{len(hidden)}"
    params = state.params["params"]
    trunk_params = {"params": {k: v for k, v in params.items() if k != last}}
    use_action = bool(state.config.use_action)

    def phi(obs: Array, action: Array) -> Array:
        x = jnp.concatenate([obs, action.astype(obs.dtype)], -1) if use_action else obs
        h = jax.vmap(lambda p: network.activation(trunk.apply(p, x)))(trunk_params)  # [M, ..., h]
        return jnp.moveaxis(h, 0, -2).reshape(*x.shape[:-1], -1)

    return phi


__all__ = [
    "LibraryRollouts",
    "RegretSFConfig",
    "RegretSFState",
    "SFFitConfig",
    "SFPairBatch",
    "SFSegments",
    "alternate",
    "default_optimizer",
    "default_phi_network",
    "default_psi_network",
    "fit_successor_features",
    "from_pair_batch",
    "gpi_value",
    "make",
    "make_refit",
    "make_regret_fn",
    "pair_batch",
    "psi_inputs",
    "reward_fn",
    "reward_model_features",
    "segment_regret",
    "successor_targets",
]
