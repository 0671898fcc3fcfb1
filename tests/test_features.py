"""extract_features: shapes, provenance, caption policies, workers, bad input (tiny encoders)."""

from __future__ import annotations

import pytest
import torch
from test_features_support import HashTextEncoder, TinyImageEncoder, make_probe

import alignkit
from alignkit.encoders.base import Encoder
from alignkit.errors import AlignkitError
from alignkit.features import FeatureSet, extract_features
from alignkit.probes.base import ProbeRow, ProbeSet


@pytest.fixture
def probe(tmp_path):
    return make_probe(tmp_path / "img", 11)


def test_image_features_shape_ids_provenance(probe):
    enc = TinyImageEncoder()
    fs = extract_features(enc, probe, batch_size=4, num_workers=0, cache=False, progress=False)
    assert isinstance(fs, FeatureSet)
    assert fs.features.shape == (11, 16) and fs.features.dtype == torch.float32
    assert fs.features.device.type == "cpu"
    assert fs.ids == probe.ids
    assert enc.batch_sizes == [4, 4, 3]  # batches at fixed row offsets
    prov = fs.provenance
    assert prov["encoder"] == "tiny-image:conv" and prov["modality"] == "image"
    assert prov["weights"] == "seed=0" and prov["config"] == {"pooling": "default", "layer": "last"}
    assert prov["probe"] == "tiny-probe" and prov["probe_fingerprint"] == probe.fingerprint
    assert prov["alignkit_version"] == alignkit.__version__
    assert prov["caption_policy"] is None  # image encoders ignore captions
    assert prov["created"] and len(prov["cache_key"]) == 32
    # the batched pipeline gives what encoding each image on its own gives
    naive = torch.cat([enc.encode([row.load_image()]) for row in probe.rows])
    torch.testing.assert_close(fs.features, naive, rtol=1e-5, atol=1e-6)


def test_layered_features(probe):
    enc = TinyImageEncoder(layer="all")
    fs = extract_features(enc, probe, batch_size=5, num_workers=0, cache=False, progress=False)
    assert fs.features.shape == (2, 11, 16) and fs.layered and fs.n_layers == 2
    last = extract_features(
        TinyImageEncoder(), probe, batch_size=5, num_workers=0, cache=False, progress=False
    )
    torch.testing.assert_close(fs.features[1], last.features)


def test_worker_processes_give_the_same_features(probe):
    one = extract_features(
        TinyImageEncoder(), probe, batch_size=3, num_workers=0, cache=False, progress=False
    )
    two = extract_features(
        TinyImageEncoder(), probe, batch_size=3, num_workers=2, cache=False, progress=False
    )
    assert torch.equal(one.features, two.features)


def test_caption_policy_first_and_mean_against_naive(probe):
    enc = HashTextEncoder()
    first = extract_features(
        enc, probe, batch_size=4, caption_policy="first", cache=False, progress=False
    )
    naive_first = torch.cat([enc.encode([row.captions[0]]) for row in probe.rows])
    torch.testing.assert_close(first.features, naive_first)
    assert first.provenance["caption_policy"] == "first"

    mean = extract_features(
        enc, probe, batch_size=4, caption_policy="mean", cache=False, progress=False
    )
    assert mean.features.shape == (11, 12)
    naive_mean = []
    for row in probe.rows:  # encode each caption alone, then average by hand
        vectors = [enc.encode([c])[0] for c in row.captions]
        naive_mean.append(sum(vectors) / len(vectors))
    torch.testing.assert_close(mean.features, torch.stack(naive_mean), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mean.features, first.features)


def test_caption_policy_mean_with_uneven_caption_counts(tmp_path):
    base = make_probe(tmp_path, 5)
    rows = tuple(ProbeRow(r.id, r.image, r.captions[: 1 + i % 3]) for i, r in enumerate(base.rows))
    probe = ProbeSet("uneven", rows)
    enc = HashTextEncoder()
    fs = extract_features(
        enc, probe, batch_size=2, caption_policy="mean", cache=False, progress=False
    )
    for i, row in enumerate(rows):
        expected = torch.stack([enc.encode([c])[0] for c in row.captions]).mean(0)
        torch.testing.assert_close(fs.features[i], expected, rtol=1e-5, atol=1e-6)


def test_caption_policy_random_is_seeded_and_row_local(probe):
    enc = HashTextEncoder()
    a = extract_features(enc, probe, caption_policy="random", seed=1, cache=False, progress=False)
    b = extract_features(
        enc, probe, caption_policy="random", seed=1, batch_size=3, cache=False, progress=False
    )
    c = extract_features(enc, probe, caption_policy="random", seed=2, cache=False, progress=False)
    assert torch.equal(a.features, b.features)
    assert not torch.equal(a.features, c.features)
    assert a.provenance["seed"] == 1
    chosen = probe.captions("random", 1)
    for i, row in enumerate(probe.rows):  # every row got the probe's choice, encoded alone
        assert chosen[i] in row.captions
        torch.testing.assert_close(a.features[i], enc.encode([chosen[i]])[0])
    # the choice does not depend on the other rows: a subset picks the same captions
    sub = probe.subset([7, 2])
    s = extract_features(enc, sub, caption_policy="random", seed=1, cache=False, progress=False)
    torch.testing.assert_close(s.features, a.features[[7, 2]])
    # all captions get chosen across rows (not always the first)
    assert len({c == row.captions[0] for c, row in zip(chosen, probe.rows, strict=True)}) == 2


def test_progress_bar_shows_items_per_second_and_can_be_silenced(probe, capsys):
    extract_features(HashTextEncoder(), probe, batch_size=4, cache=False, progress=True)
    assert "item/s" in capsys.readouterr().err
    extract_features(HashTextEncoder(), probe, batch_size=4, cache=False, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer: got 0"),
        ({"num_workers": -1}, "num_workers must be None or an integer >= 0: got -1"),
        (
            {"caption_policy": "longest"},
            "unknown caption policy 'longest'; expected one of: all, first, mean, random",
        ),
        ({"cache": 3}, "cache must be True, False, a folder or a FeatureCache: got int"),
        ({"device": "meta"}, r"runs on cpu, but device='meta' was asked for"),
    ],
)
def test_bad_arguments_fail_with_one_line(probe, kwargs, match):
    enc = HashTextEncoder()
    with pytest.raises(AlignkitError, match=match) as info:
        extract_features(enc, probe, **{"cache": False, "progress": False, **kwargs})
    assert "\n" not in str(info.value)
    assert enc.calls == 0


def test_not_a_probe_and_empty_probe():
    with pytest.raises(AlignkitError, match="probe must be a ProbeSet .* got list"):
        extract_features(HashTextEncoder(), [1, 2], cache=False)
    with pytest.raises(AlignkitError, match="probe empty has no rows"):
        extract_features(HashTextEncoder(), ProbeSet("empty", ()), cache=False)


def test_empty_caption_fails_before_model_work(probe):
    rows = list(probe.rows)
    rows[3] = ProbeRow(rows[3].id, rows[3].image, ("a dog", "  "))
    enc = HashTextEncoder()
    with pytest.raises(AlignkitError, match=r"row 'row0003' needs one or more non-empty captions"):
        extract_features(enc, ProbeSet("p", tuple(rows)), cache=False, progress=False)
    assert enc.calls == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_names_row_and_file(probe, workers):
    bad = probe.rows[6].image
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(AlignkitError) as info:
        extract_features(
            TinyImageEncoder(),
            probe,
            batch_size=4,
            num_workers=workers,
            cache=False,
            progress=False,
        )
    message = str(info.value)
    assert "row 'row0006'" in message and str(bad) in message and "\n" not in message


def test_text_encoder_that_needs_fitting_is_fitted_on_every_caption(probe):
    from alignkit.encoders import create_encoder

    a = create_encoder("tfidf:svd-4", device="cpu")
    fs = extract_features(a, probe, batch_size=3, cache=False, progress=False)
    assert a.fitted and a.weights_identity().endswith(f":n={3 * len(probe)}")  # all captions
    b = create_encoder("tfidf:svd-4", device="cpu")
    other = extract_features(b, probe, batch_size=11, cache=False, progress=False)
    assert torch.equal(fs.features, other.features)  # independent of batching
    assert fs.provenance["weights"] == a.weights_identity()
    naive = a.encode([row.captions[0] for row in probe.rows])
    torch.testing.assert_close(fs.features, naive)


def test_workers_get_the_model_free_preprocessor_when_the_backend_has_one(probe, monkeypatch):
    from alignkit.features._work import _preprocess_fn

    enc = TinyImageEncoder()
    assert _preprocess_fn(enc) == enc.preprocess  # overrides preprocess itself: use it

    class Backend(TinyImageEncoder):
        preprocess = Encoder.preprocess  # the base one, which calls self._preprocessor

    backend = Backend()
    backend._preprocessor = TinyImageEncoder.preprocess.__get__(TinyImageEncoder())
    assert _preprocess_fn(backend) is backend._preprocessor
    fs = extract_features(backend, probe, batch_size=4, num_workers=0, cache=False, progress=False)
    ref = extract_features(enc, probe, batch_size=4, num_workers=0, cache=False, progress=False)
    assert torch.equal(fs.features, ref.features)
