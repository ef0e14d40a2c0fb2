"""Tables of a sweep's records: the tidy per-run rows, IQM per cell, the 2×2 assumption table.

IQM and its stratified percentile-bootstrap interval are
:func:`prefrl.evaluation.iqm` / :func:`prefrl.evaluation.stratified_bootstrap_ci`
(Agarwal et al. 2021, as ``rliable`` computes them).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefrl import evaluation
from prefrl.io import atomic_write_text
from prefrl.sweeps.spec import FIT_ONLY_LEARNERS

# Metrics with these names are the headline of a cell (first present wins).
RETURN_METRIC = "true_return"
ACCURACY_METRIC = "heldout_accuracy"
AXES = ("task", "label_model", "learner", "beta", "epsilon", "label_budget", "segment_length")
ASSUMPTIONS = ("partial_return", "regret")



def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def tidy_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per run: axes, seed, assumption, wall time and every scalar metric."""
    rows = []
    for r in records:
        cell = r["cell"]
        row: dict[str, Any] = {"run_id": r["run_id"], "sweep": r.get("sweep", "")}
        row.update({k: cell[k] for k in AXES})
        row["assumption"] = r.get("assumption", "")
        row["fit_only"] = cell["learner"] in FIT_ONLY_LEARNERS
        row["seed"] = r["seed"]
        row["budget_scale"] = r.get("budget_scale", 1.0)
        row["wall_time_s"] = r.get("wall_time_s", float("nan"))
        for k, v in sorted(r["metrics"].items()):
            if is_number(v):
                row[k] = float(v)
        rows.append(row)
    return rows


def group_rows(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, list]:
    out: dict[tuple, list] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in keys), []).append(row)
    return dict(sorted(out.items(), key=lambda kv: tuple(map(sort_key, kv[0]))))


def sort_key(v: Any) -> tuple[int, Any]:
    # Numbers in numeric order (250 < 1000), then strings.
    return (0, v, "") if is_number(v) else (1, 0, str(v))


def aggregate(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    metric: str,
    *,
    strata: str | None = None,
    reps: int = 2000,
) -> list[dict[str, Any]]:
    """IQM and 95 % interval of ``metric`` across the runs of each group of ``keys``.

    ``strata`` (e.g. ``"task"``) makes the bootstrap stratified over that column.
    """
    out = []
    finite = [r for r in rows if is_number(r.get(metric)) and math.isfinite(r[metric])]
    for key, group in group_rows(finite, keys).items():
        if strata is None:
            parts = [[r[metric] for r in group]]
        else:
            parts = [[r[metric] for r in g] for g in group_rows(group, [strata]).values()]
        point, low, high = evaluation.stratified_bootstrap_ci(parts, evaluation.iqm, reps=reps)
        out.append(
            {**dict(zip(keys, key, strict=True)), "metric": metric, "n": len(group),
             "iqm": point, "ci_low": low, "ci_high": high}
        )
    return out


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt_csv(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _fmt_csv(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)
    return v



def assumption_table(
    rows: Sequence[Mapping[str, Any]], metric: str, reps: int = 2000
) -> list[dict[str, Any]]:
    """2×2 rows ``(label_model, assumption, n, iqm, ci)`` at each cell's largest label budget.

    Runs are pooled across tasks, noise settings and learners of one
    assumption; the bootstrap is stratified by task (scores of different tasks
    are not exchangeable). Only the largest budget enters so that cells of
    different budgets do not blur the comparison.
    """
    rows = [r for r in rows if is_number(r.get(metric))]
    if not rows:
        return []
    top = max(r["label_budget"] for r in rows)
    rows = [r for r in rows if r["label_budget"] == top]
    out = aggregate(rows, ("label_model", "assumption"), metric, strata="task", reps=reps)
    for row in out:
        row["label_budget"] = top
    return out



def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt_ci(row: Mapping[str, Any]) -> str:
    return f"{row['iqm']:.4g} [{row['ci_low']:.4g}, {row['ci_high']:.4g}]"


