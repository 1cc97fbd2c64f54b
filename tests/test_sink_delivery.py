"""The delivery pieces every network sink shares: batching, backoff, pending acks, dead letters."""

import asyncio

import orjson

from shipper.acks import FileAcks
from shipper.sinks.delivery import Backoff, Batcher, DeadLetterFile, PendingAck
from shipper.sinks.options import BatchOptions
from tests.helpers import wait_for


def run_batcher(options: BatchOptions, scenario, send_failures: int = 0):
    sent: list[list] = []
    held = [0]
    failures = [send_failures]

    async def send(items):
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("a bug in the sink")
        sent.append(list(items))

    def on_bytes(change):
        held[0] += change

    async def main():
        batcher = Batcher(options, 2, send, on_bytes)
        batcher.start()
        try:
            await scenario(batcher, sent)
        finally:
            await batcher.close()

    asyncio.run(main())
    return sent, held[0]


def test_batches_close_at_max_records_and_the_room_says_how_many_fit():
    async def scenario(batcher, sent):
        assert batcher.room() == 5
        batcher.add("a", 10, 3)
        assert batcher.room() == 2
        batcher.add("b", 10, 2)  # full: sent
        assert batcher.room() == 5
        batcher.add("c", 10, 1)
        await batcher.drain()

    sent, held = run_batcher(BatchOptions(max_records=5, max_bytes=1 << 20, flush_secs=60), scenario)
    assert sorted(sent) == [["a", "b"], ["c"]] and held == 0


def test_batches_close_at_max_bytes_and_after_flush_secs():
    async def scenario(batcher, sent):
        batcher.add("big", 2000, 1)
        batcher.add("small", 10, 1)
        await wait_for(lambda: len(sent) == 2, timeout=5)  # the small one leaves on age alone

    sent, _ = run_batcher(BatchOptions(max_records=100, max_bytes=1024, flush_secs=0.05), scenario)
    assert sent == [["big"], ["small"]]


def test_a_batch_whose_sending_fails_unexpectedly_is_not_sent_again_and_the_rest_goes_on(caplog):
    """Sending it again could settle records twice and ack their ranges early; unacknowledged,
    they are read again after a restart."""
    async def scenario(batcher, sent):
        batcher.add("a", 10, 1)
        await batcher.drain()
        batcher.add("b", 10, 1)
        await batcher.drain()

    sent, held = run_batcher(BatchOptions(max_records=10, max_bytes=1024, flush_secs=0.01), scenario,
                             send_failures=1)
    assert sent == [["b"]] and held == 0
    assert "stay unacknowledged and are read again after a restart" in caplog.text


def test_backoff_grows_to_its_cap_with_jitter():
    backoff = Backoff(0.5, 4.0)
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.5, 1, 2, 4, 4, 4, 4, 4]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings))
    assert len(set(delays)) > 1


def test_a_pending_ack_acks_its_range_when_its_last_record_is_done():
    done = []
    acks = FileAcks(0, done.append)
    pending = PendingAck(acks.open_range(0, 100, 1, 100), 3)
    pending.done(2)
    assert acks.checkpoint == 0
    pending.done()
    assert acks.checkpoint == 100 and len(done) == 1


def test_an_unwritable_dead_letter_file_raises_and_is_opened_again_later(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    letters = DeadLetterFile(str(blocker / "dead.ndjson"), "es")
    try:
        letters.write([{"reason": "x"}])
    except OSError:
        pass
    else:
        raise AssertionError("a write that cannot land must raise, so the sink keeps the records")
    blocker.unlink()
    letters.write([{"reason": "x"}])
    assert orjson.loads((blocker / "dead.ndjson").read_bytes())["reason"] == "x"


def test_dead_letters_are_appended_with_time_sink_and_reason(tmp_path):
    path = tmp_path / "nested" / "dead.ndjson"
    letters = DeadLetterFile(str(path), "es")
    letters.write([{"reason": "document_parsing_exception", "record": orjson.Fragment(b'{"a":1}')}])
    letters.write([{"reason": "other", "record": {"b": 2}}])
    letters.close()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [(line["sink"], line["reason"], line["record"]) for line in lines] == [
        ("es", "document_parsing_exception", {"a": 1}), ("es", "other", {"b": 2})]
    assert all(line["time"].endswith("Z") for line in lines)


def test_a_dead_letter_file_renamed_away_by_a_replay_is_started_anew_at_its_path(tmp_path):
    path = tmp_path / "dead.ndjson"
    letters = DeadLetterFile(str(path), "es")
    letters.write([{"reason": "first"}])
    path.rename(tmp_path / "dead.ndjson.replayed")
    letters.write([{"reason": "second"}])
    letters.close()
    assert orjson.loads((tmp_path / "dead.ndjson.replayed").read_bytes())["reason"] == "first"
    assert orjson.loads(path.read_bytes())["reason"] == "second"
