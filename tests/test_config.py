"""params.yaml loading: the committed file is valid, and every kind of bad input names its key."""

from pathlib import Path

import pytest
import yaml

from petseg import config
from petseg.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_are_valid_and_complete():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = config.validate(raw)
    # Every knob is written out in params.yaml: the file equals the loader's full dump.
    assert raw == params.model_dump()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"data": {"sorce": "x"}},
            "unknown key data.sorce (allowed here: coco, folder, oxford, source",
        ),
        ({"bogus": {}}, "unknown key bogus (allowed here: data, evaluate, models, preprocess"),
        ({"data": {"source": "kaggle"}}, "data.source = 'kaggle' is invalid"),
        ({"data": {"synthetic": {"n_test": 0}}}, "data.synthetic.n_test = 0 is invalid"),
        ({"data": {"synthetic": {"n_test": "5"}}}, "data.synthetic.n_test = '5' is invalid"),
        ({"data": {"source": "folder"}}, "data.folder.path = None is invalid"),
        ({"data": {"oxford": {"images_md5": "abc"}}}, "data.oxford.images_md5 = 'abc' is invalid"),
        ({"data": {"oxford": {"base_urls": ["ftp://x/"]}}}, "data.oxford.base_urls.0 = 'ftp://x/'"),
        (
            {"data": {"synthetic": {"min_size": 200, "max_size": 100}}},
            "data.synthetic.max_size = 100 is invalid: expected >= min_size (200)",
        ),
        ({"preprocess": {"image_size": 100}}, "preprocess.image_size = 100 is invalid"),
        ({"preprocess": {"val_fraction": 1.5}}, "preprocess.val_fraction = 1.5 is invalid"),
        ({"preprocess": {"seed": True}}, "preprocess.seed = True is invalid"),
        ({"models": {"unpool": {"upsample": "bilinear"}}}, "models.unpool.upsample = 'bilinear'"),
        ({"models": {"unet": {"upsample": "nearest"}}}, "unknown key models.unet.upsample"),
        ({"train": {"class_weights": [1, 2]}}, "train.class_weights = [1.0, 2.0] is invalid"),
        (
            {"train": {"augment": {"rotat": 5}}},
            "unknown key train.augment.rotat (allowed here: color",
        ),
        ({"evaluate": {"bootstrap": -1}}, "evaluate.bootstrap = -1 is invalid"),
    ],
)
def test_bad_values_name_the_key(raw, expected):
    with pytest.raises(ParamsError) as err:
        config.validate(raw, "params.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("params.yaml: ")


def test_load_section_returns_its_section_after_checking_the_whole_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("preprocess:\n  image_size: 24\nmodels:\n  unet:\n    depth: 2\n")
    with pytest.raises(ParamsError, match=r"preprocess\.image_size = 24 is invalid.*depth = 4"):
        config.load_section(path, "preprocess")  # strided and unpool keep depth 4
    assert config.load_section(path, "models", whole=False).unet.depth == 2
    path.write_text("preprocess:\n  image_size: 32\ntrain:\n  epochs: 0\n")
    # The first stage to run fails, not the one that reads the bad key.
    with pytest.raises(ParamsError, match=r"train\.epochs = 0 is invalid"):
        config.load_section(path, "preprocess")
    assert config.load_section(path, "preprocess", whole=False).image_size == 32


def test_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        config.load(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        config.load(bad)
