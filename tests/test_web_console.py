"""The web console in a real browser (Debian's chromium, driven by Selenium) against a running
daemon on a real SQLite queue: the overview shows the children, a failed job is retried from its
page and then runs, the queue pages through and refuses bad input, a POST without the token or
without the CSRF token is refused. One browser, one daemon and one console for the module.

Screenshots of each page land in <basetemp>/web-screenshots (pytest --basetemp) for a look.
"""

from __future__ import annotations

import html
import http.cookiejar
import os
import re
import sqlite3
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
import yaml

from workermanager import config as config_module
from workermanager.theschwartz import Client, init_db

from support.daemon_harness import Daemon
from support.helpers import require_program, wait_for
from support.web_harness import Console

TOKEN = "web-console-test-token-0123456789"
PAGE_SIZE = 3

pytestmark = pytest.mark.timeout(120)


# -- the daemon, the console and the browser --------------------------------------------------------
class Fleet:
    """What the module's tests share: the daemon, its queue, the console and a read-only one."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.queue = os.path.join(folder, "queue.db")
        self.switch = os.path.join(folder, "fail-switch")
        databases = [{"dsn": f"dbi:SQLite:dbname={self.queue}"}]
        self.other_config = os.path.join(folder, "other.yml")  # another master of this host, stopped
        with open(self.other_config, "w") as handle:
            yaml.safe_dump({"workers": ["testworkers.Noop"], "pidfile": os.path.join(folder, "other.pid")}, handle)
        self.daemon = Daemon(folder, {
            "workers": ["testworkers.Noop", "webworkers.Flaky"], "concurrency": 2,
            "pidfile": os.path.join(folder, "wm.pid"), "env": {"WEB_FAIL_SWITCH": self.switch},
            "worker_options": {"databases": databases},
            "web": {"token": TOKEN, "page_size": PAGE_SIZE, "configs": ["other.yml"]}})
        os.chmod(self.daemon.config_path, 0o600)  # it holds the token
        init_db(databases)  # our failed-jobs table too
        self.client = Client(databases)
        self.daemon.start(wait_children=2)
        self.console = Console(self.daemon.config_path, folder, self.daemon.env())
        read_only = dict(self.daemon.config, web={"page_size": PAGE_SIZE})
        self.read_only_path = os.path.join(folder, "read-only.yml")
        with open(self.read_only_path, "w") as handle:
            yaml.safe_dump(read_only, handle)
        self.read_only = Console(self.read_only_path, folder, self.daemon.env())

    def store(self) -> Any:
        from workermanager.jobs import open_store

        return open_store(config_module.load(self.daemon.config_path))

    def stop(self) -> None:
        for console in (self.console, self.read_only):
            console.stop()
        self.daemon.stop()
        self.client.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    made = Fleet(str(tmp_path_factory.mktemp("web-fleet")))
    yield made
    made.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = require_program("chromium", "chromium")
    driver_path = require_program("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(dir=str(tmp_path_factory.mktemp("chromium-profile")))
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / "web-screenshots"
    folder.mkdir(exist_ok=True)

    def shot(browser: Any, name: str) -> None:
        browser.save_screenshot(str(folder / f"{name}.png"))
    return shot


def text_of(browser: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, css).text


def log_in(browser: Any, fleet: Fleet) -> None:
    from selenium.webdriver.common.by import By

    browser.get(fleet.console.url("/login"))
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait_for(lambda: "Log out" in browser.page_source, 10, what="the login to take")


def fail_for_good(fleet: Fleet, arg: Any) -> str:
    """Insert a Web::Flaky job while the switch is on; the handle it is kept under as failed."""
    open(fleet.switch, "w").close()
    queued = str(fleet.client.insert("Web::Flaky", arg))

    def kept() -> str | None:
        with fleet.store() as jobs:
            for job in jobs.list_failed(func="Web::Flaky", limit=100).items:
                if job.original_handle == queued:
                    return job.handle
        return None
    return wait_for(kept, 30, interval=0.1, what=f"job {queued} to be kept as failed")


# -- the tests -----------------------------------------------------------------------------------
def test_overview_shows_the_children(fleet, browser, shots):
    fleet.client.insert("Test::Noop", {"n": 1})
    fleet.daemon.wait_job_lines(1)
    pids = {child.pid for child in fleet.daemon.children()}

    def shown() -> set[int]:
        browser.get(fleet.console.url("/"))
        return {int(pid) for pid in re.findall(r'<tr class="child">\s*<td>\d+</td><td>(\d+)</td>',
                                                browser.page_source)}
    wait_for(lambda: shown() == pids, 15, interval=0.5, what=f"children {pids} on the overview")
    masters = [(text_of(browser, f"article.master:nth-of-type({n}) h3"),
                text_of(browser, f"article.master:nth-of-type({n}) .daemon")) for n in (1, 2)]
    assert masters[0] == (fleet.daemon.config_path, f"workermanager running as pid {fleet.daemon.pid}")
    assert masters[1][0] == fleet.other_config and "not running" in masters[1][1]
    wait_for(lambda: browser.get(fleet.console.url("/")) or "Test::Noop" in browser.page_source, 20,
             interval=1, what="the job log's figures")  # the log hour is cached 10 s
    assert "<svg" in browser.page_source
    shots(browser, "overview")
    browser.get(fleet.console.url("/sizing"))
    assert text_of(browser, "#current").startswith("2")
    shots(browser, "sizing")


def test_a_failed_job_is_retried_from_its_page_and_then_runs(fleet, browser, shots):
    from selenium.webdriver.common.by import By

    handle = fail_for_good(fleet, {"greeting": "<script>alert('x')</script><b>bold</b>"})
    browser.get(fleet.console.url("/failed"))
    assert handle in browser.page_source
    shots(browser, "failed-read-only-view")
    log_in(browser, fleet)
    browser.get(fleet.console.url(f"/job/{handle}"))
    arg = text_of(browser, "#arg")
    assert "<script>alert('x')</script><b>bold</b>" in arg  # shown as text...
    assert browser.find_elements(By.TAG_NAME, "script") == []  # ...never made HTML
    assert browser.find_elements(By.TAG_NAME, "b") == []
    assert "the switch file exists" in text_of(browser, "#errors")
    shots(browser, "failed-job")
    os.unlink(fleet.switch)
    browser.find_element(By.ID, "retry").click()
    wait_for(lambda: browser.find_elements(By.ID, "results"), 10, what="the retry's answer")
    assert "ok" in browser.find_element(By.CSS_SELECTOR, "#results li").get_attribute("class")
    shots(browser, "retried")
    new_handle = browser.find_element(By.CSS_SELECTOR, "#results a.new-handle").text
    fleet.daemon.wait_ledger(lambda rows: [new_handle, "ran"] in [[r.handle, r.what] for r in rows], 30,
                             what=f"retried job {new_handle} to run")
    with fleet.store() as jobs:
        assert handle not in [job.handle for job in jobs.list_failed(limit=100).items]


def test_failed_jobs_are_filtered_and_deleted_many_at_once(fleet, browser, shots):
    from selenium.webdriver.common.by import By

    chosen = [fail_for_good(fleet, {"batch": n}) for n in range(2)]
    log_in(browser, fleet)
    browser.get(fleet.console.url("/failed"))
    browser.find_element(By.NAME, "func").send_keys("Web::Flaky")
    browser.find_element(By.NAME, "text").send_keys("SWITCH FILE")  # any case
    browser.find_element(By.ID, "filter").click()
    wait_for(lambda: "text=SWITCH" in browser.current_url, 10, what="the filtered page")
    listed = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#failed tbody a")]
    assert set(chosen) <= set(listed)
    browser.get(fleet.console.url("/failed?text=no+such+error+text"))
    assert "No failed jobs kept that match" in text_of(browser, "#empty")
    browser.get(fleet.console.url("/failed?func=Web::Flaky"))
    for handle in chosen:
        browser.find_element(By.CSS_SELECTOR, f'input[name="handle"][value="{handle}"]').click()
    shots(browser, "failed-chosen")
    browser.find_element(By.ID, "delete-chosen").click()
    wait_for(lambda: browser.find_elements(By.ID, "results"), 10, what="the delete's answer")
    results = browser.find_elements(By.CSS_SELECTOR, "#results li")
    assert len(results) == 2 and all("ok" in li.get_attribute("class") for li in results)
    with fleet.store() as jobs:
        left = {job.handle for job in jobs.list_failed(limit=100).items}
    assert not set(chosen) & left


def test_queue_pages_through_and_bad_input_is_one_line(fleet, browser, shots):
    from selenium.webdriver.common.by import By

    later = [str(fleet.client.insert("Test::Noop", {"page": n}, run_after=4102444800)) for n in range(5)]
    browser.get(fleet.console.url("/queues"))
    assert "Test::Noop" in text_of(browser, "#queues")
    shots(browser, "queues")
    browser.get(fleet.console.url("/jobs?func=Test::Noop&state=scheduled"))
    first = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody a")]
    assert first == later[:PAGE_SIZE]
    shots(browser, "jobs")
    next_page = browser.find_element(By.ID, "next").get_attribute("href")
    with fleet.store() as jobs:  # the rest run or go before the next page is looked at
        jobs.delete(later[PAGE_SIZE:])
    browser.get(next_page)
    assert "past the end" in text_of(browser, "#empty")
    shots(browser, "past-the-end")

    for path, status, words in [
        ("/job/not-a-handle", 400, "bad job handle"),
        ("/job/" + later[0].split("-")[0] + "-99999999", 404, "not in the queue"),
        ("/job/" + "0" * 32 + "-1", 404, "no configured database"),
        ("/jobs?func=No::Such", 404, "unknown function 'No::Such'"),
        ("/jobs?func=Test::Noop&after=garbage", 400, "cursor"),
        ("/jobs?state=sleeping", 400, "state must be one of"),
    ]:
        browser.get(fleet.console.url(path))
        assert words in text_of(browser, "#problem"), path
        assert fetch(fleet.console.url(path))[0] == status, path
    shots(browser, "bad-input")


def test_args_of_invalid_utf8_and_megabytes_are_shown_bounded(fleet, browser, shots):
    junk = str(fleet.client.insert("Test::Noop", "placeholder", run_after=4102444800))
    huge = str(fleet.client.insert("Test::Noop", {"blob": "y" * 3_000_000}, run_after=4102444800))
    with sqlite3.connect(fleet.queue) as db:  # bytes a foreign client wrote: not UTF-8, not JSON
        db.execute("UPDATE job SET arg = ? WHERE jobid = ?", (b"\xff\xfe\x00<b>\x80", int(junk.rsplit("-", 1)[1])))
    browser.get(fleet.console.url(f"/job/{junk}"))
    assert "hex" in browser.page_source and "fffe" in text_of(browser, "#arg").replace(" ", "")
    shots(browser, "invalid-utf8-arg")
    status, body = fetch(fleet.console.url(f"/job/{huge}"))
    assert status == 200 and len(body) < 1_000_000  # cut, and says so
    browser.get(fleet.console.url(f"/job/{huge}"))
    assert "only the start shown" in browser.page_source
    shots(browser, "megabytes-arg")


def test_posts_without_the_token_or_the_csrf_token_are_refused(fleet):
    handle = fail_for_good(fleet, {"keep": "me"})
    form = {"action": "retry", "handle": handle}
    opener = cookie_opener()
    csrf = csrf_of(fetch(fleet.console.url("/login"), opener)[1])
    status, body = fetch(fleet.console.url("/act"), opener, dict(form, csrf_token=csrf))
    assert status == 403 and "log in with the console's token first" in body  # no token
    status, body = fetch(fleet.console.url("/login"), opener, {"token": "wrong" * 5, "csrf_token": csrf})
    assert status == 403 and "not the console's token" in body
    status, _ = fetch(fleet.console.url("/login"), opener, {"token": TOKEN})
    assert status == 403  # logging in needs the CSRF token too
    fetch(fleet.console.url("/login"), opener, {"token": TOKEN, "csrf_token": csrf})
    status, body = fetch(fleet.console.url("/act"), opener, form)
    assert status == 403 and "CSRF" in body  # logged in, but no CSRF token
    status, body = fetch(fleet.console.url("/act"), opener, dict(form, csrf_token="0" * 32))
    assert status == 403 and "CSRF" in body
    status, body = fetch(fleet.read_only.url("/act"),
                         cookie_opener(), dict(form, csrf_token=csrf))
    assert status == 403 and "read-only" in body
    with fleet.store() as jobs:
        assert jobs.show(handle).handle == handle  # still kept, not retried
    status, body = fetch(fleet.console.url("/"))
    headers = last_headers[0]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"


def test_a_copy_of_the_cookie_is_refused_after_logout(fleet):
    """The session cookie is signed, not secret-free: logout must end it on the server, so a
    copy taken before (a stolen cookie, another tab) is logged out too."""
    handle = fail_for_good(fleet, {"keep": "me too"})
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    fetch(fleet.console.url("/login"), opener, {"token": TOKEN, "csrf_token": csrf_of(fetch(
        fleet.console.url("/login"), opener)[1])})
    csrf = csrf_of(fetch(fleet.console.url("/failed"), opener)[1])
    assert "Log out" in fetch(fleet.console.url("/"), opener)[1]
    [copied] = [f"{cookie.name}={cookie.value}" for cookie in jar]
    fetch(fleet.console.url("/logout"), opener, {"csrf_token": csrf})
    replay = urllib.request.build_opener()
    replay.addheaders = [("Cookie", copied)]
    status, body = fetch(fleet.console.url("/act"), replay, {"action": "delete", "handle": handle,
                                                             "csrf_token": csrf})
    assert status == 403 and "log in with the console's token first" in body
    with fleet.store() as jobs:
        assert jobs.show(handle).handle == handle  # still kept, not deleted


# -- plain HTTP, for what a browser would not send ---------------------------------------------------
last_headers: list[Any] = [None]


def cookie_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def fetch(url: str, opener: urllib.request.OpenerDirector | None = None,
          form: dict[str, str] | None = None) -> tuple[int, str]:
    data = None if form is None else urllib.parse.urlencode(form).encode()
    try:
        with (opener or urllib.request.build_opener()).open(url, data, timeout=30) as answer:
            last_headers[0] = answer.headers
            return answer.status, html.unescape(answer.read().decode())
    except urllib.error.HTTPError as exc:
        last_headers[0] = exc.headers
        return exc.code, html.unescape(exc.read().decode())


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert match, "no CSRF token in the page"
    return match.group(1)
