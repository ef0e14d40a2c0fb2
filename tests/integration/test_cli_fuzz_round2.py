"""The second fuzz round (issue 26): every case of ``fuzz_round2/cases.tsv``, by class.

``fuzz_round2/`` holds the 76 malformed inputs that did not get a clear error
at commit adea3fc (``cases.tsv``: each case's command) and the scripts that
craft them (``mkfix.py``, ``mkfix2.py``, unchanged). The fixture builds small
base files (a trajectory, a dataset, a policy, a reward model; the shipped
``run`` expert as the PPO checkpoint) without training, runs both scripts on
them, and every case's command then goes through ``prefrl.cli.main`` in this
process. Each case must end with its exit status, a message naming its
problem, no traceback and nothing written under its output folder, or be
accepted for the reason written in :data:`ACCEPTED`.

The classes: headers by schema (:mod:`prefrl.schema`), sizes from the ``.npy``
headers before any allocation, arrays checked for meaning (dtypes, the action
box, finite statistics, header against arrays), options checked where parsed,
a sweep's inputs checked before it starts, report's records and replicates,
one exit-status rule, and OS errors that name their path.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from labelling_data import write_tiny_trajectory

from prefrl import cli
from prefrl import io as prefrl_io

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "fuzz_round2"
CASES = {row["id"]: row for row in csv.DictReader(open(HERE / "cases.tsv", encoding="utf-8"),
                                                  delimiter="\t")}

# id -> (exit status, substrings of stderr). One entry per class member.
EXPECTED: dict[str, tuple[int, tuple[str, ...]]] = {
    # -- headers checked by schema: types, ranges, finite, known task and parameters
    "label_traj_header_list": (1, ("traj_header_list.npz: header is not a JSON object",)),
    "label_traj_header_null": (1, ("header is not a JSON object (found null)",)),
    "label_traj_header_str_steps": (1, ("header field 'num_steps': expected an integer",)),
    "label_expert_obsdim_null": (1, ("ck_obsdim_null.npz: header field 'obs_dim'",)),
    "label_expert_discount_nan": (1, ("header field 'discount': expected a finite number",)),
    "fit_data_header_list": (1, ("data_header_list.npz: header is not a JSON object",)),
    "fit_data_task_fly": (1, ("header field 'task': unknown task 'fly'",)),
    "fit_init_rm_header_null": (1, ("rm_header_null.npz: header is not a JSON object",)),
    "fit_init_rm_seglen_neg": (1, ("header field 'segment_length': must be >= 1",)),
    "fit_data_tp_nan": (1, ("'meta.task_params.target_speed': expected a finite number",)),
    "eval_ck_obsdim_null": (1, ("header field 'obs_dim': must not be null",)),
    "eval_ck_actdim_str": (1, ("header field 'act_dim': expected an integer",)),
    "eval_ck_task_lie": (1, ("'train_config.task'", "'run'")),
    "dpo_reference_pol_std0": (1, ("header field 'network.obs_std[0]': must be > 0",)),
    "eval_pol_std0": (1, ("header field 'network.obs_std[0]': must be > 0",)),
    "eval_pol_mean_nan": (1, ("'network.obs_mean[0]': expected a finite number",)),
    "sweep_set_ds_task_fly": (1, ("[tasks.run] dataset", "unknown task 'fly'")),
    "sweep_set_ds_header_list": (1, ("[tasks.run] dataset", "header is not a JSON object")),
    # -- sizes from the .npy headers, before any allocation
    "label_traj_huge_hdr": (1, ("'obs' claims shape (1000000000000, 4, 17)",)),
    "label_traj_big_hdr": (1, ("'obs' claims shape (200000, 4, 17000)",)),
    "fit_data_huge_hdr": (1, ("'segments.obs' claims shape (1000000000000, 10, 17)",)),
    "eval_ck_huge_hdr": (1, ("claims shape (10000000000000,)", "corrupt or forged header")),
    "sweep_set_ds_huge": (1, ("[tasks.run] dataset", "claims shape (1000000000000, 10, 17)")),
    # -- arrays checked for meaning
    "label_traj_action_big": (1, ("traj_action_big.npz: action holds", "action box [-1, 1]")),
    "cpl_data_action_big": (1, ("segments.action holds", "action box [-1, 1]")),
    "bc_data_action_big": (1, ("segments.action holds", "action box [-1, 1]")),
    "fit_data_int_obs": (1, ("segments.obs must hold real floating-point", "int32")),
    "fit_data_complex_obs": (1, ("segments.obs must hold real floating-point", "complex64")),
    "fit_data_bool_obs": (1, ("segments.obs must hold real floating-point", "dtype bool")),
    "cpl_data_complex": (1, ("segments.obs must hold real floating-point", "complex64")),
    "sweep_set_ds_int_obs": (1, ("[tasks.run] dataset", "got dtype int32")),
    "cpl_data_big_obs": (1, ("segments.obs holds 3e+38",)),
    "fit_data_mask_weird": (1, ("segments.mask holds -3",)),
    "cpl_data_mask_weird": (1, ("segments.mask holds -3",)),
    "sweep_set_ds_mask": (1, ("[tasks.run] dataset", "segments.mask holds -3")),
    "label_expert_nan_obsstats": (1, ("ck_nan_obsstats.npz: array", "obs_stats", "NaN or inf")),
    "eval_ck_nan_obsstats": (1, ("obs_stats", "NaN or inf")),
    "collect_ck_nan_obsstats": (1, ("obs_stats", "NaN or inf")),
    "ppo_init_ck_nan_obsstats": (1, ("obs_stats", "NaN or inf")),
    "fitsf_library_nan_obsstats": (1, ("library policy", "obs_stats", "NaN or inf")),
    "eval_ck_negvar_obsstats": (1, ("obs_stats", "negative variance")),
    "eval_pol_nan": (1, ("pol_nan.npz: array 'params/", "NaN or inf")),
    "collect_pol_nan": (1, ("pol_nan.npz: array 'params/", "NaN or inf")),
    "cpl_init_policy_nan": (1, ("pol_nan.npz: array 'params/", "NaN or inf")),
    "eval_pol_hidden_lie": (1, ("network sizes do not match the header", "hidden [64, 64]")),
    "cpl_init_policy_hidden_lie": (1, ("network sizes do not match the header",)),
    "ppo_reference_hidden_lie": (1, ("network sizes do not match the header",)),
    "eval_pol_obsstats_short": (1, ("'network.obs_mean' has 5 entries", "size 17")),
    "ppo_rm_stdneg": (1, ("'reward_std' is -1", "must be > 0")),
    "ppo_rm_mean_vec": (1, ("'reward_mean' has shape (5,), expected ()",)),
    "resume_ppo_hdr_lie": (1, ("last.npz", "the header does not describe these arrays")),
    # -- options checked where they are parsed (exit status 2)
    "label_seed_huge": (2, ("--seed: a seed must be an integer in [0, 2147483647]",)),
    "eval_seed_huge": (2, ("--seed: a seed must be an integer in [0, 2147483647]",)),
    "collect_seed_huge": (2, ("--seed: a seed must be an integer in [0, 2147483647]",)),
    "ppo_init_log_std_inf": (2, ("--init-log-std: expected a finite number, got 'inf'",)),
    "collect_tp_dup": (2, ("target_speed=1 and 'target_speed=3' contradict",)),
    "collect_tp_conflict": (2, ("--target-speed 1 and --task-param target_speed=3 contradict",)),
    "collect_tp_ctrl_neg": (2, ("'ctrl_cost_weight' must be >= 0",)),
    "online_budget1": (2, ("--label-budget 1: round 0 would get 0 label(s)",)),
    "bench_label_queries0": (2, ("--queries: must be an integer >= 1, got 0",)),
    "bench_label_length_neg": (2, ("--length: must be an integer >= 1, got -5",)),
    "bench_reward_obs0": (2, ("--obs: must be an integer >= 1, got 0",)),
    # -- a sweep checks what its cells will read before any cell runs
    "sweep_budget1": (2, ("label_budget 1 is too small",)),
    "sweep_budget_huge": (2, ("label_budget 5000 exceeds the", "distinct pairs")),
    "sweep_binary_toml": (2, ("binary.toml: not a text (UTF-8) file",)),
    "sweep_set_expert_dataset": (1, ("[tasks.run] expert", "expected a 'ppo_checkpoint' file")),
    "sweep_set_expert_ts": (1, ("[tasks.run] expert", "critic of task 'target-speed'")),
    "sweep_resume_other_sweep": (2, ("holds the results of another sweep",
                                     "segment_length (10 there, 1 here)")),
    "sweep_ray_bogus": (2, ("--ray bogus:1234: no Ray cluster answers there",)),
    # -- report: typed records, bounded replicates, before anything is written
    "report_bad_metrics": (1, ("no valid run records", "field 'metrics' must be an object")),
    "report_reps_huge": (2, ("--bootstrap-reps must be >= 100 and <=",)),
    # -- one exit-status rule: an unusable input file is 1 whichever command reads it
    "fitsf_library_dataset": (1, ("library policy", "expected a 'ppo_checkpoint' file")),
    "fitsf_library_trunc": (1, ("library policy", "not a readable .npz file")),
    # -- OS errors name the path (a full disk, simulated)
    "collect_out_full_disk": (1, ("No space left on device", "t.npz")),
}

# Same class as a case above, whose run stands for it (running this one would train).
SAME_CLASS = {
    "fit_out_full_disk": (
        "collect_out_full_disk", "a full disk at the atomic write of the output: prefrl.io names "
        "the path for every writer (test_os_errors_name_the_path checks atomic_write_bytes)"),
}

# Accepted on purpose: id -> the reason (checked by test_accepted_cases_are_accepted).
ACCEPTED = {
    "cpl_data_action_pm1": (
        "actions of exactly ±1 lie on the action box [-1, 1] (the environment clips to it, so "
        "clipped data has them); log π pulls them inside by prefrl.networks.ACTION_EPS"),
}

# Cheaper stand-ins for the two full-disk cases (same class: the write fails with ENOSPC).
SMALLER = {"collect_out_full_disk": {"16": "2", "1000": "5"}}


def test_every_case_is_classified():
    assert len(CASES) == 76
    assert set(EXPECTED) | set(ACCEPTED) | set(SAME_CLASS) == set(CASES)
    assert not set(EXPECTED) & set(ACCEPTED) and not set(SAME_CLASS) & (set(EXPECTED)
                                                                        | set(ACCEPTED))
    assert all(twin in EXPECTED for twin, _ in SAME_CLASS.values())


# --------------------------------------------------------------------------- the inputs


def _dataset_file(path: Path) -> None:
    """80 segments of 10 steps, 200 queries labelled by two oracles (as ``prefrl label``)."""
    from prefrl.data import dataset as ds
    from prefrl.types import PreferenceDataset, Segments

    rng = np.random.default_rng(0)
    n, k = 80, 10
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    obs = f32(n, k + 1, 17)
    segments = Segments(obs=obs[:, :-1], action=np.tanh(f32(n, k, 6)), reward=f32(n, k),
                        next_obs=obs[:, 1:], mask=np.ones((n, k), np.float32),
                        x_velocity=f32(n, k), qpos=f32(n, k, 9), qvel=f32(n, k, 9),
                        source=np.stack([np.arange(n), np.zeros(n, int)], 1).astype(np.int32))
    first = rng.integers(0, n, 200).astype(np.int32)
    second = ((first + rng.integers(1, n, 200)) % n).astype(np.int32)
    labels = {m: rng.choice([0.0, 0.5, 1.0], 200).astype(np.float32)
              for m in ("partial_return", "regret")}
    data = PreferenceDataset(segments, first, second, labels,
                             {m: np.ones(200, bool) for m in labels})
    ds.save(path, data, task="run", oracles={"partial_return": {"discount": 1.0},
                                             "regret": {"model": "regret", "discount": 0.99}},
            meta={"task_params": {"ctrl_cost_weight": 0.1, "forward_reward_weight": 1.0}})


def _policy_and_reward_model(fz: Path) -> None:
    """A CPL policy (hidden [8]) and a 3-member reward model, written without JAX (fast)."""
    from prefrl import config as config_lib
    from prefrl.learners import reward_model as rm

    rng = np.random.default_rng(1)
    f32 = lambda *s: (0.1 * rng.normal(size=s)).astype(np.float32)  # noqa: E731
    policy = {"params/params/policy/Dense_0/kernel": f32(17, 8),
              "params/params/policy/Dense_0/bias": f32(8),
              "params/params/policy/Dense_1/kernel": f32(8, 6),
              "params/params/policy/Dense_1/bias": f32(6),
              "params/params/policy/Dense_2/kernel": f32(8, 6),
              "params/params/policy/Dense_2/bias": f32(6)}
    prefrl_io.save_npz(fz / "cpl.npz", policy, {
        "kind": "policy", "schema_version": 1, "algo": "cpl", "meta": {"task": "run"},
        "network": {"type": "NormalizedGaussianPolicy", "action_dim": 6, "hidden": [8],
                    "state_dependent_std": True, "obs_mean": [0.0] * 17, "obs_std": [1.0] * 17,
                    "activation": "tanh"}})
    model = {"params/params/Dense_0/kernel": f32(3, 23, 8), "params/params/Dense_0/bias": f32(3, 8),
             "params/params/Dense_1/kernel": f32(3, 8, 1), "params/params/Dense_1/bias": f32(3, 1),
             "reward_mean": np.float32(0.0), "reward_std": np.float32(1.0)}
    prefrl_io.save_npz(fz / "rm.npz", model, {
        "kind": "reward_model", "schema_version": 1, "network": "MLP", "obs_dim": 17,
        "act_dim": 6, "segment_length": 10, "extra": {},
        "config": config_lib.to_dict(rm.RewardModelConfig(hidden=(8,), ensemble_size=3))})


SWEEP = """name = "t"
seeds = [0]

[grid]
task = ["run"]
label_model = ["partial_return"]
learner = ["rm_pr"]
beta = [0.0]
epsilon = [0.0]
label_budget = [{budget}]
segment_length = [{length}]

[tasks.run]
dataset = "../data.npz"
expert = "../../../experiments/experts/run/final.npz"

[settings]
reward_hidden = [8]
reward_steps = 20
heldout_queries = 16
"""


def _sweep_inputs(root: Path) -> None:
    from prefrl.sweeps import execute
    from prefrl.sweeps import spec as spec_lib
    from prefrl.sweeps import store as store_lib

    sw = root / "fz" / "in" / "sw"
    sw.mkdir()
    for name, budget, length in (("ok", 32, 10), ("budget1", 1, 10), ("budget_huge", 5000, 10),
                                 ("seglen1", 32, 1)):
        (sw / f"{name}.toml").write_text(SWEEP.format(budget=budget, length=length))
    (sw / "binary.toml").write_bytes(b"\xff\xfe\x00garbage")
    # A finished sweep of ok.toml (one record, as a cell would leave it), without training.
    spec = spec_lib.load_sweep(sw / "ok.toml")
    out = root / "fz" / "in" / "sw_ok_out"
    store = store_lib.ResultStore(out)
    record = store_lib.make_record(spec.cells()[0], 0, 1.0, {"heldout_accuracy/partial_return":
                                                             0.6}, wall_time_s=1.0,
                                   group_size=1, sweep_name="t")
    store.write(record)
    execute._write_manifest(spec, store, 1.0)
    bad = root / "fz" / "in" / "rep_badmetrics"
    shutil.copytree(out, bad)
    path = next((bad / "runs").glob("*.json"))
    forged = json.loads(path.read_text())
    forged["metrics"] = "oops"
    forged["checksum"] = store_lib._checksum(forged)  # a well-formed record of the wrong type
    path.write_text(json.dumps(forged))
    shutil.copytree(out, root / "fz" / "out" / "sweep_resume_other_sweep" / "sw")


def _lying_resume_folder(root: Path) -> None:
    """``last.npz`` whose header claims update 96 of 128 with arrays that saw 1000 steps.

    The shipped expert's arrays (the networks of the default config) under a header
    of this command's run, so that everything but the progress agrees.
    """
    from prefrl import config as config_lib
    from prefrl.learners import ppo
    from prefrl.loops import ppo as training

    argv = CASES["resume_ppo_hdr_lie"]["command"].split()[1:]
    args = cli.build_parser().parse_args(argv)
    tc = config_lib.from_args(training.TrainConfig, args)
    pc = config_lib.from_args(ppo.PPOConfig, args)
    with np.load(ROOT / "experiments" / "experts" / "run" / "final.npz") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays.pop(prefrl_io.HEADER_KEY).tobytes())
    header.update(ppo_config=config_lib.to_dict(pc), num_updates=tc.num_updates,
                  train_config={**config_lib.to_dict(tc), "backend": "cpu"},
                  progress={"update": 96, "env_steps": 96 * tc.steps_per_update,
                            "num_updates": tc.num_updates})
    count = next(k for k in arrays if "obs_stats" in k and k.endswith("count"))
    arrays[count] = np.asarray(1000.0, np.float32)
    prefrl_io.save_npz(Path(tc.out_dir) / "last.npz", arrays, header)


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz2")
    fz = root / "fz" / "in"
    fz.mkdir(parents=True)
    (root / "fz" / "out").mkdir()
    (root / "experiments").symlink_to(ROOT / "experiments")
    write_tiny_trajectory(fz / "traj.npz", num_steps=200, num_envs=4)
    _dataset_file(fz / "data.npz")
    (fz / "ppo").mkdir()
    shutil.copy(ROOT / "experiments" / "experts" / "run" / "final.npz", fz / "ppo" / "final.npz")
    _policy_and_reward_model(fz)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        sys.modules.pop("mkfix", None)
        runpy.run_path(str(HERE / "mkfix.py"))
        runpy.run_path(str(HERE / "mkfix2.py"))
        _sweep_inputs(root)
        _lying_resume_folder(root)
    finally:
        os.chdir(cwd)
        sys.modules.pop("mkfix", None)
    return root


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file()} if folder.exists() else {}


def _run(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        return int(exit_.code)


def _full_disk(real_write):
    def write(path, data):
        if "full" in Path(path).parts:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, data)
    return write


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_case_gets_a_clear_error(case, fuzz_root, monkeypatch, capsys):
    status, messages = EXPECTED[case]
    command = CASES[case]["command"]
    for old, new in SMALLER.get(case, {}).items():
        command = command.replace(f" {old} ", f" {new} ")
    full = fuzz_root / "full"
    command = command.replace("FULL_DISK_DIR", str(full))
    argv = command.split()[1:]  # as the fuzzer ran it: no shell quoting
    if case == "sweep_ray_bogus":
        argv += ["--ray-timeout", "2"]  # bounded; the default is 30 s
    monkeypatch.chdir(fuzz_root)
    monkeypatch.setattr(prefrl_io, "_atomic_write", _full_disk(prefrl_io._atomic_write))
    monkeypatch.setenv("PREFRL_JAX_CACHE", str(fuzz_root / "jax_cache"))
    watched = [fuzz_root / "fz" / "out" / case, full, fuzz_root / "fz" / "in" / "resume"]
    before = {str(w): _snapshot(w) for w in watched}
    code = _run(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code == status, f"exit {code}, want {status}: {err.strip()[-400:]}"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    for message in messages:
        assert message in lines[-1], f"want {message!r} in {lines[-1]!r}"
    for folder in watched:  # nothing written (a pre-existing folder is left as it was)
        assert _snapshot(folder) == before[str(folder)], f"{folder} changed"


def test_accepted_cases_are_accepted(fuzz_root):
    from prefrl.data import dataset as ds

    assert set(ACCEPTED) == {"cpl_data_action_pm1"}
    data, _ = ds.load(fuzz_root / "fz" / "in" / "data_action_pm1.npz")
    action = np.asarray(data.segments.action)
    assert np.abs(action).max() == 1.0  # on the box's edge: legal
