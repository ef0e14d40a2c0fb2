"""Â used greedily by an actor: a deterministic policy gradient on Â, regularised to the data.

Knox et al. (2023, "Learning optimal advantage from preferences and mistaking
it for reward"): the partial-return loss on *regret* labels fits Â ≈ A + c, an
advantage, not a reward. Its right use is greedy, ``π(s) = argmax_a Â(s, a)``
(docs/design.md §4, §4b). With continuous actions the argmax is learned by an
actor that climbs Â at its own action on visited states, held near the data
the way TD3+BC holds a Q-actor (Fujimoto & Gu 2021, "A minimalist approach to
offline RL"):

    μ_θ(s) = tanh(m_θ(s))                       the policy's mode (its greedy action)
    Â_κ(s, a) = mean_j Â_j(s, a) − κ · std_j Â_j(s, a)      over ensemble members j
    λ = α / (std_i Â_κ(s_i, a_i) + ε)           the batch's data actions a_i, no gradient
    L(θ) = − λ · mean_i Â_κ(s_i, μ_θ(s_i)) − mean_i log π_θ(a_i | s_i)

κ = 0 climbs the ensemble mean; κ > 0 a pessimistic lower bound (members
disagree where Â was never fitted). The second term is behaviour cloning on
the data's own actions (a forward KL from the data to π): it trains the
Gaussian's σ too, and keeps μ where Â was fitted. λ's scale makes α the one
knob between BC (α → 0) and pure greedy ascent (α → ∞), invariant to Â's
scale and — since std ignores constants — to the unidentified c in A + c.

Compared with advantage-weighted regression (:mod:`prefrl.learners.advantage_policy`),
which never evaluates Â off the data's actions but cannot pick an action the
data did not try, the actor follows ∇_a Â, so it can improve on the data (one
step of policy improvement on A^{π_E}: it may beat the expert), at the risk of
following Â where it extrapolates; α and κ bound that risk.

Â's parameters are an input (``state.advantage_params``, any pytree that
``a_hat`` reads): a refit replaces them without recompiling ``update``.

Public API: :class:`AdvantageGreedyConfig`, :class:`StepBatch`,
:class:`AdvantageGreedyState`, :func:`pessimistic`, :func:`make`,
:func:`default_network`, :func:`default_optimizer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from prefrl.config import field
from prefrl.learners import Learner
from prefrl.networks import GaussianPolicy, tanh_gaussian_log_prob, tanh_gaussian_mode

Array = jax.Array
PRNGKey = jax.Array
Params = Any
# a_hat(advantage_params, obs [N, obs], action [N, act]) -> members' Â [M, N]
MemberAdvantage = Callable[[Any, Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class AdvantageGreedyConfig:
    """The Â-greedy actor (the loss above) and how the online loop drives it."""

    alpha: float = field(2.5, "α: weight of the Â term against BC, in units of std(Â) "
                         "(TD3+BC's 2.5); → 0 is BC, → ∞ pure greedy ascent")
    pessimism: float = field(0.0, "κ: climb mean − κ·std over the ensemble members")
    learning_rate: float = field(3e-4, "Adam step size of default_optimizer")
    hidden: tuple[int, ...] = field((64, 64), "actor hidden sizes (tanh)")
    init_log_std: float = field(-0.5, "initial log σ of the behaviour Gaussian")
    batch_size: int = field(256, "state–action pairs per gradient step (online)")
    steps: int = field(64, "gradient steps per rollout (online)")
    replay_rollouts: int = field(4, "newest rollouts kept for the steps (online)")

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not self.pessimism >= 0:
            raise ValueError(f"pessimism must be >= 0, got {self.pessimism}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("batch_size", "steps", "replay_rollouts"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class StepBatch(NamedTuple):
    """Visited states and the actions taken there: ``obs [N, obs]``, ``action [N, act]``,
    ``mask [N]`` (1 = a real step)."""

    obs: Array
    action: Array
    mask: Array


@struct.dataclass
class AdvantageGreedyState:
    """The actor's parameters and optimiser; ``advantage_params``: Â's (an input, not trained)."""

    params: Params
    opt_state: optax.OptState
    step: Array  # int32 []
    advantage_params: Any = None


def default_network(action_dim: int, hidden: tuple[int, ...] = (64, 64),
                    init_log_std: float = -0.5) -> nn.Module:
    """A tanh-Gaussian with a state-independent σ (PPO's choice): ``obs -> (mean, log_std)``."""
    return GaussianPolicy(int(action_dim), tuple(hidden), nn.tanh, state_dependent_std=False,
                          init_log_std=init_log_std)


def default_optimizer(config: AdvantageGreedyConfig) -> optax.GradientTransformation:
    """Adam with ``config.learning_rate`` (injected: an array leaf, vmappable)."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)


def pessimistic(members: Array, kappa: float | Array) -> Array:
    """``[M, ...] -> [...]``: ``mean_j − κ · std_j`` over the members (κ = 0: the mean)."""
    chex.assert_rank(members, {2, 3})
    mean = jnp.mean(members, axis=0)
    if isinstance(kappa, int | float) and kappa == 0:
        return mean
    return mean - kappa * jnp.std(members, axis=0)


def make(config: AdvantageGreedyConfig, network: nn.Module,
         optimizer: optax.GradientTransformation | None = None, *,
         a_hat: MemberAdvantage) -> Learner[AdvantageGreedyState, StepBatch]:
    """The Â-greedy actor (Knox et al. 2023's use of Â; TD3+BC's regulariser).

    Args:
      config: :class:`AdvantageGreedyConfig` (α, κ).
      network: a ``prefrl.networks.GaussianPolicy``, e.g. :func:`default_network`.
      optimizer: any optax transform; default :func:`default_optimizer`.
      a_hat: ``a_hat(state.advantage_params, obs [N, obs], action [N, act]) -> [M, N]``,
        the ensemble members' Â (M = 1 for a single function); differentiable in
        the action.

    Returns:
      ``Learner(init, update)``: ``init(key, example_batch) -> state`` (set Â's
      parameters with ``state.replace(advantage_params=…)``);
      ``update(state, batch) -> (state, metrics)``, one gradient step, metrics
      ``loss``, ``advantage_gain`` (mean Â_κ(s, μ(s)) − Â_κ(s, a)), ``bc_nll``,
      ``lambda``, ``log_std``, ``grad_norm``.
    """
    optimizer = default_optimizer(config) if optimizer is None else optimizer

    def loss_fn(params: Params, adv_params: Any, batch: StepBatch) -> tuple[Array, dict]:
        chex.assert_rank([batch.obs, batch.action, batch.mask], [2, 2, 1])
        m = batch.mask.astype(jnp.float32)
        count = jnp.maximum(jnp.sum(m), 1.0)
        avg = lambda x: jnp.sum(m * jnp.where(m > 0, x, 0.0)) / count
        mean, log_std = network.apply(params, batch.obs)
        greedy = tanh_gaussian_mode(mean)
        on_policy = pessimistic(a_hat(adv_params, batch.obs, greedy), config.pessimism)
        on_data = jax.lax.stop_gradient(
            pessimistic(a_hat(adv_params, batch.obs, batch.action), config.pessimism))
        chex.assert_equal_shape([on_policy, on_data, m])
        spread = jnp.sqrt(avg((on_data - avg(on_data)) ** 2))
        lam = config.alpha / (spread + 1e-6)
        nll = avg(-tanh_gaussian_log_prob(mean, log_std, batch.action))
        loss = -lam * avg(on_policy) + nll
        metrics = {"loss": loss, "advantage_gain": avg(on_policy - on_data), "bc_nll": nll,
                   "lambda": lam, "log_std": jnp.mean(log_std)}
        return loss, metrics

    def init(key: PRNGKey, example_batch: StepBatch) -> AdvantageGreedyState:
        """A random actor; ``example_batch`` fixes the observation size."""
        params = network.init(key, example_batch.obs[0])
        return AdvantageGreedyState(params=params, opt_state=optimizer.init(params),
                                    step=jnp.zeros((), jnp.int32))

    def update(state: AdvantageGreedyState, batch: StepBatch
               ) -> tuple[AdvantageGreedyState, dict[str, Array]]:
        """One gradient step of ``L`` on ``batch``."""
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, state.advantage_params,
                                                         batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state, step=state.step + 1), metrics

    return Learner(init=init, update=update)


__all__ = ["AdvantageGreedyConfig", "AdvantageGreedyState", "MemberAdvantage", "StepBatch",
           "default_network", "default_optimizer", "make", "pessimistic"]
