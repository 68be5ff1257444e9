"""xrstudy: rebuild Cherti & Jitsev (2022), pre-training scale and transfer for natural and chest X-ray images."""

from xrstudy.config import RunConfig

__all__ = ["RunConfig"]
__version__ = "0.1.0"
