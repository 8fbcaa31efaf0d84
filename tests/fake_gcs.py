"""An offline `gs://`: every `gs://bucket/key` that epath or orbax touches lives under a local
directory, while the code under test sees and passes on `gs://` URLs.

- epath: `etils.epath.testing.mock_epath` replaces the backend of every scheme; each function
  maps `gs://` arguments to the local root (and listed paths back), and leaves local ones be.
- orbax: its arrays are written by TensorStore's own `gcs` driver, which epath does not reach;
  `gcs_utils.get_kvstore_for_gcs` (the one place orbax builds that spec) is redirected to the
  `file` driver, and its hierarchical-namespace probe (a google-cloud-storage API call) says
  "flat bucket". Everything else orbax does on gs:// (commit_success.txt instead of an atomic
  rename, deleting old steps) runs as on GCS, through epath.
"""

import contextlib
import os
from pathlib import Path
from unittest import mock

from etils.epath import testing as epath_testing

PREFIX = "gs://"


@contextlib.contextmanager
def fake_gcs(root: Path):
    root = Path(root)

    def local(p) -> str:
        text = os.fspath(p)
        return str(root / text.removeprefix(PREFIX)) if text.startswith(PREFIX) else text

    def remote(text: str) -> str:
        inside = text.startswith(str(root) + os.sep)
        return PREFIX + os.path.relpath(text, root) if inside else text

    def one(original, p, *args, **kwargs):
        return original(local(p), *args, **kwargs)

    def parents(p) -> str:  # an object store has no directories to create first
        os.makedirs(os.path.dirname(local(p)), exist_ok=True)
        return local(p)

    def open_(original, p, mode):
        return original(parents(p) if "r" not in mode else local(p), mode)

    def two(original, src, dst, *args, **kwargs):
        return original(local(src), parents(dst), *args, **kwargs)

    def glob(original, pattern):
        return [remote(p) for p in original(local(pattern))]

    def walk(original, top, **kwargs):
        for directory, dirs, files in original(local(top), **kwargs):
            yield remote(directory), dirs, files

    from orbax.checkpoint._src.path import gcs_utils

    def file_kvstore(path: str) -> dict:
        return {"driver": "file", "path": local(path)}

    singles = ("exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree", "stat")
    with (
        epath_testing.mock_epath(
            **dict.fromkeys(singles, one),
            open=open_,
            copy=two,
            rename=two,
            replace=two,
            glob=glob,
            walk=walk,
        ),  # fmt: skip
        mock.patch.object(gcs_utils, "get_kvstore_for_gcs", file_kvstore),
        mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled", lambda _: False),
    ):
        yield root
