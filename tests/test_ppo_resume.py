"""Exact resume of PPO training (prefrl.loops.ppo + prefrl.loops.resume) on half-cheetah.

Tiny sizes: 2 environments, 12-step episodes (so episodes end inside
rollouts and the running returns matter), 8 steps per update, 5 updates.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from prefrl.envs import make_task

from prefrl.io import read_npz_arrays
from prefrl.learners import ppo
from prefrl.loops import ppo as training
from prefrl.loops import resume

TINY = ppo.PPOConfig(num_epochs=1, num_minibatches=1, policy_hidden=(8,), value_hidden=(8,))
TASK = dataclasses.replace(make_task("run"), episode_length=12)


def _env_factory(num_envs, seed):
    from prefrl.rollout import BatchedEnv

    return BatchedEnv(TASK, num_envs=num_envs, seed=seed, num_threads=1, dtype=np.float32)


def _config(out_dir) -> training.TrainConfig:
    return training.TrainConfig(task="run", total_steps=2 * 8 * 5, num_envs=2, rollout_steps=8,
                                eval_every=2, eval_episodes=1, checkpoint_every=2,
                                snapshots=(1.0,), out_dir=str(out_dir), progress=False, seed=3)


def _train(out_dir, **kw):
    return training.train(_config(out_dir), TINY, env_factory=_env_factory,
                          task_header=TASK.to_header(), **kw)


def _updates(path):
    return [json.loads(line)["update"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    _train(out)
    return out


def test_stopped_and_resumed_run_equals_an_uninterrupted_one_bit_for_bit(uninterrupted,
                                                                           tmp_path):
    out = tmp_path / "stopped"
    _train(out, stop_after_updates=3)  # last.npz at update 2; update 3 is redone
    assert _updates(out / "metrics.jsonl") == [1, 2, 3]
    saved = read_npz_arrays(out / "last.npz")
    assert {"env.qpos", "env.qacc_warmstart", "env.rng_state", "eval_env.qpos",
            "tracker.running"} <= set(saved)
    lines: list[str] = []
    _train(out, log=lines.append)
    assert any("resuming" in line and "update 2/5" in line for line in lines)
    want, got = read_npz_arrays(uninterrupted / "final.npz"), read_npz_arrays(out / "final.npz")
    assert sorted(want) == sorted(got)
    header_want, header_got = (json.loads(h.pop("__header__").tobytes()) for h in (want, got))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    del header_want["train_config"]["out_dir"], header_got["train_config"]["out_dir"]
    assert header_got == header_want  # incl. the final evaluation
    # The logs hold each update once: the redone update 3 replaced the first one.
    assert _updates(out / "metrics.jsonl") == [1, 2, 3, 4, 5]
    assert _updates(out / "evals.jsonl") == [2, 4, 5]
    assert (out / "metrics.jsonl").read_text() == _strip_timing(uninterrupted, out)


def _strip_timing(a, b):
    """``b``'s metrics.jsonl with ``a``'s wall-clock timings (all else must already match)."""
    timed = ("rollout_s", "update_s")
    lines_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    lines_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(lines_a, lines_b, strict=True):
        assert {k: v for k, v in ra.items() if k not in timed} == {
            k: v for k, v in rb.items() if k not in timed}
    return (b / "metrics.jsonl").read_text()


def test_a_finished_run_is_not_trained_again(uninterrupted):
    before = (uninterrupted / "final.npz").read_bytes()
    evals = (uninterrupted / "evals.jsonl").read_text()
    lines: list[str] = []
    result = _train(uninterrupted, log=lines.append)
    assert any("holds a finished run" in line for line in lines)
    assert (uninterrupted / "final.npz").read_bytes() == before
    assert (uninterrupted / "evals.jsonl").read_text() == evals
    assert result.evaluations[-1]["update"] == 5 and result.history[-1]["update"] == 5


def test_truncate_jsonl_keeps_lines_up_to_the_update_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"update": 1}\n{"update": 2}\n{"update": 3}\n{"upd')
    resume.truncate_jsonl(path, 2)
    assert _updates(path) == [1, 2]


def test_device_state_round_trip_and_refusals(tmp_path):
    """The MJX loops' whole-state arrays: exact round trip (keys too), named refusals."""
    from prefrl.io import FileFormatError, load_npz, save_npz

    state = {"key": jax.random.key(3), "x": jnp.arange(6, dtype=jnp.float32).reshape(2, 3),
             "n": jnp.asarray([1, 2], jnp.int32), "none": None}
    save_npz(tmp_path / "s.npz", resume.device_state_arrays(state),
             {"kind": "test", "schema_version": 1})
    arrays, _ = load_npz(tmp_path / "s.npz", kind="test")
    back = resume.restore_device_state(state, arrays, "s.npz")
    np.testing.assert_array_equal(jax.random.key_data(back["key"]),
                                  jax.random.key_data(state["key"]))
    np.testing.assert_array_equal(back["x"], state["x"])
    assert back["n"].dtype == jnp.int32 and back["none"] is None
    with pytest.raises(FileFormatError, match=r"device_state/x.*dtype float64"):
        resume.restore_device_state(state, {**arrays, "device_state/x": np.zeros((2, 3))}, "s")
    with pytest.raises(FileFormatError, match=r"device_state/x.*shape"):
        resume.restore_device_state(state, {**arrays, "device_state/x": np.zeros(
            (3, 3), np.float32)}, "s")
    with pytest.raises(FileFormatError, match="missing array 'device_state/n'"):
        resume.restore_device_state(state, {k: v for k, v in arrays.items()
                                            if k != "device_state/n"}, "s")
