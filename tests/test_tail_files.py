"""Reading one file: a file with nothing new is skipped until it changes, and never misses a change."""

import os

from shipper.tail.files import TRUNCATED, TailedFile
from shipper.tail.identity import identify

CHUNK, MAX_LINE = 1 << 16, 1 << 20


def open_tailed(path) -> TailedFile:
    fd = os.open(path, os.O_RDONLY)
    return TailedFile(str(path), str(path), fd, identify(fd), "key", None, None, {}, None, 0, None, 0.0)


def read(tailed: TailedFile):
    return tailed.read_lines(CHUNK, MAX_LINE, False)


def test_a_file_read_to_its_end_is_skipped_until_a_write_then_read(tmp_path):
    path = tmp_path / "a.log"
    path.write_bytes(b"first\n")
    tailed = open_tailed(path)
    try:
        assert not tailed.unchanged_since_quiet_read()  # never read: read it
        assert read(tailed)[0] == [b"first"]
        assert not tailed.unchanged_since_quiet_read()  # it handed out lines: there may be more
        assert read(tailed) is None
        assert tailed.unchanged_since_quiet_read()  # nothing new and unchanged: no read needed
        with open(path, "ab") as handle:
            handle.write(b"second\n")
        assert not tailed.unchanged_since_quiet_read()
        assert read(tailed)[0] == [b"second"]
    finally:
        tailed.close()


def test_a_line_waiting_for_its_newline_is_read_again_once_the_newline_lands(tmp_path):
    path = tmp_path / "a.log"
    path.write_bytes(b"first\nhalf")
    tailed = open_tailed(path)
    try:
        assert read(tailed)[0] == [b"first"]
        assert read(tailed) is None  # 'half' waits for its newline
        assert tailed.unchanged_since_quiet_read()
        with open(path, "ab") as handle:
            handle.write(b" done\n")
        assert not tailed.unchanged_since_quiet_read()
        assert read(tailed)[0] == [b"half done"]
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
