"""The regularization sweep: its grid, run as queued DVC experiments, and its results collected.

``python -m petseg.sweep run [--seeds 0 1 2] [-j 2] [--preset presets/real.yaml] [-S key=value]``
(what ``make sweep`` runs) queues one DVC experiment per variant and seed with
``dvc exp run --queue -n reg-<variant>-s<seed> -S ...``, starts ``dvc queue start -j N``, waits
for them, and writes ``plots/experiments.csv`` from ``dvc exp show --json``: one row per
experiment and architecture with the test mIoU of ``metrics/scores.json``. The report stage turns
that file into its Regularization section. ``python -m petseg.sweep collect`` only rewrites it.

The grid: ``baseline`` is deliberately un-regularized (no augmentation, dropout, weight decay or
label smoothing); each single variant turns one regularizer on relative to it and ``all`` turns on
all four. Every other param is the workspace's ``params.yaml`` (plus the preset and ``-S``), the
same for every variant, and the sweep refuses to collect experiments whose recipes differ.

``python -m petseg.sweep transfer --section unet`` (what ``make transfer`` runs) trains the
networks of ``models.<section>`` once per encoder (``scratch`` and each torchvision backbone) and
starting weights (``imagenet``: ``pretrained: true``; ``random``), as experiments
``tl-<encoder>-<init>-s<seed>``, collected into ``plots/transfer.csv`` (cost and test scores side
by side) for the report's "From scratch vs pretrained" section.

``python -m petseg.sweep compare --seeds 0 1 2`` (what ``make compare`` runs) is the same machinery
for the headline comparison: one experiment ``cmp-s<seed>`` per training seed with params.yaml's
recipe as it is, collected into ``plots/seeds.csv`` (each network's scores per seed) and
``plots/seed_diffs.csv`` (each pair's differences per seed with their bootstrap intervals, read
from each experiment's ``metrics/summary.json`` in the DVC cache), from
which the report's "Across seeds" section weighs seed spread against test-image resampling.

Experiments that already succeeded (same name, same baseline commit) are not queued again, so a
sweep can be extended with more seeds; a failed one is queued again, and one still queued or
running is waited for.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from petseg import cli, config, results
from petseg.errors import ParamsError, PetsegError
from petseg.fileio import atomic_write_bytes
from petseg.preset import read_preset

SCORES, SUMMARY = "metrics/scores.json", "metrics/summary.json"  # dvc.yaml's evaluate outputs
ARCHS = tuple(config.ARCH_SECTIONS)  # every network the pipeline trains, in table order
DROPOUT_KEYS = tuple(f"models.{s}.dropout" for s in dict.fromkeys(config.ARCH_SECTIONS.values()))

# Each regularizer: the params that turn it on (the values the sweep uses) ...
ON: dict[str, dict[str, Any]] = {
    "augment": {"train.augment.enabled": True},  # with the train.augment.* settings of params.yaml
    "dropout": dict.fromkeys(DROPOUT_KEYS, 0.2),  # Dropout2d in bottleneck and decoder
    "weight_decay": {"train.weight_decay": 0.05},  # AdamW, decoupled
    "label_smoothing": {"train.label_smoothing": 0.1},
}
# ... and the same params switched off: the un-regularized baseline.
OFF: dict[str, Any] = {
    "train.augment.enabled": False,
    **dict.fromkeys(DROPOUT_KEYS, 0.0),
    "train.weight_decay": 0.0,
    "train.label_smoothing": 0.0,
}
# Variant name -> regularizers turned on, in report order.
VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    **{name: (name,) for name in ON},
    "all": tuple(ON),
}
SEED = "train.seed"
# Params that do not change the numbers: experiments differing only here are still comparable.
RUNTIME = ("train.threads", "preprocess.workers", "tracking.")
COLUMNS = ("experiment", "variant", "arch", "seed", "miou")
PENDING = ("queued", "running")


class SweepError(PetsegError):
    """DVC refused a command, or the experiments cannot be compared."""


RECIPE = "recipe"  # make compare: params.yaml's recipe as it is, only the seed changes


def overrides(variant: str) -> dict[str, Any]:
    """The params of ``variant``: every regularizer off, then its own turned on (none of it for
    :data:`RECIPE`)."""
    if variant == RECIPE:
        return {}
    if variant not in VARIANTS:
        raise ParamsError(f"unknown variant {variant!r}; variants: {', '.join(VARIANTS)}")
    out = dict(OFF)
    for reg in VARIANTS[variant]:
        out.update(ON[reg])
    return out


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def variant_of(params: Mapping[str, Any]) -> str:
    """Name the regularizers a params.yaml mapping turns on (``augment+dropout`` if off-grid)."""
    flat = _flat(params)
    on = [reg for reg, keys in ON.items() if any(flat.get(k, OFF[k]) != OFF[k] for k in keys)]
    if not on:
        return "baseline"
    return "all" if len(on) == len(ON) else "+".join(on)


def experiment_name(prefix: str, variant: str, seed: int) -> str:
    return f"{prefix}-s{seed}" if variant == RECIPE else f"{prefix}-{variant}-s{seed}"


# ------------------------------------------------------------------------------------- plan
def _arg(value: Any) -> str:
    """A value as DVC's ``-S key=value`` parses it (YAML; JSON is YAML)."""
    return json.dumps(value)


def _parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``-S key=value`` values parsed as YAML 1.2, as DVC does (``1e-3`` is a number)."""
    parser = YAML(typ="safe", pure=True)
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"-S {item!r}: expected key=value, e.g. -S train.epochs=5")
        out[key.strip()] = parser.load(value)
    return out


def _read_preset(path: Path | None) -> dict[str, Any]:
    return {} if path is None else read_preset(path)


def _with(params: Mapping[str, Any], sets: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(params))
    for dotted, value in sets.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"-S {dotted}: {part} is not a section of params.yaml")
        node[leaf] = value
    return out


@dataclass(frozen=True)
class Planned:
    name: str
    variant: str
    seed: int
    sets: dict[str, Any]  # every -S of this experiment

    def command(self) -> list[str]:
        sets = [x for k, v in self.sets.items() for x in ("-S", f"{k}={_arg(v)}")]
        return ["dvc", "exp", "run", "--queue", "-n", self.name, *sets]


def plan(
    variants: Sequence[str],
    seeds: Sequence[int],
    common: Mapping[str, Any],
    params: Mapping[str, Any],
    prefix: str = "reg",
) -> list[Planned]:
    """One experiment per variant and seed; ``common`` (preset, ``-S``) applies to all of them.

    Every experiment's params (``params`` with its overrides) are validated here, so an invalid
    value stops the sweep before anything is queued.
    """
    grid = set() if list(variants) == [RECIPE] else set(OFF)
    clash = sorted(k for k in common if k in grid or k == SEED)
    if clash:
        raise ParamsError(
            f"{', '.join(clash)}: set by the sweep itself (the grid in petseg.sweep, --seeds); "
            "leave them out of --preset and -S"
        )
    out = []
    for variant in variants:
        for seed in seeds:
            sets = {**common, **overrides(variant), SEED: seed}
            name = (
                experiment_name(prefix, variant, seed) if variant != RECIPE else f"{prefix}-s{seed}"
            )
            config.validate(_with(params, sets), f"params.yaml with the overrides of {name}")
            out.append(Planned(name, variant, seed, sets))
    return out


# ------------------------------------------------------------------------------ experiments
@dataclass(frozen=True)
class Experiment:
    """One experiment in ``dvc exp show --json``."""

    name: str
    state: str  # queued | running | success | failed
    params: dict[str, Any]  # params.yaml
    scores: dict[str, Any] | None  # metrics/scores.json (stale unless state is success)
    rev: str = ""  # its commit: where metrics/summary.json (a DVC output) is read from


def parse_exp_show(show: Sequence[Mapping[str, Any]]) -> list[Experiment]:
    """The experiments of the baselines in ``dvc exp show --json`` (the workspace is skipped)."""
    out = []
    for baseline in show:
        if baseline.get("rev") == "workspace":
            continue
        for exp in baseline.get("experiments") or []:
            rev = (exp.get("revs") or [{}])[0]
            state = (exp.get("executor") or {}).get("state")
            if state is None:  # finished before DVC tracked executors
                state = "failed" if rev.get("error") else "success"
            data = rev.get("data") or {}
            scores = (data.get("metrics") or {}).get(SCORES) or {}
            out.append(
                Experiment(
                    name=exp.get("name") or rev.get("rev", "?")[:7],
                    state=state,
                    params=((data.get("params") or {}).get("params.yaml") or {}).get("data") or {},
                    scores=scores.get("data"),
                    rev=rev.get("rev", ""),
                )
            )
    return out


def collect(experiments: Sequence[Experiment], prefix: str = "reg") -> list[dict[str, Any]]:
    """Rows of plots/experiments.csv: each successful ``<prefix>-*`` experiment x architecture.

    Raises :class:`SweepError` when their recipes differ beyond the regularizers and the seed
    (experiments left from a sweep with other settings), or one variant has two settings; a
    :class:`~petseg.errors.DataError` when a summary does not match :mod:`petseg.results`.
    """
    done = [e for e in experiments if e.state == "success" and e.name.startswith(f"{prefix}-")]
    _check_comparable(done)
    rows = []
    for exp in done:
        for arch, row in _scores(exp).items():
            rows.append(
                {
                    "experiment": exp.name,
                    "variant": variant_of(exp.params),
                    "arch": arch,
                    "seed": _flat(exp.params).get(SEED),
                    "miou": row.miou,
                }
            )
    order = {v: i for i, v in enumerate(VARIANTS)}
    arch_order = {a: i for i, a in enumerate(ARCHS)}
    rows.sort(
        key=lambda r: (
            order.get(r["variant"], len(order)),
            r["variant"],
            arch_order.get(r["arch"], len(arch_order)),
            r["arch"],
            r["seed"],
            r["experiment"],
        )
    )
    return rows


def _scores(exp: Experiment) -> dict[str, results.HeadlineRow]:
    """The experiment's metrics/scores.json, validated; a DataError naming a bad key."""
    if not exp.scores:
        raise SweepError(f"experiment {exp.name} has no {SCORES} architectures")
    where = f"experiment {exp.name} {SCORES}"
    hint = f"rerun it or remove it (dvc exp remove {exp.name})"
    return {
        arch: results.parse(results.HeadlineRow, row, f"{where} {arch}", hint)
        for arch, row in exp.scores.items()
    }


def read_summary(exp: Experiment) -> results.Summary:
    """The experiment's metrics/summary.json (intervals, epochs, GFLOPs: a DVC output, not a
    metric), read from its commit and the DVC cache; a SweepError when it cannot be read."""
    import dvc.api  # only here: the rest of the sweep talks to dvc through its CLI

    hint = f"rerun it or remove it (dvc exp remove {exp.name})"
    try:
        text = dvc.api.read(SUMMARY, repo=str(Path.cwd()), rev=exp.rev)
    except Exception as exc:  # DVC raises many kinds: not in the cache, unknown rev
        raise SweepError(f"experiment {exp.name}: cannot read {SUMMARY} ({exc}): {hint}") from None
    where = f"experiment {exp.name} {SUMMARY}"
    return results.parse(results.Summary, json.loads(text), where, hint)


def read_intervals(exp: Experiment) -> results.Intervals | None:
    """The bootstrap intervals of the experiment's metrics/summary.json (None: it has none)."""
    return read_summary(exp).intervals


def collect_seeds(
    experiments: Sequence[Experiment],
    prefix: str = "cmp",
    intervals: Callable[[Experiment], results.Intervals | None] = read_intervals,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of plots/seeds.csv (network x seed) and plots/seed_diffs.csv (pair x metric x seed)
    from the successful ``<prefix>-s<seed>`` experiments; a SweepError if their recipes differ
    beyond the seed."""
    done = [e for e in experiments if e.state == "success" and e.name.startswith(f"{prefix}-s")]
    _check_comparable(done)
    rows, pairs = [], []
    for exp in sorted(done, key=lambda e: (_flat(e.params).get(SEED), e.name)):
        scores, seed = _scores(exp), _flat(exp.params).get(SEED)
        found, archs = intervals(exp), list(scores)
        for arch in archs:
            values = {m: scores[arch].at(m) for m in results.COMPARED}
            rows.append({"experiment": exp.name, "seed": seed, "arch": arch, **values})
        for i, a in enumerate(archs):
            for b in archs[i + 1 :]:
                for m in results.COMPARED:
                    d = scores[a].at(m) - scores[b].at(m)
                    iv = found.difference(a, b, m) if found else None
                    pairs.append(
                        {"experiment": exp.name, "seed": seed, "a": a, "b": b, "metric": m,
                         "diff": d, "low": iv.low if iv else float("nan"),
                         "high": iv.high if iv else float("nan")}
                    )  # fmt: skip
    return rows, pairs


def _check_comparable(
    done: Sequence[Experiment],
    grid_keys: Iterable[str] = tuple(OFF),
    variant: Callable[[Mapping[str, Any]], str] = variant_of,
) -> None:
    """Same recipe outside the grid for all; the same grid values within each variant."""
    ref: dict[str, tuple[str, dict[str, Any]]] = {}  # variant or "*" -> (experiment, params)
    grid_keys = tuple(grid_keys)
    for exp in done:
        flat = _flat(exp.params)
        recipe = {
            k: v
            for k, v in flat.items()
            if k not in grid_keys and k != SEED and not k.startswith(RUNTIME)
        }
        grid = {k: flat.get(k) for k in grid_keys}
        for key, values in (("*", recipe), (variant(exp.params), grid)):
            first, first_values = ref.setdefault(key, (exp.name, values))
            diff = sorted(k for k in first_values.keys() | values.keys()
                          if first_values.get(k) != values.get(k))  # fmt: skip
            if diff:
                what = ", ".join(
                    f"{k} = {values.get(k)!r} vs {first_values.get(k)!r}" for k in diff[:4]
                )
                raise SweepError(
                    f"experiments {exp.name} and {first} differ in {what}, so they cannot be "
                    f"compared: remove the stale one (dvc exp remove {exp.name}) or sweep "
                    "with another --prefix"
                )


# ------------------------------------------------------------------------- transfer learning
TRANSFER = "tl"  # the experiments' prefix
INITS = {"imagenet": True, "random": False}  # starting weights -> models.<section>.pretrained


def transfer_keys(section: str) -> tuple[str, ...]:
    """The params the transfer grid sets (weights_path too: no file fits every encoder)."""
    return tuple(f"models.{section}.{k}" for k in ("encoder", "pretrained", "weights_path"))


def transfer_variants(encoders: Sequence[str], inits: Sequence[str]) -> list[tuple[str, str]]:
    """(encoder, init) pairs; the scratch encoder has no pretrained weights, so random only."""
    return [(e, i) for e in encoders for i in inits if e != "scratch" or not INITS[i]]


def plan_transfer(
    section: str,
    variants: Sequence[tuple[str, str]],
    seeds: Sequence[int],
    common: Mapping[str, Any],
    params: Mapping[str, Any],
    prefix: str = TRANSFER,
) -> list[Planned]:
    """One experiment per (encoder, init) and seed, each validated like params.yaml."""
    if section not in config.BACKBONE_SECTIONS:
        raise ParamsError(
            f"--section {section}: backbones fit {', '.join(config.BACKBONE_SECTIONS)}"
        )
    clash = sorted(k for k in common if k in transfer_keys(section) or k == SEED)
    if clash:
        raise ParamsError(
            f"{', '.join(clash)}: set by the transfer grid itself (--encoders, --inits, --seeds); "
            "leave them out of --preset and -S"
        )
    out = []
    for encoder, init in variants:
        for seed in seeds:
            name = f"{prefix}-{encoder}-{init}-s{seed}"
            grid = {
                f"models.{section}.encoder": encoder,
                f"models.{section}.pretrained": INITS[init],
            }
            sets = {**common, **grid, SEED: seed}
            config.validate(_with(params, sets), f"params.yaml with the overrides of {name}")
            out.append(Planned(name, f"{encoder}-{init}", seed, sets))
    return out


def collect_transfer(
    experiments: Sequence[Experiment],
    section: str,
    prefix: str = TRANSFER,
    summary: Callable[[Experiment], results.Summary] = read_summary,
) -> list[dict[str, Any]]:
    """Rows of plots/transfer.csv: each successful ``<prefix>-*`` experiment x each network that
    ``models.<section>`` configures; a SweepError if their recipes differ beyond the grid."""
    done = [e for e in experiments if e.state == "success" and e.name.startswith(f"{prefix}-")]
    keys = transfer_keys(section)
    _check_comparable(done, keys, lambda p: "/".join(str(_flat(p).get(k)) for k in keys))
    rows = []
    for exp in done:
        flat = _flat(exp.params)
        for arch, row in summary(exp).architectures.items():
            if config.ARCH_SECTIONS.get(arch) != section:
                continue
            rows.append(
                {"experiment": exp.name, "arch": arch,
                 "encoder": flat.get(keys[0], "scratch"), "pretrained": bool(flat.get(keys[1])),
                 "seed": flat.get(SEED), "epochs": row.epochs, "params": row.params,
                 "gflops_per_image": row.gflops_per_image, "train_seconds": row.train_seconds,
                 "miou": row.miou, "binary_pet_iou": row.binary_pet_iou,
                 "iou_border": row.iou["border"], "boundary_iou": row.boundary_iou}
            )  # fmt: skip
    encoders = {e: i for i, e in enumerate(config.ENCODERS)}
    arch_order = {a: i for i, a in enumerate(ARCHS)}
    rows.sort(
        key=lambda r: (arch_order.get(r["arch"], 99), encoders.get(r["encoder"], 99),
                       r["pretrained"], r["seed"], r["experiment"])
    )  # fmt: skip
    return rows


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


# ------------------------------------------------------------------------------------- DVC
def _env() -> dict[str, str]:
    """This interpreter's bin first on PATH: the queue workers and stages find the same ``dvc``
    and ``python``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _dvc(args: Sequence[str], echo: bool = True) -> str:
    if echo:
        print("$ " + shlex.join(args), flush=True)
    proc = subprocess.run(list(args), env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SweepError(f"{' '.join(args[:4])} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def exp_show() -> list[Experiment]:
    return parse_exp_show(json.loads(_dvc(["dvc", "exp", "show", "--json"], echo=False)))


def _states(experiments: Sequence[Experiment], names: Iterable[str]) -> dict[str, str]:
    """Per name: success if any run of it succeeded, else pending if one is, else failed/absent."""
    out = {}
    for name in names:
        states = {e.state for e in experiments if e.name == name}
        if "success" in states:
            out[name] = "success"
        elif states & set(PENDING):
            out[name] = "running" if "running" in states else "queued"
        else:
            out[name] = "failed" if states else "absent"
    return out


def run(planned: Sequence[Planned], jobs: int, poll: float = 10.0) -> list[str]:
    """Queue what is not done yet, run the queue with ``jobs`` workers, wait; return the names
    of the experiments that failed."""
    names = [p.name for p in planned]
    before = _states(exp_show(), names)
    for p in planned:
        if before[p.name] == "success":
            print(f"{p.name}: already done for this baseline (dvc exp remove {p.name} to redo)")
        elif before[p.name] in PENDING:
            print(f"{p.name}: already {before[p.name]}, waiting for it")
        else:
            _dvc(p.command())
    start = time.monotonic()
    _dvc(["dvc", "queue", "start", "-j", str(jobs)])
    shown: dict[str, str] = {}
    while True:
        now = _states(exp_show(), names)
        for name, state in now.items():
            if shown.get(name) != state:
                print(f"[{time.monotonic() - start:6.0f} s] {name}: {state}", flush=True)
        shown = now
        pending = [n for n, s in now.items() if s in PENDING]
        if not pending:
            break
        if "running" not in now.values():  # workers stop when idle: make sure some are up
            _dvc(["dvc", "queue", "start", "-j", str(jobs)], echo=False)
        time.sleep(poll)
    return [n for n, s in shown.items() if s != "success"]


def write_results(command: str, prefix: str, out: Path, diffs: Path, section: str = "unet") -> None:
    """Collect the experiments of ``command`` (run/collect: the grid; compare: the seeds;
    transfer: the encoders of ``models.<section>``)."""
    experiments = exp_show()
    if command == "transfer":
        rows = collect_transfer(experiments, section, prefix)
        results.write_csv(out, results.TRANSFER_COLUMNS, rows)
        print(f"{out}: {len(rows)} rows from {len({r['experiment'] for r in rows})} experiments")
        return
    if command == "compare":
        rows, pairs = collect_seeds(experiments, prefix)
        results.write_csv(out, results.SEEDS_COLUMNS, rows)
        results.write_csv(diffs, results.SEED_DIFFS_COLUMNS, pairs)
        print(f"{out}, {diffs}: {len({r['experiment'] for r in rows})} seeds")
        return
    rows = collect(experiments, prefix)
    write_csv(out, rows)
    print(f"{out}: {len(rows)} rows from {len({r['experiment'] for r in rows})} experiments")


# ------------------------------------------------------------------------------------- CLI
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="queue the grid, run it, collect plots/experiments.csv")
    run_p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    cmp_p = sub.add_parser("compare", help="the recipe over seeds: plots/seeds.csv")
    col_p = sub.add_parser("collect", help="only (re)write plots/experiments.csv")
    tl_p = sub.add_parser("transfer", help="encoders x starting weights: plots/transfer.csv")
    tl_p.add_argument("--section", default="unet", help="models.<section> to vary")
    tl_p.add_argument("--encoders", nargs="+", choices=config.ENCODERS, default=config.ENCODERS)
    tl_p.add_argument("--inits", nargs="+", choices=INITS, default=list(INITS))
    tl_p.add_argument("--collect-only", action="store_true", help="only (re)write the CSV")
    for p in (run_p, cmp_p, tl_p):
        p.add_argument("--seeds", nargs="+", type=int, default=[0], help="train.seed values")
        p.add_argument("-j", "--jobs", type=int, default=2, help="experiments run at once")
        p.add_argument("--preset", type=Path, help="dotted-key overrides, e.g. presets/real.yaml")
        p.add_argument("-S", "--set", dest="sets", action="append", default=[], metavar="K=V")
        p.add_argument("--dry-run", action="store_true", help="print the dvc commands only")
        p.add_argument("--poll", type=float, default=10.0, help="seconds between status checks")
    for p, prefix, out in ((run_p, "reg", "experiments"), (col_p, "reg", "experiments"),
                           (cmp_p, "cmp", "seeds"), (tl_p, TRANSFER, "transfer")):  # fmt: skip
        p.add_argument("--prefix", default=prefix, help="experiment names start PREFIX-")
        p.add_argument("--out", type=Path, default=Path(f"plots/{out}.csv"))
        p.add_argument("--params", type=Path, default=Path("params.yaml"))
    cmp_p.add_argument("--diffs", type=Path, default=Path("plots/seed_diffs.csv"))
    args = parser.parse_args()
    diffs = getattr(args, "diffs", Path("plots/seed_diffs.csv"))
    section = getattr(args, "section", "unet")
    if args.command == "collect" or getattr(args, "collect_only", False):
        write_results(args.command, args.prefix, args.out, diffs, section)
        return
    planned = _planned(args)
    if args.dry_run:
        for p in planned:
            print(shlex.join(p.command()))
        print(f"dvc queue start -j {args.jobs}")
        return
    failed = run(planned, args.jobs, args.poll)
    write_results(args.command, args.prefix, args.out, diffs, section)
    if failed:
        logs = "; ".join(f"dvc queue logs {n}" for n in failed)
        raise SweepError(f"{len(failed)} experiment(s) failed: {', '.join(failed)} (see {logs})")


def _planned(args: argparse.Namespace) -> list[Planned]:
    if args.jobs < 1:
        raise ParamsError(f"-j {args.jobs}: at least one job")
    common = {**_read_preset(args.preset), **_parse_sets(args.sets)}
    if "train.threads" not in common:  # N trainings at once share the cores instead of fighting
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        common["train.threads"] = max(1, (cores or 1) // args.jobs)
    params = config.load(args.params).model_dump()
    if args.command == "transfer":
        variants = transfer_variants(args.encoders, args.inits)
        return plan_transfer(args.section, variants, args.seeds, common, params, args.prefix)
    variants = args.variants if args.command == "run" else [RECIPE]
    return plan(variants, args.seeds, common, params, args.prefix)


if __name__ == "__main__":
    cli.run(main)
