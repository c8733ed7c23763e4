"""Benchmark: the default recipe (params.yaml) vs a plain baseline, on real Oxford-IIIT Pet pairs.

What is measured: test-split mIoU, per-class IoU and pixel accuracy of each architecture trained
with two recipes, and the seconds each training took:

- default: the real recipe, params.yaml's ``train`` and ``models`` sections with
  presets/real.yaml applied (``--params``, ``--preset``; ``--preset none``: params.yaml alone,
  which is the offline demo's recipe);
- baseline: the same architecture, epochs, batch size, image size, seed, device, threads and
  precision, but plain Adam at a constant 1e-3 (AdamW with weight decay 0 is Adam; schedule
  ``constant``: no warm-up, no decay), cross-entropy only (no label smoothing, class weights or
  Dice term), horizontal flips only (no zoom, rotation or colour jitter) and no dropout.

How: the project's own code, as the stages run it. ``preprocess()`` turns ``--data`` (any folder
in the official layout, default the 228 real pairs of ../shared/data/oxford-pets-sample) into
prepared arrays at ``--size`` (trainval split into train/val by the project's seeded, per-breed
split: 117 / 29 for the sample; the official test list is the test split: 82). ``train()`` trains
each (recipe, architecture, seed) and saves its best epoch by val mIoU; the evaluate stage's
``predict``, ``confusion_matrix`` and ``scores`` score that model on the test split at the
network's resolution (one dataset-wide confusion matrix). MLflow logs to a sqlite store in the
work folder (experiments ``real-sample-default`` / ``real-sample-baseline``), without models or
system metrics. The verdict per architecture is default - baseline mIoU, PASS when >= 0.03.

Budget: 2 recipes x 3 architectures at 128 px with the real recipe's 120 epochs per seed; the
measured seconds per epoch and per run are in benchmarks/RESULTS.md. ``--width 16`` or ``--epochs``
make a cheaper (but different) comparison; ``--recipes default`` trains the default recipe only
(no verdict), and ``--compile`` trains both with ``train.compile: true`` (their timings against
runs without it are what train.compile buys end to end).

Resumable: every run has its own folder under ``--workdir``, ``<recipe>-<arch>-s<seed>-<fp>``,
where ``fp`` is train()'s resume fingerprint (train and model params, prepared data, the training
code and the torch version). A finished run is reused (its result.json), an interrupted one
continues from train()'s per-epoch checkpoint. Edit params.yaml and rerun: only the default
recipe's runs are redone, the baseline's are reused (an edit of the training code redoes both), and
going back to settings tried before costs nothing (a finished run keeps its model.pt; delete
the work folder to reclaim the space).

Usage: python benchmarks/real_sample.py [--data DIR] [--params params.yaml]
       [--preset presets/real.yaml|none] [--size 128] [--archs strided,unpool,unet]
       [--recipes default,baseline] [--epochs N] [--seeds 0 1] [--width W] [--threads T]
       [--compile] [--workdir build/real-sample/...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from petseg import CLASSES, NUM_CLASSES, cli, config, preset
from petseg.checkpoint import fingerprint as train_fingerprint
from petseg.config import ArchParams, Params, PreprocessParams, TrackingParams, TrainParams
from petseg.data.prepared import MANIFEST, load_split, read_manifest
from petseg.data.preprocess import preprocess
from petseg.device import cpu_name, pick_device, precision
from petseg.errors import DataError, ParamsError
from petseg.evaluate.inference import predict
from petseg.evaluate.scores import bootstrap_intervals, per_image_confusion, scores
from petseg.fileio import atomic_write_json
from petseg.metrics import confusion_matrix
from petseg.models import ARCHITECTURES, load_model
from petseg.train import TrainPaths, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared/data/oxford-pets-sample"
RECIPES = ("default", "baseline")
MARGIN = 0.03  # the default recipe must beat the baseline by this much test mIoU, per arch

log = logging.getLogger("real_sample")


# ------------------------------------------------------------------------------------ recipes
def baseline_train(default: TrainParams) -> TrainParams:
    """The plain recipe: Adam 1e-3 constant, cross-entropy, flips only; the rest as ``default``."""
    return TrainParams.model_validate(
        {
            **default.model_dump(),
            "lr": 1e-3,
            "weight_decay": 0.0,  # AdamW without weight decay is Adam
            "schedule": "constant",
            "warmup_fraction": 0.0,
            "label_smoothing": 0.0,
            "class_weights": None,
            "dice_weight": 0.0,
            "ema_epochs": 0.0,  # the plain weights, not an average
            "augment": {"enabled": True, "hflip": True, "scale": 0.0, "rotate": 0.0, "color": 0.0},
        }
    )


def baseline_arch(default: ArchParams) -> ArchParams:
    """The same network without dropout (a regularizer, i.e. part of the recipe)."""
    return type(default).model_validate({**default.model_dump(), "dropout": 0.0})


def with_overrides(
    params: Params,
    size: int,
    epochs: int | None = None,
    width: int | None = None,
    threads: int | None = None,
    compile: bool = False,
) -> Params:
    """``params`` with the command-line overrides, validated like params.yaml (errors name keys)."""
    raw = params.model_dump()
    raw["preprocess"]["image_size"] = size
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    if threads is not None:
        raw["train"]["threads"] = threads
    if compile:
        raw["train"]["compile"] = True
    if width is not None:
        for arch in raw["models"].values():
            arch["base_width"] = width
    return config.validate(raw, "params with command-line overrides")


def recipes(
    params: Params, archs: list[str]
) -> dict[str, tuple[TrainParams, dict[str, ArchParams]]]:
    """recipe -> (train params, arch -> model params): params.yaml's own, and the baseline."""
    models = {a: params.models.of(a) for a in archs}
    return {
        "default": (params.train, models),
        "baseline": (
            baseline_train(params.train),
            {a: baseline_arch(m) for a, m in models.items()},
        ),
    }


def describe(train_p: TrainParams, models: dict[str, ArchParams]) -> str:
    a = train_p.augment
    aug = (
        "off"
        if not a.enabled
        else f"hflip {a.hflip}, scale {a.scale:g}, rotate {a.rotate:g}, color {a.color:g}"
    )
    loss = f"CE (smoothing {train_p.label_smoothing:g}, class weights {train_p.class_weights})"
    if train_p.dice_weight:
        loss += f" + {train_p.dice_weight:g} x Dice"
    warm = "" if train_p.schedule == "constant" else f", warm-up {train_p.warmup_fraction:g}"
    dropout = ", ".join(sorted({f"{m.dropout:g}" for m in models.values()}))
    ema = f"; weight EMA over {train_p.ema_epochs:g} epochs" if train_p.ema_epochs else ""
    return (
        f"AdamW lr {train_p.lr:g}, weight decay {train_p.weight_decay:g}, {train_p.schedule}"
        f"{warm}; {loss}; augment {aug}; dropout {dropout}{ema}"
    )


# --------------------------------------------------------------------------------------- data
def check_data(data: Path) -> None:
    """One clear error naming the folder when it is not in the official layout."""
    if not data.is_dir():
        raise DataError(
            f"--data {data}: no such folder (expected the official Oxford-IIIT Pet layout: "
            "images/*.jpg, annotations/trimaps/*.png, annotations/{trainval,test}.txt)"
        )
    missing = [
        p for p in ("images", "annotations/trimaps", "annotations/trainval.txt",
                    "annotations/test.txt") if not (data / p).exists()
    ]  # fmt: skip
    if missing:
        raise DataError(f"--data {data}: not in the official layout, missing {', '.join(missing)}")


def prepare(data: Path, out: Path, params: PreprocessParams) -> dict[str, Any]:
    """preprocess() ``data`` into ``out``; reused while the data folder and params are the same."""
    key = {"data": str(data.resolve()), "preprocess": params.model_dump()}
    key_file = out.parent / "prepared.json"
    if (out / MANIFEST).exists() and key_file.exists() and json.loads(key_file.read_text()) == key:
        return read_manifest(out)
    manifest = preprocess(data, out, params, progress=False)
    atomic_write_json(key_file, key)
    return manifest


# ---------------------------------------------------------------------------------------- runs
def run_one(
    recipe: str,
    arch: str,
    train_p: TrainParams,
    arch_p: ArchParams,
    prepared: Path,
    workdir: Path,
    test: Any,
    eval_p: config.EvaluateParams,
) -> dict[str, Any]:
    """Train (or reuse / resume) one run and score its best epoch on the test split."""
    fingerprint = train_fingerprint(arch, train_p, arch_p, prepared)
    run_dir = workdir / f"{recipe}-{arch}-s{train_p.seed}-{fingerprint[:8]}"
    paths = TrainPaths(
        prepared=prepared,
        model=run_dir / "model.pt",
        metrics=run_dir / "train.json",
        plot=run_dir / "epochs.csv",
        checkpoint_dir=run_dir / "checkpoints",
    )
    result_file = run_dir / "result.json"
    if result_file.exists():
        result = json.loads(result_file.read_text())
        if "image_confusion" not in result and paths.model.exists():  # from an older version
            pred = predict_test_split(paths.model, test, eval_p)
            result["image_confusion"] = per_image_confusion(pred, test.masks).tolist()
            atomic_write_json(result_file, result)
        return {**result, "status": "cached"}
    status = "resumed" if (paths.checkpoint_dir / "last.pt").exists() else "new"
    if not (paths.model.exists() and paths.metrics.exists()):
        train(
            arch, train_p, arch_p,
            TrackingParams(experiment=f"real-sample-{recipe}", log_model=False,
                           system_metrics=False),
            paths, data_source="folder", progress=sys.stderr.isatty(),
        )  # fmt: skip
    trained = json.loads(paths.metrics.read_text())
    pred = predict_test_split(paths.model, test, eval_p)
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(test.masks), NUM_CLASSES)
    s = scores(cm)
    result = {
        "recipe": recipe,
        "arch": arch,
        "seed": train_p.seed,
        "miou": s.miou,
        "iou": s.iou,
        "pixel_accuracy": s.pixel_accuracy,
        "mean_dice": s.mean_dice,
        "confusion": s.confusion,
        "image_confusion": per_image_confusion(pred, test.masks).tolist(),  # for the intervals
        "train_seconds": trained["train_seconds"],
        "seconds_per_epoch": _median_epoch_seconds(paths.plot),
        "epochs": trained["epochs"],
        "best_epoch": trained["best_epoch"],
        "best_val_miou": trained["best_val_miou"],
        "params": trained["params"],
        "precision": trained["precision"],
        "threads": trained["threads"],
        "fingerprint": fingerprint,
        "run_dir": str(run_dir),
    }
    atomic_write_json(result_file, result)
    return {**result, "status": status}


def predict_test_split(model_path: Path, test: Any, eval_p: config.EvaluateParams) -> np.ndarray:
    """The saved model's labels for the test split, as the evaluate stage predicts them."""
    model, _ = load_model(model_path)
    device = pick_device(eval_p.device, "evaluate.device")
    pred, _ = predict(model, test.images, eval_p.batch_size, device, eval_p.bf16)
    return pred


def _median_epoch_seconds(plot: Path) -> float:
    """Median epoch (train + validation) seconds from train()'s CSV: the first epoch of a process
    also pays one-off kernel selection, so the median says more about the budget of more epochs."""
    with plot.open() as fh:
        return float(np.median([float(r["epoch_seconds"]) for r in csv.DictReader(fh)]))


# -------------------------------------------------------------------------------------- output
def table(results: list[dict[str, Any]], seeds: list[int]) -> list[str]:
    head = (
        f"{'seed':>4}  {'arch':8} {'recipe':9} {'mIoU':>6} "
        + " ".join(f"{'IoU ' + c:>14}" for c in CLASSES)
        + f" {'pix acc':>7} {'train s':>8} {'s/epoch':>7} {'best ep':>7}  run"
    )
    lines = [head, "-" * len(head)]

    def row(seed: str, r: dict[str, Any], status: str) -> str:
        return (
            f"{seed:>4}  {r['arch']:8} {r['recipe']:9} {r['miou']:6.3f} "
            + " ".join(f"{r['iou'][c]:14.3f}" for c in CLASSES)
            + f" {r['pixel_accuracy']:7.3f} {r['train_seconds']:8.0f} "
            f"{r['seconds_per_epoch']:7.1f} {r['best_epoch']:>7}  {status}"
        )

    for r in results:
        lines.append(row(str(r["seed"]), r, r["status"]))
    if len(seeds) > 1:
        for key in dict.fromkeys((r["arch"], r["recipe"]) for r in results):
            group = [r for r in results if (r["arch"], r["recipe"]) == key]
            mean = {
                "arch": key[0],
                "recipe": key[1],
                "miou": np.mean([r["miou"] for r in group]),
                "iou": {c: np.mean([r["iou"][c] for r in group]) for c in CLASSES},
                "pixel_accuracy": np.mean([r["pixel_accuracy"] for r in group]),
                "train_seconds": np.mean([r["train_seconds"] for r in group]),
                "seconds_per_epoch": np.mean([r["seconds_per_epoch"] for r in group]),
                "best_epoch": "-",
            }
            lines.append(row("mean", mean, f"{len(group)} seeds"))
    return lines


def verdicts(
    results: list[dict[str, Any]], archs: list[str], seeds: list[int], resamples: int = 2000
) -> dict[str, Any]:
    """Per arch: default - baseline test mIoU per seed, their mean, PASS if every seed >= MARGIN;
    with each seed's 95% paired-bootstrap interval of the difference over the test images (the
    evaluate stage's :func:`~petseg.evaluate.scores.bootstrap_intervals`), which says how much of
    it the draw of test images could explain (not how much another seed would)."""
    by_key = {(r["recipe"], r["arch"], r["seed"]): r for r in results}
    out = {}
    for arch in archs:
        deltas, intervals = {}, {}
        for s in seeds:
            d, b = by_key[("default", arch, s)], by_key[("baseline", arch, s)]
            deltas[s] = d["miou"] - b["miou"]
            if "image_confusion" in d and "image_confusion" in b:
                cms = {k: np.asarray(r["image_confusion"]) for k, r in (("d", d), ("b", b))}
                iv = bootstrap_intervals(cms, resamples).difference("d", "b", "miou")
                intervals[s] = (iv.low, iv.high)
        out[arch] = {
            "delta_per_seed": deltas,
            "interval_per_seed": intervals,
            "mean_delta": float(np.mean(list(deltas.values()))),
            "pass": all(d >= MARGIN for d in deltas.values()),
        }
    return out


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="official layout folder")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the default")
    parser.add_argument(
        "--preset", default=str(ROOT / "presets/real.yaml"),
        help="applied to --params (default: the real recipe); none: --params as it is",
    )  # fmt: skip
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated")
    parser.add_argument("--compile", action="store_true", help="train.compile: true")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated")
    parser.add_argument("--epochs", type=int, help="override both recipes' train.epochs")
    parser.add_argument("--seeds", type=int, nargs="+", help="train.seed values (default: params)")
    parser.add_argument("--width", type=int, help="override models.*.base_width (cheaper runs)")
    parser.add_argument("--threads", type=int, help="override train.threads (0 = all cores)")
    parser.add_argument("--workdir", type=Path, help="default build/real-sample/<data>-<size>px")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    t0 = time.perf_counter()

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if unknown or not archs:
        raise ParamsError(f"--archs {args.archs!r}: valid names are {', '.join(ARCHITECTURES)}")
    chosen = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not chosen or any(r not in RECIPES for r in chosen):
        raise ParamsError(f"--recipes {args.recipes!r}: valid names are {', '.join(RECIPES)}")
    base = (
        config.load(args.params)
        if args.preset == "none"
        else preset.applied(args.preset, args.params)
    )
    check_data(args.data)
    params = with_overrides(
        base, args.size, args.epochs, args.width, args.threads, args.compile
    )  # fmt: skip
    pre_p = params.preprocess
    seeds = args.seeds if args.seeds is not None else [params.train.seed]
    recipe_params = recipes(params, archs)
    name = f"{args.data.resolve().name}-{args.size}px"
    workdir = args.workdir or ROOT / "build/real-sample" / name
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"

    manifest = prepare(args.data, workdir / "prepared", pre_p)
    test = load_split(workdir / "prepared", "test", mmap=False)
    train_p, models = recipe_params["default"]
    device = pick_device(params.evaluate.device, "evaluate.device")
    torch.set_num_threads(train_p.threads or len(os.sched_getaffinity(0)))
    counts = manifest["counts"]
    header = [
        f"data: {args.data.resolve()} -> {workdir / 'prepared'}",
        f"splits: train {counts['train']}, val {counts['val']}, test {counts['test']} "
        f"(train/val: preprocess.seed {pre_p.seed}, val_fraction {pre_p.val_fraction:g})",
        f"image size {args.size} px; epochs {train_p.epochs}; batch {train_p.batch_size}; "
        f"seeds {' '.join(map(str, seeds))} (train.seed)",
        "widths: "
        + ", ".join(f"{a} {m.base_width} x depth {m.depth} ({m.block})" for a, m in models.items())
        + (f"  [--width {args.width} overrides params.yaml]" if args.width else ""),
        f"default  ({args.params}"
        + ("" if args.preset == "none" else f" + {args.preset}")
        + f"): {describe(train_p, models)}",
        f"baseline: {describe(*recipe_params['baseline'])}",
        f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} "
        f"threads; load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}; "
        f"{precision(device, train_p.bf16)}",
    ]
    print("\n".join(header), flush=True)

    results = []
    jobs = [(s, a, r) for s in seeds for a in archs for r in RECIPES if r in chosen]
    for i, (seed, arch, recipe) in enumerate(jobs, start=1):
        t_p, m_p = recipe_params[recipe]
        t_p = TrainParams.model_validate({**t_p.model_dump(), "seed": seed})
        res = run_one(
            recipe, arch, t_p, m_p[arch], workdir / "prepared", workdir, test, params.evaluate,
        )  # fmt: skip
        results.append(res)
        log.info(
            "[%d/%d] %s %s seed %d: test mIoU %.4f, %.0f s (%s)",
            i, len(jobs), recipe, arch, seed, res["miou"], res["train_seconds"], res["status"],
        )  # fmt: skip

    verdict = verdicts(results, archs, seeds) if len(chosen) == len(RECIPES) else {}
    print()
    print("\n".join(table(results, seeds)))
    print(
        "train s: train()'s wall seconds, all epochs with validation; s/epoch: median epoch; "
        "best ep: the epoch kept (best val mIoU); run: new | resumed | cached (timings from then)"
    )
    if verdict:
        print(
            f"\nverdict: default - baseline test mIoU, PASS when >= {MARGIN} on every seed; "
            f"[95% paired-bootstrap interval over the {counts['test']} test images]"
        )
    for arch, v in verdict.items():
        per_seed = ", ".join(
            f"seed {s}: {d:+.3f}"
            + (" [{:+.3f}, {:+.3f}]".format(*v["interval_per_seed"][s])
               if s in v["interval_per_seed"] else "")
            for s, d in v["delta_per_seed"].items()
        )  # fmt: skip
        mean = f"; mean {v['mean_delta']:+.3f}" if len(seeds) > 1 else ""
        print(f"  {arch:8} {per_seed}{mean}  {'PASS' if v['pass'] else 'FAIL'}")
    wall = time.perf_counter() - t0
    print(f"total wall time {wall:.0f} s ({sum(r['status'] == 'cached' for r in results)} cached)")
    if args.out:
        atomic_write_json(
            args.out,
            {
                "setup": {
                    "data": str(args.data.resolve()),
                    "counts": counts,
                    "image_size": args.size,
                    "params": str(args.params),
                    "preset": args.preset,
                    "epochs": train_p.epochs,
                    "widths": {a: m.base_width for a, m in models.items()},
                    "width_override": args.width,
                    "seeds": seeds,
                    "threads": torch.get_num_threads(),
                    "cpu": cpu_name(),
                    "torch": torch.__version__,
                    "recipes": {
                        name: {
                            "train": t.model_dump(),
                            "models": {a: m.model_dump() for a, m in ms.items()},
                        }
                        for name, (t, ms) in recipe_params.items()
                    },
                },
                "runs": results,
                "verdict": {
                    a: {
                        **v,
                        "delta_per_seed": {str(s): d for s, d in v["delta_per_seed"].items()},
                        "interval_per_seed": {
                            str(s): list(iv) for s, iv in v["interval_per_seed"].items()
                        },
                    }
                    for a, v in verdict.items()
                },
                "margin": MARGIN,
                "wall_seconds": wall,
            },
        )


if __name__ == "__main__":
    cli.run(main)
