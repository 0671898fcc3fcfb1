"""Tiny encoders and probes for the feature/cache/distributed tests (no tests in this file).

Also a command line, so tests can run an extraction in a real subprocess (to kill it, to run two at
once, or under torchrun)::

    python tests/test_features_support.py '{"probe_dir": ..., "n": 24, "root": ..., "out": ...}'

Environment knobs read by the tiny encoders: ``ALIGNKIT_TEST_SLEEP`` (seconds to sleep in every
forward, to make a subprocess slow enough to kill half-way) and ``ALIGNKIT_TEST_CALLS`` (a file
that gets one line per forward call, to count model work across processes).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from alignkit.encoders.base import Encoder
from alignkit.probes.base import ProbeRow, ProbeSet

WORDS = "a dog cat runs on the grass red ball child water beach man woman street jumps".split()


def _note_call(encoder: Encoder, batch_len: int) -> None:
    encoder.calls += 1
    encoder.batch_sizes.append(batch_len)
    if encoder.fail_on_call is not None and encoder.calls >= encoder.fail_on_call:
        raise RuntimeError(f"{encoder.name}: forward call {encoder.calls} fails on purpose")
    path = os.environ.get("ALIGNKIT_TEST_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {batch_len} {time.time():.3f}\n")
    sleep = float(os.environ.get("ALIGNKIT_TEST_SLEEP", "0") or 0)
    if sleep:
        time.sleep(sleep)


class TinyImageEncoder(Encoder):
    """A random conv net (fixed seed): 32x32 RGB -> ``dim`` features; ``layer="all"``: 2 layers."""

    modality = "image"

    def __init__(
        self,
        *,
        seed: int = 0,
        dim: int = 16,
        layer: str = "last",
        name: str = "tiny-image:conv",
        fail_on_call: int | None = None,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.name, self.dim, self.layer, self.seed = name, dim, layer, seed
        self.n_layers = 2
        self.device = torch.device("cpu")
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, dim)
        self.lift = torch.nn.Linear(8, dim)
        with torch.no_grad():
            for p in [*self.conv.parameters(), *self.head.parameters(), *self.lift.parameters()]:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.calls, self.batch_sizes, self.fail_on_call = 0, [], fail_on_call

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        arr = np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, 32, 32)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        _note_call(self, len(batch))
        hidden = torch.relu(self.conv(batch)).mean(dim=(2, 3))  # (B, 8)
        first, last = self.lift(hidden), self.head(torch.tanh(hidden))  # (B, dim) each
        return torch.stack([first, last]) if self.layer == "all" else last

    def weights_identity(self) -> str:
        return f"seed={self.seed}"


class HashTextEncoder(Encoder):
    """Tokens hashed into a random embedding bag (mean of token vectors): batch-independent."""

    modality = "text"

    def __init__(
        self,
        *,
        seed: int = 0,
        dim: int = 12,
        name: str = "tiny-text:hashbag",
        fail_on_call: int | None = None,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.name, self.dim, self.seed = name, dim, seed
        self.device = torch.device("cpu")
        self.table = torch.randn(257, dim, generator=gen)
        self.calls, self.batch_sizes, self.fail_on_call = 0, [], fail_on_call

    @staticmethod
    def token_ids(text: str) -> list[int]:
        return [
            int(hashlib.md5(t.encode()).hexdigest(), 16) % 257 for t in text.lower().split()
        ] or [0]

    def _forward(self, batch: list[str]) -> torch.Tensor:
        _note_call(self, len(batch))
        ids = [torch.tensor(self.token_ids(t)) for t in batch]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return torch.nn.functional.embedding_bag(torch.cat(ids), self.table, offsets, mode="mean")

    def weights_identity(self) -> str:
        return f"seed={self.seed}"


def make_probe(
    folder: str | Path, n: int, *, captions: int = 3, seed: int = 0, name: str = "tiny-probe"
) -> ProbeSet:
    """``n`` rows of random 40x40 PNG images (written to ``folder`` once) and ``captions`` random
    captions each; deterministic for ``seed``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
        texts = tuple(
            " ".join(rng.choice(WORDS, size=int(rng.integers(2, 7)))) for _ in range(captions)
        )
        path = folder / f"img{seed}_{i:04d}.png"
        if not path.exists():
            Image.fromarray(pixels).save(path)
        rows.append(ProbeRow(id=f"row{i:04d}", image=path, captions=texts))
    return ProbeSet(name, tuple(rows))


def mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose memory map holds ``tensor``'s data (from ``/proc/self/maps``; Linux), or
    None when its data lives in anonymous memory (an ordinary in-RAM tensor)."""
    ptr = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= ptr < hi:
            path = fields[5].strip() if len(fields) > 5 else ""
            return path if path.startswith("/") else None
    return None


def _no_gather(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("gather_rows was called: features travelled through the process group")


def _main(args: dict[str, Any]) -> None:
    """Extractions in this process (under torchrun: one rank); saves what they gave to ``out``.

    ``modalities`` picks the tiny encoders (``image``, ``text``); ``repeat`` runs each extraction
    a second time (a cache hit when ``root`` is set) and records the model calls of each run.
    ``no_gather``: fail if the features are gathered through the process group;
    ``no_shards_on_rank``: that rank cannot write shards; ``skip_bad`` and ``fail_on_call`` go
    to the extraction and the tiny encoders.
    """
    from alignkit.features import FeatureCache, _distributed, extract_features

    torch.set_num_threads(1)  # the same thread count in every process: comparable numerics
    if args.get("no_gather"):
        _distributed.gather_rows = _no_gather
    if str(args.get("no_shards_on_rank")) == os.environ.get("RANK"):  # a full disk, say

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise OSError(28, "No space left on device")

        FeatureCache.put_shard = refuse
    probe = make_probe(args["probe_dir"], args["n"], seed=args.get("seed", 0))
    if args.get("gate"):  # start together with the other processes of a test
        Path(f"{args['gate']}.{os.getpid()}.ready").touch()
        while not Path(args["gate"]).exists():
            time.sleep(0.01)
    cache: Any = False
    if args.get("root"):
        cache = FeatureCache(args["root"], shard_batches=args.get("shard_batches", 1))
    rank = os.environ.get("RANK", "0")
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    for modality in args.get("modalities", ["image"]):
        fail = args.get("fail_on_call")
        encoder = (
            HashTextEncoder(fail_on_call=fail)
            if modality == "text"
            else TinyImageEncoder(fail_on_call=fail)
        )
        result: dict[str, Any] = {}
        for run in range(2 if args.get("repeat") else 1):
            fs = extract_features(
                encoder,
                probe,
                batch_size=args.get("batch_size", 4),
                num_workers=args.get("workers", 0),
                caption_policy=args.get("caption_policy", "first"),
                cache=cache,
                progress=False,
                distributed=args.get("distributed", True),
                skip_bad=args.get("skip_bad", False),
            )
            if run == 0:
                result = {
                    "features": fs.features.clone(),
                    "ids": fs.ids,
                    "calls": encoder.calls,
                    "batch_sizes": list(encoder.batch_sizes),
                    "mapped_file": mapped_file(fs.features),
                    "provenance": fs.provenance,
                }
            else:
                result["repeat_calls"] = encoder.calls - result["calls"]
                result["repeat_equal"] = torch.equal(fs.features, result["features"])
        name = f"rank{rank}.pt" if modality == "image" else f"{modality}-rank{rank}.pt"
        torch.save(result, out / name)


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
