"""The timing hook of core: a host passes any object with ``phase(label)``; nothing is timed by default."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol


class PhaseTimer(Protocol):
    """A context manager per labelled phase (``sop-perf`` supplies one that measures)."""

    def phase(self, label: str) -> AbstractContextManager[Any]: ...


class _NullTimer:
    """Times nothing."""

    def phase(self, label: str) -> AbstractContextManager[None]:
        return nullcontext()


#: the default timer everywhere in core
NULL_TIMER: PhaseTimer = _NullTimer()
