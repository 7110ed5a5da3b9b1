"""``decode``: the one way every reader reads a Redis message, with one error type for every problem."""

from __future__ import annotations

import pytest

from shared.messages import (
    DATA_FIELD,
    CancelRequest,
    GenerateRequest,
    MessageError,
    ReplyEvent,
    ReplyKind,
    WorkerHeartbeat,
    decode,
)

GOOD_EVENT = ReplyEvent(seq=3, kind=ReplyKind.DELTA, text="hi", token_ids=[7]).model_dump_json()


def test_a_good_entry_decodes_from_either_client_decoding() -> None:
    assert decode(ReplyEvent, {DATA_FIELD: GOOD_EVENT}).text == "hi"
    assert decode(ReplyEvent, {DATA_FIELD.encode(): GOOD_EVENT.encode()}).seq == 3


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (None, "no 'data' field"),
        ({}, "no 'data' field"),
        ({"other": GOOD_EVENT}, "no 'data' field"),
        ({DATA_FIELD: "not json"}, "unreadable ReplyEvent"),
        ({DATA_FIELD: "[1, 2]"}, "unreadable ReplyEvent"),
        ({DATA_FIELD: '{"kind": "delta"}'}, "unreadable ReplyEvent: seq"),
        ({DATA_FIELD: '{"seq": 0, "kind": "teleport"}'}, "unreadable ReplyEvent: kind"),
        ({DATA_FIELD: '{"v": 2, "seq": 0, "kind": "delta"}'}, "schema version 2"),
        ({DATA_FIELD: '{"v": 9, "something": "else entirely"}'}, "schema version 9"),
    ],
)
def test_every_problem_is_one_message_error(fields: dict[str, str] | None, says: str) -> None:
    with pytest.raises(MessageError, match=says):
        decode(ReplyEvent, fields)


@pytest.mark.parametrize("model_cls", [GenerateRequest, CancelRequest, WorkerHeartbeat, ReplyEvent])
def test_each_message_kind_refuses_an_empty_object(model_cls: type) -> None:
    with pytest.raises(MessageError, match=model_cls.__name__):
        decode(model_cls, {DATA_FIELD: "{}"})
