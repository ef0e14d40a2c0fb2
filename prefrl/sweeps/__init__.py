"""Sweeps: a grid of experiment cells, a resumable result store, local and Ray execution.

No JAX in this package: :mod:`.spec` (the sweep file), :mod:`.store` (run
ids and records), :mod:`.execute` (planning and running); what a cell
computes is :mod:`prefrl.studies.cells`.

A sweep file (TOML) names a grid over

    task × label model × learner × oracle noise (β × ε) × label budget × segment length

plus the seeds to run in every cell, the data files of each task and shared
settings (training steps, network sizes …). A file may instead give several
sub-grids as ``[[grid]]`` tables (e.g. every noise level for the cheap
reward-fit cells, the clean labels only for the PPO cells); the sweep is the
union of their points, each once. A ``--set grid.AXIS=…`` override then
applies to every sub-grid::

    name = "tiny"
    seeds = [0, 1]                            # or a count: seeds = 5

    [grid]
    task = ["run"]
    label_model = ["partial_return"]          # the oracle that labels the queries
    learner = ["rm_pr", "rm_regret"]          # keys of prefrl.studies.cells.RUNNERS
    beta = [0.0]                              # oracle temperature (0: deterministic)
    epsilon = [0.0]                           # oracle mistake probability
    label_budget = [64]
    segment_length = [10]                     # ≤ the dataset's segment length

    [tasks.run]
    dataset = "../data/run.npz"               # relative to the sweep file
    expert = "../experts/run.npz"             # PPO checkpoint; V_E for the regret oracle

    [settings]                                # fields of ``Settings``
    reward_steps = 200

:func:`load_sweep` parses and validates such a file into frozen dataclasses
(:class:`SweepSpec`, :class:`CellConfig`, :class:`Settings`): an unknown key,
a bad value or a data file that does not exist raises :class:`SweepError`
naming the key or file *before* any run starts.

Learners (:data:`prefrl.studies.cells.RUNNERS`; the preference model each assumes is in
:data:`LEARNER_ASSUMPTION`):

* ``rm_pr`` / ``rm_regret`` — fit r̂ (partial return) or Â (regret) only;
  report held-out preference accuracy under both oracles and reward correlations;
* ``rm_pr+ppo`` / ``rm_regret+ppo`` — the same fit, then PPO on the learned
  function (``prefrl.loops.ppo``), optionally KL-regularised to a BC π_ref;
* ``cpl`` / ``dpo`` — CPL and contrastive DPO (``prefrl.loops.offline``): no RL.

Every cell draws its training queries uniformly from a fixed ~80 % of the
dataset's segments and labels them with its oracle (β, ε); the other
segments form held-out queries labelled without noise by every oracle (the
regret one needs the task's expert). Seed s of a cell uses
``PRNGKey(s)``: same cell and seed → same queries, labels and numbers.

Every run (one cell, one seed) has a run id derived deterministically from
the cell's configuration (data files by content), the seed and the budget
scale, and leaves one JSON record ``DIR/runs/<run id>.json``, written
atomically by the driver process and carrying a checksum of its own
content. :func:`run_sweep` with ``resume=True`` runs only the runs whose
record is missing or corrupt, so a sweep that is killed loses nothing it
finished.

The seeds of one cell are handed to its runner together, so a runner whose
learner is ``vmap``-able trains them in one compiled call (reward models,
CPL/DPO, BC; PPO's host-side environment loop runs seeds in turn). Cells run
in a process pool (``spawn`` start method: forking a process that has
initialised JAX's thread pools can deadlock) or as Ray tasks
(``ray_address``); the driver alone writes records, so both paths produce
the same store. Workers share a persistent XLA compilation cache in the
user's cache folder (``~/.cache/prefrl/jax`` or ``$PREFRL_JAX_CACHE``; never
in ``DIR``), so a resumed sweep does not pay compile time again.
"""

