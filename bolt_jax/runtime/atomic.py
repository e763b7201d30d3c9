"""Crash-safe writes, the one implementation: a reader sees the old file or the new one, never half of one.

Files are written to a temporary name in the same directory and renamed over the target (`os.replace` is atomic
on POSIX within one filesystem); a failure removes the temporary and leaves the target as it was. Directories
(model artifacts, Orbax checkpoints) are staged as `<final>.partial` and renamed when complete, on process 0 of a
multi-host run after every process has written its part.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", *, fsync: bool = False) -> Iterator[IO]:
    """Yields an open temporary file that replaces `path` when the block completes (text mode is UTF-8)."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp.")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, **({"indent": 2} | dump_kwargs))


def _sync(name: str) -> None:
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def atomic_directory(final_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Yields a staging directory `<final>.partial`; renames it to `final_dir` only if the block completes.

    A leftover `.partial` from an interrupted run is removed first. The staging path is the same on every process
    (Orbax multi-host saves need one path); process 0 does the filesystem work. An existing `final_dir` is replaced
    only with `overwrite=True` (it is moved aside first and deleted after the rename).
    """
    import jax
    final_dir = os.path.abspath(str(final_dir))
    partial = final_dir + PARTIAL_SUFFIX
    if os.path.exists(final_dir) and not overwrite:
        raise FileExistsError(f"{final_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    if jax.process_index() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(os.path.dirname(final_dir) or ".", exist_ok=True)
        os.makedirs(partial)
    _sync("bolt_atomic_dir_start")
    yield partial
    _sync("bolt_atomic_dir_end")
    if jax.process_index() == 0:
        old = None
        if os.path.exists(final_dir):
            old = final_dir + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final_dir, old)
        os.replace(partial, final_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    _sync("bolt_atomic_dir_done")
