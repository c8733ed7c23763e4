"""Train one architecture: ``python stages/train.py --arch unet ...`` (also under torchrun)."""

import argparse
from pathlib import Path

from petseg import cli, config, tracking
from petseg.models import ARCHITECTURES
from petseg.train import TrainPaths, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True, choices=ARCHITECTURES)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument(
        "--weights-dir", type=Path, help="where models.<arch>.weights_path must lie (a DVC dep)"
    )
    args = parser.parse_args()

    # Alone first: any failure from here on (an invalid param included) shows in MLflow.
    track = config.load_section(args.params, "tracking", whole=False)
    with tracking.failures_recorded(track, args.arch):
        models = config.load_section(args.params, "models")
        result = train(
            args.arch,
            config.load_section(args.params, "train"),
            models.of(args.arch),
            track,
            TrainPaths(
                args.prepared,
                args.model,
                args.metrics,
                args.plot,
                args.checkpoints,
                args.weights_dir,
            ),  # fmt: skip
            data_source=config.load_section(args.params, "data").source,
        )
    print(
        f"{args.arch}: best val mIoU {result.best_val_miou:.4f} at epoch {result.best_epoch}"
        f" in {result.train_seconds:.0f} s -> {args.model}"
    )


if __name__ == "__main__":
    cli.run(main)
