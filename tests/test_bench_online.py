"""`prefrl bench online`: its plan, its held-out tasks and its summary (no training here)."""

import json

import numpy as np
import pytest

from prefrl.bench import online as bench


def test_plan_runs_heldout_tasks_on_headline_seeds_only():
    plan = bench.plan(list(bench.TASKS))
    for key in bench.HELDOUT_TASKS:
        runs = [(row, seed) for task, row, seed in plan if task == key]
        assert sorted(runs) == sorted((row, s) for row in ("true", "online-pr-1000")
                                      for s in bench.HEADLINE_SEEDS)
    assert len(plan) == len(set(plan))
    # Tuned tasks keep their rows: 3 headline rows x 5 seeds + 6 others x 3 seeds on run.
    assert sum(1 for task, _, _ in plan if task == "run") == 3 * 5 + 6 * 3


def test_heldout_task_keys_resolve_to_tasks_and_experts():
    from prefrl.envs import parse_task_params

    spec = parse_task_params(*bench.TASKS["target-speed-v3"])
    assert spec.params_dict["target_speed"] == 3.0
    assert bench.expert_path("target-speed-v3") == ""  # the v* = 2 expert is not an expert here
    assert bench.expert_path("run-backward").endswith("run-backward/final.npz")
    assert bench.expert_path("run").endswith("run/final.npz")


def _runs(task, row, returns):
    return [{"task": task, "row": row, "seed": s, "final_return": float(x), "wall_s": 1.0,
             "curve": [(0, -1.0), (10, float(x))]} for s, x in enumerate(returns)]


def test_summary_normalises_by_true_ppo_where_no_expert(tmp_path, monkeypatch):
    refs = {"run": {"random": 0.0, "expert": 1000.0},
            "target-speed-v3": {"random": -3000.0, "expert": None}}
    monkeypatch.setattr(bench, "normaliser", lambda key: dict(refs[key]))
    runs = (_runs("run", "true", [800, 800, 800]) + _runs("run", "online-pr-1000", [400] * 3)
            + _runs("target-speed-v3", "true", [-1000] * 3)
            + _runs("target-speed-v3", "online-pr-1000", [-2000] * 3))
    summary = bench.summarize(runs, tmp_path)
    assert summary["normaliser"]["run"]["expert_source"] == "shipped expert"
    assert summary["wall_ratio"] == pytest.approx(1.0)  # online / true-reward PPO on run
    assert summary["table"]["run"]["online-pr-1000"]["normalised_iqm"] == pytest.approx(0.4)
    v3 = summary["normaliser"]["target-speed-v3"]
    assert v3["expert_source"] == "true-reward PPO IQM" and v3["expert"] == pytest.approx(-1000)
    assert summary["normalised_online"]["target-speed-v3"] == pytest.approx(0.5)
    assert summary["table"]["target-speed-v3"]["true"]["normalised_iqm"] == pytest.approx(1.0)
    assert (tmp_path / "curves.png").is_file()
    json.dumps(summary)  # the summary file is plain JSON
    table = bench.format_table(summary)
    assert "| target-speed-v3 | online-pr-1000 | 3 | -2000 [-2000, -2000] | 0.50 |" in table


def test_summary_without_any_reference_prints_no_score(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "normaliser", lambda key: {"random": -3000.0, "expert": None})
    summary = bench.summarize(_runs("target-speed-v3", "online-pr-1000", [-2000, -1900]),
                              tmp_path)
    assert summary["table"]["target-speed-v3"]["online-pr-1000"]["normalised_iqm"] is None
    assert "| — |" in bench.format_table(summary)
    assert np.isfinite(summary["table"]["target-speed-v3"]["online-pr-1000"]["iqm"])


def test_unknown_task_key_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--tasks", "walker", "--summary-only"])
    assert "walker" in capsys.readouterr().err
