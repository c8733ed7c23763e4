"""The one typed loader of ``params.yaml``.

Each section of params.yaml is a pydantic model with ``extra="forbid"``: an unknown key, a value of
the wrong type or out of range fails with a :class:`~petseg.errors.ParamsError` that names the
dotted key (``data.synthetic.n_test``), the bad value and what is allowed. Stages call
:func:`load_section` and receive only their own section, matching the per-key ``params:`` they
declare in dvc.yaml.

Field descriptions here are the reference; params.yaml carries the same words as comments.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from petseg.errors import ParamsError

OFFICIAL_BASE_URLS = (
    "https://www.robots.ox.ac.uk/~vgg/data/pets/data/",
    "https://thor.robots.ox.ac.uk/~vgg/data/pets/data/",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --------------------------------------------------------------------------------------- data
class OxfordParams(_Section):
    base_urls: list[str] = Field(
        default=list(OFFICIAL_BASE_URLS),
        min_length=1,
        description="Mirrors tried in order; each serves images.tar.gz and annotations.tar.gz.",
    )
    images_md5: str = Field(default="5c4f3ee8e5d25df40f4fd59a7f44e54c", pattern=r"^[0-9a-f]{32}$")
    annotations_md5: str = Field(
        default="95a8c909bbe2e81eed6a22bccdf3f68f", pattern=r"^[0-9a-f]{32}$"
    )
    archives_dir: str | None = Field(
        default=None,
        description="Folder already holding images.tar.gz and annotations.tar.gz: no network used.",
    )
    timeout_s: float = Field(default=60.0, gt=0)
    retries: int = Field(default=5, ge=0, le=100)

    @model_validator(mode="after")
    def _urls_are_http(self) -> OxfordParams:
        for i, url in enumerate(self.base_urls):
            if not url.startswith(("http://", "https://")):
                raise _KeyError(f"base_urls.{i}", url, "an http:// or https:// URL")
        return self


class FolderParams(_Section):
    path: str | None = Field(
        default=None,
        description="An extracted dataset in the official layout (images/, annotations/).",
    )


class SyntheticParams(_Section):
    seed: int = Field(default=0, ge=0)
    n_trainval: int = Field(default=480, ge=2, le=100_000)
    n_test: int = Field(default=120, ge=1, le=100_000)
    n_breeds: int = Field(default=6, ge=1, le=37)
    min_size: int = Field(default=160, ge=32, le=4096)
    max_size: int = Field(default=320, ge=32, le=4096)
    border_width: float = Field(
        default=0.052,
        gt=0,
        le=0.2,
        description="Border band width as a fraction of the short side. 0.052 is the median of "
        "the real trimaps in ../shared/data (border pixels per outline pixel over the short side, "
        "measured alike on both; quartiles about 0.044-0.064).",
    )

    @model_validator(mode="after")
    def _size_range(self) -> SyntheticParams:
        if self.max_size < self.min_size:
            raise _KeyError("max_size", self.max_size, f">= min_size ({self.min_size})")
        return self


class CocoParams(_Section):
    """Your own labelled data: COCO instance masks converted into the official layout."""

    annotations: str | None = Field(
        default=None,
        description="COCO instances JSON (polygons or RLE); required when data.source is 'coco'.",
    )
    images: str | None = Field(
        default=None,
        description="Folder the file_name entries are relative to; null = the JSON's own folder.",
    )
    test_annotations: str | None = Field(
        default=None,
        description="A second COCO JSON holding the test split; null = split off test_fraction.",
    )
    test_images: str | None = Field(
        default=None,
        description="Image folder of test_annotations; null = images, else the test JSON's folder.",
    )
    test_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Share of each pet category held out for test when test_annotations is null.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the test_fraction split.")
    categories: dict[str, Literal["pet", "background"]] = Field(
        default_factory=dict,
        description="COCO category name -> pet (foreground) or background (annotations dropped).",
    )
    other_categories: Literal["error", "background"] = Field(
        default="error",
        description="Annotated categories absent from categories: stop naming them, or background.",
    )
    border_px: int = Field(
        default=16,
        ge=0,
        le=128,
        description="Total width in pixels of the border band (trimap 3) along each pet outline.",
    )


class DataParams(_Section):
    source: Literal["oxford-iiit-pet", "synthetic", "folder", "coco"] = "oxford-iiit-pet"
    oxford: OxfordParams = OxfordParams()
    folder: FolderParams = FolderParams()
    synthetic: SyntheticParams = SyntheticParams()
    coco: CocoParams = CocoParams()

    @model_validator(mode="after")
    def _source_needs(self) -> DataParams:
        if self.source == "folder" and not self.folder.path:
            raise _KeyError(
                "folder.path", None, "a folder path when data.source is 'folder'", prefix="data"
            )
        if self.source == "coco":
            coco = self.coco
            if not coco.annotations:
                raise _KeyError(
                    "coco.annotations",
                    coco.annotations,
                    "the path of a COCO instances JSON when data.source is 'coco'",
                    prefix="data",
                )
            if "pet" not in coco.categories.values():
                raise _KeyError(
                    "coco.categories",
                    coco.categories,
                    "at least one COCO category name mapped to pet, e.g. {cat: pet, dog: pet}",
                    prefix="data",
                )
            if coco.test_images and not coco.test_annotations:
                raise _KeyError(
                    "coco.test_images",
                    coco.test_images,
                    "null while data.coco.test_annotations is null (set both or neither)",
                    prefix="data",
                )
        return self


# --------------------------------------------------------------------------------- preprocess
class PreprocessParams(_Section):
    image_size: int = Field(
        default=128,
        ge=8,
        le=2048,
        description="Side of the square arrays; divisible by 2**models.<arch>.depth for every "
        "architecture (checked with the models section)",
    )
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    seed: int = Field(default=0, ge=0)
    max_bad_fraction: float = Field(default=0.01, ge=0, le=1)
    workers: int = Field(default=0, ge=0, le=256, description="0 = one process per CPU core")
    on_wrong_format: Literal["convert", "skip"] = "convert"


# -------------------------------------------------------------------------------------- train
class AugmentParams(_Section):
    """Batched augmentation applied to image and mask together (see petseg.data.augment)."""

    enabled: bool = Field(default=True, description="Master switch for all augmentations")
    hflip: bool = Field(default=True, description="Random horizontal flip (p = 0.5)")
    scale: float = Field(
        default=0.15, ge=0.0, lt=1.0, description="Random zoom in [1-s, 1+s]; 0 = off"
    )
    rotate: float = Field(
        default=5.0, ge=0.0, le=180.0, description="Random rotation in +-degrees; 0 = off"
    )
    color: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Brightness/contrast/saturation jitter; 0 = off"
    )


class TrainParams(_Section):
    """Shared by every train stage: the same recipe for every architecture."""

    epochs: int = Field(default=120, ge=1, le=10_000)
    batch_size: int = Field(default=8, ge=1, le=4096, description="Per process (per GPU under DDP)")
    lr: float = Field(default=1e-3, gt=0, le=10, description="Peak learning rate of the schedule")
    weight_decay: float = Field(
        default=1e-4, ge=0, le=1, description="AdamW decoupled weight decay"
    )
    schedule: Literal["onecycle", "cosine", "constant"] = Field(
        default="onecycle",
        description="onecycle | cosine (linear warm-up, then cosine decay) | constant (lr "
        "throughout, no warm-up: a plain-Adam baseline)",
    )
    warmup_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="Share of steps warming up (not used by constant)"
    )
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    class_weights: list[float] | None = Field(
        default=None, description="Cross-entropy weights for pet, background, border; null = equal"
    )
    dice_weight: float = Field(default=1.0, ge=0, le=10, description="Weight of a soft Dice term")
    ema_epochs: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description="Exponential moving average of the weights (and BatchNorm statistics) over "
        "about this many epochs: validation, the best epoch and the saved model use the "
        "average; 0 = off",
    )
    seed: int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: int = Field(default=0, ge=0, le=1024, description="CPU threads; 0 = cores / processes")
    bf16: bool = Field(
        default=True,
        description="bf16 autocast where native: CUDA, CPUs with AVX512-BF16/AMX (else float32)",
    )
    channels_last: bool = True
    compile: bool = Field(
        default=False,
        description="torch.compile the training step (forward, loss and backward fused by "
        "inductor; fused AdamW; CUDA graphs on a GPU): faster steps after a compile of its own "
        "at the start of each training, so it pays back on long trainings; results equal the "
        "eager step up to rounding (README)",
    )
    augment: AugmentParams = AugmentParams()
    freeze_encoder_epochs: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Fine-tuning: a pretrained encoder (models.<arch>.pretrained) is frozen, its "
        "BatchNorm statistics too, for this many first epochs while the rest trains; 0 = never",
    )
    encoder_lr_mult: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Fine-tuning: a pretrained encoder's learning rate is lr times this, at every "
        "step of the schedule (a smaller rate keeps more of what it learned); 1 = the same",
    )

    @model_validator(mode="after")
    def _weights(self) -> TrainParams:
        w = self.class_weights
        if w is not None and (len(w) != 3 or any(x <= 0 for x in w)):
            raise _KeyError(
                "class_weights", w, "null or three positive numbers (pet, background, border)"
            )
        return self

    @model_validator(mode="after")
    def _freeze_within_training(self) -> TrainParams:
        if self.freeze_encoder_epochs > self.epochs:
            raise _KeyError(
                "freeze_encoder_epochs",
                self.freeze_encoder_epochs,
                f"at most train.epochs ({self.epochs}): the encoder is frozen for the first N "
                "epochs of the training",
            )
        return self


class TrackingParams(_Section):
    enabled: bool = Field(
        default=True, description="false: train without MLflow (no store is opened or written)"
    )
    experiment: str = Field(default="petseg", min_length=1, description="MLflow experiment name")
    log_model: bool = Field(
        default=True,
        description="Log each model as a servable MLflow model (pyfunc: any image size in, the "
        "class map at that size out)",
    )
    system_metrics: bool = Field(
        default=True, description="MLflow system metrics (CPU, memory, GPU)"
    )
    wait_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds to wait for a busy (locked) MLflow store before the stage stops",
    )


# ------------------------------------------------------------------------------------- models
# The encoders a network can be built on: its own (scratch) or a torchvision backbone
# (petseg.models.encoders), and the architectures that take a backbone. unpool cannot: it
# upsamples with the indices of its encoder's max-poolings, which a backbone does not have.
ENCODERS = ("scratch", "resnet18", "resnet34", "mobilenet_v3_large")
Encoder = Literal["scratch", "resnet18", "resnet34", "mobilenet_v3_large"]
BACKBONE_SECTIONS = ("strided", "unet")
WEIGHT_SOURCE = ("pretrained", "weights_path")  # the keys of models.<arch> training alone reads
BACKBONE_DEPTH = 5  # every backbone has five stages, the last at 1/32 of the input
COMBINATIONS = (
    f"{' and '.join(f'models.{s}' for s in BACKBONE_SECTIONS)} (unet also configures "
    f"unet_noskip) take encoder {', '.join(ENCODERS)}; models.unpool takes scratch only"
)


class ArchParams(_Section):
    """Shared by the architectures; equal defaults keep the comparison fair."""

    depth: int = Field(
        default=4, ge=1, le=6, description="Down-sampling steps (input side % 2**depth == 0)"
    )
    base_width: int = Field(
        default=32, ge=4, le=512, description="Channels at full resolution; doubles per level"
    )
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Dropout2d rate in the bottleneck and decoder"
    )
    block: Literal["plain", "residual", "separable"] = Field(
        default="plain",
        description="Conv block of every encoder/decoder stage: plain = two 3x3 conv-BN-ReLU; "
        "residual = the same plus a shortcut, added before the last ReLU (1x1 conv projection "
        "where channels or resolution change); separable = each 3x3 conv is a depthwise 3x3 + a "
        "pointwise 1x1 (Xception / MobileNet)",
    )
    bottleneck: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Width reduction inside each block; 1 = off; b > 1 = ResNet bottleneck: "
        "1x1 conv down to channels // b, one 3x3 (separable if block is), 1x1 conv back up",
    )
    encoder: Encoder = Field(
        default="scratch",
        description="scratch = the network's own encoder; or a torchvision backbone whose first "
        "depth (at most 5) stages replace it, their outputs the skips (" + COMBINATIONS + ")",
    )
    pretrained: bool = Field(
        default=False,
        description="Start the backbone from its ImageNet weights (torchvision's weights enum: "
        "torch hub's cache, or weights_path); false = random initialisation",
    )
    weights_path: str | None = Field(
        default=None,
        description="A local copy of the backbone's official weights file (relative to the "
        "repository root) instead of torch hub's cache; only with pretrained: true",
    )

    @model_validator(mode="after")
    def _encoder_settings(self) -> ArchParams:
        if self.pretrained and self.encoder == "scratch":
            raise _KeyError(
                "pretrained",
                True,
                "false with encoder scratch (there are no weights to start from): set encoder "
                f"to one of {', '.join(ENCODERS[1:])}, or pretrained to false",
            )
        if self.weights_path is not None and not self.pretrained:
            raise _KeyError(
                "weights_path",
                self.weights_path,
                "null unless pretrained is true (the weights would be ignored)",
            )
        if self.encoder != "scratch" and self.depth > BACKBONE_DEPTH:
            raise _KeyError(
                "depth",
                self.depth,
                f"at most {BACKBONE_DEPTH} with encoder {self.encoder} (it has "
                f"{BACKBONE_DEPTH} stages, the last at 1/{2**BACKBONE_DEPTH} of the input)",
            )
        return self


class UnpoolParams(ArchParams):
    upsample: Literal["indices", "nearest"] = Field(
        default="indices",
        description="MaxUnpool2d with the encoder's pooling indices, or nearest-neighbour",
    )

    @model_validator(mode="after")
    def _own_encoder(self) -> UnpoolParams:
        if self.encoder != "scratch":
            raise _KeyError(
                "encoder",
                self.encoder,
                "scratch: unpool upsamples with the pooling indices of its own max-pooling "
                f"encoder, which a backbone does not have; {COMBINATIONS}",
            )
        return self


# Every architecture -> the models.<section> that configures it. The skip ablation is configured
# by unet's section: an ablation with settings of its own could silently drift from its reference.
ARCH_SECTIONS: Mapping[str, str] = MappingProxyType(
    {"strided": "strided", "unpool": "unpool", "unet": "unet", "unet_noskip": "unet"}
)


class ModelsParams(_Section):
    strided: ArchParams = ArchParams()
    unpool: UnpoolParams = UnpoolParams()
    unet: ArchParams = ArchParams()

    def of(self, arch: str) -> ArchParams:
        """The settings of architecture ``arch`` (see :data:`ARCH_SECTIONS`)."""
        if arch not in ARCH_SECTIONS:
            valid = ", ".join(ARCH_SECTIONS)
            raise ParamsError(f"unknown architecture {arch!r}; valid names: {valid}")
        return getattr(self, ARCH_SECTIONS[arch])


# ----------------------------------------------------------------------------------- evaluate
class EvaluateParams(_Section):
    batch_size: int = Field(default=32, ge=1, le=4096)
    original_resolution: bool = Field(
        default=True, description="Also score at each test image's own size (logits upsampled)"
    )
    n_examples: int = Field(default=6, ge=1, le=100, description="Rows of the prediction grid")
    grid_scale: int = Field(default=2, ge=1, le=8, description="Nearest upscaling of the grid")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = Field(
        default=True, description="bf16 autocast where native (CUDA, AVX512-BF16/AMX CPUs)"
    )
    bootstrap: int = Field(
        default=2000,
        ge=0,
        le=100_000,
        description="Paired bootstrap resamples of the test images for the report's 95% "
        "intervals (0 = off)",
    )
    cost_rounds: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="Rounds of the interleaved step timing of every network (0 = off)",
    )
    cost_batch: int = Field(
        default=8, ge=1, le=1024, description="Images per timed training step and inference batch"
    )


SECTIONS: dict[str, type[_Section]] = {
    "data": DataParams,
    "preprocess": PreprocessParams,
    "models": ModelsParams,
    "train": TrainParams,
    "tracking": TrackingParams,
    "evaluate": EvaluateParams,
}


class Params(_Section):
    """The whole file: every section, and the rules between sections (:data:`CROSS_SECTION`)."""

    data: DataParams = DataParams()
    preprocess: PreprocessParams = PreprocessParams()
    models: ModelsParams = ModelsParams()
    train: TrainParams = TrainParams()
    tracking: TrackingParams = TrackingParams()
    evaluate: EvaluateParams = EvaluateParams()

    @model_validator(mode="after")
    def _cross_section(self) -> Params:
        for rule in CROSS_SECTION:
            rule(self)
        return self


def _image_size_fits_every_depth(p: Params) -> None:
    """Each architecture halves the side ``depth`` times and its decoder doubles it back."""
    size = p.preprocess.image_size
    depths = {arch: getattr(p.models, arch).depth for arch in ModelsParams.model_fields}
    need = 2 ** max(depths.values())
    if size % need:
        deepest = ", ".join(f"models.{a}.depth = {d}" for a, d in depths.items() if 2**d == need)
        near = sorted({max(need, size // need * need), (size // need + 1) * need})
        raise _KeyError(
            "image_size",
            size,
            f"a multiple of {need} for {deepest} (the side must be divisible by 2**depth of "
            f"every architecture): e.g. {' or '.join(map(str, near))}, or a smaller depth",
            prefix="preprocess",
        )


# Rules that relate keys of different sections: checked whenever params are loaded, by every
# stage, so that the first stage to run fails rather than the one that uses the keys.
CROSS_SECTION = (_image_size_fits_every_depth,)


# ------------------------------------------------------------------------------------ loading
class _KeyError(ValueError):
    """Raised inside validators to point at a sub-key rather than the whole section."""

    def __init__(self, key: str, value: Any, allowed: str, prefix: str | None = None) -> None:
        super().__init__(f"{key} = {value!r}: expected {allowed}")
        self.key, self.value, self.allowed, self.prefix = key, value, allowed, prefix


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Names accepted at ``loc`` (the parent of an unknown key), for the error message."""
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def _format(exc: ValidationError, model: type[BaseModel], prefix: str, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        ctx_err = err.get("ctx", {}).get("error")
        if isinstance(ctx_err, _KeyError):
            pre = ctx_err.prefix or ".".join([prefix, *map(str, loc)]).strip(".")
            key = f"{pre}.{ctx_err.key}"
            lines.append(f"{key} = {ctx_err.value!r} is invalid: expected {ctx_err.allowed}")
            continue
        key = ".".join([prefix, *map(str, loc)]).strip(".")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
            lines.append(f"unknown key {key}{hint}")
        elif err["type"] == "missing":
            lines.append(f"missing key {key}")
        else:
            lines.append(f"{key} = {err['input']!r} is invalid: {err['msg']}")
    return f"{source}: " + "; ".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{path}: not valid YAML ({problem}{where})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(
            f"{path}: top level must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def validate(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a whole params mapping (as read from YAML)."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format(exc, Params, "", source)) from None


def load(path: str | Path = "params.yaml") -> Params:
    """Load and validate every section of ``path``."""
    path = Path(path)
    return validate(_read_yaml(path), str(path))


def load_section(path: str | Path, name: str, whole: bool = True) -> Any:
    """Section ``name`` of ``path`` (what a stage declares in dvc.yaml), after validating the
    whole file and the cross-section rules; with ``whole=False`` only that section is checked."""
    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r}; sections: {', '.join(SECTIONS)}")
    path = Path(path)
    raw = _read_yaml(path)
    if whole:
        return getattr(validate(raw, str(path)), name)
    model = SECTIONS[name]
    section = raw.get(name, {})
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ParamsError(f"{path}: {name} must be a mapping, got {section!r}")
    try:
        return model.model_validate(section)
    except ValidationError as exc:
        raise ParamsError(_format(exc, model, name, str(path))) from None
