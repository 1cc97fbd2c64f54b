"""File identity: device, inode and a fingerprint of the first line.

The inode alone is not enough: a deleted file's inode is reused by the next file created,
and resuming the new file at the old offset loses its head (fluent-bit#4895). The
fingerprint is a hash of the file's first line (at most ``FINGERPRINT_BYTES``): container
log lines start with a nanosecond timestamp, so two files practically never share one.
A file whose first line is not complete yet has no identity: nothing in it can be shipped
before that newline anyway, so waiting costs nothing.
"""

import hashlib
import os
from typing import NamedTuple

FINGERPRINT_BYTES = 256


class FileIdentity(NamedTuple):
    dev: int
    ino: int
    fingerprint: str  # blake2b-64 of the first line (or first FINGERPRINT_BYTES) as hex
    fingerprint_size: int  # how many bytes were hashed

    @property
    def key(self) -> str:
        return f"{self.dev}:{self.ino}:{self.fingerprint}"


def identify(fd: int, allow_short: bool = False) -> FileIdentity | None:
    """The identity of the open file ``fd``, or None while its first line is incomplete.

    ``allow_short`` fingerprints whatever is there (one-shot reads that persist nothing);
    an empty file never has an identity.
    """
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    newline = head.find(b"\n")
    if newline >= 0:
        head = head[: newline + 1]
    elif not head or (len(head) < FINGERPRINT_BYTES and not allow_short):
        return None
    stat = os.fstat(fd)
    return FileIdentity(stat.st_dev, stat.st_ino, fingerprint_of(head), len(head))


def fingerprint_of(head: bytes) -> str:
    return hashlib.blake2b(head, digest_size=8).hexdigest()


def still_matches(fd: int, identity: FileIdentity) -> bool:
    """Whether the open file still starts with the fingerprinted bytes (copytruncate, reuse)."""
    head = os.pread(fd, identity.fingerprint_size, 0)
    return (
        len(head) == identity.fingerprint_size
        and fingerprint_of(head) == identity.fingerprint
    )
