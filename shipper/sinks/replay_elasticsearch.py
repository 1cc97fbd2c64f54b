"""Replaying an Elasticsearch sink's dead letters: ``create`` with each letter's own index and id.

A letter keeps the ``_index`` and ``_id`` the sink gave its document, so a document that is
already there (replayed before, or indexed since) is answered 409 and counts as delivered
without a duplicate. The client is the sink's (same options: auth, TLS, compression,
timeouts) and batches keep to the sink's ``batch.max_records`` and ``batch.max_bytes``.

Unlike the sink, which retries for as long as it takes, a replay has an operator waiting:
429, 5xx, timeouts and connection errors are tried ``ATTEMPTS`` times with the sink's backoff,
then the replay stops (``NotAttempted``), as it does at once for answers no retry heals
(credentials, a proxy's 404). Per-item refusals (mapping, parsing) and a 400 refusing the
whole request are refused again; 413 halves the batch down to the one document too large.
"""

import asyncio
from collections import Counter

import orjson
from elastic_transport import TransportError
from elasticsearch import ApiError, AsyncElasticsearch

from shipper.replay import NotAttempted, Tally, cut_batches
from shipper.sinks.delivery import Backoff
from shipper.sinks.elasticsearch import (
    DISCOVERY_HEADERS,
    FILTER_PATH,
    SUPPORTED_MAJORS,
    body_error,
    bulk_headers,
    client_options,
    error_text,
    outcome_reason,
    transport_error_text,
    transport_reason,
)
from shipper.sinks.elasticsearch_options import ElasticsearchOptions

ATTEMPTS = 5


def letter_problem(letter: dict) -> str:
    """What keeps ``letter`` from being sent again, or ''."""
    for key in ("index", "id"):
        if not isinstance(letter.get(key), str) or not letter[key]:
            return f"no '{key}' (a string): not an Elasticsearch dead letter"
    if not isinstance(letter.get("record"), dict):
        return "no 'record' (an object): not an Elasticsearch dead letter"
    return ""


def letter_target(letter: dict) -> str:
    return letter["index"]


async def send(options: ElasticsearchOptions, letters: list[dict], tally: Tally) -> None:
    delivery = options.delivery
    client = AsyncElasticsearch(list(delivery.endpoints), **client_options(options))
    try:
        replay = _Replay(client, options)
        headers = await replay.discover()
        for batch in _batches(letters, delivery.batch.max_records, delivery.batch.max_bytes):
            await replay.deliver(batch, headers, tally)
    finally:
        await client.close()


def _batches(letters: list[dict], max_records: int, max_bytes: int) -> list[list[tuple[dict, bytes]]]:
    """Letters with their action and document lines, cut by count and bytes."""
    sized = []
    for letter in letters:
        action = orjson.dumps({"create": {"_index": letter["index"], "_id": letter["id"]}})
        lines = b"%s\n%s\n" % (action, orjson.dumps(letter["record"]))
        sized.append(((letter, lines), len(lines)))
    return cut_batches(sized, max_records, max_bytes)


class _Replay:
    def __init__(self, client: AsyncElasticsearch, options: ElasticsearchOptions) -> None:
        self._client = client
        self._retry = options.delivery.retry

    async def discover(self) -> dict[str, str]:
        """The cluster's compatibility headers, from ``GET /``."""
        backoff = Backoff(self._retry.initial_backoff_secs, self._retry.max_backoff_secs)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                info = await self._client.perform_request("GET", "/", headers=DISCOVERY_HEADERS)
                number = str(info.body["version"]["number"])
                major = int(number.split(".")[0])
            except (KeyError, TypeError, ValueError):
                raise NotAttempted("GET / did not answer like Elasticsearch (no version.number)") from None
            except ApiError as error:
                status = error.meta.status
                problem = f"GET / answered {status} ({error_text(error)})"
                if status not in (408, 429) and status < 500:
                    raise NotAttempted(problem) from None
            except TransportError as error:
                problem = f"cannot reach Elasticsearch ({transport_reason(error)}: {transport_error_text(error)})"
            else:
                if major not in SUPPORTED_MAJORS:
                    raise NotAttempted(f"Elasticsearch {number} is not supported")
                return bulk_headers(major)
            if attempt < ATTEMPTS:
                await asyncio.sleep(backoff.next_delay())
        raise NotAttempted(f"{problem}, {ATTEMPTS} times")

    async def deliver(self, batch: list[tuple[dict, bytes]], headers: dict[str, str], tally: Tally) -> None:
        """Settle every letter of ``batch`` in ``tally``, or raise ``NotAttempted``."""
        backoff = Backoff(self._retry.initial_backoff_secs, self._retry.max_backoff_secs)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self._client.perform_request(
                    "POST", "/_bulk", params=FILTER_PATH, headers=headers, body=b"".join(lines for _, lines in batch)
                )
            except ApiError as error:
                status = error.meta.status
                problem = f"_bulk answered {status} ({error_text(error)})"
                if status == 413:
                    await self._split(batch, headers, tally)
                    return
                refusal = body_error(error)
                if status == 400 and refusal and refusal.get("type") != "media_type_header_exception":
                    for letter, _ in batch:  # the request itself is refused: no retry changes that
                        tally.refuse(letter, str(refusal.get("type")), 400, str(refusal.get("reason", "")))
                    return
                if status not in (408, 429) and status < 500:
                    raise NotAttempted(problem) from None
            except TransportError as error:
                problem = f"{transport_reason(error)} on _bulk ({transport_error_text(error)})"
            else:
                batch, problem = _answered(batch, response.body, tally)
                if not batch:
                    return
            if attempt < ATTEMPTS:
                await asyncio.sleep(backoff.next_delay())
        raise NotAttempted(f"{problem}, {ATTEMPTS} times")

    async def _split(self, batch: list[tuple[dict, bytes]], headers: dict[str, str], tally: Tally) -> None:
        """A 413 (larger than http.max_content_length): halves until each fits or is one document."""
        if len(batch) == 1:
            tally.refuse(batch[0][0], "request_entity_too_large", 413, "document exceeds http.max_content_length")
            return
        half = len(batch) // 2
        await self.deliver(batch[:half], headers, tally)
        await self.deliver(batch[half:], headers, tally)


def _answered(batch: list[tuple[dict, bytes]], answer: dict, tally: Tally) -> tuple[list, str]:
    """Settle each letter by its item's status: the letters to send again, and why."""
    if not answer.get("errors"):
        tally.deliver(len(batch))
        return [], ""
    results = answer.get("items", [])
    if len(results) != len(batch):
        return batch, f"_bulk answered {len(results)} items for {len(batch)} actions"
    again, reasons = [], Counter()
    for (letter, lines), result in zip(batch, results):
        (outcome,) = result.values()
        status = outcome.get("status")
        if type(status) is int and (status < 300 or status == 409):
            tally.deliver(1, already_there=int(status == 409))
        elif type(status) is int and 400 <= status < 500 and status not in (401, 403, 404, 408, 429):
            error = outcome.get("error")
            reason = str(error.get("reason", "")) if isinstance(error, dict) else ""
            tally.refuse(letter, outcome_reason(outcome), status, reason)
        else:
            # 429/5xx may heal in a moment; 401/403/404 need an operator, which a few tries show.
            again.append((letter, lines))
            reasons[outcome_reason(outcome)] += 1
    problem = "_bulk refused documents with " + ", ".join(f"{reason} ({count})" for reason, count in reasons.items())
    return again, problem
