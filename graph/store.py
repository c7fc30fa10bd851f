"""Graph persistence behind a narrow interface.

:class:`GraphStore` is all the engine asks of a store: ``load`` the state, ``commit`` a write
atomically (all of it or none of it), say ``where`` it lives. :class:`FileGraphStore` keeps one
gzipped JSON snapshot per graph (the ``MultiDiGraph`` in networkx node-link form plus the document
records it is built from), written to a temporary file, fsynced, renamed over the old one and the
directory fsynced: a crash at any instant leaves the previous good snapshot or the new one, never a
mix. A graph database would implement ``commit`` as a transaction over ``changes`` (the nodes,
edges and documents the write touched) instead of rewriting a snapshot.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

from core.validation import fsync_dir
from graph.state import GraphState
from graph.update import Changes

__all__ = ["FileGraphStore", "GraphStore"]

log = logging.getLogger("guardrag.graph")


@runtime_checkable
class GraphStore(Protocol):
    """Where one graph's state lives."""

    def load(self) -> GraphState:
        """The last committed state (an empty one when nothing was ever committed)."""
        ...

    def commit(self, state: GraphState, changes: Changes) -> None:
        """Persist ``state`` atomically; ``changes`` says what differs from the last commit."""
        ...

    def where(self) -> str:
        """A human-readable location, for stats and error messages."""
        ...


class FileGraphStore:
    """One gzipped JSON snapshot file per graph, replaced atomically on every commit."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.cleaned: list[str] = self._clean()

    def where(self) -> str:
        return str(self.path)

    def _clean(self) -> list[str]:
        """Remove temporary files a crashed commit left behind (the snapshot itself is intact)."""
        gone = []
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            gone.append(tmp.name)
        return gone

    def stamp(self) -> tuple[int, int] | None:
        """(mtime, size) of the snapshot: changes when another process commits."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> GraphState:
        if not self.path.exists():
            return GraphState()
        with gzip.open(self.path, "rt", encoding="utf-8") as fh:
            return GraphState.load(json.load(fh))

    def commit(self, state: GraphState, changes: Changes | None = None) -> None:
        data = json.dumps(state.dump(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as fh:
                    fh.write(data)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(self.path.parent)
