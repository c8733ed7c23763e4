"""A trained network ready to segment RGB photos of any size: what ``predict``, the MLflow model and
the ONNX check share.

Each photo is resized to the size the network runs at, normalised as in training, segmented, and
its logits are resized back (bilinearly) to the photo's own size before the argmax, as evaluate
does for its original-resolution scores. The network runs at

- its training size (the default): photos are squashed to the square the network was trained on,
  exactly as preprocess squashed its training photos, so a pet covers as many pixels as in
  training and the evaluate stage's scores describe what it does;
- or any other size it fits (H and W multiples of ``2**depth``): more detail for large photos, but
  a pet then covers more pixels than the network ever saw, so expect other (often worse) masks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from petseg.data.augment import MEAN, STD, normalize, to_float
from petseg.device import autocast, pick_device, precision
from petseg.errors import ParamsError
from petseg.models.inference import fuse_for_inference
from petseg.models.model_file import ModelInfo, load_model


@dataclass(frozen=True)
class Segmenter:
    """A network from a model file, BatchNorm folded, on its device, and what the file says."""

    model: torch.nn.Module
    info: ModelInfo
    device: torch.device
    bf16: bool
    depth: int

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", bf16: bool = True) -> Segmenter:
        """``device``: auto, cpu or cuda; ``bf16``: bf16 autocast where the hardware has it."""
        model, info = load_model(path)
        dev = pick_device(device, "--device")
        fused = fuse_for_inference(model.to(dev)).to(memory_format=torch.channels_last)
        return cls(fused, info, dev, bf16, model.depth)

    @property
    def precision(self) -> str:
        return precision(self.device, self.bf16)

    def check_size(self, hw: tuple[int, int]) -> None:
        """A :class:`ParamsError` saying which sizes fit when the network cannot run at ``hw``."""
        m = 2**self.depth
        bad = [s for s in hw if s < m or s % m]
        if bad:
            near = sorted({max(m, bad[0] // m * m), max(m, bad[0] // m * m + m)})
            raise ParamsError(
                f"{self.info.arch} cannot run at {hw[0]}x{hw[1]}: height and width must be "
                f"multiples of 2**depth = {m} (e.g. {' or '.join(map(str, near))})"
            )

    @torch.no_grad()
    def logits(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 RGB at a size the network fits → (N, C, H, W) float32 logits, on
        the device: normalised as in training, in bf16 autocast where native."""
        x = normalize(to_float(torch.from_numpy(np.ascontiguousarray(images)).to(self.device)))
        with autocast(self.device, self.bf16):
            return self.model(x).float()

    @torch.no_grad()
    def segment(
        self, net_inputs: np.ndarray, sizes: Sequence[tuple[int, int]], probabilities: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Labels (H, W) uint8 in channel order at each of ``sizes`` for a batch of network inputs,
        with the class probabilities (H, W, C) float32 if asked."""
        out = []
        for logit, hw in zip(self.logits(net_inputs), sizes, strict=True):
            full = F.interpolate(logit[None], size=hw, mode="bilinear", align_corners=False)[0]
            labels = full.argmax(0).to(torch.uint8).cpu().numpy()
            probs = full.softmax(0).permute(1, 2, 0).cpu().numpy() if probabilities else None
            out.append((labels, probs))
        return out


def net_size(
    policy: str | int, hw: tuple[int, int], image_size: int, depth: int
) -> tuple[int, int]:
    """Where the network runs for a photo of ``hw``: ``train`` its training square, ``native`` the
    photo's own size rounded to the nearest multiples of ``2**depth``, an int that square."""
    if policy == "train":
        return image_size, image_size
    if policy == "native":
        m = 2**depth
        return tuple(max(m, round(s / m) * m) for s in hw)  # type: ignore[return-value]
    return int(policy), int(policy)


def resize_rgb(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 array resized to ``hw`` = (height, width) with preprocess's filter."""
    if image.shape[:2] == tuple(hw):
        return image
    resized = Image.fromarray(image).resize(hw[::-1], Image.Resampling.BILINEAR)
    return np.asarray(resized)


def file_digests(path: str | Path) -> dict[str, str]:
    """md5 (what dvc.lock records for ``models/<arch>.pt``) and sha256 of a file."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def normalisation() -> dict[str, object]:
    """What the network expects, done by every petseg entry point (never by the caller)."""
    return {
        "input": "RGB uint8, scaled to [0, 1]",
        "mean": list(MEAN),
        "std": list(STD),
        "formula": "(x / 255 - mean) / std per channel",
    }
