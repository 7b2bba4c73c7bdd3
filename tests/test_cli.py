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


def test_checkpoint_commands_do_not_import_numpy(tmp_path):
    """quantize / dequantize / inspect run in Rust: the command line must not pay for numpy's
    and ml_dtypes' import (a tenth of a second, a tenth of converting a 2 GiB file)."""
    import fp8fast
    import ml_dtypes
    import numpy as np

    src, q, back = tmp_path / "a.safetensors", tmp_path / "q.safetensors", tmp_path / "b.safetensors"
    w = np.random.default_rng(0).standard_normal((64, 48)).astype(ml_dtypes.bfloat16)
    fp8fast.save_file({"layer.weight": w}, src)
    script = (
        "import sys\n"
        "from fp8fast.cli import main\n"
        f"codes = [main(['quantize', {str(src)!r}, {str(q)!r}, '-q']),\n"
        f"         main(['dequantize', {str(q)!r}, {str(back)!r}, '-q']),\n"
        f"         main(['inspect', {str(q)!r}])]\n"
        "assert codes == [0, 0, 0], codes\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'ml_dtypes')))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert fp8fast.load_file(back)["layer.weight"].shape == (64, 48)


def test_package_exports_resolve_lazily():
    """``import fp8fast`` loads submodules on first use; every public name resolves."""
    r = subprocess.run(
        [sys.executable, "-c",
         "import sys, fp8fast\n"
         "assert 'numpy' not in sys.modules\n"
         "missing = [n for n in fp8fast.__all__ if getattr(fp8fast, n, None) is None]\n"
         "assert not missing, missing\n"
         "assert set(fp8fast.__all__) == set(fp8fast._EXPORTS) and set(fp8fast.__all__) <= set(dir(fp8fast))\n"
         "try:\n    fp8fast.no_such_name\nexcept AttributeError as e:\n    print(e)\n"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "no_such_name" in r.stdout


def test_short_v_is_an_alias_of_version():
    import fp8fast

    long, short = run("--version"), run("-V")
    assert long.returncode == short.returncode == 0
    assert long.stdout == short.stdout == f"fp8fast {fp8fast.__version__}\n"


def test_top_level_help_has_an_example_of_each_checkpoint_command():
    examples = run("--help").stdout.split("examples:", 1)[1]
    for command in ("quantize", "dequantize", "inspect"):
        assert f"fp8fast {command} " in examples


def test_dir_lists_only_the_public_api():
    import fp8fast

    fp8fast.to_e4m3  # noqa: B018  (a lazy export loaded, which brings in submodules)
    assert dir(fp8fast) == sorted([*fp8fast.__all__, "__version__"])
    for helper in ("Any", "List", "TYPE_CHECKING", "annotations", "importlib", "_core", "_codec"):
        assert helper not in dir(fp8fast)
