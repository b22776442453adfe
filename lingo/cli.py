"""The `lingo` command: serve, fake-model, demo, status, batch."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import sys

from lingo import __version__, config, fakemodel, logs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lingo", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lingo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy, queue, autoscaler and batch streams")
    config.add_arguments(serve)

    fake = commands.add_parser("fake-model", help="run a fake OpenAI-compatible model server")
    fakemodel.add_arguments(fake)

    demo = commands.add_parser("demo", help="run lingo locally with two fake models at 0 replicas")
    demo.add_argument(
        "--port", type=_demo_port, default=8080, help="proxy port (health, metrics, stats follow it)"
    )

    from lingo.status.cli import add_parser as add_status_parser

    add_status_parser(commands)

    try:
        from lingo.batch.cli import add_parser as add_batch_parser
    except ImportError:
        pass
    else:
        add_batch_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "fake-model":
        return fakemodel.run(args)
    if args.command == "demo":
        from lingo import demo

        return demo.run(args.port)
    if args.command == "serve":
        try:
            settings = config.load(args)
            logs.setup(settings.log_level)
            from lingo.app import serve

            _install_uvloop()
            _map_large_buffers()
            asyncio.run(serve(settings))
        except config.ConfigError as exc:
            print(f"lingo: configuration error: {exc}", file=sys.stderr)
            return 2
        return 0
    return int(args.handler(args))


def _demo_port(text: str) -> int:
    """A port with room for the three that follow it (health, metrics, stats)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535 - 3:
        raise argparse.ArgumentTypeError(f"{port} is not a port from 1 to 65532 (it and the next 3 are used)")
    return port


def _map_large_buffers() -> None:
    """Request bodies above 1 MiB get memory of their own from the kernel (glibc malloc's mmap).

    glibc raises its mmap threshold after freeing a large block (up to 32 MiB); later bodies below it
    then grow inside the heap, copied on growth and leaving holes: from the second round of ten
    concurrent 20 MB uploads on, the peak was 1.5 times their size. A fixed threshold keeps it at
    one copy, grown by remapping, and returns it to the kernel when the request ends.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; glibc only, a no-op question elsewhere
    except (OSError, AttributeError):
        pass


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
