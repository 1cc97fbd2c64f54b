"""The positions file: atomic replacement, and what a kill in the middle of a write leaves."""

import os
import signal
import subprocess
import sys
import time

import pytest

from shipper.tail.identity import FileIdentity
from shipper.tail.positions import PositionsError, load_positions, position_entry, position_key, save_positions

WRITER = """
import sys
from shipper.tail.identity import FileIdentity
from shipper.tail.positions import position_entry, save_positions
path = sys.argv[1]
generation = 0
print("ready", flush=True)
while True:
    generation += 1
    # Thousands of entries make each write long enough to be killed in the middle of it.
    save_positions(path, [position_entry("in", f"/var/log/{i}.log", FileIdentity(1, i, "f" * 16, 10), generation,
                                         f"/var/log/{i}.log", generation)
                          for i in range(3000)])
"""


def entries(offset: int) -> list[dict]:
    return [position_entry("in", "/var/log/a.log", FileIdentity(1, 2, "ab" * 8, 40), offset, "/var/log/a.log", offset)]


def test_round_trip_by_input_and_identity(tmp_path):
    path = str(tmp_path / "positions.json")
    save_positions(path, entries(123))
    identity = FileIdentity(1, 2, "ab" * 8, 40)
    assert load_positions(path)[position_key("in", identity)]["offset"] == 123
    assert load_positions(str(tmp_path / "missing.json")) == {}


@pytest.mark.slow
def test_a_kill_during_the_write_leaves_the_old_or_the_new_file(tmp_path):
    path = str(tmp_path / "positions.json")
    generations = set()
    for attempt in range(15):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE,
                                  env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert writer.stdout.readline() == b"ready\n"
        time.sleep(0.05 + attempt * 0.013)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if not os.path.exists(path):
            continue
        loaded = load_positions(path)  # must parse: a torn file would raise PositionsError
        offsets = {entry["offset"] for entry in loaded.values()}
        assert len(loaded) == 3000 and len(offsets) == 1  # one whole generation, never a mix
        generations |= offsets
        assert not [name for name in os.listdir(tmp_path) if name.startswith(".positions-")]
    assert len(generations) > 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "positions file"),
        (b'{"version": 99, "files": []}', "not a version 1 positions file"),
        (b'{"version": 1, "files": [{"path": "x"}]}', "malformed entry"),
    ],
)
def test_an_unusable_positions_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "positions.json"
    path.write_bytes(content)
    with pytest.raises(PositionsError, match=message):
        load_positions(str(path))
