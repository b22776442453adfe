"""The routing key: chained block hashes of the canonical prompt, from plain request documents."""

from __future__ import annotations

import orjson

from lingo.prompt_key import BLOCK_SIZE, MAX_BLOCKS, block_hashes, canonical_prompt, routing_key

CHAT = "/v1/chat/completions"
SYSTEM = "You are a careful assistant. " * 40  # ~1.2 kB: several blocks
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def chat(*turns: str, system: str = SYSTEM, tools: list | None = None, model: str = "m") -> dict:
    messages: list[dict] = [{"role": "system", "content": system}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    document: dict = {"model": model, "messages": messages}
    if tools is not None:
        document["tools"] = tools
    return document


def key_of(document: dict, path: str = CHAT, model: str = "m", session: str | None = None):
    return routing_key(path, orjson.loads(orjson.dumps(document)), model, session)


def test_key_is_the_same_whatever_the_json_formatting_and_key_order() -> None:
    compact = (
        b'{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":{"a":1,"b":2}}}],'
    )
    compact += b'"messages":[{"role":"user","content":"hello there"}]}'
    spaced = b"""{
      "messages": [ { "content": "hello there", "role": "user" } ],
      "tools": [ { "function": { "parameters": { "b": 2, "a": 1 }, "name": "f" }, "type": "function" } ],
      "model": "m"
    }"""
    one = routing_key(CHAT, orjson.loads(compact), "m")
    two = routing_key(CHAT, orjson.loads(spaced), "m")
    assert one is not None and one == two


def test_key_differs_by_model() -> None:
    document = chat("hello")
    assert key_of(document, model="a").blocks[0] != key_of(document, model="b").blocks[0]


def test_system_prompt_and_tools_change_the_key() -> None:
    plain = key_of(chat("hello"))
    assert key_of(chat("hello", system="Another system prompt.")).blocks[0] != plain.blocks[0]
    assert key_of(chat("hello", tools=TOOLS)).blocks[0] != plain.blocks[0]


def test_a_later_turn_shares_every_full_block_of_the_earlier_turn() -> None:
    first = key_of(chat("What is the weather in Paris? " * 5))
    second = key_of(chat("What is the weather in Paris? " * 5, "Sunny.", "And tomorrow?"))
    full = len(first.blocks) - 1  # the earlier turn's last block was partial
    assert full >= 5 and second.blocks[:full] == first.blocks[:full]
    assert second.blocks[full] != first.blocks[full]
    assert second.home == first.home, "every turn of one conversation has the same home"


def test_distinct_conversations_with_one_system_prompt_have_distinct_homes_but_share_the_preamble() -> None:
    a, b = key_of(chat("Tell me about owls.")), key_of(chat("Tell me about cats."))
    assert a.home != b.home
    assert a.preamble_blocks == b.preamble_blocks >= len(SYSTEM) // BLOCK_SIZE - 1
    assert a.blocks[: a.preamble_blocks] == b.blocks[: b.preamble_blocks]


def test_tool_calls_and_tool_results_are_part_of_the_prompt() -> None:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    base = chat("Weather in Paris?")
    with_call = {**base, "messages": [*base["messages"], call]}
    result_a = {
        **with_call,
        "messages": [*with_call["messages"], {"role": "tool", "tool_call_id": "c1", "content": "sun"}],
    }
    result_b = {
        **with_call,
        "messages": [*with_call["messages"], {"role": "tool", "tool_call_id": "c1", "content": "rain"}],
    }
    assert key_of(with_call).blocks != key_of(base).blocks
    assert key_of(result_a).blocks[-1] != key_of(result_b).blocks[-1]


def test_content_parts_are_part_of_the_prompt() -> None:
    one = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "describe"}]}]}
    two = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "summarise"}]}]}
    assert key_of(one).blocks != key_of(two).blocks


def test_completions_responses_and_embeddings_have_keys() -> None:
    completion = key_of({"model": "m", "prompt": "Once upon a time"}, "/v1/completions")
    responses = key_of({"model": "m", "instructions": "Be brief.", "input": "hi"}, "/v1/responses")
    embedding = key_of({"model": "m", "input": ["a", "b"]}, "/v1/embeddings")
    other_embedding = key_of({"model": "m", "input": ["c"]}, "/v1/embeddings")
    assert completion and responses and embedding and other_embedding
    assert embedding.home != other_embedding.home, "embeddings do not all map to one ring point"
    assert canonical_prompt("/v1/responses", {"instructions": "Be brief.", "input": "hi"}).preamble > 0


def test_requests_without_a_readable_prompt_have_no_key_unless_a_session_is_named() -> None:
    assert routing_key("/v1/audio/transcriptions", None, "m") is None
    assert routing_key("/v1/unknown", {"model": "m", "prompt": "x"}, "m") is None
    assert routing_key(CHAT, {"model": "m"}, "m") is None
    pinned = routing_key("/v1/audio/transcriptions", None, "m", session="conversation-1")
    assert pinned is not None and pinned.session and pinned.blocks == ()


def test_session_id_sets_the_home_whatever_the_prompt() -> None:
    one = key_of(chat("first question"), session="s-1")
    two = key_of(chat("first question", "answer", "second question"), session="s-1")
    other = key_of(chat("first question"), session="s-2")
    assert one.session and one.home == two.home != other.home


def test_blocks_are_capped_so_a_huge_prompt_costs_bounded_work() -> None:
    assert len(block_hashes("m", b"x" * (BLOCK_SIZE * MAX_BLOCKS * 4))) == MAX_BLOCKS
    assert len(key_of(chat("y" * BLOCK_SIZE * MAX_BLOCKS * 2)).blocks) == MAX_BLOCKS
