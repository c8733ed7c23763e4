"""The one schema of the results files: what train and evaluate write, what the report and the
sweep read.

``metrics/train/<arch>.json``  :class:`TrainMetrics` (train stage)
``metrics/test/<arch>.json``   :class:`TestMetrics`  (evaluate stage)
``metrics/summary.json``       :class:`Summary`      (evaluate stage): one row per architecture,
                               the best architecture per metric, paired bootstrap intervals
``metrics/scores.json``        :class:`Headline`     (evaluate stage): the one DVC metrics file, a
                               few numbers per architecture (:data:`HEADLINE`), so that ``dvc exp
                               show`` and ``dvc metrics diff`` stay readable; the files above are
                               DVC outputs holding the strings, intervals and per-image detail
``plots/**/*.csv``             the column names of every plot table (``*_COLUMNS``), and of
                               ``plots/eval/examples.csv`` (which image each grid shows)

Every file is written and read through this module, so a key has one spelling: a metric is named
by its path in these records, ``miou`` or ``iou.border`` (per-class values are nested under
``iou`` and ``dice`` everywhere). Reading validates the whole file: a missing, renamed or extra key
is a :class:`~petseg.errors.DataError` naming the file and the key. A difference between two
architectures is looked up with :meth:`Intervals.difference`, which works for either order.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from petseg import CLASSES
from petseg.errors import DataError
from petseg.fileio import atomic_write_bytes, atomic_write_json

# The metrics the report compares between architectures with a paired bootstrap interval.
COMPARED = ("miou", "iou.border", "boundary_iou")
# The scalar metrics of a summary row that have a best architecture.
RANKED = (
    "miou",
    "pixel_accuracy",
    "mean_dice",
    "binary_pet_iou",
    "boundary_iou",
    "train_seconds",
    "inference_images_per_s",
    "params",
    "gflops_per_image",
)
# Metrics where the smaller value is the better one (the rest: larger is better).
LOWER_IS_BETTER = frozenset(
    {
        "train_seconds",
        "params",
        "gflops_per_image",
        "cost.train_step.ratio",
        "cost.inference_batch.ratio",
    }
)

# The numbers per architecture in metrics/scores.json, the DVC metrics file. With four networks
# each score column is four columns of `dvc exp show`: the pet and background IoU, which move with
# mIoU, stay in metrics/test/<arch>.json; border IoU is the class that separates the networks.
HEADLINE = ("miou", "pixel_accuracy", "iou.border", "boundary_iou", "train_seconds", "params")

TRAIN_CURVE_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_miou",
    "val_pixel_acc",
    *(f"val_iou_{c}" for c in CLASSES),
    "lr",
    "epoch_seconds",
    "images_per_s",
)
CONFUSION_COLUMNS = ("arch", "actual", "predicted", "pixels", "fraction")
PER_CLASS_COLUMNS = ("arch", "class", "iou", "dice")
RUNTIME_COLUMNS = (
    "arch",
    "train_seconds",
    "train_images_per_s",
    "inference_images_per_s",
    "gflops_per_image",
    "params",
)
# make compare (petseg.sweep): each network's compared metrics per training seed, and each pair's
# differences per seed with their paired bootstrap interval over the test images (NaN: none).
SEEDS_COLUMNS = ("experiment", "seed", "arch", *COMPARED)
SEED_DIFFS_COLUMNS = ("experiment", "seed", "a", "b", "metric", "diff", "low", "high")
# make transfer (petseg.sweep transfer): each network of the swept models.<section> per encoder,
# starting weights (pretrained: ImageNet, else random) and seed: its cost and its test scores.
TRANSFER_COLUMNS = (
    "experiment", "arch", "encoder", "pretrained", "seed", "epochs", "params",
    "gflops_per_image", "train_seconds", "miou", "binary_pet_iou", "iou_border", "boundary_iou",
)  # fmt: skip
PER_IMAGE_INDEX = "image"  # per_image.csv: this column, then one mIoU column per architecture
# examples.csv: the test image each prediction grid shows (file: its name in plots/predictions;
# kind: fixed or hardest; rank: 1-based within the kind).
EXAMPLE_COLUMNS = ("file", "kind", "rank", "image")

HINT = {
    "preprocess": "run dvc repro preprocess",
    "train": "run its train stage (dvc repro)",
    "evaluate": "run dvc repro evaluate",
}


class Record(BaseModel):
    """A results record: every key required (unless it defaults), none unknown, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def at(self, metric: str) -> Any:
        """The value at a dotted metric path, e.g. ``miou`` or ``iou.border``."""
        value: Any = self
        for part in metric.split("."):
            value = value[part] if isinstance(value, Mapping) else getattr(value, part)
        return value


def _every_class(values: dict[str, float]) -> dict[str, float]:
    # Readers index these by every class name: a missing or misspelt class fails at read, not later.
    if set(values) != set(CLASSES):
        raise ValueError(f"names {', '.join(values) or 'no class'}, not {', '.join(CLASSES)}")
    return values


PerClass = Annotated[dict[str, float], AfterValidator(_every_class)]


class Scores(Record):
    """Scores of one confusion matrix (:func:`petseg.evaluate.scores.scores`)."""

    pixel_accuracy: float
    miou: float
    iou: PerClass
    mean_dice: float
    dice: PerClass
    binary_pet_iou: float
    confusion: list[list[int]]


class TrainMetrics(Record):
    """``metrics/train/<arch>.json``: how one architecture trained."""

    arch: str
    best_epoch: int
    best_val_miou: float
    final_val_miou: float
    epochs: int
    train_seconds: float
    train_images_per_s: float
    params: int
    gflops_per_image: float
    image_size: int
    world_size: int
    device: str
    hardware: str
    threads: int
    precision: str
    # DDP only: every rank's weight checksum, identical when the replicas stayed in sync.
    weights_checksum_per_rank: list[float] | None = None
    # models.<arch>.pretrained only: SHA-256 of the weights file the encoder started from.
    encoder_weights_sha256: str | None = None


class Timing(Record):
    """One timed step of one network, over the rounds of an interleaved measurement."""

    ms: float  # median milliseconds
    ratio: float  # median over rounds of ms / the reference network's ms in the same round
    ratio_low: float  # lower and upper quartile of that ratio over the rounds
    ratio_high: float


class StepCost(Record):
    """A training step (forward, backward, optimizer) and an inference batch of one network."""

    train_step: Timing
    inference_batch: Timing


class CostSetup(Record):
    """How the step costs were measured: every network in one process, round-robin."""

    batch: int
    image_size: int
    rounds: int
    threads: int
    device: str
    reference: dict[str, str]  # step ("train_step", "inference_batch") -> the fastest network


class TestMetrics(Scores):
    """``metrics/test/<arch>.json``: test scores at the network's resolution (and optionally at
    each image's own), inference cost, and the training figures they are compared with."""

    __test__ = False  # not a pytest test class despite its name

    arch: str
    image_size: int
    n_test: int
    original_resolution: Scores | None = None
    inference_images_per_s: float
    inference_peak_memory_mb: float
    train_seconds: float
    train_images_per_s: float
    best_epoch: int
    best_val_miou: float
    params: int
    gflops_per_image: float
    # Boundary IoU of the pet mask (petseg.evaluate.scores.boundary_counts), network resolution.
    boundary_iou: float
    epochs: int  # epochs trained: best_epoch == epochs means it was still improving
    cost: StepCost | None = None  # timed steps (evaluate.cost_rounds > 0)
    mlflow_run_id: str | None = None  # the training run (from the model file): gets the scores

    def to_json(self) -> dict[str, Any]:
        # Key order of the file: identification, scores, then cost (as dvc metrics show lists it).
        data = self.model_dump(exclude_none=True)
        head = {k: data.pop(k) for k in ("arch", "image_size", "n_test")}
        return {**head, **data}


class ArchSummary(Record):
    """One architecture's row of ``metrics/summary.json``."""

    miou: float
    pixel_accuracy: float
    mean_dice: float
    binary_pet_iou: float
    boundary_iou: float
    iou: PerClass
    train_seconds: float
    inference_images_per_s: float
    params: int
    gflops_per_image: float
    best_epoch: int
    epochs: int
    # Share of the test pixels predicted as each class: a collapsed network shows here. Numbers,
    # not the confusion matrix: dvc exp show passes only scalars (lists are dropped).
    predicted: PerClass
    cost: StepCost | None = None

    @classmethod
    def of(cls, test: TestMetrics) -> ArchSummary:
        per_class = [sum(col) for col in zip(*test.confusion, strict=True)]
        total = sum(per_class) or 1
        shares = {c: n / total for c, n in zip(CLASSES, per_class, strict=True)}
        fields = {k: getattr(test, k) for k in cls.model_fields if k != "predicted"}
        return cls.model_validate({**fields, "predicted": shares})


class HeadlineRow(Record):
    """One architecture's entry of ``metrics/scores.json`` (:data:`HEADLINE`)."""

    miou: float
    pixel_accuracy: float
    iou: dict[str, float]  # border only
    boundary_iou: float
    train_seconds: float
    params: int


def headline(tests: Mapping[str, TestMetrics]) -> dict[str, dict[str, Any]]:
    """metrics/scores.json: arch -> the :data:`HEADLINE` numbers, nested by their dotted path."""
    out: dict[str, dict[str, Any]] = {}
    for arch, test in tests.items():
        row: dict[str, Any] = {}
        for metric in HEADLINE:
            *parents, leaf = metric.split(".")
            node = row
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = test.at(metric)
        out[arch] = row
    return out


class Interval(Record):
    low: float
    high: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def includes_zero(self) -> bool:
        return self.low <= 0 <= self.high

    def negated(self) -> Interval:
        """The interval of -x: the difference b - a from that of a - b."""
        return Interval(low=-self.high, high=-self.low)


class PairDiff(Record):
    """Intervals of a - b for the :data:`COMPARED` metrics, nested like :class:`ArchSummary`."""

    miou: Interval
    iou: dict[str, Interval]
    boundary_iou: Interval | None = None  # absent when no boundary counts were resampled


class Intervals(Record):
    """Paired percentile-bootstrap intervals over test images (evaluate.bootstrap)."""

    level: float
    resamples: int
    over: str  # what was resampled, e.g. "82 test images"
    miou: dict[str, Interval]  # arch -> interval of its mIoU
    diff: dict[str, PairDiff]  # pair_key(a, b) -> intervals of a - b

    def difference(self, a: str, b: str, metric: str) -> Interval | None:
        """The interval of a - b in ``metric`` (``miou``, ``iou.border``), whichever order the
        pair was stored in; None when the pair or the metric was not compared."""
        for key, flip in ((pair_key(a, b), False), (pair_key(b, a), True)):
            if key in self.diff:
                try:
                    found = self.diff[key].at(metric)
                except (KeyError, AttributeError):
                    return None
                return found.negated() if flip else found
        return None


class Summary(Record):
    """``metrics/summary.json``."""

    architectures: dict[str, ArchSummary]
    best: dict[str, str]  # metric path -> architecture with the best value
    intervals: Intervals | None = None
    cost: CostSetup | None = None

    @property
    def archs(self) -> list[str]:
        return list(self.architectures)

    def values(self, metric: str) -> dict[str, float]:
        """arch -> its value of ``metric`` (a dotted path such as ``iou.border``)."""
        return {a: row.at(metric) for a, row in self.architectures.items()}

    @classmethod
    def of(
        cls,
        tests: Mapping[str, TestMetrics],
        intervals: Intervals | None,
        cost: CostSetup | None = None,
    ) -> Summary:
        rows = {a: ArchSummary.of(t) for a, t in tests.items()}
        metrics = [*RANKED, *(f"iou.{c}" for c in CLASSES)]
        best = {}
        for metric in metrics:
            pick = min if metric in LOWER_IS_BETTER else max
            best[metric] = pick(rows, key=lambda a, m=metric: rows[a].at(m))
        return cls(architectures=rows, best=best, intervals=intervals, cost=cost)


def pair_key(a: str, b: str) -> str:
    """The key of the difference a - b in :attr:`Intervals.diff`."""
    return f"{a}-{b}"


# ---------------------------------------------------------------------------- read and write
R = TypeVar("R", bound=Record)


def parse(kind: type[R], data: Any, where: str, hint: str = HINT["evaluate"]) -> R:
    """``data`` validated as ``kind``; a DataError naming ``where`` and every bad key."""
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            what = {"missing": "missing", "extra_forbidden": "not expected"}.get(
                err["type"], err["msg"]
            )
            problems.append(f"{key} {what}")
        raise DataError(f"{where}: {'; '.join(problems)}: {hint}") from None


def read_json(path: Path, hint: str = HINT["evaluate"]) -> Any:
    """The JSON file ``path`` unvalidated; a DataError naming it when absent or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): {hint}") from None


def read(kind: type[R], path: Path, hint: str = HINT["evaluate"]) -> R:
    """The JSON file ``path`` as a ``kind`` record (see :func:`parse`)."""
    return parse(kind, read_json(path, hint), str(path), hint)


def read_train(path: Path) -> TrainMetrics:
    return read(TrainMetrics, path, HINT["train"])


def write(path: Path, record: Record) -> None:
    """``record`` as JSON, atomically; optional keys without a value are left out."""
    data = (
        record.to_json()
        if isinstance(record, TestMetrics)
        else record.model_dump(exclude_none=True)
    )
    atomic_write_json(path, data)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """A plot table: exactly ``columns``, floats with 6 significant digits."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def read_csv(path: Path, columns: Sequence[str], hint: str = HINT["evaluate"]) -> pd.DataFrame:
    """A plot table that must hold ``columns``; a DataError naming the file otherwise."""
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path} not found: {hint}") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV ({exc}): {hint}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks the columns {', '.join(missing)}: {hint}")
    return df
