"""Stage ``download``: write the dataset chosen by ``data.source`` into the official layout.

    python stages/download.py --params params.yaml --out data/raw --archives data/archives

Reads only the ``data`` section of params.yaml; see :mod:`petseg.data.download`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petseg.cli import run
from petseg.config import load_section
from petseg.data.download import download


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="the layout (DVC out)")
    parser.add_argument(
        "--archives",
        type=Path,
        default=Path("data/archives"),
        help="download cache of the official archives, kept between runs (not a DVC out)",
    )
    args = parser.parse_args()
    download(load_section(args.params, "data"), args.out, args.archives)


if __name__ == "__main__":
    run(main)
