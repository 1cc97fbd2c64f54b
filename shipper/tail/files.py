"""Finding the files of an input and reading one file in chunks of whole lines."""

import fnmatch
import glob
import os

from shipper.acks import FileAcks
from shipper.tail.identity import FileIdentity, still_matches


TRUNCATED = "truncated"  # read_lines: the file was truncated in place


def matching_paths(paths: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    """Files matching any glob of ``paths`` and none of ``exclude``, sorted, each once."""
    found = set()
    for pattern in paths:
        for path in glob.glob(pattern):
            if not any(fnmatch.fnmatchcase(path, ex) or fnmatch.fnmatchcase(os.path.basename(path), ex) for ex in exclude):
                found.add(path)
    return sorted(path for path in found if os.path.isfile(path))


def last_line_end(fd: int, size: int) -> int:
    """Offset just after the last newline before ``size``: where ``read.from: tail`` starts."""
    start = max(0, size - (1 << 20))
    tail = os.pread(fd, size - start, start)
    newline = tail.rfind(b"\n")
    return start + newline + 1 if newline >= 0 else start


class TailedFile:
    """One log file of one input: where it was read to and what awaits acks.

    ``path`` is where the input's glob found it (on a node a symlink in /var/log/containers),
    ``target`` the file that path resolved to when it was opened; identity and positions
    follow the target. ``read_offset`` is how far the file was read; ``range_start`` where the
    next ack range begins (it lags behind ``read_offset`` while split lines wait for their
    last part); ``acks.checkpoint`` how far every sink has confirmed.

    ``fd`` is None while the descriptor is closed to stay under the open-files cap; the file
    is reopened at ``read_offset`` after checking it is still the same file. A ``rotated``
    file (renamed, deleted, or its symlink retargeted) keeps its descriptor, is read to its
    end, and is let go once everything read from it is acknowledged. ``predecessor`` is the
    file that was at the same path before this one (rotated away): this one is not read
    until that one reached its end, so a container's lines stay in order across rotation.
    """

    __slots__ = (
        "path", "target", "fd", "identity", "key", "input", "decoder", "kubernetes", "kubernetes_json",
        "read_offset", "range_start", "acks", "last_data_at", "rotated", "predecessor", "at_eof", "deleted_at",
        "counted_checkpoint", "quiet_stat",
        "pod_metadata_version", "pod_known", "excluded", "builder",
    )

    def __init__(self, path, target, fd, identity: FileIdentity, key, input, decoder, kubernetes, kubernetes_json,
                 offset: int, acks: FileAcks, now: float) -> None:
        self.path = path
        self.target = target
        self.fd = fd
        self.identity = identity
        self.key = key
        self.input = input
        self.decoder = decoder
        self.kubernetes = kubernetes
        self.kubernetes_json = kubernetes_json
        self.read_offset = offset
        self.range_start = offset
        self.acks = acks
        self.last_data_at = now
        self.rotated = False
        self.predecessor: TailedFile | None = None
        self.at_eof = False
        self.deleted_at: float | None = None  # when it was first seen deleted while held open
        self.counted_checkpoint = offset  # how much of acks.checkpoint the pipeline has accounted for
        self.quiet_stat: tuple | None = None  # (size, mtime) when a read last found nothing to hand out
        # Pod metadata (shipper.kube.enrich): the cache version last merged (-1: never), whether
        # the pod was ever found, whether it is annotated not to be shipped, and the record
        # builder its parser annotation selects (None: the input's).
        self.pod_metadata_version = -1
        self.pod_known = False
        self.excluded = False
        self.builder = None

    def read_lines(self, chunk_bytes: int, max_line_bytes: int, at_eof_take_rest: bool):
        """Read the next whole lines: ``(lines without newlines, start, end, unterminated)``,
        None when there is nothing new, or ``TRUNCATED`` (checked before and after reading, in the
        same thread hop, so a truncation racing the read never hands out the new content as old).

        An incomplete last line waits for its newline, unless ``at_eof_take_rest`` (one-shot
        reads), when it is returned alone with ``unterminated`` set. A chunk without any
        newline is extended until one appears; a line longer than ``max_line_bytes`` is
        handed out in pieces rather than stalling the file or growing memory.
        """
        # Stat before reading: a write landing after the read then shows as a change.
        stat = os.fstat(self.fd)
        self.quiet_stat = None
        if stat.st_size < self.read_offset or not still_matches(self.fd, self.identity):
            return TRUNCATED
        start = self.read_offset
        data = os.pread(self.fd, chunk_bytes, start)
        newline = data.rfind(b"\n")
        while newline < 0 and len(data) < max_line_bytes and len(data) % chunk_bytes == 0 and data:
            more = os.pread(self.fd, chunk_bytes, start + len(data))
            if not more:
                break
            newline = more.rfind(b"\n")
            if newline >= 0:
                newline += len(data)
            data += more
        if not data:
            self.quiet_stat = (stat.st_size, stat.st_mtime_ns)
            return None
        if not still_matches(self.fd, self.identity):
            # Truncated and rewritten while we read: ``data`` may be the new content.
            return TRUNCATED
        unterminated = False
        if newline >= 0:
            lines = data[:newline].split(b"\n")
            end = start + newline + 1
        elif len(data) >= max_line_bytes or at_eof_take_rest:
            lines = [data]
            end = start + len(data)
            unterminated = len(data) < max_line_bytes
        else:
            self.quiet_stat = (stat.st_size, stat.st_mtime_ns)
            return None
        self.read_offset = end
        return lines, start, end, unterminated

    def unchanged_since_quiet_read(self) -> bool:
        """The file has the size and modification time it had when a read last found nothing to
        hand out, so reading it again would find nothing either: the pipeline skips the thread
        hop and three system calls. A rewrite in place to the same size within one clock tick
        would wait for the next write."""
        if self.quiet_stat is None or self.fd is None:
            return False
        stat = os.fstat(self.fd)
        return (stat.st_size, stat.st_mtime_ns) == self.quiet_stat

    def size(self) -> int:
        return os.fstat(self.fd).st_size if self.fd is not None else os.stat(self.target).st_size

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
