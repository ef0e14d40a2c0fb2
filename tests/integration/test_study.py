"""The half-cheetah path of the 2×2 study on a tiny dataset made here.

Data: a random "trajectory" with half-cheetah shapes whose logged reward is
the target-speed reward of s' (so EPIC's stand-in for r is exact), merged
from two parts, labelled by both oracles with an untrained PPO checkpoint's
critic as V_E (``prefrl label``'s :func:`label_pool`), saved as a dataset
file; then :func:`prefrl.studies.two_by_two.run` and ``experiments/two_by_two.py``.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from prefrl.envs import make_task

from prefrl import checkpoints, preference
from prefrl.data import dataset as dataset_io
from prefrl.data.labelling import LabelConfig, label_pool
from prefrl.data.segments import segment
from prefrl.data.trajectories import concatenate_trajectories
from prefrl.learners import ppo
from prefrl.studies import two_by_two as study
from prefrl.types import Trajectory

GAMMA = 0.99
TINY_PPO = ppo.PPOConfig(policy_hidden=(8,), value_hidden=(8,), discount=GAMMA)
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _trajectory(rng: np.random.Generator, steps: int, envs: int, spec) -> Trajectory:
    obs = rng.normal(size=(steps + 1, envs, spec.obs_dim)).astype(np.float32)
    action = rng.uniform(-1, 1, size=(steps, envs, spec.act_dim)).astype(np.float32)
    next_obs = obs[1:]
    reward = np.asarray(spec.reward(next_obs[..., 8], action), np.float32)
    zeros = np.zeros((steps, envs), bool)
    return Trajectory(obs=obs[:-1], action=action, reward=reward, next_obs=next_obs,
                      terminated=zeros, truncated=zeros, x_velocity=next_obs[..., 8],
                      qpos=rng.normal(size=(steps, envs, 9)).astype(np.float32),
                      qvel=rng.normal(size=(steps, envs, 9)).astype(np.float32))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``(dataset path, expert path)``: 48 segments of 6 steps, 400 queries, both labels."""
    tmp = tmp_path_factory.mktemp("study")
    spec = make_task("target-speed")
    state = ppo.make(TINY_PPO, spec.obs_dim, spec.act_dim, num_updates=1).init(jax.random.key(0))
    expert = checkpoints.save_ppo(tmp / "expert.npz", state, config=TINY_PPO, obs_dim=spec.obs_dim,
                                  act_dim=spec.act_dim, num_updates=1, task=spec.to_header())
    rng = np.random.default_rng(0)
    parts = [_trajectory(rng, 48, envs, spec) for envs in (3, 3)]
    traj = concatenate_trajectories(parts)
    assert traj.obs.shape == (48, 6, spec.obs_dim)
    pool = segment(traj, 6, 6)  # 8 segments per column × 6 columns
    label_cfg = LabelConfig(segment_length=6, stride=6, budget=400, seed=0,
                            oracles=("partial_return", "regret"), regret_discount=GAMMA)
    value_fn = checkpoints.load_value_fn(expert, obs_dim=spec.obs_dim)
    ds, _ = label_pool(label_cfg, pool, value_fn)
    path = dataset_io.save(
        tmp / "data.npz", ds, task=spec.name,
        oracles={"partial_return": {"discount": 1.0}, "regret": {"discount": GAMMA}},
        meta={"task_params": spec.params_dict})
    return path, expert


def _config(files, **kw) -> study.StudyConfig:
    dataset, expert = files
    base = dict(task="half_cheetah", dataset=str(dataset), expert=str(expert), discount=GAMMA,
                seeds=2, num_train=60, num_test=40, hidden=(8,), ensemble_size=1,
                num_steps=10, batch_size=8, eval_every=5, epic_transitions=40,
                bootstrap_reps=20)
    base.update(kw)
    return study.StudyConfig(**base)


def test_concatenate_trajectories_rejects_different_lengths():
    spec = make_task("target-speed")
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="same T"):
        concatenate_trajectories([_trajectory(rng, 5, 2, spec), _trajectory(rng, 6, 2, spec)])
    with pytest.raises(ValueError, match="at least one"):
        concatenate_trajectories([])


def test_half_cheetah_data_reproduces_the_oracles_labels(files):
    data = study.half_cheetah_data(_config(files))
    # Train and test queries use disjoint segments (split_by_segments).
    train_segs = set(np.concatenate(data.train).tolist())
    test_segs = set(np.concatenate(data.test).tolist())
    assert not train_segs & test_segs
    assert data.train[0].shape == (60,) and data.test[0].shape == (40,)
    # The study's A_E = r + γV(s') − V(s) telescopes to the regret oracle's
    # endpoint form Σγ^t r_t + γ^k V(s_k) − V(s_0), so the sign of the score
    # difference must reproduce every regret label (no ties: continuous data).
    for split, (first, second) in (("train", data.train), ("test", data.test)):
        reg = jax.vmap(lambda a: preference.regret_score(a, discount=GAMMA))(
            jnp.asarray(data.advantage))
        pr = jnp.sum(jnp.asarray(data.reward), axis=1)
        for name, score in (("regret", reg), ("partial_return", pr)):
            diff = np.asarray(score[first] - score[second])
            clear = np.abs(diff) > 1e-4  # float32 rounding differs between the two forms
            assert clear.mean() > 0.95
            np.testing.assert_array_equal(data.labels[split][name][clear],
                                          (diff[clear] > 0).astype(np.float32))


def test_discount_must_match_the_critic(files):
    with pytest.raises(ValueError, match="critic's discount 0.99"):
        study.half_cheetah_data(_config(files, discount=0.9))


def test_too_few_queries_is_a_clear_error(files):
    with pytest.raises(ValueError, match="held-out segments"):
        study.half_cheetah_data(_config(files, num_train=60, num_test=10_000))


def test_half_cheetah_study_runs_and_writes_results(files, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("two_by_two", ROOT / "experiments" /
                                                  "two_by_two.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = _config(files)
    out = tmp_path / "result.json"
    argv = ["--task", "half_cheetah", "--dataset", cfg.dataset, "--expert", cfg.expert,
            "--discount", str(GAMMA), "--seeds", "2", "--num-train", "60", "--num-test", "40",
            "--hidden", "8", "--ensemble-size", "1", "--num-steps", "10", "--batch-size", "8",
            "--eval-every", "5", "--epic-transitions", "40", "--bootstrap-reps", "20",
            "--out", str(out), "--markdown", str(tmp_path / "table.md")]
    assert module.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["cells"]) == {f"{a}/{b}" for a in study.LABELS for b in study.ASSUMPTIONS}
    for cell in result["cells"].values():
        for metric in study.METRICS:
            seeds = np.asarray(cell["per_seed"][metric])
            assert seeds.shape == (2,) and np.all(np.isfinite(seeds)), metric
            point, low, high = cell["iqm"][metric]
            assert low <= point <= high
        assert all(0 <= a <= 1 for a in cell["per_seed"]["acc_pr"] + cell["per_seed"]["acc_regret"])
        assert all(-1 <= c <= 1 for c in cell["per_seed"]["pearson_r"])
    table = (tmp_path / "table.md").read_text()
    assert "two_by_two.py" in table and "| regret | regret |" in table
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["task"] == "half_cheetah"
