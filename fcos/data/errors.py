"""`DataError` and `DataReport`: one line per annotation problem, counted, with a strict mode."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from ..errors import InputError

log = logging.getLogger("fcos.data")


class DataError(InputError):
    """Bad input data: the message is one line naming the file and the problem.

    Raised in a DataLoader worker, it reaches the main process rebuilt from "Caught DataError in DataLoader
    worker ...", the worker's traceback and, last, "...DataError: <line>": only that line is kept."""

    def __init__(self, message: str = ""):
        if message.startswith("Caught DataError"):
            message = message.rstrip().splitlines()[-1].partition("DataError: ")[2]
        super().__init__(message)


@dataclass
class DataReport:
    """Problems found while reading a dataset. In strict mode the first one raises `DataError`."""

    strict: bool = False
    counts: Counter = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)

    def problem(self, kind: str, file: object, message: str) -> None:
        line = f"{file}: {message}"
        if self.strict:
            raise DataError(line)
        self.counts[kind] += 1
        self.lines.append(line)
        log.warning(line)

    @property
    def ok(self) -> bool:
        return not self.counts

    def summary(self) -> str:
        if self.ok:
            return "no annotation problems"
        return "annotation problems: " + ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
