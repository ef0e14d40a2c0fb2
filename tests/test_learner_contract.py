"""The contract every learner keeps (prefrl.learners): a pair of pure functions.

For each learner — reward model (also with a learned potential, and with a snapshot
library's GPI value), CPL, contrastive DPO, BC, PPO, the regret-model reward via successor
features (given ψ, and a learned φ with a ψ network), Â used as a policy (AWR) and by a
greedy actor, SAC (on a batch of replay transitions), PEBBLE (its replay in the state;
pre-training, the critic reset and the learned reward in 3 updates) —
with a foreign optax transform (not the learner's default), on tiny sizes:

* ``init(key, example_batch)`` and ``update(state, batch)`` run;
* ``jax.jit(jax.vmap(update))`` over 3 seeds gives what the seeds give one
  at a time;
* the vmapped update compiles once, however many updates run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from prefrl.learners import advantage_greedy as ag
from prefrl.learners import advantage_policy as ap
from prefrl.learners import bc, cpl, pebble, ppo, sac
from prefrl.learners import regret_sf as rs
from prefrl.learners import reward_model as rm
from prefrl.learners import sf_networks as sf_nets
from prefrl.networks import GaussianPolicy
from prefrl.types import PairBatch, Trajectory

OBS, ACT, K, B = 3, 2, 5, 6
SEEDS = 3
UPDATES = 3


def foreign_optimizer() -> optax.GradientTransformation:
    # Not any learner's default; SGD keeps vmapped and single runs within float rounding.
    return optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1e-2, momentum=0.9))


def pair_batch() -> PairBatch:
    ks = jax.random.split(jax.random.key(7), 5)
    segment = lambda k_o, k_a: (  # noqa: E731
        jax.random.normal(k_o, (B, K, OBS)),
        jax.random.uniform(k_a, (B, K, ACT), minval=-0.9, maxval=0.9),
        jnp.ones((B, K)))
    label = jax.random.bernoulli(ks[4], 0.5, (B,)).astype(jnp.float32)
    return PairBatch(*segment(ks[0], ks[1]), *segment(ks[2], ks[3]), label)


def trajectory(t: int = 8, b: int = 4) -> Trajectory:
    ks = jax.random.split(jax.random.key(8), 4)
    zeros = jnp.zeros((t, b))
    return Trajectory(
        obs=jax.random.normal(ks[0], (t, b, OBS)),
        action=jax.random.uniform(ks[1], (t, b, ACT), minval=-0.9, maxval=0.9),
        reward=jax.random.normal(ks[2], (t, b)),
        next_obs=jax.random.normal(ks[3], (t, b, OBS)),
        terminated=zeros.astype(bool), truncated=zeros.astype(bool), x_velocity=zeros,
        qpos=jnp.zeros((t, b, 1)), qvel=jnp.zeros((t, b, 1)))


def policy() -> GaussianPolicy:
    return GaussianPolicy(action_dim=ACT, hidden=(8,), state_dependent_std=True)


class Case(NamedTuple):
    learner: Any
    batch: Any
    # Sets what a learner takes by state.replace after init (DPO's π_ref).
    prepare: Callable[[Any], Any] = lambda state: state


def _arrays(tree: Any) -> Any:
    # PRNG keys compare by their key data.
    return jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x, tree)


def sf_batch(policies: int = 3, width: int = 4) -> rs.SFPairBatch:
    """The pair batch plus precomputed ψ^π(s_0), ψ^π(s_k) ``[B, 2, Π, d]`` of each side."""
    pb = pair_batch()
    psi = jax.random.normal(jax.random.key(9), (2, B, 2, policies, width))
    return rs.SFPairBatch(*pb[:7], psi_in_1=psi[0], psi_in_2=psi[1])


def sf_network_batch() -> rs.SFPairBatch:
    """The pair batch plus each side's end states s_0, s_k ``[B, 2, obs]`` (ψ-network inputs)."""
    pb = pair_batch()
    ends = lambda obs: jnp.stack([obs[:, 0], obs[:, -1]], axis=1)  # noqa: E731
    return rs.SFPairBatch(*pb[:7], psi_in_1=ends(pb.obs_1), psi_in_2=ends(pb.obs_2))


def frozen_phi(obs: jax.Array, action: jax.Array) -> jax.Array:
    # d = 4 features: tanh of the first two observations and the two actions.
    return jnp.concatenate([jnp.tanh(obs[..., :2]), action], axis=-1)


def advantage_batch() -> ap.AdvantageBatch:
    pb = pair_batch()
    return ap.AdvantageBatch(pb.obs_1, pb.action_1, pb.mask_1,
                             advantage=jnp.sum(pb.obs_1[..., :ACT] * pb.action_1, -1))


def step_batch() -> ag.StepBatch:
    pb = pair_batch()
    return ag.StepBatch(pb.obs_1.reshape(-1, OBS), pb.action_1.reshape(-1, ACT),
                        pb.mask_1.reshape(-1))


def two_member_advantage(params: Any, obs: jax.Array, action: jax.Array) -> jax.Array:
    # [2, N]: Â_j = −‖a − tanh(obs[:ACT])‖² ± obs[0]·a[0]; params unused (None).
    base = -jnp.sum((action - jnp.tanh(obs[..., :ACT])) ** 2, axis=-1)
    return jnp.stack([base + obs[..., 0] * action[..., 0], base - obs[..., 0] * action[..., 0]])


def transitions(n: int = 8) -> sac.Transition:
    traj = trajectory(t=1, b=n)
    return sac.Transition(traj.obs[0], traj.action[0], traj.reward[0], traj.next_obs[0],
                          traj.terminated[0])


def _dpo_start(state: Any) -> Any:
    return state.replace(ref_params=state.params)


CASES: dict[str, Callable[[], Case]] = {
    "reward_model": lambda: Case(
        rm.make(rm.RewardModelConfig(hidden=(8,), ensemble_size=2, chunk_pairs=4),
                optimizer=foreign_optimizer()), pair_batch()),
    "reward_model_potential": lambda: Case(
        rm.make(rm.RewardModelConfig(hidden=(8,), ensemble_size=2, chunk_pairs=4, potential=True,
                                     discount=0.9), optimizer=foreign_optimizer()),
        pair_batch()._replace(final_obs_1=jnp.ones((B, OBS)), final_obs_2=-jnp.ones((B, OBS)))),
    "reward_model_successor_library": lambda: Case(
        rm.make(rm.RewardModelConfig(hidden=(8,), ensemble_size=2, chunk_pairs=4, library_size=3,
                                     discount=0.9), optimizer=foreign_optimizer()),
        pair_batch()._replace(final_obs_1=jnp.ones((B, OBS)), final_obs_2=-jnp.ones((B, OBS)))),
    "cpl": lambda: Case(
        cpl.make(cpl.CPLConfig(alpha=0.5, bias=0.5, bc_weight=0.1), policy(),
                 foreign_optimizer()), pair_batch()),
    "dpo": lambda: Case(
        cpl.make_dpo(cpl.DPOConfig(beta=0.5), policy(), foreign_optimizer()), pair_batch(),
        _dpo_start),
    "bc": lambda: Case(
        bc.make(bc.BCConfig(), policy(), foreign_optimizer()),
        bc.Batch(pair_batch().obs_1, pair_batch().action_1, pair_batch().mask_1)),
    "ppo": lambda: Case(
        ppo.make(ppo.PPOConfig(num_epochs=2, num_minibatches=2, policy_hidden=(8,),
                               value_hidden=(8,), anneal_lr=False), OBS, ACT,
                 optimizer=foreign_optimizer()), trajectory()),
    "regret_sf": lambda: Case(
        # τ annealed 1 → 0.5 → 0 over the 3 updates: soft and hard GPI in one compile.
        rs.make(rs.RegretSFConfig(discount=0.95, gpi_temperature=0.0, gpi_anneal_start=1.0,
                                  gpi_anneal_steps=2), frozen_phi, foreign_optimizer()),
        sf_batch()),
    "regret_sf_learned_phi": lambda: Case(
        rs.make(rs.RegretSFConfig(discount=0.95, num_policies=3, gpi_temperature=0.01,
                                  label_smoothing=0.1),
                sf_nets.default_phi_network(4, (8,)), foreign_optimizer(),
                psi_network=sf_nets.default_psi_network(4, (8,))), sf_network_batch()),
    "advantage_greedy": lambda: Case(
        ag.make(ag.AdvantageGreedyConfig(alpha=1.0, pessimism=0.5),
                ag.default_network(ACT, (8,)), foreign_optimizer(),
                a_hat=two_member_advantage), step_batch()),
    "sac": lambda: Case(
        sac.make(sac.SACConfig(hidden=(8,), batch_size=8, buffer_size=8), OBS, ACT,
                 optimizer=foreign_optimizer()), transitions()),
    "pebble": lambda: Case(
        pebble.make(pebble.PEBBLEConfig(hidden=(8,), batch_size=8, warmup_steps=0,
                                        unsup_steps=8, entropy_k=2), OBS, ACT, capacity=32,
                    optimizer=foreign_optimizer()), transitions()),
    "advantage_policy": lambda: Case(
        ap.make(ap.AdvantagePolicyConfig(beta=0.5), ap.default_network(ACT, (8,)),
                foreign_optimizer()), advantage_batch()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmapped_seeds_equal_single_seeds_and_compile_once(name):
    case = CASES[name]()
    keys = jax.random.split(jax.random.key(0), SEEDS)
    states = case.prepare(jax.vmap(case.learner.init, in_axes=(0, None))(keys, case.batch))
    update = jax.jit(jax.vmap(case.learner.update, in_axes=(0, None)))
    for _ in range(UPDATES):
        states, metrics = update(states, case.batch)
    assert update._cache_size() == 1
    assert all(bool(jnp.all(jnp.isfinite(m))) for m in jax.tree.leaves(metrics)
               if jnp.issubdtype(m.dtype, jnp.floating))

    single_update = jax.jit(case.learner.update)
    for i in range(SEEDS):
        state = case.prepare(case.learner.init(keys[i], case.batch))
        for _ in range(UPDATES):
            state, _ = single_update(state, case.batch)
        chex.assert_trees_all_close(_arrays(jax.tree.map(lambda x, i=i: x[i], states)),
                                    _arrays(state), rtol=1e-5, atol=1e-6)
    # The seeds differ.
    holder = getattr(states, "sac", states)  # PEBBLE: SAC's state inside its own
    params = next(getattr(holder, name) for name in ("params", "policy_params", "actor_params")
                  if hasattr(holder, name))
    first = jax.tree.leaves(params)[0]
    assert not jnp.allclose(first[0], first[1])


def _set_learning_rate(state: Any, lr: jax.Array) -> Any:
    # inject_hyperparams keeps the learning rate in the optimiser state: an array leaf.
    hyper = dict(state.opt_state.hyperparams)
    hyper["learning_rate"] = jnp.broadcast_to(lr, hyper["learning_rate"].shape)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))


LR_CASES: dict[str, Callable[[float], Case]] = {
    "reward_model": lambda lr: Case(rm.make(rm.RewardModelConfig(
        hidden=(8,), ensemble_size=2, chunk_pairs=4, learning_rate=lr)), pair_batch()),
    "cpl": lambda lr: Case(cpl.make(cpl.CPLConfig(), policy(), cpl.default_optimizer(lr)),
                           pair_batch()),
    "bc": lambda lr: Case(bc.make(bc.BCConfig(), policy(), bc.default_optimizer(lr)),
                          bc.Batch(pair_batch().obs_1, pair_batch().action_1,
                                   pair_batch().mask_1)),
}


@pytest.mark.parametrize("name", sorted(LR_CASES))
def test_default_optimizers_vmap_over_learning_rates(name):
    learning_rates = jnp.asarray([1e-3, 1e-2, 3e-2])
    case = LR_CASES[name](1e-3)
    key = jax.random.key(0)
    states = jax.vmap(lambda lr: _set_learning_rate(case.learner.init(key, case.batch), lr))(
        learning_rates)
    update = jax.jit(jax.vmap(case.learner.update, in_axes=(0, None)))
    states, _ = update(states, case.batch)
    for i, lr in enumerate(learning_rates.tolist()):
        one = LR_CASES[name](lr)
        state, _ = jax.jit(one.learner.update)(one.learner.init(key, one.batch), one.batch)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], states.params),
                                    state.params, rtol=1e-5, atol=1e-6)
