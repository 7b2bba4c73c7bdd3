"""Entry point of the ``fp8fast`` console script, outside the ``fp8fast`` package on purpose.

Two failures happen while the package is being imported, before any of the command line's own
code could catch them: a bad ``FP8FAST_ISA`` / ``FP8FAST_NUM_THREADS`` makes ``import fp8fast``
raise ImportError (the library's contract: it never runs with a setting other than the one
asked for), and a Ctrl-C can land in the first tens of milliseconds, during the imports. A
console script naming ``fp8fast.cli:main`` imports the package first, so both ended in a
traceback. This module imports the package inside the handlers and turns them into the command
line's one-line errors: exit 2 (a usage error) for the setting, 130 for Ctrl-C.
"""

import sys


def main() -> int:
    """Run the ``fp8fast`` command; returns its exit status."""
    try:
        from fp8fast.cli import main as run

        return run()
    except KeyboardInterrupt:
        print("fp8fast: interrupted", file=sys.stderr)
        return 130
    except ImportError as e:
        setting = getattr(e, "fp8fast_setting", None)
        if setting is None:
            raise  # a broken installation: the traceback is the useful report
        print(f"fp8fast: error: {setting}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
