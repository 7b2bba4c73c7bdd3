"""The command line: help, demo, bench, config, and clean errors."""

import json
import os
import pathlib
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


# --- clean failures before and around the command's own code (issue items 7, 9, 10) --------

def console_script(*args):
    """The argv of the installed ``fp8fast`` console script, run as its generated wrapper runs
    it: import the entry point named in the package metadata and exit with what it returns."""
    from importlib.metadata import entry_points

    eps = entry_points()
    eps = eps.select(group="console_scripts") if hasattr(eps, "select") else eps["console_scripts"]
    (ep,) = [e for e in eps if e.name == "fp8fast"]
    module, attr = ep.value.split(":")
    code = f"import sys\nfrom {module} import {attr} as main\nsys.exit(main())\n"
    return [sys.executable, "-c", code, *args]


@pytest.mark.parametrize("variable,value,accepted", [
    ("FP8FAST_ISA", "bogus", "avx2"),
    ("FP8FAST_NUM_THREADS", "0", "1 to"),
    ("FP8FAST_NUM_THREADS", "lots", "1 to"),
])
@pytest.mark.parametrize("args", [["inspect", "x.safetensors"], ["--version"], ["config"]])
def test_a_bad_environment_setting_is_one_line_on_the_command_line(variable, value, accepted, args,
                                                                  tmp_path):
    """Item 9: one line naming the variable and the accepted values, exit 2; the library itself
    still refuses to import."""
    env = {**os.environ, variable: value}
    commands = [console_script(*args)]
    if sys.version_info >= (3, 10):  # sys.orig_argv tells python -m fp8fast apart
        commands.append([sys.executable, "-X", "utf8", "-m", "fp8fast", *args])
    for argv in commands:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"fp8fast: error: {variable}={value}"), r.stderr
        assert accepted in lines[0]
    # The library, also in another program run with -m, refuses to import.
    (tmp_path / "uses_fp8fast.py").write_text("import fp8fast\n")
    for argv in ([sys.executable, "-c", "import fp8fast"], [sys.executable, "-m", "uses_fp8fast"]):
        lib = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
        assert lib.returncode == 1 and f"ImportError: fp8fast: {variable}={value}" in lib.stderr


INTERRUPT_DURING_IMPORT = """
import os, signal, sys
class InterruptAt:
    # Deliver SIGINT while module {name!r} is being imported (deterministically, where a
    # user's early Ctrl-C lands at random).
    def find_spec(self, fullname, path=None, target=None):
        if fullname == {name!r}:
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, InterruptAt())
"""


@pytest.mark.parametrize("module", ["fp8fast._core", "fp8fast._config", "fp8fast.cli",
                                    "fp8fast._checkpoint", "fp8fast._argtypes"])
def test_ctrl_c_during_the_imports_is_one_line_and_130(module, tmp_path):
    """Item 10: a Ctrl-C in the first milliseconds (while the package imports) exits 130 with
    one line, no KeyboardInterrupt traceback."""
    argv = console_script("inspect", str(tmp_path / "none.safetensors"))
    argv[2] = INTERRUPT_DURING_IMPORT.format(name=module) + argv[2]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 130, r.stderr
    assert r.stderr.splitlines() == ["fp8fast: interrupted"], r.stderr


@pytest.mark.parametrize("args,message", [
    (["quantize", "a", "b", "--jobs", "0"], "quantize: argument --jobs/-j: expected a number >= 1, got 0"),
    (["dequantize", "a", "b", "--shard", "3/2"], "dequantize: argument --shard"),
    (["quantize", "a"], "quantize: the following arguments are required: DST"),
    (["bench", "-n", "0"], "bench: argument -n"),
    (["frobnicate"], "argument COMMAND: invalid choice"),
])
def test_usage_errors_end_with_an_error_line(args, message, capsys):
    """Item 10: argparse's exit status 2, and the last line in the ``fp8fast: error:`` form,
    from the main parser and from the checkpoint commands' own one."""
    from fp8fast import cli, cli_checkpoint

    mains = [cli.main] + ([cli_checkpoint.main] if args[0] in ("quantize", "dequantize") else [])
    for main in mains:
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage:")
        last = err.splitlines()[-1]
        assert last.startswith("fp8fast: error: ") and message in last, err


def sparse_bf16_checkpoint(path, nbytes):
    """A safetensors file with one BF16 weight of ``nbytes`` bytes, written sparse (header,
    then a hole): cheap to make, read back as zeros."""
    cols = 16384
    header = json.dumps({"model.layers.0.mlp.up_proj.weight": {
        "dtype": "BF16", "shape": [nbytes // 2 // cols, cols], "data_offsets": [0, nbytes]}})
    header = header.encode() + b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + nbytes)


def limit_address_space(nbytes):
    def apply():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))
    return apply


@pytest.fixture(params=["disk", "tmpfs"])
def out_dir(request, tmp_path):
    """Where DST goes: beside the source (positional writes through a buffer), or on tmpfs
    (written through maps of the output)."""
    if request.param == "disk":
        yield tmp_path
        return
    shm = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
    if shm is None or shm.f_bavail * shm.f_frsize < 2 << 30:
        pytest.skip("no tmpfs at /dev/shm with 2 GiB free")
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        yield pathlib.Path(d)


@pytest.mark.parametrize("limit_mb,args,says", [
    # The source map (issue: "was the file truncated?").
    (400, [], "cannot map its"),
    # One scale per tensor quantizes the weight whole: the FP8 codes' 512 MiB buffer or map
    # (issue: aborted in Vec::resize). Other granularities quantize in small parts.
    (1200, ["--granularity", "tensor"], "cannot allocate 536870912 bytes"),
])
def test_quantize_under_a_memory_limit_is_one_line(tmp_path, out_dir, limit_mb, args, says):
    """Item 7: a memory limit the conversion cannot fit in gives one line naming the file, the
    tensor and the bytes, exit 1, and leaves nothing behind."""
    src, dst = tmp_path / "big.safetensors", out_dir / "o.safetensors"
    sparse_bf16_checkpoint(src, 1 << 30)
    r = subprocess.run(console_script("quantize", str(src), str(dst), "-q", *args), capture_output=True,
                       text=True, timeout=300, preexec_fn=limit_address_space(limit_mb << 20),
                       env={**os.environ, "FP8FAST_NUM_THREADS": "2"})
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fp8fast: error: ") and says in lines[0], lines[0]
    assert 'tensor "model.layers.0.mlp.up_proj.weight"' in lines[0]
    assert "truncated" not in lines[0] and "memory allocation" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]
    assert not any(out_dir.iterdir()) or out_dir == tmp_path


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
