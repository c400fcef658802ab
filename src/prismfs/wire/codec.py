"""The one codec for every typed message: msgspec structs as msgpack.

Theory of operation: every message class derives from `Message`, a frozen,
tagged `msgspec.Struct`. Defining a subclass registers it; the decoder is a
msgspec decoder for the tagged union of all registered classes, rebuilt
lazily when the set changes. Encoding a message therefore needs no lookup and
decoding validates the whole structure (types, required fields) in C before
any Python code sees it.

`decode_message` returns a `Message` or raises `ProtocolError`, nothing else:
it is fed bytes straight from the network.

Bulk data never passes through here; see `frames` for the raw payload path.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, ClassVar

import msgspec

from prismfs.errors import ProtocolError

U8 = Annotated[int, msgspec.Meta(ge=0, le=2**8 - 1)]
U16 = Annotated[int, msgspec.Meta(ge=0, le=2**16 - 1)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # msgspec bounds must fit an int64
I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""Integer types for message fields: decoding enforces the range."""

_classes: list[type[Message]] = []
_decoder: msgspec.msgpack.Decoder[Any] | None = None
_encoder = msgspec.msgpack.Encoder()


class Message(msgspec.Struct, frozen=True, tag=True, tag_field="t"):
    """Base of every message on the wire or in a log.

    ``family`` groups related messages (handshake, node, raft, ...) for
    documentation and for the fuzz tests, which attack each family in turn.
    """

    family: ClassVar[str] = "core"
    abstract: ClassVar[bool] = True
    """Set in the body of a base class that groups messages; never sent itself."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        global _decoder
        if not cls.__dict__.get("abstract", False):
            _classes.append(cls)
            _decoder = None


def registered_messages() -> dict[str, type[Message]]:
    """Every concrete message class by tag; refuses two classes with one tag.

    (msgspec fills in a class's tag only after ``__init_subclass__`` has run,
    so tags are read here, lazily, rather than at registration.)
    """
    by_tag: dict[str, type[Message]] = {}
    for cls in _classes:
        tag = cls.__struct_config__.tag
        if not isinstance(tag, str):
            raise TypeError(f"{cls.__qualname__}: message tags must be strings")
        if tag in by_tag and by_tag[tag] is not cls:
            raise TypeError(f"message tag {tag!r} is used by {by_tag[tag].__qualname__} too")
        by_tag[tag] = cls
    return by_tag


def encode_message(message: Message) -> bytes:
    try:
        return _encoder.encode(message)
    except (OverflowError, TypeError, msgspec.EncodeError) as exc:
        raise ProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Decode and validate one message; raise `ProtocolError` on anything else."""
    global _decoder
    if _decoder is None:
        union: Any = typing.Union[tuple(registered_messages().values())]  # noqa: UP007
        _decoder = msgspec.msgpack.Decoder(union)
    try:
        message = _decoder.decode(data)
    except msgspec.MsgspecError as exc:
        raise ProtocolError(f"malformed message: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # msgspec raises only MsgspecError for bad input today; the guard keeps
        # the "ProtocolError or a message" contract should that ever change.
        raise ProtocolError(f"malformed message: {exc!r}") from None
    if not isinstance(message, Message):
        raise ProtocolError(f"decoded a {type(message).__name__}, not a message")
    return message
