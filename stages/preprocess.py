"""Stage ``preprocess``: data/raw (official layout) -> data/prepared (uint8 arrays + manifest.json).

Usage: python stages/preprocess.py --params params.yaml --raw data/raw --out data/prepared
Reads only the ``preprocess`` section of params.yaml (the keys dvc.yaml declares for this stage).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petseg.cli import run
from petseg.config import load_section
from petseg.data.preprocess import preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("data/prepared"))
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args()

    params = load_section(args.params, "preprocess")
    manifest = preprocess(args.raw, args.out, params, progress=not args.no_progress)
    counts = ", ".join(f"{split} {n}" for split, n in manifest["counts"].items())
    print(
        f"preprocess: {counts} images at {params.image_size}px -> {args.out} "
        f"({len(manifest['skipped'])} skipped, {len(manifest['notes'])} notes in manifest.json)"
    )


if __name__ == "__main__":
    run(main)
