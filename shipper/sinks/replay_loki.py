"""Replaying a Loki sink's dead letters: each entry pushed again to the stream it was refused from.

A letter keeps its stream's label text, its timestamp to the nanosecond, its line and its
structured metadata, so the entry pushed again is identical to the refused one, and one Loki
did take meanwhile is dropped by Loki as a duplicate. Pushes are encoded by the sink's own
helpers (``loki_encoding``) with the sink's headers (tenant, auth, encoding) and TLS, and keep
to its ``batch.max_records`` and ``batch.max_bytes``.

As the sink does, a 400 is read for which entries Loki refused (``loki_rejections``); those are
refused again and the rest delivered; 413 halves the push. 429, 5xx, timeouts and connection
errors are tried ``ATTEMPTS`` times with the sink's backoff, then the replay stops
(``NotAttempted``), as it does at once for 401/403/404/405 (credentials, a URL that is not
Loki's push API).

The sink's headers, TLS context and push URL helpers are private to ``shipper.sinks.loki`` and
imported from there, so a replay always sends what the sink sends.
"""

import asyncio
import gzip
import re

import httpx

from shipper.replay import NotAttempted, Tally, cut_batches
from shipper.sinks.delivery import Backoff
from shipper.sinks.loki import push_client, push_headers, push_url
from shipper.sinks.loki_encoding import Entries, group_streams, json_body, protobuf_body
from shipper.sinks.loki_labels import StreamLabels
from shipper.sinks.loki_options import LokiOptions
from shipper.sinks.loki_rejections import refusals_in_push

ATTEMPTS = 5
_MESSAGE_MAX = 300  # characters of Loki's answer kept in a message
# One label of a label set as the sink writes it (Prometheus names, Go-quoted values).
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\(?:[abfnrtv\\"]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|'
                   r'U[0-9a-fA-F]{8}))*)"')
_ESCAPE = re.compile(r'\\(?:([abfnrtv\\"])|x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))')
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}


def parse_stream(text: str) -> dict[str, str] | None:
    """The labels of a label set as the sink writes it (``{a="1", b="2"}``), or None."""
    if not (text.startswith("{") and text.endswith("}")):
        return None
    pairs, position, end = {}, 1, len(text) - 1
    while position < end:
        match = _PAIR.match(text, position)
        if match is None:
            return None
        pairs[match.group(1)] = _ESCAPE.sub(_unescape, match.group(2))
        position = match.end()
        if position < end:
            if not text.startswith(", ", position):
                return None
            position += 2
    return pairs or None


def _unescape(match: re.Match) -> str:
    simple, *codes = match.groups()
    if simple:
        return _SIMPLE_ESCAPES[simple]
    return chr(int(next(code for code in codes if code), 16))


def letter_problem(letter: dict) -> str:
    """What keeps ``letter`` from being pushed again, or ''."""
    if not isinstance(letter.get("stream"), str) or parse_stream(letter["stream"]) is None:
        return "no 'stream' (a label set such as {a=\"1\"}): not a Loki dead letter"
    if type(letter.get("ts_ns")) is not int or letter["ts_ns"] < 0:
        return "no 'ts_ns' (epoch nanoseconds): not a Loki dead letter"
    if not isinstance(letter.get("line"), str):
        return "no 'line' (a string): not a Loki dead letter"
    metadata = letter.get("structured_metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        return "'structured_metadata' is not an object of strings"
    return ""


def letter_target(letter: dict) -> str:
    return letter["stream"]


async def send(options: LokiOptions, letters: list[dict], tally: Tally) -> None:
    delivery = options.delivery
    urls = [push_url(endpoint) for endpoint in delivery.endpoints]
    client = push_client(delivery, urls)
    replay = _Replay(client, options, urls, letters, tally)
    try:
        for batch in _batches(letters, delivery.batch.max_records, delivery.batch.max_bytes):
            await replay.push(batch)
    finally:
        await client.aclose()


def _batches(letters: list[dict], max_records: int, max_bytes: int) -> list[list[tuple]]:
    """``(labels, entry)`` per letter, cut by count and line bytes; an entry's last field (the
    sink's chunk number) is the letter's position, to find the letter again."""
    labels_of: dict[str, StreamLabels] = {}
    sized = []
    for position, letter in enumerate(letters):
        labels = labels_of.get(letter["stream"])
        if labels is None:
            labels = labels_of[letter["stream"]] = StreamLabels(parse_stream(letter["stream"]))
        metadata = tuple(letter.get("structured_metadata", {}).items())
        entry = (letter["ts_ns"], letter["line"], metadata, position)
        sized.append(((labels, entry), len(letter["line"].encode())))
    return cut_batches(sized, max_records, max_bytes)


class _Replay:
    def __init__(self, client: httpx.AsyncClient, options: LokiOptions, urls: list[str], letters: list[dict],
                 tally: Tally) -> None:
        self._client = client
        self._options = options
        self._urls = urls
        self._headers = push_headers(options)
        self._letters = letters  # an entry's last field is its letter's position here
        self._tally = tally

    async def push(self, batch: list[tuple]) -> None:
        """Settle every entry of ``batch`` (``(labels, entry)`` pairs), or raise ``NotAttempted``."""
        streams = group_streams([Entries.from_tuples(labels, [entry]) for labels, entry in batch])
        if self._options.encoding == "json":
            body = json_body(streams)
            if self._options.delivery.compression == "gzip":
                body = gzip.compress(body, compresslevel=1)
        else:
            body, _ = protobuf_body(streams)
        retry = self._options.delivery.retry
        backoff = Backoff(retry.initial_backoff_secs, retry.max_backoff_secs)
        for attempt in range(ATTEMPTS):
            url = self._urls[attempt % len(self._urls)]
            try:
                response = await self._client.post(url, content=body, headers=self._headers)
            except (httpx.TimeoutException, httpx.TransportError) as error:
                kind = "timeout" if isinstance(error, httpx.TimeoutException) else "connection error"
                problem = f"{kind} pushing to {url} ({error or type(error).__name__})"
            else:
                status, text = response.status_code, response.text.strip()
                if status < 300:
                    self._tally.deliver(len(batch))
                    return
                problem = f"{url} answered {status} ({text[:_MESSAGE_MAX]})"
                if status in (401, 403, 404, 405):
                    raise NotAttempted(problem)
                if status == 413:
                    await self._split(batch, text)
                    return
                if status == 400:
                    self._partly_refused(streams, text)
                    return
                if status != 429 and status < 500:
                    for _, entry in batch:
                        self._refuse(entry, f"http_{status}", status, text)
                    return
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(backoff.next_delay())
        raise NotAttempted(f"{problem}, {ATTEMPTS} times")

    async def _split(self, batch: list[tuple], text: str) -> None:
        """A 413 (over Loki's grpc_server_max_recv_msg_size): halves until each fits or is one entry."""
        if len(batch) == 1:
            self._refuse(batch[0][1], "http_413", 413, text)
            return
        half = len(batch) // 2
        await self.push(batch[:half])
        await self.push(batch[half:])

    def _partly_refused(self, pushed: list[Entries], text: str) -> None:
        """A 400: Loki wrote the valid entries; refuse again the ones its answer refuses, and
        every entry when it names a refusal that cannot be traced (as the sink does)."""
        streams = [(stream.labels, stream.tuples()) for stream in pushed]
        rejections = refusals_in_push(text, streams)
        unexplained = "; ".join(rejections.unexplained)
        for index, (_, entries) in enumerate(streams):
            refusals = rejections.refused.get(index, {})
            for position, entry in enumerate(entries):
                refusal = refusals.get(position)
                if refusal is not None:
                    self._refuse(entry, refusal[0], 400, refusal[1])
                elif unexplained:
                    self._refuse(entry, "unexplained", 400, unexplained)
                else:
                    self._tally.deliver(1)

    def _refuse(self, entry: tuple, reason: str, status: int, error: str) -> None:
        self._tally.refuse(self._letters[entry[3]], reason, status, error)
