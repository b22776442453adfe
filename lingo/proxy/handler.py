"""The OpenAI-compatible HTTP face: find the model, queue, forward, stream the answer back."""

from __future__ import annotations

import asyncio
import hmac
import logging

from aiohttp import web

from lingo.errors import BadRequest, BodyTooLarge, LingoError, ModelNotFound, Unauthorized
from lingo.metrics import Metrics
from lingo.proxy.forwarder import Forwarder
from lingo.proxy.headers import request_headers, response_headers
from lingo.proxy.model_name import model_from_request
from lingo.proxy.responses import error_response, json_response
from lingo.queue import Priority
from lingo.registry import Registry

log = logging.getLogger(__name__)

#: Responses up to this size with a Content-Length are read whole and sent in one write;
#: anything else (SSE, chunked, large) is streamed chunk by chunk as it arrives.
_WHOLE_RESPONSE_LIMIT = 1 << 20


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

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, handler_args={"max_field_size": 65536})
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            self._authorize(request)
            if request.method == "GET" and request.path.rstrip("/") in ("/v1/models", "/models"):
                return self._list_models()
            if request.method == "GET" and request.path.startswith("/v1/models/"):
                return self._get_model(request.path[len("/v1/models/") :])
            body = await self._read_body(request)
            model = model_from_request(
                request.headers.get("X-Model"), request.headers.get("Content-Type", ""), body
            )
        except LingoError as error:
            return error_response(error)
        queue = self.registry.lookup(model)
        if queue is None:
            return error_response(
                ModelNotFound(f"The model `{model}` does not exist or is not served by this lingo.")
            )
        return await self._forward(request, queue, body)

    def _authorize(self, request: web.Request) -> None:
        if not self.api_keys:
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, key) for key in self.api_keys):
            raise Unauthorized("Incorrect API key provided.")

    async def _read_body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {self.max_body}")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge(f"request body exceeds the limit of {self.max_body} bytes") from None
        except ValueError as exc:
            raise BadRequest(f"malformed request body: {exc}") from None

    def _list_models(self) -> web.Response:
        data = [_model_object(name) for name, _ in self.registry.model_names()]
        return json_response({"object": "list", "data": data})

    def _get_model(self, name: str) -> web.Response:
        if self.registry.lookup(name) is None:
            return error_response(ModelNotFound(f"The model `{name}` does not exist."))
        return json_response(_model_object(name))

    async def _forward(self, request: web.Request, queue, body: bytes) -> web.StreamResponse:  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        started = loop.time()
        group = queue.group.name
        code = 499  # client went away before an answer
        try:
            async with self.forwarder.exchange(
                queue,
                request.method,
                request.raw_path,
                request_headers(request.headers.items()),
                body,
                Priority.HTTP,
            ) as exchange:
                self.metrics.queue_wait.labels(group).observe(exchange.waited)
                upstream = exchange.response
                code = upstream.status
                headers = response_headers(upstream.headers.items())
                length = upstream.content_length
                if length is not None and length <= _WHOLE_RESPONSE_LIMIT:
                    data = await upstream.read()
                    return web.Response(
                        status=upstream.status, reason=upstream.reason, body=data, headers=headers
                    )
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
                await response.prepare(request)
                try:
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                except Exception as exc:
                    # Bytes already reached the client: no retry is possible. Cut the connection so
                    # the client sees a truncated stream, not a falsely complete one.
                    log.warning("backend failed mid-response", extra={"model": group, "error": repr(exc)})
                    code = 502
                    if request.transport is not None:
                        request.transport.close()
                    return response
                await response.write_eof()
                return response
        except LingoError as error:
            code = error.status
            return error_response(error)
        finally:
            self.metrics.observe_request(group, "http", code, loop.time() - started)


def _model_object(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "lingo"}
