"""The routing key of a request: chained hashes of fixed-size blocks of its canonical prompt.

Pure code, no I/O. The canonical prompt is what a model server's prefix cache sees first, in order:
for chat, the `tools` definitions and every message (role, text, content parts, tool calls, tool
results); for `/v1/responses`, `tools`, `instructions` and `input`; for completions the `prompt`;
for embeddings the `input`. JSON parts are re-encoded with sorted keys, so the key does not depend
on whitespace or key order (only the key does: the request itself is forwarded byte for byte).

Block i's hash covers blocks 0..i (each hash is keyed with the previous one, the first with the
model name), so two prompts share their first k block hashes exactly when they share their first
k blocks. The *home* hash places a conversation on the consistent-hash ring: it covers the prompt up
to the end of the first user turn, which every later turn of the same conversation repeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

import orjson

#: Bytes of canonical prompt per block.
BLOCK_SIZE = 256
#: Blocks hashed at most per request: bounds the CPU a huge prompt costs (64 KiB of prompt).
MAX_BLOCKS = 256

_SORTED = orjson.OPT_SORT_KEYS
_CHAT = ("/chat/completions", "/api/chat")
_COMPLETIONS = ("/completions", "/api/generate")
_RESPONSES = ("/responses",)
_EMBEDDINGS = ("/embeddings", "/api/embed", "/api/embeddings")
#: Roles whose messages are shared set-up (many conversations start with the same ones).
_PREAMBLE_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Prompt:
    """A request's canonical prompt and where its shared set-up and its first turn end."""

    #: The canonical prompt bytes.
    text: bytes
    #: Length of the leading set-up shared by design (tools, system and developer messages).
    preamble: int
    #: End of the first user turn (chat, responses) or of the first block (completions, embeddings).
    anchor: int


@dataclass(frozen=True, slots=True)
class RoutingKey:
    """What the prefix chooser knows about one request."""

    #: Chained block hashes of the canonical prompt (at most `MAX_BLOCKS`); empty when unreadable.
    blocks: tuple[int, ...]
    #: Leading blocks that hold only shared set-up: a match must go beyond them to count as the
    #: conversation's own cached prefix.
    preamble_blocks: int
    #: Point on the consistent-hash ring (the session id's hash when `session` is true).
    home: int
    #: True when the client named the conversation with `X-Session-Id`.
    session: bool = False


def canonical_prompt(path: str, document: Any) -> Prompt | None:
    """The canonical prompt of a JSON request to `path`; None for unknown paths or shapes."""
    if not isinstance(document, dict):
        return None
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith(_CHAT):
        return _chat(document)
    if path.endswith(_RESPONSES):
        return _responses(document)
    if path.endswith(_EMBEDDINGS):
        return _single(b"", document.get("input"))
    if path.endswith(_COMPLETIONS):
        system = document.get("system")
        preamble = _text(system) + b"\n" if system is not None else b""
        return _single(preamble, document.get("prompt"))
    return None


def block_hashes(
    model: str, text: bytes, block_size: int = BLOCK_SIZE, max_blocks: int = MAX_BLOCKS
) -> list[int]:
    """Chained hashes of `text` in blocks of `block_size` bytes (the last one may be shorter)."""
    hashes: list[int] = []
    previous = _seed(model)
    end = min(len(text), block_size * max_blocks)
    for start in range(0, end, block_size):
        previous = blake2b(text[start : start + block_size], digest_size=8, key=previous).digest()
        hashes.append(int.from_bytes(previous, "little"))
    return hashes


def routing_key(path: str, document: Any, model: str, session: str | None = None) -> RoutingKey | None:
    """The key of one request; None when it has neither a readable prompt nor a session id."""
    prompt = canonical_prompt(path, document)
    blocks: tuple[int, ...] = ()
    preamble_blocks = 0
    home = 0
    if prompt is not None and prompt.text:
        blocks = tuple(block_hashes(model, prompt.text))
        preamble_blocks = prompt.preamble // BLOCK_SIZE
        anchor = min(prompt.anchor, BLOCK_SIZE * MAX_BLOCKS)
        home = int.from_bytes(
            blake2b(prompt.text[:anchor], digest_size=8, key=_seed(model)).digest(), "little"
        )
    if session:
        digest = blake2b(session.encode("utf-8", "replace"), digest_size=8, key=_seed(model)).digest()
        return RoutingKey(blocks, preamble_blocks, int.from_bytes(digest, "little"), session=True)
    if not blocks:
        return None
    return RoutingKey(blocks, preamble_blocks, home)


def _seed(model: str) -> bytes:
    return blake2b(model.encode("utf-8", "replace"), digest_size=16).digest()


def _text(value: Any) -> bytes:
    """A prompt value as bytes: strings as UTF-8, anything else as sorted-key JSON."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    try:
        return orjson.dumps(value, option=_SORTED)
    except TypeError:
        return b""


def _tools(document: dict[str, Any]) -> bytes:
    parts = [
        b"tools\n" + _text(document[name]) + b"\n" for name in ("tools", "functions") if document.get(name)
    ]
    return b"".join(parts)


def _chat(document: dict[str, Any]) -> Prompt | None:
    messages = document.get("messages")
    if not isinstance(messages, list):
        return None
    parts = [_tools(document)]
    size = len(parts[0])
    preamble = anchor = -1
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if preamble < 0 and role not in _PREAMBLE_ROLES:
            preamble = size
        part = _text(message) + b"\n"
        parts.append(part)
        size += len(part)
        if anchor < 0 and preamble >= 0:
            anchor = size
    if preamble < 0:
        preamble = anchor = size
    return Prompt(b"".join(parts), preamble, anchor)


def _responses(document: dict[str, Any]) -> Prompt:
    head = _tools(document)
    instructions = document.get("instructions")
    if instructions is not None:
        head += b"instructions\n" + _text(instructions) + b"\n"
    items = document.get("input")
    if not isinstance(items, list):
        text = _text(items) if items is not None else b""
        return Prompt(head + text, len(head), len(head) + len(text))
    parts = [_text(item) + b"\n" for item in items]
    anchor = len(head) + (len(parts[0]) if parts else 0)
    return Prompt(head + b"".join(parts), len(head), anchor)


def _single(preamble: bytes, value: Any) -> Prompt | None:
    if value is None:
        return None
    text = preamble + _text(value)
    return Prompt(text, len(preamble), min(len(text), len(preamble) + BLOCK_SIZE))
