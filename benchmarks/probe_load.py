"""How long ``load_probe`` takes, and how much memory it holds, on a probe of millions of rows.

    python benchmarks/probe_load.py --rows 1000000                 # a 1M-row JSONL manifest
    python benchmarks/probe_load.py --shards 100 --per-shard 10000  # 100 img2dataset shards
    python benchmarks/probe_load.py --rows 1000000 --n 100000       # a seeded subsample

The data is synthetic in its size only: every row points at (or holds) one of 8 real Flickr8k
photos from ``$ALIGNKIT_DATA_DIR`` (shards hold them re-encoded at 64x64 so 1M samples fit in
a few GB), with its own id and caption. It is written once under ``--work`` (default
``/tmp/alignkit-probe-load``) and reused. The load runs in a fresh child process, which reports
its wall time, CPU time (user + system: the number to compare on a shared machine), peak
resident memory (``VmHWM`` of ``/proc/self/status``: the child's own; its ``ru_maxrss`` would
report the parent's peak when that is higher, as Linux carries it across ``exec``), and the
memory the imports alone take.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from PIL import Image

_CHILD = r"""
import json, resource, sys, time
from alignkit.probes import load_probe
spec, n = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def cpu():  # user + system seconds of this process and its finished children (shard scans)
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    return sum(sum(resource.getrusage(w)[:2]) for w in who)
def peak_mb():  # this process's own high-water RSS: ru_maxrss keeps the parent's across exec
    try:
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # not Linux: ru_maxrss (may include the parent's peak)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = peak_mb()
t, c = time.perf_counter(), cpu()
probe = load_probe(spec, n=n, progress=False)
took, cpu_s = time.perf_counter() - t, cpu() - c
peak = peak_mb()
print(json.dumps({"rows": len(probe), "load_s": round(took, 2), "cpu_s": round(cpu_s, 2),
                  "peak_rss_mb": round(peak), "import_rss_mb": round(base)}))
"""


def _photos(data_dir: Path, count: int = 8) -> list[Path]:
    folder = data_dir / "flickr8k" / "images"
    photos = sorted(folder.glob("*.jpg"))[:count]
    if len(photos) < count:
        sys.exit(f"need {count} Flickr8k photos in {folder} (set ALIGNKIT_DATA_DIR)")
    return photos


def write_manifest(work: Path, rows: int, photos: list[Path]) -> Path:
    path = work / f"manifest-{rows}.jsonl"
    if path.exists():
        return path
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    for p in photos:
        if not (images / p.name).exists():
            (images / p.name).write_bytes(p.read_bytes())
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for i in range(rows):
            rec = {
                "id": f"r{i:07d}",
                "image": f"images/{photos[i % len(photos)].name}",
                "caption": f"photo {i % len(photos)} seen for the {i}th time",
            }
            fh.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)
    return path


def _small_jpeg(path: Path) -> bytes:
    buf = io.BytesIO()
    with Image.open(path) as img:
        img.convert("RGB").resize((64, 64)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shards(work: Path, shards: int, per_shard: int, photos: list[Path]) -> str:
    folder = work / f"shards-{shards}x{per_shard}"
    folder.mkdir(parents=True, exist_ok=True)
    jpegs = [_small_jpeg(p) for p in photos]
    for s in range(shards):
        path = folder / f"{s:05d}.tar"
        if path.exists():
            continue
        tmp = path.with_suffix(".tmp")
        with tarfile.open(tmp, "w") as tf:  # img2dataset's layout: jpg, txt, json per key
            for j in range(per_shard):
                key = f"{s:05d}{j:04d}"
                k = (s * per_shard + j) % len(jpegs)
                _add(tf, f"{key}.jpg", jpegs[k])
                _add(tf, f"{key}.txt", f"photo {k} seen in shard {s} as {j}".encode())
                meta = {"key": key, "status": "success", "width": 64, "height": 64}
                _add(tf, f"{key}.json", json.dumps(meta).encode())
        os.replace(tmp, path)
    return f"{folder}/{{00000..{shards - 1:05d}}}.tar"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=None, help="rows of a JSONL manifest")
    ap.add_argument("--shards", type=int, default=None, help="number of tar shards")
    ap.add_argument("--per-shard", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=None, help="a seeded subsample of n rows")
    ap.add_argument("--repeat", type=int, default=1, help="loads, each in a fresh process")
    ap.add_argument("--work", type=Path, default=Path("/tmp/alignkit-probe-load"))
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ALIGNKIT_DATA_DIR", ".")))
    args = ap.parse_args()
    if (args.rows is None) == (args.shards is None):
        ap.error("give one of --rows (a manifest) or --shards (img2dataset shards)")
    photos = _photos(args.data_dir)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.rows is not None:
        spec, kind = str(write_manifest(args.work, args.rows, photos)), "manifest"
    else:
        spec, kind = write_shards(args.work, args.shards, args.per_shard, photos), "shards"
    loads = []
    for _ in range(args.repeat):  # shards: the first load scans the tars, later ones the index
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(spec), json.dumps(args.n)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            sys.exit(f"load failed:\n{out.stderr[-3000:]}")
        loads.append(json.loads(out.stdout.splitlines()[-1]))
    result = {"kind": kind, "spec": spec, "n": args.n, "cpus": os.cpu_count(), **loads[-1]}
    result["loads"] = loads
    print(json.dumps(result))


if __name__ == "__main__":
    main()
