"""Each class of Loki refusal: not retried, the refused entries dead-lettered with Loki's reason,
the entries Loki wrote from the same push counted as delivered and never sent again."""

import asyncio

import orjson
import pytest

from shipper.sinks.loki_rejections import find_rejections, split_messages
from tests.helpers import cri, held_until_dead_letters_can_be_written, wait_for
from tests.receivers.loki import LokiLimits, LokiReceiver
from tests.test_sink_loki import T, acknowledged, dead_letters, fixed_clock, lines, make, numbered, pod_log, write

OLD = "2026-11-01T10:00:00.5Z"  # older than Loki's 7 days at the receiver's clock
FUTURE = "2026-11-20T13:00:00.5Z"  # more than 10 minutes after the receiver's clock


def refused(tmp_path) -> list[tuple[str, str]]:
    return [(letter["reason"], letter["line"]) for letter in dead_letters(tmp_path)]


def run(tmp_path, files: dict, limits: LokiLimits = LokiLimits(), **options):
    """Ship ``files`` ({path: lines}) in one push; returns the receiver and the metrics."""
    for path, data in files.items():
        write(path, data)
    with LokiReceiver(clock_ns=fixed_clock, limits=limits) as loki:
        # One push for everything: the batch waits until the drain at the end of a one-shot run.
        pipeline, metrics = make(tmp_path, loki.url, one_shot=True, batch={"flush_secs": 30}, **options)
        asyncio.run(pipeline.run())
        assert loki.stats.push_requests == 1  # a 400 is not retried
        assert metrics.value("shipper_sink_in_flight_bytes", sink="loki") == 0  # nothing held back
        return loki, metrics


def dead_lettered(metrics, reason: str) -> float:
    return metrics.value("shipper_sink_records_dead_lettered_total", sink="loki", reason=reason)


@pytest.mark.parametrize("time, reason, message", [
    (OLD, "too_old", "has timestamp too old: 2026-11-01T10:00:00Z"),
    (FUTURE, "too_new", "has timestamp too new: 2026-11-20T13:00:00Z"),
])
def test_entries_outside_the_time_window_are_refused_alone(tmp_path, time, reason, message):
    log = pod_log(tmp_path)
    data = numbered(2) + [cri(time, "stdout", "F", "out of window 0"), cri(time, "stdout", "F", "out of window 1")]
    loki, metrics = run(tmp_path, {log: data + numbered(2, 2)})
    assert lines(loki) == ["line 0", "line 1", "line 2", "line 3"]
    assert refused(tmp_path) == [(reason, "out of window 0"), (reason, "out of window 1")]
    letter = dead_letters(tmp_path)[0]
    assert message in letter["error"] and letter["status"] == 400 and letter["stream"].startswith('{app="web"')
    assert dead_lettered(metrics, reason) == 2
    assert metrics.value("shipper_sink_records_total", sink="loki") == 4


def test_a_line_over_lokis_size_limit_is_refused_alone(tmp_path):
    log = pod_log(tmp_path)
    long_line = "x" * 101
    loki, metrics = run(tmp_path, {log: numbered(1) + [cri(T, "stdout", "F", long_line)] + numbered(1, 1)},
                        LokiLimits(max_line_size_bytes=100))
    assert lines(loki) == ["line 0", "line 1"]
    assert refused(tmp_path) == [("line_too_long", long_line)]
    assert "max entry size '100' bytes exceeded" in dead_letters(tmp_path)[0]["error"]
    assert dead_lettered(metrics, "line_too_long") == 1


@pytest.mark.parametrize("reason", ["too_many_labels", "label_value_too_long", "label_name_too_long"])
def test_label_refusals_refuse_the_whole_stream_and_no_other(tmp_path, reason):
    short = tmp_path / "s"
    short.mkdir()
    refused_log = pod_log(tmp_path)
    # No pod fields in its name: only filename, node_name and stream labels, with a short filename.
    kept_log = str(short / "x.log")
    limits, options = {
        "too_many_labels": (LokiLimits(max_label_names_per_series=5), {}),
        "label_value_too_long": (LokiLimits(max_label_value_length_bytes=len(kept_log)), {}),
        "label_name_too_long": (LokiLimits(max_label_name_length_bytes=12),
                                {"labels": {"severity_of_the_line": "level"}}),
    }[reason]
    refused_lines = [cri(T, "stdout", "F", f'{{"level":"info","n":{i}}}') for i in range(3)]
    loki, metrics = run(tmp_path, {refused_log: refused_lines, kept_log: numbered(2, 10)},
                        limits, paths=[str(tmp_path / "*.log"), str(short / "*.log")], **options)
    assert lines(loki) == ["line 10", "line 11"]
    assert refused(tmp_path) == [(reason, f'{{"level":"info","n":{i}}}') for i in range(3)]
    assert dead_lettered(metrics, reason) == 3


def test_structured_metadata_refused_by_loki_refuses_only_the_entries_carrying_it(tmp_path):
    log = pod_log(tmp_path)
    data = [cri(T, "stdout", "F", '{"msg":"traced","trace_id":"abc"}'), cri(T, "stdout", "F", '{"msg":"plain"}')]
    loki, _ = run(tmp_path, {log: data}, LokiLimits(allow_structured_metadata=False),
                  structured_metadata={"trace_id": "trace_id"})
    assert lines(loki) == ['{"msg":"plain"}']
    assert refused(tmp_path) == [("structured_metadata", '{"msg":"traced","trace_id":"abc"}')]


def test_a_push_with_refusals_in_several_streams_refuses_exactly_those(tmp_path):
    a, b = pod_log(tmp_path, pod="a-7d9f8b6c5-x2x4z"), pod_log(tmp_path, pod="b-7d9f8b6c5-x2x4z")
    a_lines = [cri(OLD, "stdout", "F", "a old"), cri(T, "stdout", "F", "a ok"), cri(T, "stdout", "F", "a " + "y" * 99),
               cri(FUTURE, "stderr", "F", "a future")]
    b_lines = [cri(T, "stdout", "F", "b ok 1"), cri(OLD, "stdout", "F", "b old"), cri(T, "stdout", "F", "b ok 2")]
    loki, metrics = run(tmp_path, {a: a_lines, b: b_lines}, LokiLimits(max_line_size_bytes=100))
    assert sorted(lines(loki)) == ["a ok", "b ok 1", "b ok 2"]
    assert sorted(refused(tmp_path)) == sorted([("too_old", "a old"), ("line_too_long", "a " + "y" * 99),
                                                ("too_new", "a future"), ("too_old", "b old")])
    # Each entry went over the wire once: the accepted ones were not sent again.
    assert loki.stats.entries_received == 7
    assert metrics.value("shipper_sink_records_total", sink="loki") == 3


@pytest.mark.parametrize("limits, later, reason", [
    (LokiLimits(), "2026-11-20T08:59:00.5Z", "too_far_behind"),  # more than max_chunk_age/2 behind
    (LokiLimits(unordered_writes=False), "2026-11-20T09:59:59.5Z", "out_of_order"),
])
def test_the_ingesters_ordering_refusals_are_traced_to_the_late_entries(tmp_path, limits, later, reason):
    log = pod_log(tmp_path)
    write(log, numbered(2))
    with LokiReceiver(clock_ns=fixed_clock, limits=limits) as loki:
        pipeline, metrics = make(tmp_path, loki.url)

        async def scenario():
            task = asyncio.create_task(pipeline.run())
            await wait_for(lambda: acknowledged(pipeline, log))
            # The runtime's clock stepped back: the next lines are behind what Loki holds.
            write(log, [cri(later, "stdout", "F", "late 0"), cri(later, "stdout", "F", "late 1")] + numbered(1, 2))
            await wait_for(lambda: acknowledged(pipeline, log))
            pipeline.stop()
            await task

        asyncio.run(scenario())
        assert sorted(lines(loki)) == ["line 0", "line 1", "line 2"]
        assert refused(tmp_path) == [(reason, "late 0"), (reason, "late 1")]
        assert "total ignored: 2 out of 3 for stream: {" in dead_letters(tmp_path)[0]["error"]
        assert loki.stats.entries_received == 5


def test_ingester_refusals_count_only_the_entries_the_distributor_let_through():
    """Loki 3.7 answers the ingester's error alone; should both come (older or later versions
    join them), the ingester's count is of the entries the distributor let through."""
    streams = [('{a="1"}', [(1, 10, 0, 0), (2, 500, 0, 0), (3, 10, 0, 0), (4, 10, 0, 0)])]
    too_long = ("max entry size '100' bytes exceeded for stream '{a=\"1\", service_name=\"x\"}' while adding an "
                "entry with length '500' bytes")
    found = find_rejections(too_long + "\n", streams)
    assert found.refused == {0: {1: ("line_too_long", too_long)}} and not found.unexplained
    ingester = ("entry with timestamp 1970-01-01 00:00:00.000000001 +0000 UTC ignored, reason: 'entry too far "
                "behind, ...',\nuser 'fake', total ignored: 2 out of 3 for stream: {a=\"1\", service_name=\"x\"}")
    assert sorted(find_rejections(ingester, streams).refused[0]) == [0, 1]
    # The ingester got entries 0, 2 and 3; the 2 oldest of those were ignored.
    found = find_rejections(too_long + "; " + ingester, streams)
    assert {entry: reason for entry, (reason, _) in found.refused[0].items()} == {
        0: "too_far_behind", 1: "line_too_long", 2: "too_far_behind"}


def test_messages_split_only_at_loki_message_starts():
    body = ("2 errors like: entry for stream '{a=\"x; y\"}' has timestamp too old: 2026-11-01T10:00:00Z, oldest "
            "acceptable timestamp is: 2026-11-13T12:00:00Z; stream '{a=\"z\"}' has label value too long: 'z'\n")
    assert split_messages(body) == [
        (2, "entry for stream '{a=\"x; y\"}' has timestamp too old: 2026-11-01T10:00:00Z, oldest acceptable "
            "timestamp is: 2026-11-13T12:00:00Z"),
        (1, "stream '{a=\"z\"}' has label value too long: 'z'"),
    ]


def test_an_unparseable_label_set_refuses_the_whole_push():
    """Loki parses every stream's labels first; one bad set fails the request, nothing written."""
    streams = [('{a="1"}', [(1, 10, 0, 0)]), ('{b="2"}', [(2, 10, 0, 0), (3, 10, 0, 0)])]
    body = "couldn't parse labels: 1:2: parse error: unexpected character inside braces: '.'"
    found = find_rejections(body, streams)
    assert found.refused == {0: {0: ("invalid_labels", body)},
                             1: {0: ("invalid_labels", body), 1: ("invalid_labels", body)}}


def test_an_answer_the_sink_cannot_trace_is_unexplained():
    streams = [('{a="1"}', [(1, 10, 0, 0)])]
    assert find_rejections("something new went wrong", streams).unexplained == ["something new went wrong"]
    other_stream = "stream '{b=\"2\"}' has label value too long: '2'"
    assert find_rejections(other_stream, streams).unexplained == [other_stream]


def test_an_unexplained_400_dead_letters_every_entry_rather_than_lose_one(tmp_path, monkeypatch):
    """Should Loki word a refusal in a way this sink does not know, entries may have been
    refused: they go to the dead-letter file (possibly also written) instead of counting as
    delivered."""
    import tests.receivers.loki as receiver

    real_entry_error = receiver.LokiReceiver._entry_error

    def reworded(entry, labels_text, now_ns, limits):
        error = real_entry_error(entry, labels_text, now_ns, limits)
        return error and "a new wording of a refusal"

    monkeypatch.setattr(receiver.LokiReceiver, "_entry_error", staticmethod(reworded))
    log = pod_log(tmp_path)
    loki, metrics = run(tmp_path, {log: numbered(1) + [cri(OLD, "stdout", "F", "old")]})
    assert lines(loki) == ["line 0"]
    assert sorted(refused(tmp_path)) == [("unexplained", "line 0"), ("unexplained", "old")]
    assert {letter["error"] for letter in dead_letters(tmp_path)} == {"a new wording of a refusal"}


def test_refused_entries_wait_while_the_dead_letter_file_cannot_be_written(tmp_path):
    log = pod_log(tmp_path)
    write(log, numbered(1) + [cri(T, "stdout", "F", "x" * 101)])
    blocker = tmp_path / "blocked"
    blocker.write_text("")  # a file where the dead-letter directory should be
    with LokiReceiver(clock_ns=fixed_clock, limits=LokiLimits(max_line_size_bytes=100)) as loki:
        pipeline, metrics = make(tmp_path, loki.url, dead_letter_path=str(blocker / "dead.ndjson"))
        held_until_dead_letters_can_be_written(pipeline, log, blocker, lambda: lines(loki) == ["line 0"])
    assert [letter["reason"] for letter in map(orjson.loads, (blocker / "dead.ndjson").read_bytes().splitlines())] == [
        "line_too_long"]
    assert dead_lettered(metrics, "line_too_long") == 1
