"""Where bulk ingestion reads files: paths every Ray node can read, or object storage.

The bulk pipeline (:mod:`deployments.ingest.bulk`) lists files on the driver and parses them in Ray
tasks, which run on worker nodes. So a file must be readable *there*:

* a plain path, on storage mounted at the same path on every node (on Kubernetes the shared
  volume's ``ingest/`` directory, mounted at ``/data/ingest`` in every Ray pod; on one machine any
  path). A path only the driver sees lists fine and then fails on the workers: every such file is
  reported skipped (``No such file``) and ``ragserve ingest`` exits 1 saying so;
* a URI of a filesystem pyarrow knows (``s3://bucket/docs/``, ``gs://...``, ``abfs://...``,
  ``file://...``): listed and read through ``pyarrow.fs``, the filesystems Ray Data's own readers
  use, with the nodes' credentials (IRSA / Workload Identity / instance roles).

``local://`` is refused: to Ray Data it means "read on the driver's node only", which on a
KubeRay head started with ``num-cpus: 0`` can never be scheduled (Ray 2.60 raises for it), and Ray
Data deprecates the scheme.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deployments.errors import ConfigError
from deployments.ingest.pipeline import discover

SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


@dataclass(frozen=True)
class FileRef:
    """One file to ingest: where to read it, its stable source name, size and mtime (epoch s)."""

    uri: str
    source: str
    size: int
    mtime: int


def scheme(uri: str) -> str | None:
    """The URI scheme (``s3``), or None for a plain path."""
    found = SCHEME.match(uri)
    return found.group(1).lower() if found else None


def _remote(uri: str) -> list[FileRef]:
    import pyarrow.fs as pafs

    prefix = SCHEME.match(uri).group(0)  # type: ignore[union-attr]
    fs, root = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{uri}: not found")
    if info.type == pafs.FileType.File:
        found, base = [info], None
    else:
        found = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                 if i.type == pafs.FileType.File]
        base = PurePosixPath(root.rstrip("/"))
    refs = []
    for i in sorted(found, key=lambda i: i.path):
        rel = PurePosixPath(i.path)
        # The same source names as for a local directory: <dir name>/<path inside it>.
        source = rel.name if base is None else f"{base.name}/{rel.relative_to(base).as_posix()}"
        mtime = int(i.mtime.timestamp()) if i.mtime is not None else 0
        refs.append(FileRef(prefix + i.path, source, int(i.size or 0), mtime))  # file:// + /abs, s3:// + bucket/key
    return refs


def list_files(paths: Iterable[str | Path]) -> list[FileRef]:
    """Every file under ``paths`` (files, directories, or URIs of either), in a stable order.

    Raises:
        ConfigError: a path does not exist, or uses ``local://``.
    """
    out: list[FileRef] = []
    for raw in map(str, paths):
        kind = scheme(raw)
        if kind == "local":
            raise ConfigError(f"{raw}: local:// reads on the driver's node only (a KubeRay head runs no tasks); "
                              "put the files on the shared volume (/data/ingest in the pods) or object storage")
        if kind is not None:
            out += _remote(raw)
            continue
        if not Path(raw).exists():
            raise ConfigError(f"{raw}: no such file or directory")
        for path, source in discover([raw]):
            stat = path.stat()
            out.append(FileRef(str(path.resolve()), source, stat.st_size, int(stat.st_mtime)))
    return out


def read(ref: FileRef) -> bytes:
    """The file's bytes, on whichever node calls this (OSError when it cannot be read there)."""
    if scheme(ref.uri) is None:
        return Path(ref.uri).read_bytes()
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(ref.uri)
    with fs.open_input_stream(path) as f:
        return f.read()
