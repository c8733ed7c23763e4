"""Where a backbone's pretrained weights come from (``models.<arch>.pretrained: true``), loaded
into the network and recorded. Training alone runs this: a model file carries its own weights.

Two sources, in this order:

``models.<arch>.weights_path``  a local copy of the official file (inside the folder the train
                                stage declares as its DVC dependency, ``weights/``)
torch hub's cache               ``$TORCH_HOME/hub/checkpoints/<official file name>`` (TORCH_HOME
                                defaults to ~/.cache/torch), through torchvision's own loading call
                                (``torch.hub.load_state_dict_from_url``, which
                                ``weights.get_state_dict()`` runs): when the file is not there it
                                is downloaded once, with a progress bar and ``check_hash=True`` (its
                                SHA-256 must start with the hex digits in its name, else it is
                                deleted and the stage stops)

With neither and no network the stage stops with one line naming the URL and where to put the
file. torch hub checks the hash only when it downloads: a file already in the cache is loaded as
it is. So the SHA-256 of the file actually loaded is recorded (the train metrics'
``encoder_weights_sha256``, MLflow tags), and a cached file whose hash does not match its name is
used with a warning (the tests' stand-ins for the real files are such files).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from petseg.config import ArchParams
from petseg.errors import DataError, DownloadError
from petseg.models.blocks import SegmentationModel
from petseg.models.encoders import weights_of

log = logging.getLogger(__name__)
HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's convention: name-<sha256 prefix>.pth
UNREADABLE = (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError)


@dataclass(frozen=True)
class LoadedWeights:
    """What a backbone was initialised from."""

    file: Path
    sha256: str  # of the whole file
    source: str  # weights_path | torch hub cache | download


def load_pretrained(
    model: SegmentationModel,
    section: str,
    params: ArchParams,
    weights_dir: Path | None = None,
    progress: bool = True,
) -> LoadedWeights | None:
    """Load the ImageNet weights of ``model``'s backbone (configured by ``models.<section>``);
    None when it has none or ``pretrained`` is false. ``weights_dir``: where a ``weights_path``
    must lie (the stage's DVC dependency), None = anywhere."""
    backbone = model.backbone()
    if backbone is None or not params.pretrained:
        return None
    name = backbone.name
    if params.weights_path is not None:
        key = f"models.{section}.weights_path"
        state, loaded = _from_file(Path(params.weights_path), key, name, weights_dir)
        where = f"{key} = {params.weights_path}"
    else:
        state, loaded = _from_hub(name, section, weights_dir, progress)
        where = str(loaded.file)
    try:
        backbone.load_torchvision(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = " ".join(str(exc).split())[:240]
        raise DataError(
            f"{where}: not the {name} weights of torchvision's {weights_of(name)} ({first}): use "
            f"the official file {weights_of(name).url}"
        ) from None
    return loaded


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _from_file(
    path: Path, key: str, name: str, weights_dir: Path | None
) -> tuple[dict[str, Any], LoadedWeights]:
    official = weights_of(name).url
    if weights_dir is not None and not path.resolve().is_relative_to(weights_dir.resolve()):
        raise DataError(
            f"{key} = {path} is outside {weights_dir}/, the folder this train stage declares as "
            f"its DVC dependency: move the file into {weights_dir}/ (then a new file retrains)"
        )
    if not path.is_file():
        raise DataError(
            f"{key} = {path}: no such file: put a copy of {official} ({_size(name)}) there, or set "
            f"{key} to null to use torch hub's cache"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as exc:
        raise DataError(f"{key} = {path}: not a state dict ({_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise DataError(f"{key} = {path}: holds a {type(state).__name__}, not a state dict")
    return state, LoadedWeights(path, sha256_of(path), "weights_path")


def hub_file(url: str) -> Path:
    """Where torch hub keeps the file of ``url``: ``$TORCH_HOME/hub/checkpoints/<its name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _from_hub(
    name: str, section: str, weights_dir: Path | None, progress: bool
) -> tuple[dict[str, Any], LoadedWeights]:
    url = weights_of(name).url
    file = hub_file(url)
    folder = file.parent
    source = "torch hub cache" if file.exists() else "download"
    try:
        state = torch.hub.load_state_dict_from_url(
            url, model_dir=str(folder), map_location="cpu", progress=progress, check_hash=True,
            weights_only=True,
        )  # fmt: skip
    except (OSError, http.client.HTTPException) as exc:
        if file.exists():
            raise _unreadable(file, exc) from None
        raise DownloadError(_offline(name, section, url, file, weights_dir, exc)) from None
    except RuntimeError as exc:
        if "invalid hash value" in str(exc):
            raise DownloadError(
                f"{url}: the download does not match the hash in its name ({_first_line(exc)}) "
                f"and was deleted: run again, or download it yourself and put it at {file}"
            ) from None
        raise _unreadable(file, exc) from None
    except UNREADABLE as exc:
        raise _unreadable(file, exc) from None
    sha = sha256_of(file)
    expected = HASH_IN_NAME.search(file.name)
    if expected and not sha.startswith(expected.group(1)):
        log.warning(
            "%s: its SHA-256 %s does not start with %s, the hash in its name: not the official "
            "file (used anyway; its hash is recorded)", file, sha, expected.group(1),
        )  # fmt: skip
    return state, LoadedWeights(file, sha, source)


def _offline(
    name: str, section: str, url: str, file: Path, weights_dir: Path | None, exc: Exception
) -> str:
    local = f"or put it in {weights_dir}/ and" if weights_dir else "or"
    return (
        f"models.{section}.pretrained: the {name} ImageNet weights are not in torch hub's cache "
        f"and could not be downloaded ({_first_line(exc)}): download {url} ({_size(name)}) and "
        f"put it at {file} (TORCH_HOME moves that folder), {local} set "
        f"models.{section}.weights_path to it"
    )


def _unreadable(file: Path, exc: Exception) -> DataError:
    return DataError(
        f"{file}: unreadable ({_first_line(exc)}): delete it, and run again to download it afresh"
    )


def _size(name: str) -> str:
    size = weights_of(name).meta.get("_file_size")
    return f"{size:.1f} MB" if size else "size unknown"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
