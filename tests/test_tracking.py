"""``--track``: TensorBoard event files that TensorBoard's own reader loads, and W&B offline runs.

No training: a stand-in command writes the files a run writes (``rounds.jsonl``
of an online run, a sweep record, a final JSON line) while the tracker mirrors
them, as ``prefrl.cli`` runs it for ``--track``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from prefrl import tracking
from prefrl.cli import build_parser


def _accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


def _fake_online_run(out: Path):
    """What ``train online`` leaves: rounds.jsonl lines, result.json and a final JSON line."""

    def run(args):
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "rounds.jsonl", "w") as f:
            for i in range(3):
                f.write(json.dumps({"round": i, "update": 8 * i, "env_steps": 32768 * i,
                                    "labels_used": 100 + 50 * i, "pearson": 0.5 + 0.1 * i,
                                    "heldout": {"partial_return": 0.8}, "note": "text"}) + "\n")
                f.flush()
        (out / "result.json").write_text(json.dumps({"mean_return": 123.0, "returns": [1, 2]}))
        print(json.dumps({"mean_return": 123.0, "labels_used": 200}))
        return 0

    return run


def test_tensorboard_event_files_load_with_tensorboards_reader(tmp_path, capsys):
    out = tmp_path / "online"
    args = build_parser().parse_args(["train", "online", "--out-dir", str(out),
                                      "--track", "tensorboard", "--label-budget", "300"])
    assert tracking.run_tracked(args, _fake_online_run(out), interval=0.05) == 0
    assert json.loads(capsys.readouterr().out.strip())["mean_return"] == 123.0  # stdout intact
    acc = _accumulator(out / "track")
    tags = set(acc.Tags()["scalars"])
    assert {"rounds/pearson", "rounds/labels_used", "rounds/heldout/partial_return",
            "rounds_by_labels/pearson", "result/mean_return", "summary/mean_return"} <= tags
    assert "rounds/note" not in tags  # text is not a scalar
    # Curves against env steps and against labels used.
    assert [(e.step, round(e.value, 3)) for e in acc.Scalars("rounds/pearson")] == [
        (0, 0.5), (32768, 0.6), (65536, 0.7)]
    assert [e.step for e in acc.Scalars("rounds_by_labels/pearson")] == [100, 150, 200]
    # The full configuration: every option, as hyper-parameters and as text.
    assert "config/text_summary" in acc.Tags()["tensors"]
    hparams = acc.PluginTagToContent("hparams")
    assert hparams, "no HParams session"
    text = json.dumps(acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode())
    assert "label_budget" in text and "300" in text


def test_sweep_records_become_hparam_runs(tmp_path):
    out = tmp_path / "sweep"

    def run(args):
        runs = out / "runs"
        runs.mkdir(parents=True)
        for seed in (0, 1):
            record = {"kind": tracking.SWEEP_RECORD, "run_id": f"cell_s{seed}", "seed": seed,
                      "cell": {"learner": "rm_pr", "label_budget": 250, "settings": {"x": [1]}},
                      "metrics": {"heldout_accuracy": 0.9 + 0.01 * seed, "curve": [1, 2]}}
            (runs / f"cell_s{seed}.json").write_text(json.dumps(record))
        return 0

    args = argparse.Namespace(command="sweep", out=str(out), track=["tensorboard"],
                              track_dir=None, sweep_file=None)
    tracking.run_tracked(args, run, interval=0.05)
    main = _accumulator(out / "track")
    assert [e.value for e in main.Scalars("sweep_records/heldout_accuracy")] == pytest.approx(
        [0.90, 0.91])
    record = _accumulator(out / "track" / "records" / "cell_s1")
    assert record.Scalars("heldout_accuracy")[0].value == pytest.approx(0.91)
    assert record.PluginTagToContent("hparams")


def test_wandb_offline_run(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "online"
    args = build_parser().parse_args(["train", "online", "--out-dir", str(out),
                                      "--track", "wandb", "--track-dir", str(tmp_path / "wb")])
    tracking.run_tracked(args, _fake_online_run(out), interval=0.05)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))  # `wandb sync` uploads it later


@pytest.mark.parametrize("argv", [
    ["train", "ppo", "--track", "tensorboard"],
    ["train", "cpl", "--track", "wandb", "--track", "tensorboard"],
    ["sweep", "x.toml", "--out", "o", "--track", "tensorboard"],
    ["bench", "--track", "tensorboard", "online", "--seeds", "0"],
])
def test_track_option_on_train_bench_and_sweep(argv):
    args = build_parser().parse_args(argv)
    assert args.track and set(args.track) <= set(tracking.KINDS)
    if argv[0] == "bench":
        assert args.name == "online" and args.rest == ["--seeds", "0"]


def test_flatten_keeps_finite_numbers_only():
    record = {"a": 1, "b": {"c": 2.5, "d": float("nan")}, "e": [1, 2], "f": "x", "g": True}
    assert tracking.flatten(record) == {"a": 1.0, "b/c": 2.5, "g": 1.0}
