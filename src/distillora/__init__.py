"""distillora: make a text classifier smaller and faster, and say honestly what it cost."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and editors; at run time, __getattr__ below
    from .students import build_student  # noqa: F401

__all__ = ["build_student", "__version__"]


def __getattr__(name: str):
    """`distillora.build_student`, imported on first use (PEP 562): importing the package, as the
    console script does before `hugepages` re-starts the process, must not load torch."""
    if name == "build_student":
        from .students import build_student

        return build_student
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), "build_student"})
