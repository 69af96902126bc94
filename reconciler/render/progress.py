"""Rollout progress for people: a live per-service display on a terminal, one line per event elsewhere.

The executor calls a :class:`Progress` from several threads (one per rollout), so every write holds a
lock. On a terminal the block of service lines is redrawn in place (ANSI cursor movement); in CI logs
and pipes each state change is one plain line, so logs stay greppable.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from reconciler.core.rollout import Outcome

SYMBOLS: dict[str, str] = {
    "updating": "…",
    Outcome.CONVERGED: "✓",
    Outcome.UNCHANGED: "=",
    Outcome.ROLLED_BACK: "↺",
    Outcome.PAUSED: "‖",
    Outcome.SUPERSEDED: "⇄",
    Outcome.TIMED_OUT: "⌛",
    Outcome.FAILED: "✗",
    Outcome.HELD: "‖",
}
"""One symbol per rollout outcome (and for ``updating``); engine states in between show ``·``."""


class Progress:
    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self._stream = stream or sys.stderr
        self._live = self._stream.isatty() if live is None else live
        self._lock = threading.Lock()
        self._lines: dict[str, str] = {}
        self._drawn = 0
        self._started = time.monotonic()

    def __call__(self, service: str, state: str, detail: str) -> None:
        elapsed = time.monotonic() - self._started
        line = f"{SYMBOLS.get(state, '·')} {service}: {state.replace('_', ' ')} ({detail}) [{elapsed:.0f}s]"
        with self._lock:
            if not self._live:
                self._stream.write(f"rollout {line}\n")
                self._stream.flush()
                return
            self._lines[service] = line
            if self._drawn:
                self._stream.write(f"\x1b[{self._drawn}F")
            for text in self._lines.values():
                self._stream.write(f"\x1b[2K{text}\n")
            self._drawn = len(self._lines)
            self._stream.flush()
