"""Export a trained network to ONNX (``python -m petseg.export``), for use outside Python.

    python -m petseg.export --model models/unet.pt --onnx models/unet.onnx

The graph takes what a user has, uint8 RGB images (N, H, W, 3), and normalises them itself as
training did, so raw pixels can't silently give wrong masks; batch, height and width are dynamic
(H and W multiples of ``2**depth``, no resizing inside). It returns float32 logits (N, C, H, W) in
the class order of the metadata; BatchNorm is folded into the convolutions. The model's metadata
(``metadata_props``) names the network, the classes, the training size, the normalisation and the
model file's digests.

Before anything is written, onnxruntime runs the graph against the PyTorch model (float32,
BatchNorm unfolded) at two sizes and two batch sizes: a larger difference in any logit than
``--atol`` is an error. The file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from petseg import cli
from petseg.data.augment import normalize, to_float
from petseg.errors import PetsegError
from petseg.fileio import atomic_write_bytes
from petseg.models.inference import fuse_for_inference
from petseg.models.model_file import ModelInfo, load_model
from petseg.segmenter import file_digests, normalisation

ATOL = 1e-4  # float32 rounding of a folded BatchNorm and another kernel order stays far below
BATCHES = (1, 3)


class ExportError(PetsegError):
    """The export is missing a package, or onnxruntime disagrees with PyTorch."""


class RawImages(nn.Module):
    """A network behind the input handling of training: uint8 (N, H, W, 3) in, logits out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(normalize(to_float(images)))


def check_sizes(info: ModelInfo, depth: int) -> list[tuple[int, int]]:
    """Two sizes the parity check runs at: the training square and a taller, wider rectangle."""
    s, m = info.image_size, 2**depth
    return [(s, s), (s + m, 2 * s)]


def require_onnx() -> None:
    """An :class:`ExportError` naming the fix when a package the export needs is missing."""
    try:  # torch.onnx's exporter needs onnxscript, the check onnxruntime
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({exc}): pip install -e ."
        ) from None


def to_onnx(model: nn.Module, depth: int, opset: int | None) -> Any:
    """The ONNX ``ModelProto`` of ``model`` (fused, behind :class:`RawImages`)."""
    for noisy in ("onnx_ir", "onnxscript"):  # their INFO lines narrate every optimizer pass
        logging.getLogger(noisy).setLevel(logging.WARNING)
    m = 2**depth
    example = torch.zeros(2, 2 * m, 3 * m, 3, dtype=torch.uint8)
    batch, rows, cols = (torch.export.Dim(n, min=1) for n in ("batch", "rows", "cols"))
    program = torch.onnx.export(
        RawImages(fuse_for_inference(model)).eval(),
        (example,),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"images": {0: batch, 1: m * rows, 2: m * cols}},
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    return program.model_proto


def max_difference(onnx_bytes: bytes, model: nn.Module, sizes: list[tuple[int, int]]) -> float:
    """The largest |logit difference| between onnxruntime and PyTorch over sizes and batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for h, w in sizes:
        for n in BATCHES:
            images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
            (got,) = session.run(["logits"], {"images": images})
            with torch.no_grad():
                want = RawImages(model).eval()(torch.from_numpy(images)).numpy()
            worst = max(worst, float(np.abs(got - want).max()))
    return worst


def export_onnx(
    model_path: Path, onnx_path: Path, atol: float = ATOL, opset: int | None = None
) -> float:
    """Write ``onnx_path`` from ``model_path`` once it matches PyTorch; returns the difference."""
    require_onnx()
    import onnx

    model, info = load_model(model_path)
    proto = to_onnx(model, model.depth, opset)
    meta = {
        "network": info.arch,
        "classes": json.dumps(list(info.classes)),
        "training_size": json.dumps([info.image_size, info.image_size]),
        "input": f"uint8 RGB (N, H, W, 3), H and W multiples of {2**model.depth}",
        "output": "float32 logits (N, C, H, W), channels in the order of classes",
        "normalisation": json.dumps(normalisation()),
        "model_file": json.dumps({"name": model_path.name, **file_digests(model_path)}),
    }
    onnx.helper.set_model_props(proto, meta)
    data = proto.SerializeToString()
    sizes = check_sizes(info, model.depth)
    diff = max_difference(data, model, sizes)
    if not diff <= atol:
        raise ExportError(
            f"{onnx_path}: not written: onnxruntime's logits differ from PyTorch's by {diff:.3g} "
            f"(> --atol {atol:g}) at {sizes}: a bug in the export; report it with the model file"
        )
    atomic_write_bytes(onnx_path, data)
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="models/<arch>.pt")
    parser.add_argument("--onnx", type=Path, required=True, help="the ONNX file to write")
    parser.add_argument("--atol", type=float, default=ATOL, help="largest |logit difference|")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (torch's default)")
    args = parser.parse_args()
    diff = export_onnx(args.model, args.onnx, args.atol, args.opset)
    print(
        f"wrote {args.onnx}: onnxruntime matches PyTorch within {diff:.2g} "
        f"(largest |logit difference|, batches {' and '.join(map(str, BATCHES))} at two sizes)"
    )


if __name__ == "__main__":
    cli.run(main)
