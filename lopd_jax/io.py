"""One I/O layer for paths: local directories and object stores (`gs://`, `s3://`) alike.

`path(p)` turns a user's path into an `etils.epath.Path` (the path type orbax takes too):
local paths made absolute, object-store URLs kept as they are. Reading, listing and streaming
are its methods, the same for both: `read_text`, `exists`, `is_dir`, `is_file`, `glob`,
`open("rb")`. Object stores need their backend installed: gcsfs for epath's `gs://`, and for
orbax checkpoints on `gs://` also google-cloud-storage (launch/requirements-tpu.txt).

Writes that readers must see whole go through `atomic_write_text`. Writers that need a local
file system (an appended JSONL, tensorboardX, HF `save_pretrained`) write into a
`LocalMirror` and push it; readers that need one (HF `from_pretrained`) read a `local_copy`.

Rollout stores are not opened here: they are TensorStore kvstores, which take any TensorStore
URL (`gs://`, `file://`, `memory://`) directly, so stages pass store paths on unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from etils import epath

from lopd_jax.errors import LopdError

PathLike = str | os.PathLike
OBJECT_STORES = ("gs", "s3", "az")  # epath's URL schemes (fsspec or tf.io.gfile backends)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class PathError(LopdError, ValueError):
    """A path that the I/O layer cannot reach (an unsupported URL scheme)."""


def is_remote(p: PathLike) -> bool:
    """Whether `p` is a URL (`gs://bucket/...`) rather than a local path."""
    return _SCHEME.match(os.fspath(p)) is not None


def path(p: PathLike) -> epath.Path:
    """`p` as an epath: a local path made absolute (`os.path.abspath`, as epath's own
    `absolute`), an object-store URL as it is."""
    text = os.fspath(p)
    scheme = _SCHEME.match(text)
    if scheme is None:
        return epath.Path(os.path.abspath(text))
    if scheme[1] not in OBJECT_STORES:
        raise PathError(
            f"{text}: {scheme[1]}:// is not a file system lopd can read and write files on "
            f"(use a local path or one of {', '.join(s + '://' for s in OBJECT_STORES)}). "
            "TensorStore URLs such as memory:// and file:// are for rollout stores only."
        )
    return epath.Path(text)


def atomic_write_text(p: PathLike, text: str) -> None:
    """Writes `text` so that readers see the old file or the new one, never a partial one.

    Locally: a temporary file in the same directory, fsynced, then renamed over the target.
    On an object store an object becomes visible only once its upload completes (one PUT, or
    a resumable upload finalized at close), and replaces the old object whole: the write is
    atomic as it is, and there are no directories to create.
    """
    p = path(p)
    if is_remote(p):
        with p.open("w") as f:
            f.write(text)
        return
    target = Path(p)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide it from others
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def copy_file(src: PathLike, dst: PathLike) -> None:
    """Copies the file `src` to `dst`, either local or remote (remote: one object, replaced
    whole; local: not atomic)."""
    with path(src).open("rb") as f, path(dst).open("wb") as g:
        shutil.copyfileobj(f, g, 1 << 24)


class LocalMirror:
    """A local directory standing in for `directory`, for writers that need a local file
    system (appending to a file, tensorboardX, HF `save_pretrained`).

    For a local `directory` it is the directory itself and `push` does nothing. For an object
    store it is a temporary directory; `push` uploads the files changed since the last push
    (each one object, replaced whole), so the remote copy lags by up to one push, and `close`
    pushes and deletes the temporary directory.
    """

    def __init__(self, directory: PathLike):
        self.directory = path(directory)
        self.remote = is_remote(self.directory)
        if self.remote:
            self.local = Path(tempfile.mkdtemp(prefix="lopd-mirror-"))
        else:
            self.local = Path(self.directory)
            self.local.mkdir(parents=True, exist_ok=True)
        self._pushed: dict[Path, tuple[int, int]] = {}

    def push(self) -> None:
        if not self.remote:
            return
        for file in sorted(f for f in self.local.rglob("*") if f.is_file()):
            stat = file.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            if self._pushed.get(file) != stamp:
                copy_file(file, self.directory / file.relative_to(self.local).as_posix())
                self._pushed[file] = stamp

    def close(self) -> None:
        if self.remote:
            self.push()
            shutil.rmtree(self.local, ignore_errors=True)

    def __enter__(self) -> LocalMirror:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif self.remote:  # a failed write is not published
            shutil.rmtree(self.local, ignore_errors=True)


@contextlib.contextmanager
def local_copy(directory: PathLike, names: Iterable[str]) -> Iterator[Path]:
    """`directory` for readers that need a local one (HF `from_pretrained`): the directory
    itself when local; for an object store a temporary directory holding those of the files
    `names` that exist there, deleted on exit."""
    directory = path(directory)
    if not is_remote(directory):
        yield Path(directory)
        return
    with tempfile.TemporaryDirectory(prefix="lopd-copy-") as local:
        for name in names:
            if (directory / name).exists():
                copy_file(directory / name, Path(local, name))
        yield Path(local)
