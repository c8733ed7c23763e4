"""Benchmark: CPU inference of one network with onnxruntime vs PyTorch eager, in one run.

Both get the same uint8 RGB batches and normalise them inside, as every petseg entry point does:
onnxruntime runs the graph ``python -m petseg.export --onnx`` writes (BatchNorm folded), PyTorch
the network as ``predict`` runs it (BatchNorm folded, channels_last), in float32 and, where the CPU
computes bf16 natively, in bf16 autocast too. Both use the same number of threads. The contenders
are timed in interleaved rounds (a burst of load from other processes hurts all alike) and the
median round is reported, with each one's ratio to PyTorch float32.

The network is ``--model`` (a models/<arch>.pt) or, by default, ``--arch`` built from params.yaml
with untrained weights at ``preprocess.image_size`` (the speed does not depend on the weights).

Usage: python benchmarks/inference_onnx.py [--model models/unet.pt | --arch unet] [--batch 8]
           [--size 128] [--rounds 7] [--batches-per-round 4] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from petseg import config
from petseg.device import autocast, cpu_name, native_bf16, usable_cores
from petseg.export import RawImages, to_onnx
from petseg.models import build_model, load_model
from petseg.models.inference import fuse_for_inference

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def network(args: argparse.Namespace) -> tuple[torch.nn.Module, int, str]:
    """(model in eval mode, training size, description) from --model or params.yaml."""
    if args.model:
        model, info = load_model(args.model)
        return model, info.image_size, f"{args.model} ({info.arch})"
    params = config.load(ROOT / "params.yaml")
    model = build_model(args.arch, params.models).eval()
    size = params.preprocess.image_size
    return model, size, f"{args.arch} from params.yaml, untrained"


def contenders(
    model: torch.nn.Module, threads: int
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    proto = to_onnx(model, model.depth, None)
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    fused = RawImages(fuse_for_inference(model)).eval().to(memory_format=torch.channels_last)

    def torch_run(bf16: bool) -> Callable[[np.ndarray], np.ndarray]:
        @torch.no_grad()
        def run(images: np.ndarray) -> np.ndarray:
            with autocast(CPU, bf16):
                return fused(torch.from_numpy(images)).float().numpy()

        return run

    runs = {
        "onnxruntime, float32": lambda images: session.run(["logits"], {"images": images})[0],
        "PyTorch eager, float32": torch_run(False),
    }
    if native_bf16(CPU):
        runs["PyTorch eager, bf16 autocast"] = torch_run(True)
    return runs


def timed_round(run: Callable[[np.ndarray], np.ndarray], batches: list[np.ndarray]) -> float:
    """Images per second over ``batches``."""
    start = time.perf_counter()
    for images in batches:
        run(images)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a models/<arch>.pt (default: untrained)")
    parser.add_argument("--arch", default="unet", help="without --model: params.yaml's models.*")
    parser.add_argument("--size", type=int, help="image side (default: the training size)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median)")
    parser.add_argument("--batches-per-round", type=int, default=4)
    parser.add_argument("--threads", type=int, default=usable_cores())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, size, what = network(args)
    size = args.size or size
    runs = contenders(model, args.threads)
    rng = np.random.default_rng(0)
    shape = (args.batch, size, size, 3)
    batches = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(args.batches_per_round)]
    for run in runs.values():  # first calls build kernels and allocate: outside the timing
        run(batches[0])
    rates: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(args.rounds):
        for label, run in runs.items():
            rates[label].append(timed_round(run, batches))
    print(f"network: {what}; {size}x{size} px, batch {args.batch}, {args.threads} threads")
    print(f"cpu: {cpu_name()}; torch {torch.__version__}, onnxruntime {ort.__version__}")
    base = statistics.median(rates["PyTorch eager, float32"])
    for label, values in rates.items():
        median = statistics.median(values)
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"{label:30s} {median:8.1f} images/s  (rounds {spread})  {median / base:5.2f}x")


if __name__ == "__main__":
    main()
