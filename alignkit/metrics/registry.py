"""The metric registry that the CLI, all-pairs scoring and the property tests share."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from alignkit.errors import AlignkitError, unknown_key
from alignkit.metrics import alignability, cka, neighbours, rbf, svcca
from alignkit.metrics._engine import Engine


@dataclass(frozen=True)
class Metric:
    """One similarity metric with its defaults and the properties it promises.

    Attributes:
        name: registry key.
        function: the public function ``f(x, y, **options) -> float``.
        defaults: options the registry entry passes (all of them; they define the variant).
        description: one line for listings.
        symmetric: f(x, y) == f(y, x).
        invariances: transformations of either input that leave the score unchanged, from
            ``"rotation"`` (orthogonal), ``"scaling"`` (isotropic), ``"translation"``.
        chance: the analytic expected score under a random pairing, ``chance(n, options)``
            with the metric's full options (so mutual-kNN's k/(n-1) reads ``options["k"]``),
            where one exists; None otherwise (use the null: :meth:`chance_level` says NaN).
        label: readable name for tables and figures (``"linear CKA (unbiased)"``).
        row_groups: None when the score is invariant to any reordering of the rows; else
            ``row_groups(n, options)`` gives ``(n,)`` labels of row positions (the held-out
            metrics' folds) such that the score is invariant to reorderings that keep every
            position's label, and reordering across labels re-draws the split.
    """

    name: str
    function: Callable[..., float]
    defaults: Mapping[str, Any]
    description: str
    symmetric: bool = True
    invariances: frozenset[str] = frozenset()
    chance: Callable[[int, Mapping[str, Any]], float] | None = None
    engine: Engine = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    label: str = ""
    row_groups: Callable[[int, Mapping[str, Any]], Any] | None = field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name.replace("_", " "))

    def chance_level(self, n: int, **options: Any) -> float:
        """The analytic chance level at n rows with these options (defaults filled in), or NaN
        when the metric has none."""
        if self.chance is None:
            return math.nan
        return float(self.chance(n, self.options(**options)))

    @property
    def has_analytic_null(self) -> bool:
        """Whether exact permutation moments exist (the CKA family): see :func:`analytic_null`."""
        return self.engine is not None and self.engine.moments is not None

    def options(self, **overrides: Any) -> dict[str, Any]:
        """The defaults with ``overrides`` applied; an option it does not take is an error."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise AlignkitError(
                f"metric {self.name!r} takes options {sorted(self.defaults) or '(none)'}: "
                f"got {unknown}"
            )
        return {**self.defaults, **overrides}

    def __call__(self, x: Any, y: Any, **options: Any) -> float:
        return self.function(x, y, **self.options(**options))


_ALL = frozenset({"rotation", "scaling", "translation"})
_ABOUT_ORIGIN = frozenset({"rotation", "scaling"})
_HELD_OUT = MappingProxyType(
    {"folds": alignability.FOLDS, "dims": alignability.DIMS, "fold_seed": 0}
)
# the held-out closed-form fits: one variant of Metric, their shared settings given once
_HeldOutMetric = functools.partial(
    Metric,
    defaults=_HELD_OUT,
    invariances=_ALL,
    chance=alignability.chance,
    row_groups=alignability.row_groups,
)

METRICS: dict[str, Metric] = {
    "linear_cka": Metric(
        "linear_cka",
        cka.linear_cka,
        MappingProxyType({"unbiased": False}),
        "biased linear CKA (Kornblith et al. 2019), the reference code's estimator",
        invariances=_ALL,
        engine=cka.LINEAR_ENGINE,
        label="linear CKA (biased)",
    ),
    "linear_cka_unbiased": Metric(
        "linear_cka_unbiased",
        cka.linear_cka,
        MappingProxyType({"unbiased": True}),
        "linear CKA with Song et al. (2012) unbiased HSIC; about 0 for unrelated features",
        invariances=_ALL,
        engine=cka.LINEAR_ENGINE,
        label="linear CKA (unbiased)",
    ),
    "rbf_cka": Metric(
        "rbf_cka",
        rbf.rbf_cka,
        MappingProxyType({"sigma_scale": 1.0, "unbiased": False}),
        "RBF-kernel CKA, sigma^2 = median squared distance x sigma_scale^2",
        invariances=_ALL,
        engine=rbf.RBF_ENGINE,
        label="RBF CKA",
    ),
    "mutual_knn": Metric(
        "mutual_knn",
        neighbours.mutual_knn,
        MappingProxyType({"k": 10}),
        "mutual k-nearest-neighbour overlap of cosine neighbourhoods (Huh et al. 2024)",
        invariances=_ABOUT_ORIGIN,
        chance=lambda n, opts: neighbours.mutual_knn_chance(n, opts["k"]),
        engine=neighbours.MUTUAL_KNN_ENGINE,
        label="mutual kNN",
    ),
    "cknna": Metric(
        "cknna",
        neighbours.cknna,
        MappingProxyType({"k": 10}),
        "CKA restricted to mutual-neighbour pairs (Huh et al. 2024), as platonic-rep computes it",
        symmetric=False,
        invariances=_ABOUT_ORIGIN,
        engine=neighbours.CKNNA_ENGINE,
        label="CKNNA",
    ),
    "svcca": Metric(
        "svcca",
        svcca.svcca,
        MappingProxyType({"threshold": 0.99, "dims": None}),
        "mean canonical correlation after SVD reduction to 99% variance (Raghu et al. 2017)",
        invariances=_ALL,
        engine=svcca.SVCCA_ENGINE,
        label="SVCCA",
    ),
    "ridge_alignability": _HeldOutMetric(
        "ridge_alignability",
        alignability.ridge_alignability,
        description=(
            "held-out retrieval MRR of ridge both ways, GCV penalties (Hoerl & Kennard 1970)"
        ),
        engine=alignability.RIDGE_ENGINE,
        label="ridge (held-out MRR)",
    ),
    "procrustes_alignability": _HeldOutMetric(
        "procrustes_alignability",
        alignability.procrustes_alignability,
        description="held-out retrieval MRR of orthogonal Procrustes after PCA (Schönemann 1966)",
        engine=alignability.PROCRUSTES_ENGINE,
        label="Procrustes (held-out MRR)",
    ),
    "cca_alignability": _HeldOutMetric(
        "cca_alignability",
        alignability.cca_alignability,
        description="held-out retrieval MRR of regularised CCA: canonical ridge (Vinod 1976)",
        engine=alignability.CCA_ENGINE,
        label="CCA (held-out MRR)",
    ),
}
"""Registered metrics by name. Add a variant with a new entry (other defaults), not a branch."""


def get_metric(metric: str | Metric) -> Metric:
    """The registry entry of a name (a Metric passes through); unknown names list the choices."""
    if isinstance(metric, Metric):
        return metric
    try:
        return METRICS[metric]
    except (KeyError, TypeError):
        raise unknown_key("metric", str(metric), list(METRICS)) from None


def list_metrics() -> list[str]:
    """Registered metric names."""
    return sorted(METRICS)
