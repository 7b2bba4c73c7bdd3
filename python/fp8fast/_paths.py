"""Which files a checkpoint conversion reads and which it creates or replaces, and the check
that the two never overlap.

A source can be spelled many ways: a model directory, its index JSON, one shard file, a
symbolic link to any of them, a path through ``..``, a relative path, a hard link. Comparing
spellings as strings misses most of them, so paths are compared as file system objects: two
paths are the same file when ``os.stat`` gives the same device and inode, and a path is inside
a directory when one of its physical parents (after resolving symbolic links) is that
directory. The check runs once for every command, on the set of paths each side resolves to.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

FileId = Tuple[int, int]


def _file_id(path: str, follow_symlinks: bool = True) -> Optional[FileId]:
    """``(st_dev, st_ino)`` of what ``path`` names (after symbolic links, or of a link itself
    with ``follow_symlinks=False``), or None if it does not exist (or cannot be examined)."""
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _ancestors(path: str) -> List[Tuple[str, FileId]]:
    """The existing directories containing ``path``, each with its file id: the physical
    parents of what it names (symbolic links and ``..`` resolved) and those of where it is
    (for a symbolic link, the folder holding the link). ``path`` itself is not included."""
    out: List[Tuple[str, FileId]] = []
    trimmed = path.rstrip(os.sep) or os.sep
    starts = [os.path.dirname(os.path.realpath(trimmed)),
              os.path.realpath(os.path.dirname(trimmed) or os.curdir)]
    for here in starts:
        while True:
            fid = _file_id(here)
            if fid is not None:
                out.append((here, fid))
            parent = os.path.dirname(here)
            if parent == here:
                break
            here = parent
    return out


def _identities(path: str) -> List[FileId]:
    """The file ids ``path`` stands for: its target and, for a symbolic link, the link."""
    ids = [i for i in (_file_id(path), _file_id(path, follow_symlinks=False)) if i is not None]
    return list(dict.fromkeys(ids))


def check_disjoint(reads: Sequence[str], writes: Sequence[str], dst: str) -> None:
    """Refuse (ValueError, one line naming the paths) when a path the conversion writes or
    replaces (``writes``: the destination and the temporary names beside it) is one of the
    paths it reads (``reads``), contains one of them, or lies inside one of them.

    ``dst`` is the destination as the user spelled it, for the message."""
    read_ids: Dict[FileId, str] = {}
    for r in reads:
        for fid in _identities(r):
            read_ids.setdefault(fid, r)
    # Each folder containing something read, with one thing it contains.
    read_parents: Dict[FileId, str] = {}
    for r in reads:
        for _, fid in _ancestors(r):
            read_parents.setdefault(fid, r)
    for w in writes:
        for fid in _identities(w):
            if fid in read_ids:
                raise ValueError(
                    f"destination {dst} is the source {read_ids[fid]} (the same file): refusing to overwrite the input"
                )
        for fid in _identities(w):
            if fid in read_parents:
                raise ValueError(
                    f"destination {dst} contains the source {read_parents[fid]}: "
                    "refusing to write over (or, with --force, delete) the input"
                )
        for _, fid in _ancestors(w):
            if fid in read_ids:
                raise ValueError(f"destination {dst} is inside the source {read_ids[fid]}")


def same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name the same existing file or directory (after symbolic links)."""
    ia = _file_id(a)
    return ia is not None and ia == _file_id(b)
