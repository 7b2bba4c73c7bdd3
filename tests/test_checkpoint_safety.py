"""Checkpoint conversions never destroy their source nor silently pick the wrong tensor:
a destination that is, contains or lies inside the source (however either is spelled) is
refused; a tensor name in two shards is refused; ``--force`` replaces an existing destination
so that a kill leaves a whole tree; and a Ctrl-C message is true whenever it arrives."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from ckpt_fixtures import model_tensors, write_model_dir, write_raw
from fp8fast import _checkpoint
from fp8fast.cli import main

SHARD = "model-00001-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


def tree_hash(path) -> dict:
    """Every file under ``path`` (links followed) with the hash of its bytes."""
    out = {}
    for root, _, files in os.walk(path, followlinks=True):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def leftovers(path) -> list:
    """Temporary or aside names anywhere under ``path``."""
    return [os.path.join(r, n) for r, ds, fs in os.walk(path) for n in ds + fs if ".fp8fast-" in n]


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """A bf16 model directory and its FP8 quantization, copied by each test."""
    base = tmp_path_factory.mktemp("templates")
    write_model_dir(str(base / "bf16"), model_tensors(layers=1))
    _checkpoint.quantize(str(base / "bf16"), str(base / "fp8"), quiet=True)
    return base


CONVERT = {
    "quantize": ("bf16", lambda s, d: _checkpoint.quantize(s, d, force=True, quiet=True)),
    "dequantize": ("fp8", lambda s, d: _checkpoint.dequantize(s, d, force=True, quiet=True)),
}

# How SRC names the model in tmp/p/m; "dir-like" spellings make a directory conversion, the
# shard spellings a single-file one (their links keep the shard's file name).
DIR_SPELLINGS = {
    "dir": "p/m",
    "dir-slash": "p/m/",
    "index": f"p/m/{INDEX}",
    "symlink-dir": "ln-dir",
    "symlink-index": "ln-index.json",
    "dotdot": "p/m/../m",
    "relative": "REL:p/m",
}
SHARD_SPELLINGS = {
    "shard": f"p/m/{SHARD}",
    "symlink-shard": f"links/{SHARD}",
    "hardlink-shard": f"hard/{SHARD}",
}
# DST naming the same object as SRC, or a file SRC reads.
SAME_DST = {
    "dir": "p/m",
    "symlink-dir": "ln-dir",
    "dotdot": "p/q/../m",
    "relative": "REL:p/m",
    "shard": f"p/m/{SHARD}",
    "hardlink-shard": f"hard/{SHARD}",
    "index": f"p/m/{INDEX}",
}
INSIDE_DST = {"plain": "p/m/inner", "symlink": "ln-dir/inner", "dotdot": "p/m/../m/inner", "relative": "REL:p/m/inner"}
PARENT_DST = {"plain": "p", "symlink": "ln-p", "dotdot": "p/m/..", "relative": "REL:p"}


def make_layout(tmp_path, template):
    """tmp/p/m (the model) plus every link the spellings use."""
    m = tmp_path / "p" / "m"
    shutil.copytree(template, m)
    (tmp_path / "p" / "q").mkdir()
    os.symlink(m, tmp_path / "ln-dir")
    os.symlink(tmp_path / "p", tmp_path / "ln-p")
    os.symlink(m / INDEX, tmp_path / "ln-index.json")
    (tmp_path / "links").mkdir()
    os.symlink(m / SHARD, tmp_path / "links" / SHARD)
    (tmp_path / "hard").mkdir()
    os.link(m / SHARD, tmp_path / "hard" / SHARD)
    return m


def spelled(tmp_path, spelling):
    if spelling.startswith("REL:"):
        return spelling[4:]  # relative to tmp_path, the working directory of the test
    return str(tmp_path / spelling) + ("/" if spelling.endswith("/") else "")


def destinations(src_kind):
    """The DST spellings overlapping the source named by ``src_kind``, as (relation, spelling)."""
    if src_kind in SHARD_SPELLINGS:
        # A single file's destination inside or around its folder is a legitimate new file; the
        # same file (through the folder, a link or a hard link) is not.
        return [("same", SAME_DST[k]) for k in ("dir", "symlink-dir", "dotdot", "relative", "shard",
                                                "hardlink-shard")]
    return ([("same", v) for v in SAME_DST.values()] + [("inside", v) for v in INSIDE_DST.values()]
            + [("parent", v) for v in PARENT_DST.values()])


@pytest.fixture(scope="module")
def layouts(templates, tmp_path_factory):
    """One layout per command, shared by the refusal cases: each checks it is left unchanged."""
    out = {}
    for command, (template, _) in CONVERT.items():
        base = tmp_path_factory.mktemp(command)
        make_layout(base, templates / template)
        out[command] = base, tree_hash(base / "p"), tree_hash(templates / template)
    return out


@pytest.mark.parametrize("command", sorted(CONVERT))
@pytest.mark.parametrize("src_kind", [*DIR_SPELLINGS, *SHARD_SPELLINGS])
def test_a_destination_overlapping_the_source_is_refused(monkeypatch, layouts, command, src_kind):
    base, before, model = layouts[command]
    monkeypatch.chdir(base)
    src = spelled(base, {**DIR_SPELLINGS, **SHARD_SPELLINGS}[src_kind])
    for relation, spelling in destinations(src_kind):
        dst = spelled(base, spelling)
        case = f"{command} {src} {dst} --force ({relation})"
        with pytest.raises(ValueError, match="source"):
            CONVERT[command][1](src, dst)
            pytest.fail(f"not refused: {case}")
        assert tree_hash(base / "p") == before, case
        assert tree_hash(base / "p" / "m") == model, case
        assert leftovers(base) == [], case


@pytest.mark.parametrize("argv", [
    ["quantize", "m/" + INDEX, "m", "--force"],
    ["quantize", "m/" + INDEX, "m/inner"],
    ["quantize", "p/m", "p", "--force"],
    ["dequantize", "q/" + INDEX, "q", "--force"],
    ["dequantize", "p/q", "p", "--force"],
])
def test_the_reported_commands_are_one_line_errors(tmp_path, monkeypatch, capsys, templates, argv):
    shutil.copytree(templates / "bf16", tmp_path / "m")
    shutil.copytree(templates / "fp8", tmp_path / "q")
    shutil.copytree(templates / "bf16", tmp_path / "p" / "m")
    shutil.copytree(templates / "fp8", tmp_path / "p" / "q")
    before = tree_hash(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = main(argv + ["-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("fp8fast: error: destination") and err.count("\n") == 1, err
    assert tree_hash(tmp_path) == before
    assert leftovers(tmp_path) == []


def test_a_hard_linked_destination_file_is_the_source(tmp_path, templates):
    # A lone file: DST a hard link to it (different path, same inode) is refused too.
    src = tmp_path / "one.safetensors"
    shutil.copy(templates / "bf16" / SHARD, src)
    os.link(src, tmp_path / "alias.safetensors")
    before = tree_hash(tmp_path)
    with pytest.raises(ValueError, match="same file"):
        _checkpoint.quantize(str(src), str(tmp_path / "alias.safetensors"), force=True)
    assert tree_hash(tmp_path) == before


def test_a_single_file_may_be_written_beside_itself(tmp_path, templates):
    # Not an overlap: a new file in the source's folder, or the folder above.
    m = make_layout(tmp_path, templates / "bf16")
    _checkpoint.quantize(str(m / SHARD), str(m / "out.safetensors"), quiet=True)
    _checkpoint.quantize(str(m / SHARD), str(tmp_path / "p"), quiet=True)
    assert (tmp_path / "p" / SHARD).is_file() and (m / "out.safetensors").is_file()


def test_an_index_linked_from_elsewhere_reads_the_shards_it_names(tmp_path, templates):
    # A link to an index whose shards are not beside the link: the index's own folder is the
    # checkpoint (not the folder holding the link, which holds other files).
    m = make_layout(tmp_path, templates / "bf16")
    write_raw(str(tmp_path / "stray.safetensors"), {"x.weight": model_tensors(layers=1)["lm_head.weight"]})
    _checkpoint.quantize(str(tmp_path / "ln-index.json"), str(tmp_path / "out"), quiet=True)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.listdir(m))


# ---------------------------------------------------------------------------------------------
# Duplicate tensor names across shards.


def duplicated(tmp_path, with_index):
    """Two shards both holding q_proj.weight; the index (if any) gives it to shard 1, whose
    copy is 100x smaller than the other."""
    t = model_tensors(layers=1)
    q = "model.layers.0.self_attn.q_proj.weight"
    m = tmp_path / "dup"
    write_model_dir(str(m), t)
    wm = json.loads((m / INDEX).read_text())["weight_map"]
    owner = wm[q]
    other = next(s for s in sorted(set(wm.values())) if s != owner)
    rest = {n: t[n] for n, s in wm.items() if s == other}
    write_raw(str(m / other), {**rest, q: (t[q].astype("float32") * 100).astype(t[q].dtype)}, {"format": "pt"})
    if not with_index:
        os.remove(m / INDEX)
    return m, q, owner, other


@pytest.mark.parametrize("with_index", [True, False], ids=["index", "no-index"])
@pytest.mark.parametrize("command", ["quantize", "dequantize", "inspect"])
def test_a_tensor_in_two_shards_is_refused(tmp_path, capsys, command, with_index):
    m, q, owner, other = duplicated(tmp_path, with_index)
    before = tree_hash(m)
    argv = [command, str(m)] + ([] if command == "inspect" else [str(tmp_path / "out"), "-q"])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("fp8fast: error:") and err.count("\n") == 1, err
    # The error names the file holding the extra copy, the tensor, and the owning shard.
    first, second = (other, owner) if with_index else (sorted([owner, other])[1], sorted([owner, other])[0])
    assert str(m / first) in err and repr(q) in err and second in err.replace(str(m / first), ""), err
    assert tree_hash(m) == before and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# --force over an existing destination, killed in each window of the commit.

STEPS = ("before-aside", "aside", "replaced", "done")


@pytest.fixture(scope="module")
def old_and_new(templates, tmp_path_factory):
    """An old DST (per-tensor quantization) and the tree a per-channel run makes."""
    base = tmp_path_factory.mktemp("force")
    _checkpoint.quantize(str(templates / "bf16"), str(base / "old"), granularity="tensor", quiet=True)
    _checkpoint.quantize(str(templates / "bf16"), str(base / "new"), quiet=True)
    return tree_hash(base / "old"), tree_hash(base / "new"), base


def run_until(argv, step, cwd, env_extra):
    """Run the command line until it announces commit step ``step``, then SIGKILL it."""
    env = dict(os.environ, FP8FAST_TEST_COMMIT_PAUSE=step, **env_extra)
    p = subprocess.Popen([sys.executable, "-m", "fp8fast", *argv], cwd=cwd, env=env,
                         stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in p.stderr:
            lines.append(line)
            if line.strip() == f"fp8fast-test: commit step {step}":
                break
    finally:
        p.kill()
        p.wait(timeout=30)
        p.stderr.close()
    assert lines and lines[-1].strip().endswith(step), "".join(lines)
    return "".join(lines)


@pytest.mark.parametrize("step", STEPS)
def test_force_killed_during_the_commit_leaves_a_whole_tree(tmp_path, templates, old_and_new, step):
    old, new, base = old_and_new
    shutil.copytree(templates / "bf16", tmp_path / "m")
    shutil.copytree(base / "old", tmp_path / "dst")
    err = run_until(["quantize", "m", "dst", "--force"], step, tmp_path, {})
    asides = [n for n in os.listdir(tmp_path) if ".fp8fast-old-" in n]
    temps = [n for n in os.listdir(tmp_path) if ".fp8fast-tmp-" in n]
    assert len(asides) <= 1 and len(temps) <= 1
    if asides:
        assert f"the old one is kept as {tmp_path / asides[0]}" in err  # its name was printed
        assert tree_hash(tmp_path / asides[0]) == old
    dst = tree_hash(tmp_path / "dst") if (tmp_path / "dst").exists() else None
    # step announced -> (DST, an aside copy left, the new tree left under its temporary name)
    expected = {"before-aside": (old, False, True), "aside": (None, True, True),
                "replaced": (new, True, False), "done": (new, False, False)}[step]
    assert (dst, bool(asides), bool(temps)) == expected
    if temps:
        assert tree_hash(tmp_path / temps[0]) == new  # the complete new output, not yet in place


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_force_replaces_a_file_or_a_link_not_its_target(tmp_path, templates, old_and_new, kind):
    _, new, _ = old_and_new
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    dst = tmp_path / "dst"
    if kind == "file":
        dst.write_text("old")
    else:
        os.symlink(target, dst)
    _checkpoint.quantize(str(templates / "bf16"), str(dst), force=True, quiet=True)
    assert tree_hash(dst) == new and not dst.is_symlink()
    assert target.read_text() == "keep me"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Ctrl-C reports what is at DST, whenever it arrives.

# Runs the command line with a patched step that sends this process SIGINT just before or
# just after it, as a Ctrl-C at that moment would.
SIGINT_AT = textwrap.dedent("""
    import os, signal, sys
    from fp8fast import _checkpoint, _core, cli
    where, when = sys.argv[1], sys.argv[2]
    calls = [0]

    def patched(real, nth=1):
        def step(*a, **k):
            calls[0] += 1
            if when == "before" and calls[0] == nth:
                os.kill(os.getpid(), signal.SIGINT)
            r = real(*a, **k)
            if when == "after" and calls[0] == nth:
                os.kill(os.getpid(), signal.SIGINT)
            return r
        return step

    if where == "file":
        _core.quantize_file = patched(_core.quantize_file)
        _core.dequantize_file = patched(_core.dequantize_file)
    elif where == "commit":
        real_rename = os.rename
        def rename(a, b):
            r = real_rename(a, b)
            if not os.path.basename(str(b)).startswith("."):
                os.kill(os.getpid(), signal.SIGINT)
            return r
        os.rename = rename
    sys.exit(cli.main(sys.argv[3:]))
""")


def interrupted_run(tmp_path, where, when, *argv, command="quantize"):
    r = subprocess.run([sys.executable, "-c", SIGINT_AT, where, when, command, *argv, "-q"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stderr


@pytest.mark.parametrize("command", sorted(CONVERT))
def test_ctrl_c_after_a_single_file_is_renamed_says_it_is_complete(tmp_path, templates, command):
    template, convert = CONVERT[command]
    shutil.copy(templates / template / SHARD, tmp_path / "in.safetensors")
    convert(str(tmp_path / "in.safetensors"), str(tmp_path / "ref.safetensors"))
    code, err = interrupted_run(tmp_path, "file", "after", "in.safetensors", "out.safetensors", command=command)
    assert code == 130 and err == "fp8fast: error: interrupted after the conversion had finished: " \
                                  "out.safetensors is complete\n", err
    assert (tmp_path / "out.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    code, err = interrupted_run(tmp_path, "file", "before", "in.safetensors", "out2.safetensors", command=command)
    assert code == 130 and err == "fp8fast: error: interrupted; nothing was written to the destination\n", err
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors", "out.safetensors", "ref.safetensors"]


@pytest.mark.parametrize("force", [False, True])
def test_ctrl_c_during_a_directory_commit_says_it_is_complete(tmp_path, templates, old_and_new, force):
    _, new, base = old_and_new
    shutil.copytree(templates / "bf16", tmp_path / "m")
    if force:
        shutil.copytree(base / "old", tmp_path / "out")
    code, err = interrupted_run(tmp_path, "commit", "after", "m", "out", *(["--force"] if force else []))
    assert code == 130 and err.endswith("fp8fast: error: interrupted after the conversion had finished: "
                                        "out is complete\n"), err
    assert tree_hash(tmp_path / "out") == new
    assert sorted(os.listdir(tmp_path)) == ["m", "out"]


def test_ctrl_c_between_shard_jobs_files_lists_what_was_written(tmp_path, templates):
    shutil.copytree(templates / "bf16", tmp_path / "m")
    code, err = interrupted_run(tmp_path, "file", "after", "m", "out", "--shard", "1/1")
    assert code == 130 and err.startswith("fp8fast: error: interrupted; 1 file(s) of this job were "
                                          f"written to out, whole ({SHARD})"), err
    assert os.listdir(tmp_path / "out") == [SHARD]
    code, err = interrupted_run(tmp_path, "file", "before", "m", "out2", "--shard", "1/1")
    assert code == 130 and err == "fp8fast: error: interrupted; nothing was written to the destination\n", err
    assert os.listdir(tmp_path / "out2") == []


@pytest.mark.parametrize("outcome", ["success", "error", "single-file"])
def test_the_sigint_handler_is_restored(tmp_path, monkeypatch, templates, outcome):
    from fp8fast import _core, _interrupt

    src = templates / "bf16"
    if outcome == "error":
        def failing(*a, **k):
            raise ValueError("disk on fire")
        monkeypatch.setattr(_core, "quantize_file", failing)
        with pytest.raises(ValueError, match="disk on fire"):
            _checkpoint.quantize(str(src), str(tmp_path / "out"), quiet=True)
    else:
        if outcome == "single-file":
            src = src / SHARD
        _checkpoint.quantize(str(src), str(tmp_path / "out"), quiet=True)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert _interrupt._active is None
    assert leftovers(tmp_path) == []


def test_a_single_file_never_replaces_a_directory(tmp_path, templates):
    # DST a folder: the file goes inside it; a folder of that name there is an error, untouched.
    shutil.copy(templates / "bf16" / SHARD, tmp_path / "in.safetensors")
    (tmp_path / "out" / "in.safetensors" / "keep").mkdir(parents=True)
    with pytest.raises(OSError, match="rename"):
        _checkpoint.quantize(str(tmp_path / "in.safetensors"), str(tmp_path / "out"), force=True, quiet=True)
    assert os.listdir(tmp_path / "out" / "in.safetensors") == ["keep"]
    assert leftovers(tmp_path) == []


def test_an_aside_copy_left_by_a_killed_run_is_never_deleted(tmp_path, templates, old_and_new):
    old, _, base = old_and_new
    shutil.copytree(base / "old", tmp_path / "dst")
    aside = tmp_path / f".dst.fp8fast-old-{os.getpid()}"  # as a killed run with this id left it
    shutil.copytree(base / "old", aside)
    with pytest.raises(FileExistsError, match="move it away"):
        _checkpoint.quantize(str(templates / "bf16"), str(tmp_path / "dst"), force=True, quiet=True)
    assert tree_hash(tmp_path / "dst") == old and tree_hash(aside) == old
    assert sorted(os.listdir(tmp_path)) == sorted(["dst", aside.name])


def test_an_old_copy_that_cannot_be_deleted_is_a_warning_not_a_failure(tmp_path, templates, old_and_new,
                                                                      monkeypatch, capsys):
    # Once the new output is at DST the conversion has succeeded: failing to delete the old
    # copy must not report an error (nor leave the gate saying nothing was written).
    from fp8fast import _commit

    _, new, base = old_and_new
    shutil.copytree(base / "old", tmp_path / "dst")

    def refuse(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(_commit, "_remove", refuse)
    assert main(["quantize", str(templates / "bf16"), str(tmp_path / "dst"), "--force", "-q"]) == 0
    err = capsys.readouterr().err
    aside = tmp_path / f".dst.fp8fast-old-{os.getpid()}"
    assert tree_hash(tmp_path / "dst") == new
    assert f"fp8fast: warning: {tmp_path / 'dst'} is in place" in err and str(aside) in err
    assert "error" not in err
