"""The report of a sweep's result directory: CSV tables, figures and a Markdown summary."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefrl.io import atomic_write_text
from prefrl.report.figures import (
    plot_assumption_table,
    plot_kl_frontier,
    plot_proxy_vs_true,
    plot_vs_budget,
)
from prefrl.report.tables import (
    ACCURACY_METRIC,
    ASSUMPTIONS,
    AXES,
    RETURN_METRIC,
    aggregate,
    assumption_table,
    fmt_ci,
    is_number,
    md_table,
    tidy_rows,
    write_csv,
)
from prefrl.sweeps.spec import FIT_ONLY_LEARNERS, LABEL_MODELS
from prefrl.sweeps.store import load_records


def write_report(
    results_dir: str | os.PathLike, out: str | os.PathLike, *, reps: int = 2000
) -> dict[str, Any]:
    """Write the CSV tables, figures and ``summary.md`` of a result directory to ``out``.

    Returns ``{"runs": n, "cells": n, "files": [names written]}``.
    """
    records = load_records(results_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = tidy_rows(records)
    files: list[str] = []
    write_csv(out / "runs.csv", rows)
    files.append("runs.csv")

    metrics = sorted({k for r in rows for k, v in r.items() if k.startswith(
        ("true_return", "heldout_accuracy", "reward_", "epic", "kl_to_ref", "proxy_return")
    ) and is_number(v)})
    cells = []
    for metric in metrics:
        cells.extend(aggregate(rows, AXES, metric, reps=reps))
    write_csv(out / "cells.csv", cells)
    files.append("cells.csv")

    figures: list[tuple[str, str]] = []
    policy_rows = [r for r in rows if not r["fit_only"]]
    fit_rows = [r for r in rows if r["fit_only"]]
    policy_cells = [c for c in cells if c["learner"] not in FIT_ONLY_LEARNERS]
    fit_cells = [c for c in cells if c["learner"] in FIT_ONLY_LEARNERS]
    written = plot_vs_budget(policy_cells, RETURN_METRIC, out, "return_vs_budget")
    if written:
        figures.append(("True return vs label budget", written[0]))
        files += written
    written = plot_vs_budget(fit_cells, ACCURACY_METRIC, out, "accuracy_vs_budget")
    if written:
        figures.append(("Held-out preference accuracy vs label budget (reward fit only)",
                        written[0]))
        files += written

    tables: list[tuple[str, list[dict[str, Any]]]] = []
    for name, subset, metric in (
        ("return", policy_rows, RETURN_METRIC), ("accuracy", fit_rows, ACCURACY_METRIC)
    ):
        table = assumption_table(subset, metric, reps=reps)
        if table:
            tables.append((name, table))
            write_csv(out / f"assumption_table_{name}.csv", table)
            files.append(f"assumption_table_{name}.csv")
            written = plot_assumption_table(table, out, f"assumption_table_{name}")
            figures.append((f"Label model × assumption ({name})", written[0]))
            files += written

    written = plot_kl_frontier(records, out, "kl_frontier")
    if written:
        figures.append(("True return vs KL to π_ref", written[0]))
        files += written
    written = plot_proxy_vs_true(records, out, "proxy_vs_true")
    if written:
        figures.append(("Proxy (learned) vs true reward during PPO", written[0]))
        files += written

    md = _summary_markdown(records, rows, cells, tables, figures, results_dir)
    atomic_write_text(out / "summary.md", md)
    files.append("summary.md")
    return {"runs": len(rows), "cells": len({tuple(r[k] for k in AXES) for r in rows}),
            "files": files}


def _summary_markdown(
    records: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    cells: Sequence[Mapping[str, Any]],
    tables: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    figures: Sequence[tuple[str, str]],
    results_dir: Any,
) -> str:
    sweeps = sorted({r.get("sweep", "") for r in records})
    seeds = sorted({r["seed"] for r in rows})
    n_cells = len({tuple(r[k] for k in AXES) for r in rows})
    scales = sorted({r["budget_scale"] for r in rows})
    lines = [
        f"# Sweep report: {', '.join(s for s in sweeps if s) or Path(results_dir).name}",
        "",
        f"{len(rows)} runs in {n_cells} cells; seeds {seeds}; budget scale {scales}.",
        "Aggregates are the interquartile mean (IQM) across seeds with a 95 % percentile-",
        "bootstrap interval (Agarwal et al. 2021). Fit-only cells (`rm_pr`, `rm_regret`)",
        "report held-out preference accuracy; policy learners report true return.",
        "Tables: [runs.csv](runs.csv) (one row per run), [cells.csv](cells.csv) (per cell).",
        "",
    ]
    if tables:
        lines += ["## Label model × learner assumption", ""]
        for _name, table in tables:
            by = {(r["label_model"], r["assumption"]): r for r in table}
            md_rows = []
            for model in LABEL_MODELS:
                row = {"labels from": model}
                for a in ASSUMPTIONS:
                    row[f"assumes {a}"] = fmt_ci(by[(model, a)]) if (model, a) in by else "—"
                md_rows.append(row)
            metric = table[0]["metric"]
            lines += [f"**{metric}** at {table[0]['label_budget']} labels "
                      "(pooled over tasks, noise and learners; bootstrap stratified by task):", ""]
            lines += [md_table(md_rows, list(md_rows[0])), ""]
    headline = [
        c for c in cells
        if c["metric"] == (ACCURACY_METRIC if c["learner"] in FIT_ONLY_LEARNERS else RETURN_METRIC)
    ]
    if headline:
        lines += ["## Headline metric per cell", ""]
        md_rows = [{**{k: c[k] for k in AXES}, "metric": c["metric"], "n": c["n"],
                    "IQM [95% CI]": fmt_ci(c)} for c in headline]
        lines += [md_table(md_rows, list(md_rows[0])), ""]
    if figures:
        lines += ["## Figures", ""]
        for title, png in figures:
            pdf = png[:-4] + ".pdf"
            lines += [f"### {title}", "", f"![{title}]({png})", "", f"[PDF]({pdf})", ""]
    failed = [r for r in rows if any(isinstance(v, float) and math.isnan(v) for v in r.values())]
    if failed:
        lines += [f"{len(failed)} run(s) have NaN metrics (see runs.csv).", ""]
    return "\n".join(lines)

