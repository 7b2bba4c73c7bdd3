"""Putting a finished output directory in place of an existing destination (``--force``)
so that a kill at any moment leaves a whole tree, never a half-deleted one.

The steps, and what a SIGKILL after each leaves:

1. rename DST to ``.NAME.fp8fast-old-PID`` beside it (the name is printed first). Before this
   step: the old DST, untouched (and the complete new output under ``.NAME.fp8fast-tmp-PID``).
2. rename the new output (``.NAME.fp8fast-tmp-PID``) to DST. Between 1 and 2: no DST; the old
   one, whole, under the printed ``fp8fast-old`` name, the new one, whole, under the
   ``fp8fast-tmp`` name.
3. delete the old copy. Between 2 and 3: the new DST, whole, and the old copy beside it;
   during 3: the new DST and what remains of the old copy (partly deleted).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Callable

#: Test-only: naming a step of :func:`replace` here ("rename", "before-aside", "aside",
#: "replaced", "done") makes the process announce it on stderr (``fp8fast-test: commit step
#: NAME``) and pause there for a minute, so a test can kill it inside that window. Unset in
#: normal use; it changes nothing but timing.
TEST_PAUSE_ENV = "FP8FAST_TEST_COMMIT_PAUSE"


def aside_path(dst: str) -> str:
    """Where :func:`replace` keeps the old ``dst`` until the new one is in place."""
    full = os.path.abspath(dst)
    return os.path.join(os.path.dirname(full), f".{os.path.basename(full)}.fp8fast-old-{os.getpid()}")


def _test_pause(step: str) -> None:
    if os.environ.get(TEST_PAUSE_ENV) == step:
        print(f"fp8fast-test: commit step {step}", file=sys.stderr, flush=True)
        time.sleep(60)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def replace(new: str, dst: str, announce: bool = True, placed: Callable[[], None] = lambda: None) -> None:
    """Rename the directory ``new`` to ``dst``, replacing what is at ``dst`` (a directory, a
    file or a symbolic link, which itself is replaced, not its target) in the three steps of
    this module's description. ``announce`` prints the aside name on stderr first; ``placed``
    is called as soon as the new output is at ``dst``. Once it is, nothing raises: an old copy
    that cannot be deleted is reported as a warning naming it, since the conversion succeeded."""
    if not os.path.lexists(dst):
        _test_pause("rename")
        os.rename(new, dst)
        placed()
        return
    aside = aside_path(dst)
    if os.path.lexists(aside):  # perhaps the only copy of an old DST, left by a killed run
        raise FileExistsError(f"{aside} exists (left by an interrupted run?): move it away first")
    if announce:
        print(f"fp8fast: replacing {dst}: the old one is kept as {aside} until the new one is in place",
              file=sys.stderr, flush=True)
    _test_pause("before-aside")
    os.rename(dst, aside)
    _test_pause("aside")
    try:
        os.rename(new, dst)
    except BaseException:
        os.rename(aside, dst)
        raise
    placed()
    _test_pause("replaced")
    try:
        _remove(aside)
    except OSError as e:
        print(f"fp8fast: warning: {dst} is in place, but its old copy {aside} could not be deleted "
              f"({e}): delete it by hand", file=sys.stderr, flush=True)
    _test_pause("done")
