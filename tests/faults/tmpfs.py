"""Run stages of a project whose ``data/`` is a tiny tmpfs: a disk that really fills up.

Run as ``unshare -rm python tmpfs.py PROJECT PLAN REPORT``: the private mount namespace makes
the mount visible to this process and its children only, and lets a test mount without
privileges; the tmpfs (and what the stages left on it) vanishes when this process ends, so the
state after each step is recorded in REPORT (JSON). PLAN (JSON): ``size`` of the tmpfs, ``links``
(project path -> target outside it, e.g. the input data) and ``steps``, each a ``stage`` to run
after an optional ``resize``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder
from faults.harness import command, group_members, stage_env  # noqa: E402


def files_on(folder: Path) -> list[str]:
    """Every entry under ``folder``, links not followed (the input data stays off the disk)."""
    found = []
    for top, dirs, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(top, n), folder) for n in dirs + names]
    return sorted(found)


def main(project: Path, plan: dict, report: Path) -> None:
    data = project / "data"
    data.mkdir(exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={plan['size']}", "petseg-test", str(data)]
    subprocess.run(mount, check=True)
    for link, target in plan["links"].items():
        (project / link).symlink_to(target)
    steps = []
    for step in plan["steps"]:
        if "resize" in step:
            remount = ["mount", "-o", f"remount,size={step['resize']}", str(data)]
            subprocess.run(remount, check=True)
        proc = subprocess.Popen(
            command(step["stage"]),
            cwd=project,
            env=stage_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        _, stderr = proc.communicate(timeout=300)
        steps.append(
            {
                "rc": proc.returncode,
                "stderr": stderr,
                "files": files_on(data),
                "used": shutil.disk_usage(data).used,
                "orphans": len(group_members(proc.pid)),
            }
        )
    report.write_text(json.dumps(steps))


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3]))
