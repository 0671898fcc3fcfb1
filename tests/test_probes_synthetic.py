"""The built-in synthetic probe: deterministic, lazy, picklable, and its captions say what
is drawn."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from alignkit.probes import load_probe
from alignkit.probes.synthetic import BACKGROUNDS, COLORS, SHAPES, make_scene, render_scene


@pytest.fixture(scope="module")
def probe():
    return load_probe("synthetic", n=40, seed=3)


def _pixels(row) -> np.ndarray:
    return np.asarray(row.load_image())


def test_shape_size_and_default_length(probe) -> None:
    img = probe.rows[0].load_image()
    assert img.size == (224, 224) and img.mode == "RGB"
    assert len(load_probe("synthetic")) == 1000
    assert {len(r.captions) for r in probe} == {3}
    assert probe.rows[0].id == "synthetic-000000"


def test_same_seed_identical_other_seed_differs(probe) -> None:
    again = load_probe("synthetic", n=40, seed=3)
    assert again.captions("first") == probe.captions("first")
    assert again.fingerprint == probe.fingerprint
    for a, b in zip(probe.rows[:5], again.rows[:5], strict=True):
        assert np.array_equal(_pixels(a), _pixels(b))
    other = load_probe("synthetic", n=40, seed=4)
    assert other.captions("first") != probe.captions("first")
    assert other.fingerprint != probe.fingerprint
    assert not np.array_equal(_pixels(other.rows[0]), _pixels(probe.rows[0]))


def test_prefix_property(probe) -> None:
    small = load_probe("synthetic", n=15, seed=3)
    assert small.ids == probe.ids[:15]
    assert [r.digest for r in small] == [r.digest for r in probe.rows[:15]]
    assert small.fingerprint != probe.fingerprint


def test_attributes_vary(probe) -> None:
    attrs = [r.attributes for r in load_probe("synthetic", n=300, seed=0)]
    assert {a["shape"] for a in attrs} == set(SHAPES)
    assert {a["size"] for a in attrs} == {"small", "medium", "large"}
    assert {a["background"] for a in attrs} == set(BACKGROUNDS)
    assert len({a["color"] for a in attrs}) == len(COLORS)
    assert {a["count"] for a in attrs} == {1, 2, 3, 4, 5}
    assert len({a["position"] for a in attrs}) == 10  # 9 grid positions + "scattered"


def _nearest(rgb, palette: dict) -> str:
    return min(
        palette, key=lambda name: np.linalg.norm(np.subtract(palette[name], rgb, dtype=float))
    )


def test_captions_describe_what_is_drawn(probe) -> None:
    count_words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
    for row in probe:
        a = row.attributes
        first = row.captions[0]
        for word in (a["color"], a["shape"], a["size"], a["background"]):
            assert word in first, (word, first)
        if a["count"] == 1:
            assert first.startswith(("a ", "an ")) and "one" in row.captions[1]
        else:
            assert first.startswith(count_words[a["count"]] + " ")
        assert len(a["objects"]) == a["count"]
        pixels = _pixels(row)
        # read back the drawn colour at every shape's centre, and the background at a corner
        for x, y, _r in a["objects"]:
            centre = pixels[int(round(y)), int(round(x))]
            assert _nearest(centre, COLORS) == a["color"], (row.id, centre, first)
            assert np.abs(centre.astype(int) - COLORS[a["color"]]).max() <= 2
        corner = pixels[1:4, 1:4].reshape(-1, 3).mean(0)
        assert _nearest(corner, BACKGROUNDS) == a["background"], (row.id, corner, first)


def test_edges_are_antialiased(probe) -> None:
    row = next(r for r in probe if r.attributes["shape"] == "circle")
    x, y, r = row.attributes["objects"][0]
    line = _pixels(row)[int(round(y)), int(x + r - 3) : int(x + r + 3)].astype(
        int
    )  # across the rim
    fill, inside = np.asarray(COLORS[row.attributes["color"]]), line[0]
    assert np.abs(inside - fill).max() <= 2
    # at least one rim pixel is a blend: neither the fill nor the background next to it
    blends = [
        p for p in line[1:-1] if np.abs(p - fill).max() > 8 and np.abs(p - line[-1]).max() > 8
    ]
    assert blends


@pytest.mark.slow  # torch import and two forked DataLoader workers
def test_rows_pickle_and_render_in_forked_workers(probe) -> None:
    torch = pytest.importorskip("torch")
    rows = probe.rows[:6]
    back = pickle.loads(pickle.dumps(rows))
    assert np.array_equal(np.asarray(back[2].load_image()), _pixels(rows[2]))

    class _Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return torch.from_numpy(np.asarray(rows[i].load_image()).copy())

    loader = torch.utils.data.DataLoader(
        _Images(), batch_size=3, num_workers=2, multiprocessing_context="fork"
    )
    got = torch.cat(list(loader)).numpy()
    want = np.stack([np.asarray(render_scene(make_scene(3, i))) for i in range(6)])
    assert np.array_equal(got, want)
