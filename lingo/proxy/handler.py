"""The OpenAI-compatible HTTP face: find the model, queue, forward, stream the answer back."""

from __future__ import annotations

import asyncio
import hmac
import logging

from lingo.errors import BodyTooLarge, LingoError, ModelNotFound, Unauthorized
from lingo.metrics import Metrics
from lingo.prompt_key import RoutingKey, routing_key
from lingo.proxy.forwarder import Forwarder
from lingo.proxy.headers import request_headers, response_headers
from lingo.proxy.model_name import ParsedRequest, json_document, parse_request
from lingo.proxy.responses import error_parts, json_parts
from lingo.proxy.server import IncomingRequest, ResponseWriter
from lingo.proxy.upstream import UpstreamError
from lingo.queue import ModelQueue, Priority
from lingo.registry import Registry

log = logging.getLogger(__name__)


class ProxyHandler:
    """Handles every request on the proxy port."""

    def __init__(
        self,
        registry: Registry,
        forwarder: Forwarder,
        metrics: Metrics,
        max_body: int,
        api_keys: list[str] | None = None,
    ) -> None:
        #: Known models and their queues.
        self.registry = registry
        #: The shared path to backends.
        self.forwarder = forwarder
        #: Where requests are counted.
        self.metrics = metrics
        #: Largest accepted request body in bytes.
        self.max_body = max_body
        #: Accepted bearer tokens; empty means no check.
        self.api_keys = [key.encode() for key in api_keys or []]

    async def __call__(self, request: IncomingRequest, out: ResponseWriter) -> None:
        try:
            self._authorize(request)
            if request.too_large:
                raise BodyTooLarge(f"request body exceeds the limit of {self.max_body} bytes")
            if request.method == "GET":
                path = request.path.rstrip("/")
                if path in ("/v1/models", "/models"):
                    out.send(*self._list_models())
                    return
                if path.startswith("/v1/models/"):
                    out.send(*self._get_model(path[len("/v1/models/") :]))
                    return
            parsed = parse_request(
                request.header("X-Model"), request.header("Content-Type") or "", request.body
            )
        except LingoError as error:
            out.send(*error_parts(error))
            return
        queue = self.registry.lookup(parsed.model)
        if queue is None:
            error = ModelNotFound(
                f"The model `{parsed.model}` does not exist or is not served by this lingo."
            )
            out.send(*error_parts(error))
            return
        key = _routing_key(request, parsed, queue) if queue.chooser.wants_key else None
        await self._forward(request, out, queue, key)

    def _authorize(self, request: IncomingRequest) -> None:
        if not self.api_keys:
            return
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        given = token.strip().encode("latin-1", "replace")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, key) for key in self.api_keys):
            raise Unauthorized("Incorrect API key provided.")

    def _list_models(self) -> tuple[int, list[tuple[str, str]], bytes]:
        data = [_model_object(name) for name, _ in self.registry.model_names()]
        return json_parts({"object": "list", "data": data})

    def _get_model(self, name: str) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.registry.lookup(name) is None:
            return error_parts(ModelNotFound(f"The model `{name}` does not exist."))
        return json_parts(_model_object(name))

    async def _forward(
        self, request: IncomingRequest, out: ResponseWriter, queue: ModelQueue, key: RoutingKey | None
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        group = queue.group.name
        code = 499  # the client went away before an answer
        try:
            async with self.forwarder.exchange(
                queue,
                request.method,
                request.target,
                request_headers(request.headers),
                request.body,
                Priority.HTTP,
                key=key,
            ) as exchange:
                self.metrics.observe_wait(group, exchange.waited)
                upstream = exchange.response
                code = upstream.status
                headers = response_headers(upstream.raw_headers)
                length = upstream.content_length
                if upstream.complete and length is not None:
                    out.send(code, headers, await upstream.read())
                    return
                out.start(code, headers, length)
                try:
                    await upstream.pipe(out)
                except UpstreamError as exc:
                    # Bytes already reached the client: no retry is possible. Cut the connection so
                    # the client sees a truncated response, not a falsely complete one.
                    log.warning("backend failed mid-response", extra={"model": group, "error": str(exc)})
                    code = 502
                    out.abort()
                    return
                out.end()
        except LingoError as error:
            code = error.status
            out.send(*error_parts(error))
        finally:
            self.metrics.observe_request(group, "http", code, loop.time() - started)


def _routing_key(request: IncomingRequest, parsed: ParsedRequest, queue: ModelQueue) -> RoutingKey | None:
    """The request's prompt blocks and session for a cache-aware group (the body is not re-encoded)."""
    document = parsed.document
    if document is None and request.header("X-Model"):
        document = json_document(request.header("Content-Type") or "", request.body)
    return routing_key(request.path, document, queue.group.name, request.header("X-Session-Id"))


def _model_object(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "lingo"}
