"""Regret-model reward learning via successor features + GPI (Knox et al. 2022): known answers.

Tabular checks run in float64 inside ``jax.enable_x64(True)`` (the ``x64``
fixture), so x64 never leaks into other tests. MDPs are small random
deterministic ones with γ = 0.9; exact answers come from value iteration and
the linear solve ``(I − γ P_π) ψ = Φ_π``.
"""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prefrl import tabular
from prefrl.learners import regret_sf as rs
from prefrl.learners import reward_model
from prefrl.learners import sf_networks as nets
from prefrl.learners import successor_features as sf

GAMMA = 0.9


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def one_hot_phi(obs: jax.Array, action: jax.Array) -> jax.Array:
    """φ(s, a) = e_{s·A + a} from one-hot obs [..., S] and action [..., A]: [..., S·A]."""
    return jnp.einsum("...s,...a->...sa", obs, action).reshape(*obs.shape[:-1], -1)


def maybe_jit(fn, jit: bool):
    return jax.jit(fn) if jit else fn


class World:
    """A random deterministic MDP, a library Π with exact ψ, and every segment of length k."""

    def __init__(self, seed: int, num_states: int, num_actions: int, length: int,
                 policies: np.ndarray | None = None):
        self.S, self.A, self.k = num_states, num_actions, length
        self.P, self.R = tabular.random_mdp(seed, num_states, num_actions)
        v, q = tabular.value_iteration(self.P, self.R, discount=GAMMA, tol=1e-13)
        self.v, self.q = np.asarray(v, np.float64), np.asarray(q, np.float64)
        self.pi_star = self.q.argmax(axis=1)
        self.policies = policies
        feats = tabular.one_hot_features(num_states, num_actions)
        self.psi = np.stack([tabular.successor_features(self.P, p, feats, discount=GAMMA)
                             for p in policies])  # [Π, S, d]
        # Every start state × every action sequence; paths followed in numpy (as
        # tabular.rollout does) to keep the test free of per-segment dispatches.
        self.actions = np.array([a for _ in range(num_states)
                                 for a in itertools.product(range(num_actions), repeat=length)])
        states = [np.repeat(np.arange(num_states), num_actions**length)]
        for t in range(length):
            states.append(self.P[states[-1], self.actions[:, t]])
        self.states = np.stack(states, axis=1)  # [N, k + 1]
        rewards = self.R[self.states[:, :-1], self.actions]
        disc = GAMMA ** np.arange(length)
        # regret(σ) = V*(s_0) − [Σ γ^t r_t + γ^k V*(s_k)] (Knox et al. 2022).
        self.regret = self.v[self.states[:, 0]] - (rewards @ disc + GAMMA**length
                                                   * self.v[self.states[:, -1]])

    def pool(self) -> rs.SFSegments:
        psi_in = np.stack([self.psi[:, self.states[:, 0]], self.psi[:, self.states[:, -1]]])
        return rs.SFSegments(
            obs=jnp.asarray(np.eye(self.S)[self.states[:, :-1]]),
            action=jnp.asarray(np.eye(self.A)[self.actions]),
            mask=jnp.ones(self.actions.shape),
            psi_in=jnp.asarray(psi_in.transpose(2, 0, 1, 3)),  # [N, 2, Π, d]
        )

    def state_with_w(self, learner, batch, w: np.ndarray) -> rs.RegretSFState:
        state = learner.init(jax.random.key(0), batch)
        return state.replace(params={"w": jnp.asarray(w), "phi": {}})


def all_pairs(world: World, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray, jax.Array]:
    n = world.states.shape[0]
    first, second = np.triu_indices(n, 1)
    # Exact regret-model probabilities: P(σ¹ ≻ σ²) = sigmoid((regret² − regret¹)/β).
    label = jax.nn.sigmoid((world.regret[second] - world.regret[first]) / temperature)
    return first, second, label


# --------------------------------------------------------------------------- #
# Known answers
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("jit", [True, False])
def test_exact_regret_when_optimal_policy_in_library(x64, jit):
    rng = np.random.default_rng(1)
    world0 = World(3, 6, 3, 3, policies=np.zeros((1, 6), np.int32))
    # Π = π*_r plus three random deterministic policies.
    library = np.concatenate([rng.integers(0, 3, (3, 6)), world0.pi_star[None]]).astype(np.int32)
    world = World(3, 6, 3, 3, policies=library)
    cfg = rs.RegretSFConfig(discount=GAMMA)
    pool = world.pool()
    first, second, label = all_pairs(world)
    batch = rs.pair_batch(pool, first[:8], second[:8], label[:8])
    learner = rs.make(cfg, one_hot_phi)
    # One-hot φ and w = r: r̂ = r exactly, ψ exact, π*_r ∈ Π, τ = 0 → GPI exact.
    state = world.state_with_w(learner, batch, world.R.reshape(-1))
    regret = maybe_jit(rs.make_regret_fn(cfg, one_hot_phi), jit)(state, pool)
    assert regret.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(regret), world.regret, rtol=1e-6, atol=1e-9)
    # The chunked pool function gives the same numbers.
    chunked = rs.make_regret_fn(cfg, one_hot_phi, chunk=7)(state, pool)
    np.testing.assert_allclose(np.asarray(chunked), world.regret, rtol=1e-6, atol=1e-9)
    # Segments that follow π* from s_0 have regret 0.
    follows = np.all(world.actions == world.pi_star[world.states[:, :-1]], axis=1)
    assert follows.any()
    np.testing.assert_allclose(np.asarray(regret)[follows], 0.0, atol=1e-9)


@pytest.mark.parametrize("jit", [True, False])
def test_gpi_lower_bounds_optimal_value_without_optimal_policy(x64, jit):
    world0 = World(4, 5, 2, 2, policies=np.zeros((1, 5), np.int32))
    # Every deterministic policy except the optimal one(s).
    every = tabular.deterministic_policies(5, 2)
    values = np.stack([tabular.policy_values(world0.P, world0.R, p, discount=GAMMA)
                       for p in every])
    optimal = np.all(np.abs(values - world0.v) < 1e-9, axis=1)
    library = every[~optimal][:: 3]
    world = World(4, 5, 2, 2, policies=library)
    w = jnp.asarray(world.R.reshape(-1))
    psi = jnp.asarray(world.psi.transpose(1, 0, 2))  # [S, Π, d]
    gpi = maybe_jit(lambda w, p: rs.gpi_value(w, p, temperature=0.0), jit)
    v_hat = np.asarray(gpi(w, psi))
    # Every V^π ≤ V*, so max_π V^π ≤ V*; strictly below somewhere since π* ∉ Π.
    assert np.all(v_hat <= world.v + 1e-12)
    assert np.max(world.v - v_hat) > 1e-6
    np.testing.assert_allclose(v_hat, values[~optimal][::3].max(axis=0), rtol=1e-10)
    # The soft maximum exceeds the max by at most τ log|Π|.
    tau = 1e-3
    soft = np.asarray(maybe_jit(lambda w, p: rs.gpi_value(w, p, temperature=tau), jit)(w, psi))
    assert np.all(soft >= v_hat - 1e-12)
    assert np.all(soft <= v_hat + tau * np.log(len(library)) + 1e-12)
    # A bound on V does not bound the regret: an optimal segment gets negative regret
    # (it beats every policy of Π from s_0).
    cfg = rs.RegretSFConfig(discount=GAMMA)
    pool = world.pool()
    learner = rs.make(cfg, one_hot_phi)
    batch = rs.pair_batch(pool, jnp.arange(2), jnp.arange(2) + 1, jnp.full((2,), 0.5))
    state = world.state_with_w(learner, batch, world.R.reshape(-1))
    regret = np.asarray(maybe_jit(rs.make_regret_fn(cfg, one_hot_phi), jit)(state, pool))
    assert regret.min() < -1e-6


@pytest.mark.parametrize("jit", [True, False])
def test_fitting_exact_regret_labels_recovers_regret_and_optimal_policy(x64, jit):
    # Π = all 2^4 deterministic policies: GPI is exact for any r̂.
    world = World(0, 4, 2, 3, policies=tabular.deterministic_policies(4, 2))
    first, second, label = all_pairs(world)
    pool = world.pool()
    batch = rs.pair_batch(pool, first, second, label)
    cfg = rs.RegretSFConfig(discount=GAMMA, learning_rate=0.05)
    learner = rs.make(cfg, one_hot_phi)
    update = maybe_jit(learner.update, jit)
    state = learner.init(jax.random.key(0), batch)
    for _ in range(150):
        state, metrics = update(state, batch)
    regret = np.asarray(rs.make_regret_fn(cfg, one_hot_phi)(state, pool))
    # Adam converges linearly here (1e-7 after 300 steps); 150 keep the test short.
    np.testing.assert_allclose(regret, world.regret, atol=1e-3 * np.abs(world.regret).max())
    # r̂ differs from r (regret is invariant to potential shaping), but its optimal
    # policy is optimal for r: V^π̂_r = V*_r.
    r_hat = np.asarray(state.params["w"]).reshape(world.S, world.A)
    _, q_hat = tabular.value_iteration(world.P, r_hat, discount=GAMMA, tol=1e-13)
    pi_hat = np.asarray(q_hat).argmax(axis=1)
    v_pi_hat = tabular.policy_values(world.P, world.R, pi_hat, discount=GAMMA)
    np.testing.assert_allclose(v_pi_hat, world.v, atol=1e-9)
    assert float(metrics["accuracy"]) > 0.95


def label_entropy(label: np.ndarray) -> float:
    """The mean binary entropy of soft labels: the BT loss's minimum when they are realisable."""
    p = np.clip(np.asarray(label, np.float64), 1e-15, 1 - 1e-15)
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))


def test_annealed_gpi_escapes_the_false_minimum(x64):
    """The loss is not convex in w: hard-max GPI stops at a false minimum, annealing does not.

    Random MDP (seed 35) with 3 states, 2 actions; Π = all 8 deterministic policies (GPI
    exact for any r̂), ψ by the linear solve, every segment of length 3 (24) and all 276
    pairs with exact soft labels (β = 1). The labels are realisable, so the optimal BT loss
    is their entropy. Regret is compared, not w (shaping changes w, not regret).
    """
    world = World(35, 3, 2, 3, policies=tabular.deterministic_policies(3, 2))
    first, second, label = all_pairs(world)
    pool = world.pool()
    batch = rs.pair_batch(pool, first, second, label)
    cfg = rs.RegretSFConfig(discount=GAMMA, learning_rate=0.05)  # τ = 0, no annealing
    learner = rs.make(cfg, one_hot_phi)
    regret_fn = rs.make_regret_fn(cfg, one_hot_phi)

    @jax.jit
    def fit(state, batch):
        return jax.lax.scan(lambda s, _: learner.update(s, batch), state, None, length=300)

    start = learner.init(jax.random.key(0), batch)
    entropy = label_entropy(label)

    # Hard max from the default start: stuck ~0.24 above the optimum, regret ≈ 0.09 × true.
    hard, m_hard = fit(start, batch)
    assert float(m_hard["loss"][-1]) - entropy > 0.2
    hard_regret = np.asarray(regret_fn(hard, pool))
    assert np.corrcoef(hard_regret, world.regret)[0, 1] < 0.6

    # The same compiled fit, τ annealed 1 → 0 over 150 updates (an array in the state).
    annealing = rs.RegretSFConfig(discount=GAMMA, learning_rate=0.05, gpi_anneal_start=1.0,
                                  gpi_anneal_steps=150)
    schedule = rs.gpi_schedule(annealing, start.gpi.start.dtype)
    assert [float(x) for x in schedule] == [1.0, 0.0, 150.0]
    annealed, m = fit(start.replace(gpi=schedule), batch)
    assert fit._cache_size() == 1
    np.testing.assert_allclose(np.asarray(m["gpi_temperature"])[[0, 75, 150, 299]],
                               [1.0, 0.5, 0.0, 0.0], atol=1e-12)
    assert float(m["loss"][-1]) - entropy < 1e-8
    regret = np.asarray(regret_fn(annealed, pool))
    np.testing.assert_allclose(regret, world.regret, atol=1e-4 * np.abs(world.regret).max())


@pytest.mark.parametrize("jit", [True, False])
def test_traced_gpi_temperature_matches_the_float_path(jit):
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=3), jnp.float32)
    psi = jnp.asarray(rng.normal(size=(5, 4, 3)), jnp.float32)  # [S, Π, d]
    traced = maybe_jit(lambda w, p, t: rs.gpi_value(w, p, temperature=t), jit)
    for tau in (0.0, 0.5):
        want = rs.gpi_value(w, psi, temperature=tau)
        np.testing.assert_allclose(np.asarray(traced(w, psi, jnp.float32(tau))),
                                   np.asarray(want), rtol=1e-6)
    # τ = 0 traced: the hard max's gradient (the arg-max policy's ψ), finite.
    grad = maybe_jit(jax.grad(lambda w, t: rs.gpi_value(w, psi[0], temperature=t)), jit)
    g = np.asarray(grad(w, jnp.float32(0.0)))
    np.testing.assert_allclose(g, np.asarray(psi[0, jnp.argmax(psi[0] @ w)]), rtol=1e-6)
    # The schedule: linear from start to end over `steps` updates, then end; steps 0: end.
    sched = rs.GPISchedule(jnp.float32(2.0), jnp.float32(0.5), jnp.float32(4.0))
    at = [float(rs.gpi_temperature_at(sched, t)) for t in (0, 1, 4, 9)]
    assert at == pytest.approx([2.0, 1.625, 0.5, 0.5])  # 0.5 + 1.5 · (1 − 1/4) = 1.625
    assert float(rs.gpi_temperature_at(sched._replace(steps=jnp.float32(0.0)), 0)) == 0.5


def test_x64_does_not_leak_out_of_the_fixture():
    assert jnp.zeros(1).dtype == jnp.float32


def test_partial_return_learner_on_regret_labels_learns_optimal_advantage():
    """Knox et al. 2023: BT on Σ γ^t f fitted to regret labels gives f = A* + c, greedy-optimal."""
    world = World(5, 4, 2, 2, policies=np.zeros((1, 4), np.int32))
    first, second, label = all_pairs(world)
    S, A = world.S, world.A

    class Table(nn.Module):
        """f(s, a) = θ[s, a] from one-hot (s ‖ a) inputs: [..., S + A] -> [..., 1]."""

        @nn.compact
        def __call__(self, x):
            table = self.param("table", nn.initializers.zeros, (S * A, 1))
            return one_hot_phi(x[..., :S], x[..., S:]) @ table

    obs = np.eye(S, dtype=np.float32)[world.states[:, :-1]]
    act = np.eye(A, dtype=np.float32)[world.actions]
    mask = np.ones(world.actions.shape, np.float32)
    batch = reward_model.PairBatch(obs[first], act[first], mask[first], obs[second], act[second],
                                   mask[second], jnp.asarray(label, jnp.float32))
    cfg = reward_model.RewardModelConfig(
        assumption="partial_return", discount=GAMMA, ensemble_size=1, bootstrap=False,
        learning_rate=0.05, chunk_pairs=len(first))
    learner = reward_model.make(cfg, network=Table())
    state = learner.init(jax.random.key(0), batch)
    update = jax.jit(learner.update)
    for _ in range(400):
        state, _ = update(state, batch)
    f = np.asarray(state.params["params"]["table"][0]).reshape(S, A)
    a_star = world.q - world.v[:, None]
    # f = A* + c: the difference is one constant.
    diff = f - a_star
    np.testing.assert_allclose(diff, diff.mean(), atol=2e-3)
    # Its greedy policy is optimal (Knox et al. 2023's prediction).
    np.testing.assert_array_equal(f.argmax(axis=1), world.pi_star)


# --------------------------------------------------------------------------- #
# Successor features from rollouts
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method,rounds,steps", [("mc", 6, 150), ("td", 40, 100)])
def test_fit_successor_features_recovers_the_linear_solve(method, rounds, steps):
    num_states, num_actions = 5, 2
    transitions, _ = tabular.random_mdp(7, num_states, num_actions)
    library = np.array([[0, 1, 0, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 1]], np.int32)
    roll = tabular.policy_rollouts(transitions, library, np.arange(num_states), 60,
                                   time_limit=15)
    feats = tabular.one_hot_features(num_states, num_actions)
    eye_s, eye_a = np.eye(num_states, dtype=np.float32), np.eye(num_actions, dtype=np.float32)
    rollouts = sf.LibraryRollouts(
        obs=jnp.asarray(eye_s[roll["state"]]), action=jnp.asarray(eye_a[roll["action"]]),
        next_obs=jnp.asarray(eye_s[roll["next_state"]]),
        terminated=jnp.asarray(roll["terminated"]), truncated=jnp.asarray(roll["truncated"]))
    phi_t = one_hot_phi(rollouts.obs, rollouts.action)
    # A tabular ψ head: ψ(s) = Θ e_s.
    psi_net = nn.Dense(num_states * num_actions, use_bias=False)
    params = jax.vmap(lambda k: psi_net.init(k, rollouts.obs[0, 0, 0]))(
        jax.random.split(jax.random.key(0), len(library)))
    sf_cfg = sf.SFFitConfig(method=method, num_rounds=rounds, steps_per_round=steps,
                            learning_rate=0.1)
    fit = jax.jit(lambda k, p, ro, f: sf.fit_successor_features(
        k, sf_cfg, psi_net, p, ro, f, discount=GAMMA))
    params, metrics = fit(jax.random.key(1), params, rollouts, phi_t)
    assert metrics["loss"].shape == (rounds, len(library))
    got = jax.vmap(psi_net.apply, in_axes=(0, None))(params, jnp.eye(num_states))
    exact = np.stack([tabular.successor_features(transitions, p, feats, discount=GAMMA)
                      for p in library])
    # Only states a policy visits are identified; starts cover every state here.
    np.testing.assert_allclose(np.asarray(got), exact, atol=2e-2 * np.abs(exact).max())


def test_successor_targets_mc_known_answer():
    # One column, T = 3, φ = 1 (d = 1), γ = 0.5; truncation after t = 1, ψ(next) = 10.
    phi = jnp.ones((3, 1, 1))
    next_psi = jnp.full((3, 1, 1), 10.0)
    trunc = jnp.array([[False], [True], [False]])
    term = jnp.zeros((3, 1), bool)
    g = sf.successor_targets(phi, next_psi, term, trunc, discount=0.5, method="mc")
    # t=2 (end of data): 1 + 0.5·10 = 6; t=1 (truncated): 1 + 0.5·10 = 6; t=0: 1 + 0.5·6 = 4.
    np.testing.assert_allclose(np.asarray(g)[:, 0, 0], [4.0, 6.0, 6.0])
    # Terminated at t=1: no bootstrap there: 1; t=0: 1 + 0.5·1 = 1.5.
    g = sf.successor_targets(phi, next_psi, trunc, jnp.zeros((3, 1), bool), discount=0.5)
    np.testing.assert_allclose(np.asarray(g)[:, 0, 0], [1.5, 1.0, 6.0])
    td = sf.successor_targets(phi, next_psi, term, trunc, discount=0.5, method="td")
    np.testing.assert_allclose(np.asarray(td)[:, 0, 0], [6.0, 6.0, 6.0])


def test_termination_and_masks_match_the_oracle(x64):
    """Masks and terminal flags go through preference.regret_score_from_values."""
    w = jnp.array([1.0, -2.0])
    phi_t = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    psi_0 = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # V^π(s_0) = 1, −2 → V̂* = 1
    psi_k = jnp.array([[0.0, 1.0], [2.0, 0.0]])  # V^π(s_k) = −2, 2 → V̂* = 2
    # r = 1, −2, −1; score = 1 − 0.9·2 − 0.81·1 + 0.729·2 − 1; regret = −score.
    got = rs.segment_regret(w, phi_t, psi_0, psi_k, discount=0.9)
    assert float(got) == pytest.approx(-(1 - 1.8 - 0.81 + 0.729 * 2 - 1))
    # Terminated after step 1 (mask 1 1 0): no bootstrap, step 2 counts 0.
    got = rs.segment_regret(w, phi_t, psi_0, psi_k, discount=0.9,
                            mask_t=jnp.array([1.0, 1.0, 0.0]))
    assert float(got) == pytest.approx(-(1 - 1.8 - 1))
    got = rs.segment_regret(w, phi_t, psi_0, psi_k, discount=0.9, terminal_k=True)
    assert float(got) == pytest.approx(-(1 - 1.8 - 0.81 - 1))


# --------------------------------------------------------------------------- #
# The learner contract
# --------------------------------------------------------------------------- #


def _network_batch(seed, size=6, length=4, obs_dim=3, act_dim=2):
    """States s_0 … s_k as ψ-network inputs; built with numpy (no eager JAX compiles)."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(2, size, length + 1, obs_dim)).astype(np.float32)
    act = rng.uniform(-1, 1, (2, size, length, act_dim)).astype(np.float32)
    ends = np.stack([obs[:, :, 0], obs[:, :, -1]], axis=2)  # [2, B, 2, obs]
    label = (rng.uniform(size=size) > 0.5).astype(np.float32)
    label[0] = 0.5
    mask = np.ones((size, length), np.float32)
    mask[1, -1] = 0.0
    return rs.SFPairBatch(obs[0, :, :-1], act[0], mask, obs[1, :, :-1], act[1],
                          np.ones((size, length), np.float32), label, ends[0], ends[1],
                          weight=rng.uniform(size=size).astype(np.float32))


def _given_batch(seed=0, width=6, policies=3, size=6, length=4, obs_dim=3, act_dim=2):
    """ψ values [B, 2, Π, d] in the batch (the tabular form)."""
    batch = _network_batch(seed, size, length, obs_dim, act_dim)
    rng = np.random.default_rng(seed + 1)
    psi = rng.normal(size=(2, size, 2, policies, width)).astype(np.float32)
    return batch._replace(psi_in_1=psi[0], psi_in_2=psi[1])


def _frozen_phi(obs, action):
    return jnp.concatenate([jnp.tanh(obs), action, obs[..., :1] * action[..., :1]], axis=-1)


# The contract itself (vmap over seeds, a foreign optax, one compile) is checked with the
# other learners in tests/test_learner_contract.py, frozen and learned φ both.
CONTRACT_SETUPS = {
    "learned_phi_psi_network": dict(
        phi=nets.default_phi_network(4, (8,)), psi_network=nets.default_psi_network(4, (8,)),
        num_policies=3, batch=_network_batch(3)),
}


@functools.cache
def contract_learner(name: str):
    """``(config, learner, jit(init), jit(update))``, shared by tests so each compiles once."""
    setup = CONTRACT_SETUPS[name]
    cfg = rs.RegretSFConfig(discount=0.95, num_policies=setup["num_policies"],
                            gpi_temperature=0.01, l2=1e-3, label_smoothing=0.1)
    # A foreign optax transform (not the default Adam).
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.05, momentum=0.9))
    learner = rs.make(cfg, setup["phi"], opt, psi_network=setup["psi_network"])
    return cfg, learner, jax.jit(learner.init), jax.jit(learner.update)


def test_alternating_refit_with_learned_phi_scan_equals_host_loop():
    """Learned φ: ψ refitted on library rollouts between preference updates."""
    cfg, learner, init, update = contract_learner("learned_phi_psi_network")
    setup = CONTRACT_SETUPS["learned_phi_psi_network"]
    phi_net, psi_net, batch = setup["phi"], setup["psi_network"], setup["batch"]
    refit = sf.make_refit(cfg, sf.SFFitConfig(num_rounds=2, steps_per_round=5, batch_size=16),
                          phi_net, psi_net)
    rng = np.random.default_rng(4)
    truncated = np.zeros((3, 10, 3), bool)
    truncated[:, 4] = True
    rollouts = sf.LibraryRollouts(
        obs=rng.normal(size=(3, 10, 3, 3)).astype(np.float32),
        action=rng.uniform(-1, 1, (3, 10, 3, 2)).astype(np.float32),
        next_obs=rng.normal(size=(3, 10, 3, 3)).astype(np.float32),
        terminated=np.zeros((3, 10, 3), bool), truncated=truncated)
    state0 = init(jax.random.key(0), batch)
    key = jax.random.key(5)

    # The scan version. Data as arguments, not closed-over constants (XLA would
    # constant-fold through them).
    run = jax.jit(lambda st, ro, b: sf.alternate(learner.update, refit, st, key, ro, lambda k: b,
                                                 num_updates=6, refit_every=3))
    scanned, scan_metrics = run(state0, rollouts, batch)
    psi_loss = np.asarray(scan_metrics["psi_loss"])
    assert np.all(np.isfinite(psi_loss[[0, 3]])) and np.all(np.isnan(psi_loss[[1, 2, 4, 5]]))
    assert np.all(np.isfinite(np.asarray(scan_metrics["loss"])))

    # The host loop with the same keys.
    key_refit, _ = jax.random.split(key)
    refit_j = jax.jit(refit)
    state = state0
    for i in range(6):
        if i % 3 == 0:
            old = state.psi_params
            state, m = refit_j(state, jax.random.fold_in(key_refit, i), rollouts)
            assert m["loss"].shape == (2, 3)
            assert not np.allclose(np.asarray(jax.tree.leaves(old)[0]),
                                   np.asarray(jax.tree.leaves(state.psi_params)[0]))
        psi_before = state.psi_params
        state, metrics = update(state, batch)
        # The preference update never touches ψ.
        for a, b in zip(jax.tree.leaves(psi_before), jax.tree.leaves(state.psi_params),
                        strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert float(metrics["loss"]) == pytest.approx(float(scan_metrics["loss"][i]), rel=1e-4)
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(state), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert refit_j._cache_size() == 1
    r = jax.jit(lambda st, o, a: rs.reward_fn(st, phi_net)(o, a))(state, batch.obs_1,
                                                                   batch.action_1)
    assert r.shape == batch.mask_1.shape


def test_psi_inputs_and_pair_batch_from_a_segment_pool():
    from prefrl.types import Segments

    rng = np.random.default_rng(0)
    n, k = 5, 3
    obs, next_obs = rng.normal(size=(n, k, 2)), rng.normal(size=(n, k, 2))
    segs = Segments(obs=obs, action=rng.normal(size=(n, k, 1)), reward=np.zeros((n, k)),
                    next_obs=next_obs, mask=np.ones((n, k)), x_velocity=np.zeros((n, k)),
                    qpos=np.zeros((n, k, 0)), qvel=np.zeros((n, k, 0)),
                    source=np.zeros((n, 2), np.int32))
    psi_in = np.asarray(rs.psi_inputs(segs))
    assert psi_in.shape == (n, 2, 2)
    # ψ is needed at s_0 = obs[:, 0] and s_k = next_obs[:, -1].
    np.testing.assert_allclose(psi_in[:, 0], obs[:, 0], rtol=1e-6)
    np.testing.assert_allclose(psi_in[:, 1], next_obs[:, -1], rtol=1e-6)
    pool = rs.SFSegments(segs.obs, segs.action, segs.mask, psi_in)
    pairs = rs.pair_batch(pool, np.array([0, 3]), np.array([4, 1]), np.array([1.0, 0.5]))
    np.testing.assert_allclose(np.asarray(pairs.psi_in_2)[0], psi_in[4], rtol=1e-6)
    assert pairs.size == 2 and pairs.terminal_1 is None
    from prefrl.types import PairBatch

    plain = PairBatch(*pairs[:7])
    again = rs.from_pair_batch(plain, pairs.psi_in_1, pairs.psi_in_2)
    assert again.psi_in_1 is pairs.psi_in_1 and again.obs_2 is pairs.obs_2
    learner = rs.make(rs.RegretSFConfig(num_policies=2), _frozen_phi,
                      psi_network=nets.default_psi_network(4, (4,)))
    with pytest.raises(TypeError, match="from_pair_batch"):
        learner.init(jax.random.key(0), plain)


def test_reward_model_hidden_layer_as_frozen_features():
    cfg = reward_model.RewardModelConfig(hidden=(8, 5), ensemble_size=2)
    z = np.zeros
    batch = reward_model.PairBatch(z((2, 3, 4)), z((2, 3, 2)), np.ones((2, 3)), z((2, 3, 4)),
                                   z((2, 3, 2)), np.ones((2, 3)), np.array([0.0, 1.0]))
    rm_model = reward_model.model(cfg)
    rm_state = jax.jit(reward_model.make(cfg).init)(jax.random.key(0), batch)
    phi = nets.reward_model_features(rm_model, rm_state)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(7, 4)).astype(np.float32)
    act = rng.uniform(-1, 1, (7, 2)).astype(np.float32)

    @jax.jit
    def check(rm_state, obs, act):
        feats = nets.reward_model_features(rm_model, rm_state)(obs, act)
        out = rm_state.params["params"]["Dense_2"]
        # w = the output kernels / M reproduces the ensemble mean (up to the output biases).
        w = jnp.concatenate([out["kernel"][0, :, 0], out["kernel"][1, :, 0]]) / 2
        mean_out = reward_model.member_outputs(rm_model, rm_state, obs, act).mean(axis=0)
        return feats, feats @ w + out["bias"][:, 0].mean(), mean_out

    feats, rebuilt, mean_out = check(rm_state, obs, act)
    assert feats.shape == (7, 10)  # M · h = 2 · 5
    np.testing.assert_allclose(np.asarray(rebuilt), np.asarray(mean_out), rtol=1e-5, atol=1e-5)
    assert callable(phi)


# --------------------------------------------------------------------------- #
# Bad input: a clear ValueError before any fitting
# --------------------------------------------------------------------------- #


def test_bad_input_raises_clear_errors():
    """Shape errors raise while tracing (``jax.eval_shape``: nothing is computed)."""
    key = jax.random.key(0)
    learner = rs.make(rs.RegretSFConfig(), _frozen_phi)  # φ has width 3 + 2 + 1 = 6
    good = _given_batch()
    state = jax.eval_shape(learner.init, key, good)
    with pytest.raises(ValueError, match="feature width mismatch.*width 6.*width 5"):
        jax.eval_shape(learner.init, key, _given_batch(width=5))
    with pytest.raises(ValueError, match="feature width mismatch"):
        jax.eval_shape(learner.update, state, _given_batch(width=5))
    with pytest.raises(ValueError, match="label must be"):
        jax.eval_shape(learner.update, state, good._replace(label=np.zeros(3)))
    with pytest.raises(ValueError, match="mask_1"):
        jax.eval_shape(learner.init, key, good._replace(mask_1=np.ones((6, 2))))
    with pytest.raises(ValueError, match="ψ values"):
        jax.eval_shape(learner.init, key, _network_batch(1))

    # A ψ network over a library of the wrong observation size.
    net_cfg = rs.RegretSFConfig(num_policies=2)
    psi_net = nets.default_psi_network(6, (8,))
    net_learner = rs.make(net_cfg, _frozen_phi, psi_network=psi_net)
    batch = _network_batch(1)
    wrong = batch._replace(psi_in_1=np.zeros((6, 2, 5)), psi_in_2=np.zeros((6, 2, 5)))
    with pytest.raises(ValueError, match="library observation size mismatch.*5.*3"):
        jax.eval_shape(net_learner.init, key, wrong)
    net_state = jax.eval_shape(net_learner.init, key, batch)
    other_obs = _network_batch(1, obs_dim=4)
    with pytest.raises(ValueError, match="ψ network rejects observations of size 4"):
        jax.eval_shape(net_learner.update, net_state, other_obs)
    with pytest.raises(ValueError, match="feature width mismatch.*ψ network outputs width 5"):
        jax.eval_shape(rs.make(net_cfg, _frozen_phi,
                               psi_network=nets.default_psi_network(5, (8,))).init, key, batch)
    with pytest.raises(ValueError, match="num_policies >= 1"):
        rs.make(rs.RegretSFConfig(), _frozen_phi, psi_network=psi_net)
    with pytest.raises(ValueError, match="num_policies=2 is for a ψ network"):
        rs.make(net_cfg, _frozen_phi)

    # fit_successor_features: wrong observation size, wrong |Π|, wrong φ width.
    rollouts = sf.LibraryRollouts(np.zeros((2, 5, 3, 4)), np.zeros((2, 5, 3, 2)),
                                  np.zeros((2, 5, 3, 4)), np.zeros((2, 5, 3), bool),
                                  np.zeros((2, 5, 3), bool))
    fit = lambda p, f: jax.eval_shape(lambda p, f: sf.fit_successor_features(
        key, sf.SFFitConfig(), psi_net, p, rollouts, f, discount=0.9), p, f)
    phi_t = np.zeros((2, 5, 3, 6))
    with pytest.raises(ValueError, match="rejects observations of size 4"):
        fit(net_state.psi_params, phi_t)
    params3 = jax.eval_shape(jax.vmap(lambda k: psi_net.init(k, jnp.zeros(4))),
                             jax.random.split(key, 3))
    with pytest.raises(ValueError, match="library size mismatch.*2 policies"):
        fit(params3, phi_t)
    params2 = jax.tree.map(lambda x: jax.ShapeDtypeStruct((2, *x.shape[1:]), x.dtype), params3)
    with pytest.raises(ValueError, match="feature width mismatch.*width 5"):
        fit(params2, np.zeros((2, 5, 3, 5)))
    assert fit(params2, phi_t)[1]["loss"].shape == (10, 2)
    with pytest.raises(ValueError, match="discount"):
        rs.RegretSFConfig(discount=0.0)
    with pytest.raises(ValueError, match="gpi_temperature"):
        rs.RegretSFConfig(gpi_temperature=-1.0)
    with pytest.raises(ValueError, match="gpi_anneal_steps"):
        rs.RegretSFConfig(gpi_anneal_steps=-1)
    with pytest.raises(ValueError, match="gpi_anneal_start"):
        rs.RegretSFConfig(gpi_anneal_start=-0.5)
    with pytest.raises(ValueError, match="method"):
        sf.SFFitConfig(method="lstd")
