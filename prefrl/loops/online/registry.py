"""The online loop's registries: each the single list of its kind.

* **Online reward learners** (:data:`REWARD_LEARNERS`): what a refit fits on
  the labels and how a segment is scored — the reward-model learner of
  :mod:`prefrl.learners.reward_model` under a preference model, with an
  optional known per-segment term (the fixed-critic regret learner's
  ``γ^k V(s_k) − V(s_0)``).
* **Policy learners** (:data:`POLICY_LEARNERS`): how the policy improves
  between rounds from its rollouts, given the current learned reward or the
  labels themselves: ``ppo`` (PPO on r̂), ``advantage_greedy`` (an actor
  climbing Â, Knox et al. 2023), ``cpl`` (the policy fitted to the labels,
  Hejna et al. 2023). An off-policy learner keeps its own replay buffer in its
  state and updates as often as it likes inside ``update``.
* Query rules live in :data:`prefrl.data.queries.ACQUISITIONS` (the data
  layer, where selection is).

Config validation, the CLI's choices, sweeps and the docs read these
dictionaries; adding a learner or a query rule is one module plus one
``register_…`` call (docs/design.md, "Extending the online loop").
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from prefrl.learners import advantage_greedy, pebble, ppo
from prefrl.learners import reward_model as rm
from prefrl.loops.online import cpl as online_cpl
from prefrl.loops.online import greedy
from prefrl.loops.online import pebble as online_pebble
from prefrl.loops.online.learner_types import PolicyLearner
from prefrl.policies import Policy, policy_fn

Array = jax.Array
PRNGKey = jax.Array
Metrics = dict[str, Array]


class TermContext(NamedTuple):
    """What a reward learner's known segment term may read (all traceable).

    ``critic(obs [..., obs]) -> V [...]``: the policy learner's value of the
    *current* learned reward (None when the policy learner has none);
    ``discount``: the policy learner's γ; ``length``: the segment length k.
    """

    critic: Callable[[Array], Array] | None
    discount: float
    length: int


@dataclasses.dataclass(frozen=True)
class OnlineRewardLearner:
    """An online reward learner: the reward-model fit plus what makes it this learner.

    ``configure(reward_config, policy_discount, oracle_discount)`` returns the
    fit's :class:`~prefrl.learners.reward_model.RewardModelConfig` (e.g. the
    γ its segment score uses). ``segment_term(ctx, obs_0 [N, obs], obs_k [N, obs])
    -> [N]`` (optional) is a known part of each segment's score in units of
    the policy's reward (the fit adds ``σ·(term(σ¹) − term(σ²))`` to each
    query's logit, σ the std of the r̂ the policy learned from, and held-out
    accuracy adds it to the learned score). ``fits=False``: no reward model
    is fitted at all (``none``: for policy learners that learn from the
    labels directly).
    """

    name: str
    description: str
    configure: Callable[[rm.RewardModelConfig, float, float], rm.RewardModelConfig]
    segment_term: Callable[[TermContext, Array, Array], Array] | None = None
    fits: bool = True


class PolicyLearnerSpec(NamedTuple):
    """A registered policy learner: ``make(context) -> PolicyLearner`` and a description.

    ``config``: its own settings' dataclass (``make`` gets an instance as
    ``policy_config``; the CLI's ``--{name}-…`` options), or None.
    ``reward_learners``: the reward learners it works with (None: any that
    fits a reward). ``check(oracle)``: refuses oracle settings it cannot learn
    from (``ValueError``), before anything runs or is written.
    """

    make: Callable[..., PolicyLearner]
    description: str
    config: type | None = None
    reward_learners: tuple[str, ...] | None = None
    check: Callable[[Any], None] | None = None
    label_from: Callable[[Any], int] | None = None


# --------------------------------------------------------------------------- reward learners

def _same(config: rm.RewardModelConfig, policy_discount: float, oracle_discount: float
          ) -> rm.RewardModelConfig:
    return config


def _oracle_gamma(config: rm.RewardModelConfig, policy_discount: float,
                  oracle_discount: float) -> rm.RewardModelConfig:
    # Knox et al. 2023: the partial-return loss on regret labels recovers Â ≈ A + c only
    # when segments are scored Σ γ^t Â with the oracle's γ.
    return dataclasses.replace(config, discount=oracle_discount)


def _potential(config: rm.RewardModelConfig, policy_discount: float,
               oracle_discount: float) -> rm.RewardModelConfig:
    # The regret model's score with its value learned: Σ γ^t r̂ + γ^k Φ(s_k) − Φ(s_0), γ the
    # oracle's; the policy gets r̂ (a potential-shaped r when the fit is exact).
    return dataclasses.replace(config, discount=oracle_discount, potential=True)


#: Π of reward_learner 'regret_sf' when the reward config leaves library_size at 0. Chosen
#: on tuning seeds 10–11 (run, 1000 MC-regret labels): Π = 1 ends at 105 / 2241, Π = 4 at
#: −65 / 508 — GPI's maximum picks whichever older snapshot's ψ extrapolates highest.
DEFAULT_LIBRARY_SIZE = 1


def _successor_library(config: rm.RewardModelConfig, policy_discount: float,
                       oracle_discount: float) -> rm.RewardModelConfig:
    # Knox et al. 2022 online: the regret score with V̂* by GPI over ψ of the run's own
    # snapshots, γ the oracle's (the policy's when the labels are undiscounted: ψ needs
    # γ < 1); the policy learns from r̂ = w·φ + b.
    size = config.library_size or DEFAULT_LIBRARY_SIZE
    gamma = oracle_discount if oracle_discount < 1.0 else policy_discount
    return dataclasses.replace(config, discount=gamma, library_size=size)


def _policy_gamma(config: rm.RewardModelConfig, policy_discount: float,
                  oracle_discount: float) -> rm.RewardModelConfig:
    if config.discount not in (1.0, policy_discount):
        raise ValueError(f"reward_learner='regret_critic' scores segments with the policy's "
                         f"γ = {policy_discount}; the reward config's discount is "
                         f"{config.discount}")
    return dataclasses.replace(config, discount=policy_discount)


def _critic_gap(ctx: TermContext, obs_0: Array, obs_k: Array) -> Array:
    if ctx.critic is None:
        raise ValueError("reward_learner='regret_critic' needs a policy learner with a critic")
    return (ctx.discount ** ctx.length) * ctx.critic(obs_k) - ctx.critic(obs_0)


REWARD_LEARNERS: dict[str, OnlineRewardLearner] = {}
# Old names: they warn once and keep working.
REWARD_LEARNER_ALIASES: dict[str, str] = {"partial_return": "rhat", "regret": "regret_critic"}


def register_reward_learner(learner: OnlineRewardLearner) -> None:
    """Add an online reward learner under ``learner.name``."""
    if not isinstance(learner, OnlineRewardLearner):
        raise TypeError(f"register_reward_learner expects an OnlineRewardLearner, got "
                        f"{type(learner).__name__}")
    if learner.name in REWARD_LEARNERS or learner.name in REWARD_LEARNER_ALIASES:
        raise ValueError(f"online reward learner {learner.name!r} is already registered")
    REWARD_LEARNERS[learner.name] = learner


for _learner in (
    OnlineRewardLearner(
        "rhat", "r̂ under partial return: Bradley–Terry on Σ r̂ (Christiano et al. 2017)", _same),
    OnlineRewardLearner(
        "advantage", "Â: Bradley–Terry on Σ γ^t Â with the oracle's γ (Knox et al. 2023); "
        "for regret labels", _oracle_gamma),
    OnlineRewardLearner(
        "potential", "r̂ with a learned potential Φ: Bradley–Terry on Σ γ^t r̂ + γ^k Φ(s_k) − "
        "Φ(s_0), the oracle's γ (the regret model with V learned); the policy learns from r̂. "
        "For regret labels", _potential),
    OnlineRewardLearner(
        "none", "no reward model: for policy learners that learn from the labels directly "
        "(cpl)", _same, fits=False),
    OnlineRewardLearner(
        "regret_critic", "r̂ under the regret model with the policy's critic as V: Bradley–Terry "
        "on Σ γ^t r̂ + γ^k V(s_k) − V(s_0) (Knox et al. 2022 with Π = {π}); for regret labels",
        _policy_gamma, _critic_gap),
    OnlineRewardLearner(
        "regret_sf", "r̂ under the regret model with V̂* by GPI over successor features of the "
        "run's own policy snapshots (Knox et al. 2022, online; prefrl.learners.reward_sf): "
        "Bradley–Terry on Σ γ^t r̂ + γ^k V̂*(s_k) − V̂*(s_0), the oracle's γ; ψ regressed "
        "on each snapshot's rollout segments before every refit. For regret labels",
        _successor_library),
):
    register_reward_learner(_learner)

_warned: set[str] = set()


def reward_learner(name: str) -> OnlineRewardLearner:
    """The registered learner ``name`` (an old name warns once); ``ValueError`` if unknown."""
    if name in REWARD_LEARNER_ALIASES:
        new = REWARD_LEARNER_ALIASES[name]
        if name not in _warned:
            _warned.add(name)
            warnings.warn(f"reward_learner={name!r} is now called {new!r}", FutureWarning,
                          stacklevel=3)
        name = new
    if name not in REWARD_LEARNERS:
        raise ValueError(f"unknown reward_learner {name!r}; use one of {sorted(REWARD_LEARNERS)}")
    return REWARD_LEARNERS[name]


# --------------------------------------------------------------------------- policy learners

def _ppo(*, config: Any, learner_config: Any, obs_dim: int, act_dim: int, num_updates: int,
         reward_model: rm.RewardModel, reference: tuple[Any, Any], **_: Any) -> PolicyLearner:
    """PPO on the learned reward (the reward's parameters in ``PPOState.reward_params``)."""
    ref_params, ref_apply = reference
    learner = ppo.make(learner_config, obs_dim, act_dim, num_updates=num_updates,
                       reward_fn=rm.PPOReward(reward_model), reference_apply=ref_apply)
    apply = ppo.make_policy_apply(learner_config, act_dim)
    acting = ppo.make_acting(learner_config, act_dim)

    def init(key: PRNGKey) -> Any:
        return learner.init(key).replace(ref_params=ref_params)

    def act(state: Any, deterministic: bool) -> Callable[..., Any]:
        return policy_fn(Policy(apply, ppo.policy_bundle(state)), deterministic=deterministic)

    return PolicyLearner(
        init=init, update=learner.update,
        set_reward=lambda s, r: s.replace(reward_params=r.replace(opt_state=None)),
        behaviour=lambda s: act(s, False), greedy=lambda s: act(s, True),
        critic=acting.value,
        checkpoint_view=lambda s: s.replace(reward_params=None, ref_params=None),
        restore=lambda loaded, fresh: loaded.replace(ref_params=fresh.ref_params),
        discount=float(learner_config.discount))


def _cpl_check(oracle: Any) -> None:
    if oracle.temperature <= 0:
        raise ValueError(
            "policy_learner='cpl' needs stochastic labels: with deterministic labels CPL's "
            "loss has no finite minimum and pushes log π towards ±∞; set the oracle's β "
            "relative to the score scale (--oracle-temperature 1 --oracle-temperature-mode "
            "relative)")


POLICY_LEARNERS: dict[str, PolicyLearnerSpec] = {
    "ppo": PolicyLearnerSpec(_ppo, "PPO on the standardised learned reward (Schulman et al. "
                                   "2017), on-policy: each update recomputes r̂ on its rollout"),
    "advantage_greedy": PolicyLearnerSpec(
        greedy.make,
        "an actor climbing Â(s, π(s)) on visited states, BC-regularised (Knox et al. 2023: "
        "Â used greedily, not as a reward); with reward_learner='advantage'",
        advantage_greedy.AdvantageGreedyConfig, ("advantage",)),
    "cpl": PolicyLearnerSpec(
        online_cpl.make,
        "CPL (Hejna et al. 2023): π fitted to labels of its own segments, Σ α log π as the "
        "regret score; no reward model, no RL; needs stochastic labels; reward_learner='none'",
        online_cpl.OnlineCPLConfig, ("none",), _cpl_check),
    "pebble": PolicyLearnerSpec(
        online_pebble.make,
        "PEBBLE (Lee et al. 2021): SAC on r̂ with its own replay, relabelled at every refit, "
        "after unsupervised pre-training on a state-entropy reward; the first labels at the "
        "end of pre-training", pebble.PEBBLEConfig, None, None, online_pebble.label_from_step),
}


def register_policy_learner(name: str, make: Callable[..., PolicyLearner], description: str,
                            *, config: type | None = None,
                            reward_learners: tuple[str, ...] | None = None,
                            check: Callable[[Any], None] | None = None,
                            label_from: Callable[[Any], int] | None = None) -> None:
    """Add a policy learner: ``make(config=, learner_config=, obs_dim=, act_dim=, num_updates=,
    reward_model=, reference=, policy_config=) -> PolicyLearner`` (see
    :class:`PolicyLearnerSpec` for the keywords)."""
    if not isinstance(name, str) or not callable(make):
        raise TypeError("register_policy_learner(name: str, make: callable, description: str)")
    if name in POLICY_LEARNERS:
        raise ValueError(f"policy learner {name!r} is already registered")
    POLICY_LEARNERS[name] = PolicyLearnerSpec(make, description, config, reward_learners, check,
                                              label_from)


def resolve(config: Any, policy_config: Any = None) -> Any:
    """``config`` with ``label_from_step`` set: its own value, else the policy learner's."""
    if config.label_from_step is not None:
        return config
    spec = POLICY_LEARNERS[config.policy_learner]
    start = 0 if spec.label_from is None else int(spec.label_from(policy_config))
    resolved = dataclasses.replace(config, label_from_step=start)
    try:
        resolved.round_updates()
    except ValueError:
        raise ValueError(
            f"policy_learner={config.policy_learner!r} learns from r̂ only after {start} env "
            f"steps of warm-up and pre-training, and the run's last labelling round is "
            f"before that (total_steps {config.total_steps}, label_until "
            f"{config.label_until}): shorten the pre-training or lengthen the run") from None
    return resolved


def check_pairing(policy_learner: str, reward_learner: str) -> None:
    """``ValueError`` unless the policy learner works with the reward learner."""
    spec = POLICY_LEARNERS[policy_learner]
    allowed = spec.reward_learners
    fits = REWARD_LEARNERS[reward_learner].fits
    if allowed is None and not fits:
        raise ValueError(f"policy_learner={policy_learner!r} learns from a fitted reward; "
                         f"reward_learner={reward_learner!r} fits none")
    if allowed is not None and reward_learner not in allowed:
        raise ValueError(f"policy_learner={policy_learner!r} works with reward_learner in "
                         f"{list(allowed)}, got {reward_learner!r}")


def zeros_like_metrics(names: tuple[str, ...]) -> Metrics:
    """NaN metrics of the given names (a round without a refit)."""
    return {n: jnp.float32(jnp.nan) for n in names}


__all__ = [
    "POLICY_LEARNERS", "REWARD_LEARNERS", "REWARD_LEARNER_ALIASES", "OnlineRewardLearner",
    "PolicyLearner", "PolicyLearnerSpec", "TermContext", "check_pairing",
    "register_policy_learner",
    "register_reward_learner", "resolve", "reward_learner",
]
