"""Benchmark: every encoder of the U-Net on real Oxford-IIIT Pet pairs, NOT pretrained.

What is measured: test-split mIoU, per-class IoU, binary pet IoU and pixel accuracy of the U-Net
(``models.unet`` of ``--params``) on each encoder — its own (``scratch``) and each torchvision
backbone (``models.unet.encoder``) — all with ``pretrained: false`` (random initialisation: these
machines cannot download ImageNet weights, so what pretraining adds is not measured here), with
the seconds per epoch each took, the parameters and the GFLOPs per image.

How: the machinery of ``benchmarks/real_sample.py`` (preprocess of ``--data``, ``train()``, the
evaluate stage's scoring of the best epoch on the test split, runs cached and resumable under
``--workdir``) with params.yaml's recipe (``train`` section) for every encoder. A backbone uses
``--backbone-depth`` of its stages (default 5: all of it, as presets/transfer.yaml does); the
scratch encoder keeps params.yaml's depth.

Usage: python benchmarks/encoders.py [--data DIR] [--params params.yaml] [--size 128]
       [--encoders scratch,resnet18,...] [--epochs N] [--seed 0] [--threads T] [--workdir DIR]
       [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from real_sample import DEFAULT_DATA, ROOT, check_data, prepare, run_one, with_overrides

from petseg import CLASSES, cli, config
from petseg.config import ENCODERS, ArchParams, TrainParams
from petseg.data.prepared import load_split
from petseg.device import cpu_name
from petseg.errors import ParamsError
from petseg.evaluate.scores import binary_pet_iou
from petseg.models import build_model, gflops_per_image

log = logging.getLogger("encoders")


def encoder_params(base: ArchParams, encoder: str, depth: int) -> ArchParams:
    """``base`` on ``encoder``, not pretrained; a backbone at ``depth`` of its stages."""
    changes = {"encoder": encoder, "pretrained": False, "weights_path": None}
    if encoder != "scratch":
        changes["depth"] = depth
    return ArchParams.model_validate({**base.model_dump(), **changes})


def cost(arch: ArchParams, size: int) -> tuple[int, float]:
    model = build_model("unet", config.ModelsParams(unet=arch))
    return sum(p.numel() for p in model.parameters()), gflops_per_image(model, size)


def table(rows: list[dict]) -> list[str]:
    head = (
        f"{'encoder':19} {'depth':>5} {'params M':>8} {'GFLOPs':>7} {'mIoU':>6} "
        + " ".join(f"{'IoU ' + c:>14}" for c in CLASSES)
        + f" {'pet IoU*':>8} {'pix acc':>7} {'s/epoch':>7} {'train s':>7} {'best ep':>7}  run"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['encoder']:19} {r['depth']:>5} {r['params'] / 1e6:8.2f} {r['gflops']:7.3f} "
            f"{r['miou']:6.3f} "
            + " ".join(f"{r['iou'][c]:14.3f}" for c in CLASSES)
            + f" {r['binary_pet_iou']:8.3f} {r['pixel_accuracy']:7.3f} "
            f"{r['seconds_per_epoch']:7.1f} {r['train_seconds']:7.0f} {r['best_epoch']:>7}  "
            f"{r['status']}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="official layout folder")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated")
    parser.add_argument("--backbone-depth", type=int, default=config.BACKBONE_DEPTH)
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--seed", type=int, help="train.seed (default: params)")
    parser.add_argument("--threads", type=int, help="override train.threads (0 = all cores)")
    parser.add_argument("--workdir", type=Path, help="default build/real-sample/<data>-<size>px")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    t0 = time.perf_counter()

    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    if not encoders or any(e not in ENCODERS for e in encoders):
        raise ParamsError(f"--encoders {args.encoders!r}: valid names are {', '.join(ENCODERS)}")
    check_data(args.data)
    params = with_overrides(config.load(args.params), args.size, args.epochs, None, args.threads)
    train_p = params.train
    if args.seed is not None:
        train_p = TrainParams.model_validate({**train_p.model_dump(), "seed": args.seed})
    workdir = (
        args.workdir or ROOT / "build/real-sample" / f"{args.data.resolve().name}-{args.size}px"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    manifest = prepare(args.data, workdir / "prepared", params.preprocess)
    test = load_split(workdir / "prepared", "test", mmap=False)
    torch.set_num_threads(train_p.threads or len(os.sched_getaffinity(0)))
    counts = manifest["counts"]
    print(
        f"data: {args.data.resolve()}: train {counts['train']}, val {counts['val']}, test "
        f"{counts['test']}; {args.size} px; epochs {train_p.epochs}; batch {train_p.batch_size}; "
        f"seed {train_p.seed}; pretrained: false for every encoder\nCPU: {cpu_name()}, "
        f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}; "
        f"torch {torch.__version__}",
        flush=True,
    )
    rows = []
    for i, encoder in enumerate(encoders, start=1):
        arch = encoder_params(params.models.unet, encoder, args.backbone_depth)
        res = run_one(
            f"encoder-{encoder}", "unet", train_p, arch, workdir / "prepared", workdir, test,
            params.evaluate,
        )  # fmt: skip
        n_params, gflops = cost(arch, args.size)
        rows.append({**res, "encoder": encoder, "depth": arch.depth, "params": n_params,
                     "gflops": gflops,
                     "binary_pet_iou": binary_pet_iou(np.asarray(res["confusion"]))})  # fmt: skip
        log.info("[%d/%d] %s: test mIoU %.4f, %.1f s/epoch (%s)", i, len(encoders), encoder,
                 res["miou"], res["seconds_per_epoch"], res["status"])  # fmt: skip
    print("\n".join(["", *table(rows)]))
    print(
        "not pretrained: every encoder starts from random weights. pet IoU*: pet vs the rest "
        "(binary); s/epoch: median epoch (train + validation); run: new | resumed | cached"
    )
    wall = time.perf_counter() - t0
    print(f"total wall time {wall:.0f} s ({sum(r['status'] == 'cached' for r in rows)} cached)")
    if args.out:
        slim = [{k: v for k, v in r.items() if k != "image_confusion"} for r in rows]
        args.out.write_text(json.dumps({"runs": slim, "wall_seconds": wall}, indent=1))


if __name__ == "__main__":
    cli.run(main)
