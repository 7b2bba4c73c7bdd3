"""Ctrl-C during a checkpoint conversion, with a true account of what it left at DST.

Python's default SIGINT handler raises ``KeyboardInterrupt`` at whatever bytecode runs next,
possibly just after the step that put the output in place (a rename, done inside Rust for a
single file), where "nothing was written" would be false. While a conversion writes, SIGINT
is therefore only recorded, and the conversion stops at points where the state of DST is
known (:func:`poll`): in the progress callback Rust calls before each tensor (an exception
there abandons the file before its rename), between files, and just before the commit. An
interrupt that arrives during or after the commit is reported once the output is in place, as
an :class:`Interrupted` whose message says DST is complete.

Only the main thread receives signals, and only Python's default handler is replaced: a
conversion run from another thread, or under a handler of the caller's, keeps today's
behaviour (the caller's handler runs at each tensor).
"""

from __future__ import annotations

import signal
import threading
from typing import Any, List, Optional

NOTHING_WRITTEN = "interrupted; nothing was written to the destination"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a checkpoint conversion. ``str(e)`` says what is at the destination;
    ``complete`` is True when the output had already been put in place, whole."""

    def __init__(self, message: str, complete: bool = False) -> None:
        super().__init__(message)
        self.complete = complete


class Gate:
    """The SIGINT state of one conversion (or one command): whether Ctrl-C was pressed, and
    what the conversion has put at its destination so far."""

    def __init__(self) -> None:
        self.requested = False
        self.writing = False
        self.dst = ""
        self.shared = False
        self.complete = False
        self.written: List[str] = []
        self._previous: Any = None
        self._installed = False

    def describe(self) -> str:
        """What an interrupt now leaves at the destination, as the one-line message."""
        if self.complete and self.shared:
            return f"interrupted after this job had written all its files to {self.dst}"
        if self.complete:
            return f"interrupted after the conversion had finished: {self.dst} is complete"
        if self.written:
            return (f"interrupted; {len(self.written)} file(s) of this job were written to {self.dst}, "
                    f"whole ({', '.join(self.written)}), the others not: run the job again to finish")
        return NOTHING_WRITTEN

    def interrupted(self) -> Interrupted:
        return Interrupted(self.describe(), self.complete)

    def poll(self) -> None:
        """Raise :class:`Interrupted` if Ctrl-C was pressed."""
        if self.requested:
            raise self.interrupted()

    def wrote(self, name: str) -> None:
        """A file of a shared destination (``--shard``) is in place."""
        self.written.append(name)

    def completed(self) -> None:
        """The output is in place, whole."""
        self.complete = True

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.requested = True
        if not self.writing:
            raise self.interrupted()

    def install(self) -> bool:
        """Take over SIGINT if Python's default handler has it and this is the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return False
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        self._installed = True
        return True

    def uninstall(self) -> None:
        # signal.signal runs the handlers of signals already received first, so one that
        # arrived just before is still recorded here.
        if self._installed:
            self._installed = False
            signal.signal(signal.SIGINT, self._previous)


#: The gate of the conversion or command running in the main thread, if any.
_active: Optional[Gate] = None


def poll() -> None:
    """Raise :class:`Interrupted` if Ctrl-C was pressed during the running conversion."""
    if _active is not None and threading.current_thread() is threading.main_thread():
        _active.poll()


class Command:
    """``with Command():`` around a whole command-line command: Ctrl-C outside the writing
    region raises :class:`Interrupted` at once, with a message true at that moment (nothing
    written yet, or the output complete); conversions inside share this gate."""

    def __enter__(self) -> Gate:
        global _active
        self.gate = Gate()
        if _active is None and self.gate.install():
            _active = self.gate
        return self.gate

    def __exit__(self, *exc: Any) -> None:
        global _active
        if _active is self.gate:
            _active = None
        self.gate.uninstall()


class Writing:
    """``with Writing(dst, shared) as gate:`` around the part of a conversion that creates
    output and puts it in place. Inside, SIGINT is only recorded and :func:`poll` raises; on
    leaving without an exception, a recorded interrupt raises :class:`Interrupted` describing
    the destination (complete if :meth:`Gate.completed` was called, or, with
    ``complete_on_exit``, when the block ends without an exception)."""

    def __init__(self, dst: str, shared: bool = False, complete_on_exit: bool = False) -> None:
        self.dst, self.shared, self.complete_on_exit = dst, shared, complete_on_exit

    def __enter__(self) -> Gate:
        global _active
        self.owned = _active is None or threading.current_thread() is not threading.main_thread()
        self.gate = Gate() if self.owned else _active
        assert self.gate is not None
        if self.owned and self.gate.install():
            _active = self.gate
        g = self.gate
        g.dst, g.shared, g.complete, g.written = self.dst, self.shared, False, []
        g.writing = True
        return g

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        global _active
        g = self.gate
        if exc_type is None and self.complete_on_exit:
            g.completed()
        if self.owned:
            g.uninstall()
            if _active is g:
                _active = None
        g.writing = False
        if exc_type is None and g.requested:
            raise g.interrupted()
