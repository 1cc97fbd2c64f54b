"""Tailing real files through the whole pipeline: chunk boundaries, acks, restarts."""

import asyncio
import os
import re
import shutil

import orjson
import pytest

from shipper.config import FilterRule
from shipper.tail.positions import load_positions
from tests.helpers import CollectingSink, cri, make_config, make_pipeline, run_until, wait_for

T = "2026-11-20T10:00:00.5Z"


def write(path, data: bytes, mode="wb"):
    with open(path, mode) as handle:
        handle.write(data)


def one_shot(tmp_path, paths, sink=None, **settings):
    sink = sink or CollectingSink()
    pipeline, metrics = make_pipeline(make_config(tmp_path, paths, **settings), [sink], one_shot=True,
                                      persist_positions=False)
    asyncio.run(pipeline.run())
    return sink, metrics


def follow(tmp_path, paths, sinks, condition, **settings):
    pipeline, metrics = make_pipeline(make_config(tmp_path, paths, poll_interval_secs=0.01, **settings), sinks)
    asyncio.run(run_until(pipeline, condition))
    return pipeline, metrics


def checkpoint(tmp_path) -> int:
    (entry,) = load_positions(str(tmp_path / "positions.json")).values()
    return entry["offset"]


def test_partial_parts_join_across_chunk_boundaries(tmp_path):
    log = tmp_path / "app.log"
    parts = [bytes([65 + i]) * 3000 for i in range(5)]  # 15 kB over 4 kB chunks
    data = cri(T, "stdout", "F", "before")
    for part in parts[:-1]:
        data += cri(T, "stdout", "P", part)
    data += cri(T, "stdout", "F", parts[-1]) + cri(T, "stdout", "F", "after")
    write(log, data)
    sink, metrics = one_shot(tmp_path, [str(log)], read_chunk_bytes=4096)
    assert sink.messages == ["before", b"".join(parts).decode(), "after"]
    assert sink.offsets[1] == len(cri(T, "stdout", "F", "before"))
    assert metrics.value("shipper_lines_total") == 7


@pytest.mark.parametrize("shift", [-1, 0, 1])
def test_line_split_exactly_at_a_chunk_boundary(tmp_path, shift):
    """Chunk boundaries just before, exactly at and just after a newline lose nothing."""
    log = tmp_path / "app.log"
    first = cri(T, "stdout", "F", "x" * (4096 - len(cri(T, "stdout", "F", "")) + shift))
    lines = [first] + [cri(T, "stdout", "F", f"line {i}") for i in range(200)]
    write(log, b"".join(lines))
    sink, _ = one_shot(tmp_path, [str(log)], read_chunk_bytes=4096)
    assert sink.messages == [line.split(b" ", 3)[3][:-1].decode() for line in lines]


def test_restart_resumes_at_the_acknowledged_position(tmp_path):
    log = tmp_path / "app.log"
    write(log, b"".join(cri(T, "stdout", "F", f"old {i}") for i in range(100)))
    first = CollectingSink()
    follow(tmp_path, [str(log)], [first], lambda: len(first.records) == 100)
    assert checkpoint(tmp_path) == log.stat().st_size
    write(log, b"".join(cri(T, "stdout", "F", f"new {i}") for i in range(10)), mode="ab")
    second = CollectingSink()
    follow(tmp_path, [str(log)], [second], lambda: len(second.records) == 10)
    assert second.messages == [f"new {i}" for i in range(10)]


def test_unacknowledged_ranges_are_read_again_after_restart(tmp_path):
    log = tmp_path / "app.log"
    lines = [cri(T, "stdout", "F", f"line {i:04d}") for i in range(1000)]
    write(log, b"".join(lines))
    stalled = CollectingSink(auto_ack=False)
    follow(tmp_path, [str(log)], [stalled], lambda: len(stalled.records) == 1000, read_chunk_bytes=8192)
    stalled.ack_first(2)  # too late: the pipeline has stopped and saved what was acked then
    assert checkpoint(tmp_path) == 0
    resumed = CollectingSink()
    follow(tmp_path, [str(log)], [resumed], lambda: len(resumed.records) == 1000)
    assert resumed.messages == [f"line {i:04d}" for i in range(1000)]


def test_checkpoint_is_the_longest_acknowledged_prefix(tmp_path):
    log = tmp_path / "app.log"
    write(log, b"".join(cri(T, "stdout", "F", f"line {i:04d} " + "y" * 60) for i in range(1000)))
    stalled = CollectingSink(auto_ack=False)
    config = make_config(tmp_path, [str(log)], read_chunk_bytes=8192, poll_interval_secs=0.01)
    pipeline, _ = make_pipeline(config, [stalled])

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await wait_for(lambda: len(stalled.records) >= 1000)
        ranges = list(stalled.unacked)
        ranges[1].ack()
        ranges[3].ack()
        pipeline.save_positions()
        assert checkpoint(tmp_path) == 0  # range 0 is not acked: nothing is safe yet
        ranges[0].ack()
        pipeline.save_positions()
        assert checkpoint(tmp_path) == ranges[1].end  # 0 and 1 are done, 2 is not
        stalled.unacked = [r for i, r in enumerate(ranges) if i not in (0, 1, 3)]
        pipeline.stop()
        await task
        return ranges[1].end

    acked_end = asyncio.run(scenario())
    resumed = CollectingSink()
    follow(tmp_path, [str(log)], [resumed], lambda: len(resumed.records) == 1000 - _count_before(log, acked_end))
    assert resumed.offsets[0] == acked_end


def _count_before(path, offset: int) -> int:
    return path.read_bytes()[:offset].count(b"\n")


def test_a_range_waits_for_every_sink_it_was_routed_to(tmp_path):
    log = tmp_path / "app.log"
    write(log, b"".join(cri(T, "stdout", "F", f"line {i}") for i in range(50)))
    fast, slow = CollectingSink("fast"), CollectingSink("slow", auto_ack=False)
    _, metrics = follow(tmp_path, [str(log)], [fast, slow], lambda: len(slow.records) == 50)
    assert len(fast.records) == 50
    assert checkpoint(tmp_path) == 0
    assert metrics.value("shipper_file_lag_bytes", path=str(log)) == log.stat().st_size


def test_records_dropped_by_a_filter_are_acknowledged_at_once(tmp_path):
    log = tmp_path / "app.log"
    write(log, b"".join(cri(T, "stdout", "F", f"debug {i}") for i in range(50)) + cri(T, "stdout", "F", "error!"))
    sink = CollectingSink(auto_ack=False)
    settings = {"filters": (FilterRule("drop", "log", re.compile("^debug")),)}
    pipeline, metrics = follow(tmp_path, [str(log)], [sink],
                               lambda: len(sink.records) == 1, input_settings=settings)
    assert sink.messages == ["error!"]
    assert metrics.value("shipper_records_dropped_total", filter="drop:log") == 50
    assert checkpoint(tmp_path) <= log.stat().st_size - len(cri(T, "stdout", "F", "error!"))


def test_an_incomplete_last_line_waits_for_its_newline(tmp_path):
    log = tmp_path / "app.log"
    write(log, cri(T, "stdout", "F", "complete") + f"{T} stdout F still being wri".encode())
    sink = CollectingSink()
    config = make_config(tmp_path, [str(log)], poll_interval_secs=0.01)
    pipeline, _ = make_pipeline(config, [sink])

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await wait_for(lambda: len(sink.records) >= 1)
        await asyncio.sleep(0.2)
        assert sink.messages == ["complete"]
        write(log, b"tten\n", mode="ab")
        await wait_for(lambda: len(sink.records) >= 2)
        pipeline.stop()
        await task

    asyncio.run(scenario())
    assert sink.messages == ["complete", "still being written"]


def test_a_waiting_partial_holds_the_checkpoint_and_is_joined_after_restart(tmp_path):
    log = tmp_path / "app.log"
    head = cri(T, "stdout", "F", "done")
    write(log, head + cri(T, "stdout", "P", "first half, "))
    sink = CollectingSink()
    follow(tmp_path, [str(log)], [sink], lambda: len(sink.records) == 1, partial_flush_secs=60)
    assert checkpoint(tmp_path) == len(head)
    write(log, cri(T, "stdout", "F", "second half"), mode="ab")
    resumed = CollectingSink()
    follow(tmp_path, [str(log)], [resumed], lambda: len(resumed.records) == 1)
    assert resumed.messages == ["first half, second half"]
    assert resumed.offsets == [len(head)]


def test_a_partial_whose_last_part_never_comes_is_flushed_after_the_timeout(tmp_path):
    log = tmp_path / "app.log"
    write(log, cri(T, "stdout", "P", "orphan part"))
    sink = CollectingSink()
    follow(tmp_path, [str(log)], [sink], lambda: len(sink.records) == 1, partial_flush_secs=0.05)
    assert sink.records[0]["log"] == "orphan part"
    assert sink.records[0]["shipper"] == {"flags": ["unfinished_partial"]}
    assert checkpoint(tmp_path) == log.stat().st_size


def test_reading_pauses_when_the_in_flight_budget_is_used(tmp_path):
    log = tmp_path / "app.log"
    write(log, b"".join(cri(T, "stdout", "F", f"line {i:05d} " + "z" * 100) for i in range(20000)))
    stalled = CollectingSink(auto_ack=False)
    config = make_config(tmp_path, [str(log)], read_chunk_bytes=65536, max_in_flight_bytes=256 * 1024,
                         poll_interval_secs=0.01)
    pipeline, metrics = make_pipeline(config, [stalled])

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await asyncio.sleep(0.3)
        held = len(stalled.records)
        assert 0 < held < 20000
        assert pipeline.in_flight_bytes < 256 * 1024 + 65536
        stalled.ack_first(len(stalled.unacked))
        stalled.auto_ack = True
        await wait_for(lambda: len(stalled.records) >= 20000)
        pipeline.stop()
        await task
        return held

    held = asyncio.run(scenario())
    assert held <= (256 * 1024 + 65536) // 115 + 1
    assert [int(m[5:10]) for m in stalled.messages] == list(range(20000))


def test_files_matching_exclude_globs_are_not_read(tmp_path):
    keep, skip = tmp_path / "keep.log", tmp_path / "skip.log"
    write(keep, cri(T, "stdout", "F", "kept"))
    write(skip, cri(T, "stdout", "F", "skipped"))
    sink, _ = one_shot(tmp_path, [str(tmp_path / "*.log")], input_settings={"exclude": ("skip*",)})
    assert sink.messages == ["kept"]


def test_positions_file_is_keyed_by_identity(tmp_path):
    log = tmp_path / "app.log"
    write(log, cri(T, "stdout", "F", "a"))
    sink = CollectingSink()
    follow(tmp_path, [str(log)], [sink], lambda: len(sink.records) == 1)
    saved = orjson.loads((tmp_path / "positions.json").read_bytes())
    (entry,) = saved["files"]
    stat = log.stat()
    assert (entry["dev"], entry["ino"], entry["offset"], entry["input"]) == (stat.st_dev, stat.st_ino, stat.st_size, "test")
    assert len(entry["fingerprint"]) == 16 and entry["fingerprint_size"] == stat.st_size


def test_positions_are_written_periodically_while_running(tmp_path):
    log = tmp_path / "app.log"
    write(log, cri(T, "stdout", "F", "a"))
    sink = CollectingSink()
    config = make_config(tmp_path, [str(log)], poll_interval_secs=0.01, checkpoint_interval_secs=0.05)
    pipeline, metrics = make_pipeline(config, [sink])

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        positions = tmp_path / "positions.json"
        await wait_for(lambda: positions.exists() and checkpoint(tmp_path) == log.stat().st_size)
        write(log, cri(T, "stdout", "F", "b"), mode="ab")
        # written again without a shutdown
        await wait_for(lambda: checkpoint(tmp_path) == log.stat().st_size)
        assert not task.done()
        pipeline.stop()
        await task

    asyncio.run(scenario())
    assert metrics.value("shipper_position_saves_total") >= 2
    assert metrics.value("shipper_file_lag_bytes", path=str(log)) == 0  # everything acknowledged


def test_read_from_tail_applies_only_to_files_present_at_the_first_start(tmp_path):
    old, new = tmp_path / "old.log", tmp_path / "new.log"
    write(old, cri(T, "stdout", "F", "history") + cri(T, "stdout", "F", "more history"))
    sink = CollectingSink()
    config = make_config(tmp_path, [str(tmp_path / "*.log")], read_from="tail", poll_interval_secs=0.01,
                         rescan_interval_secs=0.02)
    pipeline, _ = make_pipeline(config, [sink])

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await wait_for(lambda: bool(pipeline.files))
        write(old, cri(T, "stdout", "F", "appended"), mode="ab")
        write(new, cri(T, "stdout", "F", "new file from its head"))
        await wait_for(lambda: len(sink.records) >= 2)
        pipeline.stop()
        await task

    asyncio.run(scenario())
    assert sorted(sink.messages) == ["appended", "new file from its head"]


def hundred_lines_followed(tmp_path):
    """app.log with 100 lines, and a pipeline (not started) that follows it into a sink."""
    log = tmp_path / "app.log"
    write(log, b"".join(cri(T, "stdout", "F", f"before {i}") for i in range(100)))
    sink = CollectingSink()
    pipeline, metrics = make_pipeline(make_config(tmp_path, [str(log)], poll_interval_secs=0.01), [sink])
    return log, sink, pipeline, metrics


@pytest.mark.parametrize("after_lines", [5, 300])  # shorter than before, and regrown past the old offset
def test_a_file_truncated_in_place_is_read_again_from_its_start(tmp_path, after_lines):
    log, sink, pipeline, metrics = hundred_lines_followed(tmp_path)

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await wait_for(lambda: len(sink.records) >= 100)
        with open(log, "r+b") as handle:  # what logrotate's copytruncate does after copying
            handle.truncate(0)
        write(log, b"".join(cri("2026-11-20T11:00:00.5Z", "stdout", "F", f"after {i}") for i in range(after_lines)),
              mode="ab")
        await wait_for(lambda: len(sink.records) >= 100 + after_lines)
        pipeline.stop()
        await task

    asyncio.run(scenario())
    assert sink.messages[100:] == [f"after {i}" for i in range(after_lines)]
    assert metrics.value("shipper_files_truncated_total") == 1
    # nothing was left unread, but with no copy next to it the shipper cannot know that
    assert metrics.value("shipper_files_skipped_total", reason="truncated") == 1
    assert checkpoint(tmp_path) == log.stat().st_size


def test_a_copy_shorter_than_what_was_read_is_no_loss(tmp_path):
    """copytruncate with lines written between the copy and the truncation, which the shipper
    happened to read from the original: the copy holds nothing unread, so nothing is skipped."""
    log, sink, pipeline, metrics = hundred_lines_followed(tmp_path)

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        shutil.copyfile(log, tmp_path / "app.log.1")
        write(log, cri(T, "stdout", "F", "after the copy"), mode="ab")
        await wait_for(lambda: len(sink.records) >= 101)
        os.truncate(log, 0)
        write(log, cri("2026-11-20T11:00:00.5Z", "stdout", "F", "new content"), mode="ab")
        await wait_for(lambda: len(sink.records) >= 102)
        pipeline.stop()
        await task

    asyncio.run(scenario())
    assert sink.messages == [f"before {i}" for i in range(100)] + ["after the copy", "new content"]
    assert metrics.value("shipper_files_truncated_total") == 1
    assert metrics.value("shipper_files_skipped_total", reason="truncated") == 0
