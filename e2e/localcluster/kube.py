"""A small synchronous Kubernetes REST client (JSON in, JSON out) for the cluster tooling.

The cluster scripts need a handful of verbs, precise timeouts and
tolerance of API hiccups; a thin client over httpx keeps that visible. Tests may use the
official `kubernetes` client instead (see conftest.py).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, method: str, path: str, body: str):
        self.status = status
        self.reason = _status_reason(body)
        super().__init__(f"{method} {path} -> {status}: {self.reason or body[:300]}")


def _status_reason(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    return str(doc.get("message") or doc.get("reason") or "") if isinstance(doc, dict) else ""


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: str
    cert_file: str
    key_file: str


class KubeClient:
    def __init__(self, creds: Credentials, timeout: float = 10.0):
        context = ssl.create_default_context(cafile=creds.ca_file)
        context.load_cert_chain(creds.cert_file, creds.key_file)
        self.server = creds.server.rstrip("/")
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.server, verify=context, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, body: Any = None, params: dict | None = None,
                content_type: str = "application/json", timeout: float | None = None) -> Any:
        headers = {"Accept": "application/json"}
        content = None
        if body is not None:
            headers["Content-Type"] = content_type
            content = json.dumps(body).encode()
        response = self._http.request(method, path, content=content, params=params, headers=headers,
                                      timeout=timeout or self._timeout)
        if response.status_code >= 400:
            raise ApiError(response.status_code, method, path, response.text)
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def create(self, path: str, body: dict) -> Any:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: dict) -> Any:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def strategic_patch(self, path: str, body: dict) -> Any:
        return self.request("PATCH", path, body, content_type="application/strategic-merge-patch+json")

    def delete(self, path: str, body: dict | None = None) -> Any:
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 60,
              **params: Any) -> Iterator[dict]:
        """Yields watch events until the server ends the watch (bounded by timeout_seconds)."""
        query = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds), **params}
        timeout = httpx.Timeout(self._timeout, read=timeout_seconds + 15)
        with self._http.stream("GET", path, params=query, timeout=timeout) as response:
            if response.status_code >= 400:
                raise ApiError(response.status_code, "WATCH", path, response.read().decode())
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)


def ready(client: KubeClient) -> bool:
    try:
        response = client._http.get("/readyz", timeout=3)
    except httpx.HTTPError:
        return False
    return response.status_code == 200
