"""Noticing that files changed, by polling: cheap, portable, and enough for config that a human
edits. Services reload policies and agents when this says so."""

from __future__ import annotations

from pathlib import Path


class DirectoryWatcher:
    def __init__(self, directory: Path, patterns: tuple[str, ...]) -> None:
        self._directory = directory
        self._patterns = patterns
        self._last = self._fingerprint()

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        if not self._directory.is_dir():
            return ()
        found = []
        for pattern in self._patterns:
            for path in self._directory.glob(pattern):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                found.append((path.name, st.st_mtime_ns, st.st_size))
        return tuple(sorted(found))

    def changed(self) -> bool:
        current = self._fingerprint()
        if current == self._last:
            return False
        self._last = current
        return True
