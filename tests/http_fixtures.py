"""Helpers for the HTTP/JSON API tests: a tiny client (urllib, optionally TLS with a client
certificate) and an in-process server with the API on a free port."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grpc_fixtures import CALL_TIMEOUT, InProcessServer, Pki


@dataclass
class HttpClient:
    base: str
    context: ssl.SSLContext | None = None

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        form: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        """(HTTP status, parsed JSON body) of one request."""
        headers = {}
        data: bytes | None = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif raw is not None:
            data = raw
            headers["Content-Type"] = "application/json"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310 - our own test server
            self.base + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own test server
                request, timeout=CALL_TIMEOUT, context=self.context
            ) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return self.call("POST", path, body, **kwargs)

    def get(self, path: str) -> tuple[int, Any]:
        return self.call("GET", path)


def http_client(
    server: InProcessServer, pki: Pki | None = None, client: str | None = None
) -> HttpClient:
    """A client of the server's HTTP/JSON API (TLS with ``client``'s certificate)."""
    assert server.server.http is not None, "the server has no HTTP/JSON API"
    port = server.server.http.port
    if pki is None:
        return HttpClient(f"http://127.0.0.1:{port}")
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False
    if client is not None:
        cert, key = pki.clients[client]
        context.load_cert_chain(str(cert), str(key))
    return HttpClient(f"https://127.0.0.1:{port}", context)


def serve_http(serve: Callable[..., InProcessServer], **config: Any) -> InProcessServer:
    """An in-process server with the HTTP/JSON API on a free port."""
    return serve(http_listen="127.0.0.1:0", **config)
