"""The console's pages, as a Flask app: read-only unless the config sets a token.

Every page reads through one short unit of work (a status file read, a job store call, the
cached job-log hour) and renders a Jinja2 template with autoescape on: an arg, a funcname or an
error message is always shown as text, never as HTML. Actions (retry, delete) are POSTs that need
the session to have logged in with the token (a live id of web.sessions) and the form to carry the
session's CSRF token.
"""

from __future__ import annotations

import dataclasses
import datetime
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException

from workermanager import config as config_module
from workermanager.config import Config
from workermanager.web import charts, jobstats, sizing
from workermanager.web.sessions import SESSION_SECONDS, LiveSessions
from workermanager.web.settings import MAX_PAGE_SIZE, WebSettings, load_other_config

#: the largest form a browser sends here (a page of handles); more is refused with 413
MAX_FORM_BYTES = 256 * 1024
#: everything the page loads comes from here; no script at all, no framing
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
#: how long the queue counts are reused (StatsCache)
STATS_SECONDS = 5.0
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Problem(Exception):
    """A request that cannot be answered as asked: `status` and one line for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def format_count(value: int | None) -> str:
    """A queue count: "?" when unknown, "more than 100,000" past COUNT_CAP (counting stops there)."""
    from workermanager.jobs.records import COUNT_CAP

    if value is None:
        return "?"
    return f"more than {COUNT_CAP:,}" if value > COUNT_CAP else str(value)


def create_app(config: Config, settings: WebSettings) -> Flask:
    """The console for `config`; its job store (workermanager.jobs.open_store) is opened and
    closed once per request that reads the queue."""
    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)  # sessions last as long as this process
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_FORM_BYTES,
        MAX_FORM_PARTS=MAX_PAGE_SIZE + 16,
        SESSION_COOKIE_NAME="workermanager_web",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=SESSION_SECONDS),
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.jinja_env.autoescape = True  # every template, whatever its name
    log_hour = jobstats.LogHourCache(config.logfile)
    stats_cache = StatsCache()
    live_sessions = LiveSessions()

    def logged_in() -> bool:
        return live_sessions.is_live(session.get("sid"))

    # -- every response ---------------------------------------------------------------------
    @app.after_request
    def secure(response):  # noqa: ANN001, ANN202 - Flask's hook
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.context_processor
    def common() -> dict[str, Any]:
        return {"read_only": settings.read_only, "logged_in": logged_in(),
                "csrf_token": csrf_token(), "config_path": config.path, "backend": config.type}

    def csrf_token() -> str:
        token = session.get("csrf")
        if not isinstance(token, str):
            token = session["csrf"] = secrets.token_hex(16)
        return token

    def check_post(needs_login: bool = True) -> None:
        """Refuse a POST: read-only console, missing or wrong CSRF token, not logged in."""
        if settings.read_only:
            raise Problem(403, "this console is read-only: set web.token or web.token_file in the config")
        sent = request.form.get("csrf_token", "")
        expected = session.get("csrf")
        if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
            raise Problem(403, "missing or wrong CSRF token: reload the page and try again")
        if needs_login and not logged_in():
            raise Problem(403, "log in with the console's token first")

    @app.errorhandler(Problem)
    def problem(exc: Problem):  # noqa: ANN202
        return render_template("error.html", status=exc.status, message=exc.message), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # noqa: ANN202
        return render_template("error.html", status=exc.code, message=exc.description), exc.code

    def jobs_call(work: Callable[[Any], Any]) -> Any:
        """`work(store)` with the store's errors turned into pages: 400 for a malformed handle or
        cursor, a bad state, 404 for an unknown job, 503 when the queue cannot be read."""
        from workermanager.jobs import (
            BadCursor,
            BadHandle,
            JobsError,
            NotSupported,
            StoreUnavailable,
            UnknownJob,
            open_store,
        )

        try:
            jobs = open_store(config)
        except ValueError as exc:  # a bad queue option in the config: not the request's fault
            raise Problem(500, str(exc)) from None
        try:
            with jobs:
                return work(jobs)
        except (BadHandle, BadCursor) as exc:
            raise Problem(400, str(exc)) from None
        except UnknownJob as exc:
            raise Problem(404, str(exc)) from None
        except NotSupported as exc:
            raise Problem(501, str(exc)) from None
        except (StoreUnavailable, JobsError) as exc:
            raise Problem(503, str(exc)) from None
        except ValueError as exc:  # a bad state or limit in the query string
            raise Problem(400, str(exc)) from None

    # -- pages -------------------------------------------------------------------------------
    @app.get("/")
    def overview():  # noqa: ANN202
        masters = [master_status(config)]
        for path in settings.configs:  # other masters on this host (web.configs)
            try:
                masters.append(master_status(load_other_config(path)))
            except config_module.ConfigError as exc:
                masters.append(MasterStatus(path, str(exc), None))
        hour = log_hour.get()
        function_charts = [
            (h, [charts.line_chart("jobs/s", "/s", h.jobs_per_second),
                 charts.line_chart("failures/s", "/s", h.failures_per_second),
                 charts.line_chart("queue delay p95", "ms", h.delay_p95_ms),
                 charts.line_chart("process time p95", "ms", h.process_p95_ms)])
            for h in hour.functions]
        return render_template("overview.html", masters=masters, hour=hour,
                               function_charts=function_charts, now=time.time())

    @app.get("/queues")
    def queues():  # noqa: ANN202
        stats = jobs_call(stats_cache.get)
        return render_template("queues.html", stats=stats, now=time.time())

    @app.get("/jobs")
    def job_list():  # noqa: ANN202
        func = request.args.get("func") or None
        state = request.args.get("state") or None
        after = request.args.get("after") or None

        def read(jobs: Any) -> Any:
            if not jobs.can_list_queued:
                raise Problem(501, f"{jobs.backend} job servers cannot list their queued jobs")
            page = jobs.list_jobs(func=func, state=state, limit=settings.page_size, after=after)
            # only an empty first page asks whether the function exists: stats() counts every row
            if not page.items and after is None and func is not None and \
                    func not in {s.funcname for s in stats_cache.get(jobs)}:
                raise Problem(404, f"unknown function {func!r}: no job of it is queued or kept as failed")
            return page

        page = jobs_call(read)
        return render_template("jobs.html", page=page, func=func, state=state, after=after, now=time.time())

    @app.get("/job/<handle>")
    def job(handle: str):  # noqa: ANN202
        from workermanager.jobs.display import view_arg

        found = jobs_call(lambda jobs: jobs.show(handle))
        return render_template("job.html", job=found, arg=view_arg(found.arg), now=time.time(),
                               is_failed=handle_is_failed(found))

    @app.get("/failed")
    def failed():  # noqa: ANN202
        func = request.args.get("func") or None
        text = request.args.get("text") or None
        after = request.args.get("after") or None
        page = jobs_call(lambda jobs: jobs.list_failed(func=func, text=text, limit=settings.page_size,
                                                       after=after))
        return render_template("failed.html", page=page, func=func, text=text, after=after, now=time.time())

    @app.post("/act")
    def act():  # noqa: ANN202
        """Retry or delete the handles the form names (one job's page, or a failed-jobs page)."""
        check_post()
        action = request.form.get("action")
        handles = request.form.getlist("handle")
        if action not in ("retry", "delete"):
            raise Problem(400, f"unknown action {action!r}: retry or delete")
        if not handles:
            raise Problem(400, "no job chosen: tick at least one")
        if len(handles) > MAX_PAGE_SIZE:
            raise Problem(400, f"at most {MAX_PAGE_SIZE} jobs at once")
        results = jobs_call(lambda jobs: getattr(jobs, action)(handles))
        return render_template("done.html", action=action, results=results)

    @app.get("/sizing")
    def sizing_page():  # noqa: ANN202
        state = master_status(config).state
        current = state["concurrency"] if state else config.concurrency
        hour = log_hour.get()
        plan = sizing.size(hour.functions, settings.delay_target, current)
        return render_template("sizing.html", plan=plan, hour=hour, running=state is not None, inf=math.inf)

    # -- the token ---------------------------------------------------------------------------
    @app.get("/login")
    def login_form():  # noqa: ANN202
        if settings.read_only:
            raise Problem(403, "this console is read-only: set web.token or web.token_file in the config")
        return render_template("login.html", wrong=False)

    @app.post("/login")
    def login():  # noqa: ANN202
        check_post(needs_login=False)
        sent = request.form.get("token", "")
        assert settings.token is not None
        if not hmac.compare_digest(sent.encode(), settings.token.encode()):
            return render_template("login.html", wrong=True), 403
        live_sessions.end(session.get("sid"))
        session.clear()
        session.permanent = True  # the cookie expires with the login (SESSION_SECONDS)
        session["sid"] = live_sessions.start()
        session["csrf"] = secrets.token_hex(16)  # a new one once logged in
        return redirect(url_for("overview"))

    @app.post("/logout")
    def logout():  # noqa: ANN202
        check_post(needs_login=False)
        live_sessions.end(session.get("sid"))  # a copy of the cookie is logged out too
        session.clear()
        return redirect(url_for("overview"))

    # -- template helpers ---------------------------------------------------------------------
    app.jinja_env.filters["age"] = format_age
    app.jinja_env.filters["when"] = format_time
    app.jinja_env.filters["number"] = charts.number
    app.jinja_env.filters["queue_count"] = format_count
    return app


@dataclasses.dataclass(frozen=True)
class MasterStatus:
    """One master for the overview: its config, the status line, its state (None: not running)."""

    config_path: str
    message: str
    state: dict[str, Any] | None


def master_status(config: Config) -> MasterStatus:
    """What `workermanager status` says of the daemon of `config` (the queue left out)."""
    from workermanager.commands.status import StatusFileError, daemon_status

    try:
        _, message, state = daemon_status(config)
    except StatusFileError as exc:
        return MasterStatus(config.path, str(exc), None)
    return MasterStatus(config.path, message, state)


class StatsCache:
    """The store's per-function counts, kept STATS_SECONDS: they count every row of the queue
    (a second per million jobs on SQLite), so a burst of page views counts once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -STATS_SECONDS
        self._value: list[Any] = []

    def get(self, jobs: Any) -> list[Any]:
        with self._lock:
            if time.monotonic() - self._at >= STATS_SECONDS:
                self._value, self._at = jobs.stats(), time.monotonic()
            return self._value


def handle_is_failed(job: Any) -> bool:
    return "-failed-" in str(job.handle)


def format_age(seconds: float | None) -> str:
    from workermanager.commands.status import format_duration

    return format_duration(seconds)


def format_time(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))

