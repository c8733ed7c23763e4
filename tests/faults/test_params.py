"""Faults in params.yaml: the first stage to run stops, naming the dotted key (or the file)."""

from __future__ import annotations

import pytest

from faults.harness import (
    Project,
    assert_no_partial,
    assert_recovers,
    assert_user_error,
    stage_env,
)

STAGES = ("download", "preprocess", "train_unet", "evaluate")

# case -> (params.yaml: dotted overrides of BASE, or the file's whole text; what the line names)
BAD: dict[str, tuple[dict | str, tuple[str, ...]]] = {
    "unknown-key": ({"data.synthetic.n_tset": 3}, ("unknown key data.synthetic.n_tset",)),
    "wrong-type": ({"preprocess.workers": "two"}, ("preprocess.workers = 'two' is invalid",)),
    "out-of-range": ({"data.synthetic.n_test": 0}, ("data.synthetic.n_test = 0 is invalid",)),
    # Another stage's key: found by the first stage, not hours later by the one that reads it.
    "later-stage-key": ({"train.epochs": 0}, ("train.epochs = 0 is invalid",)),
    "class-weights": ({"train.class_weights": [1, 2]}, ("train.class_weights",)),
    "folder-without-path": ({"data.source": "folder"}, ("data.folder.path",)),
    "mirror-not-http": (
        {"data.source": "oxford-iiit-pet", "data.oxford.base_urls": ["ftp://x/"]},
        ("data.oxford.base_urls.0 = 'ftp://x/'",),
    ),
    "unpool-backbone": (
        {"models.unpool.encoder": "resnet18"},
        ("models.unpool.encoder = 'resnet18' is invalid", "models.unpool takes scratch only"),
    ),
    "pretrained-scratch": (
        {"models.unet.pretrained": True},
        ("models.unet.pretrained = True is invalid", "set encoder to one of resnet18"),
    ),
    "freeze-beyond-training": (
        {"train.freeze_encoder_epochs": 5},
        ("train.freeze_encoder_epochs = 5 is invalid", "at most train.epochs (2)"),
    ),
    "not-yaml": ("data: [unclosed\n", ("params.yaml: not valid YAML", "line 2")),
    "top-level-list": ("- data\n- train\n", ("params.yaml: top level must be a mapping",)),
    "section-not-mapping": ("train: 5\n", ("train = 5 is invalid",)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_params_stop_the_first_stage_naming_the_key(project: Project, case: str) -> None:
    params, needles = BAD[case]
    project.params(**({"text": params} if isinstance(params, str) else {"overrides": params}))
    assert_user_error(project.run("download"), *needles)
    assert_no_partial(project, *STAGES)
    assert_recovers(project, "download")


# Fault 7 of issue 15: image_size against the depth of *every* architecture, at load.
DEPTHS = {
    "tiny-depths": ({"preprocess.image_size": 34}, ("preprocess.image_size = 34", "multiple of 4")),
    "depth-5": (
        {"preprocess.image_size": 48, "models.unet.depth": 5},
        ("preprocess.image_size = 48", "multiple of 32", "models.unet.depth = 5"),
    ),
    "depth-6": (
        {"preprocess.image_size": 32, "models.strided.depth": 6},
        ("preprocess.image_size = 32", "multiple of 64", "models.strided.depth = 6"),
    ),
}


@pytest.mark.parametrize("case", sorted(DEPTHS))
def test_image_size_not_divisible_by_a_depth_stops_download(project: Project, case: str) -> None:
    overrides, needles = DEPTHS[case]
    project.params(overrides)
    assert_user_error(project.run("download"), *needles)
    assert_no_partial(project, *STAGES)
    assert_recovers(project, "download")


def test_missing_params_file_names_it(project: Project) -> None:
    (project.root / "params.yaml").unlink()
    assert_user_error(project.run("preprocess"), "params.yaml: params file not found")
    assert_no_partial(project, *STAGES)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_keeps_the_traceback(project: Project, how: str) -> None:
    project.params({"train.epochs": 0})
    if how == "flag":
        done = project.run("download", args=("--debug",))
    else:
        done = project.run("download", env=stage_env(PETSEG_DEBUG="1"))
    assert done.rc == 2
    assert "Traceback (most recent call last)" in done.stderr and "ParamsError" in done.stderr
    assert done.errors == [done.errors[0]] and "train.epochs = 0" in done.errors[0]
