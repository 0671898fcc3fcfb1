"""End to end on planted structure: rank_encoders must recover an order known by construction.

Three vision and two text encoders share one latent with strengths fixed by their specs
(tests/_planted.py), plus a random-features control on each side, on 60 rows of the built-in
synthetic probe. Whatever the metric, a pair whose two strengths are both at least those of
another pair (one strictly larger) must rank above it, and every control pair below every real
pair. The scores are computed by the real pipeline: probe, extraction, all-pairs scoring, nulls.
"""

from __future__ import annotations

import itertools

import pytest
from _planted import PlantedEncoder, register

from alignkit.config import RankConfig
from alignkit.encoders import BACKENDS, Backend
from alignkit.probes import load_probe
from alignkit.ranking import rank_encoders

# the share of each encoder's variance that is the shared latent (tests/_planted.py); these gaps
# keep the planted order at n = 60 for all four metrics over six latent seeds tried (smallest
# margin: mutual-kNN 0.007, i.e. 2 of 300 neighbours; linear CKA 0.05)
VISION = {"planted:image-0.95": 0.95, "planted:image-0.6": 0.6, "planted:image-0.2": 0.2}
TEXT = {"planted:text-0.95": 0.95, "planted:text-0.4": 0.4}
CONTROLS = ("random:image-8", "random:text-8")
METRICS = ("linear_cka_unbiased", "linear_cka", "mutual_knn", "rbf_cka")


@pytest.fixture(scope="module")
def ranking():
    probe = load_probe("synthetic", n=60, seed=0)
    register(probe)
    BACKENDS["planted"] = Backend("_planted", PlantedEncoder.__name__, "planted structure (test)")
    try:
        cfg = RankConfig(
            vision=(*VISION, CONTROLS[0]),
            text=(*TEXT, CONTROLS[1]),
            metrics=METRICS,
            permutations=19,
            subsamples=0,
            k=5,
            cache=False,
            extract_batch=32,
        )
        yield rank_encoders(cfg, probe=probe, progress=False)
    finally:
        del BACKENDS["planted"]


def test_controls_are_found_by_the_registry_and_rank_last(ranking) -> None:
    assert sorted(ranking.controls) == sorted(CONTROLS)
    table = ranking.table
    real, control = table[~table["control"]], table[table["control"]]
    assert len(real) == 6 and len(control) == 4 * 3 - 6
    strong = real[real["vision"].map(VISION) >= 0.6]  # at least 0.6 x 0.4 of shared variance
    for m in METRICS:
        assert strong[f"rank_{m}"].max() < control[f"rank_{m}"].min(), m
    for m in ("linear_cka_unbiased", "linear_cka"):  # CKA also puts the weakest pair above them
        assert real[f"rank_{m}"].max() < control[f"rank_{m}"].min(), m


@pytest.mark.parametrize("metric", METRICS)
def test_every_metric_recovers_the_planted_order(ranking, metric: str) -> None:
    table = ranking.table.set_index(["vision", "text"])
    pairs = [(v, t) for v in VISION for t in TEXT]
    checked = 0
    for a, b in itertools.permutations(pairs, 2):
        sa, sb = (VISION[a[0]], TEXT[a[1]]), (VISION[b[0]], TEXT[b[1]])
        if sa[0] >= sb[0] and sa[1] >= sb[1] and sa != sb:  # a dominates b by construction
            assert table.loc[a, metric] > table.loc[b, metric], (metric, a, b)
            checked += 1
    assert checked == 12  # 3 x 2 grid: every (dominating, dominated) couple was compared


def test_the_strongest_pair_is_first_and_significant(ranking) -> None:
    top = ranking.table.iloc[0]
    assert (top["vision"], top["text"]) == ("planted:image-0.95", "planted:text-0.95")
    assert top["linear_cka_unbiased_p"] < 1e-6  # the exact (analytic) null resolves small p
    knn = ranking.scores.query("metric == 'mutual_knn'").set_index(["vision", "text"])
    assert knn.loc[(top["vision"], top["text"]), "p"] == pytest.approx(1 / 20)  # 19 permutations
    tau = ranking.agreement()
    assert tau.attrs["n_pairs"] == 6 and tau.attrs["too_few"] is False
