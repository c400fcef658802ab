"""One exception hierarchy for all of PrismFS.

Every error a layer raises on purpose is a `PrismError` subclass. Each class
carries three facts, declared once here and nowhere else:

* ``code``: a stable wire name. A server that fails a call sends
  ``(code, message, details)``; the client looks the code up in the registry
  below and raises the *same* class, so ``except NotFound`` works the same for
  a local call and a remote one.
* ``errno``: what the FUSE layer returns to the kernel and what the CLI and
  REST API derive their exit codes and statuses from. Keeping the table in the
  class definitions means there is exactly one place that decides an errno.
* ``transient``: whether retrying the same idempotent call may succeed
  (a lost connection, no leader yet). Retry loops consult only this flag.

Errors with no code of their own on the receiving side (a newer server, say)
arrive as `RemoteError`, which keeps the original code in ``remote_code``.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar

WireDetail = str | int | float | bool | None
"""Values an error may carry in ``details``; all of them survive msgpack."""

_REGISTRY: dict[str, type[PrismError]] = {}


class PrismError(Exception):
    """Base of every error PrismFS raises on purpose."""

    code: ClassVar[str] = "error"
    errno: ClassVar[int] = _errno.EIO
    transient: ClassVar[bool] = False

    def __init__(self, message: str = "", /, **details: WireDetail) -> None:
        self.message = message or self.__class__.__doc__ or self.code
        self.details: dict[str, WireDetail] = dict(details)
        super().__init__(self.message)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must declare its own wire code")
        if cls.code in _REGISTRY:
            raise TypeError(f"wire code {cls.code!r} is used by {_REGISTRY[cls.code].__name__}")
        _REGISTRY[cls.code] = cls

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, details={self.details!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Keep errors picklable (trio.to_thread, multiprocessing) despite **details.
        return (error_from_wire, (self.code, self.message, self.details))


_REGISTRY[PrismError.code] = PrismError


def error_from_wire(code: str, message: str, details: dict[str, WireDetail]) -> PrismError:
    """Rebuild the error a peer sent; unknown codes become `RemoteError`."""
    cls = _REGISTRY.get(code)
    if cls is None:
        details = {**details, "remote_code": code}
        cls = RemoteError
    err = cls.__new__(cls)
    PrismError.__init__(err, message)
    err.details = dict(details)  # not as keywords: a peer chooses these keys
    return err


def registered_errors() -> dict[str, type[PrismError]]:
    """Every error class by wire code (a copy; tests iterate it)."""
    return dict(_REGISTRY)


# --- wire, connection and protocol -------------------------------------------


class ProtocolError(PrismError):
    """Malformed or unexpected data from a peer."""

    code = "protocol_error"
    errno = _errno.EPROTO


class FrameTooLarge(ProtocolError):
    """A frame exceeds the configured size limit."""

    code = "frame_too_large"
    errno = _errno.EMSGSIZE


class AuthenticationFailed(PrismError):
    """The peer could not prove it knows the cluster secret."""

    code = "authentication_failed"
    errno = _errno.EACCES


class Unavailable(PrismError):
    """A node could not be reached or the connection to it broke."""

    code = "unavailable"
    errno = _errno.EHOSTUNREACH
    transient = True


class DeadlineExceeded(PrismError):
    """A call did not finish before its deadline."""

    code = "deadline_exceeded"
    errno = _errno.ETIMEDOUT
    transient = True


class Overloaded(PrismError):
    """The server refuses more work on this connection for now."""

    code = "overloaded"
    errno = _errno.EAGAIN
    transient = True


class ShuttingDown(PrismError):
    """The node is stopping and no longer accepts new calls."""

    code = "shutting_down"
    errno = _errno.ESHUTDOWN
    transient = True


class UnknownMethod(PrismError):
    """The server has no handler for this request type."""

    code = "unknown_method"
    errno = _errno.EOPNOTSUPP


class RemoteError(PrismError):
    """A peer failed with an error this version does not know, or a bug."""

    code = "remote_error"
    errno = _errno.EIO


class InternalError(PrismError):
    """A handler failed unexpectedly; the server log has the traceback."""

    code = "internal_error"
    errno = _errno.EIO


# --- configuration and local state -------------------------------------------


class ConfigError(PrismError):
    """Configuration is missing, malformed or contradictory."""

    code = "config_error"
    errno = _errno.EINVAL


class DataDirLocked(PrismError):
    """Another process already runs a node on this data directory."""

    code = "data_dir_locked"
    errno = _errno.EBUSY


class NotInitialized(PrismError):
    """The data directory holds no cluster identity yet."""

    code = "not_initialized"
    errno = _errno.ENOENT


class AlreadyInitialized(PrismError):
    """The data directory already belongs to a cluster."""

    code = "already_initialized"
    errno = _errno.EEXIST


class ClusterNotFound(PrismError):
    """No cluster address was given and none could be discovered."""

    code = "cluster_not_found"
    errno = _errno.ENOENT


# --- namespace (used by meta/ and every front end) ---------------------------


class NotFound(PrismError):
    """No such file, directory or object."""

    code = "not_found"
    errno = _errno.ENOENT


class AlreadyExists(PrismError):
    """The name already exists."""

    code = "already_exists"
    errno = _errno.EEXIST


class Conflict(PrismError):
    """The object is not in the state the request expects (it changed meanwhile)."""

    code = "conflict"
    errno = _errno.EBUSY


class WriteConflict(PrismError):
    """A write could not be committed: other clients kept changing the same chunk
    while it was merged into their version, more times than a writer retries."""

    code = "write_conflict"
    errno = _errno.EIO


class InvalidArgument(PrismError):
    """An argument is out of range or malformed."""

    code = "invalid_argument"
    errno = _errno.EINVAL


class PermissionDenied(PrismError):
    """The caller may not do this."""

    code = "permission_denied"
    errno = _errno.EACCES


class NoSpace(PrismError):
    """A store or the cluster is out of space."""

    code = "no_space"
    errno = _errno.ENOSPC


class NotEmpty(PrismError):
    """The directory is not empty."""

    code = "not_empty"
    errno = _errno.ENOTEMPTY


class IsADirectory(PrismError):
    """The operation needs a non-directory, and this is a directory."""

    code = "is_a_directory"
    errno = _errno.EISDIR


class NotADirectory(PrismError):
    """A path component or the target is not a directory."""

    code = "not_a_directory"
    errno = _errno.ENOTDIR


class NameTooLong(PrismError):
    """A name is longer than 255 bytes."""

    code = "name_too_long"
    errno = _errno.ENAMETOOLONG


class NotPermitted(PrismError):
    """The operation is not permitted on this kind of object (EPERM)."""

    code = "not_permitted"
    errno = _errno.EPERM


class TooManyLinks(PrismError):
    """The inode already has the maximum number of links."""

    code = "too_many_links"
    errno = _errno.EMLINK


class NoAttribute(PrismError):
    """No such extended attribute."""

    code = "no_attribute"
    errno = _errno.ENODATA


class OutOfRange(PrismError):
    """An extended attribute name is too long, or a buffer too small (ERANGE)."""

    code = "out_of_range"
    errno = _errno.ERANGE


class ValueTooLarge(PrismError):
    """An extended attribute value is larger than allowed (E2BIG)."""

    code = "value_too_large"
    errno = _errno.E2BIG


class FileTooLarge(PrismError):
    """A file size beyond what the namespace allows (EFBIG)."""

    code = "file_too_large"
    errno = _errno.EFBIG


class CorruptShard(PrismError):
    """A stored shard no longer matches its checksum (bit rot, a damaged disk)."""

    code = "corrupt_shard"
    errno = _errno.EIO


class DelegationLost(PrismError):
    """Changes this mount acknowledged under a directory delegation reached the
    leader after the delegation ended, and were not applied (EIO)."""

    code = "delegation_lost"
    errno = _errno.EIO


class WriteBackLost(PrismError):
    """Changes this mount acknowledged and held back were refused when it sent
    them (a name taken, a parent gone): they were not applied (EIO)."""

    code = "writeback_lost"
    errno = _errno.EIO


class SessionExpired(PrismError):
    """The client session is unknown or its lease ran out; open files were released."""

    code = "session_expired"
    errno = _errno.ESTALE


# --- consensus -----------------------------------------------------------------


class NotLeader(PrismError):
    """This node is not the Raft leader; ``details['leader']`` names the one it knows."""

    code = "not_leader"
    errno = _errno.EAGAIN
    transient = True


class LeadershipTransfer(PrismError):
    """The leader is handing over leadership and accepts no proposals meanwhile."""

    code = "leadership_transfer"
    errno = _errno.EAGAIN
    transient = True


class ConfChangeInProgress(PrismError):
    """Another membership change is not committed yet (one at a time)."""

    code = "conf_change_in_progress"
    errno = _errno.EBUSY
    transient = True


class LogCorrupt(PrismError):
    """A Raft log record before the tail failed its checksum: acknowledged data is damaged."""

    code = "log_corrupt"
    errno = _errno.EIO


class ReplicaHalted(PrismError):
    """This replica could not apply a committed log entry for a reason of its own
    (disk full, database locked by another process, I/O error, out of memory):
    it stops rather than skip the entry and diverge from the others. A restart
    replays the log from the last entry it did apply."""

    code = "replica_halted"
    errno = _errno.EIO


class StorageError(PrismError):
    """A local file could not be written or read (disk full, I/O error, permissions)."""

    code = "storage_error"
    errno = _errno.EIO
