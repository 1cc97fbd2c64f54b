"""Records enriched from the pod metadata cache while they flow, fed by the fake API server."""

import asyncio
import hashlib
import os
import time

import orjson
import pytest

from shipper.kube.pod_metadata import MetadataOptions, PodMetadataCache
from shipper.kube.watch import NodeMetadataWatch, api_client
from shipper.metrics import Metrics
from tests.helpers import CollectingSink, cri, make_config, make_pipeline, wait_for
from tests.receivers.kube_api import FakeKubeApi, make_pod

NODE = "node-a"
T = "2026-11-20T10:00:00.5Z"
# The Elasticsearch sink's default batch.flush_secs: records must reach a sink well within it.
FLUSH_SECS = 1.0
FAST_WATCH = {"initial_backoff_secs": 0.01, "max_backoff_secs": 0.05, "read_timeout_secs": 5.0}


def container_log(directory, pod: str, namespace: str = "default", container: str = "app"):
    container_id = hashlib.sha256(f"{namespace}/{pod}/{container}".encode()).hexdigest()
    return directory / f"{pod}_{namespace}_{container}-{container_id}.log"


class TimedSink(CollectingSink):
    """Records when each record arrived, to measure the time from write to sink."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[float] = []

    def accept(self, records, offsets, source, ack_range) -> None:
        self.arrived.extend([time.monotonic()] * len(records))
        super().accept(records, offsets, source, ack_range)


class Writer:
    def __init__(self, path) -> None:
        self.path = path
        self.written: list[float] = []

    def line(self, message: str) -> None:
        with open(self.path, "ab") as handle:
            handle.write(cri(T, "stdout", "F", message))
        self.written.append(time.monotonic())


def follow_with(tmp_path, sink, cache, **settings):
    config = make_config(tmp_path, [str(tmp_path / "*.log")], poll_interval_secs=0.01, rescan_interval_secs=0.05,
                         node_name=NODE, **settings)
    return make_pipeline(config, [sink], pod_metadata=cache)


def shipped(sink) -> list[dict]:
    """The records as a sink encodes them (their metadata is a pre-encoded fragment)."""
    return [orjson.loads(orjson.dumps(record)) for record in sink.records]


def by_message(sink) -> dict:
    return {record["log"]: record["kubernetes"] for record in shipped(sink)}


@pytest.fixture
def api():
    with FakeKubeApi(bookmark_interval=None) as server:
        yield server


def start_watch(api, cache):
    watch = NodeMetadataWatch(api_client(str(api.write_kubeconfig())), NODE, cache, Metrics(), **FAST_WATCH)
    watch.start()
    return watch


def test_records_follow_pods_added_relabelled_and_deleted_while_they_flow(tmp_path, api):
    cache = PodMetadataCache(MetadataOptions(deleted_pod_grace_secs=60))
    sink = CollectingSink()
    pipeline, metrics = follow_with(tmp_path, sink, cache)
    writer = Writer(container_log(tmp_path, "web-0"))
    api.add_pod(make_pod("web-0", node_name=NODE, labels={"app": "web"}, owner=("StatefulSet", "web")))
    watch = start_watch(api, cache)

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        try:
            assert await asyncio.to_thread(watch.pods.synced.wait, 5)
            writer.line("first")
            await wait_for(lambda: "first" in by_message(sink))
            await asyncio.to_thread(api.wait_for_watches, 1)
            api.modify_pod("default", "web-0", {"metadata": {"labels": {"app": "web", "version": "2"}}})
            await wait_for(lambda: cache.lookup("default", "web-0", "app").fields["labels"].get("version") == "2")
            writer.line("relabelled")
            await wait_for(lambda: "relabelled" in by_message(sink))
            relabelled_version = cache.version
            api.delete_pod("default", "web-0")
            await wait_for(lambda: cache.version > relabelled_version)
            writer.line("after delete")
            await wait_for(lambda: "after delete" in by_message(sink))
        finally:
            pipeline.stop()
            await task
            watch.stop()

    asyncio.run(scenario())

    records = by_message(sink)
    assert records["first"]["labels"] == {"app": "web"}
    assert (records["first"]["owner_kind"], records["first"]["owner_name"]) == ("StatefulSet", "web")
    assert records["first"]["host"] == NODE
    assert records["relabelled"]["labels"] == {"app": "web", "version": "2"}
    assert records["after delete"]["labels"] == {"app": "web", "version": "2"}  # deleted, within its grace
    assert metrics.value("shipper_kube_records_without_metadata_total") == 0


def test_a_pod_created_after_its_first_log_line_gets_metadata_once_the_watch_delivers_it(tmp_path, api):
    cache = PodMetadataCache()
    sink = CollectingSink()
    pipeline, metrics = follow_with(tmp_path, sink, cache)
    path = container_log(tmp_path, "late-0", "shop")
    writer = Writer(path)
    api.add_pod(make_pod("other", node_name=NODE))
    watch = start_watch(api, cache)

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        try:
            assert await asyncio.to_thread(watch.pods.synced.wait, 5)
            writer.line("before the pod is known")
            await wait_for(lambda: len(sink.records) == 1)
            await asyncio.to_thread(api.wait_for_watches, 1)
            api.add_pod(make_pod("late-0", "shop", node_name=NODE, labels={"app": "late"}))
            await wait_for(lambda: cache.lookup("shop", "late-0", "app") is not None)
            writer.line("after")
            await wait_for(lambda: len(sink.records) == 2)
        finally:
            pipeline.stop()
            await task
            watch.stop()

    asyncio.run(scenario())

    early, late = shipped(sink)
    container_id = path.name.rsplit("-", 1)[1].removesuffix(".log")
    assert early["kubernetes"] == {
        "pod_name": "late-0", "namespace_name": "shop", "container_name": "app",
        "container_id": container_id, "docker_id": container_id, "host": NODE,
    }
    assert late["kubernetes"]["labels"] == {"app": "late"}
    assert late["kubernetes"]["container_id"] == container_id  # the file's container, not the status's
    assert late["kubernetes"]["container_image"] == "docker.io/library/nginx:1.27"
    assert metrics.value("shipper_kube_records_without_metadata_total") == 1


@pytest.mark.slow
@pytest.mark.parametrize(("outage", "lines", "interval"), [("stalled", 120, 1.0), ("refusing", 20, 0.1)])
def test_the_api_being_down_never_delays_records(tmp_path, outage, lines, interval):
    """Two minutes of an API that hangs every request, and seconds of one refusing them."""
    cache = PodMetadataCache()
    sink = TimedSink()
    pipeline, metrics = follow_with(tmp_path, sink, cache)
    writer = Writer(container_log(tmp_path, "web-0"))
    api = FakeKubeApi(bookmark_interval=None)
    api.start()
    kubeconfig = tmp_path / "kubeconfig"
    (tmp_path / "ca.pem").write_bytes(api.ca_pem)
    kubeconfig.write_text(api.write_kubeconfig().read_text().replace(str(api.ca_path), str(tmp_path / "ca.pem")))
    if outage == "stalled":
        api.stall_next_request(600, times=100)  # every request hangs until the server stops
    else:
        api.stop()  # connections refused from the start
    watch = NodeMetadataWatch(api_client(str(kubeconfig)), NODE, cache, Metrics(),
                              **(FAST_WATCH | {"read_timeout_secs": 60}))
    watch.start()

    async def scenario():
        task = asyncio.create_task(pipeline.run())
        try:
            for index in range(lines):
                writer.line(f"line {index}")
                await asyncio.sleep(interval)
            await wait_for(lambda: len(sink.records) == lines)
            assert not watch.pods.synced.is_set()  # the API never answered meanwhile
        finally:
            pipeline.stop()
            await task

    try:
        asyncio.run(scenario())
    finally:
        watch.stop()
        api.stop()

    latencies = [arrived - written for arrived, written in zip(sink.arrived, writer.written)]
    assert max(latencies) < FLUSH_SECS / 2
    assert metrics.value("shipper_kube_records_without_metadata_total") == lines


def test_an_excluded_pod_is_read_and_acknowledged_but_not_shipped(tmp_path):
    cache = PodMetadataCache()
    cache.replace_pods([
        make_pod("quiet", annotations={"shipper.io/exclude": "true"}),
        make_pod("chatty", annotations={"shipper.io/exclude-sidecar": "true"},
                 containers=(("app", "a:1"), ("sidecar", "s:1"))),
    ])
    for pod, container in (("quiet", "app"), ("chatty", "app"), ("chatty", "sidecar")):
        Writer(container_log(tmp_path, pod, container=container)).line(f"{pod}/{container}")
    sink = CollectingSink()
    pipeline, metrics = follow_with(tmp_path, sink, cache)

    asyncio.run(read_once(pipeline))

    assert [record["log"] for record in sink.records] == ["chatty/app"]
    assert metrics.value("shipper_kube_records_excluded_total") == 2
    sizes = {tailed.path: os.path.getsize(tailed.path) for tailed in pipeline.files.values()}
    assert {tailed.path: tailed.acks.checkpoint for tailed in pipeline.files.values()} == sizes


async def read_once(pipeline):
    pipeline.one_shot = True
    pipeline.persist_positions = False
    await pipeline.run()


def test_a_parser_annotation_chooses_how_messages_are_parsed(tmp_path):
    cache = PodMetadataCache()
    cache.replace_pods([
        make_pod("plain", annotations={"shipper.io/parser": "text"}),
        make_pod("merged"),
    ])
    for pod in ("plain", "merged"):
        Writer(container_log(tmp_path, pod)).line('{"level":"info","msg":"hello"}')
    sink = CollectingSink()
    pipeline, _ = follow_with(tmp_path, sink, cache)

    asyncio.run(read_once(pipeline))

    records = {record["kubernetes"]["pod_name"]: record for record in shipped(sink)}
    assert "level" not in records["plain"]
    assert records["merged"]["level"] == "info"


KUBEARMOR_ALERT = orjson.dumps({
    "Timestamp": 1795168800, "UpdatedTime": "2026-11-20T10:00:00.301798Z", "HostName": "node-1",
    "Type": "MatchedPolicy", "Operation": "Process", "Severity": "5", "Action": "Block",
}).decode()


def test_a_kubearmor_parser_annotation_recognises_alerts_from_any_container_name(tmp_path):
    cache = PodMetadataCache()
    cache.replace_pods([
        make_pod("relay", annotations={"shipper.io/parser-forwarder": "kubearmor"}, containers=(("forwarder", "r:1"),)),
        make_pod("plain", containers=(("forwarder", "r:1"),)),
    ])
    for pod in ("relay", "plain"):
        Writer(container_log(tmp_path, pod, container="forwarder")).line(KUBEARMOR_ALERT)
    sink = CollectingSink()
    pipeline, metrics = follow_with(tmp_path, sink, cache)

    asyncio.run(read_once(pipeline))

    records = {record["kubernetes"]["pod_name"]: record for record in shipped(sink)}
    assert records["relay"]["Severity"] == 5  # KubeArmor's stable type: an integer
    assert records["plain"]["Severity"] == "5"  # merged as plain app JSON: a container not named kubearmor*
    assert metrics.value("shipper_security_events_total", kind="kubearmor") == 1
