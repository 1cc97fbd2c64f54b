"""Throwaway TLS material for fake servers: a `trustme` CA, a server certificate for 127.0.0.1 and
localhost, and optionally a client certificate from the same CA, written as PEM files to a
temporary directory that `cleanup()` removes."""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
from pathlib import Path

import trustme


class TLSFiles:
    def __init__(self, prefix: str, *, client_cert: bool = False) -> None:
        self._ca = trustme.CA()
        self._server_cert = self._ca.issue_cert("127.0.0.1", "localhost")
        self.directory = Path(tempfile.mkdtemp(prefix=prefix))
        self.ca_file = self.directory / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        self.client_cert_file: Path | None = None
        self.client_key_file: Path | None = None
        if client_cert:
            client = self._ca.issue_cert("client@example.test")
            self.client_cert_file = self.directory / "client.pem"
            self.client_key_file = self.directory / "client-key.pem"
            # The chain: the client's certificate, then any intermediates (none with trustme).
            self.client_cert_file.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
            client.private_key_pem.write_to_path(str(self.client_key_file))

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_cert.configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self._ca.configure_trust(context)
        return context

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def cut(connection: socket.socket) -> None:
    """Shut a connection down under whoever is using it (bypassing SSLSocket's own shutdown)."""
    try:
        socket.socket.shutdown(connection, socket.SHUT_RDWR)
    except OSError:
        pass
