"""Training callbacks of your own, added without editing the project: FCOS_EXP_CALLBACKS="module:factory"
(several separated by commas) names factories, each returning a `fcos.callbacks.Callback` or a list of them,
which the train stage and every tuning trial add to theirs (e.g. a logger to another tracking service, or
the tests' pause at a chosen step)."""
from __future__ import annotations

import importlib
import os

from fcos.callbacks import Callback

from .errors import UserError

ENV = "FCOS_EXP_CALLBACKS"


def extra_callbacks() -> list[Callback]:
    """The callbacks the factories named by FCOS_EXP_CALLBACKS return (none when it is unset)."""
    found: list[Callback] = []
    for spec in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(","))):
        module, _, name = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise UserError(f"{ENV}: {spec!r} is not an importable module:factory ({e})") from None
        except Exception as e:   # the user's module fails on import (a SyntaxError, its own error): theirs to fix
            raise UserError(f"{ENV}: importing {module} raised {type(e).__name__}: {_first_line(e)}") from e
        try:
            made = factory()
        except Exception as e:   # not callable, wants arguments, fails: the factory's problem, not fcos-exp's
            raise UserError(f"{ENV}: calling {spec} raised {type(e).__name__}: {_first_line(e)}") from e
        made = made if isinstance(made, (list, tuple)) else [made]
        if not all(isinstance(c, Callback) for c in made):
            raise UserError(f"{ENV}: {spec} returned {made!r}, not fcos.callbacks.Callback objects")
        found += made
    return found


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:200]
