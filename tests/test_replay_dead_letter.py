"""``shipper replay-dead-letter`` against the strict receivers: dead letters the sinks really
wrote are sent again once the cause is fixed, land exactly once, and nothing is ever lost."""

import asyncio
import glob
import threading
import time

import orjson
import pytest

from shipper.cli import build_sinks, main
from shipper.config import load_config
from shipper.metrics import Metrics
from shipper.pipeline import Input, Pipeline
from shipper.sinks.delivery import DeadLetterFile
from shipper.sinks.loki_labels import StreamLabels
from shipper.sinks.replay_loki import parse_stream
from tests.helpers import cri
from tests.receivers.elasticsearch import DEFAULT_MAX_CONTENT_LENGTH, Delay, ElasticsearchReceiver, RejectRequest
from tests.receivers.loki import Fault, LokiLimits, LokiReceiver
from tests.test_sink_elasticsearch import DAY1, INDEX1
from tests.test_sink_elasticsearch import sink_yaml as es_sink_yaml
from tests.test_sink_loki import T, fixed_clock, lines, numbered, pod_log, write
from tests.test_sink_loki import sink_yaml as loki_sink_yaml
from tests.test_sink_loki_rejections import OLD

SMALL_LIMIT = 4096  # http.max_content_length that refuses the long line below
LONG = "x" * 6000


def write_config(tmp_path, sink: str) -> str:
    path = tmp_path / "shipper.yaml"
    path.write_text(
        f"positions: {{path: {tmp_path}/positions.json}}\n"
        "metrics: {listen: null}\n"
        "node_name: node-1\n"
        f"inputs: {{app: {{paths: ['{tmp_path}/*.log'], sinks: [{sink.split(':', 1)[0]}]}}}}\n"
        f"sinks: {{{sink}, out: {{type: stdout}}}}\n"
    )
    return str(path)


def ship_once(config_path: str) -> None:
    """One pass of the real pipeline over the log files: the sink writes its dead letters."""
    config = load_config(config_path)
    metrics = Metrics()
    sinks = build_sinks(config, metrics)
    inputs = [Input.from_config(inp, [sinks[name] for name in inp.sinks]) for inp in config.inputs]
    asyncio.run(Pipeline(config, inputs, metrics, one_shot=True, persist_positions=False).run())


def replay(config_path: str, *options: str, sink: str = "es") -> int:
    return main(["replay-dead-letter", "--config", config_path, "--sink", sink, *options])


def letters(path) -> list[dict]:
    return [orjson.loads(line) for line in open(path, "rb").read().splitlines()]


def one(pattern: str) -> str:
    (path,) = glob.glob(pattern)
    return path


# ---- Elasticsearch ---------------------------------------------------------------------------


def es_config(tmp_path, url: str, **options) -> str:
    return write_config(tmp_path, f"es: {es_sink_yaml(url, **options)}")


def write_es_log(tmp_path, messages: list[str]) -> None:
    with open(tmp_path / "app.log", "ab") as handle:
        handle.write(b"".join(cri(DAY1, "stdout", "F", message) for message in messages))


def refused_for_size(tmp_path, es: ElasticsearchReceiver, longs: int = 1) -> str:
    """Ship ``longs`` lines too long for the node's limit among short ones: they are dead-lettered."""
    es.max_content_length = SMALL_LIMIT
    write_es_log(tmp_path, ["short 0"] + [f"{i} {LONG}" for i in range(longs)] + ["short 1"])
    config = es_config(tmp_path, es.url)
    ship_once(config)
    assert len(letters(tmp_path / "dead-letter-es.ndjson")) == longs
    assert es.count(INDEX1) == 2
    return config


def test_letters_are_indexed_once_after_the_cause_is_fixed_and_a_second_replay_sends_nothing(tmp_path, capsys):
    with ElasticsearchReceiver() as es:
        config = refused_for_size(tmp_path, es)
        dead_letter = tmp_path / "dead-letter-es.ndjson"
        original = dead_letter.read_bytes()
        (letter,) = letters(dead_letter)
        es.max_content_length = DEFAULT_MAX_CONTENT_LENGTH  # the operator raised http.max_content_length

        assert replay(config) == 0
        assert sorted(doc["log"] for doc in es.documents(INDEX1)) == ["0 " + LONG, "short 0", "short 1"]
        assert letter["id"] in es.ids(INDEX1)  # under the id the sink gave it
        output = capsys.readouterr().out
        assert "1 delivered (0 already there), 0 refused again\n" in output
        assert not dead_letter.exists()
        assert open(one(f"{dead_letter}.replayed-*"), "rb").read() == original  # kept, never deleted
        assert not glob.glob(f"{dead_letter}.refused-*")

        requests = es.stats.bulk_requests
        assert replay(config) == 0
        assert f"nothing to replay: {dead_letter} does not exist" in capsys.readouterr().out
        assert es.stats.bulk_requests == requests


def test_a_letter_already_indexed_is_a_409_counted_as_delivered_without_a_duplicate(tmp_path, capsys):
    with ElasticsearchReceiver() as es:
        config = refused_for_size(tmp_path, es)
        dead_letter = tmp_path / "dead-letter-es.ndjson"
        es.max_content_length = DEFAULT_MAX_CONTENT_LENGTH
        assert replay(config) == 0
        # The same letters again, as from a copy kept by the operator.
        assert replay(config, "--file", one(f"{dead_letter}.replayed-*")) == 0
        assert "1 delivered (1 already there), 0 refused again" in capsys.readouterr().out
        assert es.count(INDEX1) == 3


def test_a_letter_refused_again_goes_to_the_refused_file_with_its_new_reason(tmp_path, capsys):
    with ElasticsearchReceiver() as es:
        write_es_log(tmp_path, ['{"status": 200}'])
        config = es_config(tmp_path, es.url)
        ship_once(config)
        dead_letter = tmp_path / "dead-letter-es.ndjson"
        # A letter refused for its size, but the index has taken `status` as a number meanwhile.
        DeadLetterFile(str(dead_letter), "es").write([{
            "reason": "request_entity_too_large", "status": 413, "error": "document exceeds http.max_content_length",
            "index": INDEX1, "id": "letter-1", "record": {"status": "teapot", "log": "conflict"}}])

        assert replay(config) == 1
        (again,) = letters(one(f"{dead_letter}.refused-*"))
        assert again["reason"] == "document_parsing_exception" and again["status"] == 400
        assert "failed to parse field [status] of type [long]" in again["error"]
        assert (again["sink"], again["index"], again["id"]) == ("es", INDEX1, "letter-1")
        assert again["record"] == {"status": "teapot", "log": "conflict"}
        output = capsys.readouterr().out
        assert f"0 delivered (0 already there), 1 refused again -> {one(f'{dead_letter}.refused-*')}" in output
        assert not dead_letter.exists()  # every letter is settled: delivered or in the refused file
        assert es.count(INDEX1) == 1


def test_batches_keep_to_the_sinks_batch_limits(tmp_path):
    with ElasticsearchReceiver() as es:
        config = refused_for_size(tmp_path, es, longs=5)
        es.max_content_length = DEFAULT_MAX_CONTENT_LENGTH
        config = es_config(tmp_path, es.url, batch={"max_records": 2})
        requests = len(es.exchanges)
        assert replay(config) == 0
        assert [len(exchange.item_statuses) for exchange in es.exchanges[requests:]] == [2, 2, 1]
        assert es.count(INDEX1) == 7


@pytest.mark.parametrize("trouble", ["down", "429"])
def test_a_destination_that_does_not_take_requests_leaves_the_file_untouched(tmp_path, capsys, trouble):
    with ElasticsearchReceiver() as es:
        config = refused_for_size(tmp_path, es)
        dead_letter = tmp_path / "dead-letter-es.ndjson"
        original = dead_letter.read_bytes()
        es.max_content_length = DEFAULT_MAX_CONTENT_LENGTH
        if trouble == "429":
            es.inject(*[RejectRequest(429)] * 10)
        else:
            es.stop()
        assert replay(config) == 1
        assert dead_letter.read_bytes() == original
        assert not glob.glob(f"{dead_letter}.*")
        error = capsys.readouterr().err
        expected = "connection" if trouble == "down" else "_bulk answered 429"
        assert expected in error and "5 times" in error and f"{dead_letter} is left as it was" in error
        if trouble == "429":
            assert es.count(INDEX1) == 2


def test_a_dry_run_prints_what_it_would_send_and_sends_nothing(tmp_path, capsys):
    with ElasticsearchReceiver() as es:
        config = refused_for_size(tmp_path, es, longs=2)
        dead_letter = tmp_path / "dead-letter-es.ndjson"
        original = dead_letter.read_bytes()
        requests = es.stats.requests
        assert replay(config, "--dry-run") == 0
        output = capsys.readouterr().out
        assert f"would send 2 letters from {dead_letter} to sink es (elasticsearch)" in output
        assert f"2  {INDEX1}  (was request_entity_too_large)" in output
        assert es.stats.requests == requests
        assert dead_letter.read_bytes() == original and not glob.glob(f"{dead_letter}.*")


def test_unreadable_lines_are_reported_and_counted_into_the_refused_file(tmp_path, capsys):
    with ElasticsearchReceiver() as es:
        config = refused_for_size(tmp_path, es)
        dead_letter = tmp_path / "dead-letter-es.ndjson"
        with open(dead_letter, "ab") as handle:
            handle.write(b'{"reason": "cut short", "index": "logstash-2026.11.20", "id": "a-1", "rec\n')
            handle.write(b'{"reason": "no record", "index": "logstash-2026.11.20", "id": "a-2"}\n')
        es.max_content_length = DEFAULT_MAX_CONTENT_LENGTH
        assert replay(config) == 1
        streams = capsys.readouterr()
        assert f"{dead_letter}:2: not JSON" in streams.err
        assert f"{dead_letter}:3: no 'record' (an object)" in streams.err
        assert "1 delivered (0 already there), 2 refused again" in streams.out
        unreadable = letters(one(f"{dead_letter}.refused-*"))
        assert [(letter["reason"], letter["error"].split(":")[0]) for letter in unreadable] == [
            ("unreadable_dead_letter", f"line 2 of {dead_letter}"),
            ("unreadable_dead_letter", f"line 3 of {dead_letter}")]
        assert unreadable[1]["text"] == '{"reason": "no record", "index": "logstash-2026.11.20", "id": "a-2"}'
        assert es.count(INDEX1) == 3


def test_letters_a_running_shipper_writes_during_the_replay_stay_for_the_next_one(tmp_path, capsys):
    with ElasticsearchReceiver() as es:
        config = refused_for_size(tmp_path, es)
        dead_letter = tmp_path / "dead-letter-es.ndjson"
        original = dead_letter.read_bytes()
        es.max_content_length = DEFAULT_MAX_CONTENT_LENGTH
        running_sink = DeadLetterFile(str(dead_letter), "es")
        running_sink.write([])  # opens the file, as the running shipper holds it
        es.inject(Delay(0.5))  # the replay has read the file and waits for its _bulk

        def dead_letter_meanwhile():
            time.sleep(0.2)
            running_sink.write([{"reason": "later", "index": INDEX1, "id": "later-1", "record": {"log": "later"}}])

        writer = threading.Thread(target=dead_letter_meanwhile)
        writer.start()
        assert replay(config) == 0
        writer.join()
        assert open(one(f"{dead_letter}.replayed-*"), "rb").read() == original
        assert [letter["id"] for letter in letters(dead_letter)] == ["later-1"]
        assert "moved back to" in capsys.readouterr().out
        running_sink.write([{"reason": "after", "index": INDEX1, "id": "after-1", "record": {"log": "after"}}])
        running_sink.close()
        assert [letter["id"] for letter in letters(dead_letter)] == ["later-1", "after-1"]


@pytest.mark.parametrize("sink, expected", [
    ("nope", "shipper.yaml: sinks: no sink named 'nope' (defined: es, out)"),
    ("out", "shipper.yaml: sinks.out.type: 'stdout' sinks write no dead-letter file"),
])
def test_a_sink_that_cannot_be_replayed_is_a_config_error(tmp_path, capsys, sink, expected):
    config = es_config(tmp_path, "http://127.0.0.1:9")
    assert replay(config, sink=sink) == 2
    assert expected in capsys.readouterr().err


def test_a_missing_file_given_on_the_command_line_is_an_error(tmp_path, capsys):
    config = es_config(tmp_path, "http://127.0.0.1:9")
    assert replay(config, "--file", str(tmp_path / "nope.ndjson")) == 1
    assert "nope.ndjson: no such file" in capsys.readouterr().err


# ---- Loki --------------------------------------------------------------------------------------


def loki_config(tmp_path, url: str, **options) -> str:
    return write_config(tmp_path, f"loki: {loki_sink_yaml(url, **options)}")


def refused_by_loki(tmp_path, loki: LokiReceiver, data: list[bytes], **options) -> str:
    """Ship ``data`` as one pod's log to ``loki`` under its current limits; returns the config."""
    write(pod_log(tmp_path), data)
    config = loki_config(tmp_path, loki.url, **options)
    ship_once(config)
    assert (tmp_path / "dead-letter-loki.ndjson").exists()
    return config


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_loki_entries_land_once_in_their_stream_after_the_limit_is_raised(tmp_path, capsys, encoding):
    long_line = "y" * 150
    with LokiReceiver(clock_ns=fixed_clock, limits=LokiLimits(max_line_size_bytes=100)) as loki:
        config = refused_by_loki(tmp_path, loki, numbered(1) + [cri(T, "stderr", "F", long_line)] + numbered(1, 1),
                                 encoding=encoding)
        dead_letter = tmp_path / "dead-letter-loki.ndjson"
        (letter,) = letters(dead_letter)
        assert letter["reason"] == "line_too_long"
        loki.limits = LokiLimits()  # the operator raised max_line_size

        assert replay(config, sink="loki") == 0
        assert "1 delivered (0 already there), 0 refused again" in capsys.readouterr().out
        (entry,) = [entry for entry in loki.entries() if entry.line == long_line]
        assert entry.ts_ns == letter["ts_ns"]
        assert entry.labels == lines_stream(loki, "line 0") | {"stream": "stderr"}
        assert not dead_letter.exists() and one(f"{dead_letter}.replayed-*")

        pushes = loki.stats.push_requests
        assert replay(config, sink="loki") == 0
        assert loki.stats.push_requests == pushes
        assert sorted(lines(loki)) == sorted(["line 0", "line 1", long_line])


def lines_stream(loki: LokiReceiver, line: str) -> dict:
    (entry,) = [entry for entry in loki.entries() if entry.line == line]
    return entry.labels


def test_loki_structured_metadata_is_pushed_again_with_its_entry(tmp_path):
    traced = '{"msg":"traced","trace_id":"abc"}'
    with LokiReceiver(clock_ns=fixed_clock, limits=LokiLimits(allow_structured_metadata=False)) as loki:
        config = refused_by_loki(tmp_path, loki, [cri(T, "stdout", "F", traced)],
                                 structured_metadata={"trace_id": "trace_id"})
        loki.limits = LokiLimits()
        assert replay(config, sink="loki") == 0
        (entry,) = loki.entries()
        assert (entry.line, entry.structured_metadata) == (traced, {"trace_id": "abc"})


def test_loki_entries_refused_again_go_to_the_refused_file_and_the_rest_is_delivered(tmp_path, capsys):
    with LokiReceiver(clock_ns=fixed_clock, limits=LokiLimits(max_line_size_bytes=100)) as loki:
        config = refused_by_loki(tmp_path, loki, [cri(OLD, "stdout", "F", "old"), cri(T, "stdout", "F", "z" * 150)])
        dead_letter = tmp_path / "dead-letter-loki.ndjson"
        assert sorted(letter["reason"] for letter in letters(dead_letter)) == ["line_too_long", "too_old"]
        loki.limits = LokiLimits(max_line_size_bytes=1000)  # the size limit is raised; the old entry stays old

        assert replay(config, sink="loki") == 1
        (again,) = letters(one(f"{dead_letter}.refused-*"))
        assert (again["reason"], again["status"], again["line"], again["sink"]) == ("too_old", 400, "old", "loki")
        assert "has timestamp too old" in again["error"]
        assert "1 delivered (0 already there), 1 refused again -> " in capsys.readouterr().out
        assert lines(loki) == ["z" * 150]


def test_loki_down_leaves_the_file_untouched_and_a_dry_run_sends_nothing(tmp_path, capsys):
    with LokiReceiver(clock_ns=fixed_clock, limits=LokiLimits(max_line_size_bytes=100)) as loki:
        config = refused_by_loki(tmp_path, loki, [cri(T, "stdout", "F", "z" * 150)] * 2 + numbered(1))
        dead_letter = tmp_path / "dead-letter-loki.ndjson"
        original = dead_letter.read_bytes()
        stream = letters(dead_letter)[0]["stream"]
        pushes = loki.stats.push_requests

        assert replay(config, "--dry-run", sink="loki") == 0
        assert f"2  {stream}  (was line_too_long)" in capsys.readouterr().out
        assert loki.stats.push_requests == pushes

        loki.inject_fault(Fault.UNAVAILABLE, count=5)
        assert replay(config, sink="loki") == 1
        assert "answered 503" in capsys.readouterr().err and loki.stats.push_requests == pushes + 5
        loki.stop()
        assert replay(config, sink="loki") == 1
        assert "connection error pushing to" in capsys.readouterr().err
        assert dead_letter.read_bytes() == original and not glob.glob(f"{dead_letter}.*")


def test_a_label_set_is_read_back_from_the_text_the_sink_wrote():
    pairs = {"app": 'say "hi"\\', "pod": "tab\there", "z": "ünï\x01"}
    assert parse_stream(StreamLabels(pairs).text) == pairs
    assert parse_stream('{a="1" b="2"}') is None
    assert parse_stream("{}") is None
