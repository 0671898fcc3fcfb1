"""Training on ``tfidf:`` (an encoder fitted on the texts it is given): one fit on the training
captions, kept in the run folder (``fits/text/``), and used for validation, test captions and
prompts, never a fit of their own (issue 19: the six TF-IDF pairs of the 42-pair grid)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import run_cli

import alignkit.features
from alignkit.encoders import create_encoder
from alignkit.encoders.base import Encoder, check_trainable
from alignkit.errors import AlignkitError
from alignkit.probes import load_probe

pytestmark = pytest.mark.real


def _sklearn_features(fit_texts: list[str], texts: list[str], dim: int) -> np.ndarray:
    """TF-IDF (sublinear tf, word 1-2 grams) + randomized truncated SVD fitted on the sorted
    ``fit_texts``, applied to ``texts``, zero-padded to ``dim`` and L2-normalised: written here
    from scikit-learn alone, independently of alignkit's encoder. ``(len(texts), dim)``."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))
    x = vec.fit_transform(sorted(fit_texts))
    k = min(dim, x.shape[1] - 1, x.shape[0] - 1)
    svd = TruncatedSVD(k, algorithm="randomized", n_iter=7, random_state=0).fit(x)
    out = np.zeros((len(texts), dim))
    out[:, :k] = svd.transform(vec.transform(texts))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def _all_captions(probe) -> list[str]:  # noqa: ANN001
    return [c for row in probe.rows for c in row.captions]


@pytest.fixture(scope="module")
def flickr(data_dir: Path) -> dict:
    load = dict(progress=False, data_dir=data_dir)
    return {
        "train": load_probe("flickr8k:train", n=200, **load),
        "dev": load_probe("flickr8k:dev", n=40, **load),
        "test": load_probe("flickr8k:test", n=30, **load),
    }


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every text extraction as ``(texts, features)``: what training and evaluation encoded."""
    seen: list[tuple] = []
    real = alignkit.features.extract_features

    def extract(encoder, probe, **kw):  # noqa: ANN001, ANN003, ANN202
        fs = real(encoder, probe, **kw)
        if getattr(encoder, "modality", None) == "text" or str(encoder).startswith("tfidf:"):
            policy = kw.get("caption_policy", "first")
            texts = _all_captions(probe) if policy == "all" else probe.captions(policy)
            seen.append((texts, fs.features.clone()))
        return fs

    monkeypatch.setattr(alignkit.features, "extract_features", extract)
    return seen


def _used(seen: list[tuple], texts: list[str]) -> torch.Tensor:
    hits = [f for t, f in seen if t == texts]
    assert hits, "these texts were never encoded"
    return hits[-1]


# -- a real run: fit once on the training captions, evaluate with that fit ----------------------
@pytest.mark.slow
def test_a_run_trains_and_evaluates_with_the_training_fit(flickr, spy, tmp_path):
    from alignkit.aligned import load_aligned, load_pair
    from alignkit.evaluation.evaluate import evaluate_pair
    from alignkit.evaluation.prompts import caption_probe
    from alignkit.training import TrainConfig, train_pair

    train, dev, test = flickr["train"], flickr["dev"], flickr["test"]
    fit_texts = _all_captions(train)
    cfg = TrainConfig(width=16, epochs=2, batch_size=64, patience=None)
    run = train_pair(
        "random:image-32", "tfidf:svd-64", train, cfg, tmp_path / "run", val=dev,
        device="cpu", progress=False,
    )  # fmt: skip
    folder = run.out_dir
    assert (folder / "fits" / "text" / "tfidf.json").is_file()
    recorded = json.loads((folder / "config.json").read_text())["text"]["weights"]
    fitted = create_encoder("tfidf:svd-64", device="cpu").fit(fit_texts)
    assert recorded == fitted.weights_identity()  # the corpus: every training caption

    # validation rows were encoded by the training fit
    val_texts = _all_captions(dev)
    want_val = _sklearn_features(fit_texts, val_texts, 64)
    np.testing.assert_allclose(_used(spy, val_texts).numpy(), want_val, atol=2e-6)

    # evaluation on another probe: the test captions through the fit read from the folder
    metrics = evaluate_pair(load_pair(folder), retrieval_probes=[test], device="cpu")
    assert metrics[f"retrieval/{test.name}/image_to_text_R@5"]["n"] == len(test)
    test_texts = caption_probe(test)[0].captions("first")
    used = _used(spy, test_texts).numpy()
    np.testing.assert_allclose(used, _sklearn_features(fit_texts, test_texts, 64), atol=2e-6)
    own_fit = _sklearn_features(test_texts, test_texts, 64)  # what a per-probe fit gives
    assert np.abs(used - own_fit).max() > 0.1

    # the notebook-facing model encodes raw strings with the same fit
    aligned = load_aligned(folder, device="cpu")
    assert aligned.text.weights_identity() == recorded
    np.testing.assert_allclose(aligned.text.encode(test_texts[:7]).numpy(), used[:7], atol=2e-6)

    # another run's fit in the folder: the fit's own message (retrain), not "install weights"
    from alignkit.training.folder import fit_folder

    shutil.rmtree(fit_folder(folder, "text"))
    create_encoder("tfidf:svd-64", device="cpu").fit(_all_captions(dev)).save_fit(
        fit_folder(folder, "text")
    )
    with pytest.raises(AlignkitError, match="does not belong to this run; retrain") as err:
        load_aligned(folder, device="cpu")
    assert "install" not in str(err.value)


# -- the saved fit -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(flickr, tmp_path_factory) -> tuple[Encoder, Path]:
    enc = create_encoder("tfidf:svd-64", device="cpu").fit(_all_captions(flickr["train"]))
    folder = tmp_path_factory.mktemp("fit")
    enc.save_fit(folder)
    return enc, folder


def test_a_saved_fit_loads_to_bitwise_the_same_features(flickr, saved):
    enc, folder = saved
    texts = _all_captions(flickr["test"]) + ["zzz qqq", "a dog"]  # an unknown text: zeros
    loaded = create_encoder("tfidf:svd-64", device="cpu").load_fit(folder)
    assert loaded.fitted and loaded.weights_identity() == enc.weights_identity()
    a, b = enc.encode(texts), loaded.encode(texts)
    assert torch.equal(a, b)
    assert torch.count_nonzero(b[-2]) == 0 and b[-1].norm() == pytest.approx(1.0)
    from alignkit.features.extract import fit_to_probe

    fit_to_probe(loaded, flickr["test"])  # an encoder already fitted is never refitted
    assert loaded.weights_identity() == enc.weights_identity()


def _one_line_error(fn, *needles: str) -> str:  # noqa: ANN001
    with pytest.raises(AlignkitError) as info:
        fn()
    text = str(info.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text
    return text


def test_a_damaged_or_foreign_fit_is_refused_in_one_line(saved, tmp_path):
    import shutil

    _, folder = saved

    def copy() -> Path:
        dest = tmp_path / f"fit{len(list(tmp_path.iterdir()))}"
        shutil.copytree(folder, dest)
        return dest

    def load(where: Path, spec: str = "tfidf:svd-64"):  # noqa: ANN202
        return lambda: create_encoder(spec, device="cpu").load_fit(where)

    gone = copy()
    (gone / "tfidf.safetensors").unlink()
    _one_line_error(load(gone), "tfidf.safetensors is missing")
    gone = copy()
    (gone / "tfidf.json").unlink()
    _one_line_error(load(gone), "tfidf.json is missing")
    bad = copy()
    data = bytearray((bad / "tfidf.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one changed byte of the SVD basis
    (bad / "tfidf.safetensors").write_bytes(bytes(data))
    _one_line_error(load(bad), "tfidf.safetensors does not match the sha256")
    bad = copy()
    body = json.loads((bad / "tfidf.json").read_text())
    body["terms"][0], body["terms"][1] = body["terms"][1], body["terms"][0]
    (bad / "tfidf.json").write_text(json.dumps(body))
    _one_line_error(load(bad), "vocabulary does not match")
    _one_line_error(load(folder, "tfidf:svd-32"), "tfidf.json holds a fit", "'dim': 64")
    unfitted = create_encoder("tfidf:svd-8", device="cpu")
    _one_line_error(lambda: unfitted.save_fit(tmp_path / "x"), "call encoder.fit")


def test_a_run_folder_without_its_fit_or_with_another_says_retrain(saved, flickr, tmp_path):
    from alignkit.training.folder import fit_folder, load_fit, save_fits

    enc, _ = saved
    run = tmp_path / "run"
    run.mkdir()
    fresh = create_encoder("tfidf:svd-64", device="cpu")
    _one_line_error(lambda: load_fit(run, fresh, enc.weights_identity()), "fits/text", "retrain")
    other = create_encoder("tfidf:svd-64", device="cpu").fit(_all_captions(flickr["dev"]))
    save_fits(run, [create_encoder("random:image-16", device="cpu"), other])
    assert sorted(p.name for p in (run / "fits").iterdir()) == ["text"]  # images: nothing
    assert fit_folder(run, "text").is_dir()
    _one_line_error(
        lambda: load_fit(run, create_encoder("tfidf:svd-64", device="cpu"), enc.weights_identity()),
        "not belong to this run",
        "retrain",
    )
    image = create_encoder("random:image-16", device="cpu")
    assert load_fit(run, image, "whatever") is image  # nothing to load: untouched


# -- which encoders can be trained -----------------------------------------------------------------
class _FittedNoSave(Encoder):
    """A test double: fitted on the texts it is given, but cannot keep its fit."""

    modality = "text"
    needs_fit = True
    dim = 2
    device = torch.device("cpu")
    name = "double:fitted"

    def _forward(self, batch):  # noqa: ANN001, ANN202
        return torch.zeros(len(batch), 2)

    def weights_identity(self) -> str:
        return "double"


def test_only_encoders_fitted_per_probe_that_cannot_keep_their_fit_are_refused():
    image = create_encoder("random:image-16")
    assert create_encoder("tfidf:svd-256").saves_fit and not _FittedNoSave().saves_fit
    check_trainable([image, create_encoder("tfidf:svd-256")])  # keeps its training fit
    check_trainable([image, create_encoder("random:text-12")])
    _one_line_error(
        lambda: check_trainable([image, _FittedNoSave()]),
        "double:fitted is fitted on the captions of each probe",
        "rank-encoders scores it",
    )


def test_an_unfitted_tfidf_in_a_hand_made_pair_is_refused(flickr):
    from alignkit.evaluation.evaluate import AlignedPair, evaluate_pair

    pair = AlignedPair("random:image-16", "tfidf:svd-8", lambda x: x, lambda x: x)
    _one_line_error(
        lambda: evaluate_pair(pair, retrieval_probes=[flickr["test"]], device="cpu"),
        "tfidf:svd-8",
        "run_dir=",
    )


# -- the cache: a per-probe fit and the training fit never share an entry ----------------------
def test_the_training_fit_and_a_per_probe_fit_have_their_own_cache_entries(flickr, saved, tmp_path):
    from alignkit.features import extract_features
    from alignkit.features.cache import FeatureCache, feature_key

    enc, _ = saved
    test = flickr["test"]
    store = FeatureCache(tmp_path / "cache")
    kw = dict(cache=store, device="cpu", progress=False, caption_policy="all")
    own = extract_features("tfidf:svd-64", test, **kw)  # as rank-encoders: fitted on the probe
    trained = extract_features(enc, test, **kw)
    assert own.provenance["cache_key"] != trained.provenance["cache_key"]
    per_probe = create_encoder("tfidf:svd-64", device="cpu").fit(_all_captions(test))
    assert feature_key(per_probe, test, "all") == own.provenance["cache_key"]
    assert feature_key(enc, test, "all") == trained.provenance["cache_key"]
    assert not torch.equal(own.features, trained.features)
    texts = _all_captions(test)
    np.testing.assert_allclose(
        trained.features.numpy(), _sklearn_features(_all_captions(flickr["train"]), texts, 64),
        atol=2e-6,
    )  # fmt: skip
    # read back in either order, each way finds its own entry
    again_own = extract_features("tfidf:svd-64", test, **kw)
    again_trained = extract_features(enc, test, **kw)
    assert torch.equal(again_own.features, own.features)
    assert torch.equal(again_trained.features, trained.features)


# -- the CLI, end to end ---------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_train_then_evaluate_a_tfidf_pair(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    run = tmp_path / "run"
    code, _, err = run_cli(
        ["train", "--quiet", "-v", "random:image-32", "-t", "tfidf:svd-32",
         "--probe", "flickr8k:train", "-n", "120", "--val", "flickr8k:dev", "--val-n", "30",
         "--epochs", "2", "--batch-size", "32", "--width", "8", "--device", "cpu",
         "--out", str(run)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert (run / "fits" / "text" / "tfidf.safetensors").is_file()
    evaluate = ["evaluate", "--quiet", "--run", str(run), "--retrieval", "flickr8k:test",
                "--zeroshot", "imagenet-samples", "--templates", "single", "-n", "12"]  # fmt: skip
    code, stdout, err = run_cli([*evaluate, "--out", str(tmp_path / "eval")], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["retrieval/flickr8k:test[n=12,seed=0]/image_to_text_R@5"]["n"] == 12
    assert metrics["zeroshot/imagenet-samples[n=12,seed=0]/top1"]["n"] == 12

    (run / "fits" / "text" / "tfidf.safetensors").unlink()
    code, stdout, err = run_cli([*evaluate, "--out", str(tmp_path / "eval2")], capsys)
    assert code == 1 and "Traceback" not in err + stdout
    assert "tfidf.safetensors is missing" in err and "retrain" in err


# -- predictivity: the TF-IDF pairs of the grid train too ------------------------------------------
@pytest.mark.slow
def test_a_predictivity_grid_trains_a_tfidf_pair_with_its_training_fit(
    data_dir, spy, tmp_path, monkeypatch
):
    from alignkit.evaluation.predictivity import PredictivityConfig, run_predictivity
    from alignkit.evaluation.prompts import caption_probe

    monkeypatch.setenv("ALIGNKIT_DATA_DIR", str(data_dir))
    cfg = PredictivityConfig(
        vision=("random:image-16",), text=("tfidf:svd-16", "random:text-12", "random:text-6"),
        score_n=40, train_n=48, val_probe=None, zeroshot=(), retrieval=("flickr8k:test",),
        eval_n=16, permutations=2, bootstrap=100,
        train={"width": 8, "epochs": 2, "batch_size": 16, "patience": None},
    )  # fmt: skip
    pair = ("random:image-16", "tfidf:svd-16")
    assert run_predictivity(cfg, tmp_path / "grid", device="cpu", only=[pair]) is None
    folder = tmp_path / "grid" / "pairs" / "random_image-16__tfidf_svd-16"
    assert (folder / "fits" / "text" / "tfidf.json").is_file()
    assert (folder / "metrics.json").is_file()
    train = load_probe("flickr8k:train", n=48, progress=False, data_dir=data_dir)
    fit_texts = _all_captions(train)
    recorded = json.loads((folder / "config.json").read_text())["text"]["weights"]
    assert recorded == create_encoder("tfidf:svd-16").fit(fit_texts).weights_identity()
    test = load_probe("flickr8k:test", n=16, progress=False, data_dir=data_dir)
    texts = caption_probe(test)[0].captions("first")
    np.testing.assert_allclose(
        _used(spy, texts).numpy(), _sklearn_features(fit_texts, texts, 16), atol=2e-6
    )
