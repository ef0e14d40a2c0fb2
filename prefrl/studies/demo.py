"""The end-to-end demo pipeline (``prefrl demo``): experts → preferences → policies → table.

One run on one task (``target-speed`` by default, where partial return and
regret disagree — docs/design.md §5):

1. **experts**: find the shipped PPO checkpoints of the task (final and
   intermediate, :func:`find_experts`); the final one's critic V_E is the
   regret oracle's stand-in for V* (docs/design.md §3).
2. **behaviour data**: roll out every chosen checkpoint (stochastic actions),
   checkpoints of a faster expert (``run``: past v*, so the labels can say
   that faster is worse) and a uniform random policy with
   :class:`prefrl.rollout.BatchedEnv`; cut segments
   (:func:`prefrl.data.segments.segment`) — a pool from poor to expert to
   overshooting behaviour.
3. **labels**: one query set labelled by *both* oracles
   (:func:`prefrl.data.labelling.label_pool`: partial return Σ r, and regret
   Σ γ^t r_t + γ^k V_E(s_k) − V_E(s_0)); queries split into train / valid /
   held-out test.
4. **reward models**: r̂ fitted under the partial-return assumption on the
   partial-return labels, Â under the regret assumption on the regret labels
   (:func:`prefrl.learners.reward_fit.fit`), each scored on the held-out
   queries against *both* oracles' labels.
5. **offline**: BC on the training segments, then CPL-BC (CPL with a BC term
   on the preferred segments, ``cpl_bc_weight``; 0 = plain CPL) from the BC
   policy on each label set (:func:`prefrl.loops.offline.train`).
6. **PPO** from scratch on each learned reward (:func:`prefrl.loops.ppo.train`
   with ``reward_fn`` = the standardised r̂ / Â).
7. **evaluation**: true return (mean ± std over episodes) and mean speed
   error |v_x − v*| of every policy (:func:`prefrl.rollout.evaluate_on_task`),
   with the expert, BC and a random policy for reference.

Everything is driven by the frozen :class:`DemoConfig`; :func:`run_demo`
returns a JSON-able result, :mod:`prefrl.report.demo` prints, draws and stores it.
"""


from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prefrl import config as config_lib
from prefrl import evaluation
from prefrl.data import pairs
from prefrl.studies.demo_config import LABELS, QUICK, DemoConfig, quick_config
from prefrl.studies.experts import Experts, behaviour_checkpoints, find_experts
from prefrl.types import PreferenceDataset, Segments

Array = jax.Array
Log = Callable[[str], None]


def overshoot_folder(config: DemoConfig, experts: Experts) -> Path | None:
    """The folder of ``config.overshoot_experts`` (``None``: skip; see :class:`DemoConfig`)."""
    if config.overshoot_experts == "none":
        return None
    if config.overshoot_experts:
        return Path(config.overshoot_experts)
    beside = experts.directory.parent / "run"
    return beside if beside.is_dir() and beside.resolve() != experts.directory.resolve() else None


def collect_pool(
    config: DemoConfig, task: Any, experts: Experts, overshoot: Experts | None = None
) -> tuple[Segments, list[dict[str, Any]]]:
    """Roll out the behaviour policies and cut one segment pool ``[N, k, …]``.

    Behaviour policies: the checkpoints of :func:`behaviour_checkpoints`
    (stochastic actions), ``overshoot_checkpoints`` checkpoints of
    ``overshoot`` (an expert of another task, e.g. ``run``, rolled out under
    *this* task's reward: on target-speed it runs past v*, so the labels say
    that faster is not better) and, with ``config.random_policy``, uniform
    random actions. Each runs ``num_envs`` environments for ``steps_per_checkpoint``
    steps from fresh resets (environment seed ``seed·1000 + i``).
    """
    from prefrl import checkpoints
    from prefrl.data.segments import segment
    from prefrl.rollout import BatchedEnv, random_policy

    behaviours: list[tuple[str, Any]] = []
    for i in behaviour_checkpoints(experts, config.max_checkpoints):
        policy, _ = checkpoints.load_policy(experts.checkpoints[i], deterministic=False,
                                            obs_dim=task.obs_dim)
        behaviours.append((f"{experts.checkpoints[i].name}@{int(experts.progress[i])}", policy))
    if overshoot is not None:
        for i in behaviour_checkpoints(overshoot, config.overshoot_checkpoints):
            policy, _ = checkpoints.load_policy(overshoot.checkpoints[i], deterministic=False,
                                                obs_dim=task.obs_dim)
            name = overshoot.headers[i].get("task", overshoot.directory.name)
            behaviours.append((f"{name}:{overshoot.checkpoints[i].name}@"
                               f"{int(overshoot.progress[i])}", policy))
    if config.random_policy:
        behaviours.append(("random", random_policy(task.act_dim)))
    pools, stats = [], []
    for i, (name, policy) in enumerate(behaviours):
        env_seed = config.seed * 1000 + i
        with BatchedEnv(task, config.num_envs, seed=env_seed) as env:
            traj = env.rollout(policy, config.steps_per_checkpoint, jax.random.key(env_seed))
        pool = segment(traj, config.segment_length, config.stride)
        pools.append(pool)
        stats.append({"policy": name, "segments": int(pool.obs.shape[0]),
                      "mean_reward": float(np.mean(traj.reward)),
                      "mean_speed": float(np.mean(traj.x_velocity))})
    pool = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *pools)
    return pool, stats


def split_queries(num: int, test_fraction: float, valid_fraction: float, seed: int
                  ) -> dict[str, np.ndarray]:
    """A seeded permutation of ``range(num)`` cut into ``test``, ``valid`` and ``train``.

    ``test`` has ``round(test_fraction · num)`` queries, ``valid``
    ``round(valid_fraction · rest)``; ``train`` keeps the remainder (at least 2).
    """
    return pairs.split(num, {"test": test_fraction, "valid": valid_fraction}, seed, min_rest=2)


subset = pairs.subset


def label_both(config: DemoConfig, pool: Segments, value_fn: Callable[[Any], Any],
               discount: float) -> tuple[PreferenceDataset, dict[str, Any]]:
    """``num_queries`` uniform pairs labelled by both oracles (rational, deterministic)."""
    from prefrl.data.labelling import LabelConfig, label_pool

    label_config = LabelConfig(segment_length=config.segment_length, stride=config.stride,
                               budget=config.num_queries, seed=config.seed, oracles=LABELS,
                               regret_discount=discount)
    return label_pool(label_config, pool, value_fn)


# --------------------------------------------------------------------------- reward models


def fit_reward_model(config: DemoConfig, dataset: PreferenceDataset, assumption: str,
                     split: Mapping[str, np.ndarray], discount: float, key: Array) -> Any:
    """Fit r̂ (``partial_return``, γ = 1) or Â (``regret``, γ = ``discount``) on its own labels.

    Returns ``(model, state)``: the :class:`prefrl.learners.reward_model.RewardModel`
    and the fitted state
    (best-by-validation members, output standardised on the training segments).
    """
    from prefrl.learners import reward_model as rm
    from prefrl.loops import fit as reward_fit

    rm_config = rm.RewardModelConfig(
        assumption=rm.fitted_function(assumption),  # type: ignore[arg-type]
        hidden=tuple(config.rm_hidden), ensemble_size=config.rm_ensemble,
        learning_rate=config.rm_learning_rate, batch_size=config.rm_batch_size,
        num_steps=config.rm_steps, eval_every=max(1, min(50, config.rm_steps)),
        discount=discount if assumption == "regret" else 1.0,
    )
    train = pairs.from_dataset(dataset, assumption, split["train"])
    pairs.validate(train, what=f"{assumption} training labels")
    valid = None
    if len(split["valid"]):
        valid = pairs.from_dataset(dataset, assumption, split["valid"])
    # Data as arguments, not closed-over constants: XLA would fold megabytes of
    # constants into the program and compile far longer.
    # Adam with a constant learning rate (not the default optimizer's injected one,
    # which differs in the last float bits): the demo's numbers stay those of its README.
    fit = functools.partial(reward_fit.fit, optimizer=optax.adam(config.rm_learning_rate))
    result = jax.jit(fit, static_argnums=1)(key, rm_config, train, valid)
    reward_fit.check_finite(result.metrics)
    return rm.model(rm_config), result.state


def _heldout_accuracy(dataset: PreferenceDataset, indices: np.ndarray, scores: Array
                      ) -> dict[str, float]:
    """Accuracy of per-segment ``scores [N]`` on the queries ``indices``, every label set."""
    scores = np.asarray(scores)
    first, second = np.asarray(dataset.first)[indices], np.asarray(dataset.second)[indices]
    labels = {name: np.asarray(v)[indices] for name, v in dataset.labels.items()}
    weights = {name: np.asarray(v)[indices] for name, v in dataset.label_mask.items()}
    return evaluation.preference_accuracies(scores[first], scores[second], labels, weights)


def reward_model_accuracy(model: Any, state: Any, dataset: PreferenceDataset,
                          indices: np.ndarray) -> dict[str, float]:
    """Held-out accuracy of a reward model's segment scores under every label set (ties out)."""
    from prefrl.learners import reward_model as rm

    seg = dataset.segments
    scores = rm.segment_scores(model, state, *(jnp.asarray(x, jnp.float32)
                                        for x in (seg.obs, seg.action, seg.mask)))
    return _heldout_accuracy(dataset, indices, scores)


def implicit_accuracy(network: Any, params: Any, dataset: PreferenceDataset,
                      indices: np.ndarray, discount: float = 1.0) -> dict[str, float]:
    """Held-out accuracy of a policy's implicit preference ``Σ γ^t log π`` (CPL's view)."""
    from prefrl.learners import cpl as cpl_lib

    seg = dataset.segments
    scores = cpl_lib.segment_scores(network, params, *(jnp.asarray(x, jnp.float32)
                                                       for x in (seg.obs, seg.action, seg.mask)),
                                    discount=discount)
    return _heldout_accuracy(dataset, indices, scores)


# --------------------------------------------------------------------------- policies


def train_ppo_on(config: DemoConfig, task: Any, model: Any, reward_state: Any, name: str,
                 log: Log | None = None) -> Any:
    """PPO from scratch on the standardised learned reward; returns ``training.TrainResult``."""
    from prefrl.learners import ppo
    from prefrl.learners import reward_model as rm
    from prefrl.loops import ppo as training

    learned = rm.reward_fn(model, reward_state)

    def reward_fn(obs: Array, action: Array, next_obs: Array, extras: Any) -> Array:
        del next_obs, extras
        return learned(obs, action)

    train_config = training.TrainConfig(
        task=task.name, total_steps=config.ppo_steps, num_envs=config.ppo_envs,
        rollout_steps=config.ppo_rollout_steps, seed=config.seed, eval_every=0, eval_episodes=1,
        checkpoint_every=0, snapshots=(), out_dir=str(Path(config.out_dir) / f"ppo_{name}"),
        resume=False, progress=config.progress,
    )
    ppo_config = ppo.PPOConfig(num_epochs=config.ppo_epochs)
    return training.train(
        train_config, ppo_config,
        env_factory=lambda n, s: _make_env(task, n, s), task_header=task.to_header(),
        target_speed=task.params_dict.get("target_speed"), reward_fn=reward_fn,
        reward_name=f"learned:{name}", log=log,
    ), ppo_config


def train_online_on(config: DemoConfig, task: Any, critic: Path) -> dict[str, Any]:
    """The online row: PPO with the same budget as the offline PPO rows, on a reward refitted
    every ``online_refit_every`` updates on partial-return labels of its own segments.

    Per-round records go to ``out_dir/online/rounds.jsonl``, not the terminal.
    Returns the online loop's result (:func:`prefrl.loops.online.train`).
    """
    from prefrl.learners import ppo
    from prefrl.loops import online

    loop = online.OnlineConfig(
        task=task.name, total_steps=config.ppo_steps, num_envs=config.ppo_envs,
        rollout_steps=config.ppo_rollout_steps, seed=config.seed,
        label_budget=config.online_labels, refit_every=config.online_refit_every,
        segment_length=min(config.segment_length, config.ppo_rollout_steps),
        segment_stride=min(config.stride, config.ppo_rollout_steps),
        initial_fit_steps=max(config.rm_steps, 100), expert=str(critic), eval_every=0,
        eval_episodes=1, out_dir=str(Path(config.out_dir) / "online"), resume=False,
        progress=config.progress)
    reward = online.default_reward_config(
        hidden=tuple(config.rm_hidden), ensemble_size=config.rm_ensemble,
        batch_size=config.rm_batch_size, learning_rate=config.rm_learning_rate)
    ppo_config = ppo.PPOConfig(num_epochs=config.ppo_epochs)
    result = online.train(loop, ppo_config, reward)
    result["ppo_config"] = ppo_config
    return result


def _make_env(task: Any, num_envs: int, seed: int) -> Any:
    from prefrl.rollout import BatchedEnv

    return BatchedEnv(task, num_envs=num_envs, seed=seed, dtype=np.float32)


def train_offline(config: DemoConfig, dataset: PreferenceDataset, discount: float
                  ) -> dict[str, tuple[Any, Any]]:
    """BC on the training segments, then CPL(-BC) from the BC policy per label set.

    ``discount``: γ of CPL's score, the regret oracle's (the label is Σ γ^t A).

    Returns ``{"bc": (network, params), "cpl:<label>": (network, params), …}``.
    """
    from prefrl.learners import bc as bc_lib
    from prefrl.learners import cpl as cpl_lib
    from prefrl.loops import offline

    def train_config(steps: int) -> offline.TrainConfig:
        return offline.TrainConfig(num_steps=steps, log_every=_divisor(steps, 100),
                                   hidden=tuple(config.offline_hidden))

    any_label = config.cpl_labels[0] if config.cpl_labels else LABELS[0]
    bc = offline.train("bc", dataset, label_name=any_label, config=train_config(config.bc_steps),
                       learner_config=bc_lib.BCConfig(), seeds=(config.seed,))
    bc_params = offline.select_seed(bc.params, 0)
    out = {"bc": (bc.network, bc_params)}
    for label in config.cpl_labels:
        # CPL's score uses the oracle's discount (the label is Σ γ^t A) and the
        # Gaussian density of atanh(a) (see prefrl.learners.cpl); settings of
        # `prefrl bench cpl`, where CPL-BC beat BC on target-speed.
        learner_config = cpl_lib.CPLConfig(discount=discount, squash_jacobian=False,
                                           bc_weight=config.cpl_bc_weight, bc_data="preferred")
        algo = "cpl_bc" if config.cpl_bc_weight > 0 else "cpl"
        cpl = offline.train(algo, dataset, label_name=label, config=train_config(config.cpl_steps),
                            learner_config=learner_config, seeds=(config.seed,),
                            network=bc.network, init_params=bc_params)
        out[f"cpl:{label}"] = (cpl.network, offline.select_seed(cpl.params, 0))
    return out


def _divisor(steps: int, at_most: int) -> int:
    """The largest divisor of ``steps`` that is ≤ ``at_most`` (offline logging chunk)."""
    return max(d for d in range(1, min(steps, at_most) + 1) if steps % d == 0)


def evaluate(config: DemoConfig, task: Any, policy: Callable[[Any, Array], Any]
             ) -> dict[str, Any]:
    """True return and speed error over ``eval_episodes`` full episodes (same resets for all)."""
    from prefrl.rollout import evaluate_on_task

    result = evaluate_on_task(task, policy, episodes=config.eval_episodes,
                              seed=10_000 + config.seed)
    return {k: result[k] for k in ("mean_return", "std_return", "returns", "mean_speed",
                                   "mean_speed_error") if k in result}


# --------------------------------------------------------------------------- the run


class _Stages:
    """Stage lines ``[  12.3 s] 3/8 fitting reward models`` with elapsed seconds."""

    def __init__(self, total: int, log: Log | None):
        self.total, self.log, self.index = total, log, 0
        self.start = time.perf_counter()
        self.times: dict[str, float] = {}
        self._name: str | None = None
        self._t0 = self.start

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self._name is not None:
            self.times[self._name] = now - self._t0
        self.index += 1
        self._name, self._t0 = name, now
        if self.log:
            self.log(f"[{now - self.start:7.1f} s] {self.index}/{self.total} {name}")

    def done(self) -> float:
        now = time.perf_counter()
        if self._name is not None:
            self.times[self._name] = now - self._t0
        if self.log:
            self.log(f"[{now - self.start:7.1f} s] done")
        return now - self.start


def run_demo(config: DemoConfig, log: Log | None = print) -> dict[str, Any]:
    """Run the whole pipeline; returns the JSON-able results (see the module docstring).

    Writes PPO runs under ``config.out_dir`` (``ppo_partial_return/``,
    ``ppo_regret/``); the command writes ``results.json`` and the plot.
    """
    from prefrl import checkpoints
    from prefrl.envs.tasks import make_task, task_from_header
    from prefrl.learners import ppo
    from prefrl.policies import Policy, policy_fn, random_policy

    stage = _Stages(9 if config.online_labels else 8, log)
    stage("finding experts")
    experts = find_experts(config.experts, config.task)
    header = experts.final_header
    task = task_from_header(header) if "task" in header else make_task(config.task)
    discount = float(header.get("discount", 0.99))
    if log:
        log(f"  {len(experts.checkpoints)} checkpoint(s) in {experts.directory}; "
            f"critic: {experts.final.name} (γ = {discount})")

    stage("collecting behaviour data")
    folder = overshoot_folder(config, experts)
    overshoot = None if folder is None else find_experts(folder, None)
    pool, behaviour = collect_pool(config, task, experts, overshoot)
    if log:
        log("  " + ", ".join(f"{b['policy']}: v={b['mean_speed']:.2f}" for b in behaviour))

    stage("labelling one query set with both oracles")
    value_fn = checkpoints.load_value_fn(experts.final, obs_dim=task.obs_dim)
    dataset, label_stats = label_both(config, pool, value_fn, discount)
    split = split_queries(dataset.num_queries, config.test_fraction, config.valid_fraction,
                          config.seed)
    agreement = float(np.mean(np.asarray(dataset.labels["partial_return"])
                              == np.asarray(dataset.labels["regret"])))

    stage("fitting reward models (partial return, regret)")
    key = jax.random.key(config.seed)
    key_pr, key_regret = jax.random.split(key)
    models = {"partial_return": fit_reward_model(config, dataset, "partial_return", split,
                                                 discount, key_pr),
              "regret": fit_reward_model(config, dataset, "regret", split, discount, key_regret)}
    accuracy = {name: reward_model_accuracy(*fitted, dataset, split["test"])
                for name, fitted in models.items()}

    stage("offline: BC and CPL")
    train_val = subset(dataset, np.sort(np.concatenate([split["train"], split["valid"]])))
    policies = train_offline(config, train_val, discount)

    rows: list[dict[str, Any]] = []
    ppo_curves: dict[str, dict[str, list[float]]] = {}
    for i, name in enumerate(LABELS):
        what = "r̂ (partial return)" if name == "partial_return" else "Â (regret)"
        stage(f"PPO on the learned {what} ({i + 1}/2)")
        result, ppo_config = train_ppo_on(config, task, *models[name], name, log=None)
        apply = ppo.make_policy_apply(ppo_config, task.act_dim)
        policy = policy_fn(Policy(apply, ppo.policy_bundle(result.state)), deterministic=True)
        method = "PPO on learned r̂" if name == "partial_return" else "PPO on learned Â"
        rows.append({"method": method, "labels": name, **evaluate(config, task, policy),
                     "heldout_accuracy": accuracy[name], "train_wall_s": result.wall_s})
        ppo_curves[name] = {
            "env_steps": [float(h["env_steps"]) for h in result.history],
            "true_reward": [float(h["true_reward"]) for h in result.history],
            "proxy_reward": [float(h["proxy_reward"]) for h in result.history],
        }

    if config.online_labels:
        stage(f"online: PPO on r̂ refitted on {config.online_labels} labels of its own segments")
        result = train_online_on(config, task, experts.final)
        apply = ppo.make_policy_apply(result["ppo_config"], task.act_dim)
        policy = policy_fn(Policy(apply, ppo.policy_bundle(result["ppo_state"])),
                           deterministic=True)
        rows.append({"method": "online PPO, refitted r̂",
                     "labels": f"partial_return ({result['labels_used']} online)",
                     **evaluate(config, task, policy),
                     "heldout_accuracy": reward_model_accuracy(
                         result["reward_model"], result["reward_state"], dataset, split["test"]),
                     "train_wall_s": result["wall_s"]})
        ppo_curves["online"] = {
            "env_steps": [float(h["update"] * config.ppo_envs * config.ppo_rollout_steps)
                          for h in result["history"]],
            "true_reward": [float(h["true_reward"]) for h in result["history"]],
            "proxy_reward": [float(h["proxy_reward"]) for h in result["history"]],
        }

    stage("evaluating expert, BC, CPL and random policies")
    expert_policy, _ = checkpoints.load_policy(experts.final, deterministic=True,
                                               obs_dim=task.obs_dim)
    heldout = split["test"]
    reference = [{"method": "expert (PPO, true reward)", "labels": "-",
                  **evaluate(config, task, expert_policy)}]
    network, params = policies["bc"]
    reference.append({"method": "BC", "labels": "-", **evaluate(
        config, task, policy_fn(Policy(network.apply, params), deterministic=True))})
    for label in config.cpl_labels:
        network, params = policies[f"cpl:{label}"]
        rows.append({"method": "CPL-BC" if config.cpl_bc_weight > 0 else "CPL", "labels": label,
                     **evaluate(config, task,
                                policy_fn(Policy(network.apply, params), deterministic=True)),
                     "heldout_accuracy": implicit_accuracy(network, params, dataset, heldout)})
    reference.append({"method": "random", "labels": "-",
                      **evaluate(config, task, random_policy(task.act_dim))})
    wall = stage.done()
    return {
        "task": task.to_header(),
        "config": config_lib.to_dict(config),
        "experts": {"directory": str(experts.directory), "critic": str(experts.final),
                    "checkpoints": [str(p) for p in experts.checkpoints],
                    "overshoot": None if overshoot is None else str(overshoot.directory),
                    "discount": discount},
        "data": {"behaviour": behaviour, "segments": int(dataset.segments.obs.shape[0]),
                 "queries": dataset.num_queries,
                 "split": {k: int(len(v)) for k, v in split.items()},
                 "label_stats": label_stats, "label_agreement": agreement},
        "rows": reference[:1] + reference[1:2] + rows + reference[2:],
        "ppo_curves": ppo_curves,
        "stage_seconds": stage.times,
        "wall_s": wall,
    }


__all__ = [
    "QUICK",
    "DemoConfig",
    "collect_pool",
    "evaluate",
    "fit_reward_model",
    "implicit_accuracy",
    "label_both",
    "quick_config",
    "reward_model_accuracy",
    "run_demo",
    "split_queries",
    "subset",
    "train_offline",
    "train_ppo_on",
]
