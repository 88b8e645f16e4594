"""The `web:` key of the config, checked: where the console listens, its token, its limits.

A token is what turns the console from read-only into one that can retry and delete. It is
written in the config (`token:`) or in a file (`token_file:`, relative to the config's folder),
read as safefiles.open_regular reads (no link followed: the folder may be the service account's),
and refused when other users may read it.
Listening beyond loopback without a token is refused: anyone on the network would see the args.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from typing import Any

from workermanager import config as config_module
from workermanager import safefiles
from workermanager.config import Config, ConfigError

DEFAULT_LISTEN = "127.0.0.1:8470"
KEYS = ("listen", "token", "token_file", "page_size", "delay_target", "threads", "configs")
#: other masters' configs the overview shows at most
MAX_CONFIGS = 50
#: a shorter token is guessed too easily to guard retry and delete
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_BYTES = 4096
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_DELAY_TARGET = 1.0
DEFAULT_THREADS = 4
MAX_THREADS = 32


class WebConfigError(ValueError):
    """The `web:` key cannot be used; str() is the one line to show."""


@dataclasses.dataclass(frozen=True)
class WebSettings:
    host: str
    port: int
    #: None: the console is read-only
    token: str | None
    page_size: int
    #: seconds of queue delay the sizing page aims under
    delay_target: float
    threads: int
    #: other configs on this host whose masters the overview shows too (absolute paths)
    configs: tuple[str, ...] = ()

    @property
    def read_only(self) -> bool:
        return self.token is None


def load(config: Config) -> WebSettings:
    """WebSettings from `config.web`; WebConfigError names the file, the key and the problem."""
    raw: dict[str, Any] = dict(config.web or {})
    where = f"{config.path}: key 'web'"
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise WebConfigError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(KEYS)})")
    host, port = parse_listen(raw.get("listen", DEFAULT_LISTEN), where)
    token = _token(raw, config, where)
    if token is None and not is_loopback(host):
        raise WebConfigError(f"{where}: listen {host}:{port} is beyond loopback and no token is set: "
                             "set web.token or web.token_file, or listen on 127.0.0.1")
    return WebSettings(
        host=host, port=port, token=token,
        page_size=_number(raw, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE, where, whole=True),
        delay_target=_number(raw, "delay_target", DEFAULT_DELAY_TARGET, 0.001, 86400, where),
        threads=_number(raw, "threads", DEFAULT_THREADS, 1, MAX_THREADS, where, whole=True),
        configs=_configs(raw.get("configs", []), config, where),
    )


def _configs(value: Any, config: Config, where: str) -> tuple[str, ...]:
    """The other masters' config files, as absolute paths. Not read here: `load` runs before the
    console drops root, and these files are read only as the service account (check_configs)."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise WebConfigError(f"{where}: configs must be a list of config file paths (got {value!r})")
    if len(value) > MAX_CONFIGS:
        raise WebConfigError(f"{where}: configs lists {len(value)} files; at most {MAX_CONFIGS}")
    return tuple(os.path.normpath(os.path.join(config.base_dir, os.path.expanduser(v))) for v in value)


def check_configs(config: Config, settings: WebSettings) -> None:
    """Each of web.configs must load: called after the drop to the service account, so a file
    only root may read stays unread. WebConfigError names the first that does not."""
    for path in settings.configs:
        try:
            load_other_config(path)
        except ConfigError as exc:
            raise WebConfigError(f"{config.path}: key 'web': configs: {exc}") from None


def load_other_config(path: str) -> Config:
    """Another master's config (web.configs). Its file is read on another's behalf, so a
    ConfigError says only that it is missing, unreadable, or not a config: never a word of its
    content (a key, a YAML fragment), which could be a line of a file it links to."""
    try:
        return config_module.load(path)
    except ConfigError:
        pass
    try:
        os.close(os.open(path, os.O_RDONLY))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    raise ConfigError(f"{path}: not a workermanager config (its content is not shown)") from None


def parse_listen(listen: Any, where: str) -> tuple[str, int]:
    """(host, port) of "host:port" (IPv6 in brackets); a bare port means loopback."""
    if isinstance(listen, int) and not isinstance(listen, bool):
        listen = f"127.0.0.1:{listen}"
    if not isinstance(listen, str) or ":" not in listen:
        raise WebConfigError(f"{where}: listen must be \"host:port\", e.g. {DEFAULT_LISTEN} (got {listen!r})")
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise WebConfigError(f"{where}: listen {listen!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Only a loopback address or `localhost` counts; a name that might resolve elsewhere does not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token(raw: dict[str, Any], config: Config, where: str) -> str | None:
    if "token" in raw and "token_file" in raw:
        raise WebConfigError(f"{where}: set token or token_file, not both")
    if "token_file" in raw:
        name = raw["token_file"]
        if not isinstance(name, str) or not name:
            raise WebConfigError(f"{where}: token_file must be a file name (got {name!r})")
        token = read_token_file(os.path.join(config.base_dir, os.path.expanduser(name)), where)
    else:
        token = raw.get("token")
        if token is None:
            return None
        if not isinstance(token, str):
            raise WebConfigError(f"{where}: token must be a string (got {type(token).__name__})")
        _refuse_if_others_read(config.path, where)
        token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise WebConfigError(f"{where}: the token is {len(token)} characters; use at least "
                             f"{MIN_TOKEN_LENGTH} (e.g. `openssl rand -hex 24`)")
    return token


def _refuse_if_others_read(path: str, where: str) -> None:
    """A token written in the config is as secret as a token_file: refused in a config file
    that other users may read, as a token_file would be."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # a config made in memory (tests, from_mapping): no file to ask
    if mode & 0o004:
        raise WebConfigError(f"{where}: token is written in {path}, which other users may read (mode "
                             f"{mode & 0o777:04o}): chmod o-r it, or use token_file")


def read_token_file(path: str, where: str) -> str:
    """The token in `path`: its first line, stripped. No link followed, no FIFO or device opened."""
    try:
        fd = safefiles.open_regular(path, "web token file")
    except OSError as exc:
        raise WebConfigError(f"{where}: token_file {path}: {exc.strerror or exc}") from None
    if fd is None:
        raise WebConfigError(f"{where}: token_file {path} does not exist")
    try:
        mode = os.fstat(fd).st_mode
        if mode & 0o007:  # any local account could read the token and act with it
            raise WebConfigError(f"{where}: token_file {path} is open to other users (mode "
                                 f"{mode & 0o777:04o}): chmod o-rwx it")
        data = safefiles.read_at_most(fd, MAX_TOKEN_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_BYTES:
        raise WebConfigError(f"{where}: token_file {path} is larger than {MAX_TOKEN_BYTES} bytes")
    try:
        lines = data.decode("utf-8").strip().splitlines()
    except UnicodeDecodeError:
        raise WebConfigError(f"{where}: token_file {path} is not UTF-8 text") from None
    return lines[0].strip() if lines else ""


def _number(raw: dict[str, Any], key: str, default: float, low: float, high: float, where: str,
            whole: bool = False) -> Any:
    value = raw.get(key, default)
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise WebConfigError(f"{where}: {key} must be {kind} from {low:g} to {high:g} (got {value!r})")
    return value
