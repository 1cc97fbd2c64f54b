"""Discovery: inotify events (watchfiles) wake the tail loop; the periodic rescan is the fallback."""

import asyncio
import time

from shipper.tail.watch import DirectoryWatcher, directories_to_watch, glob_root
from tests.helpers import CollectingSink, line_numbers, make_config, make_pipeline, numbered_line

# Neither the rescan nor the idle poll comes round during these tests: only events can wake.
SLEEPY = {"rescan_interval_secs": 600, "poll_interval_secs": 600, "checkpoint_interval_secs": 600}


async def append_until_received(path, sink, start: int = 0, timeout: float = 10.0) -> int:
    """Append lines numbered from ``start`` (the records the sink has), one every 50 ms, until
    the sink got one more (the watch may still be starting when the first are written);
    returns the next number."""
    number = start
    deadline = time.monotonic() + timeout
    while len(sink.records) <= start and time.monotonic() < deadline:
        with open(path, "ab") as handle:
            handle.write(numbered_line(number))
        number += 1
        await asyncio.sleep(0.05)
    assert len(sink.records) > start, "nothing arrived"
    return number


async def wait_for_count(sink, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.records) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_a_new_file_and_its_lines_are_picked_up_by_events(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    sink = CollectingSink()
    pipeline, _ = make_pipeline(make_config(tmp_path, [str(logs / "*.log")], **SLEEPY), [sink])

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        written = await append_until_received(logs / "new.log", sink)
        with open(logs / "new.log", "ab") as handle:  # an idle file woken by its write
            handle.write(numbered_line(written))
        await wait_for_count(sink, written + 1)
        pipeline.stop()
        await task
        return written + 1

    written = asyncio.run(scenario())
    assert line_numbers(sink.messages) == list(range(written))


def test_writes_to_a_symlink_target_outside_the_globs_directory_wake_the_loop(tmp_path):
    """/var/log/containers holds links; the writes happen in /var/log/pods/<pod>/<container>/."""
    links, target_dir = tmp_path / "containers", tmp_path / "pods" / "shop_web-1_uid" / "app"
    links.mkdir()
    target_dir.mkdir(parents=True)
    target = target_dir / "0.log"
    target.write_bytes(numbered_line(0))
    (links / "web-1_shop_app-{}.log".format("cd" * 32)).symlink_to(target)
    sink = CollectingSink()
    pipeline, _ = make_pipeline(make_config(tmp_path, [str(links / "*.log")], **SLEEPY), [sink])

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await wait_for_count(sink, 1)
        written = await append_until_received(target, sink, start=1)
        await wait_for_count(sink, written)
        pipeline.stop()
        await task
        return written

    written = asyncio.run(scenario())
    assert line_numbers(sink.messages) == list(range(written))


def test_without_inotify_the_rescan_finds_new_files(tmp_path):
    sink = CollectingSink()
    config = make_config(tmp_path, [str(tmp_path / "*.log")], inotify=False, rescan_interval_secs=0.05,
                         poll_interval_secs=0.05)
    pipeline, _ = make_pipeline(config, [sink])

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        await asyncio.sleep(0)
        (tmp_path / "late.log").write_bytes(numbered_line(0))
        await wait_for_count(sink, 1)
        pipeline.stop()
        await task

    asyncio.run(scenario())
    assert sink.messages == ["line 0000000"]


def test_watched_directories_are_the_globs_roots_and_the_targets_outside_them(tmp_path):
    pods = tmp_path / "pods" / "shop_web-1_uid" / "app"
    pods.mkdir(parents=True)
    (tmp_path / "containers").mkdir()
    patterns = [str(tmp_path / "containers" / "*.log"), str(tmp_path / "pods" / "*" / "*" / "*.log")]
    assert glob_root(patterns[1]) == str(tmp_path / "pods")
    assert glob_root(str(tmp_path / "missing" / "*.log")) is None
    targets = [str(pods / "0.log"), str(tmp_path / "elsewhere" / "0.log"), str(tmp_path / "other" / "0.log")]
    (tmp_path / "other").mkdir()
    assert directories_to_watch(patterns, targets) == {
        str(tmp_path / "containers"), str(tmp_path / "pods"), str(tmp_path / "other")}


def test_a_watch_that_cannot_start_reports_once_and_is_not_retried_every_rescan(tmp_path):
    events = []
    watcher = DirectoryWatcher(events.append, lambda path: False)
    missing = frozenset({str(tmp_path / "gone")})

    async def scenario():
        await watcher.watch(missing)
        for _ in range(500):
            if watcher.failed:
                break
            await asyncio.sleep(0.01)
        await watcher.watch(missing)  # the next rescan: same set, no new attempt
        await watcher.close()

    asyncio.run(scenario())
    assert watcher.failed and not watcher.running
    assert events == [set()]  # the pipeline rescans and then polls


def test_events_on_paths_no_glob_matches_are_not_news(tmp_path):
    """A recursive watch of a broad directory sees every write under it (journals, copies
    logrotate makes); only followed files and paths the globs match wake the loop."""
    from watchfiles import Change

    pipeline, _ = make_pipeline(make_config(tmp_path, [str(tmp_path / "*.log")]), [CollectingSink()])
    pipeline._on_fs_event({(Change.modified, str(tmp_path / "journal" / "system.journal")),
                           (Change.added, str(tmp_path / "app.log.1"))})
    assert not pipeline._wake.is_set() and not pipeline._rescan_due
    pipeline._on_fs_event({(Change.added, str(tmp_path / "new.log"))})
    assert pipeline._wake.is_set() and pipeline._rescan_due
