"""`workermanager web -f conf.yml`: the web console, a process of its own (see workermanager.web
and docs/web-console.md). It binds first, on the terminal (a port in use, or a listen beyond
loopback without a token, is one line and exit 1), then, started as root on a config with
`user:`, becomes that account before it reads anything, and serves until INT or TERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from workermanager.commands import fail
from workermanager.config import ConfigError

log = logging.getLogger("workermanager.web")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="workermanager web",
        description="Serve the web console of a config: overview, queues, failed jobs, sizing. "
                    "Read-only unless web.token or web.token_file is set (docs/web-console.md).")
    parser.add_argument("-f", "--config", required=True, metavar="conf_file", help="YAML config file")
    parser.add_argument("--listen", metavar="HOST:PORT", help="listen here instead of web.listen")
    options = parser.parse_args(argv)
    try:
        import flask  # noqa: F401
        import waitress  # noqa: F401
    except ImportError as exc:
        return fail(f"the web console needs {exc.name}: pip install 'workermanager[web]'")
    from workermanager import config as config_module
    from workermanager.daemon import daemonize
    from workermanager.web import settings as web_settings
    from workermanager.web.app import create_app
    from workermanager.web.server import create_server

    try:
        config = config_module.load(options.config)
        if options.listen:
            config = _with_listen(config, options.listen)
        settings = web_settings.load(config)
        daemonize.resolve_identity(config)
    except (ConfigError, web_settings.WebConfigError, OSError, ValueError) as exc:
        return fail(str(exc))
    app = create_app(config, settings)
    try:
        server = create_server(app, settings)
    except OSError as exc:
        return fail(f"{config.path}: key 'web': cannot listen on {settings.host}:{settings.port}: "
                    f"{exc.strerror or exc}")
    try:
        if daemonize.will_drop(config):
            load_everything(app, config)
        daemonize.drop_privileges(config)
    except OSError as exc:
        return fail(f"cannot become the service account of {config.path}: {exc.strerror or exc}")
    try:
        web_settings.check_configs(config, settings)  # as the service account: see load_other_config
    except web_settings.WebConfigError as exc:
        return fail(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s workermanager web: %(message)s", stream=sys.stderr)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" on every burst
    mode = "read-only" if settings.read_only else "retry and delete need the token"
    print(f"workermanager web: serving http://{_shown_host(settings.host)}:{settings.port}/ ({mode})",
          file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.close()
    return 0


def load_everything(app, config) -> None:  # noqa: ANN001 - a Flask app, a Config
    """Import and compile, as root, all the console will need: the account it becomes may not be
    able to read the Python installation root uses (one under /root), and Jinja2 compiles a
    template, and Python imports a codec or a driver, on first use. Nothing here opens the queue,
    the log or the status file."""
    import importlib

    from workermanager import asservice

    for module in ("workermanager.jobs", "workermanager.jobs.sqlstore", "workermanager.jobs.gearmanstore",
                   "workermanager.jobs.display", "workermanager.theschwartz.args",
                   "workermanager.theschwartz.storable", "workermanager.commands.status", "psutil",
                   "encodings.unicode_escape", "encodings.idna", "hmac", "json"):
        importlib.import_module(module)
    asservice.import_drivers(config)
    for name in app.jinja_env.list_templates():
        app.jinja_env.get_template(name)
    client = app.test_client()
    for path in ("/static/console.css", "/login", "/no-such-page"):
        client.get(path)


def _stop(signum: int, frame: object) -> None:
    """TERM ends the serving loop as INT does."""
    raise SystemExit(0)


def _with_listen(config, listen: str):  # noqa: ANN001, ANN202 - Config in, Config out
    import dataclasses

    return dataclasses.replace(config, web={**config.web, "listen": listen})


def _shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
