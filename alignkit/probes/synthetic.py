"""The built-in ``synthetic`` probe: procedurally rendered scenes and captions generated from the
same scene description.

Each row is one scene: ``count`` identical shapes (circle, square, triangle, star, hexagon,
diamond, cross) of one ``color`` and ``size`` on a ``background``; a single shape also has a
``position`` in a 3x3 grid ("top left", ..., "centre", ...). The scene is drawn with PIL at 4x and
box-downsampled to 224x224 (antialiased edges, flat interiors), over a lightly shaded, grainy
background with a soft shadow under each shape. Three captions describe the scene in different
words; the first names every attribute.

Row ``i`` depends only on ``(seed, i)``, so ``n=500`` rows are the first 500 of ``n=1000``, and the
same seed gives identical pixels and captions on every machine. Images are rendered lazily by a
picklable :class:`SceneImage` (it works in forked or spawned DataLoader workers); the scene
attributes are kept in ``row.attributes`` so analyses can ask which attributes an encoder pair
agrees on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from alignkit.probes.raw import Entry, RawProbe

RENDER_VERSION = "synthetic-v2"
IMAGE_SIZE = 224
_SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross")
_PLURALS = {"cross": "crosses"}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (40, 160, 60),
    "blue": (35, 95, 215),
    "yellow": (245, 208, 35),
    "orange": (250, 130, 20),
    "purple": (130, 55, 180),
    "pink": (245, 125, 195),
    "brown": (135, 82, 40),
    "white": (250, 250, 250),
    "black": (18, 18, 18),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (236, 236, 230),
    "grey": (128, 128, 128),
    "black": (28, 28, 32),
    "beige": (226, 208, 170),
    "dark blue": (22, 36, 86),
    "light green": (172, 214, 160),
    "sky blue": (150, 196, 236),
}
SIZES: dict[str, float] = {"small": 0.085, "medium": 0.14, "large": 0.22}  # radius / image side
MAX_COUNT = {"small": 5, "medium": 4, "large": 2}
POSITIONS: dict[str, tuple[float, float]] = {  # (x, y) as fractions of the side
    "top left": (1 / 6, 1 / 6),
    "top": (0.5, 1 / 6),
    "top right": (5 / 6, 1 / 6),
    "left": (1 / 6, 0.5),
    "centre": (0.5, 0.5),
    "right": (5 / 6, 0.5),
    "bottom left": (1 / 6, 5 / 6),
    "bottom": (0.5, 5 / 6),
    "bottom right": (5 / 6, 5 / 6),
}
_POSITION_PHRASES = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five")
_MIN_CONTRAST = 140.0  # Euclidean RGB distance between a shape and its background


@dataclass(frozen=True)
class Scene:
    """One scene. ``objects`` holds each shape's centre and radius in pixels of the 224x224
    image, ``(x, y, r)``; ``position`` is ``"scattered"`` when ``count > 1``."""

    shape: str
    color: str
    size: str
    count: int
    position: str
    background: str
    objects: tuple[tuple[float, float, float], ...]
    grain_seed: int

    def _fields(self) -> dict:  # dataclasses.asdict deep-copies: too slow for 10^5 rows
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "count": self.count,
            "position": self.position,
            "background": self.background,
            "objects": [list(o) for o in self.objects],
        }

    def attributes(self) -> dict:
        return self._fields()

    def digest(self) -> str:
        blob = [RENDER_VERSION, IMAGE_SIZE, self._fields(), self.grain_seed]
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return math.dist(a, b)


class _Draws:
    """A counter-based random stream: draw ``k`` of row ``index`` is sha256 of ``(seed, index, k)``.
    Unlike numpy's ``Generator`` methods, whose algorithms may change between numpy versions, this
    gives the same scenes on every machine and every version."""

    def __init__(self, seed: int, index: int) -> None:
        self.key, self.k = f"alignkit-synthetic\x00{int(seed)}\x00{int(index)}\x00", 0

    def random(self) -> float:  # uniform in [0, 1)
        digest = hashlib.sha256(f"{self.key}{self.k}".encode()).digest()
        self.k += 1
        return int.from_bytes(digest[:7], "big") / 2.0**56

    def below(self, n: int) -> int:
        return min(int(self.random() * n), n - 1)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def permutation(self, n: int) -> list[int]:  # Fisher-Yates
        items = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]
        return items


def make_scene(seed: int, index: int) -> Scene:
    """The scene of row ``index`` for ``seed``: a pure function of the two."""
    rng = _Draws(seed, index)
    shape = SHAPES[rng.below(len(SHAPES))]
    size = tuple(SIZES)[rng.below(len(SIZES))]
    count = int(1 + rng.below(MAX_COUNT[size]))
    background = tuple(BACKGROUNDS)[rng.below(len(BACKGROUNDS))]
    colors = [
        c for c, rgb in COLORS.items() if _contrast(rgb, BACKGROUNDS[background]) >= _MIN_CONTRAST
    ]
    color = colors[rng.below(len(colors))]
    side = IMAGE_SIZE
    r = SIZES[size] * side
    margin = r + 6
    if count == 1:
        position = tuple(POSITIONS)[rng.below(len(POSITIONS))]
        fx, fy = POSITIONS[position]
        jitter = side / 24
        x = float(np.clip(fx * side + rng.uniform(-jitter, jitter), margin, side - margin))
        y = float(np.clip(fy * side + rng.uniform(-jitter, jitter), margin, side - margin))
        objects = ((round(x, 2), round(y, 2), round(r, 2)),)
    else:
        position = "scattered"
        # distinct cells of a grid (3x3, or 2x2 for large shapes) with jitter inside each cell:
        # shapes never overlap and the draw is a pure function of the seed
        k = 2 if size == "large" else 3
        cell = side / k
        slack = max(0.0, cell / 2 - r - 8)
        cells = rng.permutation(k * k)[:count]
        objects = tuple(
            (
                round(float((c % k + 0.5) * cell + rng.uniform(-slack, slack)), 2),
                round(float((c // k + 0.5) * cell + rng.uniform(-slack, slack)), 2),
                round(r, 2),
            )
            for c in cells
        )
    return Scene(shape, color, size, count, position, background, objects, rng.below(2**31))


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]] | None:
    def ring(k: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [
            (
                x + radius * np.cos(phase + 2 * np.pi * i / k),
                y + radius * np.sin(phase + 2 * np.pi * i / k),
            )
            for i in range(k)
        ]

    if shape == "triangle":  # equilateral, pointing up, centroid at (x, y)
        return ring(3, r, -np.pi / 2)
    if shape == "hexagon":
        return ring(6, r, 0.0)
    if shape == "diamond":
        return [(x, y - r), (x + 0.75 * r, y), (x, y + r), (x - 0.75 * r, y)]
    if shape == "star":
        outer, inner = ring(5, r, -np.pi / 2), ring(5, 0.45 * r, -np.pi / 2 + np.pi / 5)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if shape == "cross":
        a, b = r, r * 0.36
        return [
            (x - b, y - a),
            (x + b, y - a),
            (x + b, y - b),
            (x + a, y - b),
            (x + a, y + b),
            (x + b, y + b),
            (x + b, y + a),
            (x - b, y + a),
            (x - b, y + b),
            (x - a, y + b),
            (x - a, y - b),
            (x - b, y - b),
        ]
    return None


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        s = r * 0.86
        draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
    else:
        draw.polygon(_polygon(shape, x, y, r), fill=fill)


def render_scene(scene: Scene) -> Image.Image:
    """The scene as a 224x224 RGB image."""
    side, ss = IMAGE_SIZE, _SUPERSAMPLE
    # background: a gentle vertical shading of the named colour plus fine uniform grain (+-5),
    # from PCG64's raw bits, whose stream numpy keeps stable across versions
    raw = np.random.PCG64(scene.grain_seed).random_raw(side * side)  # (H*W,) uint64
    grain = ((raw >> np.uint64(40)).astype(np.float32) / 2.0**24 - 0.5) * 10.0
    base = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)
    shade = np.linspace(1.06, 0.92, side, dtype=np.float32)[:, None, None]  # (H, 1, 1)
    bg = base[None, None, :] * shade + grain.reshape(side, side, 1)  # (H, W, 3)
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    # soft shadow: the shapes' mask, offset and blurred, darkens the background
    mask = Image.new("L", (side * ss, side * ss), 0)
    mdraw = ImageDraw.Draw(mask)
    for x, y, r in scene.objects:
        _draw(mdraw, scene.shape, (x + 3) * ss, (y + 4) * ss, r * ss, 255)
    shadow = mask.reduce(ss).filter(ImageFilter.GaussianBlur(3)).point(lambda v: int(v * 0.35))
    canvas.paste(Image.new("RGB", (side, side), (0, 0, 0)), (0, 0), shadow)
    # shapes: drawn at 4x and box-downsampled, so edges are antialiased and interiors exact
    layer = Image.new("L", (side * ss, side * ss), 0)
    ldraw = ImageDraw.Draw(layer)
    for x, y, r in scene.objects:
        _draw(ldraw, scene.shape, x * ss, y * ss, r * ss, 255)
    canvas.paste(Image.new("RGB", (side, side), COLORS[scene.color]), (0, 0), layer.reduce(ss))
    return canvas


@dataclass(frozen=True)
class SceneImage:
    """A picklable zero-argument callable that renders one scene (a row's ``image``)."""

    scene: Scene

    def __call__(self) -> Image.Image:
        return render_scene(self.scene)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def scene_captions(scene: Scene) -> list[str]:
    """Three captions of the scene; the first names shape, colour, size, count, position (for a
    single shape) and background."""
    s, c, z, bg = scene.shape, scene.color, scene.size, scene.background
    if scene.count == 1:
        where = _POSITION_PHRASES[scene.position]
        return [
            f"{_article(z)} {z} {c} {s} {where} on {_article(bg)} {bg} background.",
            f"one {c} {s} against a plain {bg} backdrop.",
            f"{_article(bg)} {bg} background with {_article(z)} {z} {c} {s} {where}.",
        ]
    k, plural = _COUNT_WORDS[scene.count], _PLURALS.get(s, s + "s")
    return [
        f"{k} {z} {c} {plural} on {_article(bg)} {bg} background.",
        f"{k} {c} {plural} against a plain {bg} backdrop.",
        f"{_article(bg)} {bg} background with {k} {z} {c} {plural}.",
    ]


def read_synthetic(n: int = 1000, seed: int = 0) -> RawProbe:
    """``n`` synthetic rows for ``seed`` (row ``i`` depends only on ``(seed, i)``)."""
    entries = []
    for i in range(n):
        scene = make_scene(seed, i)
        entries.append(
            Entry(
                id=f"synthetic-{i:06d}",
                image=SceneImage(scene),
                captions=scene_captions(scene),
                where=f"synthetic row {i}",
                attributes=scene.attributes(),
                digest=scene.digest(),
            )
        )
    return RawProbe(
        "synthetic", None, entries, content_key=(RENDER_VERSION, f"seed={seed}"), needs_checks=False
    )
