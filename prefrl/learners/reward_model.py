"""Reward fitting from preferences: r̂(s, a) (partial return) or Â(s, a) (regret).

Both learning assumptions fit one scalar function ``f_θ(s, a)`` of a state and an action
by the Bradley–Terry loss on its discounted sum over each segment (docs/design.md §2, §4):

    score(σ) = Σ_t γ^t m_t f_θ(s_t, a_t)
    P_θ(σ¹ ≻ σ²) = sigmoid((score(σ¹) − score(σ²)) / β)
    L(θ) = −[μ log P_θ + (1 − μ) log(1 − P_θ)]

* ``assumption="partial_return"`` (Christiano et al. 2017, "Deep RL from
  human preferences"): f is a reward r̂ and the score is its partial return
  (:func:`prefrl.preference.partial_return`, usually γ = 1).
* ``assumption="advantage"`` (Knox et al. 2023, "Learning optimal advantage from
  preferences and mistaking it for reward"): f is the optimal advantage Â and
  the score is −regret (:func:`prefrl.preference.regret_score`, γ the MDP's
  discount). Since A* is r shaped by the potential V*, a policy that
  maximises Â as its reward has the same optimum as one maximising r.
  ``"regret"`` is Â's old name (a regret-model r̂ is ``prefrl.learners.regret_sf``):
  still accepted with a ``DeprecationWarning``.

``potential=True`` adds a learned state potential to the score, + γ^k Φ(s_k) − Φ(s_0)
(the regret model with its value learned; :mod:`prefrl.learners.reward_potential`).

Practice (Christiano 2017, B-Pref, imitation; docs/design.md §4): an ensemble of M
members trained in one step (``vmap`` over members: one batched matmul on CPU), each
with its own bootstrap weights; L2 and/or AdamW weight decay; label smoothing; the
gradient accumulated over chunks of ``chunk_pairs`` queries (``lax.scan``: each chunk's
activations stay in cache, ~2× faster on CPU); weight averaging (WARM, Ramé et al. 2024).
Early stopping and output standardisation belong to :mod:`prefrl.loops.fit`.

The state is arrays only (:class:`RewardModelState`); what they mean — the
config and the member network — is the :class:`RewardModel` value that
:func:`make` closes over and that the functions reading a state take first
(:func:`reward_fn`, :func:`segment_scores`, :func:`evaluate`, :class:`PPOReward` …).
Files: ``prefrl.checkpoints.save_reward_model`` / ``load_reward_model``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl import preference
from prefrl.config import field
from prefrl.data import pairs
from prefrl.learners import Learner, check_make, reward_members
from prefrl.learners.reward_members import default_network
from prefrl.types import PairBatch

Array = jax.Array
PRNGKey = jax.Array

_ACTIVATIONS = reward_members.ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
    """Reward-model fitting options (one frozen, hashable value).

    ``assumption`` picks the preference model the learner assumes; all other
    options are shared.
    """

    assumption: Literal["partial_return", "advantage", "regret"] = field(
        "partial_return", "what is fitted: r̂ (partial_return) or the advantage Â (advantage; "
        "'regret' is its deprecated name)")
    hidden: tuple[int, ...] = field((256, 256), "hidden widths of each member's MLP")
    activation: Literal["relu", "leaky_relu", "tanh"] = field("leaky_relu", "hidden activation")
    use_action: bool = field(True, "input (s, a); False: r̂(s) from the state alone")
    ensemble_size: int = field(3, "ensemble members M (trained together, bootstrapped)")
    combine: Literal["mean", "warm"] = field(
        "mean", "reward_fn combines members by output mean or weight averaging (WARM)")
    bootstrap: bool = field(True, "each member trains on its own bootstrap resample")
    learning_rate: float = field(3e-4, "Adam(W) step size of the default optimizer")
    weight_decay: float = field(0.0, "AdamW decoupled weight decay (default optimizer)")
    l2: float = field(0.0, "L2 penalty l2/2 ||θ||² added to each member's loss")
    label_smoothing: float = field(0.0, "ε: targets μ(1-ε) + ε/2")
    temperature: float = field(1.0, "Boltzmann β of the preference model")
    discount: float = field(1.0, "γ inside a segment: 1 for partial return, the MDP γ for regret")
    batch_size: int = field(128, "queries per update (fit)")
    num_steps: int = field(1000, "updates (fit)")
    eval_every: int = field(50, "updates between validation checks (fit)")
    chunk_pairs: int = field(32, "queries per gradient chunk (cache-sized work on CPU)")
    normalize: bool = field(True, "standardise the output over the training steps after fit")
    potential: bool = field(False, "also learn a state potential Φ: score Σ γ^t r̂ + γ^k Φ(s_k) "
                            "− Φ(s_0) (regret labels); the reward is r̂ alone")
    library_size: int = field(
        0, "Π > 0: the regret model with V̂* by GPI over successor features of Π policy "
        "snapshots (prefrl.learners.reward_sf; online reward_learner 'regret_sf'); 0 = off")
    library_temperature: float = field(
        0.0, "τ of the GPI maximum when library_size > 0 (0 = hard max)")
    library_fit_steps: int = field(
        200, "library_size > 0: ψ regression updates before each refit (4 target "
        "recomputations, 1024 rows an update; prefrl.learners.reward_sf.fit_successors)")

    def __post_init__(self) -> None:
        if self.assumption not in ("partial_return", "advantage", "regret"):
            raise ValueError(f"assumption must be 'partial_return' or 'advantage' (old name "
                             f"'regret'), got {self.assumption!r}")
        if self.assumption == "regret":
            warnings.warn("assumption='regret' fits the advantage Â; call it 'advantage' (the "
                          "regret-model r̂ is prefrl.learners.regret_sf)", DeprecationWarning,
                          stacklevel=3)
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}")
        if self.combine not in ("mean", "warm"):
            raise ValueError(f"combine must be 'mean' or 'warm', got {self.combine!r}")
        if any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {self.hidden}")
        for name in ("ensemble_size", "batch_size", "num_steps", "eval_every", "chunk_pairs",
                     "library_fit_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.l2 < 0:
            raise ValueError("weight_decay and l2 must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if int(self.library_size) < 0:
            raise ValueError(f"library_size must be >= 0, got {self.library_size}")
        if self.library_size and self.potential:
            raise ValueError("library_size > 0 (successor features) and potential=True are two "
                             "value terms; choose one")
        if not self.library_temperature >= 0:
            raise ValueError(f"library_temperature must be >= 0, got {self.library_temperature}")

    @property
    def score_fn(self) -> Callable[..., Array]:
        """The segment score of the assumed preference model (one segment)."""
        if self.assumption == "partial_return":
            return preference.partial_return
        return preference.regret_score


def fitted_function(assumption: str) -> str:
    """The reward model's ``assumption`` for a preference model: ``"regret"`` → ``"advantage"``."""
    return "advantage" if assumption == "regret" else assumption


@struct.dataclass
class RewardModelState:
    """Training state, arrays only. ``params`` leaves are stacked ``[M, …]`` over members.

    ``reward_mean``/``reward_std`` standardise the combined output (set by
    :func:`normalize`; 0 and 1 before).
    """

    params: Any
    opt_state: Any
    step: Array  # int32 scalar: updates applied
    reward_mean: Array  # float32 scalar
    reward_std: Array  # float32 scalar


class RewardModel(NamedTuple):
    """What a :class:`RewardModelState`'s arrays mean: the config and one member's network.

    A hashable value (frozen config, flax module), so it can be a static
    argument of ``jax.jit``.
    """

    config: RewardModelConfig
    network: nn.Module


def default_optimizer(config: RewardModelConfig, learning_rate: float | Array | None = None
                      ) -> optax.GradientTransformation:
    """Adam, or AdamW when ``weight_decay > 0`` (decoupled decay, Loshchilov & Hutter).

    The learning rate is injected (``optax.inject_hyperparams``): it is an
    array in the optimiser state, so ``jax.vmap`` over states made with
    different learning rates trains them all in one compiled call.
    ``learning_rate`` (a float or a traced array) replaces ``config.learning_rate``.
    """
    lr = config.learning_rate if learning_rate is None else learning_rate
    if config.weight_decay > 0:
        return optax.inject_hyperparams(optax.adamw)(
            learning_rate=lr, weight_decay=config.weight_decay)
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def model(config: RewardModelConfig, network: nn.Module | None = None) -> RewardModel:
    """The :class:`RewardModel` of ``config`` (``network`` defaults to :func:`default_network`)."""
    return RewardModel(config, default_network(config) if network is None else network)


# --------------------------------------------------------------------------- shapes and validation


def input_size(params: Any) -> int | None:
    """The input size of a member's first layer (``Dense_0``'s kernel), if there is one."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[-1] == "kernel" and "Dense_0" in keys:
            return int(leaf.shape[-2])
    return None


def check_compatible(model: RewardModel, params: Any, batch: PairBatch) -> None:
    """Raise ``ValueError`` naming the mismatch when ``batch`` does not fit the model.

    The model is per step, so any segment length fits; the batch's input
    size (``obs_dim + act_dim``, or ``obs_dim`` without actions) must be the
    first layer's.
    """
    _, obs_dim, act_dim = pairs.dims(batch)
    size = input_size(params)
    given = obs_dim + act_dim if model.config.use_action else obs_dim
    if size is not None and given != size:
        parts = f"obs_dim {obs_dim} + act_dim {act_dim}" if model.config.use_action else \
            f"obs_dim {obs_dim}"
        raise ValueError(f"input size mismatch: the batch gives {parts} = {given} inputs, the "
                         f"reward model takes {size}")


# --------------------------------------------------------------------------- network application


def _inputs(config: RewardModelConfig, obs: Array, action: Array) -> Array:
    if config.use_action:
        return jnp.concatenate([obs, action.astype(obs.dtype)], axis=-1)
    return obs


def _apply_members(network: nn.Module, params: Any, x: Array) -> Array:
    """``x [N, d]`` shared by all members -> ``[M, N]``: one batched matmul per layer."""
    return jax.vmap(lambda p: network.apply(p, x)[..., 0])(params)


def member_outputs(model: RewardModel, state: RewardModelState, obs: Array, action: Array
                   ) -> Array:
    """Raw outputs of every member: ``obs [..., obs], action [..., act] -> [M, ...]``."""
    x = _inputs(model.config, obs, action)
    lead = x.shape[:-1]
    out = _apply_members(model.network, state.params, x.reshape(-1, x.shape[-1]))
    return out.reshape((out.shape[0], *lead))


def combined_params(state: RewardModelState) -> Any:
    """Member-averaged parameters ``[1, …]`` (WARM, Ramé et al. 2024)."""
    return jax.tree.map(lambda p: jnp.mean(p, axis=0, keepdims=True), state.params)


def combined_output(model: RewardModel, state: RewardModelState, obs: Array, action: Array
                  ) -> Array:
    """Combined raw output ``[...]``: the ensemble mean, or the weight-averaged member."""
    if model.config.combine == "warm":
        state = state.replace(params=combined_params(state))
    return jnp.mean(member_outputs(model, state, obs, action), axis=0)


def reward_fn(model: RewardModel, state: RewardModelState) -> Callable[[Array, Array], Array]:
    """A pure ``(obs [..., obs], action [..., act]) -> r̂ [...]`` for PPO.

    r̂ = (combine(f_1 … f_M)(s, a) − mean) / std: the ensemble mean (or the
    weight-averaged network when ``combine="warm"``), standardised by the
    statistics :func:`normalize` stored in the state.
    """

    def fn(obs: Array, action: Array) -> Array:
        return (combined_output(model, state, obs, action) - state.reward_mean) / state.reward_std

    return fn


def segment_scores(model: RewardModel, state: RewardModelState, obs: Array, action: Array,
                   mask: Array, final_obs: Array | None = None) -> Array:
    """``[N]`` learned segment scores under the state's assumption (discounted sum of r̂/Â).

    ``obs [N, k, obs]``, ``action [N, k, act]``, ``mask [N, k]``; the standardised
    :func:`reward_fn` summed as the assumed preference model sums it, plus the
    member-mean potential gap in the same units when ``potential`` (``final_obs [N, obs]``).
    """
    values = reward_fn(model, state)(obs, action)
    mask = jnp.asarray(mask, values.dtype)
    scores = _segment_scores(model.config, values, mask)
    gaps = reward_members.value_terms(model.config, model.network, state.params, obs,
                                      final_obs, mask, action.shape[-1])
    if gaps is not None:
        scores = scores + jnp.mean(gaps, axis=0) / state.reward_std
    return scores


@dataclasses.dataclass(frozen=True)
class PPOReward:
    """PPO's ``reward_fn`` for a learned reward: ``r̂(s, a)`` of ``extras["reward_params"]``.

    PPO passes ``state.reward_params`` (a :class:`RewardModelState`) as
    ``extras["reward_params"]``: a refit replaces the arrays without
    recompiling PPO's update. A hashable value, so jitted learners built with
    it are cached.
    """

    model: RewardModel

    def __call__(self, obs: Array, action: Array, next_obs: Array, extras: Any) -> Array:
        del next_obs
        return reward_fn(self.model, extras["reward_params"])(obs, action)


def _segment_scores(config: RewardModelConfig, values_nt: Array, mask_nt: Array) -> Array:
    """``[..., N, k]`` per-step values -> ``[..., N]`` scores of the assumed model."""
    score = lambda v_t, m_t: config.score_fn(v_t, discount=config.discount, mask_t=m_t)
    per_segment = jax.vmap(score)
    for _ in range(values_nt.ndim - 2):
        per_segment = jax.vmap(per_segment, in_axes=(0, None))
    return per_segment(values_nt, mask_nt)


def pair_logits(
    config: RewardModelConfig, network: nn.Module, params: Any, batch: PairBatch
) -> Array:
    """``[M, B]`` preference logits of every member for every query."""
    size, length, _ = batch.obs_1.shape
    obs = jnp.concatenate([batch.obs_1, batch.obs_2], axis=0)
    action = jnp.concatenate([batch.action_1, batch.action_2], axis=0)
    x = _inputs(config, obs, action)
    out = _apply_members(network, params, x.reshape(2 * size * length, -1))
    out = out.reshape(out.shape[0], 2 * size, length)
    mask = jnp.concatenate([batch.mask_1, batch.mask_2], axis=0).astype(out.dtype)
    scores = _segment_scores(config, out, mask)  # [M, 2B]
    final = None if batch.final_obs_1 is None else jnp.concatenate(
        [batch.final_obs_1, batch.final_obs_2], axis=0)
    gaps = reward_members.value_terms(config, network, params, obs, final, mask, action.shape[-1])
    if gaps is not None:
        scores = scores + gaps
    first = scores[:, :size]
    if batch.offset is not None:  # the known part of the logit (e.g. fixed-critic V terms)
        first = first + batch.offset.astype(first.dtype)[None, :]
    logit = lambda s1, s2: preference.logit(s1, s2, temperature=config.temperature)
    return jax.vmap(jax.vmap(logit))(first, scores[:, size:])


# --------------------------------------------------------------------------- the learner


def _smoothed(label: Array, smoothing: float) -> Array:
    # Label smoothing towards ½: μ' = (1 − ε) μ + ε/2 (B-Pref / imitation practice).
    return label * (1.0 - smoothing) + 0.5 * smoothing


def _loss_sums(
    config: RewardModelConfig, network: nn.Module, params: Any, batch: PairBatch, w_mb: Array
) -> tuple[Array, Array]:
    """Weighted sums over the batch, per member: (Σ w ℓ, Σ w 1[correct]) ``[M]`` each."""
    logits = pair_logits(config, network, params, batch)  # [M, B]
    target = _smoothed(batch.label.astype(logits.dtype), config.label_smoothing)
    loss_mb = preference.bt_loss(logits, jnp.broadcast_to(target, logits.shape))
    # Accuracy on decisive labels; ties count ½ whatever is predicted.
    label = jnp.broadcast_to(batch.label, logits.shape)
    correct = jnp.where(
        label == 0.5, 0.5, ((logits > 0) == (label > 0.5)).astype(logits.dtype)
    )
    return jnp.sum(w_mb * loss_mb, axis=1), jnp.sum(w_mb * correct, axis=1)


def make(
    config: RewardModelConfig,
    network: nn.Module | None = None,
    optimizer: optax.GradientTransformation | None = None,
) -> Learner[RewardModelState, PairBatch]:
    """Build the reward-model learner.

    Args:
      config: :class:`RewardModelConfig`.
      network: a flax module ``[..., in] -> [..., 1]`` for one member
        (``in = obs_dim + act_dim``, or ``obs_dim`` without actions).
        Default: :func:`default_network`. ``model(config, network)`` is the
        :class:`RewardModel` the other functions of this module take.
      optimizer: any optax transform; applied to each member separately
        (``vmap``-ed), so a coupling transform such as global-norm clipping
        acts per member. Default: :func:`default_optimizer`.

    Returns:
      ``Learner(init, update)``:
        ``init(key, example_batch) -> RewardModelState`` (M members; with
        ``combine="warm"`` every member starts from the same parameters, as
        weight averaging needs a shared initialisation);
        ``update(state, batch) -> (state, metrics)``: one optimiser step on
        the per-member mean loss ``Σ_b w_mb ℓ_mb / Σ_b w_mb`` (+ ``l2/2 ‖θ_m‖²``).
        ``metrics``: ``loss``, ``accuracy``, ``grad_norm`` — each ``[M]``.
    """
    check_make("reward_model.make", config, RewardModelConfig, network=network, optimizer=optimizer)
    optimizer = default_optimizer(config) if optimizer is None else optimizer
    rm = model(config, network)
    network = rm.network
    num_members = int(config.ensemble_size)

    def init(key: PRNGKey, example_batch: PairBatch) -> RewardModelState:
        _, obs_dim, act_dim = pairs.dims(example_batch)
        in_dim = obs_dim + act_dim if config.use_action else obs_dim
        dummy = jnp.zeros((1, in_dim), jnp.float32)
        keys = jax.random.split(key, num_members)
        if config.combine == "warm":
            keys = jnp.broadcast_to(keys[:1], keys.shape)
        params = jax.vmap(lambda k: network.init(k, dummy))(keys)
        return RewardModelState(
            params=params,
            opt_state=jax.vmap(optimizer.init)(params),
            step=jnp.zeros((), jnp.int32),
            reward_mean=jnp.zeros((), jnp.float32),
            reward_std=jnp.ones((), jnp.float32),
        )

    def update(state: RewardModelState, batch: PairBatch) -> tuple[RewardModelState, dict]:
        check_compatible(rm, state.params, batch)
        members = jax.tree.leaves(state.params)[0].shape[0]
        w_mb = pairs.member_weights(batch, members)
        w_total = jnp.maximum(jnp.sum(w_mb, axis=1), 1e-8)  # [M]
        chunks = pairs.chunked(batch, w_mb, int(config.chunk_pairs))
        num_chunks = chunks[1].shape[0]

        def chunk_loss(params: Any, rows: PairBatch, w_rows: Array) -> tuple[Array, Array]:
            loss_sum, correct_sum = _loss_sums(config, network, params, rows, w_rows)
            # Members are independent: the sum of their losses has per-member gradients.
            return jnp.sum(loss_sum / w_total), (loss_sum, correct_sum)

        grad_fn = jax.grad(chunk_loss, has_aux=True)

        def body(carry, inputs):
            grads, loss_sum, correct_sum = carry
            rows, w_rows = inputs
            g, (l_sum, c_sum) = grad_fn(state.params, rows, w_rows)
            return (jax.tree.map(jnp.add, grads, g), loss_sum + l_sum, correct_sum + c_sum), None

        zeros_m = jnp.zeros((members,), jnp.float32)
        init_carry = (jax.tree.map(jnp.zeros_like, state.params), zeros_m, zeros_m)
        if num_chunks == 1:
            (grads, loss_sum, correct_sum), _ = body(
                init_carry, (jax.tree.map(lambda x: x[0], chunks[0]), chunks[1][0])
            )
        else:
            (grads, loss_sum, correct_sum), _ = jax.lax.scan(body, init_carry, chunks)
        loss_m = loss_sum / w_total
        if config.l2 > 0:
            # Coupled L2 penalty l2/2 ‖θ_m‖² per member (its gradient is l2 θ).
            sq = jax.tree.map(lambda p: jnp.sum(p.reshape(members, -1) ** 2, axis=1),
                              state.params)
            loss_m = loss_m + 0.5 * config.l2 * sum(jax.tree.leaves(sq))
            grads = jax.tree.map(lambda g, p: g + config.l2 * p, grads, state.params)
        updates, opt_state = jax.vmap(optimizer.update)(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = jnp.sqrt(sum(
            jnp.sum(g.reshape(members, -1) ** 2, axis=1) for g in jax.tree.leaves(grads)
        ))
        metrics = {"loss": loss_m, "accuracy": correct_sum / w_total, "grad_norm": grad_norm}
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, metrics

    return Learner(init=init, update=update)


def evaluate(model: RewardModel, state: RewardModelState, batch: PairBatch, chunk: int = 256
             ) -> dict[str, Array]:
    """Per-member weighted mean loss and accuracy ``[M]`` on a batch (no update).

    Scans over ``chunk`` queries at a time so a large validation set does not
    materialise all its activations at once.
    """
    check_compatible(model, state.params, batch)
    members = jax.tree.leaves(state.params)[0].shape[0]
    w_mb = pairs.member_weights(batch, members)
    rows, w_rows = pairs.chunked(batch, w_mb, chunk)

    def body(carry, inputs):
        l_sum, c_sum = _loss_sums(model.config, model.network, state.params, *inputs)
        return (carry[0] + l_sum, carry[1] + c_sum), None

    zeros_m = jnp.zeros((members,), jnp.float32)
    (loss_sum, correct_sum), _ = jax.lax.scan(body, (zeros_m, zeros_m), (rows, w_rows))
    w_total = jnp.maximum(jnp.sum(w_mb, axis=1), 1e-8)
    return {"loss": loss_sum / w_total, "accuracy": correct_sum / w_total}


__all__ = [
    "PPOReward", "PairBatch", "RewardModel", "RewardModelConfig", "RewardModelState",
    "check_compatible", "combined_output", "combined_params", "default_network",
    "default_optimizer", "evaluate", "fitted_function", "input_size", "make", "member_outputs",
    "model", "reward_fn", "segment_scores",
]
