"""The web console's pages as HTML: pure functions of what the leader answered.

Every value that comes from the cluster (node ids, zones, file names) is
escaped here. Pages need no script: bars are ``<meter>`` and ``<progress>``
elements, charts inline SVG, refresh a ``<meta http-equiv="refresh">``.
"""

from __future__ import annotations

import html
import itertools
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from prismfs.clock import wall_ns
from prismfs.gateway.app import file_kind
from prismfs.leader.activity import ActivityReply
from prismfs.leader.admin import ClusterHealthReply, NodeHealth
from prismfs.leader.faults import FaultBudgetReply
from prismfs.meta.commands import Attr, ChunkMap, ChunkRecord
from prismfs.sizes import human_bytes

REFRESH_S = 5
RATE_WINDOW_S = 60.0

e = html.escape


def url_of(path: str) -> str:
    return quote(path, safe="/")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


@dataclass
class Viewer:
    """Who looks: their token's scope, and the form token for their actions."""

    scope: str  # read, write or admin
    name: str
    csrf: str

    @property
    def admin(self) -> bool:
        return self.scope == "admin"

    @property
    def writer(self) -> bool:
        return self.scope in ("write", "admin")


# --- the frame --------------------------------------------------------------------------------

NAV = (("overview", "/ui/", "Overview"), ("activity", "/ui/activity", "Activity"),
       ("files", "/ui/files/", "Files"))  # fmt: skip


def shell(
    title: str,
    body: str,
    *,
    current: str = "",
    viewer: Viewer | None = None,
    refresh: bool = False,
    paused_link: str = "",
) -> str:
    """A whole page: header with navigation, the body in ``<main>``."""
    nav = ""
    if viewer is not None:
        here = ' aria-current="page"'
        items = "".join(
            f'<li><a href="{href}"{here if key == current else ""}>{label}</a></li>'
            for key, href, label in NAV
        )
        nav = (
            f'<nav aria-label="Console"><ul>{items}</ul></nav>'
            f'<form method="post" action="/ui/logout">'
            f'<input type="hidden" name="csrf" value="{e(viewer.csrf)}">'
            f'<span class="muted">{e(viewer.name)} ({e(viewer.scope)})</span> '
            f"<button>Sign out</button></form>"
        )
    meta_refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    refresh_note = ""
    if paused_link:
        refresh_note = (
            f'<p class="muted">This page refreshes every {REFRESH_S} s. '
            f'<a href="{e(paused_link)}">Stop refreshing</a></p>'
            if refresh
            else f'<p class="muted">Refreshing is paused. <a href="{e(paused_link)}">Refresh '
            f"every {REFRESH_S} s</a></p>"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'{meta_refresh}<link rel="icon" href="data:,"><title>{e(title)} · PrismFS</title>'
        '<link rel="stylesheet" href="/ui/console.css"></head><body>'
        '<a class="skip" href="#main">Skip to content</a>'
        '<header class="top"><a class="brand" href="/ui/">PrismFS</a>'
        f"{nav}</header>"
        f'<main id="main"><h1>{e(title)}</h1>{refresh_note}{body}</main>'
        '<script src="/ui/console.js" defer></script></body></html>'
    )


def notice(text: str, bad: bool = False) -> str:
    return f'<p class="notice{" bad" if bad else ""}" role="status">{e(text)}</p>'


def login_page(message: str = "", next_url: str = "/ui/") -> str:
    body = (
        (notice(message, bad=True) if message else "") + '<form method="post" action="/ui/login">'
        f'<input type="hidden" name="next" value="{e(next_url)}">'
        '<label for="token">API token</label>'
        '<input id="token" name="token" type="password" autocomplete="off" required>'
        '<p class="muted">Create one with <code>prismfs token create</code> '
        "(<code>--read-only</code> to look, <code>--admin</code> to drain and remove nodes). "
        "It is kept in this browser session only, in a cookie no script can read.</p>"
        '<button class="primary">Sign in</button></form>'
    )
    return shell("Sign in", body)


def error_page(
    title: str, message: str, viewer: Viewer | None = None, refresh: bool = False
) -> str:
    return shell(title, notice(message, bad=True), viewer=viewer, refresh=refresh)


# --- overview ---------------------------------------------------------------------------------


def state_badge(state: str) -> str:
    cls = {"up": "ok", "draining": "warn", "down": "bad", "removed": "muted"}.get(state, "")
    return f'<span class="badge {cls}">{e(state)}</span>'


def node_actions(n: NodeHealth, viewer: Viewer) -> str:
    if not viewer.admin or n.state == "removed":
        return ""
    acts = []
    if n.state == "draining":
        acts.append(("cancel-drain", "Cancel drain"))
    elif n.state in ("up", "down"):
        acts.append(("drain", "Drain"))
    acts.append(("remove", "Remove"))
    node = url_of(n.node)
    links = "".join(
        f'<a class="button" href="/ui/nodes/{node}/{a}" aria-label="{label} node {e(n.node)}">'
        f"{label}</a>"
        for a, label in acts
    )
    return f'<div class="actions">{links}</div>'


def nodes_table(h: ClusterHealthReply, viewer: Viewer) -> str:
    rows = []
    for n in sorted(h.nodes, key=lambda n: (n.state == "removed", n.node)):
        cap = f"{human_bytes(n.used)} of {human_bytes(n.capacity)}" if n.capacity else "unknown"
        meter = (
            f'<meter min="0" max="{n.capacity}" value="{min(n.used, n.capacity)}" '
            f'high="{int(n.capacity * 0.85)}" aria-label="use of {e(n.node)}">{e(cap)}</meter> '
            if n.capacity
            else ""
        )
        leader = ' <span class="badge">leader</span>' if n.node == h.leader else ""
        heard = "this node leads" if n.node == h.leader else f"{n.silent_s:.1f} s ago"
        actions = f"<td>{node_actions(n, viewer)}</td>" if viewer.admin else ""
        rows.append(
            f'<tr data-node="{e(n.node)}" data-state="{e(n.state)}">'
            f"<td><code>{e(n.node)}</code>{leader}</td><td>{state_badge(n.state)}</td>"
            f'<td class="wide">{e(n.address)}</td><td>{e(n.zone) or "—"}</td>'
            f"<td>{e(n.role or '—')}</td><td>{meter}{e(cap)}</td>"
            f'<td class="num">{n.shards}</td><td>{e(heard)}</td>{actions}</tr>'
        )
    head_actions = "<th>Actions</th>" if viewer.admin else ""
    return (
        '<div class="table-wrap"><table><caption class="muted">Every node in the registry'
        "</caption><thead><tr><th>Node</th><th>State</th>"
        '<th class="wide">Address</th><th>Zone</th><th>Role</th><th>Capacity and use</th>'
        f'<th class="num">Shards</th><th>Last heard</th>{head_actions}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def budget_card(b: FaultBudgetReply | None) -> str:
    if b is None:
        return '<div class="card" id="fault-budget"><h2>Fault budget</h2><p>Not known.</p></div>'
    if b.nodes < 0:
        headline = '<p class="big ok" data-budget="none">No data to lose yet</p>'
    elif b.unavailable:
        lost = plural(b.unavailable, "chunk")
        headline = f'<p class="big bad" data-budget="0">{lost} unreadable now</p>'
    else:
        cls = "bad" if b.nodes == 0 else ("warn" if b.nodes == 1 else "ok")
        word = "node" if b.nodes == 1 else "nodes"
        headline = f'<p class="big {cls}" data-budget="{b.nodes}">{b.nodes} more {word}</p>'
    meta = ""
    if b.voters:
        margin = max(0, b.voters_margin)
        meta = (
            f"<p>Metadata: {margin} of the {b.voters} voters may fail (a majority must stay "
            "up).</p>"
        )
    zones = ""
    if b.zones:
        safe = ", ".join(e(z) for z in b.zones_survivable) or "none"
        zones = (
            f"<p>Zones that can be lost whole: {safe} (of {', '.join(e(z) for z in b.zones)})</p>"
        )
    weakest = ""
    if b.weakest and b.nodes >= 0:
        items = "".join(f'<li><a href="/ui/files{url_of(d)}">{e(d)}</a></li>' for d in b.weakest)
        weakest = (
            f"<p>First to go ({plural(b.least_margin_chunks, 'chunk')} at the least margin):</p>"
            f"<ul>{items}</ul>"
        )
    age = max(0.0, (wall_ns() - b.computed_ns) / 1e9)
    return (
        '<div class="card" id="fault-budget"><h2>Fault budget</h2>'
        "<p>How many more nodes may fail now with every file still readable:</p>"
        f'{headline}{meta}{zones}{weakest}<p class="muted">Computed {age:.0f} s ago over '
        f"{plural(b.chunks, 'chunk')}.</p></div>"
    )


def overview_page(
    h: ClusterHealthReply, budget: FaultBudgetReply | None, viewer: Viewer, refresh: bool,
    message: str = "",
) -> str:  # fmt: skip
    up = sum(1 for n in h.nodes if n.state == "up")
    live = [n for n in h.nodes if n.state != "removed"]
    leader = next((n for n in h.nodes if n.node == h.leader), None)
    chunks = (
        f'<p><span class="ok">{h.healthy} healthy</span>, '
        f'<span class="{"warn" if h.degraded else "muted"}">{h.degraded} degraded</span>, '
        f'<span class="{"bad" if h.unavailable else "muted"}">{h.unavailable} unavailable</span>'
        f"</p>"
    )
    if h.chunks:
        chunks += (
            f'<meter min="0" max="{h.chunks}" value="{h.healthy}" low="{h.chunks - 0.5}" '
            f'optimum="{h.chunks}" aria-label="healthy chunks">{h.healthy}/{h.chunks}</meter>'
        )
    body = (
        (notice(message) if message else "") + '<div class="cards">'
        f'<div class="card"><h2>Leader</h2><p class="big"><code>{e(h.leader)}</code></p>'
        f'<p class="muted">{e(leader.address if leader else "")} · term {h.term}</p></div>'
        f'<div class="card"><h2>Voters</h2><p>{", ".join(f"<code>{e(v)}</code>" for v in h.voters)}'
        f'</p><p class="muted">{plural(len(h.learners), "learner")}</p></div>'
        f'<div class="card" id="nodes-up"><h2>Nodes</h2><p class="big">{up} of {len(live)} up</p>'
        "</div>"
        f'<div class="card" id="chunk-health"><h2>Chunks</h2><p class="big">{h.chunks}</p>{chunks}'
        f"</div>{budget_card(budget)}</div>"
        f"<h2>Nodes</h2>{nodes_table(h, viewer)}"
    )
    link = "/ui/?refresh=0" if refresh else "/ui/"
    return shell("Overview", body, current="overview", viewer=viewer, refresh=refresh,
                 paused_link=link)  # fmt: skip


# --- activity ---------------------------------------------------------------------------------


def series(a: ActivityReply, name: str) -> list[tuple[float, float]]:
    """(seconds, value) of one field, oldest first."""
    i, t = a.fields.index(name), a.fields.index("t_ns")
    return [(s[t] / 1e9, float(s[i])) for s in a.samples]


def rates(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Per-second rates between samples; a counter that went down (a reset) gives none."""
    out = []
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if t1 > t0 and v1 >= v0:
            out.append((t1, (v1 - v0) / (t1 - t0)))
    return out


def recent_rate(a: ActivityReply | None, name: str, window_s: float = RATE_WINDOW_S) -> float:
    """The field's mean rate per second over the last ``window_s``, leaving out
    the step across a reset (its progress is unknown)."""
    if a is None or len(a.samples) < 2:
        return 0.0
    pts = series(a, name)
    window = [p for p in pts if p[0] >= pts[-1][0] - window_s] or pts
    if len(window) < 2:
        window = pts[-2:]
    steps = [(b[0] - a_[0], b[1] - a_[1]) for a_, b in itertools.pairwise(window)]
    kept = [(dt, dv) for dt, dv in steps if dt > 0 and dv >= 0]  # a reset's step is unknown
    seconds = sum(dt for dt, _ in kept)
    return sum(dv for _, dv in kept) / seconds if seconds > 0 else 0.0


def eta(left: float, rate: float) -> str:
    if left <= 0:
        return "done"
    if rate <= 0:
        return "unknown (no progress in the last minute)"
    return human_duration(left / rate)


def chart(points: Sequence[tuple[float, float]], label: str, unit: str) -> str:
    """An inline SVG line chart of the last hour."""
    w, h, pad = 600, 160, 34
    now = wall_ns() / 1e9
    start = now - 3600
    visible = [(t, v) for t, v in points if t >= start]
    top = max((v for _, v in visible), default=0.0) or 1.0
    coords = " ".join(
        f"{pad + (t - start) / 3600 * (w - pad - 4):.1f},{h - 18 - v / top * (h - 30):.1f}"
        for t, v in visible
    )
    last = visible[-1][1] if visible else 0.0
    desc = f"{label}: {fmt_rate(last, unit)} now, at most {fmt_rate(top, unit)} in the last hour"
    return (
        f'<figure><svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{e(desc)}">'
        f"<title>{e(desc)}</title>"
        f'<line x1="{pad}" y1="{h - 18}" x2="{w - 4}" y2="{h - 18}"/>'
        f'<line x1="{pad}" y1="12" x2="{w - 4}" y2="12"/>'
        f'<text x="2" y="16">{e(fmt_rate(top, unit, short=True))}</text>'
        f'<text x="2" y="{h - 20}">0</text>'
        f'<text x="{pad}" y="{h - 4}">60 min ago</text>'
        f'<text x="{w - 40}" y="{h - 4}">now</text>'
        f'<polyline points="{coords}"/></svg>'
        f"<figcaption>{e(desc)}</figcaption></figure>"
    )


def fmt_rate(v: float, unit: str, short: bool = False) -> str:
    if unit == "B":
        return f"{human_bytes(v)}/s"
    return f"{v:.1f}/s" if short else f"{v:.1f} {unit}/s"


def activity_page(
    h: ClusterHealthReply, a: ActivityReply | None, viewer: Viewer, refresh: bool,
    message: str = "",
) -> str:  # fmt: skip
    parts = [notice(message)] if message else []
    # Repair
    repair_rate = recent_rate(a, "repaired_chunks")
    parts.append(
        '<section aria-labelledby="repair-h"><h2 id="repair-h">Repair</h2>'
        f"<p>{plural(h.repair_pending, 'chunk')} below full redundancy · "
        f"{h.repaired_chunks} rebuilt "
        f"({human_bytes(h.repaired_bytes)}) by this leader · "
        f"{repair_rate:.1f} chunks/s · time left: {e(eta(h.repair_pending, repair_rate))}</p>"
        "</section>"
    )
    # Drains
    drains = []
    moved_rate = recent_rate(a, "moved_shards")
    for node, left, total in h.moves.draining:
        done = max(0, total - left)
        pct = 100.0 if not total else 100.0 * done / total
        drains.append(
            f'<tr data-drain="{e(node)}" data-percent="{pct:.0f}"><td><code>{e(node)}</code></td>'
            f'<td><progress max="{max(total, 1)}" value="{done if total else 1}" '
            f'aria-label="drain of {e(node)}">{pct:.0f}%</progress> {pct:.0f}%</td>'
            f'<td class="num">{left}</td><td>{moved_rate:.1f} shards/s</td>'
            f"<td>{e(eta(left, moved_rate))}</td></tr>"
        )
    drain_html = (
        '<div class="table-wrap"><table><thead><tr><th>Node</th><th>Progress</th>'
        '<th class="num">Shards left</th><th>Rate</th><th>Time left</th></tr></thead>'
        f"<tbody>{''.join(drains)}</tbody></table></div>"
        if drains
        else "<p>No node is draining.</p>"
    )
    parts.append(
        f'<section aria-labelledby="drain-h"><h2 id="drain-h">Drains</h2>{drain_html}</section>'
    )
    # Rebalance
    bytes_rate = recent_rate(a, "moved_bytes")
    parts.append(
        '<section aria-labelledby="rebalance-h"><h2 id="rebalance-h">Rebalancing and moves</h2>'
        f"<p>{h.moves.shards_moved} shards ({human_bytes(h.moves.bytes_moved)}) moved by this "
        f"leader · about {human_bytes(h.moves.to_move_bytes)} still to move to even out use · "
        f"{human_bytes(bytes_rate)}/s · time left: {e(eta(h.moves.to_move_bytes, bytes_rate))}"
        f"</p></section>"
    )
    # Scrub
    s = h.scrub
    scrub_rate = recent_rate(a, "scrub_chunks")
    if s.running:
        pct = 100.0 * s.chunks / h.chunks if h.chunks else 100.0
        scrub = (
            f'<p><progress max="{max(h.chunks, 1)}" value="{min(s.chunks, h.chunks)}" '
            f'aria-label="scrub progress">{pct:.0f}%</progress> {pct:.0f}% · {s.chunks} of '
            f"{h.chunks} chunks checked · {scrub_rate:.1f} chunks/s · time left: "
            f"{e(eta(h.chunks - s.chunks, scrub_rate))}</p>"
        )
    else:
        last = (
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(s.finished_ns / 1e9))
            if s.finished_ns
            else "never on this leader"
        )
        due = (
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(s.next_ns / 1e9))
            if s.next_ns
            else "not scheduled"
        )
        scrub = (
            f"<p>Not running. Last pass finished: {e(last)} ({plural(s.chunks, 'chunk')}, "
            f"{s.corrupt} corrupt, {s.missing} missing, {s.repaired} repaired). "
            f"Next scheduled pass: {e(due)}.</p>"
        )
        if viewer.admin:
            scrub += '<p><a class="button" href="/ui/scrub/start">Start a scrub</a></p>'
    parts.append(f'<section aria-labelledby="scrub-h"><h2 id="scrub-h">Scrub</h2>{scrub}</section>')
    # Charts
    if a is not None:
        both = zip(series(a, "bytes_in"), series(a, "bytes_out"), strict=True)
        traffic = rates([(t, i + o) for (t, i), (_, o) in both])
        parts.append(
            '<section aria-labelledby="charts-h"><h2 id="charts-h">The last hour</h2>'
            + chart(traffic, "Shard throughput (stored and served)", "B")
            + chart(rates(series(a, "commit")), "Raft commits", "entries")
            + '<p class="muted">Kept in the leader\'s memory: a new leader starts an empty hour.'
            "</p></section>"
        )
    link = "/ui/activity?refresh=0" if refresh else "/ui/activity"
    return shell("Activity", "".join(parts), current="activity", viewer=viewer, refresh=refresh,
                 paused_link=link)  # fmt: skip


# --- files ------------------------------------------------------------------------------------


def crumbs(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    out = ['<a href="/ui/files/">/</a>']
    for i, p in enumerate(parts):
        out.append(f'<a href="/ui/files/{url_of("/".join(parts[: i + 1]))}">{e(p)}</a>')
    return '<nav aria-label="Path" class="muted">' + " / ".join(out) + "</nav>"


def when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns / 1e9))


def directory_page(
    path: str, entries: list[tuple[str, Attr]], more: str | None, viewer: Viewer,
    message: str = "",
) -> str:  # fmt: skip
    base = path.rstrip("/")
    rows = []
    for name, attr in entries:
        target = f"{base}/{name}"
        suffix = "/" if stat.S_ISDIR(attr.mode) else ""
        rows.append(
            f'<tr><td><a href="/ui/files{url_of(target)}">{e(name)}{suffix}</a></td>'
            f"<td>{file_kind(attr.mode)}</td>"
            f'<td class="num">{human_bytes(attr.size) if stat.S_ISREG(attr.mode) else "—"}</td>'
            f'<td class="wide"><code>{stat.filemode(attr.mode)}</code></td>'
            f'<td class="wide">{when(attr.mtime_ns)}</td></tr>'
        )
    table = (
        '<div class="table-wrap"><table id="listing"><thead><tr><th>Name</th><th>Type</th>'
        '<th class="num">Size</th><th class="wide">Mode</th><th class="wide">Modified</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        if rows
        else "<p>This directory is empty.</p>"
    )
    if more:
        table += f'<p><a href="/ui/files{url_of(path)}?cursor={e(more)}">More entries</a></p>'
    upload = ""
    if viewer.writer:
        upload = (
            f'<section id="upload" class="drop" hidden data-dir="{e(path)}" '
            f'data-csrf="{e(viewer.csrf)}" aria-labelledby="upload-h">'
            '<h2 id="upload-h">Upload</h2><p>Drop files here, or '
            '<label class="inline" for="upload-files">choose files</label>: '
            '<input id="upload-files" type="file" multiple></p>'
            '<p><progress id="upload-progress" max="1" value="0" aria-label="upload progress">'
            '</progress> <span id="upload-status" role="status"></span></p></section>'
            '<noscript><p class="muted">Uploads here need JavaScript; '
            "<code>prismfs put</code> and <code>PUT /v1/files</code> need none.</p></noscript>"
        )
    body = (notice(message) if message else "") + crumbs(path) + table + upload
    return shell(f"Files: {path}", body, current="files", viewer=viewer)


def chunk_rows(chunks: Sequence[tuple[int, ChunkRecord]], states: dict[str, str]) -> str:
    rows = []
    for idx, rec in chunks:
        if rec.is_inline:
            where = "kept in the metadata (inline)"
        else:
            shards = []
            for i, node in enumerate(rec.nodes):
                role = "data" if i < rec.k else "parity"
                st = states.get(node, "unknown") if node else "never stored"
                shards.append(
                    f"<li>shard {i} ({role}): <code>{e(node) or '—'}</code> {state_badge(st)}</li>"
                )
            where = f"<ul>{''.join(shards)}</ul>"
        layout = "inline" if rec.is_inline else f"{rec.k} of {rec.m}"
        rows.append(
            f'<tr><td class="num">{idx}</td><td><code>{rec.id.hex()[:16]}</code></td>'
            f'<td class="num">{human_bytes(rec.length)}</td><td>{layout}</td><td>{where}</td></tr>'
        )
    return "".join(rows)


def file_page(
    path: str, attr: Attr, cmap: ChunkMap, first: int, per_page: int, states: dict[str, str],
    viewer: Viewer,
) -> str:  # fmt: skip
    """A file and where the shards of chunks ``first`` to ``first + per_page - 1`` are."""
    chunks = cmap.chunks
    total = -(-attr.size // cmap.chunk_size) if cmap.chunk_size else len(chunks)
    geometry = sorted({(r.k, r.m) for _, r in chunks if not r.is_inline})
    layout = ", ".join(f"{k} of {m}" for k, m in geometry) or "inline"
    shown = ""
    pager = []
    if first > 0:
        back = max(0, first - per_page)
        pager.append(f'<a href="/ui/files{url_of(path)}?chunk={back}">Earlier chunks</a>')
    if first + per_page < total:
        pager.append(f'<a href="/ui/files{url_of(path)}?chunk={first + per_page}">Later chunks</a>')
    if first > 0 or first + per_page < total:
        last = min(total, first + per_page) - 1
        shown = f"<p>Chunks {first} to {last} of {total}. {' · '.join(pager)}</p>"
    body = (
        crumbs(path) + '<div class="cards"><div class="card"><h2>File</h2>'
        f"<p>{human_bytes(attr.size)} ({attr.size} bytes)</p>"
        f"<p><code>{stat.filemode(attr.mode)}</code> uid {attr.uid} gid {attr.gid}</p>"
        f"<p>Modified {when(attr.mtime_ns)}</p>"
        f'<p><a class="button" href="/ui/download{url_of(path)}" download>Download</a></p></div>'
        f'<div class="card"><h2>Layout</h2><p>{plural(total, "chunk")} of up to '
        f"{human_bytes(cmap.chunk_size)}, coded {e(layout)}</p>"
        '<p class="muted">k of m: any k of a chunk\'s m shards rebuild it.</p></div></div>'
        "<h2>Where each chunk's shards are</h2>"
        f"{shown}"
        '<div class="table-wrap"><table id="chunks"><thead><tr><th class="num">Chunk</th>'
        '<th>Id</th><th class="num">Length</th><th>Layout</th><th>Shards</th></tr></thead>'
        f"<tbody>{chunk_rows(chunks, states)}</tbody></table></div>"
    )
    return shell(f"File: {path}", body, current="files", viewer=viewer)


# --- actions ----------------------------------------------------------------------------------


def confirm_page(title: str, explain: str, action: str, button: str, viewer: Viewer,
                 back: str) -> str:  # fmt: skip
    body = (
        f"{explain}"
        f'<form method="post" action="{e(action)}">'
        f'<input type="hidden" name="csrf" value="{e(viewer.csrf)}">'
        f'<div class="actions"><button class="danger">{e(button)}</button>'
        f'<a class="button" href="{e(back)}">Cancel</a></div></form>'
    )
    return shell(title, body, viewer=viewer)
