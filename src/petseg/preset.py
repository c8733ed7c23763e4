"""Presets: files of dotted-key overrides of params.yaml (``presets/real.yaml``).

``python -m petseg.preset presets/real.yaml --exp-run [-n NAME ...]`` is what ``make real`` runs:
the overrides, validated by :mod:`petseg.config`, become ``dvc exp run -S key=value ...`` (any
further arguments go to ``dvc exp run``), so the run is a DVC experiment beside the committed
baseline. Without ``--exp-run`` the preset is written into params.yaml instead, keeping its
comments (atomically, after validation): the scripted equivalent of editing the file.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from petseg import cli, config
from petseg.errors import ParamsError
from petseg.fileio import atomic_write_bytes


def _set(doc: Any, dotted: str, value: Any, source: str) -> bool:
    """Set ``doc[a][b][c] = value`` for ``dotted == "a.b.c"``; return whether it changed."""
    *parents, leaf = dotted.split(".")
    node = doc
    for i, part in enumerate(parents):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parents[: i + 1])
            raise ParamsError(f"{source}: {dotted}: params.yaml has no section {where}")
        node = node[part]
    if not isinstance(node, dict) or leaf not in node:
        raise ParamsError(f"{source}: {dotted}: params.yaml has no key {dotted}")
    if node[leaf] == value:
        return False
    node[leaf] = value
    return True


def read_preset(path: str | Path) -> dict[str, Any]:
    """The overrides in preset file ``path``: a mapping of dotted params keys to values."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: preset file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of dotted keys to values")
    return data


def apply_preset(preset: str | Path, params: str | Path = "params.yaml") -> list[str]:
    """Apply ``preset`` to ``params``; return the dotted keys that changed."""
    preset, params = Path(preset), Path(params)
    overrides = read_preset(preset)
    rt = YAML()  # round-trip mode keeps comments and key order
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    try:
        doc = rt.load(params.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{params}: params file not found") from None
    changed = [key for key, value in overrides.items() if _set(doc, key, value, str(preset))]
    buf = io.StringIO()
    rt.dump(doc, buf)
    text = buf.getvalue()
    config.validate(yaml.safe_load(text), f"{params} with {preset} applied")
    if changed:
        atomic_write_bytes(params, text.encode())
    return changed


def _overlaid(preset: Path, params: Path) -> tuple[dict[str, Any], config.Params]:
    overrides = read_preset(preset)
    try:
        current = yaml.safe_load(params.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{params}: params file not found") from None
    for key, value in overrides.items():
        _set(current, key, value, str(preset))
    return overrides, config.validate(current, f"{params} with {preset} applied")


def applied(preset: str | Path, params: str | Path = "params.yaml") -> config.Params:
    """``params`` with ``preset`` applied, validated; nothing is written."""
    return _overlaid(Path(preset), Path(params))[1]


def exp_run_args(preset: str | Path, params: str | Path = "params.yaml") -> list[str]:
    """``dvc exp run`` arguments that set every override of ``preset`` (validated first)."""
    overrides, _ = _overlaid(Path(preset), Path(params))
    # DVC parses each value as YAML: flow style keeps lists and strings intact in one argument.
    args = ["dvc", "exp", "run"]
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
        args += ["-S", f"{key}={text}"]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--exp-run", action="store_true", help="run it as a DVC experiment (dvc exp run -S ...)"
    )
    args, rest = parser.parse_known_args()
    if args.exp_run:
        cmd = [*exp_run_args(args.preset, args.params), *rest]
        print("$ " + shlex.join(cmd), flush=True)
        os.execvp(cmd[0], cmd)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    changed = apply_preset(args.preset, args.params)
    print(f"{args.params}: " + (f"set {', '.join(changed)}" if changed else "already up to date"))


if __name__ == "__main__":
    cli.run(main)
