"""The learner-assumption study's report: Markdown tables, the one-line JSON summary, files.

Reads the result of :func:`prefrl.studies.learner_assumption.run` (or its
JSON file): one 2 × 4 table per task (IQM [95 % CI]), the ψ-fit quality and
the settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefrl.io import atomic_write_json, atomic_write_text, jsonable
from prefrl.studies.learner_assumption_config import METRICS, RESULT_STEM

_HEADS = {"acc_pr": "acc vs PR labels", "acc_regret": "acc vs regret labels",
          "epic_r": "EPIC(·, r) ↓", "return": "true return",
          "speed_error": "speed error (m/s)"}
_LEARNER_NAMES = {"reward_ppo": "PR r̂ + PPO", "regret_sf_ppo": "regret r̂ (SF/GPI) + PPO",
                  "advantage_ppo": "Â + PPO (the mistake)",
                  "advantage_greedy": "Â greedy (AWR)"}


def _fmt(ci: Any, spec: str) -> str:
    if ci is None:
        return "—"
    point, low, high = ci
    return f"{point:{spec}} [{low:{spec}}, {high:{spec}}]"


def format_markdown(result: Mapping[str, Any], command: str = "") -> str:
    """One 2 × 4 table per task (IQM [95 % CI]), the ψ-fit quality, the settings."""
    cfg = result["config"]
    lines = [
        "# Label model × learner assumption (issue #13)", "",
        f"PPO: {result['ppo']['steps']:,} environment steps per run, β_KL = "
        f"{result['ppo']['kl_ref_coef']} (KL to π_ref = BC on the training segments; 0 = no "
        f"KL term), {result['ppo']['envs']} envs × {result['ppo']['rollout_steps']} steps, "
        f"{result['ppo']['epochs']} epoch(s). {cfg['seeds']} seeds (each resamples the held-out "
        f"segment half, {cfg['num_train']} training and {cfg['num_test']} held-out queries, "
        "and every initialisation). γ = " f"{cfg['discount']}. φ = {cfg['phi']}; "
        f"library Π {'with' if cfg['library_final'] else 'without'} the final expert.", "",
    ]
    for task in cfg["tasks"]:
        # In the configured order (a JSON file written with sorted keys loses it).
        rows = {f"{label}/{learner}": result["tables"][task][f"{label}/{learner}"]
                for label in cfg["labels"] for learner in cfg["learners"]}
        ref = result["reference"].get(task, {})
        extra = ["speed_error"] if any("speed_error" in r["iqm"] for r in rows.values()) else []
        heads = ["labels", "learner", *(_HEADS[m] for m in (*METRICS, *extra))]
        lines += [f"## {task}", "",
                  "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for name, row in rows.items():
            label, learner = name.split("/")
            vals = [_fmt(row["iqm"].get(m), ".3f" if m != "return" else ".1f")
                    for m in (*METRICS, *extra)]
            lines.append("| " + " | ".join([label, _LEARNER_NAMES[learner], *vals]) + " |")
        if ref:
            parts = [f"{k} {v['return']:.1f}" for k, v in ref.items()
                     if isinstance(v, Mapping) and "return" in v]
            lines += ["", "Reference returns (same evaluation): " + ", ".join(parts) + "."]
            if "library" in ref:
                lines += [f"Library Π ({len(ref['library'])}): " + ", ".join(ref["library"]) + "."]
        sf_rows = {n: r for n, r in rows.items() if n.endswith("/regret_sf_ppo")}
        if sf_rows:
            lines += ["", "ψ fit on held-out rollouts of Π (relative error of ψ vs Monte-Carlo "
                      "φ-returns; of w·ψ vs w·G relative to the spread of w·G) and the fraction "
                      "of segments with negative regret in the last training batch (GPI "
                      "inexact there):", "",
                      "| labels | ψ rel. error | value rel. error | negative-regret fraction |",
                      "|---|---|---|---|"]
            for name, row in sf_rows.items():
                vals = [_fmt(row["iqm"].get(m), ".3f") for m in
                        ("psi_rel_error", "value_rel_error", "negative_regret_fraction")]
                lines.append("| " + " | ".join([name.split("/")[0], *vals]) + " |")
        lines.append("")
    lines += [
        f"IQM [95 % bootstrap CI] over seeds. acc = held-out preference accuracy (ties "
        "excluded) of the learned score — Σ r̂, −regret_r̂ or Σ γ^t Â — against each oracle's "
        "labels (both Â rows share one Â). EPIC = distance of the function PPO optimises to the "
        "true reward (root x-velocity of s' standing in for the frame-averaged velocity); — "
        "for the greedy policy, which optimises no reward. True return: deterministic policy, "
        f"{cfg['eval_episodes']} episodes"
        + (f" of {cfg['eval_steps']} steps" if cfg["eval_steps"] else "") + ".",
    ]
    if command:
        lines += ["", "Produced by:", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def summary_line(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """The one JSON line the entry script ends with."""
    return {
        "study": RESULT_STEM, "out_dir": str(out_dir), "cells_run": result["cells_run"],
        "cells_skipped": result["cells_skipped"], "wall_s": round(result["wall_s"], 1),
        "ppo_steps": result["ppo"]["steps"], "kl_ref_coef": result["ppo"]["kl_ref_coef"],
        "iqm_return": {task: {name: (None if row["iqm"]["return"] is None
                                     else round(row["iqm"]["return"][0], 2))
                              for name, row in rows.items()}
                       for task, rows in result["tables"].items()},
    }


def write_report(result: Mapping[str, Any], out_dir: str | Path, command: str = "") -> list[Path]:
    """``OUT/learner_assumption.json`` and ``.md`` (atomic writes)."""
    out = Path(out_dir)
    return [atomic_write_json(out / f"{RESULT_STEM}.json", jsonable(result)),
            atomic_write_text(out / f"{RESULT_STEM}.md", format_markdown(result, command))]


__all__ = ["format_markdown", "summary_line", "write_report"]
