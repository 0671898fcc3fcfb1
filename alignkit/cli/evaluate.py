"""``alignkit evaluate`` (zero-shot, retrieval, human judgements of trained runs) and
``alignkit predictivity`` (did the ranking predict the trained result?)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Annotated

import typer

from alignkit.cli import app, silence_third_party_progress
from alignkit.cli._cache_option import CacheOpt, OldCacheDirOpt, cache_setting
from alignkit.errors import AlignkitError


def _keeps_log_level(command):
    """Put the ``alignkit`` logger's level back when ``command`` returns or raises, so that
    ``--quiet`` lasts for the command only (tests and notebooks call commands in-process)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        log = logging.getLogger("alignkit")
        level = log.level
        try:
            return command(*args, **kwargs)
        finally:
            log.setLevel(level)

    return wrapper


@app.command(
    "evaluate",
    help="Zero-shot classification, retrieval and human-judgement correlation of trained pairs."
    "\n\nWrites metrics.json (flat keys such as retrieval/flickr8k:test/image_to_text_R@5, each "
    "with n and the chance level; recalls as fractions) into each --run folder, or into --out, "
    "and prints a table (one column per run). Raw features come from the feature cache.",
)
@_keeps_log_level
def evaluate_command(
    run: Annotated[
        list[Path],
        typer.Option("--run", "-r", help="a training run folder (repeatable: compares runs)"),
    ],
    zeroshot: Annotated[
        list[str] | None,
        typer.Option(help="labelled probe for zero-shot classification (repeatable)"),
    ] = None,
    retrieval: Annotated[
        list[str] | None,
        typer.Option(help="captioned probe for image<->text retrieval, e.g. flickr8k:test"),
    ] = None,
    judgements: Annotated[
        Path | None,
        typer.Option(
            help="human judgements: a TSV of image, caption, score, or Flickr8k's "
            "ExpertAnnotations.txt / CrowdFlowerAnnotations.txt (CLIPScore protocol): Kendall "
            "tau-b/c and Spearman against the model's cosine"
        ),
    ] = None,
    judgements_probe: Annotated[
        str, typer.Option(help="the probe the --judgements images and captions come from")
    ] = "flickr8k",
    templates: Annotated[
        str, typer.Option(help="prompt templates: imagenet80, imagenet7, single, or a file")
    ] = "imagenet7",
    class_names: Annotated[
        Path | None,
        typer.Option(
            help="file of class names, one a line, in label order (overrides the probe's)"
        ),
    ] = None,
    allow_duplicate_class_names: Annotated[
        bool,
        typer.Option(
            "--allow-duplicate-class-names",
            help="accept two labels with one class name (their prompts are identical)",
        ),
    ] = False,
    n: Annotated[
        int | None, typer.Option("--n", "-n", help="evaluate on a seeded subsample of n rows")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="write metrics.json (and comparison.csv) here instead of into each run folder"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "cpu",
    cache: CacheOpt = None,
    cache_dir: OldCacheDirOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """``alignkit evaluate`` (its help is the decorator's)."""
    from alignkit.evaluation.evaluate import (
        check_retrieval_probe,
        check_zeroshot_probe,
        evaluate_pair,
        judgement_correlation,
        read_judgements,
    )
    from alignkit.evaluation.prompts import load_templates
    from alignkit.evaluation.runs import (
        check_run_folder,
        comparison_table,
        format_table,
        load_pair,
        write_metrics,
    )
    from alignkit.probes import load_probe
    from alignkit.probes.labels import check_class_names

    if quiet:
        silence_third_party_progress()
        logging.getLogger("alignkit").setLevel(logging.ERROR)  # put back by the decorator
    zeroshot, retrieval = list(zeroshot or []), list(retrieval or [])
    if not (zeroshot or retrieval or judgements):
        raise AlignkitError("nothing to evaluate: give --zeroshot, --retrieval or --judgements")
    names = {}
    for r in run:  # cheap checks first: every folder, every probe, the templates
        check_run_folder(r)
        names.setdefault(r.name, r)
    if len(names) != len(run):
        raise AlignkitError("--run folders must have distinct names (they label the table)")
    templates_list = load_templates(templates)
    cls = None
    if class_names is not None:
        if not class_names.is_file():
            raise AlignkitError(f"--class-names file not found: {class_names}")
        cls = [s.strip() for s in class_names.read_text(encoding="utf-8").splitlines() if s.strip()]
    dup = {"allow_duplicate_class_names": True} if allow_duplicate_class_names else {}
    try:  # a repeated class name: the library's advice in this command's words
        if cls is not None:
            check_class_names(cls, f"--class-names {class_names}", allow_duplicates=bool(dup))
        zs = [load_probe(p, n=n, progress=False, **dup) for p in zeroshot]
        for p in zs:
            check_zeroshot_probe(p, cls, bool(dup))
    except AlignkitError as e:
        words = "--allow-duplicate-class-names"
        raise AlignkitError(str(e).replace("allow_duplicate_class_names=True", words)) from None
    rt = [load_probe(p, n=n, progress=False) for p in retrieval]
    for p in rt:
        check_retrieval_probe(p)
    judged = None
    if judgements is not None:
        jprobe = load_probe(judgements_probe, progress=False)
        judged = (jprobe, read_judgements(judgements, jprobe))
    if out is not None and out.exists() and not out.is_dir():
        raise AlignkitError(f"--out {out} is a file; give a folder")

    setting = cache_setting(cache, cache_dir=cache_dir)
    cache = True if setting is None else setting
    results = {}
    for r in run:
        pair = load_pair(r)
        metrics = evaluate_pair(
            pair,
            zeroshot_probes=zs,
            retrieval_probes=rt,
            templates=templates_list,
            class_names=cls,
            allow_duplicate_class_names=allow_duplicate_class_names,
            cache=cache,
            device=device,
            progress=not quiet,
        )
        if judged is not None:
            metrics.update(
                judgement_correlation(
                    pair, judged[1], judged[0], cache=cache, device=device, name=judgements.name
                )
            )
        results[r.name] = metrics
    table = comparison_table(results)
    about = {"templates": templates, "zeroshot": zeroshot, "retrieval": retrieval, "n": n}
    if out is None:  # each run's own folder; every evaluation has finished before any write
        for r in run:
            write_metrics(r, results[r.name], about={**about, "run": str(r)})
    else:
        out.mkdir(parents=True, exist_ok=True)
        if len(run) == 1:
            write_metrics(out, results[run[0].name], about={**about, "run": str(run[0])})
        else:
            for r in run:
                write_metrics(out / r.name, results[r.name], about={**about, "run": str(r)})
    if len(run) > 1 and out is not None:
        from alignkit.evaluation.runs import atomic_write_text

        atomic_write_text(out / "comparison.csv", table.to_csv(index=False))
    typer.echo(format_table(table))


@app.command(
    "predictivity",
    help="Did the ranking predict the result? Score every pair of a grid, train each with one "
    "recipe, evaluate, and report Spearman/Kendall (bootstrap intervals over pairs) and "
    "leave-one-encoder-out rho of every pre-training metric against every result.",
)
def predictivity_command(
    grid: Annotated[
        Path,
        typer.Option(
            help="TOML/YAML/JSON grid: vision, text, probes, recipe (see docs/evaluation.md)"
        ),
    ],
    out: Annotated[Path, typer.Option(help="experiment folder (resumes when it exists)")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "cpu",
    cache: CacheOpt = None,
    cache_dir: OldCacheDirOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """``alignkit predictivity``: the CLI over :func:`alignkit.predictivity.run_predictivity`."""
    from alignkit.predictivity import read_grid, run_predictivity

    if quiet:
        silence_third_party_progress()
    setting = cache_setting(cache, cache_dir=cache_dir)
    config = read_grid(grid)
    result = run_predictivity(
        config,
        out,
        cache=True if setting is None else setting,
        device=device,
        progress=not quiet,
    )
    cols = [
        "pre",
        "kind",
        "post",
        "spearman",
        "spearman_low",
        "spearman_high",
        "kendall",
        "loeo_min",
        "rho_no_controls",
    ]
    typer.echo(result.correlations[cols].round(3).to_string(index=False))
    typer.echo(f"wrote {out / 'correlations.csv'}, {out / 'pairs.csv'}, {out / 'predictivity.png'}")
