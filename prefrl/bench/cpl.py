"""``prefrl bench cpl``: offline preference learning on half-cheetah — BC, filtered BC,
CPL, CPL-BC, contrastive DPO and best-of-n, by true return.

For each task (default ``target-speed`` and ``run``):

1. **Data** (CPL's setting: suboptimal behaviour, an expert's advantage as the
   labeller): roll out the PPO checkpoints from the first quarter of training
   (``max_progress=0.25``: progress ≤ ¼ of the most-trained checkpoint, one
   checkpoint per progress, sampled actions), cut segments of length 64
   (stride 32), draw 8000 uniform query pairs (dense: each segment is in ~8–17
   queries) and label them with the *regret* oracle (critic V_E of the
   most-trained checkpoint, docs/design.md §3) and with the partial-return oracle,
   on the same queries (``prefrl.data.labelling.label_pool``). Or pass
   ``--datasets`` to reuse dataset files.
2. **Methods**, each trained for every seed in one ``jit(vmap)`` call
   (``prefrl.loops.offline``): BC on all segments (π_ref); filtered BC (BC on the
   preferred segment of every regret-labelled query: the CPL paper's %BC
   baseline, which uses the labels without any preference model); CPL on
   regret labels; CPL-BC (BC term on the preferred segments,
   ``bc_data="preferred"``); contrastive DPO against the BC policy; CPL on
   partial-return labels; and best-of-n: n actions from π_ref per state,
   keeping the best under CPL's implicit advantage ``Â(s, a) = α log π_CPL(a|s)``
   (seed-matched); best-of-1 is π_ref's own sampled behaviour.
3. **Evaluation**: true return of one 1000-step episode in ``eval_envs``
   environments per seed (deterministic ``tanh(mean)`` for trained policies;
   best-of-n samples), plus held-out implicit-preference accuracy.

Every method of seed s shares seed s's BC policy: it is the BC result, the
BC pre-training of the CPL runs and DPO's π_ref.

**Defaults, and why** (CPL: Hejna et al. 2023, α = 0.1, λ = 0.5, BC
pre-training, Adam 1e-4, deterministic-mean evaluation):

* ``max_progress=0.25``: with every checkpoint in the data (expert included),
  BC on `target-speed` already matched the expert (−180 vs −190), so nothing
  could beat it; CPL's own datasets hold no expert behaviour either. The same
  rule for both tasks: `target-speed` keeps its 2/5/10/25 % snapshots, `run`
  (whose snapshots start at 10 %) its 10/25 % ones.
* ``bc_steps=5000`` at lr 3e-4 (BC converged before CPL is compared with it);
  ``num_steps=5000`` preference steps at CPL's 1e-4 from that BC policy.
* ``budget=8000`` queries over ~1000–2000 segments: dense comparisons, as in
  CPL's strongest setting.
* ``bc_data="preferred"`` for CPL-BC: tuning (seeds 100–103, never a reported
  seed) on the `target-speed` first-quarter data gave BC −707, CPL-BC with the
  BC term on all segments (2000 steps) −378, on the preferred ones (5000 steps)
  −315, plain CPL (5000 steps) −441 (mean of 4 seeds). On `run` (same data
  rule): BC 5261, filtered BC 5180, CPL-BC 5212 — level.
* ``cpl_discount`` = the regret oracle's γ (0.99): the label is
  ``Σ_t γ^t A(s_t, a_t)``, so CPL's score ``Σ_t γ^t α log π`` uses the same γ.
* ``squash_jacobian=false``: score with the Gaussian density of ``atanh(a)``
  (``prefrl.learners.cpl``, "Which density scores a segment"): the Jacobian
  offset ``α Σ_t J(a_t)`` ranges over 5–48 nats across segments and only
  favours large actions; dropping it raised BC's held-out implicit-preference
  accuracy on ``run`` from 0.75 to 0.80 (all-checkpoint data).
* ``hidden=(64, 64)``, batch 32 (not CPL's 256×256, ~9× slower on 2 CPU cores).
* 5 seeds (0–4), ``eval_envs=8`` episodes per seed.

Result with these defaults (mean ± std over seeds 0–4, 8 episodes each;
``experiments/bench/results/cpl.json``; 1664 s on the 2-core CPU machine,
sharing it with a sweep):

============================  ==============  ===========
method                        target-speed    run
============================  ==============  ===========
BC                            −836 ± 497      5201 ± 662
filtered BC                   −404 ± 247      5368 ± 527
CPL                           −509 ± 112      4889 ± 736
CPL-BC                        −373 ± 91       5088 ± 1138
contrastive DPO               −291 ± 37       2141 ± 970
CPL on partial-return labels  −488 ± 107      3862 ± 2179
best-of-1 (sampled π_ref)     −1400 ± 51      2938 ± 465
best-of-16 under α log π_CPL  −475 ± 30       4752 ± 343
============================  ==============  ===========

On `target-speed` every preference method beats BC on the same data (CPL by
326, CPL-BC by 463; DPO is best) and is far less seed-sensitive. On `run`,
whose two behaviour policies differ little (10 % and 25 % snapshots), no
method beats BC beyond seed noise.

Writes ``experiments/bench/results/cpl.json`` atomically; the last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from prefrl import config as config_lib
from prefrl.io import atomic_write_json
from prefrl.learners import bc, best_of_n, cpl
from prefrl.loops import offline
from prefrl.policies import Policy, policy_fn
from prefrl.rollout import evaluate_on_task


@dataclasses.dataclass(frozen=True)
class CPLBenchConfig:
    """Options of ``prefrl bench cpl``."""

    experts_dir: str = config_lib.field(
        "experiments/experts", "PPO checkpoints: <dir>/<task>/**/*.npz (and <dir>/<task>.npz)"
    )
    tasks: tuple[str, ...] = config_lib.field(("target-speed", "run"), "tasks to run")
    datasets: tuple[str, ...] = config_lib.field(
        (), "reuse datasets instead of collecting: TASK=PATH entries"
    )
    data_dir: str = config_lib.field(
        "experiments/bench/data", "where collected datasets are written"
    )
    out: str = config_lib.field("experiments/bench/results/cpl.json", "results file")
    seeds: tuple[int, ...] = config_lib.field((0, 1, 2, 3, 4), "training seeds per method")
    segment_length: int = config_lib.field(64, "segment length k (CPL: 64)")
    stride: int = config_lib.field(32, "steps between segment starts")
    max_progress: float = config_lib.field(
        0.25, "use checkpoints whose training progress is at most this fraction of the "
        "most-trained one (1 = all; 0.5 = the first half of training, no expert-level data)")
    envs_per_policy: int = config_lib.field(16, "environments rolled out per checkpoint")
    steps_per_policy: int = config_lib.field(1000, "steps per environment per checkpoint")
    budget: int = config_lib.field(8000, "labelled queries")
    regret_discount: float = config_lib.field(0.0, "γ of the regret oracle; 0 = the critic's")
    num_steps: int = config_lib.field(5000, "preference-learning steps (CPL, CPL-BC, DPO)")
    bc_steps: int = config_lib.field(5000, "BC steps (BC alone, and pre-training for CPL/DPO)")
    batch_size: int = config_lib.field(32, "queries (BC: segments) per step")
    learning_rate: float = config_lib.field(3e-4, "Adam learning rate of BC")
    pref_learning_rate: float = config_lib.field(
        1e-4, "Adam learning rate of the preference phase (CPL, CPL-BC, DPO; CPL's 1e-4)")
    hidden: tuple[int, ...] = config_lib.field((64, 64), "policy MLP widths")
    log_every: int = config_lib.field(500, "steps between validation evaluations")
    alpha: float = config_lib.field(0.1, "CPL temperature α")
    bias: float = config_lib.field(0.5, "CPL conservative bias λ")
    cpl_discount: float = config_lib.field(
        0.0, "γ of CPL's score Σ γ^t α log π; 0 = the regret oracle's γ (from the dataset)")
    squash_jacobian: bool = config_lib.field(
        False, "CPL scores with the box density incl. the tanh Jacobian (false: density of "
        "atanh(a); see the module docstring)")
    bc_weight: float = config_lib.field(1.0, "CPL-BC regulariser weight")
    bc_data: str = config_lib.field(
        "preferred", "CPL-BC's BC term: 'preferred' (the preferred segment of each query) "
        "or 'all' (both)")
    beta: float = config_lib.field(0.1, "contrastive DPO temperature β")
    best_of: int = config_lib.field(16, "n of best-of-n")
    eval_envs: int = config_lib.field(8, "evaluation episodes per seed")
    eval_steps: int = config_lib.field(1000, "steps per evaluation episode")
    merge: bool = config_lib.field(
        False, "keep other tasks' results already in --out when their settings match"
    )

    def __post_init__(self) -> None:
        if not self.tasks or not self.seeds:
            raise ValueError("need at least one task and one seed")
        if not 0.0 < self.max_progress <= 1.0:
            raise ValueError(f"max_progress must be in (0, 1], got {self.max_progress}")
        if self.bc_data not in cpl.BC_DATA:
            raise ValueError(f"bc_data must be one of {cpl.BC_DATA}, got {self.bc_data!r}")
        for entry in self.datasets:
            if "=" not in entry:
                raise ValueError(f"--datasets entries are TASK=PATH, got {entry!r}")

    def train_config(self, num_steps: int, bc_pretrain_steps: int,
                     learning_rate: float | None = None) -> offline.TrainConfig:
        return offline.TrainConfig(
            num_steps=num_steps, batch_size=self.batch_size,
            learning_rate=learning_rate or self.learning_rate,
            bc_pretrain_steps=bc_pretrain_steps, log_every=self.log_every,
            validation_fraction=0.1, hidden=tuple(self.hidden), state_dependent_std=True)


# ---------------------------------------------------------------- data


def find_checkpoints(experts_dir: str, task: str) -> list[str]:
    """Every PPO checkpoint for ``task``: ``<dir>/<task>/**/*.npz`` plus ``<dir>/<task>.npz``."""
    paths = sorted(glob.glob(os.path.join(experts_dir, task, "**", "*.npz"), recursive=True))
    single = os.path.join(experts_dir, f"{task}.npz")
    if os.path.exists(single):
        paths.append(single)
    return paths


def _progress(header: dict[str, Any]) -> float:
    progress = header.get("progress") or {}
    return float(progress.get("env_steps", progress.get("update", 0)) or 0)


def collect_dataset(config: CPLBenchConfig, task: str, path: Path) -> dict[str, Any]:
    """Roll out every checkpoint, segment, label (regret + partial return); save to ``path``."""
    from prefrl import checkpoints
    from prefrl.data import dataset as dataset_io
    from prefrl.data.labelling import LabelConfig, label_pool
    from prefrl.data.segments import segment
    from prefrl.envs.tasks import make_task, task_from_header
    from prefrl.rollout import BatchedEnv

    paths = find_checkpoints(config.experts_dir, task)
    if not paths:
        raise FileNotFoundError(
            f"no PPO checkpoints for task {task!r} under {config.experts_dir}/{task}/ "
            f"(or {config.experts_dir}/{task}.npz); pass --experts-dir or --datasets"
        )
    headers = [checkpoints.load_ppo(p)[1] for p in paths]
    # One checkpoint per training progress: final/last copies of the same policy would
    # otherwise over-weight the expert in the "mixed-quality" data.
    unique: dict[float, int] = {}
    for i, header in enumerate(headers):
        unique.setdefault(_progress(header), i)
    paths = [paths[i] for i in sorted(unique.values())]
    headers = [headers[i] for i in sorted(unique.values())]
    top_i = int(np.argmax([_progress(h) for h in headers]))
    critic, critic_header = paths[top_i], headers[top_i]
    # The critic (V_E of the most-trained checkpoint) labels; the behaviour data may
    # stop earlier in training (``max_progress``), as in CPL's suboptimal datasets.
    top = _progress(critic_header)
    keep = [i for i, h in enumerate(headers) if _progress(h) <= config.max_progress * top]
    if not keep:
        raise ValueError(f"max_progress={config.max_progress} leaves no checkpoint of {task!r}")
    paths, headers = [paths[i] for i in keep], [headers[i] for i in keep]
    spec = task_from_header(headers[0]) if "task" in headers[0] else make_task(task)
    pools, sources = [], []
    for i, (p, header) in enumerate(zip(paths, headers, strict=True)):
        policy_fn, _ = checkpoints.load_policy(p, deterministic=False)
        with BatchedEnv(spec, config.envs_per_policy, seed=10_000 + i) as env:
            traj = env.rollout(policy_fn, config.steps_per_policy, jax.random.key(10_000 + i))
        pool = segment(traj, config.segment_length, config.stride)
        pools.append(pool)
        returns = np.asarray(traj.reward).sum(0)
        sources.append({"checkpoint": p, "progress": _progress(header),
                        "segments": int(pool.obs.shape[0]),
                        "mean_step_reward": float(np.asarray(traj.reward).mean()),
                        "mean_return_over_steps": float(returns.mean())})
    pool = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *pools)
    discount = config.regret_discount or float(
        critic_header.get("discount", 0.99))
    label_config = LabelConfig(
        segment_length=config.segment_length, stride=config.stride, budget=config.budget,
        seed=0, oracles=("partial_return", "regret"), regret_discount=discount)
    dataset, stats = label_pool(label_config, pool, checkpoints.load_value_fn(critic))
    dataset_io.save(path, dataset, task=spec.name,
                    oracles={n: config_lib.to_dict(label_config.oracle(n))
                             for n in label_config.oracles},
                    seeds={"seed": 0},
                    meta={"task_params": spec.params_dict, "expert": critic,
                          "checkpoints": sources, "bench": "cpl"})
    return {"checkpoints": sources, "critic": critic, "regret_discount": discount,
            "label_stats": stats}


# ---------------------------------------------------------------- methods


implicit_advantage = cpl.implicit_advantage


def preferred_segments(dataset: Any, label_name: str) -> Any:
    """A BC dataset of the segments each query prefers (ties: both), one copy per win.

    The CPL paper's filtered-BC baseline ("%BC") from pairwise labels: behaviour
    cloning restricted to the preferred side of every comparison. Its queries are
    placeholders (BC reads segments only).
    """
    from prefrl.types import PreferenceDataset

    label = np.asarray(dataset.labels[label_name])
    mask = np.asarray((getattr(dataset, "label_mask", None) or {}).get(
        label_name, np.ones(label.shape, bool)), bool)
    first, second = np.asarray(dataset.first), np.asarray(dataset.second)
    winners = np.concatenate([first[mask & (label >= 0.5)], second[mask & (label <= 0.5)]])
    if winners.size < 2:
        raise ValueError(f"label {label_name!r} prefers fewer than 2 segments")
    segments = jax.tree.map(lambda x: np.asarray(x)[winners], dataset.segments)
    n = winners.size
    idx = np.arange(n)
    return PreferenceDataset(segments=segments, first=idx, second=(idx + 1) % n,
                             labels={label_name: np.ones(n, np.float32)},
                             label_mask={label_name: np.ones(n, bool)})


def _evaluate(spec: Any, policy: Any, config: CPLBenchConfig, seed: int) -> float:
    result = evaluate_on_task(spec, policy, episodes=config.eval_envs, seed=5000 + seed,
                              num_steps=config.eval_steps)
    return result["mean_return"]


def _summary(returns: list[float]) -> dict[str, Any]:
    arr = np.asarray(returns, np.float64)
    return {"returns": [float(x) for x in arr], "mean": float(arr.mean()),
            "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def run_task(config: CPLBenchConfig, task: str, dataset_path: Path) -> dict[str, Any]:
    from prefrl.data import dataset as dataset_io
    from prefrl.envs.tasks import make_task

    dataset, header = dataset_io.load(dataset_path)
    spec = make_task(header["task"], **(header.get("meta", {}).get("task_params") or {}))
    seeds = list(config.seeds)
    out: dict[str, Any] = {"dataset": str(dataset_path), "task": spec.to_header(),
                           "segments": int(dataset.segments.obs.shape[0]),
                           "queries": int(dataset.first.shape[0]), "methods": {}}
    pr, rg = (np.asarray(dataset.labels[n]) for n in ("partial_return", "regret"))
    out["label_agreement_regret_vs_partial_return"] = float(np.mean(pr == rg))
    seg_return = np.asarray(dataset.segments.reward).sum(-1)
    out["segment_return_mean"] = float(seg_return.mean())
    out["segment_return_max"] = float(seg_return.max())

    def evaluate_seeds(result: offline.OfflineResult) -> list[float]:
        policies = [Policy(result.network.apply, offline.select_seed(result.params, i))
                    for i in range(len(seeds))]
        return [_evaluate(spec, policy_fn(p, deterministic=True), config, s)
                for p, s in zip(policies, seeds, strict=True)]

    def run_method(name: str, algo: str, learner_config: Any, label: str, steps: int,
                   pretrain: int, data: Any = None, **kw: Any) -> offline.OfflineResult:
        start = time.perf_counter()
        lr = config.learning_rate if algo == "bc" else config.pref_learning_rate
        result = offline.train(algo, dataset if data is None else data, label_name=label,
                               config=config.train_config(steps, pretrain, lr),
                               learner_config=learner_config, seeds=seeds, **kw)
        seconds = time.perf_counter() - start
        phase = "pref" if "pref" in result.history else "bc"
        out["methods"][name] = {
            **_summary(evaluate_seeds(result)), "label": label,
            "val_accuracy": ([float(v) for v in result.history[phase]["val_accuracy"][:, -1]]
                             if data is None else None),
            "train_seconds": round(seconds, 1)}
        print(json.dumps({"task": task, "method": name, **out["methods"][name]}), flush=True)
        return result

    # CPL's score uses the regret oracle's discount: the label is Σ γ^t A(s_t, a_t).
    oracle_discount = float(((header.get("oracles") or {}).get("regret") or {})
                            .get("discount", 1.0))
    cpl_discount = config.cpl_discount or oracle_discount
    out["cpl_discount"] = cpl_discount
    cpl_config = cpl.CPLConfig(alpha=config.alpha, bias=config.bias, discount=cpl_discount,
                               squash_jacobian=config.squash_jacobian)
    bc_result = run_method("bc", "bc", bc.BCConfig(), "regret", config.bc_steps, 0)
    # Filtered BC: the same BC, on the preferred side of every regret-labelled query.
    run_method("filtered_bc", "bc", bc.BCConfig(), "regret", config.bc_steps, 0,
               data=preferred_segments(dataset, "regret"))
    # Every method of seed s starts from (CPL: BC pre-training) or refers to (DPO: π_ref)
    # seed s's BC policy, so the BC phase is trained once and shared.
    from_bc = {"init_params": bc_result.params, "per_seed_params": True}
    cpl_result = run_method("cpl", "cpl", cpl_config, "regret", config.num_steps, 0, **from_bc)
    run_method("cpl_bc", "cpl_bc", dataclasses.replace(cpl_config, bc_weight=config.bc_weight,
                                                       bc_data=config.bc_data),
               "regret", config.num_steps, 0, **from_bc)
    run_method("dpo", "dpo", cpl.DPOConfig(beta=config.beta, discount=cpl_discount), "regret",
               config.num_steps, 0,
               ref_params=bc_result.params, per_seed_params=True)
    run_method("cpl_partial_return", "cpl", cpl_config, "partial_return", config.num_steps, 0,
               **from_bc)

    # Best-of-n from π_ref (BC) under CPL's implicit advantage Â = α log π_CPL (same seed);
    # n = 1 is π_ref's own stochastic behaviour, the baseline best-of-n improves on.
    network = cpl_result.network
    for n in sorted({1, config.best_of}):
        returns = []
        for i, s in enumerate(seeds):
            score_fn = implicit_advantage(network, offline.select_seed(cpl_result.params, i),
                                          config.alpha, config.squash_jacobian)
            policy = jax.jit(best_of_n.make_policy_fn(
                bc_result.network, offline.select_seed(bc_result.params, i), score_fn, n))
            returns.append(_evaluate(spec, policy, config, s))
        name = f"best_of_{n}"
        out["methods"][name] = {
            **_summary(returns), "label": "regret", "reference": "bc",
            "score": "alpha * log pi_CPL(a|s), CPL's implicit advantage"}
        if n == 1:
            out["methods"][name]["note"] = "sampled pi_ref (BC) actions; score unused"
        print(json.dumps({"task": task, "method": name, **out["methods"][name]}), flush=True)
    return out


_PER_RUN_FIELDS = ("tasks", "datasets", "merge", "out")


def _merge(config: CPLBenchConfig, results: dict[str, Any]) -> dict[str, Any]:
    """Add the tasks of an earlier run in ``config.out`` that this run did not redo.

    Only when every setting except the task list agrees, so one file never
    mixes methods trained differently; each task keeps its own ``seconds``.
    """
    path = Path(config.out)
    if not path.exists():
        return results
    old = json.loads(path.read_text())
    mine = {k: v for k, v in results["config"].items() if k not in _PER_RUN_FIELDS}
    theirs = {k: v for k, v in old.get("config", {}).items() if k not in _PER_RUN_FIELDS}
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ValueError(f"--merge: {path} was made with different settings {diff}")
    for task, value in old.get("tasks", {}).items():
        if task not in results["tasks"]:
            value.setdefault("seconds", old.get("seconds"))
            results["tasks"][task] = value
    results["merged_runs"] = old.get("merged_runs", 1) + 1
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefrl bench cpl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config_lib.add_dataclass_args(parser, CPLBenchConfig)
    config = config_lib.from_args(CPLBenchConfig, parser.parse_args(argv))
    given = dict(entry.split("=", 1) for entry in config.datasets)
    start = time.perf_counter()
    results: dict[str, Any] = {"bench": "cpl", "config": config_lib.to_dict(config),
                               "device": jax.devices()[0].platform, "tasks": {}}
    for task in config.tasks:
        if task in given:
            path, collection = Path(given[task]), {"reused": True}
        else:
            path = Path(config.data_dir) / f"cpl_{task}.npz"
            collection = collect_dataset(config, task, path)
        task_start = time.perf_counter()
        results["tasks"][task] = {"collection": collection, **run_task(config, task, path),
                                  "seconds": round(time.perf_counter() - task_start, 1)}
    results["seconds"] = round(time.perf_counter() - start, 1)
    if config.merge:
        results = _merge(config, results)
    atomic_write_json(config.out, results)
    final = {"bench": "cpl", "out": config.out,
             "mean_return": {t: {m: round(v["mean"], 1) for m, v in r["methods"].items()}
                             for t, r in results["tasks"].items()},
             "seconds": results["seconds"]}
    print(json.dumps(final))
    return 0
