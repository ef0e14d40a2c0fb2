"""Malformed inputs through ``prefrl.cli.main``, in one process: each gets its own message.

Exit status 2 is a usage error (a bad option value), 1 a data error (a
missing, corrupt or mismatched file). Every case names the problem it
expects on stderr, so a catch-all handler cannot pass, and writes nothing:
its outputs point into a folder that must stay empty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from labelling_data import write_tiny_trajectory

from prefrl import cli, preflight
from prefrl.data import dataset as ds
from prefrl.io import save_npz
from prefrl.types import PreferenceDataset, Segments

ROOT = Path(__file__).resolve().parents[2]
EXPERTS = ROOT / "experiments" / "experts"
GiB = 2**30


def _dataset(n: int = 8, k: int = 4, obs_dim: int = 17, act_dim: int = 6) -> PreferenceDataset:
    """A tiny half-cheetah-shaped dataset: 8 segments of 4 steps, 6 distinct queries."""
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    obs = f32(n, k + 1, obs_dim)
    segments = Segments(obs=obs[:, :-1], action=np.tanh(f32(n, k, act_dim)), reward=f32(n, k),
                        next_obs=obs[:, 1:], mask=np.ones((n, k), np.float32),
                        x_velocity=f32(n, k), qpos=f32(n, k, 9), qvel=f32(n, k, 9),
                        source=np.stack([np.arange(n), np.zeros(n, int)], 1).astype(np.int32))
    first = np.arange(6, dtype=np.int32)
    label = np.array([1, 0, 1, 0.5, 0, 1], np.float32)
    return PreferenceDataset(segments, first, first + 1, {"regret": label},
                             {"regret": np.ones(6, bool)})


def _write_raw(path: Path, data: PreferenceDataset, **header: object) -> Path:
    """Write a dataset file without :func:`ds.save`'s checks (as a damaged or foreign file)."""
    full = {"kind": ds.KIND, "schema_version": ds.SCHEMA_VERSION, "task": "run",
            "labels": ["regret"], **header}
    save_npz(path, ds._to_arrays(data), full)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fuzz")
    write_tiny_trajectory(root / "traj.npz")
    good = _dataset()
    ds.save(root / "data.npz", good, task="run")
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    (root / "empty.npz").write_bytes(b"")
    (root / "folder").mkdir()
    (root / "run_dir").mkdir()
    segs = good.segments
    self_pair = good.replace(second=good.first.copy())
    mask = np.ones((8, 4), np.float32)
    mask[2] = 0.0  # segment 2 is all padding, and queries 1 and 2 use it
    empty_mask = good.replace(segments=segs.replace(mask=mask))
    paths = {
        "traj": root / "traj.npz", "data": root / "data.npz", "corrupt": root / "corrupt.npz",
        "empty": root / "empty.npz", "folder": root / "folder", "run_dir": root / "run_dir",
        "missing": root / "missing.npz",
        "obs3": _write_raw(root / "obs3.npz", _dataset(obs_dim=3)),
        "act2": _write_raw(root / "act2.npz", _dataset(act_dim=2)),
        "self_pair": _write_raw(root / "self_pair.npz", self_pair),
        "empty_mask": _write_raw(root / "empty_mask.npz", empty_mask),
        "header_q": _write_raw(root / "header_q.npz", good, num_queries=60),
        "header_k": _write_raw(root / "header_k.npz", good, segment_length=50),
        "extra_label": _write_raw(root / "extra_label.npz", good.replace(
            labels={**good.labels, "other": good.labels["regret"]},
            label_mask={**good.label_mask, "other": good.label_mask["regret"]})),
    }
    return {k: str(v) for k, v in paths.items()}


def _run(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        return int(exit_.code)


def _cases(f: dict[str, str], out: str) -> list[tuple[str, list[str], int, str]]:
    """``(name, argv, exit status, substring of stderr)``; outputs go under ``out``."""
    traj, data = f["traj"], f["data"]
    label = ["label", "--trajectory", traj, "--output", f"{out}/l.npz", "--segment-length", "5",
             "--stride", "5", "--budget", "5"]
    cpl = ["train", "cpl", "--dataset", data, "--out", f"{out}/p.npz", "--eval-task", "none",
           "--num-steps", "2", "--log-every", "2", "--hidden", "4"]
    fit = ["fit", "--dataset", data, "--out", f"{out}/m.npz", "--hidden", "4", "--label", "regret"]
    collect = ["collect", "--out", f"{out}/t.npz", "--steps", "4", "--num-envs", "1"]
    ppo = ["train", "ppo", "--out-dir", f"{out}/ppo", "--total-steps", "8", "--num-envs", "1",
           "--rollout-steps", "8"]
    expert = str(EXPERTS / "run" / "final.npz")
    return [
        # -- sizes bounded before allocation (memory capped at 1 GiB below)
        ("label budget 1e9", [*label, "--budget", "1e9"], 2, "--budget 1000000000: needs about"),
        ("label budget > pairs", [*label, "--budget", "100000"], 2, "distinct pairs"),
        ("collect steps 1e9", [*collect, "--steps", "1e9"], 2, "--steps 1000000000"),
        ("collect envs 1e9", [*collect, "--num-envs", "1e9"], 2, "--num-envs 1000000000"),
        ("eval episodes 1e9", ["eval", "--checkpoint", expert, "--episodes", "1e9"], 2,
         "--episodes 1000000000: needs about"),
        ("cpl batch 1e9", [*cpl, "--batch-size", "1e9"], 2, "--batch-size 1000000000"),
        ("fit batch 1e9", [*fit, "--batch-size", "1e9"], 2, "--batch-size 1000000000"),
        ("ppo envs 1e9", [*ppo, "--num-envs", "1e9", "--total-steps", "1e10"], 2,
         "--num-envs 1000000000"),
        ("ppo eval episodes 1e9", [*ppo, "--eval-episodes", "1e9"], 2, "--eval-episodes"),
        # -- bad option values
        ("budget not a number", [*label, "--budget", "many"], 2, "expected an integer"),
        ("budget fractional", [*label, "--budget", "1.5"], 2, "expected an integer"),
        ("budget zero", [*label, "--budget", "0"], 2, "budget must be > 0"),
        ("pairing unknown", [*label, "--pairing", "random"], 2, "invalid choice"),
        ("oracle unknown", [*label, "--oracles", "vibes"], 2, "unknown oracle"),
        ("regret without expert", [*label, "--oracles", "regret"], 2, "pass --expert PATH"),
        ("label no output", ["label", "--trajectory", traj], 2, "--output PATH"),
        ("unknown option", [*label, "--frobnicate", "1"], 2, "unrecognized arguments"),
        ("task unknown", [*collect, "--task", "fly"], 2, "unknown task 'fly'"),
        ("num envs zero", [*collect, "--num-envs", "0"], 2, "num_envs must be >= 1"),
        ("target speed on run", [*collect, "--target-speed", "3"], 2, "applies only"),
        ("episodes zero", ["eval", "--checkpoint", expert, "--episodes", "0"], 2,
         "--episodes must be >= 1"),
        ("policy hidden 0", [*ppo, "--policy-hidden", "0"], 2, "width >= 1"),
        ("value hidden empty", [*ppo, "--value-hidden"], 2, "policy_hidden and value_hidden"),
        ("fit no dataset", ["fit", "--out", f"{out}/m.npz"], 2, "needs --dataset FILE"),
        ("valid fraction 1", [*fit, "--valid-fraction", "1"], 2, "valid_fraction"),
        ("report reps", ["report", f["folder"], "--out", f"{out}/r", "--bootstrap-reps", "5"],
         2, ">= 100"),
        # -- output paths that cannot be written
        ("label out is a folder", [*label, "--output", f["run_dir"]], 2, "is a folder"),
        ("label out under /dev/null", [*label, "--output", "/dev/null/l.npz"], 2,
         "/dev/null is not a folder"),
        ("fit out is a folder", [*fit, "--out", f["run_dir"]], 2, "is a folder"),
        ("fit metrics under /dev/null", [*fit, "--metrics", "/dev/null/m.json"], 2,
         "not a folder"),
        ("cpl out is a folder", [*cpl, "--out", f["run_dir"]], 2, "is a folder"),
        ("collect out under /dev/null", [*collect, "--out", "/dev/null/t.npz"], 2,
         "not a folder"),
        # -- missing, corrupt or mismatched files
        ("trajectory missing", [*label, "--trajectory", f["missing"]], 1, "no such file"),
        ("trajectory corrupt", [*label, "--trajectory", f["corrupt"]], 1, "not a readable .npz"),
        ("trajectory empty", [*label, "--trajectory", f["empty"]], 1, "not a readable .npz"),
        ("dataset as trajectory", [*label, "--trajectory", data], 1,
         "expected a 'trajectory' file"),
        ("trajectory as dataset", [*fit, "--dataset", traj], 1,
         "expected a 'preference_dataset' file"),
        ("cpl dataset missing", [*cpl, "--dataset", f["missing"]], 1,
         "no such file"),
        ("cpl obs size vs task", [*cpl, "--dataset", f["obs3"]], 1,
         "observation size 3 disagrees with the header's task 'run'"),
        ("fit action size vs task", [*fit, "--dataset", f["act2"]], 1,
         "action size 2 disagrees"),
        ("self comparison", [*fit, "--dataset", f["self_pair"]], 1,
         "compare a segment with itself"),
        ("all-zero mask", [*cpl, "--dataset", f["empty_mask"]], 1,
         "mask is all zero"),
        ("header num_queries", [*fit, "--dataset", f["header_q"]], 1,
         "header says num_queries = 60"),
        ("header segment_length", [*fit, "--dataset", f["header_k"]], 1,
         "header says segment_length = 50"),
        ("header labels", [*fit, "--dataset", f["extra_label"]], 1,
         "do not list"),
        ("critic of another task", [*label, "--oracles", "regret", "--expert",
                                    str(EXPERTS / "run-backward" / "final.npz")], 1,
         "critic of task 'run-backward'"),
        ("critic discount", [*label, "--oracles", "regret", "--expert", expert,
                             "--regret-discount", "0.9"], 1, "discount 0.99 differs"),
        ("critic corrupt", [*label, "--oracles", "regret", "--expert", f["corrupt"]], 1,
         "not a readable .npz"),
        ("eval missing", ["eval", "--checkpoint", f["missing"], "--task", "run"], 1,
         "no such file"),
        ("eval corrupt", ["eval", "--checkpoint", f["corrupt"], "--task", "run"], 1,
         "not a readable .npz"),
        ("eval folder without final", ["eval", "--checkpoint", f["folder"]], 1,
         "folder without final.npz"),
        ("eval a dataset", ["eval", "--checkpoint", data, "--task", "run"], 1,
         "expected a 'ppo_checkpoint' file"),
        ("fit init corrupt", [*fit, "--init", f["corrupt"]], 1, "not a readable .npz"),
        ("collect policy missing", [*collect, "--checkpoint", f["missing"]], 1, "no such file"),
    ]


def test_malformed_inputs_get_specific_errors(files, tmp_path, monkeypatch, capsys):
    # A 1 GiB machine: every 1e9-sized option must be refused by its estimate.
    monkeypatch.setattr(preflight, "available_memory", lambda: GiB)
    out = tmp_path / "out"
    out.mkdir()
    cases = _cases(files, str(out))
    assert len(cases) >= 40
    failures = []
    for name, argv, status, expected in cases:
        code = _run(argv)
        err = capsys.readouterr().err
        written = sorted(p.name for p in out.iterdir())
        if (code != status or expected not in err or "Traceback" in err or written
                or not err.strip()):
            failures.append(f"{name}: exit {code} (want {status}), wrote {written}, "
                            f"stderr: {err.strip()[-300:]!r} (want {expected!r})")
    assert not failures, "\n".join(failures)
