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


# --------------------------------------------------------------------------- bench online_sac

def _sac_runs(task, row, returns, ppo=False):
    runs = []
    for s, x in enumerate(returns):
        r = {"task": task, "row": row, "seed": s, "final_return": float(x), "wall_s": 7200.0,
             "cpu_s": 3600.0, "curve": [(0, -1.0), (300_000, float(x))], "sac_steps": 300_000,
             "ppo_steps": 1_000_000}
        if ppo:
            r.update(final_return_1m=float(x) * 2, final_steps=303_104)
        runs.append(r)
    return runs


def test_online_sac_plan_seeds_rows_and_order():
    from prefrl.bench import online_sac

    plan = online_sac.plan(list(online_sac.TASKS))
    assert len(plan) == len(set(plan)) == 5 * (5 + 3 + 3)
    first_sac = next(i for i, (_, row, _) in enumerate(plan) if not row.startswith("ppo"))
    assert all(row.startswith("ppo") for _, row, _ in plan[:first_sac])  # cheap rows first
    # Then every SAC row of a seed before the next seed: partial results share seeds.
    assert plan[first_sac:first_sac + 3] == [("run", "true", 0), ("run", "pebble-1000", 0),
                                             ("run", "pebble-100", 0)]
    assert online_sac.HELDOUT_TASKS == ("run-backward",)


def test_online_sac_pebble_rows_use_the_tuned_settings(monkeypatch, tmp_path):
    # The PEBBLE rows' departures from B-Pref (PEBBLE_SETTINGS) reach the online core.
    from prefrl.bench import online_sac
    from prefrl.loops import online

    seen = {}

    def fake_train(config, reward_config=None, policy_config=None, **_):
        seen.update(config=config, reward=reward_config, policy=policy_config)
        final = {"mean_return": 1.0, "env_steps": config.total_steps}
        return {"evaluations": [final], "final": final, "labels_used": config.label_budget,
                "timing": {}, "rounds": []}

    monkeypatch.setattr(online, "train", fake_train)
    record = online_sac.run_one("run", "pebble-100", 3, tmp_path)
    assert seen["policy"].reset_actor is True and seen["policy"].reset_critic is True
    assert seen["reward"].num_steps == online_sac.PEBBLE_SETTINGS["fit_steps"] == 400
    assert seen["config"].initial_fit_steps == 1000 and seen["config"].label_budget == 100
    assert seen["config"].policy_learner == "pebble" and seen["config"].seed == 3
    assert record["pebble_settings"] == online_sac.PEBBLE_SETTINGS


def test_online_sac_summary_ratios_to_true_sac_with_intervals(monkeypatch):
    from prefrl.bench import online_sac

    norms = {"run": {"random": 0.0, "expert": 1000.0, "expert_source": "shipped PPO expert"},
             "target-speed": {"random": -3000.0, "expert": -200.0, "expert_source": "x"}}
    runs = (_sac_runs("run", "true", [500, 500, 500, 500, 500])
            + _sac_runs("run", "pebble-1000", [450, 450, 450, 450, 450])
            + _sac_runs("run", "ppo-online-1000", [100, 100, 100], ppo=True)
            + _sac_runs("target-speed", "true", [-400, -400, -400])
            + _sac_runs("target-speed", "pebble-100", [-600, -600, -600]))
    summary = online_sac.summarize(runs, norms)
    table = summary["table"]["run"]
    assert table["pebble-1000"]["ratio_to_true"] == {"point": pytest.approx(0.9),
                                                     "ci95": [pytest.approx(0.9)] * 2}
    assert table["pebble-1000"]["normalised_iqm"] == pytest.approx(0.45)
    assert table["true"]["cpu_hours_per_run"] == pytest.approx(1.0)
    ppo = table["ppo-online-1000"]
    assert ppo["iqm"] == pytest.approx(100) and ppo["iqm_1m"] == pytest.approx(200)
    assert ppo["reported_at_steps"] == 303_104
    # Negative returns: the ratio of normalised scores, (2400 / 2800) here, is the one to read.
    speed = summary["table"]["target-speed"]["pebble-100"]
    assert speed["normalised_ratio_to_true"]["point"] == pytest.approx(2400 / 2600)
    json.dumps(summary)
    md = online_sac.format_table(summary)
    assert ("| run | pebble-1000 | 5 | 300000 | 450 [450, 450] | 0.45 | 0.90 [0.90, 0.90] | "
            "0.90 [0.90, 0.90] | 1.00 |") in md


@pytest.mark.parametrize("row, expect", [
    ("online-pr-true-rhat-1000", dict(label_budget=1000, reward_learner="rhat",
                                      policy_learner="ppo", oracle_value="critic")),
    ("online-regret-mc-greedy-250", dict(label_budget=250, reward_learner="advantage",
                                         policy_learner="advantage_greedy", oracle_value="mc")),
    ("online-regret-critic-cpl-1000-eps0.1", dict(label_budget=1000, reward_learner="none",
                                                  policy_learner="cpl", oracle_value="critic")),
])
def test_row_scheme_names_labels_value_learner_budget(row, expect):
    settings = bench.parse_row(row)
    assert settings["config"] == expect
    oracle = settings["oracle"]
    assert oracle.model == ("partial_return" if "-pr-" in row else "regret")
    assert oracle.mistake_prob == (0.1 if row.endswith("eps0.1") else 0.0)
    assert (oracle.temperature > 0) == ("-cpl-" in row)  # CPL needs stochastic labels


@pytest.mark.parametrize("row", ["online-regret-true-rhat-1000", "online-pr-mc-rhat-1000",
                                 "online-regret-mc-sac-1000", "online-regret-mc-rhat-1000-x"])
def test_row_scheme_refuses_bad_names(row):
    with pytest.raises(ValueError, match="row"):
        bench.parse_row(row)


def test_adv0_row_runs_ppo_with_discount_zero():
    assert bench.parse_row("online-regret-mc-adv0-1000")["ppo"] == {"discount": 0.0,
                                                                    "gae_lambda": 0.0}


def test_regret_grid_plan_headline_rows_first_on_five_seeds():
    plan = bench.regret_grid_plan(["run"], "online-regret-mc-adv-1000", {"critic": "rhat"})
    assert len(plan) == len(set(plan))
    head = plan[:10]
    assert {r for _, r, _ in head} == {"online-pr-true-rhat-1000", "online-regret-mc-adv-1000"}
    rows = {r for _, r, _ in plan}
    # 1 + 2 × 7 learners at 1000, 3 noisy, 2 + 4 budget rows.
    assert len(rows) == 1 + 2 * len(bench.LEARNERS) + 3 + 6 and len(bench.LEARNERS) == 8
    assert {"online-regret-mc-adv-1000-eps0.1", "online-regret-critic-rhat-250",
            "online-regret-mc-adv-100", "online-pr-true-rhat-1000-eps0.1"} <= rows
    for row in rows:
        bench.parse_row(row)
    assert sum(1 for _, r, _ in plan if r == "online-regret-critic-cpl-1000") == 3


def test_summary_names_the_headline_regret_row_and_its_difference(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "normaliser", lambda key: {"random": 0.0, "expert": 1000.0})
    runs = (_runs("run", "online-pr-true-rhat-1000", [800] * 5)
            + _runs("run", "online-regret-mc-adv-1000", [720] * 5))
    summary = bench.summarize(runs, tmp_path, "online-regret-mc-adv-1000")
    assert summary["headline_regret_row"] == "online-regret-mc-adv-1000"
    versus = summary["headline_vs_pr"]["run"]
    assert versus["difference"] == pytest.approx(-80)
    assert versus["difference_ci95"] == [pytest.approx(-80), pytest.approx(-80)]
    assert versus["normalised_ratio"] == pytest.approx(0.9)


def test_grid_summary_line_reports_the_headline_comparison(tmp_path, monkeypatch, capsys):
    # The regret grid's rows are not the plan's: its one JSON line carries the headline.
    monkeypatch.setattr(bench, "normaliser", lambda key: {"random": 0.0, "expert": 1000.0})
    runs = (_runs("run", "online-pr-true-rhat-1000", [800] * 5)
            + _runs("run", "online-regret-mc-adv-1000", [400] * 5))
    for r in runs:
        path = tmp_path / "runs" / r["task"] / r["row"] / f"seed{r['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    bench.main(["--summary-only", "--out", str(tmp_path),
                "--headline-regret-row", "online-regret-mc-adv-1000"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["headline_regret_row"] == "online-regret-mc-adv-1000"
    assert line["headline_vs_pr"]["run"]["normalised_ratio"] == pytest.approx(0.5)
