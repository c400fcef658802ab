"""The namespace's session tables: client sessions and their leases, the
exactly-once lanes, open files, and inodes with no name left (orphans)."""

from __future__ import annotations

from prismfs.errors import (
    InvalidArgument,
    SessionExpired,
)
from prismfs.meta.chunk_tables import ChunkTables
from prismfs.meta.commands import (
    SESSION_TOMBSTONE_NS,
    Attr,
    CloseSession,
    ExpireSessions,
    Open,
    OpenSession,
    Release,
)
from prismfs.meta.schema import (
    MAX_LEASE_NS,
    MIN_LEASE_NS,
    ORPHAN_GRACE_NS,
)


class SessionTables(ChunkTables):
    """Client sessions, their exactly-once lanes, open files and orphans."""

    def _live_session(self, session: str) -> None:
        if (
            self.db.execute("SELECT 1 FROM sessions WHERE session = ?", (session,)).fetchone()
            is None
        ):
            raise SessionExpired(f"client session {session!r} is unknown or expired")

    def _ended(self, session: str) -> SessionExpired | None:
        """The refusal for a session that ended, if ``session`` did."""
        if not session:
            return None
        row = self.db.execute(
            "SELECT 1 FROM ended_sessions WHERE session = ?", (session,)
        ).fetchone()
        if row is None:
            return None
        return SessionExpired(
            f"client session {session!r} ended (its lease ran out, or it was closed); "
            "its open files were released"
        )

    def session_lease(self, session: str) -> int | None:
        """The lease (ns) of a live session; None if this replica does not
        know it; `SessionExpired` if it ended."""
        ended = self._ended(session)
        if ended is not None:
            raise ended
        row = self.db.execute(
            "SELECT lease_ns FROM sessions WHERE session = ?", (session,)
        ).fetchone()
        return None if row is None else int(row[0])

    def _add_open(self, session: str, ino: int) -> None:
        self.db.execute(
            "INSERT INTO opens VALUES (?, ?, 1)"
            " ON CONFLICT (session, ino) DO UPDATE SET count = count + 1",
            (session, ino),
        )

    def _open_session(self, c: OpenSession) -> None:
        if not c.session or len(c.session) > 128 or "/" in c.session:
            raise InvalidArgument("a session id is 1 to 128 characters, without '/'")
        if not MIN_LEASE_NS <= c.lease_ns <= MAX_LEASE_NS:
            raise InvalidArgument("a lease lasts 1 second to 1 day")
        ended = self._ended(c.session)
        if ended is not None:
            raise ended
        if c.renew:
            self._live_session(c.session)
        self.db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?)", (c.session, c.lease_ns))
        if self.session_observer is not None:
            self.session_observer.renewed(c.session, c.lease_ns)

    def _close_session(self, c: CloseSession) -> None:
        self._end_sessions([c.session])

    def _expire_sessions(self, c: ExpireSessions) -> None:
        # The leader's wall clock, kept only to forget ended sessions after a day.
        clock = max(self._state("clock_ns"), c.now_ns)
        self.db.execute("UPDATE state SET value = ? WHERE key = 'clock_ns'", (clock,))
        self.db.execute(
            "DELETE FROM ended_sessions WHERE ended_ns < ?", (clock - SESSION_TOMBSTONE_NS,)
        )
        self._end_sessions(sorted(set(c.sessions)))
        if c.new_leader:
            self.db.execute("UPDATE orphans SET seen_ns = 0")  # first seen at this sweep
        self._sweep_orphans(clock)

    def _end_sessions(self, sessions: list[str]) -> None:
        for session in sessions:
            if (
                self.db.execute("SELECT 1 FROM sessions WHERE session = ?", (session,)).fetchone()
                is None
            ):
                continue  # not a live session (already ended, or never started)
            inos = [
                int(r[0])
                for r in self.db.execute(
                    "SELECT ino FROM opens WHERE session = ? ORDER BY ino", (session,)
                ).fetchall()
            ]
            self.db.execute("DELETE FROM opens WHERE session = ?", (session,))
            self.db.execute("DELETE FROM sessions WHERE session = ?", (session,))
            # The exactly-once rows of its lanes ("<session>/<n>") go; the
            # session is remembered as ended instead, so that a late retry on
            # one of its lanes is refused rather than applied a second time.
            # (a range of the primary key: "0" sorts right after "/")
            self.db.execute(
                "DELETE FROM clients WHERE client >= ? AND client < ?",
                (session + "/", session + "0"),
            )
            self.db.execute(
                "INSERT OR REPLACE INTO ended_sessions VALUES (?, ?)",
                (session, self._state("clock_ns")),
            )
            if self.session_observer is not None:
                self.session_observer.ended(session)
            for ino in inos:
                self._free_if_orphan(ino)

    def session_leases(self) -> list[tuple[str, int]]:
        """Every live session and its lease length (ns)."""
        rows = self.db.execute("SELECT session, lease_ns FROM sessions ORDER BY session")
        return [(str(a), int(b)) for a, b in rows]

    def _free_if_orphan(self, ino: int) -> None:
        row = self.db.execute("SELECT nlink FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if row is not None and row[0] <= 0 and not self._is_open(ino):
            self._orphan(ino)

    def _sweep_orphans(self, clock: int) -> None:
        rows = self.db.execute("SELECT ino, seen_ns FROM orphans ORDER BY ino").fetchall()
        for ino, seen in rows:
            row = self.db.execute("SELECT nlink FROM inodes WHERE ino = ?", (ino,)).fetchone()
            if row is None or row[0] > 0 or self._is_open(ino):
                self.db.execute("DELETE FROM orphans WHERE ino = ?", (ino,))
            elif seen == 0:
                self.db.execute("UPDATE orphans SET seen_ns = ? WHERE ino = ?", (clock, ino))
            elif clock - seen >= ORPHAN_GRACE_NS:
                self.db.execute("DELETE FROM orphans WHERE ino = ?", (ino,))
                self._free(ino)

    def orphans(self) -> int:
        """Inodes waiting for a sweep to free them."""
        return int(self.db.execute("SELECT count(*) FROM orphans").fetchone()[0])

    def _open(self, c: Open) -> Attr:
        self._live_session(c.session)
        attr = self.getattr(c.ino)
        self._add_open(c.session, c.ino)
        return attr

    def _release(self, c: Release) -> None:
        # Idempotent: a release after the session expired (or twice) changes nothing.
        self.db.execute(
            "UPDATE opens SET count = count - 1 WHERE session = ? AND ino = ?", (c.session, c.ino)
        )
        self.db.execute(
            "DELETE FROM opens WHERE session = ? AND ino = ? AND count <= 0", (c.session, c.ino)
        )
        self._free_if_orphan(c.ino)
