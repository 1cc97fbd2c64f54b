"""The Elasticsearch sink against the strict receiver: every record lands once, every error
class is handled the way PROTOCOLS.md §1 says it must be."""

import asyncio
import glob
import logging
import os

import orjson
import pytest

from elasticsearch import Elasticsearch

from shipper.cli import build_sinks, samples_glob
from shipper.config import load_config, parse_config
from shipper.metrics import Metrics
from shipper.pipeline import Input, Pipeline
from tests.helpers import acknowledged, cri, held_until_dead_letters_can_be_written, ship, wait_for
from tests.receivers.elasticsearch import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    Delay,
    DropConnection,
    ElasticsearchReceiver,
    FailItems,
    ItemFault,
    RejectRequest,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAY1 = "2026-11-20T10:00:00.5Z"
DAY2 = "2026-11-21T00:00:01.25Z"
INDEX1 = "logstash-2026.11.20"


def sink_yaml(url: str, **options) -> str:
    settings = {"type": "elasticsearch", "endpoints": [url],
                "retry": {"initial_backoff_secs": 0.01, "max_backoff_secs": 0.05, "auth_backoff_secs": 0.2},
                "batch": {"flush_secs": 0.02}, **options}
    return orjson.dumps(settings).decode()


def make(tmp_path, url: str, read: str = "", buffer: str = "", paths: list[str] | None = None, one_shot=False,
         **options) -> tuple[Pipeline, Metrics]:
    paths = paths or [str(tmp_path / "*.log")]
    text = (
        f"positions: {{path: {tmp_path}/positions.json, checkpoint_interval_secs: 0.05}}\n"
        f"read: {{poll_interval_secs: 0.01{read}}}\n"
        f"buffer: {{{buffer}}}\n"
        "metrics: {listen: null}\n"
        "shutdown: {grace_secs: 1}\n"
        "node_name: node-1\n"
        f"inputs: {{app: {{paths: {orjson.dumps(paths).decode()}, sinks: [es]}}}}\n"
        f"sinks: {{es: {sink_yaml(url, **options)}}}\n"
    )
    config = parse_config(text, "test.yaml")
    metrics = Metrics()
    sinks = build_sinks(config, metrics)
    inputs = [Input.from_config(inp, [sinks[name] for name in inp.sinks]) for inp in config.inputs]
    return Pipeline(config, inputs, metrics, one_shot=one_shot, persist_positions=not one_shot), metrics


def write_lines(path, count: int, start: int = 0, time: str = DAY1) -> None:
    with open(path, "ab") as handle:
        handle.write(b"".join(cri(time, "stdout", "F", f"line {i}") for i in range(start, start + count)))


def messages(es: ElasticsearchReceiver, index: str = INDEX1) -> list[str]:
    return sorted((doc["log"] for doc in es.documents(index)), key=lambda m: int(m.split()[-1]))


@pytest.mark.parametrize("version", ["8.19.0", "9.1.0"])
def test_the_sample_logs_land_with_a_count_equal_to_the_records(tmp_path, version):
    """With the example configuration: one index per namespace and day."""
    environ = {"ES_URL": "", "ES_PASSWORD": "", "SHIPPER_LOG_GLOB": samples_glob(),
               "SHIPPER_POSITIONS": str(tmp_path / "positions.json"),
               "SHIPPER_DEAD_LETTER": str(tmp_path / "dead-letter.ndjson")}
    with ElasticsearchReceiver(version=version, auth=BasicAuth("elastic", "changeme")) as es:
        environ["ES_URL"] = es.url
        config = load_config(os.path.join(REPO, "config", "elasticsearch.yaml"), environ)
        metrics = Metrics()
        sinks = build_sinks(config, metrics)
        inputs = [Input.from_config(inp, [sinks[name] for name in inp.sinks]) for inp in config.inputs]
        asyncio.run(Pipeline(config, inputs, metrics, one_shot=True, persist_positions=False).run())
        assert metrics.value("shipper_records_total") == 115
        # Asked as Kibana would, with the official client (in 8.x compatibility for both majors).
        client = Elasticsearch(es.url, basic_auth=("elastic", "changeme"))
        compat_8 = {"accept": "application/vnd.elasticsearch+json; compatible-with=8"}
        assert client.perform_request("GET", "/logstash-*/_count", headers=compat_8)["count"] == 115
        assert not (tmp_path / "dead-letter.ndjson").exists()
        (relay_file,) = glob.glob(samples_glob().replace("*.log", "kubearmor-relay-*.log"))
        with open(relay_file, "rb") as handle:
            sample_alerts = sum(b'"Severity"' in line for line in handle)
        alerts = [doc for doc in es.documents("logstash-kubearmor-2026.11.20") if "Severity" in doc]
        # Kibana charts alerts by severity: a number in every alert, so one mapping type.
        assert len(alerts) == sample_alerts and all(isinstance(doc["Severity"], int) for doc in alerts)


@pytest.mark.parametrize("version", ["8.19.0", "9.1.0"])
def test_records_land_once_with_ids_from_file_and_offset(tmp_path, version):
    log = tmp_path / "app.log"
    write_lines(log, 30)
    with ElasticsearchReceiver(version=version) as es:
        pipeline, metrics = make(tmp_path, es.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert messages(es) == [f"line {i}" for i in range(30)]
        # The id names the file and the line's byte offset in it.
        data = log.read_bytes()
        line_starts = [0] + [i + 1 for i, byte in enumerate(data[:-1]) if byte == ord("\n")]
        file_ids, offsets = zip(*(doc_id.rsplit("-", 1) for doc_id in es.ids(INDEX1)))
        assert len(set(file_ids)) == 1
        assert sorted(int(offset, 16) for offset in offsets) == line_starts
        assert metrics.value("shipper_sink_records_total", sink="es") == 30


def test_a_replay_creates_no_duplicates_and_counts_as_delivered(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 20)
    with ElasticsearchReceiver() as es:
        pipeline, _ = make(tmp_path, es.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        (tmp_path / "positions.json").unlink()  # as if the positions were lost in a crash
        write_lines(log, 5, start=20)
        pipeline, metrics = make(tmp_path, es.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert messages(es) == [f"line {i}" for i in range(25)]
        assert metrics.value("shipper_sink_records_replayed_total", sink="es") == 20
        assert metrics.value("shipper_sink_records_total", sink="es") == 25


def test_the_index_date_comes_from_each_records_own_time_in_utc(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 2, time="2026-11-20T23:59:59.9-02:00")  # 01:59 UTC on the 21st
    write_lines(log, 3, start=2, time=DAY1)
    with ElasticsearchReceiver() as es:
        pipeline, _ = make(tmp_path, es.url, index="k8s-%Y.%m.%d")
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert sorted(es.indices()) == ["k8s-2026.11.20", "k8s-2026.11.21"]
        assert es.count("k8s-2026.11.21") == 2 and es.count("k8s-2026.11.20") == 3


def test_a_data_stream_receives_create_actions(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 4)
    with ElasticsearchReceiver() as es:
        pipeline, _ = make(tmp_path, es.url, data_stream="logs-kubernetes-default")
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert es.count("logs-kubernetes-default") == 4


@pytest.mark.parametrize("status", [429, 500, 503])
def test_whole_request_failures_are_retried_until_delivered(tmp_path, status):
    log = tmp_path / "app.log"
    write_lines(log, 10)
    with ElasticsearchReceiver() as es:
        es.inject(*[RejectRequest(status)] * 4)
        pipeline, metrics = make(tmp_path, es.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert messages(es) == [f"line {i}" for i in range(10)]
        assert metrics.value("shipper_sink_retries_total", sink="es", reason=f"http_{status}") == 4


def test_a_dropped_connection_after_indexing_is_retried_without_duplicates(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 10)
    with ElasticsearchReceiver() as es:
        es.inject(DropConnection(after_processing=True))
        pipeline, metrics = make(tmp_path, es.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert messages(es) == [f"line {i}" for i in range(10)]
        assert metrics.value("shipper_sink_retries_total", sink="es", reason="connection") == 1
        assert metrics.value("shipper_sink_records_replayed_total", sink="es") == 10


def test_a_request_slower_than_the_timeout_is_sent_again(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 5)
    with ElasticsearchReceiver() as es:
        es.inject(Delay(1.0))
        pipeline, metrics = make(tmp_path, es.url, request_timeout_secs=0.2)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert messages(es) == [f"line {i}" for i in range(5)]
        assert metrics.value("shipper_sink_retries_total", sink="es", reason="timeout") == 1


def test_per_item_rejections_are_retried_alone(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 10)
    with ElasticsearchReceiver() as es:
        es.inject(FailItems({2: ItemFault.REJECTED, 7: ItemFault.UNAVAILABLE}))
        pipeline, metrics = make(tmp_path, es.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert messages(es) == [f"line {i}" for i in range(10)]
        sizes = [exchange.item_statuses for exchange in es.exchanges]
        assert sizes[0].count(201) == 8 and sizes[1] == (201, 201)
        assert metrics.value("shipper_sink_retries_total", sink="es", reason="es_rejected_execution_exception") == 1
        assert metrics.value("shipper_sink_retries_total", sink="es", reason="unavailable_shards_exception") == 1


def test_a_413_splits_the_batch_and_a_single_oversized_document_is_dead_lettered(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 40)
    with open(log, "ab") as handle:
        handle.write(cri(DAY1, "stdout", "F", "x" * 6000))
    with ElasticsearchReceiver(max_content_length=4096) as es:
        pipeline, metrics = make(tmp_path, es.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert messages(es) == [f"line {i}" for i in range(40)]
        assert metrics.value("shipper_sink_retries_total", sink="es", reason="http_413") >= 2
        (letter,) = [orjson.loads(line) for line in (tmp_path / "dead-letter-es.ndjson").read_bytes().splitlines()]
        assert letter["status"] == 413 and letter["record"]["log"] == "x" * 6000
        assert metrics.value("shipper_sink_records_dead_lettered_total", sink="es",
                             reason="request_entity_too_large") == 1


def test_mapping_conflicts_go_to_the_dead_letter_file_with_the_reason(tmp_path):
    log = tmp_path / "app.log"
    with open(log, "ab") as handle:
        handle.write(cri(DAY1, "stdout", "F", '{"status": 200, "msg": "ok"}'))
        handle.write(cri(DAY1, "stdout", "F", '{"status": "teapot", "msg": "conflict"}'))
        handle.write(cri(DAY1, "stdout", "F", '{"status": 204, "msg": "fine"}'))
    with ElasticsearchReceiver() as es:
        # One request at a time: which document sets the field type must not be a race.
        pipeline, metrics = make(tmp_path, es.url, batch={"max_records": 1, "flush_secs": 0.02},
                                 max_in_flight_requests=1)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert sorted(doc["msg"] for doc in es.documents(INDEX1)) == ["fine", "ok"]
        (letter,) = [orjson.loads(line) for line in (tmp_path / "dead-letter-es.ndjson").read_bytes().splitlines()]
        assert letter["reason"] == "document_parsing_exception" and letter["status"] == 400
        assert "failed to parse field [status] of type [long]" in letter["error"]
        assert letter["record"]["msg"] == "conflict" and letter["index"] == INDEX1
        assert metrics.value("shipper_sink_records_dead_lettered_total", sink="es",
                             reason="document_parsing_exception") == 1


@pytest.mark.parametrize(
    ("credential", "auth"),
    [
        (BasicAuth("shipper", "s3cret"), {"user": "shipper", "password": "s3cret"}),
        (ApiKeyAuth("id1", "key1"), {"api_key": "aWQxOmtleTE="}),
        (BearerAuth("tok"), {"bearer_token": "tok"}),
    ],
)
def test_authentication_kinds(tmp_path, credential, auth):
    log = tmp_path / "app.log"
    write_lines(log, 3)
    with ElasticsearchReceiver(auth=credential) as es:
        pipeline, _ = make(tmp_path, es.url, auth=auth)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert es.count(INDEX1) == 3


def test_refused_credentials_are_reported_loudly_and_retried_slowly(tmp_path, caplog):
    log = tmp_path / "app.log"
    write_lines(log, 3)
    secret_file = tmp_path / "password"
    secret_file.write_text("wrong\n")
    with ElasticsearchReceiver(version="8.19.0") as es:
        es.auth = BasicAuth("shipper", "right")
        pipeline, metrics = make(tmp_path, es.url, auth={"user": "shipper", "password_file": str(secret_file)})

        async def scenario():
            task = asyncio.create_task(pipeline.run())
            await wait_for(lambda: "refused the credentials" in caplog.text or "GET / answered 401" in caplog.text)
            await asyncio.sleep(0.3)
            assert es.count() == 0
            es.auth = BasicAuth("shipper", "wrong")  # the operator fixes the role or secret
            await wait_for(lambda: acknowledged(pipeline, log))
            pipeline.stop()
            await task

        with caplog.at_level(logging.WARNING):
            asyncio.run(scenario())
        assert es.count(INDEX1) == 3
        assert "wrong" not in caplog.text  # the secret is never logged
        assert es.stats.requests < 10  # slowly: auth_backoff_secs apart, not a hot loop


def test_gzip_compression(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 5)
    with ElasticsearchReceiver() as es:
        pipeline, _ = make(tmp_path, es.url, compression="gzip")
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert es.count(INDEX1) == 5
        assert {exchange.content_encoding for exchange in es.exchanges} == {"gzip"}


def test_reading_pauses_while_elasticsearch_is_down_and_resumes_without_loss(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 20000)  # ~0.8 MB, far over the 64 KiB budget below
    budget, chunk = 65536, 16384
    with ElasticsearchReceiver() as es:
        es.inject(*[RejectRequest(429)] * 30)
        pipeline, metrics = make(tmp_path, es.url, read=f", chunk_bytes: {chunk}", buffer=f"max_in_flight_bytes: {budget}")

        async def scenario():
            task = asyncio.create_task(pipeline.run())
            await wait_for(lambda: metrics.value("shipper_sink_retries_total", sink="es") >= 10)
            # While refused, reading stops once the sink holds the budget in encoded records
            # (short lines grow about 8x with their metadata, so well before the raw budget).
            held = metrics.value("shipper_sink_in_flight_bytes", sink="es")
            assert budget <= held <= budget + 10 * chunk
            assert metrics.value("shipper_read_bytes_total") < budget
            await wait_for(lambda: acknowledged(pipeline, log), timeout=60)
            pipeline.stop()
            await task

        asyncio.run(scenario())
        assert messages(es) == [f"line {i}" for i in range(20000)]


def test_several_requests_are_in_flight_at_once(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 40)
    with ElasticsearchReceiver() as es:
        es.inject(*[Delay(0.5)] * 4)
        pipeline, _ = make(tmp_path, es.url, batch={"max_records": 10, "flush_secs": 0.02}, max_in_flight_requests=3)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert messages(es) == [f"line {i}" for i in range(40)]
        # Each concurrent request needs its own keep-alive connection: three senders, three.
        assert es.stats.connections == 3


def test_a_forbidden_bulk_is_retried_slowly_until_the_role_allows_it(tmp_path, caplog):
    log = tmp_path / "app.log"
    write_lines(log, 3)
    with ElasticsearchReceiver() as es:
        reason = "action [indices:data/write/bulk[s]] is unauthorized for user [shipper]"
        es.inject(*[RejectRequest(403, "security_exception", reason)] * 2)
        pipeline, metrics = make(tmp_path, es.url)
        with caplog.at_level(logging.ERROR):
            asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert es.count(INDEX1) == 3
        assert metrics.value("shipper_sink_retries_total", sink="es", reason="http_403") == 2
        assert "refused the credentials (HTTP 403: security_exception: " + reason in caplog.text


def test_a_whole_request_refusal_that_retrying_cannot_fix_is_dead_lettered(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 3)
    with ElasticsearchReceiver() as es:
        es.inject(RejectRequest(400, "illegal_argument_exception", "no write index is defined for alias [logs]"))
        pipeline, metrics = make(tmp_path, es.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        letters = [orjson.loads(line) for line in (tmp_path / "dead-letter-es.ndjson").read_bytes().splitlines()]
        assert [letter["record"]["log"] for letter in letters] == ["line 0", "line 1", "line 2"]
        assert {letter["error"] for letter in letters} == {"no write index is defined for alias [logs]"}
        assert metrics.value("shipper_sink_records_dead_lettered_total", sink="es",
                             reason="illegal_argument_exception") == 3
        assert es.count() == 0


def test_tls_verifies_the_server_with_the_configured_ca_and_presents_a_client_certificate(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 3)
    with ElasticsearchReceiver(tls=True, require_client_cert=True) as es:
        tls = {"ca_file": es.ca_file, "cert_file": es.client_cert_file, "key_file": es.client_key_file}
        pipeline, _ = make(tmp_path, es.url, tls=tls)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert es.count(INDEX1) == 3


def test_an_unverifiable_server_certificate_is_refused_and_retried(tmp_path, caplog):
    log = tmp_path / "app.log"
    write_lines(log, 3)
    with ElasticsearchReceiver(tls=True) as es:
        pipeline, metrics = make(tmp_path, es.url)  # verify on, the system CAs do not know this one

        async def scenario():
            task = asyncio.create_task(pipeline.run())
            await wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text)
            pipeline.stop()
            await task

        with caplog.at_level(logging.WARNING):
            asyncio.run(scenario())
        assert es.count() == 0
        assert not acknowledged(pipeline, log)


def test_a_document_over_the_field_limit_is_dead_lettered_and_the_rest_indexed(tmp_path):
    log = tmp_path / "app.log"
    with open(log, "ab") as handle:
        handle.write(cri(DAY1, "stdout", "F", '{"a": 1}'))
        handle.write(cri(DAY1, "stdout", "F", orjson.dumps({f"field{i}": i for i in range(60)}).decode()))
        handle.write(cri(DAY1, "stdout", "F", '{"a": 2}'))
    with ElasticsearchReceiver(total_fields_limit=50) as es:
        pipeline, metrics = make(tmp_path, es.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert sorted(doc["a"] for doc in es.documents(INDEX1)) == [1, 2]
        (letter,) = [orjson.loads(line) for line in (tmp_path / "dead-letter-es.ndjson").read_bytes().splitlines()]
        assert "Limit of total fields [50] has been exceeded" in letter["error"]
        assert letter["record"]["field59"] == 59
        histogram = metrics.value("shipper_sink_request_seconds_count", sink="es", outcome="ok")
        assert histogram >= 1


def test_per_item_refusals_an_operator_must_fix_are_kept_and_retried_slowly(tmp_path, caplog):
    log = tmp_path / "app.log"
    write_lines(log, 4)
    with ElasticsearchReceiver() as es:
        es.inject(FailItems({1: ItemFault.FORBIDDEN}))
        pipeline, metrics = make(tmp_path, es.url)
        with caplog.at_level(logging.ERROR):
            asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert messages(es) == [f"line {i}" for i in range(4)]
        assert not (tmp_path / "dead-letter-es.ndjson").exists()
        assert metrics.value("shipper_sink_retries_total", sink="es", reason="security_exception") == 1
        assert "1 documents wait for an operator (security_exception)" in caplog.text


def test_a_proxy_answer_that_is_not_elasticsearchs_keeps_the_documents(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 3)
    with ElasticsearchReceiver() as es:
        es.inject(RejectRequest(404, "index_not_found_exception", "no such index [_bulk]"), RejectRequest(405))
        pipeline, metrics = make(tmp_path, es.url)
        asyncio.run(ship(pipeline, lambda: acknowledged(pipeline, log)))
        assert messages(es) == ["line 0", "line 1", "line 2"]
        assert not (tmp_path / "dead-letter-es.ndjson").exists()
        assert metrics.value("shipper_sink_retries_total", sink="es", reason="http_404") == 1
        assert metrics.value("shipper_sink_retries_total", sink="es", reason="http_405") == 1


def test_a_node_of_another_major_after_discovery_makes_the_sink_ask_again(tmp_path):
    log = tmp_path / "app.log"
    write_lines(log, 2)
    with ElasticsearchReceiver(version="9.1.0") as es:
        pipeline, metrics = make(tmp_path, es.url)

        async def scenario():
            task = asyncio.create_task(pipeline.run())
            await wait_for(lambda: acknowledged(pipeline, log))
            es.version, es.major = "8.19.0", 8  # a rolling downgrade: the 9.x headers are refused now
            write_lines(log, 2, start=2)
            await wait_for(lambda: acknowledged(pipeline, log))
            pipeline.stop()
            await task

        asyncio.run(scenario())
        assert messages(es) == [f"line {i}" for i in range(4)]
        assert metrics.value("shipper_sink_retries_total", sink="es", reason="http_400") == 1
        assert not (tmp_path / "dead-letter-es.ndjson").exists()


def test_refused_documents_wait_while_the_dead_letter_file_cannot_be_written(tmp_path):
    log = tmp_path / "app.log"
    with open(log, "ab") as handle:
        handle.write(cri(DAY1, "stdout", "F", '{"n": 1}'))
        handle.write(cri(DAY1, "stdout", "F", '{"n": "one"}'))
    blocker = tmp_path / "blocked"
    blocker.write_text("")  # a file where the dead-letter directory should be
    with ElasticsearchReceiver() as es:
        pipeline, metrics = make(tmp_path, es.url, batch={"max_records": 1, "flush_secs": 0.02},
                                 dead_letter_path=str(blocker / "dead.ndjson"), max_in_flight_requests=1)
        held_until_dead_letters_can_be_written(pipeline, log, blocker, lambda: es.count() == 1)
        (letter,) = [orjson.loads(line) for line in (blocker / "dead.ndjson").read_bytes().splitlines()]
        assert letter["record"]["n"] == "one"
        assert metrics.value("shipper_sink_records_dead_lettered_total", sink="es") == 1
