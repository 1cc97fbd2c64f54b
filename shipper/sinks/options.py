"""Options every network sink shares: endpoints, auth, TLS, batching, retries, dead letters.

Secrets come from the config text (usually ``${VAR}``) or from a ``*_file`` key read once at
load time; they are kept out of every ``repr`` so no log line or traceback prints them.
"""

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shipper.config_reader import ConfigReader

COMPRESSIONS = ("none", "gzip")


@dataclass(frozen=True)
class AuthOptions:
    user: str = ""
    password: str = field(default="", repr=False)
    api_key: str = field(default="", repr=False)
    bearer_token: str = field(default="", repr=False)


@dataclass(frozen=True)
class TlsOptions:
    verify: bool = True
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class BatchOptions:
    max_records: int = 2000
    max_bytes: int = 2 << 20
    flush_secs: float = 1.0


@dataclass(frozen=True)
class RetryOptions:
    initial_backoff_secs: float = 0.5
    max_backoff_secs: float = 30.0
    # 401/403 will not heal by hammering: credentials or roles must change first.
    auth_backoff_secs: float = 60.0


@dataclass(frozen=True)
class DeliveryOptions:
    """What an HTTP sink needs besides its own protocol options."""

    endpoints: tuple[str, ...]
    auth: AuthOptions = AuthOptions()
    tls: TlsOptions = TlsOptions()
    batch: BatchOptions = BatchOptions()
    retry: RetryOptions = RetryOptions()
    max_in_flight_requests: int = 4
    request_timeout_secs: float = 30.0
    compression: str = "none"
    dead_letter_path: str = ""


DELIVERY_KEYS = (
    "endpoints", "auth", "tls", "batch", "retry", "max_in_flight_requests", "request_timeout_secs",
    "compression", "dead_letter_path",
)


def read_delivery(reader: ConfigReader, spec: dict, path: str, default_dead_letter_path: str) -> DeliveryOptions:
    if "endpoints" not in spec:
        raise reader.fail(f"{path}.endpoints", "is required (e.g. http://elasticsearch:9200)")
    endpoints = reader.strings(spec["endpoints"], f"{path}.endpoints", non_empty=True)
    for i, endpoint in enumerate(endpoints):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shown = endpoint.split("@", 1)[-1] if "@" in endpoint else endpoint  # no credentials in errors
            raise reader.fail(f"{path}.endpoints[{i}]", f"must be an http:// or https:// URL, got '{shown}'")
    options: dict[str, Any] = {"endpoints": endpoints}
    if "auth" in spec:
        options["auth"] = _read_auth(reader, spec["auth"], f"{path}.auth")
    if "tls" in spec:
        options["tls"] = _read_tls(reader, spec["tls"], f"{path}.tls")
    if "batch" in spec:
        batch = reader.mapping(spec["batch"], f"{path}.batch", ("max_records", "max_bytes", "flush_secs"))
        options["batch"] = BatchOptions(
            max_records=reader.number(batch.get("max_records", BatchOptions.max_records), f"{path}.batch.max_records", int, 1),
            max_bytes=reader.number(batch.get("max_bytes", BatchOptions.max_bytes), f"{path}.batch.max_bytes", int, 1024),
            flush_secs=reader.number(batch.get("flush_secs", BatchOptions.flush_secs), f"{path}.batch.flush_secs", float, 0.001),
        )
    if "retry" in spec:
        retry = reader.mapping(spec["retry"], f"{path}.retry", tuple(RetryOptions.__dataclass_fields__))
        values = {
            key: reader.number(retry.get(key, getattr(RetryOptions, key)), f"{path}.retry.{key}", float, 0.001)
            for key in RetryOptions.__dataclass_fields__
        }
        if values["max_backoff_secs"] < values["initial_backoff_secs"]:
            raise reader.fail(f"{path}.retry.max_backoff_secs", "must not be below initial_backoff_secs")
        options["retry"] = RetryOptions(**values)
    if "max_in_flight_requests" in spec:
        options["max_in_flight_requests"] = reader.number(
            spec["max_in_flight_requests"], f"{path}.max_in_flight_requests", int, 1
        )
    if "request_timeout_secs" in spec:
        options["request_timeout_secs"] = reader.number(
            spec["request_timeout_secs"], f"{path}.request_timeout_secs", float, 0.01
        )
    if "compression" in spec:
        options["compression"] = reader.string(spec["compression"], f"{path}.compression", COMPRESSIONS)
    options["dead_letter_path"] = reader.string(
        spec.get("dead_letter_path", default_dead_letter_path), f"{path}.dead_letter_path"
    )
    return DeliveryOptions(**options)


def _read_auth(reader: ConfigReader, value: Any, path: str) -> AuthOptions:
    secrets = ("password", "api_key", "bearer_token")
    spec = reader.mapping(value, path, ("user", *secrets, *(f"{s}_file" for s in secrets)))
    found: dict[str, str] = {}
    for secret in secrets:
        if secret in spec and f"{secret}_file" in spec:
            raise reader.fail(f"{path}.{secret}_file", f"give {secret} or {secret}_file, not both")
        if secret in spec:
            found[secret] = reader.string(spec[secret], f"{path}.{secret}")
        elif f"{secret}_file" in spec:
            found[secret] = _read_secret_file(reader, spec[f"{secret}_file"], f"{path}.{secret}_file")
    user = reader.string(spec.get("user", ""), f"{path}.user")
    if ("password" in found) != bool(user):
        raise reader.fail(path, "basic auth needs both user and password (or password_file)")
    if len(found) > 1 and not (set(found) == {"password"}):
        kinds = ", ".join(sorted(found))
        raise reader.fail(path, f"choose one of basic (user/password), api_key or bearer_token, got {kinds}")
    return AuthOptions(user=user, **found)


def _read_secret_file(reader: ConfigReader, value: Any, path: str) -> str:
    file_name = reader.string(value, path)
    try:
        with open(file_name, encoding="utf-8") as handle:
            # Mounted Kubernetes secrets often end with a newline that is not part of the secret.
            secret = handle.read().strip()
    except OSError as error:
        raise reader.fail(path, f"cannot read {file_name}: {error.strerror}") from None
    if not secret:
        raise reader.fail(path, f"{file_name} is empty")
    return secret


def _read_tls(reader: ConfigReader, value: Any, path: str) -> TlsOptions:
    spec = reader.mapping(value, path, ("verify", "ca_file", "cert_file", "key_file"))
    files = {}
    for key in ("ca_file", "cert_file", "key_file"):
        if key in spec:
            files[key] = reader.string(spec[key], f"{path}.{key}")
            if not os.path.isfile(files[key]):
                raise reader.fail(f"{path}.{key}", f"no such file: {files[key]}")
    if ("cert_file" in files) != ("key_file" in files):
        raise reader.fail(path, "a client certificate needs both cert_file and key_file")
    return TlsOptions(verify=reader.boolean(spec.get("verify", True), f"{path}.verify"), **files)
