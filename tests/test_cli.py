"""The command line: help, demo, bench, config, and clean errors."""

import subprocess
import sys

import pytest


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fp8fast", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help_explains_the_commands():
    r = run("--help")
    assert r.returncode == 0
    for word in ("demo", "bench", "config", "FP8FAST_ISA", "FP8FAST_NUM_THREADS"):
        assert word in r.stdout


def test_demo_checks_its_results():
    r = run("demo", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout
    assert "Traceback" not in r.stderr


def test_bench_prints_a_table_of_every_conversion():
    r = run("bench", "-n", "65536", "--repeat", "1")
    assert r.returncode == 0, r.stderr
    for name in ("f32->e4m3", "f32->e5m2 sat", "bf16->e4m3", "f16->e5m2", "e4m3->f32",
                 "e5m2->f32", "e4m3->bf16", "ml_dtypes", "copyto"):
        assert name in r.stdout


@pytest.mark.parametrize("args", [["bench", "-n", "0"], ["bench", "-n", "lots"], ["frobnicate"]])
def test_bad_arguments_give_usage_not_traceback(args):
    r = run(*args)
    assert r.returncode == 2
    assert "usage:" in r.stderr and "Traceback" not in r.stderr


def test_no_command_prints_help():
    r = run()
    assert r.returncode == 2 and "usage:" in r.stdout


def test_config_names_the_isa():
    r = run("config")
    assert r.returncode == 0 and "isa:" in r.stdout
