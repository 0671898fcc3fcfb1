"""All-pairs scoring of vision x text encoders (issue #4 fills in ``score_pairs``).

The scores table is long-form, one row per (vision, text, metric, vision_layer, text_layer),
with exactly the columns in :data:`SCORE_COLUMNS`:

=============  =====================================================================
vision, text   encoder spec strings
metric         key of :data:`alignkit.metrics.METRICS`
score          the metric on the true pairing
null_mean      mean of the metric over permutations of the pairing (NaN if none run)
null_std       standard deviation of that null
z              (score - null_mean) / null_std
p              (1 + #null >= score) / (B + 1)
ci_low/high    interval from repeated subsampling of rows without replacement
chance         analytic chance level where one exists (mutual-kNN: k / (n - 1)), else NaN
n              probe rows scored
k              neighbourhood size for neighbourhood metrics, else NaN
vision_layer   layer index of the vision features (-1 = last / not layer-wise)
text_layer     likewise for text
options        JSON of the metric's other options
=============  =====================================================================
"""

from __future__ import annotations

SCORE_COLUMNS: tuple[str, ...] = (
    "vision",
    "text",
    "metric",
    "score",
    "null_mean",
    "null_std",
    "z",
    "p",
    "ci_low",
    "ci_high",
    "chance",
    "n",
    "k",
    "vision_layer",
    "text_layer",
    "options",
)
