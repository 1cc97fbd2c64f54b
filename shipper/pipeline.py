"""Wires the stages: tail -> decode -> records -> filter -> sinks, and acks -> checkpoints.

One asyncio loop owns the I/O. Per-line work is plain synchronous code over whole chunks:
a chunk is read in a worker thread (one hop per chunk, not per line), then decoded, built,
filtered and handed to the sinks in one call. Backpressure is a byte budget: a chunk is read
only while the bytes not yet checkpointed (acknowledged by every sink and written to the
positions file), and the encoded bytes each sink holds, stay under ``max_in_flight_bytes``:
that bounds memory and what a crash re-reads.

Files: discovered by glob (woken by inotify events, rescanned as the fallback), followed
across rename, copytruncate, deletion and symlink retargeting, found again after a restart
among their rotated siblings, and kept under ``max_open_files`` descriptors.
"""

import asyncio
import fnmatch
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import orjson

from shipper.acks import AckRange, FileAcks
from shipper.config import Config, InputConfig
from shipper.decode.cri import CriDecoder
from shipper.decode.docker import DockerDecoder
from shipper.decode.flags import NO_NEWLINE
from shipper.decode.multiline import MultilineDecoder, rule_for
from shipper.filters import RecordFilter
from shipper.kube.enrich import file_kubernetes, refresh_pod_metadata
from shipper.kube.pod_metadata import PodMetadataCache
from shipper.metrics import HealthState, Metrics
from shipper.parse.records import RecordBuilder
from shipper.sinks import Sink
from shipper.tail.files import TRUNCATED, TailedFile, last_line_end, matching_paths
from shipper.tail.identity import FileIdentity, identify, still_matches
from shipper.tail.positions import load_positions, position_entry, position_key, save_positions
from shipper.tail.rotation import COMPRESSED_SUFFIX, find_compressed, find_copy, find_moved, siblings
from shipper.tail.watch import Change, DirectoryWatcher, directories_to_watch

log = logging.getLogger("shipper.pipeline")


@dataclass
class Input:
    """An input's configuration with what runs it: record builder, filter and sinks."""

    config: InputConfig
    builder: RecordBuilder
    filter: RecordFilter | None
    sinks: list[Sink]

    @classmethod
    def from_config(cls, config: InputConfig, sinks: list[Sink]) -> "Input":
        return cls(config, RecordBuilder(config.json, config.security), RecordFilter(config.filters) if config.filters else None, sinks)


class Pipeline:
    def __init__(
        self,
        config: Config,
        inputs: list[Input],
        metrics: Metrics,
        *,
        one_shot: bool = False,
        persist_positions: bool = True,
        health: HealthState | None = None,
        pod_metadata: PodMetadataCache | None = None,
    ) -> None:
        """``one_shot``: read every file from its start position to EOF once and return (the
        dry run); otherwise follow files until ``stop()``. ``persist_positions``: load and save
        the positions file. ``pod_metadata``: the cache records are enriched from (None: only
        what the file name tells)."""
        self.config = config
        self.inputs = inputs
        self.metrics = metrics
        self.one_shot = one_shot
        self.persist_positions = persist_positions
        self.health = health or HealthState()
        self.pod_metadata = pod_metadata
        self.files: dict[str, TailedFile] = {}  # by position_key
        # Bytes read and not yet durably checkpointed: unacknowledged, or acknowledged but not
        # yet in the positions file. A crash re-reads at most this much (plus split lines still
        # waiting for their last part), so it bounds duplicates as well as memory.
        self.in_flight_bytes = 0
        self.acked_unsaved_bytes = 0
        self._budget_freed = asyncio.Event()
        self._save_due = asyncio.Event()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._rescan_due = False
        self._saved_positions: dict[str, dict] = {}
        self._first_start = True
        self._last_saved: list[dict] | None = None
        self._save_sequence = itertools.count()
        self._written_sequence = -1
        self._write_lock = threading.Lock()
        self._newest_at_path: dict[tuple[str, str], TailedFile] = {}  # (input, path) -> the file last opened there
        self._open_descriptors: OrderedDict[str, TailedFile] = OrderedDict()  # least recently read first
        self._cap_warned = False
        self._watcher = None if one_shot or not config.inotify else DirectoryWatcher(self._on_fs_event, self._ignored)
        self._patterns = [os.path.abspath(pattern) for inp in inputs for pattern in inp.config.paths]
        self._sinks: list[Sink] = []

    # ---- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading; ``run`` then drains the sinks, saves positions and returns."""
        self._stopping.set()

    async def run(self) -> None:
        self._sinks = sinks = self._all_sinks()
        for sink in sinks:
            await sink.start()
        if self.persist_positions:
            self._saved_positions = load_positions(self.config.positions_path)
            self._first_start = not os.path.exists(self.config.positions_path)
        last_saved_at = os.path.getmtime(self.config.positions_path) if not self._first_start else 0.0
        self.discover()
        if self.persist_positions:
            self._resume_unfinished(last_saved_at)
        self._first_start = False
        self.health.ready = True
        checkpointer = asyncio.create_task(self._checkpoint_loop()) if self.persist_positions else None
        try:
            await self._update_watch()
            await self._tail_loop()
            if self.one_shot:
                for tailed in list(self.files.values()):
                    self._ship_decoded(tailed, tailed.decoder.partials.flush(), tailed.read_offset)
            try:
                async with asyncio.timeout(self.config.shutdown_grace_secs):
                    for sink in sinks:
                        await sink.drain()
            except TimeoutError:
                log.warning("sinks not drained within %.0fs; unacknowledged lines will be re-read after restart",
                            self.config.shutdown_grace_secs)
        finally:
            if self._watcher:
                await self._watcher.close()
            if checkpointer:
                checkpointer.cancel()
            for sink in sinks:
                await sink.close()
            if self.persist_positions:
                self.save_positions()
            for tailed in self.files.values():
                tailed.close()
            self.metrics.files.set(0)

    def _all_sinks(self) -> list[Sink]:
        unique: dict[int, Sink] = {}
        for inp in self.inputs:
            for sink in inp.sinks:
                unique[id(sink)] = sink
        return list(unique.values())

    # ---- discovery -------------------------------------------------------------------------

    def discover(self) -> None:
        """Open files newly matching an input's globs."""
        open_inodes = {(t.input.config.name, t.identity.dev, t.identity.ino) for t in self.files.values()}
        for inp in self.inputs:
            for path in matching_paths(inp.config.paths, inp.config.exclude):
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    self._skip("gone_before_open", "%s was deleted before it could be opened", path)
                    continue
                if (inp.config.name, stat.st_dev, stat.st_ino) not in open_inodes:
                    self._open(inp, path)
        self.metrics.files.set(len(self.files))

    def _open(self, inp: Input, path: str, *, open_path: str | None = None, target: str | None = None,
              saved: dict | None = None, offset: int | None = None, rotated: bool = False) -> TailedFile | None:
        """Start following the file at ``open_path`` (default ``path``) as the file of ``path``.

        A rotated sibling found later is opened at its new name but keeps the ``path`` and
        ``target`` it was followed as, so its positions entry leads to it again. ``saved``
        is its positions entry when known; ``offset`` overrides where reading starts."""
        try:
            fd = os.open(open_path or path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._skip("gone_before_open", "%s was deleted before it could be opened", open_path or path)
            return None
        except OSError as error:
            self._skip("open_failed", "cannot open %s: %s", open_path or path, error.strerror)
            return None
        identity = identify(fd, allow_short=self.one_shot)
        # No complete first line yet: nothing to ship, look again later. No room: the cap is
        # taken by rotated files still being read; look again later too. (No await since the
        # open: the cap holds wherever the loop can be observed.)
        if identity is None or not self._make_room():
            os.close(fd)
            return None
        key = position_key(inp.config.name, identity)
        if saved is None:
            saved = self._saved_positions.pop(key, None)
        if offset is None:
            offset = self._start_offset(fd, path, saved)
        first_byte = os.pread(fd, 1, 0)
        fmt = inp.config.format
        if fmt == "auto":
            fmt = "docker" if first_byte == b"{" else "cri"
        decoder = (DockerDecoder if fmt == "docker" else CriDecoder)(self.config.max_record_bytes)
        kubernetes = file_kubernetes(path, self.config.node_name)
        multiline = rule_for(inp.config.multiline, kubernetes.get("container_name"))
        if multiline is not None:
            decoder = MultilineDecoder(decoder, multiline)
        tailed = TailedFile(
            path, target or os.path.realpath(path), fd, identity, key, inp, decoder, kubernetes,
            orjson.Fragment(orjson.dumps(kubernetes)), offset, None, time.monotonic(),
        )
        tailed.acks = FileAcks(offset, partial(self._acked, tailed))
        tailed.rotated = rotated
        self.files[key] = tailed
        self._open_descriptors[key] = tailed
        at_path = (inp.config.name, path)
        previous = self._newest_at_path.get(at_path)
        if previous is not None and previous.key in self.files and previous is not tailed:
            if rotated:  # found after the file now at the path was opened: that one waits for it,
                # after the older rotated files resumed before this one (positions keep read order)
                tailed.predecessor = previous.predecessor
                previous.predecessor = tailed
            else:
                tailed.predecessor = previous
        if not rotated or previous is None or previous.key not in self.files:
            self._newest_at_path[at_path] = tailed
        opened = open_path or tailed.target
        log.info("following %s%s from offset %d (input %s, %s)", path,
                 f" at {opened}" if opened != path else "", offset, inp.config.name, fmt)
        return tailed

    def _start_offset(self, fd: int, path: str, saved: dict | None) -> int:
        size = os.fstat(fd).st_size
        if saved is not None:
            if saved["offset"] <= size:
                return saved["offset"]
            self._skip("truncated", "%s is shorter (%d) than its saved position (%d): truncated, reading from 0",
                       path, size, saved["offset"])
            return 0
        if self._first_start and self.config.read_from == "tail" and not self.one_shot:
            return last_line_end(fd, size)
        return 0

    def _resume_unfinished(self, last_saved_at: float) -> None:
        """Saved positions no file at the globs claimed: files rotated while the shipper was
        down. Finish the ones still next to their old name; count the ones out of reach.
        Then read the rotations the shipper never saw (down across several rotations)."""
        inputs = {inp.config.name: inp for inp in self.inputs}
        rotated_paths: dict[tuple[str, str], tuple[Input, str]] = {}
        for key, entry in list(self._saved_positions.items()):
            inp = inputs.get(entry["input"])
            if inp is None:  # an input no longer configured keeps its positions
                continue
            identity = FileIdentity(entry["dev"], entry["ino"], entry["fingerprint"], entry["fingerprint_size"])
            target = entry.get("target", entry["path"])
            if _is_at(target, identity):  # still in place (no longer matched, or waiting for a descriptor)
                continue
            del self._saved_positions[key]
            rotated_paths[(inp.config.name, entry["path"])] = (inp, target)
            moved = find_moved(target, identity)
            if moved:
                log.info("%s was rotated to %s while the shipper was down; finishing it", target, moved)
                self._open(inp, entry["path"], open_path=moved, target=target, saved=entry, rotated=True)
                continue
            compressed = find_compressed(target, identity)
            if compressed:
                self._skip("compressed_rotation",
                           "%s was rotated and compressed to %s while the shipper was down: %d bytes after offset "
                           "%d were never read", target, compressed.path, max(0, compressed.size - entry["offset"]),
                           entry["offset"])
                continue
            unread = entry.get("size", 0) - entry["offset"]
            if unread > 0:
                self._skip("gone_while_down", "%s was deleted while the shipper was down: at least %d bytes after "
                           "offset %d were never read", target, unread, entry["offset"])
        for (_, path), (inp, target) in rotated_paths.items():
            self._read_unseen_rotations(inp, path, target, last_saved_at)
        self.metrics.files.set(len(self.files))

    def _read_unseen_rotations(self, inp: Input, path: str, target: str, last_saved_at: float) -> None:
        """Rotated siblings of ``target`` no position names and written after the last
        positions save: created and rotated away while the shipper was down, never read. A
        sibling last written before that save was read and let go (its position dropped then).
        Read oldest first, before the file now at the path."""
        known = {(t.identity.dev, t.identity.ino) for t in self.files.values() if t.input is inp}
        known |= {(e["dev"], e["ino"]) for e in self._saved_positions.values() if e["input"] == inp.config.name}
        unseen = []
        for sibling in siblings(target):
            try:
                stat = os.stat(sibling)
            except OSError:
                continue
            if sibling.endswith(COMPRESSED_SUFFIX) or (stat.st_dev, stat.st_ino) in known:
                continue
            if stat.st_mtime > last_saved_at:
                unseen.append((stat.st_mtime, sibling))
        for _, sibling in sorted(unseen):
            log.info("%s was created and rotated to %s while the shipper was down; reading it", target, sibling)
            self._open(inp, path, open_path=sibling, target=target, offset=0, rotated=True)

    def _skip(self, reason: str, message: str, *args) -> None:
        """Every file or byte range not read is counted with its reason and logged once."""
        self.metrics.skipped_files.labels(reason=reason).inc()
        log.warning(message + " [skipped: %s]", *args, reason)

    # ---- file system events ----------------------------------------------------------------

    def _on_fs_event(self, changes: set[tuple[Change, str]]) -> None:
        """Events on files followed wake the tail loop; a followed file renamed or deleted,
        or an event on a path an input's glob matches that is not followed (created, or
        written before its first line was complete), also triggers a rescan. Other paths in
        the watched trees (a recursive watch of a broad directory) are not news. An empty
        batch means the watch stopped: rescan, then poll."""
        followed = {t.target for t in self.files.values()} | {t.path for t in self.files.values()}
        wake = rescan = not changes
        for change, path in changes:
            if path in followed:
                wake = True
                rescan = rescan or change != Change.modified
            elif any(fnmatch.fnmatchcase(path, pattern) for pattern in self._patterns):
                wake = rescan = True
        if rescan:
            self._rescan_due = True
        if wake:
            self._wake.set()

    def _ignored(self, path: str) -> bool:
        """The positions file's own writes are not news."""
        positions = os.path.abspath(self.config.positions_path)
        return path == positions or os.path.dirname(path) == os.path.dirname(positions) and \
            os.path.basename(path).startswith(".positions-")

    async def _update_watch(self) -> None:
        if self._watcher is not None:
            await self._watcher.watch(directories_to_watch(self._patterns, (t.target for t in self.files.values())))

    # ---- descriptors -----------------------------------------------------------------------

    def _make_room(self) -> bool:
        """Keep open descriptors under ``read.max_open_files``: close the least recently read
        file still at its path (it can be reopened there). Rotated files keep theirs."""
        if len(self._open_descriptors) < self.config.max_open_files:
            return True
        for key, candidate in self._open_descriptors.items():
            if not candidate.rotated and _still_at_path(candidate):
                candidate.close()
                del self._open_descriptors[key]
                return True
        if not self._cap_warned:
            log.warning("%d descriptors open and every one is a rotated file still being read: new files wait",
                        len(self._open_descriptors))
            self._cap_warned = True
        return False

    def _reopen_if_changed(self, tailed: TailedFile) -> bool:
        """For a file whose descriptor was closed: reopen it when it changed. True when it is
        open now. It is looked for at its path, at its target, then among its rotated siblings,
        and accepted by device and inode (a changed first line is then seen as truncation)."""
        identity = tailed.identity
        try:
            stat = os.stat(tailed.path)
            if (stat.st_dev, stat.st_ino) == (identity.dev, identity.ino) and stat.st_size == tailed.read_offset:
                return False
        except FileNotFoundError:
            pass
        if not self._make_room():
            return False
        candidates = [tailed.path, tailed.target]
        candidates += [s for s in siblings(tailed.target) if not s.endswith(COMPRESSED_SUFFIX)]
        for candidate in candidates:
            try:
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            stat = os.fstat(fd)
            if (stat.st_dev, stat.st_ino) == (identity.dev, identity.ino):
                tailed.fd = fd
                self._open_descriptors[tailed.key] = tailed
                if candidate != tailed.path and not tailed.rotated:
                    tailed.rotated = True
                    log.info("%s was rotated to %s while its descriptor was closed; reading it to its end",
                             tailed.path, candidate)
                return True
            os.close(fd)
        self._skip("deleted_while_closed", "%s was deleted while its descriptor was closed (read.max_open_files): "
                   "whatever was written after offset %d and not read is lost", tailed.path, tailed.read_offset)
        self._release(tailed)
        return False

    def _release(self, tailed: TailedFile) -> None:
        """Let a file go. Its ranges still in flight keep counting when their acks arrive."""
        tailed.close()
        del self.files[tailed.key]
        self._open_descriptors.pop(tailed.key, None)
        at_path = (tailed.input.config.name, tailed.path)
        if self._newest_at_path.get(at_path) is tailed:
            del self._newest_at_path[at_path]
        try:
            self.metrics.file_lag.remove(tailed.path)
        except KeyError:  # released before its first checkpoint
            pass
        self.metrics.files.set(len(self.files))

    def _expire_deleted(self, now: float) -> None:
        """A deleted file held open keeps its disk space: give up on it after
        ``read.max_deleted_hold_secs`` (when a sink is down, reading it may never finish)."""
        for tailed in list(self.files.values()):
            if tailed.fd is None:
                continue
            if tailed.deleted_at is None:
                if os.fstat(tailed.fd).st_nlink == 0:
                    tailed.deleted_at = now
                    tailed.rotated = True
                continue
            if now - tailed.deleted_at < self.config.max_deleted_hold_secs:
                continue
            unread = tailed.size() - tailed.read_offset
            if unread > 0:
                self._skip("deleted_hold_expired", "%s was deleted %.0fs ago and is not read to its end: %d bytes "
                           "after offset %d are lost", tailed.path, now - tailed.deleted_at, unread, tailed.read_offset)
                self._release(tailed)

    # ---- reading and shipping --------------------------------------------------------------

    async def _tail_loop(self) -> None:
        config = self.config
        next_rescan = time.monotonic() + config.rescan_interval_secs
        # Runtime lines are at most 16 KiB plus framing; anything longer is not a runtime line.
        max_line_bytes = config.read_chunk_bytes + config.max_record_bytes
        while not self._stopping.is_set():
            self.health.beat()
            self._wake.clear()  # before reading: an event during the round wakes the next wait
            now = time.monotonic()
            if not self.one_shot and (now >= next_rescan or self._rescan_due):
                self._rescan_due = False
                self.discover()
                self._expire_deleted(now)
                await self._update_watch()
                next_rescan = now + config.rescan_interval_secs
            progressed = False
            waiting_on_time = False  # a split line to flush or a rotated file to let go later
            # One chunk (read.chunk_bytes) per file per round: a chatty container cannot
            # starve the others.
            for tailed in list(self.files.values()):
                if self._stopping.is_set():
                    break
                if tailed.key not in self.files:  # let go earlier in this round
                    continue
                predecessor = tailed.predecessor
                if predecessor is not None:
                    if predecessor.key in self.files and not predecessor.at_eof:
                        continue
                    if predecessor.key not in self.files:
                        tailed.predecessor = None
                while self._over_budget() and not self._stopping.is_set():
                    self._budget_freed.clear()
                    if self.in_flight_bytes >= config.max_in_flight_bytes:
                        self._save_due.set()  # acknowledged bytes count as done once checkpointed
                    # Acks and checkpoints wake this; a sink letting go of bytes after its acks
                    # is seen on the poll.
                    await self._wait(self._budget_freed, config.poll_interval_secs)
                    if not self.one_shot:
                        self._expire_deleted(time.monotonic())
                if self._stopping.is_set():
                    break
                if tailed.key not in self.files:
                    continue
                if tailed.fd is None and not self._reopen_if_changed(tailed):
                    got = None
                elif tailed.unchanged_since_quiet_read():  # a file with nothing new costs no thread hop
                    got = None
                else:
                    self._open_descriptors.move_to_end(tailed.key)
                    got = await asyncio.to_thread(tailed.read_lines, config.read_chunk_bytes, max_line_bytes,
                                                  self.one_shot)
                tailed.at_eof = got is None
                if got is TRUNCATED:
                    self._forget_truncated(tailed)
                    progressed = True  # its copy and its new content are to be read next round
                elif got is not None:
                    progressed = True
                    tailed.last_data_at = now
                    self._ship_lines(tailed, *got)
                elif not self.one_shot and tailed.key in self.files:
                    self._idle(tailed, now)
                    waiting_on_time = waiting_on_time or tailed.rotated or bool(tailed.decoder.partials.pending)
            if not progressed:
                if self.one_shot:
                    return
                if self._watcher is not None and self._watcher.running and not waiting_on_time:
                    timeout = max(0.0, next_rescan - time.monotonic())  # events wake us; rescan is the fallback
                else:
                    timeout = config.poll_interval_secs
                await self._wait(self._wake, timeout)

    def _over_budget(self) -> bool:
        """Bytes read and not yet checkpointed, or bytes a sink holds encoded (short lines
        grow several times over with their metadata), reached ``max_in_flight_bytes``."""
        limit = self.config.max_in_flight_bytes
        return self.in_flight_bytes >= limit or any(sink.buffered_bytes >= limit for sink in self._sinks)

    async def _wait(self, event: asyncio.Event, timeout: float | None) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        other = asyncio.ensure_future(event.wait())
        await asyncio.wait({stop, other}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        other.cancel()

    def _idle(self, tailed: TailedFile, now: float) -> None:
        """A file with no new data: flush overdue split lines; let it go once rotated away,
        read to its end, acknowledged, and quiet for ``read.rotate_wait_secs`` (the runtime
        may still write a last line to a file it has not reopened yet)."""
        partials = tailed.decoder.partials
        if partials.pending and now - tailed.last_data_at >= self.config.partial_flush_secs:
            self._ship_decoded(tailed, partials.flush(), tailed.read_offset)
        if not tailed.rotated and tailed.fd is not None and not _still_at_path(tailed):
            tailed.rotated = True
            log.info("%s (%s) was rotated, deleted or its link retargeted; reading it to its end",
                     tailed.path, tailed.target)
        if (tailed.rotated and not partials.pending and tailed.acks.checkpoint == tailed.read_offset
                and now - tailed.last_data_at >= self.config.rotate_wait_secs):
            log.info("%s (%s, rotated) is read to its end and acknowledged; releasing it", tailed.path, tailed.target)
            self._release(tailed)

    def _forget_truncated(self, tailed: TailedFile) -> None:
        """copytruncate: the file shrank below what was read. Its new content has a new first
        line, hence a new identity: forget this one and let discovery open it from offset 0.
        What was not read yet is in the copy logrotate made first: finish reading it there."""
        log.warning("%s shrank below its read offset %d: truncated in place, reading it again from 0",
                    tailed.path, tailed.read_offset)
        self.metrics.truncations.inc()
        self._ship_decoded(tailed, tailed.decoder.partials.flush(), tailed.read_offset)
        self._release(tailed)
        copy = find_copy(tailed.target, tailed.identity)
        if copy is not None and copy[1] > tailed.read_offset:
            self._open(tailed.input, tailed.path, open_path=copy[0], target=tailed.target, offset=tailed.read_offset,
                       rotated=True)
        elif copy is not None:
            # Lines written after the copy were read from the original before the truncation:
            # the copy holds nothing new.
            log.info("%s: its copy %s holds no more than was read (%d bytes)", tailed.path, copy[0], tailed.read_offset)
        else:
            self._skip("truncated", "%s was truncated with no copy next to it (or a compressed one): anything it "
                       "held past offset %d was not read", tailed.path, tailed.read_offset)
        self.discover()

    def _ship_lines(self, tailed: TailedFile, lines: list[bytes], start: int, end: int, unterminated: bool) -> None:
        input_name = tailed.input.config.name
        self.metrics.lines.labels(input=input_name).inc(len(lines))
        self.metrics.read_bytes.labels(input=input_name).inc(end - start)
        decoded: list[tuple] = []
        tailed.decoder.decode(lines, start, decoded)
        if unterminated:
            decoded = [(o, t, s, c, f | NO_NEWLINE) for o, t, s, c, f in decoded]
        self._ship_decoded(tailed, decoded, end)

    def _ship_decoded(self, tailed: TailedFile, decoded: list[tuple], end: int) -> None:
        """Build, filter and route the records of ``decoded``; open the ack range they close."""
        inp = tailed.input
        name = inp.config.name
        pod_metadata = self.pod_metadata
        if pod_metadata is not None and tailed.pod_metadata_version != pod_metadata.version:
            refresh_pod_metadata(tailed, pod_metadata, self.config.node_name)
        if tailed.excluded:  # annotated shipper.io/exclude: read and acknowledged, never shipped
            self.metrics.kube_records_excluded.labels(input=name).inc(len(decoded))
            decoded = []
        records: list[dict] = []
        offsets: list[int] = []
        counts = (tailed.builder or inp.builder).build(decoded, tailed.kubernetes_json, records, offsets,
                                                       tailed.kubernetes.get("container_name"))
        self.metrics.records.labels(input=name).inc(len(records))
        if pod_metadata is not None and not tailed.pod_known:
            self.metrics.kube_records_without_metadata.labels(input=name).inc(len(records))
        for reason, count in counts.flagged.items():
            self.metrics.flagged.labels(input=name, reason=reason).inc(count)
        if counts.json_merged:
            self.metrics.json_merged.labels(input=name).inc(counts.json_merged)
        for kind in ("kubearmor", "falco"):
            if getattr(counts, kind):
                self.metrics.security_events.labels(input=name, kind=kind).inc(getattr(counts, kind))
        if counts.json_key_conflicts:
            self.metrics.json_key_conflicts.labels(input=name).inc(counts.json_key_conflicts)
        if inp.filter is not None:
            for rule, count in inp.filter.apply(records, offsets, tailed.kubernetes).items():
                self.metrics.dropped.labels(input=name, filter=rule).inc(count)
        # The range may not pass the first part of a line still waiting for its last part.
        waiting = tailed.decoder.partials.oldest_offset()
        range_end = end if waiting is None else waiting
        range_start, tailed.range_start = tailed.range_start, range_end
        if not records and range_end == range_start:
            return
        span = range_end - range_start
        self.in_flight_bytes += span
        self.metrics.in_flight_bytes.set(self.in_flight_bytes)
        ack_range = tailed.acks.open_range(range_start, range_end, len(inp.sinks) if records else 0, span)
        if records:
            for sink in inp.sinks:
                sink.accept(records, offsets, tailed, ack_range)

    def _acked(self, tailed: TailedFile, _range: AckRange) -> None:
        """A range of ``tailed`` is done; its checkpoint may have moved past some ranges."""
        passed = tailed.acks.checkpoint - tailed.counted_checkpoint
        if passed <= 0:
            return
        tailed.counted_checkpoint = tailed.acks.checkpoint
        if not self.persist_positions:
            self._release_budget(passed)
            return
        self.acked_unsaved_bytes += passed
        if (self.acked_unsaved_bytes >= self.config.max_in_flight_bytes // 2
                or self.in_flight_bytes >= self.config.max_in_flight_bytes):
            self._save_due.set()

    def _release_budget(self, size: int) -> None:
        self.in_flight_bytes -= size
        self.metrics.in_flight_bytes.set(self.in_flight_bytes)
        self._budget_freed.set()

    # ---- checkpoints -----------------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        """Write positions every ``checkpoint_interval_secs``, or sooner once half the in-flight
        budget is acknowledged but not yet saved (reading waits for that write)."""
        while True:
            try:
                await asyncio.wait_for(self._save_due.wait(), self.config.checkpoint_interval_secs)
            except TimeoutError:
                pass
            self._save_due.clear()
            self.health.beat()
            entries = self._position_entries()
            covered = self.acked_unsaved_bytes  # what these entries make durable
            self.acked_unsaved_bytes = 0
            if entries != self._last_saved:
                self._last_saved = entries
                try:
                    await asyncio.to_thread(self._write_positions, entries, next(self._save_sequence))
                except OSError as error:
                    self._last_saved = None
                    self.acked_unsaved_bytes += covered
                    log.error("cannot write positions file %s: %s", self.config.positions_path, error)
                    await asyncio.sleep(self.config.checkpoint_interval_secs)
                    continue
            self._release_budget(covered)

    def save_positions(self) -> None:
        """Write every file's acknowledged position now (on shutdown, and from tests)."""
        self._last_saved = self._position_entries()
        self._write_positions(self._last_saved, next(self._save_sequence))

    def _write_positions(self, entries: list[dict], sequence: int) -> None:
        # A periodic write still running in its thread when shutdown writes must not land
        # after the shutdown write and put older positions back.
        with self._write_lock:
            if sequence < self._written_sequence:
                return
            save_positions(self.config.positions_path, entries)
            self._written_sequence = sequence
        self.metrics.checkpoints.inc()

    def _position_entries(self) -> list[dict]:
        """Every file's acknowledged position, built on the loop (the file table changes there)."""
        entries = []
        for tailed in self.files.values():
            try:
                size = tailed.size()
            except OSError:  # descriptor closed and the file gone: its reopen will tell
                size = tailed.read_offset
            checkpoint = tailed.acks.checkpoint
            entries.append(position_entry(tailed.input.config.name, tailed.path, tailed.identity, checkpoint,
                                          tailed.target, size))
            self.metrics.file_lag.labels(path=tailed.path).set(size - checkpoint)
        # Saved positions of files not opened in this run stay while their file exists.
        entries.extend(e for e in self._saved_positions.values() if os.path.exists(e.get("target", e["path"])))
        return entries


def _still_at_path(tailed: TailedFile) -> bool:
    """Whether the glob's path (following a symlink) still leads to this file."""
    try:
        stat = os.stat(tailed.path)
    except FileNotFoundError:
        return False
    return (stat.st_dev, stat.st_ino) == (tailed.identity.dev, tailed.identity.ino)


def _is_at(path: str, identity: FileIdentity) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        stat = os.fstat(fd)
        return (stat.st_dev, stat.st_ino) == (identity.dev, identity.ino) and still_matches(fd, identity)
    finally:
        os.close(fd)
