"""A small round-robin TCP load balancer for tests: what a Service (kube-proxy) does, updatable live.

Each client connection goes to the next backend in the list and is piped both ways until either
side closes. Backends are added and removed while it runs, as endpoints come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter


class RoundRobinBalancer:
    """Spreads client connections over `backends` in turn."""

    def __init__(self) -> None:
        #: (host, port) of each backend in rotation.
        self.backends: list[tuple[str, int]] = []
        #: Connections sent to each backend.
        self.connections: Counter[tuple[str, int]] = Counter()
        #: Connections that found no backend, or whose backend refused them.
        self.refused = 0
        self._turn = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen on a free loopback port; returns the base URL."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def add(self, backend: tuple[str, int]) -> None:
        self.backends.append(backend)

    def remove(self, backend: tuple[str, int]) -> None:
        self.backends.remove(backend)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            if not self.backends:
                self.refused += 1
                return
            backend = self.backends[self._turn % len(self.backends)]
            self._turn += 1
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*backend)
            except OSError:
                self.refused += 1
                return
            self.connections[backend] += 1
            try:
                await asyncio.gather(
                    _pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer)
                )
            finally:
                upstream_writer.close()
        finally:
            client_writer.close()
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then close the other side (an HTTP peer closing ends the exchange)."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
