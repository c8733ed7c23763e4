"""Benchmark: does the interleaved step timing of evaluate rank the networks the same whether or not
another CPU-heavy process runs beside it?

What is measured: ``petseg.evaluate.cost.time_steps`` (every network's training step and inference
batch, round-robin in one process, as ratios to the round's reference network) on freshly built
networks with params.yaml's ``models`` section, twice in one run: on the machine as it is, then
with a child process that multiplies matrices on every core for the whole measurement. Printed:
each network's median ms and ratio (with quartiles) in both conditions, the two rankings, and
whether they agree. Nothing is asserted; benchmarks/RESULTS.md keeps the figures.

Usage: python benchmarks/cost_ranking.py [--size 64] [--batch 8] [--rounds 10]
       [--params params.yaml]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

import torch

from petseg import config
from petseg.device import cpu_name, usable_cores
from petseg.evaluate.cost import STEPS, time_steps
from petseg.models import ARCHITECTURES, build_model


def _hog(stop: mp.Event) -> None:
    """A CPU-heavy neighbour: float32 matrix products on every core until told to stop."""
    torch.set_num_threads(usable_cores())
    a = torch.randn(1024, 1024)
    while not stop.is_set():
        a = (a @ a).clamp_(-1, 1)


def measure(models: dict, args: argparse.Namespace) -> dict:
    costs, setup = time_steps(
        models, batch=args.batch, image_size=args.size, rounds=args.rounds,
        device=torch.device("cpu"), bf16=True,
    )  # fmt: skip
    return {step: {a: getattr(c, step) for a, c in costs.items()} for step in STEPS}


def ranking(timings: dict) -> list[str]:
    return sorted(timings, key=lambda a: timings[a].ratio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    models_p = config.load_section(args.params, "models")
    torch.manual_seed(0)
    models = {a: build_model(a, models_p) for a in ARCHITECTURES}
    load = os.getloadavg()[0]
    print(f"cost ranking: {cpu_name()}, {usable_cores()} cores, torch {torch.__version__}, "
          f"{args.size} px, batch {args.batch}, {args.rounds} rounds; load {load:.1f}")  # fmt: skip
    quiet = measure(models, args)
    stop = mp.Event()
    hog = mp.get_context("fork").Process(target=_hog, args=(stop,), daemon=True)
    hog.start()
    time.sleep(2)  # let the neighbour reach full speed
    busy = measure(models, args)
    stop.set()
    hog.join(timeout=30)
    for step in STEPS:
        print(f"\n{step}: network  ms (as is / with a neighbour)  ratio [quartiles] as is | busy")
        for a in ARCHITECTURES:
            q, b = quiet[step][a], busy[step][a]
            spread_q = f"{q.ratio:.2f} [{q.ratio_low:.2f}-{q.ratio_high:.2f}]"
            spread_b = f"{b.ratio:.2f} [{b.ratio_low:.2f}-{b.ratio_high:.2f}]"
            print(f"  {a:12s} {q.ms:8.1f} / {b.ms:8.1f}   {spread_q} | {spread_b}")
        same = ranking(quiet[step]) == ranking(busy[step])
        print(f"  ranking as is: {' < '.join(ranking(quiet[step]))}")
        verdict = "same" if same else "DIFFERENT"
        print(f"  ranking busy:  {' < '.join(ranking(busy[step]))}  -> {verdict}")


if __name__ == "__main__":
    main()
