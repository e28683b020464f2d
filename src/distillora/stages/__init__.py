"""The study's stages and their registry.

Each stage module registers a planner: `plan(cfg, resolved, depth) -> [Stage]`. A `Stage` declares
its name, kind, config section, what it consumes, what enters its fingerprint, and how it trains and
saves; `distillora.study` runs the planned stages in a loop. The interface and the registry live in
`stages.base` (which the stage modules import, so the package imports each module once and no module
imports the package back). Adding a stage: a module here with a `@register` planner, imported below
(the order of those imports is the order the stages run in)."""

from .base import (TEACHER, TEACHER_OUTPUTS, Kind, Stage, StageContext, StageEnv, load_model, plan,  # noqa: F401
                   register)
from . import teacher, distill, lora, baseline  # noqa: E402,F401  (registration, in running order)
