"""Reports: IQM / bootstrap statistics and the files `prefrl report` writes."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
import scipy.stats

from prefrl import evaluation, report
from prefrl.cli import main as cli_main
from prefrl.sweeps import spec as sweep_spec
from prefrl.sweeps import store as sweep_store


def test_iqm_known_answers():
    # n = 8: drop floor(8/4) = 2 from each end -> mean(3, 4, 5, 6) = 4.5.
    assert evaluation.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5
    # n = 3: floor(0.75) = 0 dropped -> plain mean = (1 + 2 + 30) / 3.
    assert evaluation.iqm([1.0, 2.0, 30.0]) == pytest.approx(11.0)
    # An outlier beyond the quartiles does not move the IQM: mean(2, 3) = 2.5 for n = 4.
    assert evaluation.iqm([1.0, 2.0, 3.0, 1e9]) == 2.5


def test_iqm_matches_scipy_trim_mean(rng):
    for n in (1, 2, 5, 10, 33):
        x = rng.normal(size=n)
        assert evaluation.iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25))


def test_iqm_rejects_nan_and_empty():
    with pytest.raises(ValueError, match="NaN"):
        evaluation.iqm([1.0, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        evaluation.iqm([])


def test_bootstrap_interval_properties(rng):
    x = rng.normal(loc=3.0, size=40)
    point, low, high = evaluation.stratified_bootstrap_ci([x], np.mean, reps=2000, seed=1)
    assert point == pytest.approx(x.mean())
    assert low < point < high
    # The percentile interval of the mean is close to ±1.96 standard errors.
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.2)
    # Deterministic given the seed.
    assert evaluation.stratified_bootstrap_ci([x], np.mean, seed=1) == (point, low, high)
    # One run: nothing to resample, a zero-width interval.
    assert evaluation.stratified_bootstrap_ci([[2.0]]) == (2.0, 2.0, 2.0)


def test_bootstrap_is_stratified():
    # Stratum A is constant 0 (4 runs), stratum B constant 10 (4 runs). Resampling
    # within strata keeps 4 + 4 in every replicate, so the mean never moves
    # from 5; an unstratified bootstrap over the 8 pooled runs would.
    point, low, high = evaluation.stratified_bootstrap_ci([[0.0] * 4, [10.0] * 4], np.mean)
    assert (point, low, high) == (5.0, 5.0, 5.0)
    # Ragged strata (3 runs of one task, 1 of another): every replicate keeps
    # 3 zeros and one 10, so the mean is always (0 + 0 + 0 + 10) / 4 = 2.5.
    assert evaluation.stratified_bootstrap_ci([[0.0, 0.0, 0.0], [10.0]], np.mean) == (2.5, 2.5, 2.5)


def _synthetic_results(tmp_path, seeds=(0, 1, 2, 3, 4)):
    """A result directory written through the real record format (sweep_store.make_record)."""
    data = tmp_path / "data.npz"
    data.write_bytes(b"not read by the report")
    expert = tmp_path / "expert.npz"
    expert.write_bytes(b"x")
    store = sweep_store.ResultStore(tmp_path / "results")
    rng = np.random.default_rng(0)
    settings = sweep_spec.Settings()
    files = sweep_spec.TaskFiles(str(data), str(expert))
    learners = ("rm_pr", "rm_regret", "rm_pr+ppo", "rm_regret+ppo", "cpl", "dpo")
    for learner, model, budget in itertools.product(
        learners, sweep_spec.LABEL_MODELS, (250, 1000, 4000)
    ):
        cell = sweep_spec.CellConfig("target-speed", model, learner, 0.0, 0.0, budget, 25, files,
                                settings)
        for seed in seeds:
            skill = np.log(budget) + (1.0 if cell.assumption == model else 0.0)
            if cell.fit_only:
                metrics = {
                    "heldout_accuracy": float(min(0.99, 0.5 + 0.05 * skill + 0.01 * rng.normal())),
                    "heldout_accuracy_partial_return": 0.7,
                    "heldout_accuracy_regret": 0.6,
                }
            else:
                metrics = {
                    "true_return": float(100 * skill + 10 * rng.normal()),
                    "kl_to_ref": float(abs(rng.normal())),
                }
                if learner.endswith("+ppo"):
                    metrics["curves"] = {
                        "env_steps": [1000, 2000, 3000, 4000],
                        "proxy_reward": [0.0, 0.5, 0.9, 1.4],
                        "true_reward": [0.0, 0.4, 0.6, 0.5],
                    }
            store.write(sweep_store.make_record(cell, seed, 1.0, metrics, wall_time_s=1.0,
                                          group_size=len(seeds), sweep_name="synthetic"))
    return store.root


def test_report_writes_tables_figures_and_summary(tmp_path):
    results = _synthetic_results(tmp_path)
    # A damaged record is skipped (with a warning), not fatal.
    (results / "runs" / "broken.json").write_text('{"kind": "prefrl.sweep.rec')
    out = tmp_path / "report"
    assert cli_main(["report", str(results), "--out", str(out), "--bootstrap-reps", "200"]) == 0

    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    # 6 learners × 2 label models × 3 budgets × 5 seeds.
    assert len(rows) == 6 * 2 * 3 * 5
    assert {"learner", "label_model", "label_budget", "seed", "assumption"} <= set(rows[0])

    with open(out / "cells.csv") as f:
        cells = list(csv.DictReader(f))
    ret = [c for c in cells if c["metric"] == "true_return"]
    assert len(ret) == 4 * 2 * 3  # policy learners × label models × budgets
    for c in ret:
        assert int(c["n"]) == 5
        assert float(c["ci_low"]) <= float(c["iqm"]) <= float(c["ci_high"])
    # The IQM in the table is the IQM of that cell's five seeds in runs.csv.
    c = ret[0]
    seeds_of_cell = [
        float(r["true_return"]) for r in rows
        if all(r[k] == c[k] for k in ("learner", "label_model", "label_budget"))
    ]
    assert float(c["iqm"]) == pytest.approx(evaluation.iqm(seeds_of_cell))

    # The 2×2 table: the diagonal (learner assumes the labeller's model) wins by
    # construction of the synthetic data (+100 return).
    with open(out / "assumption_table_return.csv") as f:
        table = {(r["label_model"], r["assumption"]): float(r["iqm"]) for r in csv.DictReader(f)}
    assert len(table) == 4
    assert table[("regret", "regret")] > table[("regret", "partial_return")]
    assert table[("partial_return", "partial_return")] > table[("partial_return", "regret")]

    for stem in ("return_vs_budget", "accuracy_vs_budget", "assumption_table_return",
                 "assumption_table_accuracy", "kl_frontier", "proxy_vs_true"):
        for ext in ("png", "pdf"):
            path = out / f"{stem}.{ext}"
            assert path.stat().st_size > 1000, path
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    summary = (out / "summary.md").read_text()
    assert "](return_vs_budget.png)" in summary and "](kl_frontier.png)" in summary
    assert "Label model × learner assumption" in summary
    assert not list(out.glob("*.tmp"))


def test_report_without_optional_metrics(tmp_path):
    # Fit-only records only: no return figure, no KL/proxy figures, no crash.
    data = tmp_path / "d.npz"
    data.write_bytes(b"x")
    store = sweep_store.ResultStore(tmp_path / "res")
    cell = sweep_spec.CellConfig("run", "partial_return", "rm_pr", 0.0, 0.0, 100, 10,
                            sweep_spec.TaskFiles(str(data)), sweep_spec.Settings())
    for seed in (0, 1):
        store.write(sweep_store.make_record(cell, seed, 0.5, {"heldout_accuracy": 0.8 + 0.1 * seed},
                                      wall_time_s=0.1, group_size=2))
    result = report.write_report(store.root, tmp_path / "rep", reps=100)
    assert "accuracy_vs_budget.png" in result["files"]
    assert not any(f.startswith(("return_vs", "kl_", "proxy_")) for f in result["files"])
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert "0.85" in text  # mean of 0.8 and 0.9 (n = 2: the IQM is the mean)


def test_report_errors_name_the_problem(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "not a result directory" in capsys.readouterr().err
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(sweep_spec.SweepError, match="no valid run records"):
        report.write_report(tmp_path / "empty", tmp_path / "o")


def test_record_checksum_detects_edits(tmp_path):
    results = _synthetic_results(tmp_path, seeds=(0,))
    path = sorted((results / "runs").glob("*.json"))[0]
    record = json.loads(path.read_text())
    assert sweep_store.validate_record(record, path.stem) is None
    record["metrics"]["heldout_accuracy"] = 1.0
    assert "checksum" in sweep_store.validate_record(record, path.stem)
