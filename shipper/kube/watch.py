"""List+watch through the official client, in a thread, feeding the pod metadata cache.

One ``ListWatch`` per resource: list (in pages), then watch from the list's resourceVersion
with bookmarks, resuming from the last RV seen whenever a watch ends (the server's timeout,
a dropped connection, a stalled read). A ``410 Gone`` (an ERROR event on the watch, or a
status on a stale page) means the RV is too old: list again. Other failures wait a capped
exponential backoff with full jitter first. Nothing here is awaited by the data path.

The official client's ``Watch.stream`` is not used: it builds a model object per pod (which
the cache would throw away at once), retries a 410 once silently with the same stale RV, and
with ``deserialize=False`` it fails on ERROR events. Reading the response lines here keeps the
RV handling explicit (PROTOCOLS.md section 6); the client still does config, auth and TLS.
"""

import logging
import random
import socket
import threading
from collections.abc import Callable

import orjson

log = logging.getLogger("shipper.kube")

GONE = 410


class ResourceExpired(Exception):
    """The RV the watch resumed from is older than the server's history: list again."""


class WatchError(Exception):
    """The server ended a watch with an ERROR event other than 410."""


class ListWatch:
    """Keeps one resource in sync through ``on_list`` (a full list) and ``on_event``.

    ``list_function`` is a generated client method such as
    ``CoreV1Api.list_pod_for_all_namespaces``; ``selector`` its ``field_selector`` (or None).
    ``metrics`` (a ``shipper.metrics.Metrics``) counts restarts, relists and skipped events.
    """

    def __init__(
        self,
        resource: str,
        list_function: Callable,
        on_list: Callable[[list], None],
        on_event: Callable[[str, dict], None],
        on_bookmark: Callable[[], None],
        metrics,
        *,
        field_selector: str | None = None,
        watch_timeout_secs: int = 300,
        read_timeout_secs: float = 330.0,
        connect_timeout_secs: float = 10.0,
        initial_backoff_secs: float = 0.5,
        max_backoff_secs: float = 30.0,
        page_size: int = 500,
    ) -> None:
        """``watch_timeout_secs`` asks the server to end each watch cleanly after about that
        long (client-go uses 5-10 minutes); a read silent for ``read_timeout_secs`` (longer,
        since real servers send a bookmark about every minute) is a dead connection."""
        self.resource = resource
        self._list_function = list_function
        self._on_list = on_list
        self._on_event = on_event
        self._on_bookmark = on_bookmark
        self._metrics = metrics
        self._selector = {"field_selector": field_selector} if field_selector else {}
        self._watch_timeout_secs = watch_timeout_secs
        self._request_timeout = (connect_timeout_secs, read_timeout_secs)
        self._initial_backoff_secs = initial_backoff_secs
        self._max_backoff_secs = max_backoff_secs
        self._page_size = page_size
        self._stopped = threading.Event()
        self._response = None
        self._thread: threading.Thread | None = None
        # The last RV seen (list, event or bookmark): where the next watch resumes; None: list.
        self.resource_version: str | None = None
        self.synced = threading.Event()  # set once the first list is in the cache

    def start(self) -> None:
        # A daemon: a hung API connection never keeps the process from exiting.
        self._thread = threading.Thread(target=self.run, name=f"kube-watch-{self.resource}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop and wait up to ``timeout`` for the thread: a request stalled before its
        response cannot be interrupted, and the daemon thread need not be waited for."""
        self._stopped.set()
        response = self._response
        if response is not None:
            _cut(response)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                if self.resource_version is None:
                    self.resource_version = self._list()
                    failures = 0
                if self._watch():
                    failures = 0
                self._count_restart("ended")
            except ResourceExpired as expired:
                log.info("%s watch: %s; listing again", self.resource, expired)
                self._count_restart("expired")
                self.resource_version = None
            except Exception as error:  # noqa: BLE001 - the thread must outlive any failure
                if self._stopped.is_set():
                    return
                if _status(error) == GONE:  # a page's continue token expired
                    self.resource_version = None
                delay = self._backoff(failures)
                failures += 1
                log.warning("%s list/watch failed (%s: %s); retrying in %.1fs",
                            self.resource, type(error).__name__, _short(error), delay)
                self._count_restart("error")
                self._stopped.wait(delay)

    # ---- list ------------------------------------------------------------------------------

    def _list(self) -> str:
        """List every page; hand the items over; return the list's RV."""
        items: list = []
        continue_token = None
        while True:
            extra = {"_continue": continue_token} if continue_token else {}
            response = self._list_function(
                limit=self._page_size, _preload_content=False, _request_timeout=self._request_timeout,
                **self._selector, **extra,
            )
            try:
                page = orjson.loads(response.data)
            finally:
                response.release_conn()
            metadata = page.get("metadata") if isinstance(page, dict) else None
            if not isinstance(metadata, dict) or not isinstance(page.get("items", []), list):
                raise ValueError("list response is not a List object")
            items.extend(page.get("items") or ())
            continue_token = metadata.get("continue")
            if not continue_token:
                break
        resource_version = metadata.get("resourceVersion")
        if not isinstance(resource_version, str) or not resource_version:
            raise ValueError("list response has no metadata.resourceVersion")
        self._on_list(items)
        self._metrics.kube_relists.labels(resource=self.resource).inc()
        self.synced.set()
        return resource_version

    # ---- watch -----------------------------------------------------------------------------

    def _watch(self) -> bool:
        """Follow one watch response to its end, moving ``resource_version`` with every
        event; return whether any event came (a bookmark counts: the server is answering)."""
        response = self._list_function(
            watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout_secs, _preload_content=False,
            _request_timeout=self._request_timeout, **self._selector,
        )
        self._response = response
        delivered = False
        try:
            if self._stopped.is_set():
                return delivered
            for line in _lines(response):
                self._handle(line)
                delivered = True
        finally:
            self._response = None
            response.close()
            response.release_conn()
        return delivered

    def _handle(self, line: bytes) -> None:
        try:
            event = orjson.loads(line)
            event_type, obj = event["type"], event["object"]
            if not isinstance(obj, dict):
                raise TypeError("object is not a mapping")
        except (orjson.JSONDecodeError, KeyError, TypeError) as error:
            self._skip(f"unreadable watch event ({error})")
            return
        if event_type == "ERROR":
            message = f"{obj.get('reason')}: {obj.get('message')}"
            if obj.get("code") == GONE:
                raise ResourceExpired(message)
            raise WatchError(message)
        metadata = obj.get("metadata")
        new_version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if not isinstance(new_version, str) or not new_version:
            self._skip(f"{event_type} event without metadata.resourceVersion")
            return
        if event_type == "BOOKMARK":
            self._on_bookmark()
        elif event_type in ("ADDED", "MODIFIED", "DELETED"):
            self._on_event(event_type, obj)
        else:
            self._skip(f"unknown watch event type {event_type!r}")
        self.resource_version = new_version

    # ---- helpers ---------------------------------------------------------------------------

    def _skip(self, why: str) -> None:
        log.warning("%s watch: %s; skipped", self.resource, why)
        self._metrics.kube_events_skipped.labels(resource=self.resource).inc()

    def _count_restart(self, reason: str) -> None:
        if not self._stopped.is_set():
            self._metrics.kube_watch_restarts.labels(resource=self.resource, reason=reason).inc()

    def _backoff(self, failures: int) -> float:
        """Full jitter over a capped exponential: many nodes restarting do not retry in step."""
        return random.uniform(0, min(self._max_backoff_secs, self._initial_backoff_secs * 2**failures))


def _lines(response):
    """The newline-framed events of a watch body, as the chunks arrive (an event may span
    chunks, a chunk may hold several events)."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    # What is left has no newline: the stream was cut inside an event, which is not an event.


def _cut(response) -> None:
    """Unblock a thread reading ``response`` (closing the socket alone would wait on it)."""
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _status(error: Exception) -> int | None:
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""


class NodeMetadataWatch:
    """The watches that feed a ``PodMetadataCache``: this node's pods, and namespaces when
    namespace labels are wanted. ``start`` returns at once; the cache fills in the background."""

    def __init__(self, api_client, node_name: str, cache, metrics, **list_watch_options) -> None:
        from kubernetes.client import CoreV1Api  # imported when the watch is configured: ~0.2 s to load

        core = CoreV1Api(api_client)
        self._api_client = api_client
        self._cache = cache
        self._metrics = metrics
        self.pods = ListWatch(
            "pods", core.list_pod_for_all_namespaces, self._pods_listed, self._pod_event, self._tick, metrics,
            field_selector=f"spec.nodeName={node_name}", **list_watch_options,
        )
        self.namespaces = None
        if cache.options.namespace_labels:
            self.namespaces = ListWatch(
                "namespaces", core.list_namespace, cache.replace_namespaces, cache.apply_namespace_event,
                self._tick, metrics, **list_watch_options,
            )

    def start(self) -> None:
        for watch in self._watches():
            watch.start()

    def stop(self) -> None:
        for watch in self._watches():
            watch.stop()
        self._api_client.close()

    def _watches(self) -> list[ListWatch]:
        return [self.pods] + ([self.namespaces] if self.namespaces is not None else [])

    def _pods_listed(self, pods: list) -> None:
        self._counted(self._cache.replace_pods, pods)

    def _pod_event(self, event_type: str, pod: dict) -> None:
        self._counted(self._cache.apply_pod_event, event_type, pod)

    def _counted(self, write, *args) -> None:
        """Apply a write; pods the cache could not read (logged there) count as skipped events."""
        unreadable = self._cache.counts.bad_objects
        write(*args)
        skipped = self._cache.counts.bad_objects - unreadable
        if skipped:
            self._metrics.kube_events_skipped.labels(resource="pods").inc(skipped)
        self._metrics.kube_pods.set(len(self._cache))

    def _tick(self) -> None:
        """A bookmark: nothing changed, but deleted pods past their grace can go."""
        self._cache.expire()
        self._metrics.kube_pods.set(len(self._cache))


def api_client(kubeconfig: str | None):
    """A client for the API server: from ``kubeconfig`` (local runs), else the pod's service
    account (in-cluster: token, CA and address mounted by the kubelet)."""
    import kubernetes

    if kubeconfig:
        return kubernetes.config.new_client_from_config(config_file=kubeconfig)
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_incluster_config(client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)
