"""Signal calls on the fork path, through `_signal`, the C module under the standard `signal`.

`signal`'s wrappers turn every handler and signal number they return into an enum member (and
catch a ValueError per call for a function handler). In a freshly forked child that first use
touches, and so copies, pages of the enum machinery: about half a millisecond of each child's
start, measured when children were recycled at -w 1 (docs/performance.md). The master's fork and
the child's first lines call only these; everywhere else uses `signal` as usual.
"""

from __future__ import annotations

import _signal
from collections.abc import Callable, Iterable
from typing import Any

#: the dispositions, as the C module spells them (plain ints, no enum)
SIG_DFL = _signal.SIG_DFL
SIG_IGN = _signal.SIG_IGN


def install(signum: int, handler: Callable[[int, Any], Any] | int) -> None:
    """signal.signal(), without building an enum of the old handler."""
    _signal.signal(signum, handler)


def block(signums: Iterable[int]) -> set[int]:
    """Block `signums`; the mask before, for restore()."""
    return _signal.pthread_sigmask(_signal.SIG_BLOCK, signums)


def restore(mask: Iterable[int]) -> None:
    """Set the signal mask back to `mask` (what block() returned)."""
    _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)


def no_wakeup_fd() -> None:
    """signal.set_wakeup_fd(-1): the child does not share the master's wake-up pipe."""
    _signal.set_wakeup_fd(-1)
