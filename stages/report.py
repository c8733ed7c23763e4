"""Write the comparison report: report/index.html, report/README.md and report/report.ipynb."""

import argparse
from pathlib import Path

from petseg import cli, config, tracking
from petseg.report import ReportPaths, build_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--summary", type=Path, required=True, help="metrics/summary.json")
    parser.add_argument("--test-metrics", type=Path, required=True, help="folder, <arch>.json")
    parser.add_argument("--train-metrics", type=Path, required=True, help="folder, <arch>.json")
    parser.add_argument("--train-plots", type=Path, required=True, help="folder, <arch>.csv")
    parser.add_argument("--eval-plots", type=Path, required=True, help="folder of evaluate CSVs")
    parser.add_argument("--predictions", type=Path, required=True, help="folder of grid PNGs")
    parser.add_argument("--manifest", type=Path, required=True, help="prepared manifest.json")
    parser.add_argument(
        "--experiments", type=Path, help="regularization runs CSV; absent = none were run"
    )
    parser.add_argument("--seeds", type=Path, help="make compare: plots/seeds.csv")
    parser.add_argument("--seed-diffs", type=Path, help="make compare: plots/seed_diffs.csv")
    parser.add_argument("--transfer", type=Path, help="make transfer: plots/transfer.csv")
    parser.add_argument("--out", type=Path, required=True, help="report folder (replaced)")
    args = parser.parse_args()

    index = build_report(
        ReportPaths(
            summary=args.summary,
            test_metrics=args.test_metrics,
            train_metrics=args.train_metrics,
            train_plots=args.train_plots,
            eval_plots=args.eval_plots,
            predictions=args.predictions,
            manifest=args.manifest,
            out=args.out,
            experiments=args.experiments,
            seeds=args.seeds,
            seed_diffs=args.seed_diffs,
            transfer=args.transfer,
            params=args.params,
        ),
        data=config.load_section(args.params, "data"),
        preprocess=config.load_section(args.params, "preprocess"),
        train=config.load_section(args.params, "train"),
        models=config.load_section(args.params, "models"),
    )
    print(
        f"report: {index} (self-contained), {args.out / 'README.md'} and "
        f"{args.out / 'report.ipynb'}"
    )
    # Into the MLflow run that groups this pipeline execution (tracking.* is no DVC dep).
    parent = tracking.publish_report(
        config.load_section(args.params, "tracking"),
        {"report": args.out, "metrics": args.summary, "predictions": args.predictions},
    )
    if parent:
        print(f"report: logged to MLflow run {parent}")


if __name__ == "__main__":
    cli.run(main)
