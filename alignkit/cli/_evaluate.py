"""The body of ``alignkit evaluate`` as stages: check everything cheap, evaluate, write.

set-up     the config; every run folder (finished trained run, readable finite projector
           whose widths match config.json), templates, class names, probes; overlap of every
           probe with each run's training and validation rows; the output location
evaluate   each run on every probe (features from the cache, heads on CPU)
write      metrics.json merged in each run folder (or --out), comparison.csv; a write that
           still fails prints the results and one line saying what was not written and why
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from alignkit.cli._cache_option import with_old_cache_dir
from alignkit.errors import AlignkitError
from alignkit.evaluation.config import EvaluateConfig


@dataclass
class _Job:
    cfg: EvaluateConfig
    runs: list[Path]
    out: Path | None
    quiet: bool
    pairs: dict[str, Any] = field(default_factory=dict)
    zeroshot: list[Any] = field(default_factory=list)
    retrieval: list[Any] = field(default_factory=list)
    template_sources: dict[str, str] = field(default_factory=dict)  # zero-shot probe -> source
    class_names: list[str] | None = None
    judged: tuple[Any, Any] | None = None
    overlap: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)

    def destinations(self) -> dict[str, Path]:
        """Where each run's metrics.json goes."""
        if self.out is None:
            return {r.name: r for r in self.runs}
        if len(self.runs) == 1:
            return {self.runs[0].name: self.out}
        return {r.name: self.out / r.name for r in self.runs}


def evaluate(
    cfg_values: dict, runs: list[Path], config: Path | None, out: Path | None, cache_dir: Any,
    quiet: bool,
) -> None:  # fmt: skip
    """``alignkit evaluate`` (see the module docstring)."""
    from alignkit.cli._app import silence_third_party_progress

    if quiet:
        silence_third_party_progress()
        logging.getLogger("alignkit").setLevel(logging.ERROR)  # put back by the command
    job = _set_up(cfg_values, runs, config, out, cache_dir, quiet)
    results = {name: _evaluate_one(job, name) for name in job.pairs}
    _write(job, results)


# -- set-up ---------------------------------------------------------------------------------------
def _config(cfg_values: dict, config: Path | None, cache_dir: Any) -> EvaluateConfig:
    from alignkit.options import load_config

    base = load_config(config, EvaluateConfig) if config is not None else EvaluateConfig()
    cfg_values = with_old_cache_dir(cfg_values, cache_dir)
    return base.replace(**cfg_values)


def _set_up(
    cfg_values: dict, runs: list[Path], config: Path | None, out: Path | None, cache_dir: Any,
    quiet: bool,
) -> _Job:  # fmt: skip
    from alignkit._words import counted
    from alignkit.aligned import load_pair
    from alignkit.evaluation.evaluate import check_retrieval_probe, check_zeroshot_probe
    from alignkit.evaluation.overlap import check_overlap
    from alignkit.evaluation.prompts import load_templates, zeroshot_templates
    from alignkit.probes import load_probe
    from alignkit.probes.containers import check_columns_apply, column_options
    from alignkit.runs.trained import check_run_folder

    cfg = _config(cfg_values, config, cache_dir)
    if not (cfg.zeroshot or cfg.retrieval or cfg.judgements):
        raise AlignkitError("nothing to evaluate: give --zeroshot, --retrieval or --judgements")
    job = _Job(cfg, list(runs), out, quiet)
    configs = {}
    for r in runs:  # cheap checks first: every folder, every probe, the templates
        configs[r.name] = check_run_folder(r)
    if len(configs) != len(runs):
        raise AlignkitError("--run folders must have distinct names (they label the table)")
    if cfg.templates is not None:  # None: each probe's own, else imagenet7
        load_templates(cfg.templates)
    job.class_names = _class_names(cfg.class_names, cfg.allow_duplicate_class_names)
    load = {"n": cfg.n, "seed": cfg.seed, "progress": False, "skip_bad": cfg.skip_bad}
    dup = {"allow_duplicate_class_names": True} if cfg.allow_duplicate_class_names else {}
    check_columns_apply([*cfg.zeroshot, *cfg.retrieval], cfg)
    job.zeroshot = [
        load_probe(p, **load, **dup, **_names(p, job.class_names), **column_options(p, cfg))
        for p in cfg.zeroshot
    ]
    job.retrieval = [load_probe(p, **load, **column_options(p, cfg)) for p in cfg.retrieval]
    for p in job.zeroshot:
        check_zeroshot_probe(p, job.class_names, cfg.allow_duplicate_class_names)
        used, source = zeroshot_templates(p, cfg.templates)
        job.template_sources[p.name] = f"{source} ({counted(len(used), 'template')})"
    for p in job.retrieval:
        check_retrieval_probe(p)
    if cfg.judgements is not None:
        from alignkit.evaluation.evaluate import read_judgements

        jprobe = load_probe(cfg.judgements_probe, progress=False)
        job.judged = (jprobe, read_judgements(Path(cfg.judgements), jprobe))
    probes = [*job.zeroshot, *job.retrieval]
    for r in runs:
        job.overlap[r.name] = check_overlap(r, configs[r.name], probes, allow=cfg.allow_overlap)
    for name, dest in job.destinations().items():
        check_writable(dest, f"the metrics of {name}")
    for r in runs:  # the projector files: readable, finite, widths as config.json says
        job.pairs[r.name] = load_pair(r)
    return job


def _names(spec: str, class_names: list[str] | None) -> dict[str, list[str]]:
    """``class_names`` for loading a zero-shot probe from a path: a labelled manifest without
    captions (nor classnames.txt beside it) needs them to load; a named probe has its own."""
    from alignkit.probes.registry import NAMED_PROBES

    if class_names is None or spec.partition(":")[0] in NAMED_PROBES:
        return {}
    return {"class_names": class_names}


def _class_names(path: str | None, allow_duplicates: bool) -> list[str] | None:
    from alignkit.probes.labels import check_class_names

    if path is None:
        return None
    if path == "imagenet":
        from alignkit.probes.classnames import imagenet_class_names

        return list(imagenet_class_names())
    file = Path(path)
    if not file.is_file():
        raise AlignkitError(f"--class-names file not found: {file}")
    names = [s.strip() for s in file.read_text(encoding="utf-8").splitlines() if s.strip()]
    check_class_names(names, f"--class-names {file}", allow_duplicates=allow_duplicates)
    return names


def check_writable(folder: Path, what: str) -> None:
    """:func:`alignkit.runs.folder.check_writable`, and an unreadable metrics.json there is
    refused now (merging into it after the work would fail)."""
    from alignkit.runs.folder import check_writable as writable
    from alignkit.runs.metrics import METRICS_FILE, merged_metrics

    writable(folder, what)
    if (folder / METRICS_FILE).exists():
        merged_metrics(folder, {})


# -- evaluate -------------------------------------------------------------------------------------
def _evaluate_one(job: _Job, name: str) -> dict[str, Any]:
    from alignkit.evaluation.evaluate import evaluate_pair, judgement_correlation
    from alignkit.runs.metrics import stamp_metrics

    cfg, pair = job.cfg, job.pairs[name]
    metrics = evaluate_pair(
        pair,
        zeroshot_probes=job.zeroshot,
        retrieval_probes=job.retrieval,
        templates=cfg.templates,
        class_names=job.class_names,
        allow_duplicate_class_names=cfg.allow_duplicate_class_names,
        cache=cfg.cache,
        device=cfg.device,
        progress=not job.quiet,
        skip_bad=cfg.skip_bad,
    )
    if job.judged is not None:
        jprobe, judged = job.judged
        metrics.update(
            judgement_correlation(
                pair, judged, jprobe, cache=cfg.cache, device=cfg.device,
                name=Path(cfg.judgements).name,
            )
        )  # fmt: skip
    probes = [*job.zeroshot, *job.retrieval, *([job.judged[0]] if job.judged else [])]
    fingerprints = {p.name: p.fingerprint for p in probes}
    if cfg.judgements is not None and job.judged is not None:
        fingerprints[Path(cfg.judgements).name] = job.judged[0].fingerprint
    return stamp_metrics(metrics, fingerprints, overlap=job.overlap.get(name))


# -- write ----------------------------------------------------------------------------------------
def _write(job: _Job, results: dict[str, dict[str, Any]]) -> None:
    from alignkit._files import atomic_write_text
    from alignkit.evaluation.table import comparison_table, format_table
    from alignkit.runs.metrics import write_metrics

    cfg = job.cfg
    table = comparison_table(results)
    about = {
        "templates": job.template_sources or cfg.templates, "zeroshot": list(cfg.zeroshot),
        "retrieval": list(cfg.retrieval), "n": cfg.n, "allow_overlap": cfg.allow_overlap,
    }  # fmt: skip
    runs = {r.name: r for r in job.runs}
    target = None
    try:
        for name, dest in job.destinations().items():
            target = dest / "metrics.json"
            write_metrics(dest, results[name], about={**about, "run": str(runs[name])})
        if len(job.runs) > 1 and job.out is not None:
            target = job.out / "comparison.csv"
            atomic_write_text(target, table.to_csv(index=False))
    except OSError as exc:
        typer.echo(format_table(table) + _templates_note(job))
        raise AlignkitError(
            f"could not write {target}: {exc.strerror or exc}; the results above are not saved "
            "(free space or fix the folder's permissions, then run again)"
        ) from None
    typer.echo(format_table(table) + _templates_note(job))


def _templates_note(job: _Job) -> str:
    """Lines under the table saying which templates each zero-shot probe used."""
    return "".join(
        f"\nzero-shot templates on {name}: {source}"
        for name, source in job.template_sources.items()
    )
