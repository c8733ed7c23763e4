"""The synthetic generator: official layout and list format, trimap semantics, determinism, and
that the scenes are not trivially separable by colour."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petseg.config import SyntheticParams
from petseg.data.synthetic import _background, border_band, generate, make_breeds, plan, render

TINY = SyntheticParams(seed=3, n_trainval=24, n_test=12, n_breeds=6, min_size=48, max_size=96)
LINE = re.compile(r"^(?P<breed>[A-Za-z]+(?:_[A-Za-z]+)*)_(?P<k>[1-9]\d*) (\d+) ([12]) (\d+)$")


def _generate(root: Path, params: SyntheticParams = TINY, **kwargs) -> Path:
    root.mkdir()
    generate(root, params, progress=False, **kwargs)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _entries(path: Path) -> list[tuple[str, str, int, int, int]]:
    """(name, breed, class id, species, breed id) per non-header line; every line must parse."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"{path.name}: bad line {line!r}"
        out.append((line.split()[0], m["breed"], *map(int, line.split()[1:])))
    return out


def _trimaps(root: Path) -> dict[str, np.ndarray]:
    return {
        p.stem: np.asarray(Image.open(p))
        for p in sorted((root / "annotations" / "trimaps").glob("*.png"))
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("synthetic") / "raw")


def test_layout_matches_the_official_sample(tiny: Path, pets_sample: Path) -> None:
    def tree(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir() or "." in p.name}

    official = {t for t in tree(pets_sample) if "/" not in t or t.startswith("annotations/")}
    official = {t for t in official if not t.startswith("annotations/trimaps/")}
    ours = {t for t in tree(tiny) if not t.startswith(("images/", "annotations/trimaps/"))}
    assert ours == official  # images, annotations, annotations/{trimaps,list,trainval,test}

    real_header = [ln for ln in (pets_sample / "annotations/list.txt").read_text().splitlines()]
    header = [ln for ln in (tiny / "annotations/list.txt").read_text().splitlines()]
    assert [ln.startswith("#") for ln in header[:7]] == [True] * 6 + [False]
    assert [ln.split(":")[0] for ln in header[:6]] == [ln.split(":")[0] for ln in real_header[:6]]
    assert header[5] == real_header[5]
    for name in ("trainval.txt", "test.txt"):
        assert not (tiny / "annotations" / name).read_text().startswith("#")
        _entries(pets_sample / "annotations" / name)  # the line grammar accepts the real files


def test_list_files(tiny: Path) -> None:
    ann = tiny / "annotations"
    full, trainval, test = (_entries(ann / n) for n in ("list.txt", "trainval.txt", "test.txt"))
    assert (len(trainval), len(test)) == (TINY.n_trainval, TINY.n_test)
    assert sorted(full) == sorted(trainval + test)
    assert len({e[0] for e in full}) == len(full)
    images = {p.stem for p in (tiny / "images").glob("*.jpg")}
    assert images == {e[0] for e in full} == set(_trimaps(tiny))


def test_breed_conventions(tiny: Path) -> None:
    ann = tiny / "annotations"
    trainval, test = _entries(ann / "trainval.txt"), _entries(ann / "test.txt")
    ids: dict[str, set[tuple[int, int, int]]] = defaultdict(set)
    numbers: dict[str, list[int]] = defaultdict(list)
    for name, breed, class_id, species, breed_id in trainval + test:
        ids[breed].add((class_id, species, breed_id))
        numbers[breed].append(int(name.rsplit("_", 1)[1]))
        # Official convention: cats are Capitalised, dogs lowercase.
        assert (species == 1) == name[0].isupper(), name
    assert all(len(v) == 1 for v in ids.values()), ids
    table = {breed: next(iter(v)) for breed, v in ids.items()}
    assert sorted(c for c, _, _ in table.values()) == list(range(1, TINY.n_breeds + 1))
    # Class ids follow the names alphabetically (case-insensitive), as in the official set.
    assert sorted(table, key=str.lower) == sorted(table, key=lambda b: table[b][0])
    for species in (1, 2):
        mine = sorted((c, b) for c, s, b in table.values() if s == species)
        assert [b for _, b in mine] == list(range(1, len(mine) + 1))
    # Every breed in both lists; image numbers run 1..n within each breed.
    assert {e[1] for e in trainval} == {e[1] for e in test} == set(table)
    assert all(sorted(n) == list(range(1, len(n) + 1)) for n in numbers.values())


def test_breeds_for_every_allowed_count() -> None:
    for n in (1, 2, 6, 37):
        breeds = make_breeds(n)
        assert len({b.name.lower() for b in breeds}) == n  # distinct on any file system
        assert sum(b.species == 1 for b in breeds) == (n + 1) // 2
        assert [b.class_id for b in breeds] == list(range(1, n + 1))
    small = plan(TINY.model_copy(update={"n_test": 3}))
    assert len({i.breed.name for i in small if i.test}) == 3


def test_images_and_trimaps(tiny: Path) -> None:
    sizes = []
    trimaps = _trimaps(tiny)
    for name, trimap in trimaps.items():
        with Image.open(tiny / "images" / f"{name}.jpg") as im:
            assert (im.format, im.mode) == ("JPEG", "RGB")
            sizes.append(im.size)
        with Image.open(tiny / "annotations" / "trimaps" / f"{name}.png") as tm:
            assert (tm.format, tm.mode, tm.size) == ("PNG", "L", sizes[-1])
        assert set(np.unique(trimap)) <= {1, 2, 3}
        assert all(TINY.min_size <= s <= TINY.max_size for s in sizes[-1])
    assert len(set(sizes)) > len(sizes) // 2  # sizes vary...
    assert sum(w != h for w, h in sizes) > len(sizes) // 2  # ...and so do aspect ratios
    all_three = [set(np.unique(t)) == {1, 2, 3} for t in trimaps.values()]
    assert np.mean(all_three) >= 0.8


def test_border_separates_pet_from_background(tiny: Path) -> None:
    for name, t in _trimaps(tiny).items():
        pet, bg = t == 1, t == 2
        touching = (pet[1:] & bg[:-1]) | (bg[1:] & pet[:-1])
        assert not touching.any(), name
        assert not ((pet[:, 1:] & bg[:, :-1]) | (bg[:, 1:] & pet[:, :-1])).any(), name


def test_border_band_straddles_the_outline() -> None:
    yy, xx = np.mgrid[0:80, 0:80]
    dist = np.hypot(yy - 40, xx - 40)
    disc = dist <= 25
    band = border_band(disc, radius=3)
    d = dist[band]
    assert d.min() >= 20 and d.max() <= 30  # a ring about 7 px wide around r = 25
    inside, outside = (band & disc).sum(), (band & ~disc).sum()
    assert 0.6 < inside / outside < 1.4
    assert band[(dist > 22.5) & (dist < 27.5)].all()
    # The image border is not an outline: a pet cut by it has no band there.
    half = np.zeros((40, 40), bool)
    half[:, :20] = True
    assert not border_band(half, radius=2)[:, :17].any()
    assert border_band(half, radius=2)[:, 17:22].all()


def test_border_width_follows_the_param() -> None:
    def perimeter(region: np.ndarray) -> float:  # 4-connected edge count, corrected to Euclidean
        edges = (region[1:] != region[:-1]).sum() + (region[:, 1:] != region[:, :-1]).sum()
        return float(edges) * np.pi / 4

    breeds = make_breeds(6)
    for seed in range(3):
        areas = []
        for width in (0.02, 0.08):
            params = TINY.model_copy(
                update={"border_width": width, "min_size": 200, "max_size": 200}
            )
            _, trimap = render(np.random.default_rng(seed), breeds[seed], params)
            areas.append((trimap == 3).sum())
            # Area of the band ~ its width x the length of the outline it straddles.
            outline = (perimeter(trimap == 1) + perimeter(trimap != 2)) / 2
            assert 0.7 < areas[-1] / (outline * width * 200) < 1.6, (seed, width)
        assert 2.5 < areas[1] / areas[0] < 5.5


def test_same_params_same_bytes_also_in_parallel(tiny: Path, tmp_path: Path) -> None:
    again = _generate(tmp_path / "again", workers=2)
    assert _files(again) == _files(tiny)


def test_seed_changes_the_images(tiny: Path, tmp_path: Path) -> None:
    other = _files(_generate(tmp_path / "other", TINY.model_copy(update={"seed": 4})))
    mine = _files(tiny)
    images = [k for k in mine if k.startswith("images/")]
    assert sum(other.get(k) != mine[k] for k in images) == len(images)


def test_pet_is_not_separable_by_colour(tiny: Path) -> None:
    """The best colour lookup table (fitted on the very images it is scored on) finds the pet
    poorly: backgrounds reuse the pets' colours. On the real sample it scores ~0.23."""
    pet_hist, bg_hist = np.zeros(512), np.zeros(512)
    for name, trimap in _trimaps(tiny).items():
        rgb = np.asarray(Image.open(tiny / "images" / f"{name}.jpg")) // 32
        q = (rgb[..., 0].astype(int) * 8 + rgb[..., 1]) * 8 + rgb[..., 2]
        pet_hist += np.bincount(q[trimap == 1], minlength=512)
        bg_hist += np.bincount(q[trimap == 2], minlength=512)
    says_pet = pet_hist > bg_hist
    tp = pet_hist[says_pet].sum()
    iou = tp / (pet_hist.sum() + bg_hist[says_pet].sum())
    assert iou < 0.6


def test_backgrounds_reuse_the_pets_colours() -> None:
    """Distractors: in a good share of scenes, >5% of the background has the breed's coat colour
    (about 1 scene in 9 by chance alone)."""
    shares = []
    for breed in make_breeds(6):
        for i in range(10):
            scene = _background(np.random.default_rng((9, i)), 96, 96, breed)
            dist = [np.abs(scene - np.array(c)).max(-1) for c in (breed.coat, breed.marks)]
            shares.append((np.minimum(*dist) < 0.1).mean())
    assert np.mean(np.array(shares) > 0.05) >= 0.2
