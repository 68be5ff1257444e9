"""xrstudy: rebuild Cherti & Jitsev (2022), pre-training scale and transfer for natural and chest X-ray images."""

from __future__ import annotations

from typing import Any

__all__ = ["RunConfig"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that `import xrstudy.cli` (the console script) loads nothing but the standard library
    # before `main` runs, where Ctrl-C is caught.
    if name == "RunConfig":
        from xrstudy.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'xrstudy' has no attribute {name!r}")
