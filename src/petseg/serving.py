"""What the logged MLflow model does: uint8 RGB images of any size in, class maps at their size out.

Training logs it with :func:`petseg.tracking.served.log_model` as a pyfunc whose class
(:class:`petseg.tracking.served.ServedModel`) only hands over to this module, so the logic is
plain numpy and torch, tested without MLflow, and ``mlflow models serve`` runs exactly what
``predict`` runs (:class:`petseg.segmenter.Segmenter` at the training size). Its artifact is the
model file itself (``models/<arch>.pt``, loaded with ``weights_only=True``).

Input: one batch (N, H, W, 3) uint8, or images of different sizes as MLflow's ragged form (an
object array of (H, W, 3) arrays; :func:`as_model_input` builds it from one image or a list).
Output: (N, H, W) uint8 class indices in the order of ``metadata["classes"]`` (an object array of
(H, W) maps for ragged input); with the param ``probabilities`` a dict of those ``classes`` and the
``probabilities`` (N, H, W, C) float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata as dist
from pathlib import Path
from typing import Any

import numpy as np

from petseg.models.model_file import load_model
from petseg.segmenter import Segmenter, file_digests, normalisation, resize_rgb

ARTIFACT = "model_file"  # the pyfunc's artifact key for models/<arch>.pt
BATCH = 16  # images per forward: bounds the memory a large request takes
# Distributions the served code imports (mlflow itself MLflow adds), pinned to what trained it.
REQUIREMENTS = ("torch", "numpy", "pillow", "pydantic", "pyyaml", "psutil")


def load(path: str | Path) -> Segmenter:
    """The network behind the pyfunc: CPU or CUDA, bf16 where native."""
    return Segmenter.load(path)


def as_model_input(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """One image (H, W, 3), a batch (N, H, W, 3) or a list of images → what the signature takes:
    the batch itself, or an object array of images when their sizes differ."""
    if isinstance(images, np.ndarray) and images.dtype != object:
        return images[None] if images.ndim == 3 else images
    return _pack([np.asarray(im) for im in images])


def _images(model_input: Any) -> list[np.ndarray]:
    """The (H, W, 3) uint8 images of a model input; a ValueError says what is wrong."""
    arrays = [np.asarray(im) for im in model_input]
    for i, im in enumerate(arrays):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
            raise ValueError(
                f"image {i}: expected RGB uint8 of shape (H, W, 3), got {im.dtype} {im.shape}: "
                "convert it to RGB with 8 bits per channel (PIL: Image.convert('RGB'))"
            )
    return arrays


def predict(seg: Segmenter, model_input: Any, probabilities: bool = False) -> Any:
    """Class maps (and probabilities) at each input image's size; see the module docstring."""
    images = _images(model_input)
    s = seg.info.image_size
    results = []
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        net = np.stack([resize_rgb(im, (s, s)) for im in chunk])
        results += seg.segment(net, [im.shape[:2] for im in chunk], probabilities)
    labels = _pack([r[0] for r in results])
    if not probabilities:
        return labels
    return {"classes": labels, "probabilities": _pack([r[1] for r in results])}


def _pack(arrays: list[np.ndarray]) -> np.ndarray:
    """One array when the shapes agree, else MLflow's ragged form (an object array)."""
    if len({a.shape for a in arrays}) <= 1:
        return np.stack(arrays) if arrays else np.empty((0, 0, 0), np.uint8)
    packed = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        packed[i] = a
    return packed


def metadata(model_file: Path) -> dict[str, Any]:
    """The MLflow model's metadata: what a user needs to read its output and trace its weights."""
    _, info = load_model(model_file)
    return {
        "network": info.arch,
        "network_params": info.params,
        "classes": list(info.classes),
        "training_size": [info.image_size, info.image_size],
        "runs_at": "the training size; each image is resized to it and the classes back",
        "normalisation": normalisation(),
        "model_file": {"name": Path(model_file).name, **file_digests(model_file)},
        "trimap_convention": "trimap value = class index + 1 (1 pet, 2 background, 3 border)",
    }


def requirements() -> list[str]:
    return [f"{name}=={dist.version(name).split('+')[0]}" for name in REQUIREMENTS]
