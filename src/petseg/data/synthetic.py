"""A seeded generator of pets-like scenes in the exact Oxford-IIIT Pet layout.

It drives the offline demo and CI, so it writes what the official archives hold, byte-for-byte in
format: ``images/NAME.jpg`` (RGB JPEG, sizes and aspect ratios vary),
``annotations/trimaps/NAME.png`` (mode L; 1 pet, 2 background, 3 border) and
``annotations/{list,trainval,test}.txt``. Everything downstream is source-blind; only the content
differs.

Why the scenes look the way they do. Segmentation must be learnt from *shape and context*, as on
real photos, or the comparison of architectures says nothing:

- Each "breed" has its own coat (two colours and a pattern: solid, tabby, spotted, patched,
  pointed, brindle, saddle) and proportions; cats have pointed ears and long thin tails, dogs floppy
  ears, a snout and thicker legs. Poses (standing, sitting, lying, head-and-shoulders portrait),
  scale, rotation, mirroring and position vary, and pets may be cut by the image border.
- Backgrounds are textured and cluttered (gradients, clouds, stripes, tiles, grain, a floor/wall
  split, random shapes), with distractors that are background: often a furry blob in the pet's
  colours, sometimes a floor of its colour or an object in front of it. Colour alone therefore
  does not find the pet (even the best colour lookup table scores poorly); a cast shadow, a hairy
  edge, lighting, blur and sensor noise blur the easy cues further.
- Yet pets stay compact, textured, shaded, animal-shaped objects, so a small U-Net learns them in
  minutes on a CPU (the point of the demo). What is left hard is what is hard on real photos too:
  thin legs, ears and tails, and the border band, where skip connections should matter.

The trimap border band straddles the pet's outline: it holds the pixels within a Euclidean radius
of the mask's inner boundary, for a total width of ``border_width`` x the short side (at least one
pixel). Hence pet pixels are never 4-adjacent to background pixels, as in the real trimaps. The
image border is not an outline: a pet cut by it has no band there (like the real ones).

Determinism: image ``k`` of breed ``b`` draws everything from ``numpy.random.default_rng((seed,
class_id, k))``, so the same params give byte-identical files whatever the number of worker
processes. Breed looks depend only on the breed's name, so ``Ginger_tabby`` is ginger and striped
for every seed.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from petseg.config import SyntheticParams

JPEG_QUALITY = 90
CAT, DOG = 1, 2
PET, BACKGROUND, BORDER = 1, 2, 3  # trimap values

# (colour name, primary coat colour, secondary colour for the pattern, pattern), in the order in
# which breeds are taken: the first few of each species differ the most from each other.
_CAT_COATS = (
    ("Ginger", "#d98a3a", "#8a4212", "tabby"),
    ("Seal", "#e6d6b8", "#4a3022", "pointed"),
    ("Silver", "#bdbcb6", "#2a2a2a", "spotted"),
    ("Tuxedo", "#24201f", "#f1eee8", "patched"),
    ("Blue", "#7b8591", "#59616b", "solid"),
    ("Brown", "#b8874f", "#3a2413", "spotted"),
    ("Calico", "#f0ebe1", "#cf7328", "patched"),
    ("Cream", "#ecd5aa", "#c29357", "tabby"),
    ("Ebony", "#2a2524", "#121010", "solid"),
    ("Lilac", "#e6ded8", "#8f8085", "pointed"),
    ("Smoke", "#5c5857", "#262424", "brindle"),
    ("Snow", "#f3f1ec", "#d6d1c7", "solid"),
    ("Tortie", "#2f2421", "#bf6a2c", "patched"),
    ("Golden", "#d4a35a", "#77501e", "tabby"),
    ("Cinnamon", "#a9653a", "#6b3a1c", "solid"),
    ("Chocolate", "#5e3b25", "#3a2416", "brindle"),
    ("Red", "#c9612e", "#7c2d11", "spotted"),
    ("Fawn", "#d9c09c", "#8a684b", "pointed"),
    ("Mink", "#8a6a50", "#3b2a1e", "saddle"),
)
_DOG_COATS = (
    ("golden", "#d9a851", "#9c6d2a", "solid"),
    ("white", "#f0ede6", "#222020", "spotted"),
    ("tan", "#c58b4b", "#1f1a17", "saddle"),
    ("black", "#1e1c1c", "#eeebe5", "patched"),
    ("brown", "#8a5a32", "#3a2313", "brindle"),
    ("buff", "#d5b182", "#2a2220", "pointed"),
    ("cream", "#ebdcbc", "#c9ae84", "solid"),
    ("liver", "#efe9df", "#6a3a22", "spotted"),
    ("grey", "#8f8f8c", "#4a4a4a", "brindle"),
    ("red", "#b5542a", "#792f14", "solid"),
    ("sable", "#c08a50", "#2e2418", "saddle"),
    ("blue", "#6d7581", "#e7e5e1", "patched"),
    ("wheat", "#e0c890", "#b49657", "solid"),
    ("merle", "#9ea3a9", "#2c2c31", "spotted"),
    ("chocolate", "#5a3624", "#3c2418", "solid"),
    ("apricot", "#e8b17b", "#be7a46", "patched"),
    ("rust", "#a8502a", "#1c1816", "saddle"),
    ("silver", "#c3c5c7", "#3a3a3c", "brindle"),
)

# Part tags, drawn in this order (later parts cover earlier ones).
FAR_LEG, TAIL, BODY, NECK, LEG, HEAD, EAR, INNER_EAR, SNOUT, EYE, PUPIL, NOSE = range(1, 13)
_N_TAGS = 13
# How much the "pointed" pattern darkens each part (ears, face, legs and tail of a Siamese).
_POINTS = np.zeros(_N_TAGS, np.float32)
_POINTS[[EAR, SNOUT, TAIL]] = 1.0
_POINTS[[FAR_LEG, LEG]] = 0.8
_POINTS[HEAD] = 0.45
# Far legs are in the pet's own shadow.
_PART_LIGHT = np.ones(_N_TAGS, np.float32)
_PART_LIGHT[FAR_LEG] = 0.78


# ------------------------------------------------------------------------------------ breeds
@dataclass(frozen=True)
class Breed:
    """A synthetic breed: its official-style ids and what every image of it has in common."""

    name: str
    species: int  # 1 cat, 2 dog
    class_id: int  # 1..n_breeds, alphabetical (case-insensitive) like the official ids
    breed_id: int  # 1.. within its species, in the same order
    coat: tuple[float, float, float]
    marks: tuple[float, float, float]
    pattern: str
    body_h: float  # body height / body length
    head_r: float  # head radius / body length
    ear: float  # ear length / body length
    leg_len: float
    leg_w: float
    tail_len: float
    tail_w: float
    snout: float  # snout length / body length (dogs; cats have a small muzzle)
    fur: float  # outline jitter / body length (long-haired breeds are shaggier)
    stripe_freq: float  # stripes per body length (tabby, brindle)
    spot_freq: float  # noise cells per body length (spotted, patched)


def _hex(code: str) -> tuple[float, float, float]:
    return tuple(int(code[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def make_breeds(n_breeds: int) -> list[Breed]:
    """The ``n_breeds`` synthetic breeds: ceil(n/2) cats (Capitalised names), the rest dogs."""
    n_cats = (n_breeds + 1) // 2
    coats = [(CAT, c) for c in _CAT_COATS[:n_cats]] + [
        (DOG, c) for c in _DOG_COATS[: n_breeds - n_cats]
    ]
    named = sorted(((f"{c[0]}_{c[3]}", sp, c) for sp, c in coats), key=lambda t: t[0].lower())
    breeds, per_species = [], {CAT: 0, DOG: 0}
    for class_id, (name, species, (_, coat, marks, pattern)) in enumerate(named, start=1):
        per_species[species] += 1
        r = np.random.default_rng(list(name.encode()))  # proportions depend on the name only
        cat = species == CAT
        breeds.append(
            Breed(
                name=name,
                species=species,
                class_id=class_id,
                breed_id=per_species[species],
                coat=_hex(coat),
                marks=_hex(marks),
                pattern=pattern,
                body_h=r.uniform(0.36, 0.46) if cat else r.uniform(0.38, 0.54),
                head_r=r.uniform(0.2, 0.25) if cat else r.uniform(0.19, 0.26),
                ear=r.uniform(0.13, 0.19) if cat else r.uniform(0.16, 0.3),
                leg_len=r.uniform(0.22, 0.3) if cat else r.uniform(0.26, 0.42),
                leg_w=r.uniform(0.07, 0.09) if cat else r.uniform(0.09, 0.13),
                tail_len=r.uniform(0.55, 0.8) if cat else r.uniform(0.22, 0.45),
                tail_w=r.uniform(0.04, 0.055) if cat else r.uniform(0.05, 0.08),
                snout=0.0 if cat else r.uniform(0.1, 0.2),
                fur=r.uniform(0.003, 0.01) if cat else r.uniform(0.003, 0.014),
                stripe_freq=r.uniform(7, 11) if pattern == "tabby" else r.uniform(14, 20),
                spot_freq=r.uniform(9, 14) if pattern == "spotted" else r.uniform(2.5, 4),
            )
        )
    return breeds


@dataclass(frozen=True)
class _Item:
    """One image to render: its file name, breed, split and seed."""

    name: str
    breed: Breed
    test: bool
    seed: tuple[int, int, int]


def plan(params: SyntheticParams) -> list[_Item]:
    """Which images exist: breeds are dealt round-robin within each split, so every breed is in
    both lists whenever the split has at least ``n_breeds`` images. Image numbers run from 1 within
    each breed across both splits, shuffled (seeded) like the official numbering."""
    breeds = make_breeds(params.n_breeds)
    counts = {b.name: [0, 0] for b in breeds}  # per breed: [trainval, test]
    for split, n in enumerate((params.n_trainval, params.n_test)):
        for i in range(n):
            counts[breeds[i % len(breeds)].name][split] += 1
    items = []
    for b in breeds:
        n_tv, n_te = counts[b.name]
        rng = np.random.default_rng((params.seed, b.class_id, 0))
        is_test = rng.permutation(np.arange(n_tv + n_te) >= n_tv)
        for k, test in enumerate(is_test, start=1):
            items.append(_Item(f"{b.name}_{k}", b, bool(test), (params.seed, b.class_id, k)))
    return items


def _list_line(item: _Item) -> str:
    b = item.breed
    return f"{item.name} {b.class_id} {b.species} {b.breed_id}\n"


def _list_header(breeds: Sequence[Breed]) -> str:
    """The official six ``#`` lines, with this set's numbers."""
    n_cats = sum(b.species == CAT for b in breeds)
    return (
        "#Image CLASS-ID SPECIES BREED ID\n"
        f"#ID: 1:{len(breeds)} Class ids\n"
        "#SPECIES: 1:Cat 2:Dog\n"
        f"#BREED ID: 1-{n_cats}:Cat 1:{len(breeds) - n_cats}:Dog\n"
        "#All images with 1st letter as captial are cat images\n"
        "#images with small first letter are dog images\n"
    )


# ------------------------------------------------------------------------------------ public
def generate(
    out_dir: Path, params: SyntheticParams, progress: bool = True, *, workers: int | None = None
) -> None:
    """Write ``params.n_trainval + params.n_test`` scenes into the empty folder ``out_dir``.

    ``workers``: processes to render with (default: one per available CPU core, none for small
    sets). The files do not depend on it.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    items = plan(params)
    ann = out_dir / "annotations"
    breeds = make_breeds(params.n_breeds)
    (ann / "list.txt").write_text(_list_header(breeds) + "".join(map(_list_line, items)))
    (ann / "trainval.txt").write_text("".join(_list_line(i) for i in items if not i.test))
    (ann / "test.txt").write_text("".join(_list_line(i) for i in items if i.test))

    jobs = [(out_dir, params, item) for item in items]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        workers = min(workers, len(jobs) // 32)
    bar = tqdm(total=len(jobs), desc="synthetic", unit="img", disable=None if progress else True)
    with bar:
        if workers <= 1:
            for job in jobs:
                _write_one(job)
                bar.update()
        else:
            with get_context().Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_one, jobs, chunksize=8):
                    bar.update()


def _write_one(job: tuple[Path, SyntheticParams, _Item]) -> None:
    out_dir, params, item = job
    rng = np.random.default_rng(item.seed)
    image, trimap = render(rng, item.breed, params)
    Image.fromarray(image).save(out_dir / "images" / f"{item.name}.jpg", quality=JPEG_QUALITY)
    Image.fromarray(trimap).save(out_dir / "annotations" / "trimaps" / f"{item.name}.png")


def render(
    rng: np.random.Generator, breed: Breed, params: SyntheticParams
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (RGB uint8 image (H, W, 3), trimap uint8 (H, W) with values 1, 2, 3)."""
    h, w = (int(v) for v in rng.integers(params.min_size, params.max_size + 1, size=2))
    short = min(h, w)
    light = rng.normal(size=2)
    light /= np.linalg.norm(light) + 1e-6
    scene = _background(rng, h, w, breed)

    parts, frame = _place_pet(rng, breed, h, w)
    mask = parts > 0
    # Cast shadow on the background: the silhouette, offset away from the light and blurred.
    shift = (-light * short * rng.uniform(0.01, 0.05)).round().astype(int)
    shadow = _blur(np.roll(mask, (int(shift[1]), int(shift[0])), axis=(0, 1)), short * 0.03)
    scene *= 1 - rng.uniform(0.15, 0.45) * shadow[..., None]
    # Soft, hairy edge in the photo (crisp in the trimap): a blurred silhouette, thresholded
    # through per-pixel noise so that single hairs poke out and background shows through.
    fringe = max(0.6, min(breed.fur * frame.scale * rng.uniform(0.5, 1.0), 0.012 * short))
    box = _bbox(mask, pad=int(3 * fringe) + 2)
    pet = np.zeros_like(scene)
    pet[box] = _coat(rng, breed, parts, frame, box, light)
    hair = _noise(rng, h, w, 1.0) - 0.5
    alpha = np.clip((_blur(mask, fringe) - 0.5) * 2.5 + 0.5 + hair, 0, 1)[..., None]
    scene = scene * (1 - alpha) + pet * alpha

    if rng.random() < 0.15:  # an object in front of the pet: it is background
        occluder = _occluder(rng, mask, short)
        if occluder is not None:
            shape, colour = occluder
            scene[shape] = colour[shape]
            mask &= ~shape

    scene = _photo_effects(rng, scene, light, short)
    trimap = np.full((h, w), BACKGROUND, np.uint8)
    trimap[mask] = PET
    width = max(1.0, params.border_width * short)
    trimap[border_band(mask, (width - 1) / 2)] = BORDER
    return scene, trimap


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """Slices of the bounding box of ``mask`` grown by ``pad`` (the whole image if empty)."""
    ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    h, w = mask.shape
    if len(ys) == 0:
        return slice(0, h), slice(0, w)
    return (
        slice(max(ys[0] - pad, 0), min(ys[-1] + pad + 1, h)),
        slice(max(xs[0] - pad, 0), min(xs[-1] + pad + 1, w)),
    )


def border_band(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within Euclidean ``radius`` of the inner boundary of ``mask`` (its outermost pixels).

    Width 2 * radius + 1, straddling the outline. The image border does not count as an outline.
    Cost is O(radius x pixels): a row-wise distance, then one pass per row offset within the disc.
    """
    pad = np.pad(mask, 1, mode="edge")
    interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    edge = mask & ~interior
    h, w = mask.shape
    # Horizontal distance from each pixel to the nearest edge pixel in its row.
    cols = np.arange(w, dtype=np.float32)
    big = np.float32(4 * (h + w))
    left = np.maximum.accumulate(np.where(edge, cols, -big), axis=1)
    right = np.minimum.accumulate(np.where(edge, cols, 2 * big)[:, ::-1], axis=1)[:, ::-1]
    row_dist = np.minimum(cols - left, right - cols)
    band = np.zeros_like(mask)
    r = int(math.floor(radius))
    for dy in range(-r, r + 1):
        reach = math.sqrt(max(radius * radius - dy * dy, 0.0))
        src = row_dist[max(dy, 0) : h + min(dy, 0)] <= reach
        band[max(-dy, 0) : h - max(dy, 0)] |= src
    return band


# ------------------------------------------------------------------------------- geometry
Polygon = np.ndarray  # (N, 2) float, x y in the pet's local frame (body length 1, y down)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 56):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ca, sa = math.cos(angle), math.sin(angle)
    x, y = rx * np.cos(t), ry * np.sin(t)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


def _capsule(p0, p1, r0: float, r1: float, n: int = 12) -> Polygon:
    """A tapered limb with round ends from ``p0`` (radius r0) to ``p1`` (radius r1)."""
    (x0, y0), (x1, y1) = p0, p1
    a = math.atan2(y1 - y0, x1 - x0)
    t1 = np.linspace(a - np.pi / 2, a + np.pi / 2, n)
    t0 = np.linspace(a + np.pi / 2, a + 3 * np.pi / 2, n)
    end = np.stack([x1 + r1 * np.cos(t1), y1 + r1 * np.sin(t1)], axis=1)
    start = np.stack([x0 + r0 * np.cos(t0), y0 + r0 * np.sin(t0)], axis=1)
    return np.concatenate([end, start])


def _tube(p0, p1, p2, w0: float, w1: float, n: int = 24) -> Polygon:
    """A tapered curve (a tail) along the quadratic Bezier p0 -> p1 -> p2."""
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, float) for p in (p0, p1, p2))
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    d = np.gradient(pts, axis=0)
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1) / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-9)
    wid = w0 + (w1 - w0) * t
    tip = _ellipse(*pts[-1], w1, w1, n=10)
    return np.concatenate([pts + nrm * wid, tip, (pts - nrm * wid)[::-1]])


def _triangle(base_c, angle: float, base_w: float, length: float) -> Polygon:
    """A slightly curved pointed ear from the centre of its base, pointing at ``angle``."""
    cx, cy = base_c
    d = np.array([math.cos(angle), math.sin(angle)])
    nrm = np.array([-d[1], d[0]])
    tip = np.array([cx, cy]) + d * length
    a, b = np.array([cx, cy]) + nrm * base_w / 2, np.array([cx, cy]) - nrm * base_w / 2
    t = np.linspace(0, 1, 8)[:, None]
    bulge = np.sin(np.pi * t) * base_w * 0.12
    side1 = a + (tip - a) * t + nrm * bulge
    side2 = tip + (b - tip) * t - nrm * bulge
    return np.concatenate([side1, side2])


def _shaggy(rng: np.random.Generator, poly: Polygon, amp: float) -> Polygon:
    """Tufts of fur: push each vertex along its normal by smooth random amounts.

    Tufts span a few vertices and stay small: hair finer than that is drawn as a fuzzy alpha
    fringe in :func:`render`, which the border band covers as in the real trimaps."""
    if amp <= 0:
        return poly
    d = np.roll(poly, -1, axis=0) - np.roll(poly, 1, axis=0)
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1) / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-9)
    noise = rng.normal(size=len(poly))
    noise = sum(np.roll(noise, k) for k in range(-2, 3)) / math.sqrt(5)
    return poly + nrm * (amp * noise)[:, None]


def _head(b: Breed, rng: np.random.Generator, c, r: float, facing: float, frontal: bool):
    """Head, ears, muzzle, eyes and nose around centre ``c``; ``facing`` tilts it (radians).

    In profile (``frontal`` False) the muzzle, nose and the one visible eye are on the +x side."""
    cx, cy = c
    ca, sa = math.cos(facing), math.sin(facing)

    def at(dx: float, dy: float) -> tuple[float, float]:  # head-relative offset -> local frame
        return cx + ca * dx - sa * dy, cy + sa * dx + ca * dy

    def oval(centre: tuple[float, float], rx: float, ry: float, n: int = 56) -> Polygon:
        return _ellipse(*centre, rx, ry, facing, n)

    out = [(HEAD, oval((cx, cy), r * 1.05, r * 0.95))]
    for i, a in enumerate((-2.2, -0.95) if frontal else (-1.8, -0.9)):
        if b.species == CAT:  # pointed ears with a pink inside
            a += rng.normal(0, 0.08)
            base = at(r * 0.8 * math.cos(a), r * 0.8 * math.sin(a))
            length = b.ear + r * 0.15
            out.append((EAR, _triangle(base, a + facing, r * 0.95, length)))
            out.append((INNER_EAR, _triangle(base, a + facing, r * 0.5, length * 0.7)))
        elif frontal or i == 1:  # floppy ears hang at the sides; in profile one is visible
            side = (-1, 1)[i] if frontal else -0.35
            ex, ey = at(side * r * 0.95, r * 0.05 + b.ear * 0.35)
            tilt = facing + (side * 0.25 if frontal else 0.25) + rng.normal(0, 0.1)
            out.append((EAR, _ellipse(ex, ey, b.ear * 0.33, b.ear * 0.62, tilt)))
    if b.species == DOG and frontal:
        out.append((SNOUT, oval(at(0, r * 0.42), r * 0.5, r * 0.4)))
        out.append((NOSE, oval(at(0, r * 0.3), r * 0.17, r * 0.12, n=16)))
    elif b.species == DOG:
        length = b.snout * 0.75 + r * 0.2
        out.append((SNOUT, oval(at(r * 0.75 + b.snout * 0.4, r * 0.28), length, r * 0.4)))
        out.append((NOSE, oval(at(r * 0.85 + b.snout * 1.05, r * 0.12), r * 0.17, r * 0.12, 16)))
    else:  # cats: a small muzzle and a pink nose
        front = (at(0, r * 0.35), at(0, r * 0.18))
        muzzle, nose = front if frontal else (at(r * 0.75, r * 0.3), at(r, r * 0.1))
        out.append((SNOUT, oval(muzzle, r * 0.38, r * 0.28)))
        out.append((NOSE, oval(nose, r * 0.09, r * 0.07, n=12)))
    if frontal:
        eyes = [at(-r * 0.38, -r * 0.12), at(r * 0.38, -r * 0.12)]
    else:
        eyes = [at(r * 0.45, -r * 0.18)]
    eye_r = r * (0.17 if b.species == CAT else 0.13)
    pupil = (eye_r * 0.3, eye_r * 0.75) if b.species == CAT else (eye_r * 0.6, eye_r * 0.6)
    for eye in eyes:
        out.append((EYE, oval(eye, eye_r, eye_r * 0.85, n=16)))
        out.append((PUPIL, oval(eye, *pupil, n=12)))
    return out


def _pose(b: Breed, rng: np.random.Generator) -> tuple[list[tuple[int, Polygon]], str]:
    """The pet's parts in its local frame, for a random pose."""
    pose = rng.choice(["stand", "sit", "lie", "portrait"], p=[0.4, 0.22, 0.16, 0.22])
    ry = b.body_h / 2
    parts: list[tuple[int, Polygon]] = []
    tilt = rng.normal(0, 0.15)
    cat = b.species == CAT

    def leg(top, foot, tag: int) -> None:
        parts.append((tag, _capsule(top, foot, b.leg_w * 0.62, b.leg_w * 0.45)))
        parts.append(
            (tag, _ellipse(foot[0] + b.leg_w * 0.25, foot[1], b.leg_w * 0.6, b.leg_w * 0.4))
        )

    def tail(base, mid, tip) -> None:
        parts.append((TAIL, _tube(base, mid, tip, b.tail_w, b.tail_w * (0.6 if cat else 0.45))))

    if pose == "portrait":
        r = b.head_r
        parts.append((BODY, _ellipse(0, r * 2.4, r * 1.7, r * 1.8)))
        parts += _head(b, rng, (0.0, 0.0), r * 1.05, tilt * 0.8, frontal=True)
        return parts, pose
    if pose == "stand":
        ground = ry + b.leg_len
        for x, tag in ((-0.3, FAR_LEG), (0.33, FAR_LEG), (-0.38, LEG), (0.26, LEG)):
            leg((x, ry * 0.2), (x + rng.normal(0, 0.06), ground), tag)
        if cat:
            a = rng.uniform(-2.3, -1.6)
            tip = (-0.45 + b.tail_len * math.cos(a), -ry * 0.2 + b.tail_len * math.sin(a))
            tail((-0.45, -ry * 0.2), (-0.45 - b.tail_len * 0.45, 0.05), tip)
        else:
            a = rng.uniform(-2.8, -2.0)
            tip = (-0.46 + b.tail_len * math.cos(a), -ry * 0.4 + b.tail_len * math.sin(a))
            tail((-0.46, -ry * 0.4), (-0.46 - b.tail_len * 0.5, -ry * 0.5), tip)
        parts.append((BODY, _ellipse(0, 0, 0.5, ry)))
        head_c = (0.52 + rng.normal(0, 0.03), -ry - b.head_r * 0.55 + rng.normal(0, 0.03))
        parts.append((NECK, _capsule((0.3, -ry * 0.2), head_c, ry * 0.7, b.head_r * 0.7)))
    elif pose == "sit":
        ground = 0.42
        tail((-0.22, 0.36), (0.0, ground + 0.04), (0.15 + 0.2 * b.tail_len, ground - 0.02))
        parts.append((BODY, _ellipse(0.02, 0.05, 0.42, ry * 1.05, -1.1)))
        parts.append((BODY, _ellipse(-0.13, 0.28, 0.24, 0.16, -0.2)))  # haunch
        for x, tag in ((0.12, FAR_LEG), (0.2, LEG)):
            leg((x, -0.05), (x + 0.03, ground), tag)
        head_c = (0.26, -0.33 - b.head_r * 0.6)
        parts.append((NECK, _capsule((0.18, -0.22), head_c, ry * 0.7, b.head_r * 0.7)))
    else:  # lie
        ry *= 0.85
        ground = ry * 1.1
        tail((-0.46, ry * 0.4), (-0.46 - b.tail_len * 0.5, ground), (-0.4 - b.tail_len, ground))
        parts.append((BODY, _ellipse(0, 0, 0.52, ry)))
        parts.append((BODY, _ellipse(-0.28, ry * 0.25, 0.2, ry * 0.85, 0.3)))  # haunch
        for y, tag in ((ground - b.leg_w, FAR_LEG), (ground, LEG)):
            leg((0.3, ry * 0.5), (0.42 + b.leg_len * 0.9, y), tag)
        head_c = (0.5, -ry - b.head_r * 0.35)
        parts.append((NECK, _capsule((0.34, -ry * 0.1), head_c, ry * 0.8, b.head_r * 0.7)))
    parts += _head(b, rng, head_c, b.head_r, tilt, frontal=rng.random() < 0.25)
    return parts, pose


@dataclass(frozen=True)
class _Frame:
    """Where the pet is: local frame (body length 1) -> image pixels, and back."""

    origin: np.ndarray  # local point placed at (cx, cy)
    scale: float  # pixels per local unit
    angle: float
    mirror: float  # -1 faces left
    cx: float
    cy: float

    def to_image(self, poly: Polygon) -> Polygon:
        q = (poly - self.origin) * self.scale
        q[:, 0] *= self.mirror
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        x = ca * q[:, 0] - sa * q[:, 1] + self.cx
        return np.stack([x, sa * q[:, 0] + ca * q[:, 1] + self.cy], axis=1)

    def local(self, box: tuple[slice, slice]) -> np.ndarray:
        """Local coordinates (2, h, w) of the pixels in ``box``: textures follow the body."""
        yy, xx = np.mgrid[box].astype(np.float32)
        qx, qy = xx - self.cx, yy - self.cy
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        loc = np.stack([(ca * qx + sa * qy) * self.mirror, -sa * qx + ca * qy]) / self.scale
        return (loc + self.origin.astype(np.float32)[:, None, None]).astype(np.float32)


def _place_pet(rng: np.random.Generator, b: Breed, h: int, w: int):
    """Draw the pet at a random scale, angle, side and position.

    Returns (part tag per pixel, 0 outside; its frame). Placements that leave almost nothing of
    the pet, or almost no background, are redrawn smaller and less cut by the image border.
    """
    shapes, pose = _pose(b, rng)
    fur = b.fur * rng.uniform(0.7, 1.3)
    shapes = [(t, _shaggy(rng, p, fur if t not in (EYE, PUPIL, NOSE) else 0)) for t, p in shapes]
    pts = np.concatenate([p for _, p in shapes])
    lo, hi = pts.min(0), pts.max(0)
    angle = rng.normal(0, 0.25) if rng.random() < 0.85 else rng.uniform(-1.6, 1.6)
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    size_range = (0.85, 1.5) if pose == "portrait" else (0.75, 1.6)
    for attempt in range(12):
        scale = min(h, w) * rng.uniform(*size_range) / float(max(hi - lo)) * 0.85**attempt
        # The bounding box may stick out of the image by ``cut`` of its size on each side.
        cut = 0.3 if attempt < 8 else 0.0
        inset = (hi - lo) / 2 * scale * (1 - 2 * cut)
        cx = rng.uniform(*sorted((inset[0], w - inset[0])))
        cy = rng.uniform(*sorted((inset[1], h - inset[1])))
        frame = _Frame((lo + hi) / 2, scale, angle, mirror, cx, cy)
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        for tag, poly in shapes:
            draw.polygon([tuple(v) for v in frame.to_image(poly)], fill=tag)
        parts = np.asarray(canvas)
        if 0.04 <= (parts > 0).mean() <= 0.8:
            break
    return parts, frame


# -------------------------------------------------------------------------------- texture
def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1] with features about ``cell`` pixels wide."""
    if cell <= 1.0:
        return rng.random((h, w), dtype=np.float32)
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    grid = Image.fromarray(rng.random((gh, gw), dtype=np.float32))
    big = grid.resize((int(gw * cell), int(gh * cell)), Image.Resampling.BICUBIC)
    oy, ox = int(rng.integers(0, max(1, int(cell)))), int(rng.integers(0, max(1, int(cell))))
    return np.clip(np.asarray(big)[oy : oy + h, ox : ox + w], 0, 1)


def _lattice(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Value noise in [0, 1] sampled at arbitrary coordinates (one feature per unit)."""
    size = 64
    g = rng.random((size, size), dtype=np.float32)
    x = x + np.float32(rng.uniform(0, size))
    y = y + np.float32(rng.uniform(0, size))
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = x0.astype(np.int64) % size, y0.astype(np.int64) % size
    ix1, iy1 = (ix + 1) % size, (iy + 1) % size
    a, b, c, d = g[iy, ix], g[iy, ix1], g[iy1, ix], g[iy1, ix1]
    return a + (b - a) * fx + (c - a) * fy + (a - b - c + d) * fx * fy


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


def _blur(mask: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian-blurred bool mask as float32 in [0, 1] (8-bit precision is plenty here)."""
    im = Image.fromarray(mask.astype(np.uint8) * np.uint8(255))
    return np.asarray(im.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255


def _coat(
    rng: np.random.Generator,
    b: Breed,
    parts: np.ndarray,
    frame: _Frame,
    box: tuple[slice, slice],
    light: np.ndarray,
) -> np.ndarray:
    """The pet's colours in ``box`` (only used where ``parts > 0``)."""
    u, v = frame.local(box)
    scale = frame.scale
    short = min(parts.shape)
    height = _blur(parts > 0, short * 0.04)[box]  # before cropping: no edge effects
    parts = parts[box]
    jitter = rng.uniform(0.88, 1.12) * rng.uniform(0.95, 1.05, size=3)
    coat = np.clip(np.array(b.coat) * jitter, 0, 1).astype(np.float32)
    marks = np.clip(np.array(b.marks) * jitter, 0, 1).astype(np.float32)
    warp = _lattice(rng, u * 4, v * 4) - 0.5
    if b.pattern in ("tabby", "brindle"):
        wave = np.sin(
            2 * np.pi * b.stripe_freq * (u + (0.12 if b.pattern == "tabby" else 0.3) * warp)
        )
        m = _smoothstep(0.1, 0.6, wave) * (0.9 if b.pattern == "tabby" else 0.55)
    elif b.pattern == "spotted":
        m = _smoothstep(0.62, 0.7, _lattice(rng, u * b.spot_freq, v * b.spot_freq))
    elif b.pattern == "patched":
        m = _smoothstep(0.47, 0.53, _lattice(rng, u * b.spot_freq, v * b.spot_freq))
    elif b.pattern == "pointed":
        m = _POINTS[parts] * (0.8 + 0.4 * warp)
    elif b.pattern == "saddle":
        back = (v < -b.body_h * 0.1 + 0.08 * warp) & np.isin(parts, (BODY, NECK, TAIL))
        m = back.astype(np.float32) * 0.95
    else:
        m = np.zeros_like(u)
    colour = coat + (marks - coat) * m[..., None]
    # Uneven colouring and fine hair grain (stretched along the body axis).
    colour *= (0.88 + 0.24 * _lattice(rng, u * 6, v * 6))[..., None]
    grain = _lattice(rng, u * scale / 6, v * scale / 1.5)
    colour *= (1 + rng.uniform(0.1, 0.25) * (grain - 0.5))[..., None]
    # Pseudo-3D shading from the blurred silhouette, lit from ``light``.
    gy, gx = np.gradient(height)
    lam = -(gx * light[0] + gy * light[1]) * short * 0.08
    shade = (0.72 + 0.28 * height) * (1 + np.clip(lam, -0.35, 0.35)) * _PART_LIGHT[parts]
    colour *= shade[..., None]
    eye_col = np.array([0.55, 0.6, 0.2] if b.species == CAT else [0.3, 0.18, 0.08], np.float32)
    for tag, col in (
        (INNER_EAR, np.array([0.85, 0.6, 0.58], np.float32) * shade[..., None]),
        (EYE, eye_col * rng.uniform(0.8, 1.2)),
        (PUPIL, np.array([0.04, 0.03, 0.03], np.float32)),
        (NOSE, np.array([0.12, 0.09, 0.09] if b.species == DOG else [0.7, 0.45, 0.45], np.float32)),
    ):
        sel = parts == tag
        colour[sel] = col[sel] if col.ndim == 3 else col
    return colour


def _random_colour(rng: np.random.Generator, pet_like: Breed | None = None) -> np.ndarray:
    if pet_like is not None:
        base = np.array(pet_like.coat if rng.random() < 0.7 else pet_like.marks)
        return np.clip(base * rng.uniform(0.85, 1.15, size=3), 0, 1).astype(np.float32)
    hsv = (rng.random(), rng.uniform(0.05, 0.65), rng.uniform(0.15, 0.95))
    return np.array(colorsys.hsv_to_rgb(*hsv), np.float32)


def _texture(
    rng: np.random.Generator, h: int, w: int, colour: np.ndarray, short: int
) -> np.ndarray:
    """A (h, w) textured surface (wall, floor, grass, fabric...) of roughly ``colour``.

    ``short`` is the image's short side, which sets the scale of the texture's features."""
    kind = rng.choice(
        ["clouds", "stripes", "tiles", "grain", "plain"], p=[0.3, 0.2, 0.15, 0.2, 0.15]
    )
    other = _random_colour(rng) if rng.random() < 0.5 else colour * rng.uniform(0.6, 1.3)
    yy, xx = np.ogrid[0:h, 0:w]
    a = rng.uniform(0, np.pi)
    t = (xx * math.cos(a) + yy * math.sin(a)).astype(np.float32)
    if kind == "clouds":
        n = 0.6 * _noise(rng, h, w, short * rng.uniform(0.1, 0.4)) + 0.4 * _noise(
            rng, h, w, short * 0.04
        )
        m = n * rng.uniform(0.4, 1.0)
    elif kind == "stripes":
        period = short * rng.uniform(0.03, 0.2)
        wave = np.sin(2 * np.pi * t / period + rng.uniform(0, 6.3))
        m = _smoothstep(-0.2, 0.2, wave) if rng.random() < 0.6 else (wave + 1) / 2
        m = m * rng.uniform(0.3, 1.0)
    elif kind == "tiles":
        s = short * rng.uniform(0.06, 0.25)
        t2 = (-xx * math.sin(a) + yy * math.cos(a)).astype(np.float32)
        m = ((np.floor(t / s) + np.floor(t2 / s)) % 2) * rng.uniform(0.2, 0.9)
        grout = (np.abs((t / s) % 1 - 0.5) > 0.46) | (np.abs((t2 / s) % 1 - 0.5) > 0.46)
        m = np.where(grout, 1.2, m)
    elif kind == "grain":  # grass, carpet, wood: fine anisotropic noise
        grid = (max(2, h // 6), w) if rng.random() < 0.5 else (h, max(2, w // 6))
        fine = Image.fromarray(rng.random(grid, dtype=np.float32))
        m = np.asarray(fine.resize((w, h), Image.Resampling.BILINEAR)) * rng.uniform(0.4, 1.0)
    else:
        m = np.zeros((h, w), np.float32)
    m = np.broadcast_to(m, (h, w))[..., None]
    surface = colour + (other - colour) * m
    ramp = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    surface = (
        surface * (1 + rng.uniform(-0.3, 0.3) * (np.broadcast_to(ramp, (h, w)) - 0.5))[..., None]
    )
    return surface * (0.9 + 0.2 * _noise(rng, h, w, 1.0))[..., None]


def _blob(
    rng: np.random.Generator, h: int, w: int, short: int, kind: str | None = None
) -> np.ndarray:
    """A clutter shape (box, ball, polygon, stick, furry cushion) as a bool mask."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    size = short * rng.uniform(0.08, 0.45)
    kind = kind or str(rng.choice(["rect", "ellipse", "poly", "line", "furry"]))
    if kind == "rect":
        poly = _capsule(
            (cx - size / 2, cy), (cx + size / 2, cy), size * rng.uniform(0.2, 0.6), 0, 2
        )
        ang = rng.normal(0, 0.3)
        poly = _rotate(poly, (cx, cy), ang)
    elif kind == "ellipse":
        poly = _ellipse(cx, cy, size / 2, size / 2 * rng.uniform(0.4, 1.0), rng.uniform(0, 3.2))
    elif kind == "poly":
        k = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = size / 2 * rng.uniform(0.4, 1.0, k)
        poly = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
    elif kind == "line":
        a = rng.uniform(0, np.pi)
        d = np.array([math.cos(a), math.sin(a)]) * size
        poly = _capsule((cx, cy) - d, (cx, cy) + d, size * 0.06, size * 0.06, 6)
    else:  # a fur-like blob (cushion, blanket, toy): pet-like outline and texture
        poly = _ellipse(cx, cy, size / 2, size / 2 * rng.uniform(0.5, 0.9), rng.uniform(0, 3.2))
        poly = _shaggy(rng, poly, size * 0.03)
    draw.polygon([tuple(p) for p in poly], fill=1)
    return np.asarray(canvas).astype(bool)


def _rotate(poly: Polygon, c, angle: float) -> Polygon:
    ca, sa = math.cos(angle), math.sin(angle)
    q = poly - np.asarray(c)
    return np.stack([ca * q[:, 0] - sa * q[:, 1], sa * q[:, 0] + ca * q[:, 1]], 1) + np.asarray(c)


def _background(rng: np.random.Generator, h: int, w: int, breed: Breed) -> np.ndarray:
    """Textured, cluttered scene. Some surfaces and clutter take the pet's colours (a ginger cat
    on a wooden floor, a cushion like a spotted dog), so that colour alone does not find the pet.
    """
    short = min(h, w)

    def colour(pet_like_p: float) -> np.ndarray:
        return _random_colour(rng, breed if rng.random() < pet_like_p else None)

    scene = _texture(rng, h, w, colour(0.08), short)
    if rng.random() < 0.6:  # floor and wall
        y0 = rng.uniform(0.3, 0.85) * h
        slope = rng.normal(0, 0.15)
        yy, xx = np.ogrid[0:h, 0:w]
        floor = (yy > y0 + slope * (xx - w / 2))[..., None]
        scene = np.where(floor, _texture(rng, h, w, colour(0.08), short), scene)
    n_clutter = int(rng.integers(1, 8))
    pet_like = rng.random() < 0.7  # the last piece of clutter (on top) is pet-like
    for i in range(n_clutter):
        last = pet_like and i == n_clutter - 1
        shape = _blob(rng, h, w, short, "furry" if last and rng.random() < 0.6 else None)
        box = _bbox(shape, pad=2)
        bh, bw = shape[box].shape
        fill_colour = colour(1.0 if last else 0.0)
        if rng.random() < 0.5:
            fill = _texture(rng, bh, bw, fill_colour, short)
        else:
            fill = fill_colour * (0.8 + 0.3 * _noise(rng, bh, bw, short * 0.05))[..., None]
        edge = _blur(shape[box], 0.7)[..., None]
        scene[box] = scene[box] * (1 - edge) + fill * edge
    return scene.astype(np.float32)


def _occluder(rng: np.random.Generator, mask: np.ndarray, short: int):
    """An object in front of the pet (a toy, a chair leg): (bool mask, colour field) or None."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 50:
        return None
    i = int(rng.integers(len(xs)))
    h, w = mask.shape
    for _ in range(5):
        shape = _blob(rng, h, w, short)
        ys2, xs2 = np.nonzero(shape)
        if len(xs2):
            shape = np.roll(shape, (ys[i] - int(ys2.mean()), xs[i] - int(xs2.mean())), axis=(0, 1))
            remaining = (mask & ~shape).sum()
            if 0.5 * mask.sum() < remaining < mask.sum() - 20:
                return shape, _texture(rng, h, w, _random_colour(rng), short)
    return None


def _photo_effects(rng: np.random.Generator, scene: np.ndarray, light, short: int) -> np.ndarray:
    """Uneven lighting, colour cast, gamma, slight blur and sensor noise; returns uint8."""
    h, w = scene.shape[:2]
    yy, xx = np.ogrid[0:h, 0:w]
    ramp = ((xx - w / 2) * light[0] + (yy - h / 2) * light[1]) / short
    field = 1 + rng.uniform(0.0, 0.35) * ramp + 0.25 * (_noise(rng, h, w, short * 0.5) - 0.5)
    cast = rng.uniform(0.9, 1.1, size=3).astype(np.float32) * np.float32(rng.uniform(0.8, 1.15))
    scene = np.clip(scene * field[..., None].astype(np.float32) * cast * 255 + 0.5, 0, 255)
    gamma = (np.arange(256) / 255) ** rng.uniform(0.85, 1.15) * 255 + 0.5
    img = Image.fromarray(gamma.astype(np.uint8)[scene.astype(np.uint8)])
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.9) * short / 240))
    noise = rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(1, 5))
    return np.clip(np.asarray(img, np.float32) + noise + 0.5, 0, 255).astype(np.uint8)
