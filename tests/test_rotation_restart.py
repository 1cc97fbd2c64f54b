"""Restarts across rotations and inode reuse: what happened while the shipper was not looking.

The "beyond" case: kubelet rotated ``0.log`` while the shipper was down. The saved position
belongs to a file now called ``0.log.<timestamp>``; on start the shipper finds it next to the
new ``0.log`` by its identity, finishes it, then reads the new file, so nothing is lost and
nothing is read twice. A gzipped rotation is out of reach: counted and logged with the bytes lost.
"""

import asyncio
import gzip
import logging
import os
import shutil

import pytest

from shipper.tail.positions import load_positions
from tests.helpers import (
    CollectingSink, LogWriter, follow_while_writing, line_numbers, make_config, make_pipeline, numbered_line,
    received_line, wait_for,
)

FAST = {"poll_interval_secs": 0.01, "rescan_interval_secs": 0.05, "rotate_wait_secs": 0.1,
        "checkpoint_interval_secs": 0.05, "read_chunk_bytes": 4096}
NEVER = 10**9  # rotate_every for writers that do not rotate


def write_lines(path, numbers, mode="ab", name="line"):
    with open(path, mode) as handle:
        handle.write(b"".join(numbered_line(number, name) for number in numbers))


def first_run_acking(tmp_path, log, acked_ranges: int | None) -> int:
    """Follow ``log`` until every line arrived; acknowledge only the first ``acked_ranges``
    chunks (all when None); stop. Returns the saved position."""
    sink = CollectingSink(auto_ack=acked_ranges is None)
    pipeline, _ = make_pipeline(make_config(tmp_path, [str(tmp_path / "*.log")], **FAST), [sink])
    lines = log.read_bytes().count(b"\n")

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await wait_for(lambda: len(sink.records) >= lines)
        if acked_ranges is not None:
            sink.ack_first(acked_ranges)
        pipeline.stop()
        await task

    asyncio.run(scenario())
    (entry,) = load_positions(str(tmp_path / "positions.json")).values()
    return entry["offset"]


def restart_while_writing(tmp_path, log, start: int, total: int, expected_count: int):
    sink = CollectingSink()
    writer = LogWriter(log, total, NEVER, None, received_line(sink), start=start)
    pipeline, metrics = make_pipeline(make_config(tmp_path, [str(tmp_path / "*.log")], **FAST), [sink])
    asyncio.run(follow_while_writing(pipeline, [writer], lambda: len(sink.records) >= expected_count))
    return sink, metrics


def lines_before(path, offset: int) -> int:
    return path.read_bytes()[:offset].count(b"\n")


def test_a_rotation_while_the_shipper_was_down_loses_nothing(tmp_path):
    log = tmp_path / "0.log"
    write_lines(log, range(1000))
    saved = first_run_acking(tmp_path, log, acked_ranges=3)  # lines after the third chunk are unacknowledged
    resume_from = lines_before(log, saved)
    assert 0 < resume_from < 1000
    # while down: more lines, kubelet rotates, the container writes to the new 0.log
    write_lines(log, range(1000, 1500))
    os.rename(log, tmp_path / "0.log.20261120-100000")
    write_lines(log, range(1500, 2000))
    # restarted: the writer goes on appending to the new 0.log
    sink, metrics = restart_while_writing(tmp_path, log, 2000, 5000, 5000 - resume_from)
    assert line_numbers(sink.messages) == list(range(resume_from, 5000))
    assert metrics.value("shipper_files_skipped_total") == 0
    # the finished rotated file was let go; its position is not kept
    assert [entry["path"] for entry in load_positions(str(tmp_path / "positions.json")).values()] == [str(log)]


def test_a_rotation_compressed_while_down_is_counted_with_the_bytes_lost(tmp_path, caplog):
    log = tmp_path / "0.log"
    write_lines(log, range(1000))
    saved = first_run_acking(tmp_path, log, acked_ranges=3)
    write_lines(log, range(1000, 1500))
    rotated_size = log.stat().st_size
    with open(log, "rb") as source, gzip.open(tmp_path / "0.log.20261120-100000.gz", "wb") as target:
        shutil.copyfileobj(source, target)
    log.unlink()
    write_lines(log, range(1500, 2000))
    with caplog.at_level(logging.WARNING, logger="shipper.pipeline"):
        sink, metrics = restart_while_writing(tmp_path, log, 2000, 3000, 1500)
    assert line_numbers(sink.messages) == list(range(1500, 3000))
    assert metrics.value("shipper_files_skipped_total", reason="compressed_rotation") == 1
    lost = rotated_size - saved
    (message,) = [r.getMessage() for r in caplog.records if "compressed" in r.getMessage()]
    assert f"{lost} bytes after offset {saved} were never read" in message


def test_a_file_deleted_while_down_with_unread_lines_is_counted(tmp_path):
    log = tmp_path / "0.log"
    write_lines(log, range(1000))
    first_run_acking(tmp_path, log, acked_ranges=3)
    log.unlink()
    write_lines(tmp_path / "other.log", range(10), name="other")
    sink, metrics = restart_while_writing(tmp_path, tmp_path / "other.log", 10, 20, 20)
    assert line_numbers(sink.messages) == list(range(20))
    assert metrics.value("shipper_files_skipped_total", reason="gone_while_down") == 1


def create_with_inode(path, inode: int, data: bytes) -> None:
    """Create ``path`` holding ``data`` on the freed inode ``inode`` (ext4 and xfs hand a freed
    inode to the next file created in the directory). Skips where the file system does not."""
    directory = os.path.dirname(path)
    attempts = []
    for attempt in range(50):
        candidate = os.path.join(directory, f".reuse-{attempt}")
        with open(candidate, "wb") as handle:
            handle.write(data)
        if os.stat(candidate).st_ino == inode:
            os.rename(candidate, path)
            break
        attempts.append(candidate)
    else:
        pytest.skip("this file system does not reuse freed inodes")
    for candidate in attempts:
        os.unlink(candidate)


@pytest.mark.parametrize("new_lines", [100, 3000])  # shorter and longer than the old file's position
def test_a_new_file_on_a_reused_inode_is_read_from_its_head_after_restart(tmp_path, new_lines):
    log = tmp_path / "app.log"
    write_lines(log, range(1000), name="old")
    first_run_acking(tmp_path, log, acked_ranges=None)
    inode = log.stat().st_ino
    log.unlink()
    create_with_inode(str(log), inode, b"".join(numbered_line(n) for n in range(new_lines)))
    sink, _ = restart_while_writing(tmp_path, log, new_lines, new_lines + 2000, new_lines + 2000)
    assert line_numbers(sink.messages) == list(range(new_lines + 2000))


def test_a_new_file_on_a_reused_inode_while_running_is_read_from_its_head(tmp_path):
    """With its descriptor closed (open-files cap 1, another file busy), the old file's inode
    is free for the next file created; that file is recognised by its first line."""
    old, busy = tmp_path / "app.log", tmp_path / "busy.log"
    write_lines(old, range(1000), name="old")
    write_lines(busy, range(1), name="busy")
    sink = CollectingSink()
    busy_writer = LogWriter(busy, 20000, NEVER, None, received_line(sink), start=1, pause_every=20,
                            name="busy")
    pipeline, _ = make_pipeline(make_config(tmp_path, [str(tmp_path / "*.log")], max_open_files=1, **FAST), [sink])

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await wait_for(lambda: sum(m.startswith("old") for m in sink.messages) == 1000)
        busy_writer.start()
        await wait_for(lambda: pipeline.files and all(t.fd is None for t in pipeline.files.values()
                                                        if t.path == str(old)))
        inode = old.stat().st_ino
        old.unlink()
        create_with_inode(str(old), inode, b"".join(numbered_line(n, "new") for n in range(500)))
        await wait_for(lambda: sum(m.startswith("new") for m in sink.messages) >= 500 and busy_writer.finished()
                       and sum(m.startswith("busy") for m in sink.messages) >= 20000)
        pipeline.stop()
        await task

    asyncio.run(scenario())
    assert line_numbers([m for m in sink.messages if m.startswith("new")]) == list(range(500))
    assert line_numbers([m for m in sink.messages if m.startswith("busy")]) == list(range(20000))


def test_several_rotations_while_the_shipper_was_down_lose_nothing(tmp_path):
    """Down long enough for kubelet to rotate twice: the file with the saved position is
    finished, then the rotation never seen, then the new 0.log."""
    log = tmp_path / "0.log"
    write_lines(log, range(1000))
    saved = first_run_acking(tmp_path, log, acked_ranges=3)
    resume_from = lines_before(log, saved)
    write_lines(log, range(1000, 1500))
    os.rename(log, tmp_path / "0.log.20261120-100000")
    write_lines(log, range(1500, 2500))  # never seen by the shipper
    os.rename(log, tmp_path / "0.log.20261120-110000")
    write_lines(log, range(2500, 3000))
    sink, metrics = restart_while_writing(tmp_path, log, 3000, 5000, 5000 - resume_from)
    assert line_numbers(sink.messages) == list(range(resume_from, 5000))
    assert metrics.value("shipper_files_skipped_total") == 0
