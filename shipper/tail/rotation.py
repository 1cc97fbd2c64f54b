"""Finding where a file went: its rotated siblings next to the path it was read at.

kubelet renames ``0.log`` to ``0.log.<timestamp>`` and later gzips it; logrotate renames to
``app.log.1`` or ``app.log-<date>``, or copies and truncates in place. Every scheme keeps the
old name as a prefix of the new one in the same directory, so the candidates for a file that
is no longer at its path are the siblings whose name starts with its name.
"""

import gzip
import os
import struct
import zlib
from typing import NamedTuple

from shipper.tail.identity import FileIdentity, fingerprint_of

COMPRESSED_SUFFIX = ".gz"


class CompressedRotation(NamedTuple):
    path: str
    size: int  # uncompressed size from the gzip trailer (modulo 4 GiB, as gzip stores it)


def siblings(path: str) -> list[str]:
    """Files next to ``path`` whose name starts with its name (``path`` itself excluded)."""
    directory, name = os.path.split(path)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    return sorted(os.path.join(directory, other) for other in names if other != name and other.startswith(name))


def find_moved(path: str, identity: FileIdentity) -> str | None:
    """The uncompressed sibling of ``path`` that is the same file (device, inode and first line)."""
    for candidate in siblings(path):
        if candidate.endswith(COMPRESSED_SUFFIX):
            continue
        try:
            stat = os.stat(candidate)
            if (stat.st_dev, stat.st_ino) == (identity.dev, identity.ino) and _starts_with(candidate, identity):
                return candidate
        except OSError:  # rotated again or deleted while we looked
            continue
    return None


def find_copy(path: str, identity: FileIdentity) -> tuple[str, int] | None:
    """copytruncate: the sibling copied from ``path`` before it was truncated (a different
    inode with the same first line), and its size."""
    for candidate in siblings(path):
        if candidate.endswith(COMPRESSED_SUFFIX):
            continue
        try:
            stat = os.stat(candidate)
            if stat.st_ino != identity.ino and _starts_with(candidate, identity):
                return candidate, stat.st_size
        except OSError:
            continue
    return None


def find_compressed(path: str, identity: FileIdentity) -> CompressedRotation | None:
    """A gzipped sibling whose decompressed first line is the file's fingerprinted first line."""
    for candidate in siblings(path):
        if not candidate.endswith(COMPRESSED_SUFFIX):
            continue
        try:
            with gzip.open(candidate, "rb") as handle:
                head = handle.read(identity.fingerprint_size)
            if fingerprint_of(head) != identity.fingerprint:
                continue
            with open(candidate, "rb") as raw:
                raw.seek(-4, os.SEEK_END)
                (size,) = struct.unpack("<I", raw.read(4))
            return CompressedRotation(candidate, size)
        except (OSError, EOFError, zlib.error, struct.error):  # not gzip, or still being written
            continue
    return None


def _starts_with(path: str, identity: FileIdentity) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(identity.fingerprint_size)
    return len(head) == identity.fingerprint_size and fingerprint_of(head) == identity.fingerprint
