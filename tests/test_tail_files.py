"""Reading one file: a file with nothing new is skipped until it changes, and never misses a change."""

import os

import pytest

from shipper.tail.files import TRUNCATED, TailedFile
from shipper.tail.identity import identify

CHUNK, MAX_LINE = 1 << 16, 1 << 20


def open_tailed(path) -> TailedFile:
    fd = os.open(path, os.O_RDONLY)
    return TailedFile(str(path), str(path), fd, identify(fd), "key", None, None, {}, None, 0, None, 0.0)


def read(tailed: TailedFile):
    return tailed.read_lines(CHUNK, MAX_LINE, False)


@pytest.mark.parametrize("content, appended, lines", [
    (b"first\n", b"second\n", [b"second"]),  # read to its end, then written to
    (b"first\nhalf", b" done\n", [b"half done"]),  # 'half' waited for its newline
])
def test_a_quiet_file_is_skipped_until_written_to_then_read(tmp_path, content, appended, lines):
    path = tmp_path / "a.log"
    path.write_bytes(content)
    tailed = open_tailed(path)
    try:
        assert not tailed.unchanged_since_quiet_read()  # never read: read it
        assert read(tailed)[0] == [b"first"]
        assert not tailed.unchanged_since_quiet_read()  # it handed out lines: there may be more
        assert read(tailed) is None
        assert tailed.unchanged_since_quiet_read()  # nothing new and unchanged: no read needed
        with open(path, "ab") as handle:
            handle.write(appended)
        assert not tailed.unchanged_since_quiet_read()
        assert read(tailed)[0] == lines
    finally:
        tailed.close()


def test_a_file_rewritten_in_place_to_the_same_size_is_not_skipped(tmp_path):
    path = tmp_path / "a.log"
    path.write_bytes(b"old line\n")
    tailed = open_tailed(path)
    try:
        read(tailed)
        assert read(tailed) is None
        mtime = os.stat(path).st_mtime_ns
        with open(path, "r+b") as handle:  # copytruncate, then the app writes as much again
            handle.truncate(0)
            handle.write(b"new line\n")
        os.utime(path, ns=(mtime + 1_000_000, mtime + 1_000_000))  # the write's clock tick
        assert not tailed.unchanged_since_quiet_read()
        assert read(tailed) is TRUNCATED
    finally:
        tailed.close()
