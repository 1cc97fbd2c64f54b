"""Wires the stages: tail -> decode -> records -> filter -> sinks, and acks -> checkpoints.

One asyncio loop owns the I/O. Per-line work is plain synchronous code over whole chunks:
a chunk is read in a worker thread (one hop per chunk, not per line), then decoded, built,
filtered and handed to the sinks in one call. Backpressure is a byte budget: a chunk is read
only while the bytes not yet acknowledged by every sink, and the encoded bytes each sink
holds, stay under ``max_in_flight_bytes``.
"""

import asyncio
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass

import orjson

from shipper.acks import AckRange, FileAcks
from shipper.config import Config, InputConfig
from shipper.decode.cri import CriDecoder
from shipper.decode.docker import DockerDecoder
from shipper.decode.flags import NO_NEWLINE
from shipper.filters import RecordFilter
from shipper.kube.enrich import file_kubernetes, refresh_pod_metadata
from shipper.kube.pod_metadata import PodMetadataCache
from shipper.metrics import HealthState, Metrics
from shipper.parse.records import RecordBuilder
from shipper.sinks import Sink
from shipper.tail.files import TRUNCATED, TailedFile, last_line_end, matching_paths
from shipper.tail.identity import identify
from shipper.tail.positions import load_positions, position_entry, position_key, save_positions

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
        return cls(config, RecordBuilder(config.json), RecordFilter(config.filters) if config.filters else None, sinks)


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
        self.in_flight_bytes = 0
        self._budget_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._saved_positions: dict[str, dict] = {}
        self._first_start = True
        self._last_saved: list[dict] | None = None
        self._save_sequence = itertools.count()
        self._written_sequence = -1
        self._write_lock = threading.Lock()
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
        self.discover()
        self._first_start = False
        self.health.ready = True
        checkpointer = asyncio.create_task(self._checkpoint_loop()) if self.persist_positions else None
        try:
            await self._tail_loop()
            if self.one_shot:
                for tailed in list(self.files.values()):
                    self._ship_decoded(tailed, tailed.decoder.partials.flush(), tailed.read_offset, 0)
            try:
                async with asyncio.timeout(self.config.shutdown_grace_secs):
                    for sink in sinks:
                        await sink.drain()
            except TimeoutError:
                log.warning("sinks not drained within %.0fs; unacknowledged lines will be re-read after restart",
                            self.config.shutdown_grace_secs)
        finally:
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
                    continue
                if (inp.config.name, stat.st_dev, stat.st_ino) not in open_inodes:
                    self._open(inp, path)
        self.metrics.files.set(len(self.files))

    def _open(self, inp: Input, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            log.warning("cannot open %s: %s", path, error.strerror)
            self.metrics.skipped_files.labels(reason="open_failed").inc()
            return
        identity = identify(fd, allow_short=self.one_shot)
        if identity is None:  # no complete first line yet: nothing to ship, look again later
            os.close(fd)
            return
        key = position_key(inp.config.name, identity)
        saved = self._saved_positions.pop(key, None)
        size = os.fstat(fd).st_size
        if saved is not None:
            offset = saved["offset"]
            if offset > size:
                log.warning("%s is shorter (%d) than its saved position (%d): truncated, reading from 0",
                            path, size, offset)
                self.metrics.skipped_files.labels(reason="truncated").inc()
                offset = 0
        elif self._first_start and self.config.read_from == "tail" and not self.one_shot:
            offset = last_line_end(fd, size)
        else:
            offset = 0
        first_byte = os.pread(fd, 1, 0)
        fmt = inp.config.format
        if fmt == "auto":
            fmt = "docker" if first_byte == b"{" else "cri"
        decoder = (DockerDecoder if fmt == "docker" else CriDecoder)(self.config.max_record_bytes)
        kubernetes = file_kubernetes(path, self.config.node_name)
        self.files[key] = TailedFile(
            path, fd, identity, key, inp, decoder, kubernetes, orjson.Fragment(orjson.dumps(kubernetes)),
            offset, FileAcks(offset, self._range_done), time.monotonic(),
        )
        log.info("following %s from offset %d (input %s, %s)", path, offset, inp.config.name, fmt)

    # ---- reading and shipping --------------------------------------------------------------

    async def _tail_loop(self) -> None:
        config = self.config
        next_rescan = time.monotonic() + config.rescan_interval_secs
        # Runtime lines are at most 16 KiB plus framing; anything longer is not a runtime line.
        max_line_bytes = config.read_chunk_bytes + config.max_record_bytes
        while not self._stopping.is_set():
            self.health.beat()
            now = time.monotonic()
            if not self.one_shot and now >= next_rescan:
                self.discover()
                next_rescan = now + config.rescan_interval_secs
            progressed = False
            # One chunk per file per round: a chatty container cannot starve the others.
            for tailed in list(self.files.values()):
                if self._stopping.is_set():
                    break
                while self._over_budget() and not self._stopping.is_set():
                    self._budget_freed.clear()
                    # Acks wake this; a sink letting go of bytes after its acks is seen on the poll.
                    await self._wait(self._budget_freed, config.poll_interval_secs)
                if self._stopping.is_set():
                    break
                got = await asyncio.to_thread(tailed.read_lines, config.read_chunk_bytes, max_line_bytes, self.one_shot)
                if got is TRUNCATED:
                    self._forget_truncated(tailed)
                elif got is not None:
                    progressed = True
                    tailed.last_data_at = now
                    self._ship_lines(tailed, *got)
                elif not self.one_shot:
                    self._idle(tailed, now)
            if not progressed:
                if self.one_shot:
                    return
                await self._wait(self._stopping, config.poll_interval_secs)

    def _over_budget(self) -> bool:
        """Bytes read and not yet acknowledged, or bytes a sink holds encoded (short lines
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
        """A file with no new data: flush overdue split lines, retire it if rotated away."""
        partials = tailed.decoder.partials
        if partials.pending and now - tailed.last_data_at >= self.config.partial_flush_secs:
            self._ship_decoded(tailed, partials.flush(), tailed.read_offset, 0)
        if not partials.pending and tailed.acks.checkpoint == tailed.read_offset and not _still_at_path(tailed):
            log.info("%s was rotated or deleted and is read to its end; releasing it", tailed.path)
            tailed.close()
            del self.files[tailed.key]
            try:
                self.metrics.file_lag.remove(tailed.path)
            except KeyError:  # released before its first checkpoint
                pass
            self.metrics.files.set(len(self.files))

    def _forget_truncated(self, tailed: TailedFile) -> None:
        """copytruncate: the file shrank below what was read. Its new content has a new first
        line, hence a new identity: forget this one and let discovery open it from offset 0."""
        log.warning("%s shrank below its read offset %d: truncated in place, reading it again from 0",
                    tailed.path, tailed.read_offset)
        self.metrics.truncations.inc()
        self._ship_decoded(tailed, tailed.decoder.partials.flush(), tailed.read_offset, 0)
        tailed.close()
        del self.files[tailed.key]
        self.discover()

    def _ship_lines(self, tailed: TailedFile, lines: list[bytes], start: int, end: int, unterminated: bool) -> None:
        input_name = tailed.input.config.name
        self.metrics.lines.labels(input=input_name).inc(len(lines))
        self.metrics.read_bytes.labels(input=input_name).inc(end - start)
        decoded: list[tuple] = []
        tailed.decoder.decode(lines, start, decoded)
        if unterminated:
            decoded = [(o, t, s, c, f | NO_NEWLINE) for o, t, s, c, f in decoded]
        self._ship_decoded(tailed, decoded, end, end - start)

    def _ship_decoded(self, tailed: TailedFile, decoded: list[tuple], end: int, size: int) -> None:
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
        self.in_flight_bytes += size
        self.metrics.in_flight_bytes.set(self.in_flight_bytes)
        ack_range = tailed.acks.open_range(range_start, range_end, len(inp.sinks) if records else 0, size)
        if records:
            for sink in inp.sinks:
                sink.accept(records, offsets, tailed, ack_range)

    def _range_done(self, ack_range: AckRange) -> None:
        self.in_flight_bytes -= ack_range.size
        self.metrics.in_flight_bytes.set(self.in_flight_bytes)
        self._budget_freed.set()

    # ---- checkpoints -----------------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_interval_secs)
            self.health.beat()
            entries = self._position_entries()
            if entries == self._last_saved:
                continue
            self._last_saved = entries
            try:
                await asyncio.to_thread(self._write_positions, entries, next(self._save_sequence))
            except OSError as error:
                self._last_saved = None
                log.error("cannot write positions file %s: %s", self.config.positions_path, error)

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
            entries.append(position_entry(tailed.input.config.name, tailed.path, tailed.identity, tailed.acks.checkpoint))
            try:
                self.metrics.file_lag.labels(path=tailed.path).set(tailed.size() - tailed.acks.checkpoint)
            except OSError:
                pass
        # Saved positions of files not opened in this run stay while their file exists.
        entries.extend(e for e in self._saved_positions.values() if os.path.exists(e["path"]))
        return entries


def _still_at_path(tailed: TailedFile) -> bool:
    try:
        stat = os.stat(tailed.path)
    except FileNotFoundError:
        return False
    return (stat.st_dev, stat.st_ino) == (tailed.identity.dev, tailed.identity.ino)
