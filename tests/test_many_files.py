"""Many files: a cap on open descriptors, fairness between files, a cap on holding deleted files."""

import asyncio
import os
import threading

import pytest

from tests.helpers import CollectingSink, line_numbers, make_config, make_pipeline, numbered_line, wait_for

FAST = {"poll_interval_secs": 0.01, "rescan_interval_secs": 0.05, "rotate_wait_secs": 0.1,
        "checkpoint_interval_secs": 0.05}


def descriptors_into(directory) -> int:
    """Descriptors this process has open on files in ``directory`` (read from /proc, not
    from the pipeline's own bookkeeping)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory) + os.sep):
                count += 1
        except OSError:  # closed meanwhile
            pass
    return count


@pytest.mark.slow
def test_two_thousand_files_with_at_most_a_hundred_descriptors(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    files, passes, lines_per_pass = 2000, 5, 2
    names = [f"f{i:04d}" for i in range(files)]

    def write_passes():
        # Every file gets lines in every pass while the pipeline runs, so idle files are
        # closed and must be reopened at their position, again and again.
        for number in range(0, passes * lines_per_pass, lines_per_pass):
            for name in names:
                fd = os.open(logs / f"{name}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(fd, b"".join(numbered_line(n, name) for n in range(number, number + lines_per_pass)))
                os.close(fd)

    sink = CollectingSink()
    config = make_config(tmp_path, [str(logs / "*.log")], max_open_files=100, **FAST)
    pipeline, _ = make_pipeline(config, [sink])
    most_open = 0

    async def scenario():
        nonlocal most_open
        task = asyncio.create_task(pipeline.run())
        writer = threading.Thread(target=write_passes)
        writer.start()
        total = files * passes * lines_per_pass
        try:
            while len(sink.records) < total and not task.done():
                # the writer holds at most one descriptor there itself
                most_open = max(most_open, descriptors_into(logs) - 1)
                await asyncio.sleep(0.005)
            await wait_for(lambda: len(sink.records) >= total, timeout=60)
        finally:
            writer.join()
            pipeline.stop()
            await task

    asyncio.run(scenario())
    by_file: dict[str, list[str]] = {name: [] for name in names}
    for message in sink.messages:
        by_file[message.split()[0]].append(message)
    assert all(line_numbers(by_file[name]) == list(range(passes * lines_per_pass)) for name in names)
    assert 0 < most_open <= 100


def test_a_chatty_file_does_not_starve_a_quiet_one(tmp_path):
    """One chunk (read.chunk_bytes) per file per round: the quiet file's line comes within
    the first round, not after the chatty file's megabytes."""
    chatty, quiet = tmp_path / "a-chatty.log", tmp_path / "b-quiet.log"
    chatty.write_bytes(b"".join(numbered_line(n, "chatty") for n in range(50000)))
    quiet.write_bytes(numbered_line(0, "quiet"))
    sink = CollectingSink()
    pipeline, _ = make_pipeline(make_config(tmp_path, [str(tmp_path / "*.log")], read_chunk_bytes=8192, **FAST),
                                [sink])

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await wait_for(lambda: len(sink.records) >= 50001)
        pipeline.stop()
        await task

    asyncio.run(scenario())
    lines_per_chunk = 8192 // len(numbered_line(0, "chatty"))
    assert sink.messages.index("quiet 0000000") <= lines_per_chunk


def test_a_deleted_file_is_let_go_after_the_hold_cap_and_the_loss_counted(tmp_path, caplog):
    """A sink that does not acknowledge stops reading; a deleted file would then hold its disk
    space for ever. After read.max_deleted_hold_secs it is closed, its unread bytes counted."""
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(numbered_line(n) for n in range(20000)))
    size = log.stat().st_size
    stalled = CollectingSink(auto_ack=False)
    config = make_config(tmp_path, [str(log)], read_chunk_bytes=65536, max_in_flight_bytes=65536,
                         max_deleted_hold_secs=0.2, **FAST)
    pipeline, metrics = make_pipeline(config, [stalled])

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await wait_for(lambda: len(stalled.records) > 0)
        log.unlink()
        await wait_for(lambda: not pipeline.files)
        pipeline.stop()
        await task

    asyncio.run(scenario())
    assert metrics.value("shipper_files_skipped_total", reason="deleted_hold_expired") == 1
    read = len(stalled.records) * len(numbered_line(0))
    assert f"{size - read} bytes after offset {read} are lost" in caplog.text
    assert descriptors_into(tmp_path) == 0
