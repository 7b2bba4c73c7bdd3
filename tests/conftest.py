"""Shared fixtures: run a test on every instruction-set path, and restore global settings."""

import os

import fp8fast
import pytest
from fp8fast import _core

ALL_ISAS = ["scalar", "avx2", "avx512", "avx512bf16", "neon", "neon-bf16"]


def pytest_report_header(config):
    # Which fp8fast is under test (CI checks that a wheel's tests import the installed wheel).
    where = os.path.realpath(os.path.dirname(fp8fast.__file__))
    return f"fp8fast {fp8fast.__version__} imported from {where}"


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Force each ISA path in turn; a path this CPU lacks is skipped with the reason."""
    name = request.param
    if name not in _core.available_isas():
        pytest.skip(f"ISA {name} not available on this CPU (available: {_core.available_isas()})")
    saved = _core.get_isa()
    _core.set_isa(name)
    try:
        yield name
    finally:
        _core.set_isa(saved)


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    saved = fp8fast.get_num_threads()
    try:
        yield
    finally:
        fp8fast.set_num_threads(saved)
