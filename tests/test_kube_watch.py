"""The node's list+watch against the strict fake API server, through the official client."""

import time
from collections.abc import Iterator

import pytest

from shipper.kube.pod_metadata import MetadataOptions, PodMetadataCache
from shipper.kube.watch import ListWatch, NodeMetadataWatch, api_client
from shipper.metrics import Metrics
from tests.receivers.kube_api import FakeKubeApi, make_pod

NODE = "node-a"
FAST = {"initial_backoff_secs": 0.01, "max_backoff_secs": 0.05, "read_timeout_secs": 5.0}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def eventually(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi(bookmark_interval=None) as server:
        yield server


def start_watch(api: FakeKubeApi, cache: PodMetadataCache, metrics: Metrics | None = None, **options):
    watch = NodeMetadataWatch(api_client(str(api.write_kubeconfig())), NODE, cache, metrics or Metrics(),
                              **(FAST | options))
    watch.start()
    return watch


@pytest.fixture
def running(api):
    """A started watch with its cache, clock and metrics; stopped after the test."""
    clock = Clock()
    cache = PodMetadataCache(MetadataOptions(deleted_pod_grace_secs=60), clock=clock)
    metrics = Metrics()
    started = []

    def start(**options):
        watch = start_watch(api, cache, metrics, **options)
        started.append(watch)
        assert watch.pods.synced.wait(5)
        return watch

    yield start, cache, clock, metrics
    for watch in started:
        watch.stop()


def labels(cache: PodMetadataCache, name: str, namespace: str = "default"):
    found = cache.lookup(namespace, name, "app")
    return None if found is None else found.fields["labels"]


def pod_watch_queries(api: FakeKubeApi) -> list[dict]:
    return [r.query for r in api.requests if r.path == "/api/v1/pods" and r.query.get("watch")]


def test_pods_of_the_node_are_listed_then_added_relabelled_and_deleted_through_the_watch(api, running):
    start, cache, clock, metrics = running
    api.add_pod(make_pod("web-0", node_name=NODE, labels={"app": "web"}))
    api.add_pod(make_pod("db-0", node_name="node-b"))
    start()
    assert labels(cache, "web-0") == {"app": "web"}
    assert cache.lookup("default", "db-0", "app") is None  # another node's pod

    api.add_pod(make_pod("web-1", node_name=NODE))
    api.modify_pod("default", "web-0", {"metadata": {"labels": {"app": "web", "tier": "front"}}})
    api.delete_pod("default", "web-1")
    eventually(lambda: labels(cache, "web-0") == {"app": "web", "tier": "front"})

    assert labels(cache, "web-1") == {}  # deleted, but its logs may still be read: kept for the grace
    clock.now += 60
    api.add_pod(make_pod("web-2", node_name=NODE))
    eventually(lambda: cache.lookup("default", "web-2", "app") is not None)
    assert cache.lookup("default", "web-1", "app") is None
    assert metrics.value("shipper_kube_cache_pods") == 2
    assert metrics.value("shipper_kube_relists_total", resource="pods") == 1
    list_query = next(r.query for r in api.requests if r.path == "/api/v1/pods")
    assert list_query["fieldSelector"] == f"spec.nodeName={NODE}"


def test_a_pod_bound_to_the_node_after_creation_arrives(api, running):
    start, cache, _, _ = running
    api.add_pod(make_pod("late-0", node_name=None))
    start()

    api.modify_pod("default", "late-0", {"spec": {"nodeName": NODE}})

    eventually(lambda: cache.lookup("default", "late-0", "app") is not None)


@pytest.mark.parametrize("abort", [False, True], ids=["ended", "cut"])
def test_a_dropped_watch_resumes_from_the_last_resource_version_without_a_relist(api, running, abort):
    start, cache, _, metrics = running
    api.add_pod(make_pod("web-0", node_name=NODE))
    start()
    api.wait_for_watches(1)
    seen = api.add_pod(make_pod("web-1", node_name=NODE))
    eventually(lambda: cache.lookup("default", "web-1", "app") is not None)

    assert api.drop_watches(abort=abort) == 1
    api.add_pod(make_pod("web-2", node_name=NODE))

    eventually(lambda: cache.lookup("default", "web-2", "app") is not None)
    assert pod_watch_queries(api)[1]["resourceVersion"] == seen["metadata"]["resourceVersion"]
    assert metrics.value("shipper_kube_relists_total") == 1
    reason = "error" if abort else "ended"
    assert metrics.value("shipper_kube_watch_restarts_total", resource="pods", reason=reason) == 1


def test_a_bookmark_moves_the_resource_version_a_resumed_watch_starts_from(api, running):
    start, cache, _, _ = running
    start()
    api.wait_for_watches(1)
    api.add_pod(make_pod("db-0", node_name="node-b"))  # the RV moves on, unseen by this node's watch
    assert api.send_bookmark() == 1
    bookmarked = api.resource_version

    def resumed_from_bookmark() -> bool:
        api.drop_watches()
        queries = pod_watch_queries(api)
        return len(queries) > 1 and queries[-1]["resourceVersion"] == bookmarked

    eventually(resumed_from_bookmark)
    assert all(query["allowWatchBookmarks"] == "true" for query in pod_watch_queries(api))


def test_410_on_the_watch_relists_without_losing_or_growing_pods(api, running):
    start, cache, _, metrics = running
    for index in range(3):
        api.add_pod(make_pod(f"web-{index}", node_name=NODE))
    start()
    api.wait_for_watches(1)

    for round_ in range(3):
        api.expire_next_watch()
        api.drop_watches()  # the resumed watch gets the 410 ERROR event
        api.add_pod(make_pod(f"new-{round_}", node_name=NODE))
        eventually(lambda: metrics.value("shipper_kube_relists_total") == round_ + 2)
        eventually(lambda: cache.lookup("default", f"new-{round_}", "app") is not None)

    assert len(cache) == 6
    assert metrics.value("shipper_kube_watch_restarts_total", reason="expired") == 3
    assert all(cache.lookup("default", f"web-{i}", "app") is not None for i in range(3))


def test_a_watch_resuming_after_the_history_moved_on_relists_and_sees_the_deletes(api, running):
    start, cache, clock, metrics = running
    with FakeKubeApi(bookmark_interval=None, history_size=2) as small:
        small.add_pod(make_pod("web-0", node_name=NODE))
        small.add_pod(make_pod("web-1", node_name=NODE))
        watch = start_watch(small, cache, metrics)
        try:
            small.wait_for_watches(1)
            small.drop_watches(abort=True)
            small.delete_pod("default", "web-0")
            for index in range(4):  # more changes than the history holds
                small.add_pod(make_pod(f"db-{index}", node_name="node-b"))
            eventually(lambda: metrics.value("shipper_kube_relists_total") >= 2)
            assert cache.lookup("default", "web-0", "app") is not None  # gone from the list: in its grace
            clock.now += 60
            small.add_pod(make_pod("web-2", node_name=NODE))
            eventually(lambda: cache.lookup("default", "web-2", "app") is not None)
            assert cache.lookup("default", "web-0", "app") is None
        finally:
            watch.stop()


def test_api_errors_are_retried_with_backoff_until_the_list_succeeds(api):
    api.add_pod(make_pod("web-0", node_name=NODE))
    api.fail_next_request(503, times=3)
    api.fail_next_request(500, verb="watch")
    cache = PodMetadataCache()
    metrics = Metrics()
    watch = start_watch(api, cache, metrics)
    try:
        assert watch.pods.synced.wait(5)
        api.wait_for_watches(1)
        api.add_pod(make_pod("web-1", node_name=NODE))
        eventually(lambda: cache.lookup("default", "web-1", "app") is not None)
    finally:
        watch.stop()
    # The client retries a 503 itself at most a few times; every failure it gives up on is counted.
    assert metrics.value("shipper_kube_watch_restarts_total", reason="error") >= 2
    assert metrics.value("shipper_kube_relists_total") == 1


def test_a_stalled_watch_is_given_up_after_the_read_timeout_and_resumed(api, running):
    start, cache, _, metrics = running
    api.stall_next_request(60, verb="watch")  # stop() ends the stall
    start(read_timeout_secs=0.3)

    api.add_pod(make_pod("web-0", node_name=NODE))

    eventually(lambda: cache.lookup("default", "web-0", "app") is not None)
    assert len(pod_watch_queries(api)) >= 2


def test_a_wrong_token_is_retried_not_fatal(api):
    cache = PodMetadataCache()
    metrics = Metrics()
    watch = NodeMetadataWatch(api_client(str(api.write_kubeconfig(token="wrong"))), NODE, cache, metrics, **FAST)
    watch.start()
    try:
        eventually(lambda: metrics.value("shipper_kube_watch_restarts_total", reason="error") >= 2)
    finally:
        watch.stop()
    assert not watch.pods.synced.is_set()
    assert all(not request.authorized for request in api.requests)


def test_namespace_labels_come_from_a_second_watch(api):
    api.add_namespace("shop", labels={"team": "payments"})
    api.add_pod(make_pod("web-0", "shop", node_name=NODE))
    cache = PodMetadataCache(MetadataOptions(namespace_labels=True))
    watch = start_watch(api, cache)
    try:
        assert watch.namespaces.synced.wait(5)
        assert watch.pods.synced.wait(5)
        assert cache.lookup("shop", "web-0", "app").fields["namespace_labels"] == {
            "team": "payments",
            "kubernetes_io/metadata_name": "shop",
        }
        api.wait_for_watches(1, resource="namespaces")
        api.modify_namespace("shop", {"metadata": {"labels": {"team": "checkout"}}})
        eventually(lambda: cache.lookup("shop", "web-0", "app").fields["namespace_labels"]["team"] == "checkout")
    finally:
        watch.stop()
    assert not any(r.path == "/api/v1/namespaces" for r in api.requests if "fieldSelector" in r.query)


def test_stop_ends_an_open_watch_promptly(api, running):
    start, _, _, _ = running
    watch = start(read_timeout_secs=60)
    api.wait_for_watches(1)

    started = time.monotonic()
    watch.stop()

    assert time.monotonic() - started < 2
    assert not watch.pods._thread.is_alive()


class FakeResponse:
    """A watch response body delivered in given chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def stream(self, amt=None, decode_content=False):
        yield from self._chunks

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def test_unreadable_watch_events_are_counted_and_skipped_and_split_events_are_joined():
    events = []
    metrics = Metrics()
    chunks = [
        b'{"type":"ADDED","object":{"metadata":{"name":"a","namespace":"d","resourceVersion":"5"}}}\n{"ty',
        b'pe":"MODIFIED","object":{"metadata":{"name":"a","namespace":"d","resourceVersion":"6"}}}\n',
        b"not json\n",
        b'{"type":"ADDED","object":"not an object"}\n',
        b'{"type":"ADDED","object":{"metadata":{"name":"b"}}}\n',  # no resourceVersion
        b'{"type":"SURPRISE","object":{"metadata":{"resourceVersion":"7"}}}\n',
        b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}\n',
        b'{"type":"DELETED","object":{"metadata":{"name":"a","namespace":"d","resourceVersion":"1',  # cut
    ]
    watch = ListWatch("pods", lambda **_: FakeResponse(chunks), lambda items: None,
                      lambda kind, obj: events.append((kind, obj["metadata"]["resourceVersion"])), lambda: None, metrics)

    watch.resource_version = "4"

    delivered = watch._watch()

    assert events == [("ADDED", "5"), ("MODIFIED", "6")]
    assert (watch.resource_version, delivered) == ("9", True)
    assert metrics.value("shipper_kube_events_skipped_total") == 4


def test_pods_the_cache_cannot_read_count_as_skipped_events():
    from kubernetes.client import ApiClient

    cache = PodMetadataCache()
    metrics = Metrics()
    watch = NodeMetadataWatch(ApiClient(), NODE, cache, metrics)

    watch._pods_listed([make_pod("ok", node_name=NODE), {"metadata": {"name": "no-namespace"}}])
    watch._pod_event("ADDED", {"metadata": {"namespace": "default"}})

    assert metrics.value("shipper_kube_events_skipped_total", resource="pods") == 2
    assert metrics.value("shipper_kube_cache_pods") == 1
