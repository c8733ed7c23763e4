"""The discussion: sentences that state what ``metrics/summary.json`` shows, and nothing more.

Every verdict depends on the sign and size of a difference (and on its paired bootstrap interval
when evaluate computed one), never on a fixed narrative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from petseg import CLASSES
from petseg.results import ArchSummary, Interval, Intervals, Summary

# A difference below half a point (0.005) is reported as "no measurable difference"; one between
# that and a point (0.01) is reported but flagged: a single seed can move mIoU by about that much.
NO_DIFFERENCE = 0.005
NOISE = 0.01
# Timings within 5 % of the fastest are called equally fast: single measurements vary that much.
SAME_SPEED = 0.05

Rows = Mapping[str, ArchSummary]


def discussion(
    summary: Summary,
    *,
    counts: Mapping[str, int],
    data_source: str,
    seed: int = 0,
    unpool_upsample: str = "indices",
) -> list[str]:
    """Sentences that state what ``summary`` (metrics/summary.json) shows, with honest caveats.

    ``counts``: images per split (manifest ``counts``); ``data_source``: ``data.source``;
    ``seed``: ``train.seed``; ``unpool_upsample``: ``models.unpool.upsample``.
    """
    archs, iv = summary.architectures, summary.intervals
    out = _failures(archs) + _ranking(archs, iv) + _per_class(archs, iv)
    if {"unet", "unet_noskip"} <= archs.keys():
        out += _skips(archs, iv)
    elif {"strided", "unpool", "unet"} <= archs.keys():
        out += _skips_without_ablation(archs, iv)
    if {"strided", "unpool"} <= archs.keys():
        out += _resampling(archs, unpool_upsample, iv)
    cost = _step_cost(summary) if summary.cost is not None else _cost(archs)
    return out + cost + _caveats(counts, data_source, seed, iv, summary.cost is not None)


# ---------------------------------------------------------------------------------- wording
def _hundredths(d: float) -> float:
    """``d`` in points, rounded as printed, with no negative zero ("-0.00" reads as a loss)."""
    return round(d * 100, 2) + 0.0


def _pts(d: float) -> str:
    return f"{abs(_hundredths(d)):.2f} points"


def _signed(d: float) -> str:
    v = _hundredths(d)
    return f"{v:+.2f} points" if v else "0.00 points"


def _bound(v: float) -> str:
    v = _hundredths(v)
    return f"{v:+.2f}" if v else "0.00"


def _noise(d: float) -> str:
    """A flag on differences that are measurable but small enough for one seed to explain."""
    return ", within the ~1-point noise of a single seed" if NO_DIFFERENCE <= abs(d) < NOISE else ""


def _interval(iv: Intervals | None, metric: str, a: str, b: str) -> Interval | None:
    """The paired bootstrap interval of a - b in ``metric``, when evaluate computed a finite one."""
    found = iv.difference(a, b, metric) if iv is not None else None
    return found if found is not None and found.finite else None


def _evidence(iv: Intervals | None, metric: str, a: str, b: str, d: float) -> str:
    """What backs a difference ``d`` = a - b in ``metric`` (``miou``, ``iou.border``, ...): its
    paired bootstrap interval over test images when evaluate computed one (metrics/summary.json
    ``intervals``), else the fixed noise flag of :func:`_noise`."""
    found = _interval(iv, metric, a, b)
    if found is None:
        return _noise(d)
    text = (
        f"; {iv.level * 100:g}% interval {_bound(found.low)} to {_bound(found.high)} points"
        " over resampled test images"
    )
    return text + (", which includes no difference" if found.includes_zero else "")


def _real(d: float, found: Interval | None) -> bool:
    """Whether a - b = ``d`` is a difference to claim: measurable, and its interval (if any)
    excludes 0. Anything else is a tie, never a win."""
    return abs(d) >= NO_DIFFERENCE and (found is None or not found.includes_zero)


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def _ranked(values: Mapping[str, float]) -> list[str]:
    """Keys by decreasing value; ties keep their order (the architecture order)."""
    return sorted(values, key=lambda k: -values[k])


def _tied(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.0, abs_tol=1e-12)


def _verdict(d: float, found: Interval | None = None) -> str:
    if not _real(d, found):
        return "made no measurable difference"
    return "helped" if d > 0 else "did not help"


# ---------------------------------------------------------------------------------- failure
COLLAPSED = 0.98  # a network that puts this share of the test pixels in one class has collapsed
UNLEARNED = 0.05  # a class whose best IoU is below this is one no network has learned


def collapsed(archs: Rows) -> dict[str, tuple[str, float]]:
    """arch -> (the class it predicts almost everywhere, its share) for collapsed networks."""
    out = {}
    for a, row in archs.items():
        shares = row.predicted
        top = max(shares, key=shares.get)
        if shares[top] >= COLLAPSED:
            out[a] = (top, shares[top])
    return out


def _failures(archs: Rows) -> list[str]:
    """What went wrong, first: a collapsed network, a class nobody learned, unfinished training."""
    out = [
        f"{a} predicts almost only {c} ({share:.1%} of the test pixels): it has not learned to "
        "segment, so no comparison with it says anything about its design; train longer "
        "(train.epochs) or check train.lr."
        for a, (c, share) in collapsed(archs).items()
    ]
    for c in CLASSES:
        best = _finite({a: r.iou[c] for a, r in archs.items()})
        if best and max(best.values()) < UNLEARNED:
            out.append(
                f"No network has learned the {c} class (best IoU {max(best.values()):.4f}): "
                "differences in it are noise."
            )
    still = [a for a, r in archs.items() if r.epochs > 1 and r.best_epoch == r.epochs]
    if still:
        verb = "was" if len(still) == 1 else "were"
        out.append(
            f"{_join(still)} {verb} still improving: the best validation epoch is the last one "
            f"({archs[still[0]].epochs}), so more epochs (train.epochs) may change these results."
        )
    return out


# ---------------------------------------------------------------------------------- accuracy
def _ranking(archs: Rows, iv: Intervals | None = None) -> list[str]:
    broken = collapsed(archs)
    if broken and len(archs) - len(broken) < 2:
        return [
            f"No ranking: {_join(list(broken))} collapsed to one class (see above), so test mIoU "
            "compares nothing the networks have learned."
        ]
    archs = {a: r for a, r in archs.items() if a not in broken}  # rank what learned something
    miou = _finite({a: r.miou for a, r in archs.items()})
    order = _ranked(miou)
    if len(order) < 2:
        return [f"Only {_join(order) or 'no architecture'} has a test mIoU: nothing to compare."]
    best, runner, worst = order[0], order[1], order[-1]
    gap, gap_worst = miou[best] - miou[runner], miou[best] - miou[worst]
    others = order[1:]
    ev = _evidence(iv, "miou", best, runner, gap)  # of the lead over the runner-up
    if len(others) > 1 and _tied(miou[runner], miou[worst]):
        behind = f"{_pts(gap)} ahead of both {_join(others)} ({miou[runner]:.4f} each{ev})"
    elif len(others) > 1:
        behind = (
            f"{_pts(gap)} ahead of the runner-up {runner} ({miou[runner]:.4f}{ev}) and "
            f"{_pts(gap_worst)} ahead of the worst, {worst} ({miou[worst]:.4f})"
        )
    else:
        behind = f"{_pts(gap)} ahead of {runner} ({miou[runner]:.4f}{ev})"
    if _tied(gap, 0.0):
        leaders = [a for a in order if _tied(miou[a], miou[best])]
        text = f"{_join(leaders)} tie for the best test mIoU ({miou[best]:.4f})"
        if len(leaders) < len(order):
            text += f"; {worst} is {_pts(gap_worst)} behind ({miou[worst]:.4f})"
        return [text + "."]
    if gap < NO_DIFFERENCE:
        text = (
            f"{best} has the highest test mIoU ({miou[best]:.4f}), but only {_pts(gap)} above "
            f"{runner} ({miou[runner]:.4f}): no measurable difference between them"
        )
        if len(others) > 1:
            text += f"; the worst, {worst} ({miou[worst]:.4f}), is {_pts(gap_worst)} behind"
        return [text + "."]
    return [f"{best} is the best architecture on test mIoU ({miou[best]:.4f}), {behind}."]


def _per_class(archs: Rows, iv: Intervals | None = None) -> list[str]:
    iou = {c: _finite({a: r.iou[c] for a, r in archs.items()}) for c in CLASSES}
    out = [_best_per_class(iou)]
    border = _border(iou["border"], iv)
    return out + ([border] if border else []) + _lowest_class(archs)


def _best_per_class(iou: Mapping[str, Mapping[str, float]]) -> str:
    parts = []
    for c in CLASSES:
        if not iou[c]:
            parts.append(f"{c}: undefined for every architecture")
            continue
        order = _ranked(iou[c])
        top = iou[c][order[0]]
        leaders = [a for a in order if _tied(iou[c][a], top)]
        if len(leaders) == len(order) > 1:
            parts.append(f"{c}: all tie ({top:.4f})")
        elif len(leaders) > 1:
            parts.append(f"{c}: {_join(leaders)} tie ({top:.4f})")
        else:
            parts.append(f"{c}: {leaders[0]} ({top:.4f})")
    return "Best IoU per class: " + "; ".join(parts) + "."


def _border(border: Mapping[str, float], iv: Intervals | None) -> str | None:
    """The border class compared between the two networks best at it."""
    if len(border) < 2:
        return None
    first, second = _ranked(border)[:2]
    gap = border[first] - border[second]
    if border[first] == 0:
        return "No architecture gets a single border pixel right (border IoU 0 for all)."
    if gap >= NO_DIFFERENCE:
        return (
            f"On the border class (the thin band around each outline) {first} leads with IoU "
            f"{border[first]:.4f}, {_pts(gap)} above {second} ({border[second]:.4f})"
            f"{_evidence(iv, 'iou.border', first, second, gap)}."
        )
    return (
        f"On the border class no architecture leads measurably: {first} {border[first]:.4f}"
        f" vs {second} {border[second]:.4f} ({_pts(gap)} apart)."
    )


def _lowest_class(archs: Rows) -> list[str]:
    """The lowest-scoring class per network; classes tied at the bottom are named together."""
    lowest = {}
    for a, r in archs.items():
        if all(math.isfinite(r.iou[c]) for c in CLASSES):
            bottom = min(r.iou.values())
            lowest[a] = _join([c for c in CLASSES if _tied(r.iou[c], bottom)])
    if lowest and len(set(lowest.values())) == 1:
        c = next(iter(lowest.values()))
        tied = " and " in c
        what = "tie as the lowest-scoring classes" if tied else "is the lowest-scoring class"
        return [f"{c[0].upper() + c[1:]} {what} for every architecture."]
    if lowest:
        detail = ", ".join(f"{a}: {c}" for a, c in lowest.items())
        return [f"The lowest-scoring class differs between architectures ({detail})."]
    return []


# --------------------------------------------------------------------------------- design
SKIP_METRICS = (("miou", "mIoU"), ("iou.border", "border IoU"), ("boundary_iou", "Boundary IoU"))


def _skips(archs: Rows, iv: Intervals | None = None) -> list[str]:
    """Do skip connections matter: unet against its ablation, which differs in nothing else."""
    broken = collapsed({a: archs[a] for a in ("unet", "unet_noskip")})
    if broken:
        return [
            f"Skip connections cannot be judged here: {_join(list(broken))} collapsed to one "
            "class (see above)."
        ]
    parts, real = [], {}
    for metric, what in SKIP_METRICS:
        u, n = archs["unet"].at(metric), archs["unet_noskip"].at(metric)
        if not (math.isfinite(u) and math.isfinite(n)):
            continue
        d = u - n
        real[metric] = _real(d, _interval(iv, metric, "unet", "unet_noskip")) and d
        parts.append(
            f"{what} {u:.4f} vs {n:.4f} ({_signed(d)}"
            f"{_evidence(iv, metric, 'unet', 'unet_noskip', d)})"
        )
    gains = [m for m, d in real.items() if d]
    verdict = (
        "helped" if gains and all(real[m] > 0 for m in gains)
        else "did not help" if gains and all(real[m] < 0 for m in gains)
        else "made mixed differences" if gains else "made no measurable difference"
    )  # fmt: skip
    return [
        f"Skip connections {verdict}: unet against unet_noskip, the same network with every skip "
        f"tensor zeroed: {'; '.join(parts)}.",
        "The two have the same layers, parameters and FLOPs and differ only in whether encoder "
        "features reach the decoder, so these differences are the skips' own; the ablation cannot "
        "say how a decoder designed without skips (fewer input channels, other widths) would do.",
        *_skip_mechanism(archs),
    ]


def _skip_mechanism(archs: Rows) -> list[str]:
    """Where the skips act: outlines (border, Boundary IoU) or region interiors (pet IoU)."""
    u, n = archs["unet"], archs["unet_noskip"]
    outline = {"border IoU": u.iou["border"] - n.iou["border"]}
    if math.isfinite(u.boundary_iou) and math.isfinite(n.boundary_iou):
        outline["Boundary IoU"] = u.boundary_iou - n.boundary_iou
    interior = u.iou["pet"] - n.iou["pet"]
    if not all(math.isfinite(v) for v in [*outline.values(), interior]):
        return []
    edge = max(outline.values(), key=abs)
    if abs(edge) < NO_DIFFERENCE and abs(interior) < NO_DIFFERENCE:
        return []
    where = "at outlines" if abs(edge) > abs(interior) else "in region interiors"
    listed = ", ".join(f"{k} {_signed(v)}" for k, v in outline.items())
    return [
        f"Where they act: the change is largest {where} ({listed}, against pet IoU "
        f"{_signed(interior)}): skips carry the high-resolution detail that locates edges, "
        "which the bottleneck alone loses."
        if where == "at outlines"
        else f"Where they act: the change is largest {where} ({listed}, against pet IoU "
        f"{_signed(interior)}), not at the outlines skips are usually credited with."
    ]


def _skips_without_ablation(archs: Rows, iv: Intervals | None = None) -> list[str]:
    """U-Net against the better (per metric) of the two networks without skip connections."""
    out = []
    for metric, what in (("miou", "mIoU"), ("iou.border", "border IoU")):
        ref = max(("strided", "unpool"), key=lambda a: archs[a].at(metric))
        u, r = archs["unet"].at(metric), archs[ref].at(metric)
        d = u - r
        out.append(
            f"Skip connections {_verdict(d, _interval(iv, metric, 'unet', ref))} on {what}: "
            f"unet {u:.4f} against {r:.4f} for {ref}, the better network without skips "
            f"({_signed(d)}{_evidence(iv, metric, 'unet', ref, d)}); the two also differ in "
            "upsampling and size, so this is not the skips alone."
        )
    return out


def _compare(d: float, found: Interval | None = None) -> str:
    if not _real(d, found):
        return "is level with"
    return "beats" if d > 0 else "trails"


def _resampling(archs: Rows, upsample: str, iv: Intervals | None = None) -> list[str]:
    """Do pooling indices matter: unpool (indices, or nearest) against strided (learned)."""
    broken = collapsed({a: archs[a] for a in ("unpool", "strided")})
    if broken:
        return [
            f"Pooling indices vs learned upsampling cannot be judged here: {_join(list(broken))} "
            "collapsed to one class (see above)."
        ]
    u, s = archs["unpool"], archs["strided"]
    dm, db = u.miou - s.miou, u.iou["border"] - s.iou["border"]
    cm = _compare(dm, _interval(iv, "miou", "unpool", "strided"))
    cb = _compare(db, _interval(iv, "iou.border", "unpool", "strided"))
    if upsample == "indices":
        head, how = "Pooling indices vs learned upsampling", "unpooling with the pooling indices"
    else:
        head = "Nearest vs learned upsampling"
        how = f"nearest-neighbour upsampling, models.unpool.upsample = {upsample}: no indices"
    return [
        f"{head}: unpool ({how}) {cm} strided (transposed convolutions) on mIoU, "
        f"{u.miou:.4f} vs {s.miou:.4f} "
        f"({_signed(dm)}{_evidence(iv, 'miou', 'unpool', 'strided', dm)}), and {cb} it "
        f"on border IoU, {u.iou['border']:.4f} vs {s.iou['border']:.4f} "
        f"({_signed(db)}{_evidence(iv, 'iou.border', 'unpool', 'strided', db)}).",
        "The two also differ in down-sampling (max-pooling vs stride-2 convolutions) and in size "
        f"({u.params / 1e6:.3f} M vs {s.params / 1e6:.3f} M parameters, {u.gflops_per_image:.3g}"
        f" vs {s.gflops_per_image:.3g} GFLOPs per image), so this compares the whole resampling "
        "design, not the upsampler alone.",
    ]


# ------------------------------------------------------------------------------------ cost
def _fastest(values: Mapping[str, float], higher: bool, what: str, unit: str) -> str:
    """Who is fastest; timings within SAME_SPEED of the fastest are reported as a tie."""
    order = sorted(values, key=lambda a: -values[a] if higher else values[a])
    top = values[order[0]]
    group = [a for a in order if abs(values[a] - top) <= SAME_SPEED * abs(top)]
    if len(group) > 1:
        each = ", ".join(f"{a} {values[a]:.1f}{unit}" for a in group)
        return (
            f"{_join(group)} are equally fast {what} (within {SAME_SPEED:.0%} of the fastest: "
            f"{each})."
        )
    nxt = order[1]
    return (
        f"{order[0]} is the fastest {what} ({top:.1f}{unit}; next {nxt} {values[nxt]:.1f}{unit})."
    )


def _cost(archs: Rows) -> list[str]:
    if len(archs) < 2:
        return []
    t = {a: r.train_seconds for a, r in archs.items()}
    ips = {a: r.inference_images_per_s for a, r in archs.items()}
    miou = {a: r.miou for a, r in archs.items()}
    out = [_fastest(t, False, "to train", " s"), _fastest(ips, True, "at inference", " images/s")]
    fast_t, fast_i, best = min(t, key=t.get), max(ips, key=ips.get), max(miou, key=miou.get)
    return out + _training_price(t, miou, best, fast_t) + _inference_price(ips, best, fast_i)


def _training_price(
    t: Mapping[str, float], miou: Mapping[str, float], best: str, fast_t: str
) -> list[str]:
    """What the most accurate network's extra training time buys over the fastest to train."""
    extra, d = t[best] - t[fast_t], miou[best] - miou[fast_t]
    if extra <= SAME_SPEED * t[fast_t]:
        return [
            f"The most accurate network, {best}, trains as fast as any other: here accuracy "
            "costs no extra training time."
        ]
    head = (
        f"{best}, the most accurate, takes {extra:.1f} s more to train than {fast_t} "
        f"({t[best] / t[fast_t]:.1f}× the time)"
    )
    if d < NO_DIFFERENCE:
        return [f"{head} for no measurable mIoU gain ({_signed(d)})."]
    return [
        f"{head} for {_pts(d)} more mIoU: {extra / (d * 100):.1f} extra seconds per mIoU point."
    ]


def _inference_price(ips: Mapping[str, float], best: str, fast_i: str) -> list[str]:
    if ips[best] > 0 and ips[fast_i] - ips[best] > SAME_SPEED * ips[fast_i]:
        return [
            f"At inference {best} processes {ips[best]:.1f} images/s, "
            f"{ips[fast_i] / ips[best]:.2f}× slower than {fast_i}."
        ]
    return []


STEP_WORDS = {"train_step": "training step", "inference_batch": "inference batch"}


def _step_cost(summary: Summary) -> list[str]:
    """Cost ranked by the interleaved step timings (petseg.evaluate.cost): ratios to the fastest,
    with their quartiles over the rounds; overlapping 1 means within noise of the fastest."""
    setup, archs = summary.cost, summary.architectures
    if setup is None or any(r.cost is None for r in archs.values()) or len(archs) < 2:
        return _cost(archs)
    out = []
    for step, words in STEP_WORDS.items():
        ref = setup.reference[step]
        timing = {a: getattr(r.cost, step) for a, r in archs.items()}
        others = sorted((a for a in archs if a != ref), key=lambda a: timing[a].ratio)
        tied = [a for a in others if timing[a].ratio_low <= 1.0]
        apart = [
            f"{a} {timing[a].ratio:.2f}× (quartiles {timing[a].ratio_low:.2f}–"
            f"{timing[a].ratio_high:.2f})"
            for a in others
            if a not in tied
        ]
        text = f"Per {words} ({setup.batch} images at {setup.image_size} px, {setup.rounds} "
        text += f"interleaved rounds): {ref} is the fastest ({timing[ref].ms:.1f} ms)"
        if tied:
            text += f"; {_join(tied)} within noise of it"
        out.append(text + (f"; {', '.join(apart)} its time" if apart else "") + ".")
    return out + _accuracy_price(archs)


def _accuracy_price(archs: Rows) -> list[str]:
    """What the most accurate network's training step costs, relative to the cheapest (among the
    networks that did not collapse)."""
    archs = {a: r for a, r in archs.items() if a not in collapsed(archs)}
    miou = _finite({a: r.miou for a, r in archs.items()})
    if len(miou) < 2:
        return []
    best = max(miou, key=miou.get)
    ratio = {a: r.cost.train_step.ratio for a, r in archs.items()}
    cheap = min(ratio, key=ratio.get)
    if best == cheap:
        return [f"The most accurate network, {best}, also has the cheapest training step."]
    d = miou[best] - miou[cheap]
    gain = f"{_pts(d)} more mIoU" if d >= NO_DIFFERENCE else "no measurable mIoU gain"
    return [
        f"{best}, the most accurate, costs {ratio[best] / ratio[cheap]:.2f}× the training step of "
        f"{cheap} for {gain}; the training seconds in the table are single wall-clock "
        "measurements, for context only."
    ]


# -------------------------------------------------------------------------------- caveats
def _caveats(
    counts: Mapping[str, int],
    data_source: str,
    seed: int,
    iv: Intervals | None = None,
    timed: bool = False,
) -> list[str]:
    n_test = counts.get("test", 0)
    few = (
        "; with so few test images a handful of hard cases can move every score"
        if n_test < 500
        else ""
    )
    out = [
        _seed_caveat(seed, iv),
        f"The scores come from {n_test} test images (the networks learned from "
        f"{counts.get('train', 0)} training and {counts.get('val', 0)} validation images){few}.",
    ]
    if data_source == "synthetic":
        out.append(
            "The data are synthetic (data.source = synthetic): generated scenes, not photographs, "
            "so these results say nothing about real pets."
        )
    if timed:
        out.append(
            "Step costs are ratios within interleaved rounds on one machine: other jobs slow "
            "every network of a round alike, but another machine may rank them differently."
        )
    else:
        out.append("Timings were measured once, on one machine; they rank the networks there only.")
    return out


def _seed_caveat(seed: int, iv: Intervals | None) -> str:
    if iv is not None:
        return (
            f"Caveats: this report rests on one training seed (seed {seed}). The intervals "
            f"({iv.level * 100:g}%, paired bootstrap: {iv.resamples} resamples of the "
            f"{iv.over}) say how much a difference depends on which test images were drawn; "
            "they leave out how much a second training seed would move it, which on small "
            'training sets can be as much again: make compare SEEDS="0 1 2" measures that.'
        )
    return (
        f"Caveats: this report rests on one training seed (seed {seed}), so differences below "
        f"about {NOISE * 100:g} point of mIoU may be noise rather than a property of the "
        "architecture."
    )
