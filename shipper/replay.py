"""``shipper replay-dead-letter``: send a sink's dead letters again once the cause is fixed.

The dead-letter file is read whole and every letter sent to the sink's destination again, by
the sink type's own replay (``shipper.sinks.replay_elasticsearch``, ``replay_loki``). Each
letter ends one of three ways:

- delivered (or already there): counted;
- refused again: written to ``<file>.refused-<UTC time>`` in the dead-letter format with the
  new reason, as is a line of the file that is not a letter (with its line number);
- not attempted (the destination down or overloaded after a few tries, credentials refused):
  the replay stops and the file is left as it was, so running it again later sends everything
  again (Elasticsearch answers 409 for what is there, Loki drops identical entries).

Once every letter was delivered or written to the refused file, the file is renamed to
``<file>.replayed-<UTC time>``: a second replay finds nothing to send, and nothing is ever
deleted. A running shipper that dead-letters meanwhile starts a new file at the path
(``DeadLetterFile`` notices the rename); letters it appended between the read and the rename
are moved back to the path for the next replay.
"""

import asyncio
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

from shipper.config import Config, SinkConfig
from shipper.config_reader import ConfigError
from shipper.sinks.delivery import DeadLetterFile

EXIT_REFUSED = 1
UNREADABLE = "unreadable_dead_letter"  # the reason of a line that is not a letter


class NotAttempted(Exception):
    """The destination could not be asked to judge the letters; the replay stops."""


@dataclass
class Tally:
    """What became of the letters so far."""

    delivered: int = 0
    already_there: int = 0  # of the delivered: Elasticsearch had them (409)
    refused: list[dict] = field(default_factory=list)  # letters with their new reason

    def deliver(self, count: int, already_there: int = 0) -> None:
        self.delivered += count
        self.already_there += already_there

    def refuse(self, letter: dict, reason: str, status: int | None, error: str) -> None:
        kept = {key: value for key, value in letter.items() if key not in ("time", "sink")}
        self.refused.append({**kept, "reason": reason, "status": status, "error": error})


def cut_batches(sized: list[tuple], max_records: int, max_bytes: int) -> list[list]:
    """``(item, size)`` pairs cut into batches of items by count and bytes, as the sinks batch;
    an item larger than ``max_bytes`` goes alone."""
    batches, batch, size = [], [], 0
    for item, item_size in sized:
        if batch and (len(batch) >= max_records or size + item_size > max_bytes):
            batches.append(batch)
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        batches.append(batch)
    return batches


@dataclass
class Unreadable:
    """A line of the dead-letter file that is not a letter this sink type can send."""

    number: int
    problem: str
    text: str


def sink_to_replay(config: Config, name: str) -> SinkConfig:
    sink = config.sinks.get(name)
    if sink is None:
        raise ConfigError(config.source, "sinks", f"no sink named '{name}' (defined: {', '.join(config.sinks)})")
    if sink.type not in ("elasticsearch", "loki"):
        raise ConfigError(config.source, f"sinks.{name}.type",
                          f"'{sink.type}' sinks write no dead-letter file (only elasticsearch and loki do)")
    return sink


def replay_dead_letter(config: Config, name: str, path: str | None = None, dry_run: bool = False) -> int:
    """Replay sink ``name``'s dead letters (from ``path``, else its configured file); the exit code."""
    sink = sink_to_replay(config, name)
    if sink.type == "elasticsearch":
        from shipper.sinks import replay_elasticsearch as replay
    else:
        from shipper.sinks import replay_loki as replay
    given = path is not None
    path = path if given else sink.options.delivery.dead_letter_path
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        if given:
            print(f"error: {path}: no such file", file=sys.stderr)
            return EXIT_REFUSED
        print(f"nothing to replay: {path} does not exist")
        return 0
    except OSError as error:
        print(f"error: cannot read {path}: {error.strerror}", file=sys.stderr)
        return EXIT_REFUSED
    letters, unreadable = read_letters(data, replay.letter_problem)
    outcome = "would go to the refused file" if dry_run else "skipped into the refused file"
    for line in unreadable:
        print(f"{path}:{line.number}: {line.problem}; {outcome}", file=sys.stderr)
    if dry_run:
        print_plan(path, name, sink.type, letters, unreadable, replay.letter_target)
        return 0
    tally = Tally()
    for line in unreadable:
        tally.refused.append({"reason": UNREADABLE, "status": None,
                              "error": f"line {line.number} of {path}: {line.problem}", "text": line.text})
    try:
        asyncio.run(replay.send(sink.options, letters, tally))
    except NotAttempted as error:
        print(f"error: {name}: {error}. Stopped after {tally.delivered} of {len(letters)} letters were delivered; "
              f"{path} is left as it was: run again once the destination takes requests (what was delivered "
              "is not duplicated)", file=sys.stderr)
        return EXIT_REFUSED
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    refused_path = f"{path}.refused-{stamp}"
    if tally.refused:
        refused_file = DeadLetterFile(refused_path, name)
        try:
            refused_file.write(tally.refused)
        except OSError as error:
            print(f"error: cannot write {refused_path} ({error.strerror}); {path} is left as it was",
                  file=sys.stderr)
            return EXIT_REFUSED
        finally:
            refused_file.close()
    replayed_path = f"{path}.replayed-{stamp}"
    try:
        os.rename(path, replayed_path)
    except OSError as error:
        print(f"error: cannot rename {path} to {replayed_path} ({error.strerror}); its letters were sent: move it "
              "away by hand so that the next replay does not send them again", file=sys.stderr)
        return EXIT_REFUSED
    moved_back = _move_back_later_letters(replayed_path, path, len(data))
    refused_text = f" -> {refused_path}" if tally.refused else ""
    print(f"{tally.delivered} delivered ({tally.already_there} already there), {len(tally.refused)} refused again"
          f"{refused_text}")
    print(f"{path} renamed to {replayed_path}")
    if moved_back:
        print(f"{moved_back} bytes of letters written during the replay were moved back to {path} "
              "for the next replay")
    return EXIT_REFUSED if tally.refused else 0


def read_letters(data: bytes, problem_of) -> tuple[list[dict], list[Unreadable]]:
    """The letters of a dead-letter file, and its lines that are not letters (``problem_of``
    names what a letter of the sink type lacks, or '')."""
    letters, unreadable = [], []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        text = line.decode("utf-8", "replace")
        try:
            letter = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            unreadable.append(Unreadable(number, f"not JSON ({error})", text))
            continue
        problem = problem_of(letter) if isinstance(letter, dict) else "not a JSON object"
        if problem:
            unreadable.append(Unreadable(number, problem, text))
        else:
            letters.append(letter)
    return letters, unreadable


def print_plan(path: str, name: str, sink_type: str, letters: list[dict], unreadable: list[Unreadable],
               target_of) -> None:
    print(f"dry run: would send {len(letters)} letters from {path} to sink {name} ({sink_type}):")
    counts = Counter((target_of(letter), str(letter.get("reason"))) for letter in letters)
    for (target, reason), count in sorted(counts.items()):
        print(f"  {count:6d}  {target}  (was {reason})")
    if unreadable:
        numbers = ", ".join(str(line.number) for line in unreadable)
        print(f"  {len(unreadable)} unreadable lines (line {numbers}) would go to the refused file")


def _move_back_later_letters(replayed_path: str, path: str, replayed_bytes: int) -> int:
    """Letters a running shipper appended after the read went into the renamed file: append
    them to the path again (where it now writes) and cut them from the renamed file."""
    with open(replayed_path, "r+b") as replayed:
        replayed.seek(replayed_bytes)
        later = replayed.read()
        if not later:
            return 0
        with open(path, "ab") as current:
            current.write(later)
        replayed.truncate(replayed_bytes)
    return len(later)
