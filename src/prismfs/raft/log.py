"""The in-memory Raft log of the core: entries after the last snapshot.

Pure data structure, no I/O. Index ``offset`` is the last index covered by the
snapshot (its term is ``offset_term``); ``entries[i]`` has index
``offset + 1 + i``. The durable copy is the driver's business: the core tells
it what to append (and from where to truncate) through `Ready`.

With a ``loader`` (the driver's reader of its durable log), the data of
entries up to ``released`` may be dropped from memory (`release`): their
terms stay, and `slice` reads their data back through the loader when a
follower that lags needs them. Only normal entries are released; config
entries are small and the core folds them into its membership history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prismfs.raft.messages import Entry

Loader = Callable[[int, int, int], list[Entry]]
"""``loader(lo, hi, max_bytes)``: the entries lo <= index < hi as stored, in
order, stopping after the first whose data takes the total past ``max_bytes``."""


class RaftLog:
    def __init__(
        self,
        offset: int = 0,
        offset_term: int = 0,
        entries: Sequence[Entry] = (),
        loader: Loader | None = None,
    ) -> None:
        self.offset = offset
        self.offset_term = offset_term
        self.entries: list[Entry] = list(entries)
        self.loader = loader
        self.released = offset  # entries up to here may hold no data (see `release`)
        for i, entry in enumerate(self.entries):
            if entry.index != offset + 1 + i:
                raise ValueError(f"log entry {entry.index} found where {offset + 1 + i} belongs")

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted away or not there."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset or index > self.last_index:
            return None
        return self.entries[index - self.offset - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.offset - 1]

    def slice(self, lo: int, hi: int, max_bytes: int = 0) -> list[Entry]:
        """Entries with lo <= index < hi (lo > offset). Released ones are read
        back through the loader; with ``max_bytes``, the slice may stop after
        the first released entry that takes their data past it."""
        assert lo > self.offset, (lo, self.offset)
        out = self.entries[lo - self.offset - 1 : hi - self.offset - 1]
        if lo > self.released or not out:
            return out
        assert self.loader is not None
        upto = min(hi, self.released + 1, lo + len(out))
        loaded = self.loader(lo, upto, max_bytes or (1 << 62))
        for pos, entry in enumerate(loaded):
            kept = out[pos]
            if entry.index != kept.index or entry.term != kept.term:
                raise ValueError(f"the stored log holds {entry} where {kept} belongs")
        if len(loaded) < upto - lo:
            return loaded
        return loaded + out[upto - lo :]

    def release(self, index: int) -> None:
        """Drop from memory the data of normal entries up to ``index``, which
        the driver's log holds durably (needs a loader)."""
        index = min(index, self.last_index)
        if self.loader is None or index <= self.released:
            return
        for pos in range(self.released - self.offset, index - self.offset):
            entry = self.entries[pos]
            if entry.kind == "normal" and entry.data:
                self.entries[pos] = Entry(entry.term, entry.index, entry.kind)
        self.released = index

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: a candidate's log is at least as up to date as ours."""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def append(self, entries: Sequence[Entry]) -> None:
        """Leader path: entries continue the log exactly."""
        for entry in entries:
            assert entry.index == self.last_index + 1
            self.entries.append(entry)

    def maybe_append(self, prev_index: int, prev_term: int, entries: Sequence[Entry]) -> int | None:
        """Follower path (AppendEntries receiver rules 2-4).

        Returns None when (prev_index, prev_term) does not match; otherwise
        the index of the first entry that changed (truncated or appended), or
        ``last_index + 1`` when nothing changed. Entries already present are
        kept: a stale, duplicated or reordered Append never truncates entries
        that match.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        for pos, entry in enumerate(entries):
            if entry.index <= self.offset:
                continue  # covered by our snapshot, hence committed and equal
            existing = self.term(entry.index)
            if existing == entry.term:
                continue
            if existing is not None:
                del self.entries[entry.index - self.offset - 1 :]  # rule 3: conflict
            self.entries.extend(entries[pos:])
            return entry.index
        return self.last_index + 1

    def first_index_of_term(self, index: int) -> int:
        """The first index (after the snapshot) holding the same term as ``index``."""
        term = self.term(index)
        while index - 1 > self.offset and self.term(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int | None:
        """Last index of ``term`` in the log, or None if the term is absent."""
        for entry in reversed(self.entries):
            if entry.term == term:
                return entry.index
            if entry.term < term:
                return None
        return self.offset if self.offset_term == term and self.offset else None

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (now covered by a snapshot)."""
        if index <= self.offset:
            return
        term = self.term(index)
        assert term is not None, "cannot compact beyond the log"
        del self.entries[: index - self.offset]
        self.offset, self.offset_term = index, term
        self.released = max(self.released, index)

    def reset(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot point (InstallSnapshot)."""
        self.entries.clear()
        self.offset, self.offset_term = index, term
        self.released = index
