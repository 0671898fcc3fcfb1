"""One run of a predictivity grid: train the recipe for a pair and a seed into its folder, name
its encoders, evaluate it and write its metrics (the pairs stage of
:mod:`alignkit.evaluation.predictivity.stages` calls :func:`train_and_evaluate` for every run
that is not finished); where that run lives (:func:`run_folder`) and the stage key its metrics
carry (:func:`run_key`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignkit.evaluation.predictivity.config import PredictivityConfig

if TYPE_CHECKING:
    from alignkit.evaluation.predictivity.stages import _Run

EVAL_FIELDS = (
    "zeroshot", "retrieval", "eval_n", "templates", "train", "train_probe", "train_n",
    "val_probe", "val_n", "train_captions", "seed",
)  # fmt: skip


def pair_folder(out: Path, vision: str, text: str) -> Path:
    def s(x: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in x)

    return out / "pairs" / f"{s(vision)}__{s(text)}"


def run_folder(out: Path, config: PredictivityConfig, vision: str, text: str, seed: int) -> Path:
    """Where the run of ``seed`` trains: the pair folder for the first seed
    (:attr:`~.config.PredictivityConfig.first_seed`), ``seed-<s>/`` inside it for an extra one."""
    folder = pair_folder(out, vision, text)
    return folder if seed == config.first_seed else folder / f"seed-{seed}"


def run_key(config: PredictivityConfig, seed: int) -> str:
    """The evaluation stage key of the run of ``seed`` (the first seed's is the one pair folders
    always had)."""
    key = config.stage_key(*EVAL_FIELDS)
    return key if seed == config.first_seed else f"{key}-seed-{seed}"


def train_and_evaluate(run: _Run, v: str, t: str, seed: int) -> dict[str, Any]:
    """One run: train the recipe with ``seed`` into its folder, name its encoders, evaluate,
    write metrics. A text encoder fitted on its texts (``tfidf:``) is fitted once on every
    caption of the training probe (:meth:`_Run.encoder`); the fit is saved in the folder
    (``fits/text/``) before training, and evaluation encodes with the fit read back from it."""
    from alignkit.evaluation.evaluate import AlignedPair, evaluate_pair
    from alignkit.features.paired import ids_apart
    from alignkit.runs.metrics import write_metrics
    from alignkit.runs.trained import write_run_config
    from alignkit.training import train_projector
    from alignkit.training.folder import save_fits

    config, folder = run.config, run_folder(run.out, run.config, v, t, seed)
    key = run_key(config, seed)
    vision, text = run.encoder(v), run.encoder(t)  # a needs_fit one: fitted on training captions
    folder.mkdir(parents=True, exist_ok=True)
    save_fits(folder, (vision, text))
    train = _paired(run, run.probes["train"], v, t)
    val = _paired(run, run.probes["val"], v, t) if run.probes["val"] is not None else None
    val = ids_apart(train, val)  # disjoint sets (checked at load) whose keys merely coincide
    recipe = replace(config.train_config(), seed=seed)  # the first seed: the recipe as it is
    result = train_projector(
        recipe, train, val, out_dir=folder, device=run.device, progress=run.progress
    )
    model = result.model.to("cpu").eval()
    write_run_config(
        folder,
        vision,
        text,
        dims=(train.image_dim, train.text_dim),
        train_config=recipe.to_dict(),
        extra=_probe_records(run),
    )
    pair = AlignedPair(
        vision, _from_folder(folder, text, run.device), model.encode_image, model.encode_text,
        name=f"{v} x {t}",
    )  # fmt: skip
    metrics = evaluate_pair(
        pair,
        zeroshot_probes=run.probes["zeroshot"],
        retrieval_probes=run.probes["retrieval"],
        templates=config.templates,
        cache=run.cache,
        device=run.device,
        progress=run.progress,
    )
    about = {"command": "predictivity", "stage_key": key, "vision": v, "text": t, "seed": seed}
    keyed = {k: {**value, "stage_key": key} for k, value in metrics.items()}
    write_metrics(folder, keyed, about={**about, "train_steps": result.steps})
    return keyed


def _from_folder(folder: Path, encoder: Any, device: str) -> Any:
    """An encoder fitted on its training texts, rebuilt from the fit saved in the run ``folder``
    (as ``alignkit evaluate`` will): test captions and prompts are encoded by that file, which
    must give ``encoder``'s weights identity. Other encoders are returned as they are."""
    if not getattr(encoder, "needs_fit", False):
        return encoder
    from alignkit.encoders import create_encoder
    from alignkit.training.folder import load_fit

    return load_fit(folder, create_encoder(encoder.name, device=device), encoder.weights_identity())


def _probe_records(run: _Run) -> dict[str, Any]:
    """The training and validation probes as config.json records them (so that ``evaluate``
    can refuse to evaluate a pair on its own training rows)."""

    def record(probe: Any, spec: str) -> dict[str, Any]:
        return {"spec": spec, "name": probe.name, "n": len(probe), "fingerprint": probe.fingerprint}

    val = run.probes["val"]
    return {
        "probe": record(run.probes["train"], run.config.train_probe),
        "val": None if val is None else record(val, str(run.config.val_probe)),
    }


def read_stage_json(path: Path, key: str) -> dict[str, Any] | None:
    """The metrics a pair folder holds from the predictivity evaluation with stage ``key``, or
    ``None`` (the pair files of earlier versions keep the key at the top level)."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if "format" not in data:  # an earlier version's pair file
        return data["metrics"] if data.get("stage_key") == key else None
    mine = {k: v for k, v in data.get("metrics", {}).items() if v.get("stage_key") == key}
    return mine or None


def _paired(run: _Run, probe: Any, v: str, t: str) -> Any:
    from alignkit.evaluation.prompts import caption_probe
    from alignkit.training import PairedFeatures

    image = run.features(v, probe)
    if run.config.train_captions == "all":
        captions, index = caption_probe(probe)
        text = run.features(t, captions)
        t2i = torch.tensor(index, dtype=torch.long)
    else:
        text = run.features(t, probe)
        t2i = torch.arange(len(probe), dtype=torch.long)
    return PairedFeatures(image, text, t2i, list(probe.ids))
