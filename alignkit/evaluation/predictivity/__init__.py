"""Did the ranking predict the result? Score a grid of pairs, train each, evaluate, correlate.

    from alignkit.evaluation.predictivity import PredictivityConfig, run_predictivity
    result = run_predictivity(PredictivityConfig(vision=[...], text=[...]), "runs/pred")
    result.correlations      # one row per (pre-training metric, raw|z, post-training result)

* :mod:`.config`: :class:`PredictivityConfig` (the grid file's keys and the command's options);
* :mod:`.stages`: :func:`run_predictivity`, the run as named, resumable stages;
* :mod:`.tables`: the run and pair tables, rank correlations with intervals, the verdicts;
* :mod:`.decisions`: the seed noise and the decision accuracy of each metric;
* :mod:`.plot`: the figure.
"""

from __future__ import annotations

from alignkit.evaluation.predictivity.config import (
    CONTROL_PREFIXES,
    DEFAULT_RESULTS,
    FORMAT,
    PredictivityConfig,
    read_grid,
)
from alignkit.evaluation.predictivity.decisions import decisions_table, seed_noise
from alignkit.evaluation.predictivity.plan import Plan, make_plan
from alignkit.evaluation.predictivity.plot import plot_predictivity
from alignkit.evaluation.predictivity.stages import PredictivityResult, run_predictivity
from alignkit.evaluation.predictivity.tables import (
    MIN_PAIRS,
    correlate,
    pair_table,
    printable,
    seed_table,
    verdicts,
)

__all__ = [
    "CONTROL_PREFIXES",
    "DEFAULT_RESULTS",
    "FORMAT",
    "MIN_PAIRS",
    "Plan",
    "PredictivityConfig",
    "PredictivityResult",
    "correlate",
    "decisions_table",
    "pair_table",
    "make_plan",
    "plot_predictivity",
    "printable",
    "read_grid",
    "run_predictivity",
    "seed_noise",
    "seed_table",
    "verdicts",
]
