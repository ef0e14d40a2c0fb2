# ruff: noqa: I001  (the modules of commit 398efb3 it imports no longer exist)
"""Record the pre-refactor online refit for tests/test_online_core.py's golden test.

Run at commit 398efb3 (``python tests/data/record_online_refit_golden.py``): it imports
that commit's ``prefrl.loops.online_run`` and ``prefrl.data.pool``, since replaced by
``prefrl.loops.online.core``. Kept as the exact recipe of ``online_refit_golden.npz``.
"""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from prefrl.checkpoints import flatten
from prefrl.data.pool import LabelBuffer
from prefrl.learners import reward_model as rm
from prefrl.loops import online_run
from prefrl.loops.online_config import default_reward_config
from prefrl.types import Segments

rng = np.random.default_rng(0)
K, OBS, ACT, N, CAP = 5, 3, 1, 40, 24
reward_config = default_reward_config(hidden=(16,), ensemble_size=2, num_steps=10,
                                      eval_every=10, batch_size=16, chunk_pairs=16)
fit_config = dataclasses.replace(reward_config, normalize=False)
model = rm.model(fit_config)
obs = rng.normal(size=(N, K, OBS)).astype(np.float32)
act = rng.uniform(-1, 1, size=(N, K, ACT)).astype(np.float32)
true_r = (obs[..., 0] - act[..., 0] ** 2).astype(np.float32)
zeros = lambda *shape: np.zeros(shape, np.float32)
pool = Segments(obs=obs, action=act, reward=true_r, next_obs=obs + 0.1,
                mask=np.ones((N, K), np.float32), x_velocity=zeros(N, K),
                qpos=zeros(N, K, 2), qvel=zeros(N, K, 2), source=np.zeros((N, 2), np.int64))
labels = LabelBuffer(CAP, K, OBS, ACT)
first, second = rng.integers(0, N, 14), rng.integers(0, N, 14)
lab = (true_r[first].sum(1) > true_r[second].sum(1)).astype(np.float32)
keep, split = np.ones(14, np.float32), np.zeros(14, np.float32)
keep[3], split[9] = 0, 1
labels.add(pool, first, second, lab, keep, split)
fit_key = jax.random.key(42)
traj_obs = rng.normal(size=(8, 4, OBS)).astype(np.float32)
traj_act = rng.uniform(-1, 1, size=(8, 4, ACT)).astype(np.float32)
initial_fit_steps = 20
out = {}
for round_idx in (0, 1):
    key = jax.random.fold_in(fit_key, round_idx)
    train = jax.tree.map(jnp.asarray, labels.batch(0))
    params = out.get("params_0") if round_idx else None
    repeats = -(-initial_fit_steps // fit_config.num_steps) if params is None else 1
    for i in range(repeats):
        fitted = online_run._fit(jax.random.fold_in(key, i), fit_config, train, params)
        params = fitted.state.params
    state, _ = online_run._standardize(model, fitted.state,
                                       jnp.asarray(traj_obs).reshape(-1, OBS),
                                       jnp.asarray(traj_act).reshape(-1, ACT))
    out[f"params_{round_idx}"] = state.params
    out[f"mean_{round_idx}"], out[f"std_{round_idx}"] = state.reward_mean, state.reward_std
flat = {"traj_obs": traj_obs, "traj_act": traj_act, **labels.state_dict()}
for r in (0, 1):
    flat.update(flatten(jax.device_get(out[f"params_{r}"]), f"params_{r}"))
    flat[f"mean_{r}"], flat[f"std_{r}"] = np.asarray(out[f"mean_{r}"]), np.asarray(out[f"std_{r}"])
np.savez(Path(__file__).with_name("online_refit_golden.npz"), **flat)
