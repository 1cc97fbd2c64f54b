"""Durable per-file positions, keyed by file identity, in one JSON file.

Written atomically: a temp file in the same directory, fsync, rename over the old file,
fsync of the directory. A crash at any instant leaves the old file or the new one, never a
torn one. Plain JSON, not SQLite: one small file, readable with ``jq`` when debugging.
"""

import glob
import os
import tempfile

import orjson

from shipper.tail.identity import FileIdentity

FORMAT_VERSION = 1
_TEMP_PREFIX = ".positions-"


class PositionsError(Exception):
    """The positions file exists but cannot be used."""


def position_key(input_name: str, identity: FileIdentity) -> str:
    """Positions are per input: two inputs may read the same file for different sinks."""
    return f"{input_name}|{identity.key}"


def load_positions(path: str) -> dict[str, dict]:
    """Entries by ``position_key``: ``{"input", "path", "dev", "ino", "fingerprint", "fingerprint_size",
    "offset"}``, and ``"target"`` and ``"size"`` when the shipper that wrote them knew them.

    Temp files left by a write that was killed midway are removed: the old file is intact.
    """
    directory = os.path.dirname(os.path.abspath(path))
    for stale in glob.glob(os.path.join(glob.escape(directory), _TEMP_PREFIX + "*")):
        os.unlink(stale)
    try:
        with open(path, "rb") as handle:
            data = orjson.loads(handle.read())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as error:
        raise PositionsError(f"positions file {path}: {error}") from error
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise PositionsError(f"positions file {path}: not a version {FORMAT_VERSION} positions file")
    entries = {}
    try:
        for entry in data["files"]:
            identity = FileIdentity(entry["dev"], entry["ino"], entry["fingerprint"], entry["fingerprint_size"])
            entries[position_key(entry["input"], identity)] = entry
    except (KeyError, TypeError) as error:
        raise PositionsError(f"positions file {path}: malformed entry ({error!r})") from error
    return entries


def position_entry(input_name: str, path: str, identity: FileIdentity, offset: int, target: str, size: int) -> dict:
    """``path`` is where the input's glob found the file (a symlink, on a node), ``target``
    the file it resolved to (where its rotated siblings appear), ``size`` its size when saved
    (so a file gone while the shipper was down tells how much of it was never read)."""
    return {
        "input": input_name,
        "path": path,
        "target": target,
        "dev": identity.dev,
        "ino": identity.ino,
        "fingerprint": identity.fingerprint,
        "fingerprint_size": identity.fingerprint_size,
        "offset": offset,
        "size": size,
    }


def save_positions(path: str, entries: list[dict]) -> None:
    """Replace the positions file atomically with ``entries``."""
    directory = os.path.dirname(os.path.abspath(path))
    body = orjson.dumps({"version": FORMAT_VERSION, "files": entries}, option=orjson.OPT_INDENT_2)
    fd, temp_path = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
