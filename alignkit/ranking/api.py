"""The public :class:`Ranking`: a :class:`~alignkit.ranking.result.RankingResult` with its figures,
reports and run folder one method away. The methods only call :mod:`alignkit.ranking.report` and
:mod:`alignkit.ranking.folder`, which work on the result and never import this module, so the
import graph of ``ranking/`` has no circle: result <- report, folder <- api <- pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from alignkit.ranking import folder as folder_io
from alignkit.ranking import report
from alignkit.ranking.result import RankingResult

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes


class Ranking(RankingResult):
    """The result of :func:`~alignkit.ranking.rank_encoders`: tables, figures and the run folder.

    Attributes: as :class:`~alignkit.ranking.result.RankingResult` (``scores``, ``metric``,
    ``alpha``, ``layers``, ``metadata``, ``features``, ``probe``).
    """

    # -- figures and reports (alignkit.ranking.report) -----------------------------------------
    def plot_heatmap(self, metric: str | None = None, *, ax: Axes | None = None) -> Axes:
        """Vision x text heatmap of ``metric`` (default the primary); see ``plots.heatmap``."""
        return report.plot_heatmap(self, metric, ax=ax)

    def plot_agreement(self, *, ax: Axes | None = None) -> Axes:
        """Kendall τ between the metrics' rankings of the real pairs (see :meth:`agreement`)."""
        return report.plot_agreement(self, ax=ax)

    def plot_top_pairs(
        self, top: int = 10, *, metric: str | None = None, ax: Axes | None = None
    ) -> Axes:
        """Bar chart of the best pairs with their intervals and null means."""
        return report.plot_top_pairs(self, top, metric=metric, ax=ax)

    def plot_layers(self, vision: str, text: str, *, ax: Axes | None = None) -> Axes:
        """Layer x layer heatmap of one pair with its best cell and corrected p."""
        return report.plot_layers(self, vision, text, ax=ax)

    def format_table(self, top: int = 10) -> str:
        """A readable fixed-width table of the best pairs (for the console)."""
        return report.format_table(self, top)

    def summary(self, top: int = 10) -> str:
        """A short markdown report of the run, to paste into a lab notebook."""
        return report.summary(self, top)

    # -- files (alignkit.ranking.folder) -------------------------------------------------------
    def save(
        self,
        out_dir: str | Path,
        *,
        overwrite: bool = False,
        formats: Sequence[str] | None = None,
    ) -> Path:
        """Write the run folder (tables, figures, ``summary.md``, ``run.json``); returns it.

        ``formats``: of the heatmaps, e.g. ``("png", "svg")``; default PNG, plus SVG when the
        run was made with ``svg=True``. The other figures are PNG.

        Written atomically (:class:`alignkit.runs.RunFolder`): a failure leaves an earlier run in
        ``out_dir`` untouched; a folder holding another run is replaced only with
        ``overwrite=True``; a non-empty folder that is not a run folder is never replaced.
        """
        return folder_io.save(self, out_dir, overwrite=overwrite, formats=formats)

    @classmethod
    def load(cls, folder: str | Path, *, features: bool = False) -> Ranking:
        """Read a run folder written by :meth:`save` (scores, metadata and layer scores);
        ``features=True`` also brings back the probe and the features (from the feature cache)
        that :meth:`neighbours` needs."""
        return cls(**folder_io.read(folder, features=features))
