"""Projector training on one GPU with AMP: pairs/s and peak GPU memory, on synthetic features.

    python benchmarks/training_gpu.py                      # pooled 1024/768 -> 1024, bf16
    python benchmarks/training_gpu.py --tokens             # token-level (257 image, 32 text tokens)
    python benchmarks/training_gpu.py --precision fp32     # the same without autocast
    torchrun --nproc_per_node 8 benchmarks/training_gpu.py # DDP: --batch is the global batch

Prepared for a GPU machine (none was available when it was written, so its numbers are not in the
docs yet). It checks the device first and exits with a message (status 2) when there is no usable
CUDA device or the precision is not supported. Features are generated on the GPU as float16 (as a
token cache would hold them) and batches are indexed there, so the timing is the trainer's alone:
one untimed warm-up run, then ``--epochs`` timed epochs; ``torch.cuda.max_memory_allocated`` after
a reset of the peak statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignkit.training import PairedFeatures, TokenFeatures, TrainConfig, train_projector  # noqa: E402


def check_device(precision: str) -> torch.device:
    if not torch.cuda.is_available():
        _exit(
            "training_gpu.py needs a CUDA GPU: torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "run benchmarks/training.py for the CPU numbers"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if local_rank >= torch.cuda.device_count():
        _exit(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices")
    device = torch.device("cuda", local_rank)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        _exit(f"{torch.cuda.get_device_name(device)} does not support bf16: use --precision fp16")
    return device


def _exit(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(2)


def synthetic(args, device: torch.device) -> PairedFeatures:
    g = torch.Generator(device=device).manual_seed(0)
    n = args.n

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float16)

    t2i = torch.arange(n).repeat_interleave(args.captions)  # CPU: the batch bookkeeping stays there
    if args.tokens:
        image = TokenFeatures(
            randn(n, args.image_tokens, args.image_dim),
            torch.ones(n, args.image_tokens, dtype=torch.bool, device=device),
            randn(n, args.image_dim),
        )
        text = TokenFeatures(
            randn(n * args.captions, args.text_tokens, args.text_dim),
            torch.ones(n * args.captions, args.text_tokens, dtype=torch.bool, device=device),
        )
    else:
        image, text = randn(n, args.image_dim), randn(n * args.captions, args.text_dim)
    return PairedFeatures(image, text, t2i, [str(i) for i in range(n)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", action="store_true", help="token-level features and projectors")
    p.add_argument(
        "--n", type=int, default=None, help="images (default 262144 pooled, 16384 tokens)"
    )
    p.add_argument("--captions", type=int, default=1, help="captions per image")
    p.add_argument("--image-dim", type=int, default=1024)
    p.add_argument("--text-dim", type=int, default=768)
    p.add_argument("--image-tokens", type=int, default=256, help="patch tokens (a CLS is added)")
    p.add_argument("--text-tokens", type=int, default=32)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--projector", default=None, help="default: mlp pooled, residual token-level")
    p.add_argument("--loss", default="clip", choices=["clip", "siglip"])
    p.add_argument("--batch", type=int, default=None, help="global batch (default 16384 / 1024)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run the same code on the CPU at tiny sizes (a check)",
    )
    args = p.parse_args()
    if args.cpu_smoke:
        args.n, args.batch, args.image_dim, args.text_dim, args.width = 256, 64, 32, 24, 16
        args.image_tokens, args.text_tokens, args.epochs, args.precision = 9, 5, 1, "fp32"
    args.n = args.n or (16384 if args.tokens else 262144)
    args.batch = args.batch or (1024 if args.tokens else 16384)
    projector = args.projector or ("residual" if args.tokens else "mlp")

    device = torch.device("cpu") if args.cpu_smoke else check_device(args.precision)
    data = synthetic(args, device)
    cuda = device.type == "cuda"
    config = TrainConfig(
        projector=projector,
        width=args.width,
        loss=args.loss,
        batch_size=args.batch,
        epochs=args.epochs,
        precision=args.precision,
        eval_every=10**9,
        patience=None,
    )
    # warm-up (CUDA context, kernels, torch._dynamo's import): one epoch, not timed
    warm = TrainConfig(**{**config.to_dict(), "epochs": 1})
    train_projector(warm, data, progress=False, device=device)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    train_projector(config, data, progress=False, device=device)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    steps = args.epochs * max(1, args.n // args.batch)
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke run)",
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "tokens": args.tokens,
        "projector": projector,
        "precision": args.precision,
        "global_batch": args.batch,
        "steps": steps,
        "seconds": seconds,
        "pairs_per_s": steps * args.batch / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "feature_memory_gib": sum(
            t.numel() * t.element_size()
            for t in (
                [data.image.tokens, data.image.cls, data.text.tokens]
                if args.tokens
                else [data.image, data.text]
            )
        )
        / 2**30,
    }
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
