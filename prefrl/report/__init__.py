"""Reports on a sweep's result directory: a tidy CSV table, figures and a Markdown summary.

:func:`write_report` reads every valid record of ``RESULTS_DIR/runs/`` (see
:mod:`prefrl.sweeps`) and writes to ``OUT``:

* ``runs.csv`` — one row per run: the cell's axes, the seed and every scalar
  metric (the tidy table to load in pandas/R);
* ``cells.csv`` — one row per cell and metric: the number of seeds, the
  interquartile mean (IQM) across seeds and its 95 % percentile-bootstrap
  interval (Agarwal et al. 2021, "Deep RL at the edge of the statistical
  precipice", as ``rliable`` computes them);
* ``assumption_table.csv`` — the 2×2 *label model × learner assumption* table
  (which preference model labelled the data × which one the learner assumes);
* figures (PNG and PDF): the headline metric (true return; held-out accuracy
  for fit-only cells) against the label budget per learner and label model;
  the 2×2 table as a heat map; KL-to-π_ref vs true-return frontiers and
  proxy-vs-true reward curves when the records hold those metrics;
* ``summary.md`` — the tables in Markdown with links to the figures.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, so
importing or running this module never touches pyplot's global state.
"""


from prefrl.report.summary import write_report

__all__ = ["write_report"]
