"""Rank every vision x text encoder pair of a probe set: the main job of alignkit.

``rank_encoders`` loads a probe set, extracts (or reads from the cache) the features of every
encoder, scores every pair with each metric and its permutation null (``score_pairs``), and
returns a :class:`Ranking`: the long-form scores table, the ranking table (pairs ordered by the
primary metric, with their rank under every other metric), the agreement between metrics
(Kendall τ over the real pairs), the optional layer x layer results, and the run's metadata. The
same object draws every figure on a given matplotlib Axes and writes the run folder
(:meth:`Ranking.save`), so the CLI and the notebooks show the same things.

One idea per file:

    pipeline.py   rank_encoders: check the settings, load, extract, score -> Ranking
    extraction.py the features of one encoder of a run (from the cache when there)
    result.py     RankingResult (scores and the tables computed from them), LayerResult
    report.py     figures, the console table and summary.md of a result
    folder.py     the run folder: save and read
    api.py        Ranking: a RankingResult with report's and folder's functions as methods

Imports go one way, result <- report, folder <- api <- pipeline: a result never imports the
code that draws or writes it.
"""

from alignkit.config import RankConfig
from alignkit.ranking.api import Ranking
from alignkit.ranking.pipeline import check_probe_size, default_probe, rank_encoders
from alignkit.ranking.result import LayerResult, RankingResult

__all__ = [
    "LayerResult",
    "RankConfig",
    "Ranking",
    "RankingResult",
    "check_probe_size",
    "default_probe",
    "rank_encoders",
]
