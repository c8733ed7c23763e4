"""Presets: written into params.yaml (comments kept, validated) or run as a DVC experiment."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from petseg.errors import ParamsError
from petseg.preset import apply_preset, exp_run_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params(tmp_path):
    """The committed params.yaml (the workspace copy may hold an applied experiment)."""
    path = tmp_path / "params.yaml"
    committed = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True
    )
    if committed.returncode == 0:
        path.write_text(committed.stdout)
    else:  # not a git checkout (an unpacked sdist): the file as it is
        shutil.copy(ROOT / "params.yaml", path)
    return path


def test_real_preset_changes_only_its_keys_and_keeps_comments(params):
    before = params.read_text()
    preset = yaml.safe_load((ROOT / "presets/real.yaml").read_text())
    changed = apply_preset(ROOT / "presets/real.yaml", params)
    assert changed and set(changed) <= set(preset)
    after = params.read_text()
    assert [ln for ln in after.splitlines() if ln.lstrip().startswith("#")] == [
        ln for ln in before.splitlines() if ln.lstrip().startswith("#")
    ]
    loaded = yaml.safe_load(after)
    for key, value in preset.items():
        node = loaded
        for part in key.split("."):
            node = node[part]
        assert node == value
    # Applying again changes nothing, so a later `dvc repro` finds dvc.lock valid.
    assert apply_preset(ROOT / "presets/real.yaml", params) == []
    assert params.read_text() == after


def test_unknown_key_and_invalid_value_leave_params_untouched(params, tmp_path):
    before = params.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("data.sourcee: synthetic\n")
    with pytest.raises(ParamsError, match="no key data.sourcee"):
        apply_preset(bad, params)
    bad.write_text("preprocess.image_size: 50\n")
    with pytest.raises(ParamsError, match=r"preprocess\.image_size = 50 is invalid"):
        apply_preset(bad, params)
    assert params.read_text() == before


def test_a_preset_that_is_not_yaml_names_the_file(tmp_path):
    from petseg.errors import ParamsError
    from petseg.preset import read_preset

    bad = tmp_path / "bad.yaml"
    bad.write_text("train.epochs: [3\n")
    with pytest.raises(ParamsError, match="bad.yaml: not valid YAML"):
        read_preset(bad)


def test_exp_run_args_set_every_override_as_dvc_parses_it(params):
    preset = yaml.safe_load((ROOT / "presets/real.yaml").read_text())
    cmd = exp_run_args(ROOT / "presets/real.yaml", params)
    assert cmd[:3] == ["dvc", "exp", "run"]
    sets = cmd[3:]
    assert sets[::2] == ["-S"] * len(preset)
    parsed = dict(s.split("=", 1) for s in sets[1::2])
    assert {k: yaml.safe_load(v) for k, v in parsed.items()} == preset


def test_exp_run_args_validate_before_anything_runs(params, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocess.image_size: 50\n")
    with pytest.raises(ParamsError, match=r"preprocess\.image_size = 50 is invalid"):
        exp_run_args(bad, params)
    bad.write_text("train.epochz: 3\n")
    with pytest.raises(ParamsError, match="no key train.epochz"):
        exp_run_args(bad, params)


@pytest.mark.parametrize("first", [None, "presets/real.yaml"])
def test_transfer_preset_puts_the_unet_on_a_pretrained_resnet34(params, first):
    from petseg import config

    if first:
        apply_preset(ROOT / first, params)
    changed = apply_preset(ROOT / "presets/transfer.yaml", params)
    assert "models.unet.encoder" in changed
    loaded = config.load(params)
    unet = loaded.models.unet
    assert (unet.encoder, unet.pretrained, unet.depth) == ("resnet34", True, 5)
    assert (loaded.models.strided.encoder, loaded.models.unpool.encoder) == ("scratch", "scratch")
    assert loaded.train.freeze_encoder_epochs == 2 and loaded.train.encoder_lr_mult == 0.1
