"""distillora: make a text classifier smaller and faster, and say honestly what it cost."""

__version__ = "0.1.0"

from .students import build_student  # noqa: E402,F401

__all__ = ["build_student", "__version__"]
