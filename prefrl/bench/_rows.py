"""The row scheme of ``prefrl bench online`` and its regret grid (issue #24).

A row ``online-{labels}-{value}-{learner}-{budget}[-eps{ε}]`` names the labels
(``pr`` or ``regret``), the oracle's values (``true``, ``critic``: the expert's
V_E, ``mc``: Monte-Carlo), the learner (:data:`LEARNERS`) and the label budget;
:func:`parse_row` turns it into run settings and :func:`regret_grid_plan` lists
the mission's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HEADLINE_SEEDS = (0, 1, 2, 3, 4)
OTHER_SEEDS = (0, 1, 2)

#: Learners of the row scheme: (reward learner, policy learner, PPO overrides, stochastic labels).
LEARNERS: dict[str, tuple[str, str, dict[str, float], bool]] = {
    "rhat": ("rhat", "ppo", {}, False),  # r̂ by the partial-return loss, PPO on r̂
    "adv": ("advantage", "ppo", {}, False),  # Â (oracle's γ), PPO on Â as a reward
    "adv0": ("advantage", "ppo", {"discount": 0.0, "gae_lambda": 0.0}, False),  # PPO, γ = 0
    "greedy": ("advantage", "advantage_greedy", {}, False),  # an actor climbing Â
    "rfit": ("regret_critic", "ppo", {}, False),  # regret model, PPO's critic as V
    "rphi": ("potential", "ppo", {}, False),  # regret model, V learned as Φ; PPO on r̂
    "sf": ("regret_sf", "ppo", {}, False),  # regret model, V̂* by GPI over own snapshots' ψ
    "cpl": ("none", "cpl", {}, True),  # π fitted to the labels (stochastic labels)
}


def parse_row(row: str) -> dict[str, Any]:
    """A row ``online-{labels}-{value}-{learner}-{budget}[-eps{ε}]`` as run settings.

    ``labels``: ``pr`` (partial return) or ``regret`` (γ = 0.99); ``value``: ``true``
    (partial return), ``critic`` (the expert's V_E) or ``mc`` (Monte-Carlo values,
    ``prefrl.oracles_mc``); ``learner``: a key of :data:`LEARNERS`; ``eps``: a
    mistake probability (the noisy-teacher rows). E.g. ``online-regret-mc-rhat-1000``.
    """
    from prefrl import oracles

    parts = row.split("-")
    if len(parts) not in (5, 6) or parts[0] != "online":
        raise ValueError(f"row {row!r} is not online-{{labels}}-{{value}}-{{learner}}-{{budget}}")
    _, labels, value, learner, budget, *rest = parts
    if (labels, value) not in (("pr", "true"), ("regret", "critic"), ("regret", "mc")):
        raise ValueError(f"row {row!r}: labels/value must be pr-true, regret-critic or regret-mc")
    if learner not in LEARNERS:
        raise ValueError(f"row {row!r}: unknown learner {learner!r}; use one of {list(LEARNERS)}")
    mistake = 0.0
    if rest:
        if not rest[0].startswith("eps"):
            raise ValueError(f"row {row!r}: the sixth part must be eps<ε>")
        mistake = float(rest[0][3:])
    reward_learner, policy_learner, ppo_overrides, stochastic = LEARNERS[learner]
    oracle = dict(mistake_prob=mistake)
    if labels == "regret":
        oracle.update(model="regret", discount=0.99)
    if stochastic:
        oracle.update(temperature=1.0, temperature_mode="relative")
    config = dict(label_budget=int(budget), reward_learner=reward_learner,
                  policy_learner=policy_learner, oracle_value="mc" if value == "mc" else "critic")
    return {"config": config, "ppo": ppo_overrides, "oracle": oracles.OracleConfig(**oracle),
            "policy_config": None}


REGRET_GRID_TASKS = ("run", "target-speed", "run-backward")
PR_HEADLINE = "online-pr-true-rhat-1000"


def regret_grid_plan(tasks: Sequence[str], headline_regret_row: str,
                     best: dict[str, str] | None = None) -> list[tuple[str, str, int]]:
    """The mission's grid (issue #24): label model × learner at 1000 labels, noisy-teacher
    rows (ε = 0.1) and a label-budget curve (100 / 250) for each label model's best learner.

    ``headline_regret_row`` and ``best`` (``{"mc": learner, "critic": learner}``) are chosen
    on tuning seeds 10–11 before this runs. The two headline rows (``PR_HEADLINE`` and
    ``headline_regret_row``) get seeds 0–4, the others 0–2; headline rows run first.
    """
    parse_row(headline_regret_row)
    best = dict(best or {})
    head_value, head_learner = headline_regret_row.split("-")[2:4]
    best.setdefault(head_value, head_learner)
    for value in ("mc", "critic"):
        best.setdefault(value, "rhat")
    rows = [PR_HEADLINE] + [f"online-regret-{v}-{learner}-1000" for v in ("mc", "critic")
                            for learner in LEARNERS]
    rows += [f"{PR_HEADLINE}-eps0.1"] + [f"online-regret-{v}-{best[v]}-1000-eps0.1"
                                          for v in ("mc", "critic")]
    rows += [f"online-pr-true-rhat-{n}" for n in (100, 250)]
    rows += [f"online-regret-{v}-{best[v]}-{n}" for v in ("mc", "critic") for n in (100, 250)]
    headline = (PR_HEADLINE, headline_regret_row)
    out = [(t, r, s) for t in tasks for r in headline for s in HEADLINE_SEEDS]
    out += [(t, r, s) for t in tasks for r in rows if r not in headline for s in OTHER_SEEDS]
    return out


