"""The web console in a real browser (Debian's chromium, driven by selenium
through chromium-driver) against a real 3-node cluster serving HTTP.

Signed in with an admin token: three nodes up; kill -9 of one shows it down
and the fault budget drop without reloading (the page refreshes itself);
an upload (file chooser and a drop) shows in the listing and on a FUSE
mount; a drain started from the page reaches 100% on the activity page. A
read-only token sees no action, and forged action requests (a read-only
session, a missing form token) change nothing. Read-only pages work with
JavaScript off and on a phone-sized screen. Every control is reached with
the Tab key and named in the browser's accessibility tree.

``PRISMFS_SCREENSHOTS=DIR`` saves a screenshot of each page there (the ones
in docs/img were made so).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from conftest import run_cli
from test_http_api import Api

pytestmark = pytest.mark.timeout(600)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = os.environ.get("PRISMFS_SCREENSHOTS", "")


def browser(*, javascript: bool = True, size: tuple[int, int] = (1280, 900)) -> WebDriver:
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "the console tests need Debian's chromium and chromium-driver (make test installs them)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except WebDriverException as exc:  # the page was being replaced by its refresh
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} ({last})")


def follow(driver: WebDriver, by: str, selector: str) -> None:
    """Click what leads to another page, and wait until that page replaced this one
    (a click returns before the browser has loaded where it leads)."""
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(by, selector).click()

    def replaced() -> bool:
        try:
            old.is_enabled()
        except WebDriverException:  # stale, or "does not belong to the document"
            return True
        return False

    deadline = time.monotonic() + 60
    while not replaced():
        assert time.monotonic() < deadline, f"{selector} led nowhere within 60 s"
        time.sleep(0.1)
    wait_until(
        lambda: driver.execute_script("return document.readyState") == "complete",
        60,
        "the page to load",
    )


def sign_in(driver: WebDriver, base: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(base + "/ui/login")
    driver.find_element(By.ID, "token").send_keys(token)
    follow(driver, By.CSS_SELECTOR, "main form button")
    wait_until(lambda: driver.title.startswith("Overview"), 30, "the overview after signing in")


def shot(driver: WebDriver, name: str) -> None:
    """The whole page (the window made as tall as it), when asked to."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        size = driver.get_window_size()
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], max(size["height"], int(height) + 20))
        try:
            driver.save_screenshot(str(Path(SHOTS) / f"console-{name}.png"))
        finally:
            driver.set_window_size(size["width"], size["height"])


def node_states(driver: WebDriver) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "tr[data-node]")
    return {r.get_attribute("data-node") or "": r.get_attribute("data-state") or "" for r in rows}


def budget(driver: WebDriver) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, "#fault-budget [data-budget]")
    return (found[0].get_attribute("data-budget") or "") if found else ""


class Console:
    """The cluster (with a write token's file on it) and an admin's browser."""

    def __init__(self, base: Path) -> None:
        self.api = Api(base)
        self.base = self.api.url(1)
        self.ids = [str(n["id"]) for n in self.api.nodes]
        self.driver = browser()
        self.fourth = ""  # the node the drain test adds
        with self.api.client("write") as c:
            assert c.put("/v1/dirs/projects/a?parents=true").status_code in (200, 201)
            r = c.put("/v1/files/projects/a/first.bin", content=os.urandom(300_000))
            assert r.status_code in (200, 201), r.text

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            self.api.cleanup()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    c = Console(tmp_path_factory.mktemp("console"))
    try:
        yield c
    finally:
        c.close()


def test_sign_in_shows_three_nodes_up_and_a_bad_token_is_refused(console: Console) -> None:
    d = console.driver
    d.get(console.base + "/ui/")
    assert "/ui/login" in d.current_url  # not signed in: sent to the form
    d.find_element(By.ID, "token").send_keys("pfs_nosuch_" + "x" * 43)
    follow(d, By.CSS_SELECTOR, "main form button")
    assert "Not signed in" in d.find_element(By.CSS_SELECTOR, ".notice").text
    assert d.get_cookie("prismfs_console") is None
    sign_in(d, console.base, console.api.tokens["admin"])
    states = wait_until(lambda: node_states(d), 10, "the node table")
    assert sorted(states) == sorted(console.ids)
    assert set(states.values()) == {"up"}
    assert d.find_element(By.ID, "nodes-up").text.endswith("3 of 3 up")
    # 2-of-3 chunks on three nodes: one more node may fail.
    wait_until(lambda: budget(d) == "1" or d.refresh(), 30, "a fault budget of one node")
    cookie = d.get_cookie("prismfs_console")
    assert cookie and cookie["httpOnly"] and "expiry" not in cookie  # the session only
    shot(d, "overview")


def test_upload_by_chooser_and_drop_shows_in_listing_and_on_a_mount(console: Console) -> None:
    d = console.driver
    d.get(console.base + "/ui/files/projects")
    chosen = console.api.mount.base / "chosen.txt"
    chosen.write_bytes(b"chosen in the console\n" * 5000)
    d.find_element(By.ID, "upload-files").send_keys(str(chosen))
    wait_until(
        lambda: "chosen.txt" in d.find_element(By.ID, "listing").text, 60, "chosen.txt listed"
    )
    # A drop: the browser's own drop event with a file made in the page.
    d.execute_script(
        """
        const zone = document.getElementById("upload");
        const data = new DataTransfer();
        data.items.add(new File(["dropped ".repeat(40000)], "dropped.txt"));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
        """
    )
    wait_until(
        lambda: "dropped.txt" in d.find_element(By.ID, "listing").text, 60, "dropped.txt listed"
    )
    shot(d, "files")
    follow(d, By.LINK_TEXT, "dropped.txt")
    chunks = d.find_element(By.ID, "chunks").text
    assert "2 of 3" in chunks and all(i in chunks for i in console.ids)
    shot(d, "file")
    point = console.api.mount.mount()
    try:
        assert (point / "projects" / "chosen.txt").read_bytes() == chosen.read_bytes()
        assert (point / "projects" / "dropped.txt").read_bytes() == b"dropped " * 40000
    finally:
        console.api.mount.unmount()
    # Downloads are the file's bytes.
    with httpx.Client(base_url=console.base, cookies=d_cookies(d)) as c:  # the session
        r = c.get("/ui/download/projects/chosen.txt")
        assert r.status_code == 200 and r.content == chosen.read_bytes()


def d_cookies(d: WebDriver) -> dict[str, str]:
    return {c["name"]: c["value"] for c in d.get_cookies()}


def test_kill_9_shows_the_node_down_and_the_budget_drop_without_reloading(
    console: Console,
) -> None:
    d = console.driver
    d.get(console.base + "/ui/")
    wait_until(lambda: budget(d) == "1", 30, "a fault budget of one node")
    leader = console.api.leader()
    victim = 3 if leader != 3 else 2  # node 1 serves the console; the leader stays
    pid = int(console.api.node_json(victim)["pid"])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    try:
        node = console.ids[victim - 1]
        # No get(): the page's own refresh (every 5 s) must show it. The leader
        # marks a node down after node_down_after_s (3 s here).
        wait_until(lambda: node_states(d).get(node) == "down", 30, f"{node} shown down")
        wait_until(lambda: budget(d) == "0", 30, "a fault budget of zero")
        assert time.monotonic() - killed < 3 + 5 + 10
        shot(d, "overview-node-down")
    finally:
        result = run_cli(
            "dev", "up", "--dir", str(console.api.mount.dir), env=console.api.mount.env,
            timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    wait_until(lambda: set(node_states(d).values()) == {"up"}, 60, "every node up again")


def start_fourth_node(console: Console) -> str:
    data_dir = console.api.mount.base / "node4"
    args = ["--data-dir", str(data_dir), "--listen", "127.0.0.1:0"]
    args += ["--config", str(console.api.config), "--log-file", str(data_dir) + ".log"]
    args += ["--secret-file", str(console.api.mount.dir / "node1" / "cluster.secret")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "prismfs", "node", "start", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    console.api.procs.append(proc)
    wait_until(lambda: (data_dir / "node.json").exists(), 30, "the fourth node")
    address = json.loads((data_dir / "node.json").read_text())["rpc_address"]
    with console.api.client("admin") as c:
        r = c.post("/v1/nodes", json={"address": address})
        assert r.status_code == 201, r.text
        return str(r.json()["node"])


def test_a_drain_started_from_the_page_reaches_100_percent(console: Console) -> None:
    d = console.driver
    console.fourth = start_fourth_node(console)  # somewhere for the drained node's shards to go
    victim = console.ids[1]
    d.get(console.base + "/ui/?refresh=0")
    follow(d, By.CSS_SELECTOR, f'a[href="/ui/nodes/{victim}/drain"]')
    page = d.find_element(By.TAG_NAME, "main").text
    assert f"Drain node {victim}?" in page and "shards" in page  # what will happen, first
    shot(d, "confirm-drain")
    follow(d, By.CSS_SELECTOR, "main form button")
    assert d.title.startswith("Activity")

    def percent() -> int:
        rows = d.find_elements(By.CSS_SELECTOR, f'tr[data-drain="{victim}"]')
        return int(rows[0].get_attribute("data-percent") or 0) if rows else -1

    wait_until(lambda: percent() == 100, 120, "the drain at 100%")
    shot(d, "activity")
    with console.api.client("admin") as c:
        nodes = {n["node"]: n for n in c.get("/v1/nodes").json()["nodes"]}
        assert nodes[victim]["state"] == "draining" and nodes[victim]["shards"] == 0
        # Cancel it from the page too, so the cluster is whole for the tests after.
    d.get(console.base + f"/ui/nodes/{victim}/cancel-drain")
    follow(d, By.CSS_SELECTOR, "main form button")
    with console.api.client("admin") as c:
        nodes = {n["node"]: n for n in c.get("/v1/nodes").json()["nodes"]}
        assert nodes[victim]["state"] == "up"


def test_read_only_sees_no_action_and_forged_requests_change_nothing(console: Console) -> None:
    d = browser(javascript=False)  # and the read-only pages work without JavaScript
    try:
        sign_in(d, console.base, console.api.tokens["read"])
        assert len(node_states(d)) == 4
        for path in ("/ui/", "/ui/activity", "/ui/files/projects"):
            d.get(console.base + path)
            assert not d.find_elements(By.CSS_SELECTOR, 'a[href*="/ui/nodes/"]'), path
            assert not d.find_elements(By.CSS_SELECTOR, 'a[href="/ui/scrub/start"]'), path
            assert not d.find_elements(By.ID, "upload"), path
        d.get(console.base + "/ui/files/projects/chosen.txt")
        assert "Where each chunk's shards are" in d.page_source
        read_cookies = d_cookies(d)
    finally:
        d.quit()
    victim = console.ids[2]
    admin_cookies = d_cookies(console.driver)
    reader = httpx.Client(base_url=console.base, cookies=read_cookies)
    admin = httpx.Client(base_url=console.base, cookies=admin_cookies)
    with reader, admin:
        form = reader.get("/ui/").text
        csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        # A read-only session, even with its own form token: refused.
        r = reader.post(f"/ui/nodes/{victim}/drain", data={"csrf": csrf})
        assert r.status_code == 403, r.text
        # An admin's session without the form token (a request from another site): refused.
        r = admin.post(f"/ui/nodes/{victim}/drain", data={})
        assert r.status_code == 403 and "nothing was changed" in r.text
        r = admin.post(f"/ui/nodes/{victim}/drain", data={"csrf": "0" * 32})
        assert r.status_code == 403
        # Even with the admin's own form token, a browser's request from another
        # site (its Origin, or Sec-Fetch-Site) is refused.
        admin_csrf = admin.get("/ui/").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        evil = {"Origin": "http://evil.example"}
        r = admin.post(f"/ui/nodes/{victim}/drain", data={"csrf": admin_csrf}, headers=evil)
        assert r.status_code == 403 and "evil.example" in r.text
        cross = {"Sec-Fetch-Site": "cross-site"}
        r = admin.post(f"/ui/nodes/{victim}/drain", data={"csrf": admin_csrf}, headers=cross)
        assert r.status_code == 403
        r = admin.post("/ui/scrub/start", data={})
        assert r.status_code == 403
        r = admin.put("/ui/upload/projects/forged.txt", content=b"x")
        assert r.status_code == 403
        r = reader.put("/ui/upload/projects/forged.txt", content=b"x")
        assert r.status_code == 403
    with console.api.client("admin") as c:
        nodes = {n["node"]: n for n in c.get("/v1/nodes").json()["nodes"]}
        assert nodes[victim]["state"] == "up"
        assert c.get("/v1/files/projects/forged.txt").status_code == 404
        assert c.get("/v1/cluster").json()["scrub"]["running"] is False


def drain_from_page(d: WebDriver, base: str, node: str) -> None:
    d.get(base + f"/ui/nodes/{node}/drain")
    follow(d, By.CSS_SELECTOR, "main form button")

    def percent() -> int:
        rows = d.find_elements(By.CSS_SELECTOR, f'tr[data-drain="{node}"]')
        return int(rows[0].get_attribute("data-percent") or 0) if rows else -1

    wait_until(lambda: percent() == 100, 120, f"the drain of {node} at 100%")


def test_a_scrub_and_a_removal_from_the_page(console: Console) -> None:
    d = console.driver
    d.get(console.base + "/ui/activity?refresh=0")
    follow(d, By.LINK_TEXT, "Start a scrub")
    assert "reads every shard" in d.find_element(By.TAG_NAME, "main").text
    follow(d, By.CSS_SELECTOR, "main form button")
    assert "A scrub is running." in d.find_element(By.TAG_NAME, "main").text
    with console.api.client("read") as c:
        wait_until(
            lambda: (
                c.get("/v1/cluster").json()["scrub"]["passes"] >= 1
                and not c.get("/v1/cluster").json()["scrub"]["running"]
            ),
            120,
            "the scrub to finish",
        )
    d.get(console.base + "/ui/activity?refresh=0")
    scrub = d.find_element(By.CSS_SELECTOR, "section[aria-labelledby=scrub-h]").text
    assert "Last pass finished" in scrub and "0 corrupt, 0 missing" in scrub
    # The fourth node: drained, then removed, from the page.
    assert console.fourth
    drain_from_page(d, console.base, console.fourth)
    d.get(console.base + "/ui/?refresh=0")
    follow(d, By.CSS_SELECTOR, f'a[href="/ui/nodes/{console.fourth}/remove"]')
    assert f"Remove node {console.fourth}?" in d.title
    follow(d, By.CSS_SELECTOR, "main form button")
    assert "was removed" in d.find_element(By.TAG_NAME, "main").text
    assert node_states(d)[console.fourth] == "removed"
    assert not d.find_elements(By.CSS_SELECTOR, f'a[href^="/ui/nodes/{console.fourth}/"]')


def test_pages_fit_a_phone_screen(console: Console) -> None:
    d = browser(size=(390, 844))
    try:
        sign_in(d, console.base, console.api.tokens["admin"])
        for path in ("/ui/?refresh=0", "/ui/activity?refresh=0", "/ui/files/projects"):
            d.get(console.base + path)
            overflow = d.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 1, (path, overflow)
        d.get(console.base + "/ui/?refresh=0")
        shot(d, "phone")
    finally:
        d.quit()


FOCUSABLE = "a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]"


NAMED_ROLES = ("link", "button", "textbox", "meter", "progressbar")


def tab_through(d: WebDriver) -> tuple[set[str], set[str]]:
    """(the controls on the page, the ones Tab reached), as outer HTML."""
    controls = {
        el.get_attribute("outerHTML") or ""
        for el in d.find_elements(By.CSS_SELECTOR, FOCUSABLE)
        if el.is_displayed() or el.get_attribute("class") == "skip"
    }
    reached: set[str] = set()
    d.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    for _ in range(len(controls) + 10):
        ActionChains(d).send_keys(Keys.TAB).perform()  # the keyboard, not an element
        reached.add(d.switch_to.active_element.get_attribute("outerHTML") or "")
    return controls, reached


def test_every_control_is_reached_by_keyboard_and_named(console: Console) -> None:
    d = console.driver
    victim = console.ids[1]
    for path in (
        "/ui/?refresh=0",
        "/ui/activity?refresh=0",
        "/ui/files/projects",
        "/ui/files/projects/chosen.txt",
        f"/ui/nodes/{victim}/drain",
        "/ui/scrub/start",
    ):
        d.get(console.base + path)
        controls, reached = tab_through(d)
        missed = controls - reached
        assert not missed, (path, sorted(missed)[:5])
        # The accessibility tree: every link, button and text box has a name
        # and can take the focus.
        tree = d.execute_cdp_cmd("Accessibility.getFullAXTree", {})["nodes"]
        interactive = [
            n
            for n in tree
            if not n.get("ignored")
            and n.get("role", {}).get("value")
            in ("link", "button", "textbox", "meter", "progressbar")
        ]
        assert interactive, path
        for n in interactive:
            role = n["role"]["value"]
            name = str(n.get("name", {}).get("value", "")).strip()
            assert name, (path, role, n)
            if role in ("link", "button", "textbox"):
                props = {p["name"]: p["value"].get("value") for p in n.get("properties", [])}
                assert props.get("focusable") is True, (path, role, name)


def test_the_console_answers_without_a_browser_too(console: Console) -> None:
    """Static parts and refusals, checked over plain HTTP."""
    with httpx.Client(base_url=console.base) as c:
        r = c.get("/ui/console.css")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
        r = c.get("/ui/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        r = c.post("/ui/login", data={"token": "nonsense", "next": "https://elsewhere.example/"})
        assert r.status_code == 401 and "Not signed in" in r.text
        token = console.api.tokens["read"]
        r = c.post("/ui/login", data={"token": token, "next": "//elsewhere.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/"  # never elsewhere
        c.cookies.set("prismfs_console", token)
        page = c.get("/ui/")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "tr data-node" in page.text.replace("<tr ", "tr ")
        r = c.post("/ui/login", content=b"token=" + b"x" * 20000)
        assert r.status_code == 400
