"""A sweep refuses bad data and bad options before any run starts, and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_sweep import TINY, _random_policy_dataset

from prefrl import io
from prefrl.cli import main as cli_main


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sweep_data")
    good = _random_policy_dataset(root / "good.npz", num_envs=2, steps=100, k=10)
    truncated = root / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    # The same dataset with 6-d observations (as if made on another environment).
    arrays, header = io.load_npz(good, kind="preference_dataset")
    for name in ("segments.obs", "segments.next_obs"):
        arrays[name] = arrays[name][..., :6]
    small_obs = io.save_npz(root / "small_obs.npz", arrays, header)
    trajectory = root / "trajectory.npz"
    assert cli_main(["collect", "--task", "run", "--num-envs", "2", "--steps", "5",
                     "--out", str(trajectory)]) == 0
    return {"good": good, "truncated": truncated, "small_obs": small_obs,
            "trajectory": trajectory}


def _sweep(out: Path, dataset: Path, *extra: str) -> list[str]:
    return ["sweep", str(TINY), "--out", str(out), "--workers", "1", "--no-progress",
            "--set", f"tasks.run.dataset={json.dumps(str(dataset))}", *extra]


# Exit status: 1 for a file the cells cannot use, 2 for a grid value or option (prefrl.cli).
@pytest.mark.parametrize(("dataset", "extra", "status", "message"), [
    ("good", ["--set", "grid.segment_length=[50]"], 2,
     "segment_length 50 (cell rm_pr|partial_return|run|n64|k50"),
    ("trajectory", [], 1, "found kind 'trajectory'"),
    ("truncated", [], 1, "truncated or corrupt"),
    ("small_obs", [], 1, "observation size 6 disagrees with the header's task 'run'"),
    ("good", ["--workers", "0"], 2, "--workers must be >= 1, got 0"),
    ("good", ["--set", "grid.label_budget=[1000000000]"], 2,
     "label_budget 1000000000: needs about"),
])
def test_bad_data_or_options_fail_before_any_run(files, tmp_path, capsys, dataset, extra,
                                                 status, message):
    out = tmp_path / "out"
    for dry_run in ([], ["--dry-run"]):
        assert cli_main(_sweep(out, files[dataset], *extra, *dry_run)) == status
        err = capsys.readouterr().err
        assert message in err, err
        assert "Traceback" not in err and "--resume" not in err
        assert not out.exists()  # nothing written, not even the result directory


def test_out_that_is_a_file_is_a_one_line_error(files, tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    assert cli_main(_sweep(out, files["good"])) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "is a file; give a result directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]
    assert out.read_text() == "not a folder"
