"""benchmarks/real_sample.py without training: the two recipes it builds and its data check."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from petseg import config
from petseg.errors import DataError, ParamsError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "real_sample.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("real_sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _params(**train) -> config.Params:
    return config.validate(
        {
            "train": {"epochs": 7, "batch_size": 16, "seed": 3, "lr": 5e-3, "weight_decay": 0.05,
                      "schedule": "cosine", "label_smoothing": 0.1, "class_weights": [1, 1, 2],
                      "dice_weight": 0.5, "augment": {"scale": 0.3, "rotate": 20.0}, **train},
            "models": {"unet": {"base_width": 24, "dropout": 0.2, "block": "residual"},
                       "unpool": {"upsample": "nearest", "dropout": 0.1}},
        }
    )  # fmt: skip


def test_default_recipe_is_params_yaml_and_overrides_apply_to_both(bench):
    params = _params()
    over = bench.with_overrides(params, size=64, epochs=2, width=8, threads=1)
    assert over.preprocess.image_size == 64
    recipes = bench.recipes(over, ["unet", "unpool"])
    default_train, default_models = recipes["default"]
    assert default_train == params.train.model_copy(update={"epochs": 2, "threads": 1})
    assert default_models["unet"].block == "residual" and default_models["unet"].dropout == 0.2
    base_train, base_models = recipes["baseline"]
    for t, models in ((default_train, default_models), (base_train, base_models)):
        assert (t.epochs, t.batch_size, t.seed, t.threads) == (2, 16, 3, 1)
        assert {a: m.base_width for a, m in models.items()} == {"unet": 8, "unpool": 8}


def test_baseline_is_plain_adam_cross_entropy_and_flips(bench):
    base_train, base_models = bench.recipes(_params(), ["unet", "unpool"])["baseline"]
    assert (base_train.lr, base_train.weight_decay, base_train.schedule) == (1e-3, 0.0, "constant")
    assert base_train.label_smoothing == 0 and base_train.dice_weight == 0
    assert base_train.class_weights is None
    aug = base_train.augment
    assert (aug.enabled, aug.hflip, aug.scale, aug.rotate, aug.color) == (True, True, 0, 0, 0)
    assert (base_train.epochs, base_train.batch_size, base_train.seed) == (7, 16, 3)
    # Same networks (block, width, upsampling), without dropout.
    assert base_models["unet"].block == "residual" and base_models["unet"].base_width == 24
    assert base_models["unpool"].upsample == "nearest"
    assert all(m.dropout == 0 for m in base_models.values())


def test_bad_override_names_the_key(bench):
    with pytest.raises(ParamsError, match=r"train\.epochs = 0 is invalid"):
        bench.with_overrides(_params(), size=128, epochs=0)


def test_data_folder_not_in_official_layout_names_what_is_missing(bench, tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"missing annotations/trimaps, annotations/trainval"):
        bench.check_data(tmp_path)


def test_missing_data_folder_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "no-such-pets"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(missing), "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: --data {missing}: no such folder (expected the official Oxford-IIIT Pet layout:"
        " images/*.jpg, annotations/trimaps/*.png, annotations/{trainval,test}.txt)"
    )
    assert not (tmp_path / "w").exists()


def _run(recipe, arch, seed, correct):
    """A scored run: 20 identical test images, ``correct`` of their 10 border pixels right."""
    cm = [[[50, 0, 0], [0, 40, 0], [0, 10 - correct, correct]] for _ in range(20)]
    miou = (1 + 40 / (50 - correct) + correct / 10) / 3
    return {"recipe": recipe, "arch": arch, "seed": seed, "miou": miou, "image_confusion": cm}


def test_verdict_needs_the_margin_on_every_seed_and_gives_bootstrap_intervals(bench):
    results = [
        _run("default", "unet", 0, 8), _run("baseline", "unet", 0, 4),
        _run("default", "unet", 1, 8), _run("baseline", "unet", 1, 8),
    ]  # fmt: skip
    v = bench.verdicts(results, ["unet"], [0, 1], resamples=200)["unet"]
    assert v["delta_per_seed"][0] > bench.MARGIN and v["delta_per_seed"][1] == 0
    assert not v["pass"]
    for seed, (low, high) in v["interval_per_seed"].items():
        # identical images: every resample gives the same difference
        assert low == pytest.approx(v["delta_per_seed"][seed])
        assert high == pytest.approx(v["delta_per_seed"][seed])
    for r in results:
        del r["image_confusion"]  # results cached before the intervals existed: none printed
    assert bench.verdicts(results, ["unet"], [0, 1])["unet"]["interval_per_seed"] == {}


def test_compile_override_sets_train_compile_for_both_recipes(bench):
    over = bench.with_overrides(_params(), size=64, compile=True)
    assert all(t.compile for t, _ in bench.recipes(over, ["unet"]).values())
    assert not bench.with_overrides(_params(), size=64).train.compile


def test_real_preset_applied_to_params_is_the_real_recipe():
    from petseg import preset

    real = preset.applied(ROOT / "presets/real.yaml", ROOT / "params.yaml")
    demo = config.load(ROOT / "params.yaml")
    overrides = preset.read_preset(ROOT / "presets/real.yaml")
    assert real.train.epochs == overrides["train.epochs"] != demo.train.epochs
    assert real.models.unet.base_width == overrides["models.unet.base_width"]
    assert real.evaluate == demo.evaluate  # what the preset leaves alone is params.yaml's


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipes", "default,fancy"], "error: --recipes 'default,fancy': valid names are "
                                         "default, baseline"),
        (["--preset", "no-such.yaml"], "error: no-such.yaml: preset file not found"),
    ],
)  # fmt: skip
def test_bad_recipe_or_preset_is_one_line_and_exit_2(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == message
    assert not (tmp_path / "w").exists()
