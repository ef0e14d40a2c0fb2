"""CPL, contrastive DPO, best-of-n and the offline training loop."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate
import scipy.stats
from _readme import readme_example

from prefrl.learners import best_of_n, cpl
from prefrl.networks import ACTION_EPS, GaussianPolicy, tanh_gaussian_log_prob
from prefrl.preference import bt_loss


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ------------------------------------------------------------ known answers


@pytest.mark.parametrize("jit", [False, True])
def test_cpl_loss_known_answer(jit):
    logp_1 = jnp.array([-1.0, -2.0])
    logp_2 = jnp.array([-3.0, -0.5])
    kw = dict(alpha=0.5, bias=0.5, discount=0.9)
    fn = jax.jit(cpl.cpl_loss, static_argnames=()) if jit else cpl.cpl_loss
    # S_1 = 0.5 (−1 + 0.9·(−2)) = −1.4;  S_2 = 0.5 (−3 + 0.9·(−0.5)) = −1.725
    # label 1: −log σ(S_1 − 0.5 S_2) = −log σ(−0.5375) = softplus(0.5375) = 0.997584
    assert fn(logp_1, logp_2, jnp.array(1.0), **kw) == pytest.approx(0.9975839, abs=1e-5)
    assert _softplus(0.5375) == pytest.approx(0.9975839, abs=1e-6)
    # tie: ½ softplus(0.5375) + ½ softplus(−(S_2 − 0.5 S_1) = 1.025) = ½(0.997584 + 1.331600)
    assert fn(logp_1, logp_2, jnp.array(0.5), **kw) == pytest.approx(1.1645916, abs=1e-5)
    # label 0 swaps the roles: softplus(1.025) = 1.331600
    assert fn(logp_1, logp_2, jnp.array(0.0), **kw) == pytest.approx(_softplus(1.025), abs=1e-5)
    # segment 2 ends after one step: S_2 = 0.5·(−3) = −1.5; softplus(1.4 − 0.75) = 1.070055
    got = fn(logp_1, logp_2, jnp.array(1.0), mask_1_t=jnp.ones(2),
             mask_2_t=jnp.array([1.0, 0.0]), **kw)
    assert got == pytest.approx(1.0700553, abs=1e-5)


def test_masked_step_may_hold_minus_inf():
    # Padding after an episode ended can have log π = −inf; it must not poison the loss.
    logp_2 = jnp.array([-3.0, -jnp.inf])
    loss, grad = jax.value_and_grad(cpl.cpl_loss, argnums=1)(
        jnp.array([-1.0, -2.0]), logp_2, jnp.array(1.0), alpha=0.5, bias=0.5, discount=0.9,
        mask_2_t=jnp.array([1.0, 0.0]))
    assert loss == pytest.approx(1.0700553, abs=1e-5)
    assert np.all(np.isfinite(grad)) and grad[1] == 0.0


@pytest.mark.parametrize("bias", [1.0, np.float32(1.0), "array"])
def test_bias_one_is_bradley_terry(rng, bias):
    # A Python 1.0 takes the bt_loss shortcut; an array λ = 1 (as a sweep passes it)
    # goes through the general two-logit formula, which must agree.
    bias = jnp.array(1.0) if bias == "array" else bias
    logp = jnp.asarray(rng.normal(size=(2, 16, 5)), jnp.float32)
    label = jnp.asarray(rng.choice([0.0, 0.5, 1.0], size=16), jnp.float32)
    alpha, gamma = 0.3, 0.95
    got = jax.vmap(lambda a, b, y: cpl.cpl_loss(a, b, y, alpha=alpha, bias=bias,
                                                discount=gamma))(logp[0], logp[1], label)
    w = gamma ** np.arange(5)
    s_1 = alpha * np.sum(w * np.asarray(logp[0]), axis=-1)
    s_2 = alpha * np.sum(w * np.asarray(logp[1]), axis=-1)
    np.testing.assert_allclose(got, bt_loss(jnp.asarray(s_1 - s_2), label), rtol=1e-5, atol=1e-6)


def test_dpo_is_bradley_terry_over_log_ratios(rng):
    lp_1, lp_2, ref_1, ref_2 = (jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
                                for _ in range(4))
    label = jnp.asarray(rng.choice([0.0, 0.5, 1.0], size=8), jnp.float32)
    beta = 0.7
    got = jax.vmap(lambda a, b, c, d, y: cpl.dpo_loss(a, b, c, d, y, beta=beta))(
        lp_1, lp_2, ref_1, ref_2, label)
    s_1 = beta * np.sum(np.asarray(lp_1 - ref_1), -1)
    s_2 = beta * np.sum(np.asarray(lp_2 - ref_2), -1)
    np.testing.assert_allclose(got, bt_loss(jnp.asarray(s_1 - s_2), label), rtol=1e-5, atol=1e-6)


def test_dpo_common_shift_has_zero_gradient():
    lp_1, lp_2 = jnp.array([-1.0, -0.2, 0.3]), jnp.array([0.5, -2.0, 1.0])
    ref_1, ref_2 = jnp.array([-0.5, 0.1, 0.0]), jnp.array([0.2, -1.0, 0.4])

    def shifted(c, bias):
        # c/3 per step on both segments shifts both scores S_i by β·c.
        return cpl.dpo_loss(lp_1 + c / 3, lp_2 + c / 3, ref_1, ref_2, jnp.array(1.0),
                            beta=0.5, bias=bias)

    assert jax.grad(shifted)(0.0, 1.0) == pytest.approx(0.0, abs=1e-7)
    assert float(shifted(5.0, 1.0)) == pytest.approx(float(shifted(0.0, 1.0)), abs=1e-6)
    # λ < 1 is conservative: raising the likelihood of both segments lowers the loss.
    assert jax.grad(shifted)(0.0, 0.5) < -1e-3


def test_tanh_gaussian_density_matches_scipy_and_integrates_to_one():
    mu, log_std = 0.3, math.log(0.8)

    def density(a: float) -> float:
        return float(jnp.exp(tanh_gaussian_log_prob(jnp.array([mu]), jnp.array([log_std]),
                                                    jnp.array([a]))))

    # a = tanh(u): p(a) = N(atanh a; μ, σ) / (1 − a²) — change of variables.
    for a in (-0.95, -0.3, 0.0, 0.5, 0.99):
        expected = scipy.stats.norm.pdf(np.arctanh(a), mu, 0.8) / (1 - a * a)
        assert density(a) == pytest.approx(expected, rel=1e-4)
    total, _ = scipy.integrate.quad(density, -1.0, 1.0, limit=200, epsabs=1e-5)
    assert total == pytest.approx(1.0, abs=1e-4)
    # Product over dimensions: the 2-D log-density is the sum of the 1-D ones.
    two = tanh_gaussian_log_prob(jnp.array([mu, -1.0]), jnp.array([log_std, 0.2]),
                                 jnp.array([0.4, -0.7]))
    one = (tanh_gaussian_log_prob(jnp.array([mu]), jnp.array([log_std]), jnp.array([0.4]))
           + tanh_gaussian_log_prob(jnp.array([-1.0]), jnp.array([0.2]), jnp.array([-0.7])))
    assert float(two) == pytest.approx(float(one), rel=1e-5)
    # Clipped data at the bound stays finite (pulled in by ACTION_EPS).
    at_bound = tanh_gaussian_log_prob(jnp.array([2.0]), jnp.array([0.0]), jnp.array([1.0]))
    inside = tanh_gaussian_log_prob(jnp.array([2.0]), jnp.array([0.0]),
                                    jnp.array([1.0 - ACTION_EPS]))
    assert np.isfinite(at_bound) and float(at_bound) == pytest.approx(float(inside))


def test_pre_squash_score_drops_only_the_jacobian():
    """``squash_jacobian=False`` scores log N(atanh a; μ, σ): the box density plus
    Σ log(1 − a²) — a parameter-free term, so both give the same gradient."""
    net = GaussianPolicy(action_dim=2, hidden=(8,), state_dependent_std=True)
    obs = jax.random.normal(jax.random.key(0), (5, 3))
    action = jnp.array([[0.9, -0.2], [0.0, 0.5], [-0.99, 0.3], [0.4, 0.4], [1.0, -1.0]])
    params = net.init(jax.random.key(1), obs[0])
    mean, log_std = net.apply(params, obs)
    box = cpl.policy_log_prob(net, params, obs, action)
    pre = cpl.policy_log_prob(net, params, obs, action, squash_jacobian=False)
    # Independent formula: Gaussian log-density of u = atanh(a), per dimension, summed.
    # Clip in float32 as the library does (1 − 1e-6 rounds in float32; atanh is steep there).
    a = np.clip(np.asarray(action, np.float32), np.float32(-1 + ACTION_EPS),
                np.float32(1 - ACTION_EPS)).astype(np.float64)
    expected = scipy.stats.norm.logpdf(np.arctanh(a), np.asarray(mean, np.float64),
                                       np.exp(np.asarray(log_std, np.float64))).sum(-1)
    np.testing.assert_allclose(pre, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pre - box, np.log1p(-(a**2)).sum(-1), rtol=1e-4, atol=1e-4)
    # Row 0: log(1 − 0.81) + log(1 − 0.04) = log 0.19 + log 0.96 ≈ −1.6607 − 0.0408.
    assert float(pre[0] - box[0]) == pytest.approx(math.log(0.19) + math.log(0.96), abs=1e-4)
    grads = [jax.grad(lambda p, j=j: jnp.sum(cpl.policy_log_prob(
        net, p, obs, action, squash_jacobian=j)))(params) for j in (True, False)]
    for g_box, g_pre in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(g_box, g_pre, rtol=1e-5, atol=1e-6)


def test_pre_squash_score_changes_the_cpl_loss_by_the_jacobian_offset():
    """The learner's loss uses the configured score: with λ = 1 (Bradley–Terry) the two
    losses are bt_loss(α ΔS) with ΔS differing by α Σ_t [J(a¹_t) − J(a²_t)]."""
    net = GaussianPolicy(action_dim=1, hidden=(4,), state_dependent_std=False)
    batch = _pairs(jax.random.key(2), 3, 4, lambda s: 0.5 * s)
    params = net.init(jax.random.key(3), batch.obs_1[0, 0])
    losses = {}
    for jac in (True, False):
        config = cpl.CPLConfig(alpha=0.5, bias=1.0, squash_jacobian=jac)
        learner = cpl.make(config, net, optax.sgd(0.0))
        state = learner.init(jax.random.key(0), batch).replace(params=params)
        _, metrics = learner.update(state, batch)
        losses[jac] = float(metrics["pref_loss"])
    l1, l2 = cpl.pair_log_probs(net, params, batch, squash_jacobian=False)
    gap = 0.5 * (l1.sum(-1) - l2.sum(-1))
    expected = float(jnp.mean(jax.vmap(bt_loss)(gap, batch.label)))
    assert losses[False] == pytest.approx(expected, rel=1e-5)
    assert losses[True] != pytest.approx(losses[False], rel=1e-3)


# ------------------------------------------------------------ use from foreign JAX code

README_EXAMPLE = readme_example("cpl")


def test_readme_example_runs_under_user_jit_and_vmap(capsys):
    namespace: dict = {}
    exec(compile(README_EXAMPLE, "README_EXAMPLE", "exec"), namespace)  # noqa: S102
    metrics, states = namespace["metrics"], namespace["states"]
    assert metrics["loss"].shape == (4,) and np.all(np.isfinite(metrics["loss"]))
    assert np.all(np.asarray(states.step) == 20)
    # The seeds differ, so the four runs differ.
    assert len(set(np.round(np.asarray(metrics["loss"]), 6))) == 4
    # 20 steps of a training run lower the loss of every seed from its initial value.
    first = jax.vmap(namespace["learner"].init, in_axes=(0, None))(
        namespace["seeds"], namespace["batch"])
    _, m0 = namespace["update"](first, namespace["batch"])  # already compiled
    assert np.all(np.asarray(metrics["loss"]) < np.asarray(m0["loss"]))


# ------------------------------------------------------------ learners


def _pairs(key, num, length, target_fn, noise=0.0):
    """Queries on a 1-D problem: s ~ U(−1, 1), a ~ U(−0.95, 0.95); the segment whose
    actions are closer to target_fn(s) (squared error) is preferred."""
    k_o, k_a, k_n = jax.random.split(key, 3)
    obs = jax.random.uniform(k_o, (2, num, length, 1), minval=-1.0, maxval=1.0)
    act = jax.random.uniform(k_a, (2, num, length, 1), minval=-0.95, maxval=0.95)
    score = -jnp.sum((act - target_fn(obs)) ** 2, axis=(-1, -2))  # [2, num]
    score = score + noise * jax.random.normal(k_n, score.shape)
    label = (score[0] > score[1]).astype(jnp.float32)
    ones = jnp.ones((num, length))
    return cpl.PairBatch(obs[0], act[0], ones, obs[1], act[1], ones, label)


def test_dpo_starts_at_reference_with_loss_log2():
    batch = _pairs(jax.random.key(1), 6, 5, lambda s: 0.5 * s)
    policy = GaussianPolicy(action_dim=1, hidden=(8,), state_dependent_std=True)
    ref = policy.init(jax.random.key(2), batch.obs_1[0, 0])
    learner = cpl.make_dpo(cpl.DPOConfig(beta=0.5, bias=1.0), policy, optax.sgd(0.1))
    state = learner.init(jax.random.key(3), batch)
    with pytest.raises(ValueError, match="ref_params"):
        learner.update(state, batch)
    state = state.replace(params=ref, ref_params=ref)
    _, metrics = jax.jit(learner.update)(state, batch)
    # π = π_ref ⇒ every score is 0 ⇒ loss = −log σ(0) = log 2 for any label.
    assert float(metrics["pref_loss"]) == pytest.approx(math.log(2.0), abs=1e-6)


def test_cpl_learns_preferred_action_function():
    target = lambda s: 0.6 * s  # noqa: E731
    batch = _pairs(jax.random.key(0), 512, 8, target)
    policy = GaussianPolicy(action_dim=1, hidden=(32, 32), state_dependent_std=True)
    learner = cpl.make(cpl.CPLConfig(alpha=0.1, bias=0.5), policy, optax.adam(3e-3))
    state = learner.init(jax.random.key(1), batch)

    def step(state, key):
        idx = jax.random.randint(key, (64,), 0, 512)
        return learner.update(state, jax.tree.map(lambda x: x[idx], batch))

    state, metrics = jax.jit(lambda s: jax.lax.scan(step, s, jax.random.split(
        jax.random.key(2), 600)))(state)
    grid = jnp.linspace(-0.9, 0.9, 19)[:, None]
    mean, _ = policy.apply(state.params, grid)
    err = np.abs(np.tanh(np.asarray(mean[:, 0])) - np.asarray(target(grid[:, 0])))
    # The initial policy has mean ≈ 0, i.e. error up to 0.54 at the ends of the grid.
    assert err.max() < 0.15, err
    assert float(metrics["accuracy"][-50:].mean()) > 0.8


def test_best_of_n_picks_highest_scoring_sample():
    policy = GaussianPolicy(action_dim=2, hidden=(8,), state_dependent_std=True)
    obs = jnp.zeros((32, 3))
    params = policy.init(jax.random.key(0), obs[0])
    target = jnp.array([0.4, -0.3])
    score_fn = lambda o, a: -jnp.sum((a - target[None]) ** 2, axis=-1)  # noqa: E731
    mean, log_std = policy.apply(params, obs)
    key = jax.random.key(5)
    action, score = best_of_n.select(key, mean, log_std, obs, score_fn, 16)
    # Recompute the candidates with the same key: the choice is their argmax.
    from prefrl.networks import tanh_gaussian_sample

    cands = jnp.stack([tanh_gaussian_sample(k, mean, log_std)[0]
                       for k in jax.random.split(key, 16)])
    all_scores = jax.vmap(lambda a: score_fn(obs, a))(cands)
    np.testing.assert_allclose(score, all_scores.max(0), rtol=1e-6)
    np.testing.assert_allclose(score_fn(obs, action), score, rtol=1e-6)
    policy_fn = jax.jit(best_of_n.make_policy_fn(policy, params, score_fn, 16))
    one = jax.jit(best_of_n.make_policy_fn(policy, params, score_fn, 1))
    a16, a1 = policy_fn(np.zeros((32, 3), np.float32), key), one(obs, key)
    assert a16.shape == (32, 2)
    assert float(score_fn(obs, a16).mean()) > float(score_fn(obs, a1).mean())
    np.testing.assert_array_equal(a16, policy_fn(obs, key))  # same key, same actions
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n.make_policy_fn(policy, params, score_fn, 0)


def test_bc_regulariser_on_preferred_segments_known_answer():
    # logp [B=3, k=2]; segment 2 of query 0 has one masked step.
    logp_1 = jnp.array([[-1.0, -3.0], [-2.0, -2.0], [-5.0, -1.0]])
    logp_2 = jnp.array([[-4.0, -8.0], [-6.0, -2.0], [-1.0, -1.0]])
    mask_2 = jnp.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    batch = cpl.PairBatch(jnp.zeros((3, 2, 1)), jnp.zeros((3, 2, 1)), jnp.ones((3, 2)),
                          jnp.zeros((3, 2, 1)), jnp.zeros((3, 2, 1)), mask_2,
                          label=jnp.array([1.0, 0.0, 0.5]))
    # 'all': every unmasked step of both sides: (−4 −4 −6 | −4 −8 −2) over 11 steps.
    all_steps = -(-1 - 3 - 2 - 2 - 5 - 1 - 4 - 6 - 2 - 1 - 1) / 11
    np.testing.assert_allclose(cpl._bc_nll(logp_1, logp_2, batch, "all"), all_steps, rtol=1e-6)
    # 'preferred': query 0 -> side 1 (−1, −3), query 1 -> side 2 (−6, −2), tie -> both at ½.
    num = (-1 - 3) + (-6 - 2) + 0.5 * (-5 - 1) + 0.5 * (-1 - 1)
    np.testing.assert_allclose(cpl._bc_nll(logp_1, logp_2, batch, "preferred"), -num / 6,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="bc_data"):
        cpl.CPLConfig(bc_data="positive")


def test_filtered_bc_keeps_each_queries_preferred_segment():
    from prefrl.bench.cpl import preferred_segments
    from prefrl.types import PreferenceDataset, Segments

    n, k = 4, 3
    seg = Segments(obs=np.arange(n, dtype=np.float32)[:, None, None] * np.ones((n, k, 2)),
                   action=np.zeros((n, k, 1)), reward=np.zeros((n, k)),
                   next_obs=np.zeros((n, k, 2)), mask=np.ones((n, k)),
                   x_velocity=np.zeros((n, k)), qpos=np.zeros((n, k, 9)),
                   qvel=np.zeros((n, k, 9)), source=np.zeros((n, 2), np.int64))
    data = PreferenceDataset(seg, first=np.array([0, 1, 2, 3]), second=np.array([1, 2, 3, 0]),
                             labels={"regret": np.array([1.0, 0.0, 0.5, 1.0])},
                             label_mask={"regret": np.array([True, True, True, False])})
    kept = preferred_segments(data, "regret")
    # Query 0 keeps 0, query 1 keeps 2, the tie keeps 2 and 3, the skipped query nothing.
    assert sorted(np.asarray(kept.segments.obs)[:, 0, 0].tolist()) == [0.0, 2.0, 2.0, 3.0]


def test_config_checks():
    with pytest.raises(ValueError, match="bias"):
        cpl.CPLConfig(bias=0.0)
    with pytest.raises(ValueError, match="alpha"):
        cpl.CPLConfig(alpha=-1.0)
    with pytest.raises(ValueError, match="beta"):
        cpl.DPOConfig(beta=0.0)
    from prefrl.bench.cpl import CPLBenchConfig

    with pytest.raises(ValueError, match="max_progress"):
        CPLBenchConfig(max_progress=0.0)
    with pytest.raises(ValueError, match="bc_data"):
        CPLBenchConfig(bc_data="pos")


# ------------------------------------------------------------ the benchmark, end to end


def test_query_weights_drop_zero_weight_queries():
    # One PairBatch type serves every learner (prefrl.types); CPL honours its
    # optional per-query weight: weight 0 = the query is absent, weights of 1 = none.
    import jax
    import jax.numpy as jnp
    import optax

    from prefrl.networks import GaussianPolicy

    keys = jax.random.split(jax.random.key(3), 4)
    batch = cpl.PairBatch(
        obs_1=jax.random.normal(keys[0], (3, 4, 2)),
        action_1=jax.random.uniform(keys[1], (3, 4, 1), minval=-0.9, maxval=0.9),
        mask_1=jnp.ones((3, 4)),
        obs_2=jax.random.normal(keys[2], (3, 4, 2)),
        action_2=jax.random.uniform(keys[3], (3, 4, 1), minval=-0.9, maxval=0.9),
        mask_2=jnp.ones((3, 4)),
        label=jnp.array([1.0, 0.0, 1.0]),
    )
    learner = cpl.make(cpl.CPLConfig(), GaussianPolicy(1, (8,), state_dependent_std=True),
                       optax.sgd(0.0))
    state = learner.init(jax.random.key(0), batch)
    first_two = jax.tree.map(lambda x: x[:2], batch)
    _, plain = learner.update(state, first_two)
    _, dropped = learner.update(state, batch._replace(weight=jnp.array([1.0, 1.0, 0.0])))
    _, ones = learner.update(state, first_two._replace(weight=jnp.ones(2)))
    np.testing.assert_allclose(dropped["pref_loss"], plain["pref_loss"], rtol=1e-6)
    np.testing.assert_allclose(ones["pref_loss"], plain["pref_loss"], rtol=1e-6)
