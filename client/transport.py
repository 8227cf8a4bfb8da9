"""HTTP for the client: base URL and key, retries of transient failures, typed errors.

A request that fails in transit (connection refused or reset, timeout, a broken response) or gets
502/503/504 is retried with exponential backoff; requests are rebuilt for every attempt, so uploads are
re-read from the start. Error statuses become :mod:`client.errors` exceptions carrying the problem+json.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from client.errors import SpecpruneAPIError, TransportError, error_for

USER_AGENT = "specprune-client/0.1"
RETRY_STATUSES = frozenset({502, 503, 504})
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.PoolTimeout,
)
MAX_PROBLEM_TEXT = 2000

# Builds the keyword arguments of one attempt (fresh file handles for uploads).
RequestArgs = Callable[[], dict[str, Any]]


class Transport:
    """One HTTP connection pool to a specprune server."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = max(0, retries)
        self.backoff_seconds = backoff_seconds
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json, application/problem+json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = http or httpx.Client(timeout=timeout, follow_redirects=False)
        self._headers = headers

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, args: RequestArgs | None = None) -> httpx.Response:
        """Send a request (retrying transient failures) and return its successful response."""
        response: httpx.Response = self._attempts(lambda: self._send(method, path, args))
        return response  # typed here: _attempts returns Any (None for a gone resource)

    def delete(self, path: str) -> None:
        """DELETE ``path``; a 404 after a failed attempt means that attempt did it, and is success."""
        self._attempts(lambda: self._send("DELETE", path, None), gone_ok_after_retry=True)

    @contextmanager
    def stream(
        self, method: str, path: str, args: RequestArgs | None = None, *, retry: bool = True
    ) -> Iterator[httpx.Response]:
        """A successful response whose body is read as it arrives."""
        response = (
            self._attempts(lambda: self._open(method, path, args))
            if retry
            else self._open(method, path, args)
        )
        try:
            yield response
        finally:
            response.close()

    def _send(self, method: str, path: str, args: RequestArgs | None) -> httpx.Response:
        response = self._http.request(method, self._url(path), **self._args(args))
        if response.status_code >= 400:
            raise error_for(response.status_code, problem_of(response))
        return response

    def _open(self, method: str, path: str, args: RequestArgs | None) -> httpx.Response:
        request = self._http.build_request(method, self._url(path), **self._args(args))
        response = self._http.send(request, stream=True)
        if response.status_code >= 400:
            try:
                response.read()
            finally:
                response.close()
            raise error_for(response.status_code, problem_of(response))
        return response

    def _args(self, args: RequestArgs | None) -> dict[str, Any]:
        values = dict(args()) if args is not None else {}
        values["headers"] = {**self._headers, **(values.get("headers") or {})}
        return values

    def _url(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"

    def _attempts(self, send: Callable[[], httpx.Response], gone_ok_after_retry: bool = False) -> Any:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                return send()
            except TRANSIENT_ERRORS as exc:
                if last:
                    raise TransportError(f"{self.url}: {type(exc).__name__}: {exc or 'no response'}") from exc
            except SpecpruneAPIError as exc:
                if exc.status == 404 and gone_ok_after_retry and attempt > 0:
                    return None
                if exc.status not in RETRY_STATUSES or last:
                    raise
            time.sleep(self.backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The RFC 9457 document of an error response (synthesised when the body is not one)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        body.setdefault("status", response.status_code)
        return body
    text = response.text.strip()[:MAX_PROBLEM_TEXT]
    return {
        "type": "about:blank",
        "title": response.reason_phrase or f"HTTP {response.status_code}",
        "status": response.status_code,
        "detail": text or response.reason_phrase or f"HTTP {response.status_code}",
    }
