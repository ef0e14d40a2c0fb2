"""Nothing half-done is left behind: failed writes, killed writers' temporary files."""

import os
import subprocess
import sys

import pytest
from test_bc import synthetic_dataset
from test_reward_model import CLI_MODEL, write_dataset

from prefrl import io


def test_fit_with_metrics_in_a_folder_writes_no_model(tmp_path, capsys):
    from prefrl.cli import main

    data = write_dataset(tmp_path / "d.npz")
    out_dir = tmp_path / "out"
    (out_dir / "metrics").mkdir(parents=True)
    code = main(["fit", "--dataset", str(data), "--out", str(out_dir / "m.npz"),
                 "--metrics", str(out_dir / "metrics"), *CLI_MODEL])
    assert code == 2 and "--metrics" in capsys.readouterr().err
    assert sorted(p.name for p in out_dir.iterdir()) == ["metrics"]


def test_fit_removes_its_model_when_the_metrics_cannot_be_written(tmp_path, capsys,
                                                                  monkeypatch):
    from prefrl.cli import main

    data = write_dataset(tmp_path / "d.npz")
    out_dir = tmp_path / "out"

    def refuse(path, obj):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(io, "atomic_write_json", refuse)
    code = main(["fit", "--dataset", str(data), "--out", str(out_dir / "m.npz"),
                 "--metrics", str(out_dir / "m.json"), *CLI_MODEL])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write --metrics" in err and "removed the model" in err
    assert list(out_dir.iterdir()) == []


def test_multi_seed_cpl_failing_on_one_seed_names_the_files_it_wrote(tmp_path, capsys,
                                                                     monkeypatch):
    from prefrl import checkpoints
    from prefrl.cli import main
    from prefrl.data import dataset as dataset_io

    data = tmp_path / "data.npz"
    dataset_io.save(data, synthetic_dataset(), task="unknown")
    save = checkpoints.save_offline_policy

    def fail_on_seed1(path, *args, **kwargs):
        if "seed1" in str(path):
            raise OSError(28, "No space left on device")
        return save(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_offline_policy", fail_on_seed1)
    out = tmp_path / "out"
    code = main(["train", "cpl", "--dataset", str(data), "--num-steps", "4", "--log-every", "4",
                 "--hidden", "8", "--eval-task", "none", "--batch-size", "8",
                 "--seeds", "0", "1", "--out", str(out / "cpl.npz")])
    err = capsys.readouterr().err
    assert code == 2
    assert "saving seed 1" in err and "No space left" in err
    assert str(out / "cpl_seed0.npz") in err  # the file it did write
    assert sorted(p.name for p in out.iterdir()) == ["cpl_seed0.npz"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".a.json.x1y2z3w4.{dead}.tmp"
    live = tmp_path / f".b.json.q1w2e3r4.{alive}.tmp"
    unnamed = tmp_path / ".c.json.k1ll3d.tmp"  # no process id: its writer is unknown
    for path in (stale, live, unnamed):
        path.write_text("{")
    assert io.remove_stale_temp_files(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unnamed.name])


def test_first_write_into_a_folder_removes_dead_writers_temp_files(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_CLEANED", set())
    stale = tmp_path / f".r.json.x1y2z3w4.{_dead_pid()}.tmp"
    stale.write_text("{")
    io.atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_temp_file_names_carry_the_writer_pid(tmp_path, monkeypatch):
    seen = []
    replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    io.atomic_write_text(tmp_path / "x.txt", "hi")
    assert seen and seen[0].startswith(".x.txt.") and seen[0].endswith(f".{os.getpid()}.tmp")


@pytest.mark.parametrize("pid", [2**40, 0, -1])
def test_out_of_range_pids_count_as_dead(pid):
    assert io.pid_alive(pid) is False
