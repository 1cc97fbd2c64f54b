"""Rotation on real files while a writer writes continuously: every line exactly once, in order.

Each scenario runs the pipeline with a ``LogWriter`` thread appending numbered lines and
rotating the file the way kubelet or logrotate does; the sink's line numbers must be exactly
0..N-1 in order (a container's lines stay in order across its files, since the file now at
a path is read only after the one rotated away from it reached its end).
"""

import asyncio
import os
import shutil

import orjson

from shipper.tail.positions import load_positions
from tests.helpers import (
    CollectingSink, LogWriter, follow_while_writing, line_numbers, make_config, make_pipeline, numbered_line,
    received_line,
)

FAST = {"poll_interval_secs": 0.01, "rescan_interval_secs": 0.05, "rotate_wait_secs": 0.1,
        "checkpoint_interval_secs": 0.05, "read_chunk_bytes": 16384}


def follow(tmp_path, paths, writer, sink, expected_count, **settings):
    pipeline, metrics = make_pipeline(make_config(tmp_path, paths, **{**FAST, **settings}), [sink])
    asyncio.run(follow_while_writing(pipeline, [writer], lambda: len(sink.records) >= expected_count))
    return metrics


def test_rename_and_create_every_few_thousand_lines(tmp_path):
    """kubelet: 0.log becomes 0.log.<timestamp>, a new 0.log starts; older rotations are
    deleted (kubelet keeps a few), possibly while the shipper still reads them."""
    log = tmp_path / "0.log"

    def rotate(writer, number):
        writer.handle.close()
        os.rename(log, f"{log}.20261120-10{writer.rotations:04d}")
        for old in sorted(tmp_path.glob("0.log.*"))[:-2]:
            old.unlink()
        writer.handle = open(log, "ab", buffering=0)
        return number

    sink = CollectingSink()
    writer = LogWriter(log, 30000, 3000, rotate, received_line(sink))
    follow(tmp_path, [str(tmp_path / "*.log")], writer, sink, 30000)
    assert writer.rotations == 9
    assert line_numbers(sink.messages) == list(range(30000))


def test_copytruncate_loses_only_lines_written_between_copy_and_truncate(tmp_path):
    """logrotate copytruncate: copy to app.log.N, then truncate in place. Lines the app writes
    between the copy and the truncation are in neither file: logrotate loses them, and no
    reader can get them. Everything else arrives once, in order: what the shipper had not
    read when the file was truncated is read from the copy."""
    log = tmp_path / "app.log"
    in_the_gap: list[int] = []

    def rotate(writer, number):
        shutil.copyfile(log, f"{log}.{writer.rotations + 1}")
        for gap in range(number, number + 5):  # written after the copy, before the truncation
            writer.handle.write(numbered_line(gap))
            in_the_gap.append(gap)
        os.truncate(log, 0)
        return number + 5

    sink = CollectingSink()
    writer = LogWriter(log, 20000, 2500, rotate, received_line(sink))
    metrics = follow(tmp_path, [str(tmp_path / "*.log")], writer, sink, 20000 - 7 * 5)
    numbers = line_numbers(sink.messages)
    assert len(numbers) == len(set(numbers)), "duplicates"
    assert numbers == sorted(numbers), "out of order"
    missing = set(range(20000)) - set(numbers)
    assert missing <= set(in_the_gap)
    assert metrics.value("shipper_files_truncated_total") == 7
    assert metrics.value("shipper_files_skipped_total") == 0  # every copy was found


def test_a_file_deleted_while_open_is_read_to_its_end(tmp_path):
    """The app keeps writing to a file that was deleted under it, then moves to a new one."""
    log = tmp_path / "app.log"

    def rotate(writer, number):
        os.unlink(log)
        for late in range(number, number + 200):  # still written to the deleted file
            writer.handle.write(numbered_line(late))
        writer.handle.close()
        writer.handle = open(log, "ab", buffering=0)
        return number + 200

    sink = CollectingSink()
    writer = LogWriter(log, 12000, 2000, rotate, received_line(sink))
    follow(tmp_path, [str(log)], writer, sink, 12000)
    assert writer.rotations == 5
    assert line_numbers(sink.messages) == list(range(12000))


def test_a_symlink_retargeted_to_a_new_file_is_a_new_file(tmp_path):
    """/var/log/containers/*.log link into /var/log/pods; kubelet points a link at a new file.
    Identity and positions follow the target; the metadata comes from the link's name."""
    links, pods = tmp_path / "containers", tmp_path / "pods"
    links.mkdir()
    pods.mkdir()
    link = links / ("web-1_shop_app-" + "ab" * 32 + ".log")
    first_target = pods / "0.log"
    first_target.touch()
    link.symlink_to(first_target)
    sink = CollectingSink()

    def rotate(writer, number):
        writer.handle.close()
        target = pods / f"{writer.rotations + 1}.log"
        writer.handle = open(target, "ab", buffering=0)
        temporary = links / "retarget.tmp"
        temporary.symlink_to(target)
        os.rename(temporary, link)  # atomic, as kubelet replaces links
        return number

    writer = LogWriter(first_target, 10000, 2000, rotate, received_line(sink))
    pipeline, _ = make_pipeline(make_config(tmp_path, [str(links / "*.log")], **FAST), [sink])
    asyncio.run(follow_while_writing(pipeline, [writer], lambda: len(sink.records) >= 10000))
    assert writer.rotations == 4
    assert line_numbers(sink.messages) == list(range(10000))
    assert {orjson.loads(orjson.dumps(record))["kubernetes"]["pod_name"] for record in sink.records} == {"web-1"}
    saved = load_positions(str(tmp_path / "positions.json")).values()
    assert [(entry["path"], entry["target"]) for entry in saved] == [(str(link), str(pods / "4.log"))]
