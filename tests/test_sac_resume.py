"""``prefrl train sac`` (prefrl.loops.sac): exact resume on half-cheetah, run files, bad input.

Tiny sizes: 2 environments, 12-step episodes (episodes end inside chunks, so
the running returns and the truncation bootstrap matter), 16-step chunks,
warm-up inside the first chunk.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from prefrl.envs import make_task

from prefrl import checkpoints
from prefrl.io import read_npz_arrays
from prefrl.learners import sac
from prefrl.loops import sac as training

TINY = sac.SACConfig(hidden=(8,), batch_size=8, buffer_size=64)
TASK = dataclasses.replace(make_task("run"), episode_length=12)


def _env_factory(num_envs, seed):
    from prefrl.rollout import BatchedEnv

    return BatchedEnv(TASK, num_envs=num_envs, seed=seed, num_threads=1, dtype=np.float32)


def _config(out_dir) -> training.SACTrainConfig:
    return training.SACTrainConfig(
        total_steps=96, num_envs=2, warmup_steps=10, log_every=16, eval_every=32,
        eval_episodes=1, checkpoint_every=32, snapshots=(0.5, 1.0), out_dir=str(out_dir),
        progress=False, seed=3)


def _train(out_dir, **kw):
    return training.train(_config(out_dir), TINY, env_factory=_env_factory,
                          task_header=TASK.to_header(), **kw)


def _chunks(path):
    return [json.loads(line)["chunk"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    _train(out)
    return out


def test_killed_and_resumed_run_equals_an_uninterrupted_one_bit_for_bit(uninterrupted,
                                                                          tmp_path):
    out = tmp_path / "killed"
    _train(out, stop_after_chunks=5)  # last.npz at chunk 4; chunk 5 is redone
    assert _chunks(out / "metrics.jsonl") == [1, 2, 3, 4, 5]
    saved = read_npz_arrays(out / "last.npz")
    assert {"env.qpos", "env.qacc_warmstart", "env.rng_state", "eval_env.qpos",
            "tracker.running", "device_state/buffer/data/obs",
            "device_state/learner/target_critic_params/params/Dense_0/kernel"} <= set(saved)
    lines: list[str] = []
    _train(out, log=lines.append)
    assert any("resuming" in line and "chunk 4/6" in line for line in lines)
    for name in ("final.npz", "last.npz", "snapshots/step_000000048.npz"):
        want, got = read_npz_arrays(uninterrupted / name), read_npz_arrays(out / name)
        assert sorted(want) == sorted(got)
        header_want, header_got = (json.loads(h.pop("__header__").tobytes())
                                   for h in (want, got))
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}: {key}")
        for header in (header_want, header_got):
            (header.get("meta") or header)["train_config"].pop("out_dir")
        assert header_got == header_want  # incl. the final evaluation
    # Each chunk once; all but the wall-clock timing equal.
    timed = lambda path: [{k: v for k, v in json.loads(x).items() if k != "chunk_s"}  # noqa: E731
                          for x in path.read_text().splitlines()]
    assert timed(out / "metrics.jsonl") == timed(uninterrupted / "metrics.jsonl")
    assert (out / "evals.jsonl").read_text() == (uninterrupted / "evals.jsonl").read_text()
    assert _chunks(out / "evals.jsonl") == [2, 4, 6]


def test_run_files_learn_and_final_is_a_policy_file(uninterrupted):
    records = [json.loads(x) for x in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    # Warm-up: 10 random steps = 5 control steps of 2 envs; then 2 updates per control step.
    assert records[-1]["updates"] == (96 - 10) // 2 * 2
    assert records[-1]["buffer_size"] == 64  # capacity min(buffer_size, total_steps)
    assert "train_episode_return" in records[1]  # the first 12-step episodes end in chunk 2
    policy, header = checkpoints.read_policy(uninterrupted / "final.npz", obs_dim=17)
    assert header["algo"] == "sac" and header["meta"]["task"] == "run"
    assert header["network"]["activation"] == "relu"
    mean, log_std = policy.apply(policy.params, np.zeros((3, 17), np.float32))
    assert mean.shape == (3, 6) and float(log_std.min()) >= -5.0


def test_a_finished_run_is_not_trained_again(uninterrupted):
    before = (uninterrupted / "final.npz").read_bytes()
    lines: list[str] = []
    result = _train(uninterrupted, log=lines.append)
    assert any("holds a finished run" in line for line in lines)
    assert (uninterrupted / "final.npz").read_bytes() == before
    assert result.history[-1]["chunk"] == 6 and int(result.state.step) == 86


def test_resume_refuses_other_settings(uninterrupted):
    with pytest.raises(ValueError, match="batch_size"):
        training.train(_config(uninterrupted), dataclasses.replace(TINY, batch_size=4),
                       env_factory=_env_factory, task_header=TASK.to_header())


@pytest.mark.parametrize("argv, match", [
    (["--buffer-size", "100", "--batch-size", "256"], "smaller than one batch"),
    (["--target-entropy", "nan"], "expected a finite number"),  # refused by the parser
    (["--target-entropy=-inf"], "expected a finite number"),
    (["--warmup-steps", "2000", "--total-steps", "1000"], "longer than the run"),
    (["--log-every", "1001"], "multiple of num_envs"),
])
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, capsys, argv, match):
    from prefrl.cli import main

    out = tmp_path / "run"
    try:
        code = main(["train", "sac", *argv, "--out-dir", str(out)])
    except SystemExit as exit_:  # argparse's own refusal (a non-finite number)
        code = exit_.code
    assert code == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_learn_step_is_add_then_updates_on_fold_in_batches():
    """The loop's one jitted call per control step equals its plain-Python reading."""
    import jax
    import jax.numpy as jnp

    from prefrl.data.buffers import make_ring_buffer

    steps = training.make_steps(TINY, 3, 2, capacity=16, updates=3)
    state, buffer = steps.init(jax.random.key(0))
    k_obs, k_act = jax.random.split(jax.random.key(1))
    items = sac.Transition(jax.random.normal(k_obs, (4, 3)),
                           jax.random.uniform(k_act, (4, 2), minval=-1, maxval=1),
                           jnp.arange(4.0), jax.random.normal(k_obs, (4, 3)) + 1,
                           jnp.asarray([False, True, False, False]))
    ring = make_ring_buffer(16)
    want_buffer = ring.add(ring.init(jax.tree.map(lambda x: x[0], items)), items)[0]
    want = state
    for j in range(3):
        batch = ring.sample(want_buffer, jax.random.fold_in(jax.random.key(2), j), TINY.batch_size)
        want, _ = steps.learner.update(want, batch)
    got, got_buffer, metrics = steps.learn(state, buffer, items, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(got_buffer.data.obs), np.asarray(want_buffer.data.obs))
    assert int(got.step) == 3 and not bool(metrics["nonfinite"])
    for a, b in zip(jax.tree.leaves(got.actor_params), jax.tree.leaves(want.actor_params),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_train_sac_command_then_eval_end_to_end(tmp_path, capsys):
    from prefrl.cli import main

    out = tmp_path / "run"
    assert main(["train", "sac", "--total-steps", "64", "--num-envs", "2", "--warmup-steps",
                 "32", "--log-every", "32", "--eval-every", "0", "--eval-episodes", "1",
                 "--checkpoint-every", "0", "--hidden", "8", "--batch-size", "8",
                 "--progress", "false", "--out-dir", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["algo"] == "sac" and summary["env_steps"] == 64 and summary["updates"] == 32
    assert {p.name for p in out.iterdir()} >= {"metrics.jsonl", "evals.jsonl", "last.npz",
                                               "final.npz", "snapshots"}
    assert main(["eval", "--checkpoint", summary["checkpoint"], "--episodes", "1"]) == 0
    evaluation = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluation["task"] == "run" and np.isfinite(evaluation["mean_return"])
