"""The sweep's runners, one per learner: fit r̂/Â, RLHF-PPO on it, CPL and DPO.

``runner(cell, seeds, budget_scale) -> [metrics per seed]`` (the
:data:`prefrl.sweeps.execute.Runner` form). Each builds the cell's
seed-independent data once on the host (:mod:`prefrl.studies.cell_data`),
then trains every seed in one ``jit(vmap(...))`` call (PPO's host-side
environment loop runs seeds in turn).

* ``rm_pr`` / ``rm_regret`` — fit r̂ (partial return) or Â (regret) only;
  report held-out preference accuracy under both oracles and reward correlations;
* ``rm_pr+ppo`` / ``rm_regret+ppo`` — the same fit, then PPO on the learned
  function (:mod:`prefrl.loops.ppo`), optionally KL-regularised to a BC π_ref;
* ``cpl`` / ``dpo`` — CPL and contrastive DPO (:mod:`prefrl.loops.offline`): no RL;
* ``regret_sf+ppo`` / ``advantage_greedy`` — the learners that really assume
  regret (:mod:`prefrl.studies.cells_regret`): r̂ = w·φ via successor
  features of the expert's snapshots, then PPO; Â used greedily (AWR), no RL;
* ``online_{uniform,disagreement,entropy}+ppo`` — the online loop
  (:mod:`prefrl.loops.online`): the cell's oracle, noise (β, ε) and label
  budget, queries from the current policy's segments chosen by that rule.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from prefrl.studies.cell_data import (
    ACT_DIM,
    CellData,
    correlations,
    expert_advantages,
    heldout_accuracy,
    load_cell_data,
    oracle_discount,
    pair_indices,
    sample_pairs,
    seed_keys,
)
from prefrl.sweeps.execute import Runner
from prefrl.sweeps.spec import CellConfig, Settings


def _reward_model_config(cell: CellConfig, assumption: str) -> Any:
    from prefrl.learners import reward_model

    st = cell.settings
    return reward_model.RewardModelConfig(
        assumption=reward_model.fitted_function(assumption),
        hidden=st.reward_hidden,
        ensemble_size=st.reward_ensemble,
        learning_rate=st.reward_learning_rate,
        weight_decay=st.reward_weight_decay,
        discount=oracle_discount(assumption, st),
        batch_size=min(st.reward_batch_size, cell.label_budget),
        num_steps=st.reward_steps,
        eval_every=max(1, min(50, st.reward_steps)),
    )


@functools.lru_cache(maxsize=32)
def _fit_fn(config: Any) -> Callable[..., Any]:
    """``jit(vmap(fit))`` for one reward-model config (cached: one compile per config)."""
    import jax

    from prefrl.loops import fit as reward_fit

    return jax.jit(jax.vmap(lambda key, batch: reward_fit.fit(key, config, batch)))


@functools.lru_cache(maxsize=32)
def _pool_values_fn(config: Any) -> Callable[..., Any]:
    """Jitted ``(states [S], obs, action, mask) -> (r̂ [S, N, k], scores [S, N])``."""
    import jax

    from prefrl.learners import reward_model

    model = reward_model.model(config)

    def one(state, obs, action, mask):  # noqa: ANN001, ANN202
        r_hat = reward_model.reward_fn(model, state)(obs, action)
        return r_hat, reward_model.segment_scores(model, state, obs, action, mask)

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


def fit_reward_models(
    cell: CellConfig, data: CellData, seeds: Sequence[int]
) -> tuple[Any, Any, Any, Any]:
    """Fit the cell's reward model for every seed in one ``jit(vmap(fit))`` call.

    Returns ``(states, train_loss, r_hat, scores)``: the fitted, normalised
    states stacked over seeds, each seed's final training loss ``[S]``, and
    the learned function on every pool step ``[S, N, k]`` with the segment
    scores of the assumed model ``[S, N]``.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from prefrl.data import pairs
    from prefrl.loops import fit as reward_fit

    config = _reward_model_config(cell, cell.assumption)
    keys = seed_keys(seeds)
    key_pairs, key_fit = jax.vmap(jax.random.split, out_axes=1)(keys)
    batches = sample_pairs(data, cell.label_budget, key_pairs)
    host = jax.tree.map(np.asarray, batches)
    for s, seed in enumerate(seeds):
        # Host-side value checks where data enters (e.g. a single-class label set).
        one = jax.tree.map(lambda x, s=s: x[s], host)
        pairs.validate(one, what=f"{cell.label()} seed {seed}")
    result = _fit_fn(config)(key_fit, batches)
    reward_fit.check_finite(
        {k: np.swapaxes(np.asarray(v), 0, 1) for k, v in result.metrics.items()
         if k in ("train_loss", "grad_norm", "skipped")}
    )
    seg = data.segments
    r_hat, scores = _pool_values_fn(config)(
        result.state, *(jnp.asarray(x, jnp.float32) for x in (seg.obs, seg.action, seg.mask))
    )
    train_loss = np.asarray(result.metrics["train_loss"])[:, -1]
    return result.state, train_loss.reshape(len(seeds), -1).mean(axis=1), r_hat, scores


def _run_reward_fit(cell: CellConfig, seeds: Sequence[int], budget_scale: float) -> list[dict]:
    """Fit-only cells: held-out accuracy under both oracles and reward correlations."""
    import numpy as np

    data = load_cell_data(cell)
    _, train_loss, r_hat, scores = fit_reward_models(cell, data, seeds)
    held = data.heldout_idx
    true_r = np.asarray(data.segments.reward)[held]
    adv = expert_advantages(data, cell.settings.discount)[held] if data.value_fn else None
    out = []
    for s in range(len(seeds)):
        metrics: dict[str, Any] = {"train_loss": float(train_loss[s])}
        metrics.update(heldout_accuracy(data, scores[s]))
        metrics.update(correlations(np.asarray(r_hat[s])[held], true_r, "true_r"))
        if adv is not None:
            metrics.update(correlations(np.asarray(r_hat[s])[held], adv, "expert_adv"))
        out.append(metrics)
    return out


# -- policy learners -------------------------------------------------------------------


def evaluate_policies(
    cell: CellConfig, network: Any, params: Any, seeds: Sequence[int]
) -> list[dict[str, float]]:
    """True return of each seed's deterministic policy over full episodes.

    Every seed is evaluated from the same reset states (common random numbers:
    the environment seed is fixed, so seeds differ only by their policy).
    """
    from prefrl.envs import make_task
    from prefrl.loops import offline
    from prefrl.policies import Policy, policy_fn
    from prefrl.rollout import evaluate_on_task

    out = []
    for i in range(len(seeds)):
        policy = Policy(network.apply, offline.select_seed(params, i))
        task = make_task(cell.task, **dict(cell.files.task_params))
        result = evaluate_on_task(task, policy_fn(policy, deterministic=True),
                                  episodes=cell.settings.eval_episodes, seed=1_000_003)
        metrics = {"true_return": result["mean_return"], "true_return_std": result["std_return"],
                   "mean_speed": result["mean_speed"]}
        if "mean_speed_error" in result:
            metrics["mean_speed_error"] = result["mean_speed_error"]
        out.append(metrics)
    return out


def _offline_network(config: Any, segments: Any) -> Any:
    """The policy network of ``config``; with ``normalize_obs`` its input statistics are the pool's.

    Computed on the host once per cell, so every seed's policy (and the
    statistics baked into the network) is the same function of the data.
    """
    from prefrl.loops import offline

    if getattr(config, "normalize_obs", False):
        return config.network(ACT_DIM, *offline.obs_statistics(segments.obs, segments.mask))
    return config.network(ACT_DIM)


def _offline_config(settings: Settings, main_steps: int, bc_steps: int) -> Any:
    from prefrl.loops import offline

    # Logging chunks must divide both phases; ~20 validation points per run.
    log_every = max(1, main_steps // 20)
    round_up = lambda n: max(log_every, -(-n // log_every) * log_every)
    return offline.TrainConfig(
        num_steps=round_up(main_steps),
        batch_size=settings.cpl_batch_size,
        learning_rate=settings.cpl_learning_rate,
        bc_pretrain_steps=round_up(bc_steps) if bc_steps else 0,
        log_every=log_every,
        hidden=tuple(settings.policy_hidden),
        state_dependent_std=True,
    )


@functools.lru_cache(maxsize=16)
def _offline_fn(algo: str, config: Any, learner_config: Any, network: Any) -> Callable[..., Any]:
    """``jit(vmap(train_fn))`` over (key, first, second, label) with the pool shared.

    Cached per (algo, configs, network): cells with equal shapes share one compile.
    """
    import jax

    from prefrl.loops import offline

    def one(key, first, second, label, obs, action, mask, val):  # noqa: ANN001, ANN202
        train = offline.PairData(obs, action, mask, first, second, label)
        return offline.make_train_fn(
            algo, config, learner_config, train, val, network=network
        )(key)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None, None, None, None)))


@functools.lru_cache(maxsize=16)
def _implicit_scores_fn(network: Any, use_ref: bool) -> Callable[..., Any]:
    """``(params [S], ref [S], obs, action, mask) -> (scores [S, N], kl [S])``.

    ``scores`` are the implicit segment scores ``Σ_t log π``
    (:func:`prefrl.learners.cpl.segment_scores`; ``log π/π_ref`` with
    ``use_ref``), ``kl`` the mean KL(π ‖ π_ref) per step over the pool's
    states (closed form on the pre-tanh Gaussians, equal to the KL of the
    squashed policies).
    """
    import jax
    import jax.numpy as jnp

    from prefrl.learners import cpl, ppo

    def one(params, ref, obs, action, mask):  # noqa: ANN001, ANN202
        scores = cpl.segment_scores(network, params, obs, action, mask,
                                    ref_params=ref if use_ref else None)
        mean, log_std = network.apply(params, obs)
        ref_mean, ref_log_std = network.apply(ref, obs)
        kl = ppo.gaussian_kl(mean, log_std, ref_mean, ref_log_std)
        return scores, jnp.sum(kl * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, None)))


def _run_offline(cell: CellConfig, seeds: Sequence[int], budget_scale: float) -> list[dict]:
    """CPL (``cpl``) and contrastive DPO (``dpo``): preferences → policy, no RL."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from prefrl.learners import cpl
    from prefrl.loops import offline

    st = cell.settings
    data = load_cell_data(cell)
    if cell.learner == "dpo":
        algo, learner_config = "dpo", cpl.DPOConfig(beta=st.dpo_beta, bias=1.0)
    elif st.cpl_bc_weight > 0:
        algo = "cpl_bc"
        learner_config = cpl.CPLConfig(alpha=st.cpl_alpha, bias=st.cpl_bias,
                                       bc_weight=st.cpl_bc_weight)
    else:
        algo, learner_config = "cpl", cpl.CPLConfig(alpha=st.cpl_alpha, bias=st.cpl_bias)
    config = _offline_config(st, st.cpl_steps, st.bc_steps)
    network = _offline_network(config, data.segments)

    keys = seed_keys(seeds)
    key_pairs, key_train = jax.vmap(jax.random.split, out_axes=1)(keys)
    first, second, label = pair_indices(data, cell.label_budget, key_pairs)
    seg = data.segments
    pool = tuple(jnp.asarray(x, jnp.float32) for x in (seg.obs, seg.action, seg.mask))
    own = data.heldout_labels[cell.label_model]
    val = offline.PairData(*pool, jnp.asarray(data.heldout_first, jnp.int32),
                           jnp.asarray(data.heldout_second, jnp.int32),
                           jnp.asarray(own, jnp.float32))
    output, history = _offline_fn(algo, config, learner_config, network)(
        key_train, first, second, label, *pool, val
    )
    history = jax.tree.map(np.asarray, history)
    for phase in ("bc", "pref"):
        bad = history.get(f"{phase}_bad_step")
        if bad is not None and (np.asarray(bad) >= 0).any():
            raise offline.TrainingDivergedError(
                f"{cell.label()}: non-finite loss in the {phase} phase (seeds {list(seeds)})"
            )
    # α or β > 0 leaves the order of the scores unchanged: score with 1.
    scores, kl = _implicit_scores_fn(network, algo == "dpo")(output.params, output.ref_params,
                                                             *pool)
    scores = np.asarray(scores)  # [S, N]
    returns = evaluate_policies(cell, network, output.params, seeds)
    out = []
    for s in range(len(seeds)):
        metrics: dict[str, Any] = dict(returns[s])
        metrics.update(heldout_accuracy(data, scores[s]))
        metrics["kl_to_ref"] = float(kl[s])
        metrics["train_loss"] = float(history["pref"]["loss"][s, -1])
        metrics["curves"] = {
            "step": [(i + 1) * config.log_every for i in range(history["pref"]["loss"].shape[1])],
            "train_loss": [float(v) for v in history["pref"]["loss"][s]],
            "val_accuracy": [float(v) for v in history["pref"]["val_accuracy"][s]],
        }
        out.append(metrics)
    return out




# -- RLHF: reward model + PPO ----------------------------------------------------------


def _run_rlhf_ppo(cell: CellConfig, seeds: Sequence[int], budget_scale: float) -> list[dict]:
    """``rm_pr+ppo`` / ``rm_regret+ppo``: fit r̂ or Â (seeds vmapped), then PPO on it per seed."""
    import jax
    import numpy as np

    from prefrl.learners import reward_model

    data = load_cell_data(cell)
    states, train_loss, _, scores = fit_reward_models(cell, data, seeds)
    learned_reward = reward_model.PPOReward(reward_model.model(
        _reward_model_config(cell, cell.assumption)))
    params = [jax.tree.map(lambda x, s=s: x[s], states) for s in range(len(seeds))]
    extra = [{"reward_train_loss": float(train_loss[s]),
              **heldout_accuracy(data, np.asarray(scores[s]))} for s in range(len(seeds))]
    return ppo_on_rewards(cell, data, seeds, learned_reward, params,
                          f"learned ({cell.assumption})", extra)


def ppo_on_rewards(cell: CellConfig, data: CellData, seeds: Sequence[int], reward_fn: Any,
                   reward_params: Sequence[Any], reward_name: str,
                   extra: Sequence[dict[str, Any]]) -> list[dict]:
    """PPO per seed on a learned reward (``reward_params[s]``); metrics plus ``extra[s]``.

    PPO's environment loop runs on the host, so its seeds run one after the
    other. π_ref is a BC policy of the dataset (seeds vmapped): the KL
    penalty ``β_KL (log π − log π_ref)`` uses it when ``ppo_kl_coef > 0``,
    and ``kl_to_ref`` (the mean of ``log π − log π_ref`` over the last
    rollout, a KL estimate) is reported either way.
    """
    import jax
    import jax.numpy as jnp

    from prefrl.learners import bc, ppo
    from prefrl.loops import offline
    from prefrl.loops import ppo as training

    st = cell.settings
    # π_ref by behaviour cloning on the pool, one per seed in one vmapped call.
    bc_config = _offline_config(st, st.bc_steps, 0)
    network = _offline_network(bc_config, data.segments)
    keys = seed_keys(seeds)
    first, second, label = pair_indices(data, cell.label_budget, jax.vmap(
        lambda k: jax.random.fold_in(k, 1))(keys))
    seg = data.segments
    pool = tuple(jnp.asarray(x, jnp.float32) for x in (seg.obs, seg.action, seg.mask))
    val = offline.PairData(*pool, jnp.asarray(data.heldout_first, jnp.int32),
                           jnp.asarray(data.heldout_second, jnp.int32),
                           jnp.asarray(data.heldout_labels[cell.label_model], jnp.float32))
    ref_output, _ = _offline_fn("bc", bc_config, bc.BCConfig(), network)(
        jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys), first, second, label, *pool, val
    )
    ppo_config = ppo.PPOConfig(
        discount=st.discount, policy_hidden=tuple(st.policy_hidden),
        value_hidden=tuple(st.policy_hidden), kl_ref_coef=st.ppo_kl_coef,
    )
    steps_per_update = st.ppo_num_envs * st.ppo_rollout_steps
    num_updates = max(1, -(-st.ppo_env_steps // steps_per_update))
    out = []
    for s, seed in enumerate(seeds):
        train_config = training.TrainConfig(
            task=cell.task, task_param=cell.files.task_param, total_steps=st.ppo_env_steps,
            num_envs=st.ppo_num_envs,
            rollout_steps=st.ppo_rollout_steps, seed=int(seed),
            eval_every=max(1, num_updates // st.ppo_evals), eval_episodes=st.eval_episodes,
            checkpoint_every=0, out_dir=None, progress=False,
        )
        result = training.train(
            train_config, ppo_config, reward_fn=reward_fn, reward_params=reward_params[s],
            reward_name=reward_name,
            reference=(jax.tree.map(lambda x, s=s: x[s], ref_output.params), network.apply),
        )
        final = result.evaluations[-1]
        hist = result.history
        metrics: dict[str, Any] = {
            "true_return": final["mean_return"],
            "true_return_std": final["std_return"],
            "mean_speed": final["mean_speed"],
            "kl_to_ref": float(hist[-1]["ref_kl"]),
            "proxy_reward": float(hist[-1]["proxy_reward"]),
            "env_steps": int(result.env_steps),
        }
        if "mean_speed_error" in final:
            metrics["mean_speed_error"] = final["mean_speed_error"]
        metrics.update(extra[s])
        metrics["curves"] = {
            "env_steps": [int(h["env_steps"]) for h in hist],
            "proxy_reward": [float(h["proxy_reward"]) for h in hist],
            "true_reward": [float(h["true_reward"]) for h in hist],
            "kl_to_ref": [float(h["ref_kl"]) for h in hist],
            "eval_env_steps": [int(e["env_steps"]) for e in result.evaluations],
            "eval_return": [float(e["mean_return"]) for e in result.evaluations],
        }
        out.append(metrics)
    return out


def _run_online(cell: CellConfig, seeds: Sequence[int], budget_scale: float, *,
                selection: str) -> list[dict]:
    """``online_*+ppo``: the online loop per seed with the cell's oracle, noise and budget.

    The dataset is not used (queries come from the run's own rollouts); the
    expert's critic labels regret cells. PPO steps, environments and
    evaluations come from the sweep settings (scaled like every PPO cell).
    """
    from prefrl import oracles
    from prefrl.learners import ppo
    from prefrl.loops import online

    st = cell.settings
    oracle = oracles.OracleConfig(
        model=cell.label_model, discount=oracle_discount(cell.label_model, st),
        temperature=cell.beta,
        temperature_mode=st.beta_mode, mistake_prob=cell.epsilon)
    steps_per_update = st.ppo_num_envs * st.ppo_rollout_steps
    num_updates = max(1, -(-st.ppo_env_steps // steps_per_update))
    out = []
    for seed in seeds:
        config = online.OnlineConfig(
            task=cell.task, task_param=cell.files.task_param, total_steps=st.ppo_env_steps,
            num_envs=st.ppo_num_envs,
            rollout_steps=st.ppo_rollout_steps, seed=int(seed), label_budget=cell.label_budget,
            segment_length=cell.segment_length, segment_stride=cell.segment_length,
            selection=selection, expert=cell.files.expert or "",
            eval_every=max(1, num_updates // st.ppo_evals), eval_episodes=st.eval_episodes,
            progress=False, refit_every=max(1, min(8, num_updates)))
        reward = online.default_reward_config(hidden=tuple(st.reward_hidden),
                                              ensemble_size=max(2, st.reward_ensemble))
        result = online.train(config, ppo.PPOConfig(discount=st.discount), reward, oracle)
        final, last = result["final"], result["rounds"][-1]
        metrics: dict[str, Any] = {
            "true_return": final["mean_return"], "true_return_std": final["std_return"],
            "mean_speed": final["mean_speed"], "labels_used": result["labels_used"],
            "env_steps": int(result["env_steps"]), "wall_s": result["wall_s"],
            "reward_pearson": last.get("reward_pearson"),
            "heldout_accuracy_partial_return": last.get("heldout_acc_partial_return"),
            "heldout_accuracy_regret": last.get("heldout_acc_regret"),
            "curves": {"eval_env_steps": [int(e["env_steps"]) for e in result["evaluations"]],
                       "eval_return": [float(e["mean_return"]) for e in result["evaluations"]]},
        }
        if "mean_speed_error" in final:
            metrics["mean_speed_error"] = final["mean_speed_error"]
        out.append(metrics)
    return out


RUNNERS: dict[str, Runner] = {
    "rm_pr": _run_reward_fit,
    "rm_regret": _run_reward_fit,
    "rm_pr+ppo": _run_rlhf_ppo,
    "rm_regret+ppo": _run_rlhf_ppo,
    "cpl": _run_offline,
    "dpo": _run_offline,
    # The online loop under each query rule of prefrl.data.queries.ACQUISITIONS that the
    # sweep files name (prefrl.sweeps.spec.LEARNER_ASSUMPTION, which cannot import JAX).
    **{f"online_{rule}+ppo": functools.partial(_run_online, selection=rule)
       for rule in ("uniform", "disagreement", "entropy")},
    "regret_sf+ppo": lambda *a: _regret_cells().run_regret_sf_ppo(*a),
    "advantage_greedy": lambda *a: _regret_cells().run_advantage_greedy(*a),
}


def _regret_cells() -> Any:
    from prefrl.studies import cells_regret

    return cells_regret
