"""Score every trained model on the test split (``python stages/evaluate.py ...``)."""

import argparse
from pathlib import Path

from petseg import cli, config, results, tracking
from petseg.evaluate import EvalPaths, evaluate_all
from petseg.models import ARCHITECTURES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--models", type=Path, required=True, help="folder with <arch>.pt")
    parser.add_argument("--train-metrics", type=Path, required=True, help="folder with <arch>.json")
    parser.add_argument("--metrics", type=Path, required=True, help="output folder, <arch>.json")
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("--scores", type=Path, required=True, help="the DVC metrics file")
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--coco", type=Path, required=True)
    args = parser.parse_args()

    summary = evaluate_all(
        config.load_section(args.params, "evaluate"),
        EvalPaths(
            prepared=args.prepared,
            raw=args.raw,
            models={a: args.models / f"{a}.pt" for a in ARCHITECTURES},
            train_metrics={a: args.train_metrics / f"{a}.json" for a in ARCHITECTURES},
            metrics_dir=args.metrics,
            summary=args.summary,
            scores=args.scores,
            plots=args.plots,
            predictions=args.predictions,
            coco=args.coco,
        ),
    )
    for arch, res in summary.architectures.items():
        print(f"{arch}: test mIoU {res.miou:.4f}, pixel accuracy {res.pixel_accuracy:.4f}")
    # Into each network's training run (tracking.* is no DVC dep: it changes no output).
    tests = {
        a: results.read(results.TestMetrics, args.metrics / f"{a}.json") for a in summary.archs
    }
    scores = {
        arch: (t.mlflow_run_id, {m: t.at(m) for m in tracking.TEST_METRICS})
        for arch, t in tests.items()
        if t.mlflow_run_id
    }
    tracking.record_test_scores(config.load_section(args.params, "tracking"), scores)


if __name__ == "__main__":
    cli.run(main)
