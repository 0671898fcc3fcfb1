"""The printed comparison of evaluated runs: one row per metric key, one column per run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OVERLAP_MARK = "*"


def comparison_table(results: Mapping[str, Mapping[str, Any]]) -> Any:
    """A pandas DataFrame: one row per metric key with ``n``, ``chance``, ``overlap`` (the runs,
    comma-separated, whose number for that key was computed on rows that overlap the run's
    training or validation rows; empty when none), then one column per run."""
    import pandas as pd

    keys = list(dict.fromkeys(k for metrics in results.values() for k in metrics))
    rows = []
    for key in keys:
        first = next(m[key] for m in results.values() if key in m)
        row = {"metric": key, "n": first.get("n"), "chance": first.get("chance")}
        row["overlap"] = ",".join(
            run
            for run, metrics in results.items()
            if key in metrics and metrics[key].get("overlap")
        )
        for run, metrics in results.items():
            row[run] = metrics[key]["value"] if key in metrics else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table: Any) -> str:
    """Plain-text table: recalls and accuracies in %, ranks and correlations as numbers; a
    number computed on rows that overlap the run's training rows is marked ``*`` and a note
    under the table says so."""

    def fmt(key: str, value: Any) -> str:
        if value is None or value != value:  # NaN
            return "-"
        if key.endswith("_rank"):
            return f"{value:.1f}"
        if key.startswith("judgements/"):
            return f"{value:.3f}"
        return f"{100 * value:.1f}%"

    runs = [c for c in table.columns if c not in ("metric", "n", "chance", "overlap")]
    header = ["metric", "n", "chance", *runs]
    marked = False
    lines = []
    for _, r in table.iterrows():
        overlapping = set(str(r.get("overlap", "") or "").split(",")) - {""}
        marked = marked or bool(overlapping)
        lines.append(
            [str(r["metric"]), str(r["n"]), fmt(r["metric"], r["chance"])]
            + [fmt(r["metric"], r[c]) + (OVERLAP_MARK if c in overlapping else "") for c in runs]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def join(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [join(header), *(join(line) for line in lines)]
    if marked:
        out.append(
            f"{OVERLAP_MARK} computed on rows that overlap the run's training or validation rows "
            "(allowed with --allow-overlap): not a held-out number"
        )
    return "\n".join(out)


__all__ = ["comparison_table", "format_table"]
