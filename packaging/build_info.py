"""Write the build facts the bundle reports in `llmlens --version` and Help → About.

    python packaging/build_info.py REPO_ROOT OUT.json

A frozen app has no checkout to ask, so the git revision (and whether the tree had local
changes) is read here, at build time; app/version.py reads the JSON back at run time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None  # not a checkout, or no git: the bundle says "unknown"
    return out.stdout.strip()


def build_info(root: Path) -> dict:
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    revision = _git(root, "rev-parse", "--short=12", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    if revision and dirty:
        revision += "+dirty"
    return {"version": version, "git_revision": revision,
            "built": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


if __name__ == "__main__":
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.write_text(json.dumps(build_info(root), indent=1) + "\n")
    print(f"build_info: {out.read_text().strip()}")
