"""The error hierarchy: every error survives the wire as its own type."""

from __future__ import annotations

import errno
import pickle

import pytest

from prismfs.errors import (
    NotFound,
    PrismError,
    RemoteError,
    Unavailable,
    error_from_wire,
    registered_errors,
)
from prismfs.wire.codec import decode_message, encode_message
from prismfs.wire.messages import ErrorReply


@pytest.mark.parametrize("code", sorted(registered_errors()))
def test_every_error_round_trips_through_the_wire(code: str) -> None:
    cls = registered_errors()[code]
    original = cls("something went wrong", path="/x", count=3, ok=True, none=None)
    reply = decode_message(encode_message(ErrorReply.from_error(original)))
    assert isinstance(reply, ErrorReply)
    rebuilt = reply.to_error()
    assert type(rebuilt) is cls
    assert rebuilt.message == "something went wrong"
    assert rebuilt.details == {"path": "/x", "count": 3, "ok": True, "none": None}
    assert rebuilt.errno == cls.errno
    assert isinstance(rebuilt, PrismError)


def test_codes_are_unique_and_errnos_valid() -> None:
    errors = registered_errors()
    assert len({cls for cls in errors.values()}) == len(errors)
    for cls in errors.values():
        assert cls.errno in errno.errorcode, cls


def test_unknown_code_becomes_remote_error_keeping_the_code() -> None:
    err = error_from_wire("from_a_newer_version", "boom", {"x": 1})
    assert type(err) is RemoteError
    assert err.details["remote_code"] == "from_a_newer_version"
    assert err.message == "boom"


def test_subclass_must_declare_a_unique_code() -> None:
    with pytest.raises(TypeError, match="must declare"):

        class NoCode(NotFound):
            pass

    with pytest.raises(TypeError, match="is used by"):

        class Twin(PrismError):
            code = "not_found"


def test_transient_flags_and_errnos() -> None:
    assert Unavailable.transient and not NotFound.transient
    assert NotFound.errno == errno.ENOENT


def test_errors_pickle_with_details() -> None:
    err = NotFound("gone", ino=7)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is NotFound and again.details == {"ino": 7} and again.message == "gone"


@pytest.mark.parametrize("code", ["not_found", "no_such_code_here"])
def test_peer_chosen_detail_keys_cannot_break_rebuilding(code: str) -> None:
    details = {"message": "x", "remote_code": 5, "self": None, "cls": True}
    err = error_from_wire(code, "boom", details)  # type: ignore[arg-type]
    assert isinstance(err, PrismError) and err.message == "boom"
    assert err.details["message"] == "x"
