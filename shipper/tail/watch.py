"""File system events (inotify, through ``watchfiles``) that wake the tail loop.

Events only say *look now*: what changed is always found by reading and globbing, so a
missed or coalesced event costs latency (the periodic rescan catches up), never data.
``/var/log/containers/*.log`` are symlinks: writes happen in their targets' directories under
``/var/log/pods``, so those directories are watched too, not only the globs' directories.
"""

import asyncio
import glob
import logging
import os
from collections.abc import Callable, Iterable

from watchfiles import Change, awatch

log = logging.getLogger("shipper.tail.watch")
# watchfiles logs every batch of changes at info level; on a node that is every write.
logging.getLogger("watchfiles").setLevel(logging.WARNING)

# How long watchfiles gathers events before yielding them: the wake-up latency.
_DEBOUNCE_MS = 50
_STEP_MS = 10


def glob_root(pattern: str) -> str | None:
    """The deepest directory of ``pattern`` without wildcards, if it exists."""
    parts = os.path.abspath(pattern).split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    root = os.sep.join(fixed) or os.sep
    return root if os.path.isdir(root) else None


def directories_to_watch(patterns: Iterable[str], file_paths: Iterable[str]) -> frozenset[str]:
    """The globs' fixed directories (watched recursively) plus the directories of the files
    followed (symlink targets) that are not below one of them."""
    roots = {root for root in map(glob_root, patterns) if root}
    extra = set()
    for path in file_paths:
        directory = os.path.dirname(path)
        below_a_root = any(directory == root or directory.startswith(root.rstrip(os.sep) + os.sep) for root in roots)
        if not below_a_root and os.path.isdir(directory):  # a pod's directory may be gone already
            extra.add(directory)
    return frozenset(roots | extra)


class DirectoryWatcher:
    """Calls ``on_event(changes)`` with each batch of ``(Change, path)`` in the watched
    directories, except paths ``ignored`` says are not news; an empty batch when the watch
    stopped working. ``failed`` is set when the watch cannot run (no inotify, watch limit
    reached): the caller then polls."""

    def __init__(self, on_event: Callable[[set[tuple[Change, str]]], None], ignored: Callable[[str], bool]) -> None:
        self._on_event = on_event
        self._ignored = ignored
        self._directories: frozenset[str] = frozenset()
        self._task: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None
        self.failed = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self.failed

    async def watch(self, directories: frozenset[str]) -> None:
        """Watch exactly ``directories`` (restarting the watch when the set changed)."""
        if directories == self._directories and (self.running or self.failed):
            return  # a failed watch is retried when the set changes, not every rescan
        await self.close()
        self._directories = directories
        if not directories:
            return
        self.failed = False
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(sorted(directories), self._stop))

    async def _run(self, directories: list[str], stop: asyncio.Event) -> None:
        try:
            async for changes in awatch(*directories, watch_filter=self._relevant, debounce=_DEBOUNCE_MS, step=_STEP_MS,
                                        stop_event=stop, recursive=True):
                self._on_event(changes)
        except Exception as error:  # the watch is an optimisation: fall back to polling, loudly
            self.failed = True
            log.warning("cannot watch %d directories for changes (%s); polling instead", len(directories), error)
            self._on_event(set())

    def _relevant(self, change: Change, path: str) -> bool:
        return not self._ignored(path)

    async def close(self) -> None:
        if self._task is not None:
            self._stop.set()  # the watch thread checks it every step; cancelling would wait for its timeout
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
