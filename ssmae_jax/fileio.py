"""Paths that may be local or in a bucket (gs://...): every file the project reads or writes goes through here.

`etils.epath` reads and writes both; TensorFlow's GCS client serves gs:// where TensorFlow is installed (as here),
gcsfs otherwise (and with EPATH_USE_TF=false, as the emulator tests do). Never `os.path` on a workdir:
`os.path.abspath('gs://b/run')` is a local folder named `gs:`.
"""

import json
import os
from collections.abc import Iterator
from typing import Any

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
  return '://' in os.fspath(path)


def path(p: str | os.PathLike) -> epath.Path:
  """A local path made absolute (relative to the current directory), or a bucket URL unchanged."""
  return epath.Path(p if is_remote(p) else os.path.abspath(os.fspath(p)))


def walk(root: str | os.PathLike) -> Iterator[tuple[epath.Path, list[str], list[str]]]:
  """os.walk for local and bucket paths: (folder, subfolder names, file names), top-down; prune subfolder names in
  place to skip them. Bucket folders keep their gs:// prefix, which epath's gcsfs walk drops."""
  root = os.fspath(root)
  scheme = root.split('://', 1)[0] + '://' if is_remote(root) else ''
  for folder, subfolders, files in epath.Path(root).walk():
    if scheme and not os.fspath(folder).startswith(scheme):
      folder = epath.Path(scheme + os.fspath(folder))
    yield folder, subfolders, files


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
  """Whole or not at all: a run killed while writing leaves the previous file (or none), never half of one.

  Locally through a temporary file and a rename. A bucket needs neither: an object upload is atomic, and a rename
  there is a copy and a delete.
  """
  target = path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(target):
    target.write_bytes(data)
    return
  tmp = target.parent / (target.name + '.tmp')
  tmp.write_bytes(data)
  os.replace(tmp, target)


def write_text(target: str | os.PathLike, text: str, errors: str = 'strict') -> None:
  write_bytes(target, text.encode('utf-8', errors=errors))


def write_json(target: str | os.PathLike, data: Any, indent: int | None = None) -> None:
  write_text(target, json.dumps(data, indent=indent))


def read_json(source: str | os.PathLike) -> Any:
  return json.loads(path(source).read_text())


def copy_run(source: str | os.PathLike, target: str | os.PathLike) -> None:
  """Copies a finished run's folder (local or bucket) to `target`, its results.json last: a copy cut short is not a
  finished run, and the next attempt copies it again."""
  source_path = path(source)
  files = [folder / name for folder, _, names in walk(source_path) for name in names]
  finished = source_path / 'results.json'
  for file in sorted(files, key=lambda f: f == finished):
    destination = path(target) / os.fspath(file)[len(os.fspath(source_path)):].lstrip('/')
    destination.parent.mkdir(parents=True, exist_ok=True)
    file.copy(destination, overwrite=True)
