"""The configuration: loading, merging and validating it.

One job: turn a JSON config file, the command-line overrides and the
environment into one immutable, validated `Config`, or raise a `ConfigError`
whose text is a single line naming the field and the rule that was broken.
It also holds `CLI_OPTIONS`, the table the command line is built from, so
every config field has exactly one option. No reactor, no Twisted.

Precedence, highest first: command line, config file, ``$PORT`` (only for
``presence.rendezvous_port``), defaults. Relative paths written in the file
are relative to the file's folder; relative paths from the command line or
the defaults are relative to the working directory. Stored paths are
absolute (an empty path stays empty).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from goop.message import MAX_CONTENT_BYTES, MAX_EMAIL_BYTES

DEFAULT_CONFIG_NAME: Final = "goop.json"

MAX_PORT: Final = 65535
# Not fixed by the brief: a TTL or heartbeat longer than a day is a typo, and
# an unbounded integer would overflow the reactor's float timers.
MAX_SECONDS: Final = 86400
# Not fixed by the brief: the limits are counts; 0 means unlimited.
MAX_LIMIT: Final = 2**31 - 1
# DNS-SD service names are at most 15 characters (RFC 6335 section 5.1).
MAX_MDNS_TAG: Final = 15


class ConfigError(ValueError):
    """The configuration is unusable; str() is one line naming field and rule."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    key_file: str = "data/identity.key"


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    label: str = "hello"
    email: str = ""


@dataclass(frozen=True, slots=True)
class P2PConfig:
    listen_port: int = 0
    mdns_tag: str = "goop-mdns"
    enabled: bool = True
    mdns_enabled: bool = True
    mdns_interfaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PresenceConfig:
    topic: str = "goop.presence.v1"
    ttl_seconds: int = 20
    heartbeat_seconds: int = 5
    rendezvous_host: bool = False
    rendezvous_port: int = 8787
    rendezvous_bind: str = "127.0.0.1"
    rendezvous_wan: str = ""
    rendezvous_only: bool = False
    admin_password: str = ""
    peer_db_path: str = ""
    publish_rate_limit: int = 1200
    max_subscribers: int = 10000
    max_subscribers_per_ip: int = 64
    max_websockets: int = 20000
    max_websockets_per_ip: int = 256
    max_peers: int = 50000
    max_peers_per_ip: int = 256
    max_table_mb: int = 64
    max_connections_per_ip: int = 512
    request_timeout: int = 10
    idle_timeout: int = 60
    ipv6_prefix: int = 64
    rendezvous_tls_dir: str = ""
    rendezvous_redirect_port: int = 0
    rendezvous_ca_file: str = ""
    trusted_proxies: tuple[str, ...] = ()
    require_signed: bool = False
    signature_window: int = 120
    metrics_port: int = 0
    metrics_bind: str = "127.0.0.1"
    redis_url: str = ""


@dataclass(frozen=True, slots=True)
class ViewerConfig:
    http_addr: str = "127.0.0.1:8788"

    @property
    def viewer_host(self) -> str:
        """Host part of `http_addr`, IPv6 without brackets; "" = all interfaces."""
        return _split_host_port("viewer.http_addr", self.http_addr)[0]

    @property
    def viewer_port(self) -> int:
        """Port part of `http_addr`."""
        return _split_host_port("viewer.http_addr", self.http_addr)[1]


@dataclass(frozen=True, slots=True)
class Config:
    identity: IdentityConfig = IdentityConfig()
    profile: ProfileConfig = ProfileConfig()
    p2p: P2PConfig = P2PConfig()
    presence: PresenceConfig = PresenceConfig()
    viewer: ViewerConfig = ViewerConfig()
    # Absolute path of the config file used; "" when none was.
    source: str = ""

    def to_json_dict(self) -> dict[str, dict[str, Any]]:
        """The config in the config-file format (tuples as lists), without `source`."""
        out: dict[str, dict[str, Any]] = {}
        for section in _SECTIONS:
            part = getattr(self, section)
            out[section] = {
                f.name: list(value) if isinstance(value, tuple) else value
                for f in dataclasses.fields(part)
                for value in (getattr(part, f.name),)
            }
        return out


# --- the field table -------------------------------------------------------

_Kind = Literal["str", "int", "bool", "list"]
_Origin = Literal["default", "env", "file", "cli"]

_SECTIONS: Final[dict[str, type[Any]]] = {
    "identity": IdentityConfig,
    "profile": ProfileConfig,
    "p2p": P2PConfig,
    "presence": PresenceConfig,
    "viewer": ViewerConfig,
}


def _kind_of(default: object) -> _Kind:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, tuple):
        return "list"
    return "str"


# dotted field name -> (kind, default), in declaration order
_FIELDS: Final[dict[str, tuple[_Kind, object]]] = {
    f"{section}.{f.name}": (_kind_of(f.default), f.default)
    for section, cls in _SECTIONS.items()
    for f in dataclasses.fields(cls)
}

_PATH_FIELDS: Final = frozenset(
    {
        "identity.key_file",
        "presence.peer_db_path",
        "presence.rendezvous_tls_dir",
        "presence.rendezvous_ca_file",
    }
)
# SQLite's name for an in-memory database is not a path.
_NOT_PATHS: Final = frozenset({":memory:"})

_CLI_ORIGIN: Final[Mapping[str, _Origin]] = dict.fromkeys(_FIELDS, "cli")
_RANK: Final[dict[_Origin, int]] = {"default": 0, "env": 0, "file": 1, "cli": 2}


# --- the command line --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CliOption:
    name: str  # option name without dashes, e.g. "rendezvous-port"
    field: str  # dotted field, e.g. "presence.rendezvous_port"
    flag: bool  # True for boolean options given without a value
    help: str

    @property
    def flag_value(self) -> str:
        """For a flag, the override value it sets: the field's non-default value."""
        return "false" if _FIELDS[self.field][1] else "true"


CLI_OPTIONS: Final[tuple[CliOption, ...]] = (
    CliOption("key-file", "identity.key_file", False, "Peer identity key file."),
    CliOption("label", "profile.label", False, "Name this peer shows to others."),
    CliOption("email", "profile.email", False, "Email address this peer shows to others."),
    CliOption("listen-port", "p2p.listen_port", False, "libp2p TCP port (0 = random)."),
    CliOption("mdns-tag", "p2p.mdns_tag", False, "mDNS discovery tag (1-15 letters/digits/-)."),
    CliOption(
        "mdns-interfaces",
        "p2p.mdns_interfaces",
        False,
        "Comma-separated IPv4 addresses mDNS may use (empty = all).",
    ),
    CliOption("no-p2p", "p2p.enabled", True, "Run without libp2p (rendezvous presence only)."),
    CliOption("no-mdns", "p2p.mdns_enabled", True, "Turn mDNS discovery off."),
    CliOption("topic", "presence.topic", False, "GossipSub topic for LAN presence."),
    CliOption(
        "ttl-seconds", "presence.ttl_seconds", False, "Seconds before a peer counts as offline."
    ),
    CliOption(
        "heartbeat-seconds", "presence.heartbeat_seconds", False, "Seconds between heartbeats."
    ),
    CliOption("rendezvous-host", "presence.rendezvous_host", True, "Run a rendezvous server."),
    CliOption(
        "rendezvous-port",
        "presence.rendezvous_port",
        False,
        "Rendezvous server port (default 8787, or $PORT when set).",
    ),
    CliOption(
        "rendezvous-bind",
        "presence.rendezvous_bind",
        False,
        "Rendezvous bind address (IP address or localhost; 0.0.0.0 for LAN/WAN).",
    ),
    CliOption("rendezvous-wan", "presence.rendezvous_wan", False, "WAN rendezvous URL to join."),
    CliOption(
        "rendezvous-only",
        "presence.rendezvous_only",
        True,
        "Run only a rendezvous server: no P2P, no mDNS.",
    ),
    CliOption("admin-password", "presence.admin_password", False, "Password for the /admin page."),
    CliOption(
        "peer-db-path",
        "presence.peer_db_path",
        False,
        "SQLite file shared by rendezvous instances (empty = in memory).",
    ),
    CliOption(
        "redis-url",
        "presence.redis_url",
        False,
        "Redis shared by rendezvous instances on many hosts, redis://[:password@]host:port/db "
        "or rediss:// (default $GOOP_REDIS_URL; empty = none).",
    ),
    CliOption(
        "publish-rate-limit",
        "presence.publish_rate_limit",
        False,
        "Publishes per minute per client address (0 = unlimited).",
    ),
    CliOption(
        "max-subscribers",
        "presence.max_subscribers",
        False,
        "Most SSE subscribers in total (0 = unlimited).",
    ),
    CliOption(
        "max-subscribers-per-ip",
        "presence.max_subscribers_per_ip",
        False,
        "Most SSE subscribers per client address (0 = unlimited).",
    ),
    CliOption(
        "max-websockets",
        "presence.max_websockets",
        False,
        "Most /ws sockets in total (0 = unlimited).",
    ),
    CliOption(
        "max-websockets-per-ip",
        "presence.max_websockets_per_ip",
        False,
        "Most /ws sockets per client address (0 = unlimited).",
    ),
    CliOption(
        "max-peers", "presence.max_peers", False, "Most peers online at once (0 = unlimited)."
    ),
    CliOption(
        "max-peers-per-ip",
        "presence.max_peers_per_ip",
        False,
        "Most peers one client address may register (0 = unlimited).",
    ),
    CliOption(
        "max-table-mb",
        "presence.max_table_mb",
        False,
        "Most megabytes of peer state (encoded messages) held at once (0 = unlimited).",
    ),
    CliOption(
        "require-signed",
        "presence.require_signed",
        True,
        "Refuse unsigned presence messages (goop2 peers do not sign; default off).",
    ),
    CliOption(
        "signature-window",
        "presence.signature_window",
        False,
        "Seconds a signed message's ts may differ from the server's clock (default 120).",
    ),
    CliOption(
        "metrics-port",
        "presence.metrics_port",
        False,
        "Serve /metrics, without a password, on this port too (0 = off).",
    ),
    CliOption(
        "metrics-bind",
        "presence.metrics_bind",
        False,
        "Address of the metrics port (default 127.0.0.1).",
    ),
    CliOption(
        "max-connections-per-ip",
        "presence.max_connections_per_ip",
        False,
        "Most open TCP connections per client address (0 = unlimited).",
    ),
    CliOption(
        "request-timeout",
        "presence.request_timeout",
        False,
        "Seconds a client has to send a whole request once it starts one.",
    ),
    CliOption(
        "idle-timeout",
        "presence.idle_timeout",
        False,
        "Seconds a keep-alive connection may sit idle between requests.",
    ),
    CliOption(
        "ipv6-prefix",
        "presence.ipv6_prefix",
        False,
        "Per-address limits count IPv6 clients by this prefix length (default 64).",
    ),
    CliOption(
        "rendezvous-tls-dir",
        "presence.rendezvous_tls_dir",
        False,
        "Serve HTTPS with SNI from this directory of <hostname>.pem files.",
    ),
    CliOption(
        "rendezvous-redirect-port",
        "presence.rendezvous_redirect_port",
        False,
        "With TLS: also listen on this port with plain HTTP that redirects to HTTPS (0 = off).",
    ),
    CliOption(
        "rendezvous-ca-file",
        "presence.rendezvous_ca_file",
        False,
        "Extra CA bundle trusted for an https:// WAN rendezvous.",
    ),
    CliOption(
        "trusted-proxies",
        "presence.trusted_proxies",
        False,
        "Comma-separated addresses/networks whose X-Forwarded-For is believed.",
    ),
    CliOption("http-addr", "viewer.http_addr", False, "Local viewer address, HOST:PORT."),
)

_OPTION_FOR_FIELD: Final[dict[str, CliOption]] = {o.field: o for o in CLI_OPTIONS}


def overrides_from_cli(values: Mapping[str, object]) -> dict[str, str]:
    """Dotted overrides from a twisted-usage-style option dict.

    ``values`` maps option names to their values: None when a parameter was
    not given, 0/1 (or False/True) for flags. Only options actually given
    appear in the result; keys that are not options are ignored.
    """
    result: dict[str, str] = {}
    for option in CLI_OPTIONS:
        value = values.get(option.name)
        if option.flag:
            if value:
                result[option.field] = option.flag_value
        elif value is not None:
            result[option.field] = value if isinstance(value, str) else str(value)
    return result


# --- loading -----------------------------------------------------------------


def load_config(
    path: str | None,
    overrides: Mapping[str, str],
    environ: Mapping[str, str],
    cwd: str,
) -> Config:
    """Build the validated `Config`; raise `ConfigError` for anything wrong.

    ``path`` is the ``--config`` file (relative to ``cwd``); None means
    ``<cwd>/goop.json`` when that exists, else defaults only. ``overrides``
    maps dotted field names to option text as typed. ``environ`` supplies
    ``PORT``.
    """
    cwd = os.path.abspath(cwd)
    source = _find_file(path, cwd)

    values: dict[str, object] = {name: default for name, (_, default) in _FIELDS.items()}
    origin: dict[str, _Origin] = dict.fromkeys(_FIELDS, "default")
    if source:
        for name, value in _read_file(source).items():
            values[name] = value
            origin[name] = "file"
    for name, text in overrides.items():
        values[name] = _parse_override(name, text)
        origin[name] = "cli"

    if origin["presence.rendezvous_port"] == "default":
        port = _port_from_env(environ)
        if port is not None:
            values["presence.rendezvous_port"] = port
            origin["presence.rendezvous_port"] = "env"

    if origin["presence.redis_url"] == "default" and environ.get("GOOP_REDIS_URL", "").strip():
        values["presence.redis_url"] = environ["GOOP_REDIS_URL"].strip()
        origin["presence.redis_url"] = "env"

    _imply_rendezvous_host(values, origin)

    for name in _PATH_FIELDS:
        given = values[name]
        assert isinstance(given, str)
        _check_path(_label(name, origin), given)
        if given and given not in _NOT_PATHS:
            base = os.path.dirname(source) if origin[name] == "file" else cwd
            values[name] = os.path.normpath(os.path.join(base, given))

    _validate(values, origin)

    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        kwargs = {f.name: values[f"{section}.{f.name}"] for f in dataclasses.fields(cls)}
        sections[section] = cls(**kwargs)
    return Config(**sections, source=source)


def _find_file(path: str | None, cwd: str) -> str:
    if path is None:
        implicit = os.path.join(cwd, DEFAULT_CONFIG_NAME)
        return implicit if os.path.exists(implicit) else ""
    if path == "":
        raise ConfigError("config: the config file path is empty")
    return os.path.normpath(os.path.join(cwd, path))


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _read_file(source: str) -> dict[str, object]:
    """Parse and type-check the file; dotted field name -> value (paths unresolved)."""
    where = f"config {_show_path(source)}"
    try:
        with open(source, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read ({e.strerror or e})") from None
    try:
        # utf-8-sig: a byte-order mark some editors write is tolerated.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_pairs_hook)
    except _Duplicate as d:
        raise ConfigError(f"{where}: duplicate key {_show(d.key)}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:
        raise ConfigError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: must be a JSON object, got {_json_type(obj)}")

    out: dict[str, object] = {}
    for section, body in obj.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"{_show_key(section)}: unknown section{_suggest(section, list(_SECTIONS))}"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: must be an object, got {_json_type(body)}")
        known = [name.split(".", 1)[1] for name in _FIELDS if name.startswith(section + ".")]
        for key, value in body.items():
            name = f"{section}.{key}"
            if name not in _FIELDS:
                raise ConfigError(
                    f"{section}.{_show_key(key)}: unknown field{_suggest(key, known)}"
                )
            out[name] = _check_json_type(name, value)
    return out


def _check_json_type(name: str, value: object) -> object:
    kind = _FIELDS[name][0]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: must be an integer, got {_json_type(value)}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: must be true or false, got {_json_type(value)}")
    elif kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name}: must be a string, got {_json_type(value)}")
    else:
        if not isinstance(value, list):
            raise ConfigError(f"{name}: must be a list of strings, got {_json_type(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{name}[{i}]: must be a string, got {_json_type(item)}")
        return tuple(value)
    return value


_BOOL_WORDS: Final = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


def _parse_override(name: str, text: str) -> object:
    if name not in _FIELDS:
        raise ConfigError(f"{_show_key(name)}: unknown field{_suggest(name, list(_FIELDS))}")
    kind = _FIELDS[name][0]
    label = _label(name, _CLI_ORIGIN)
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{label}: must be an integer, got {_show(text)}") from None
    if kind == "bool":
        word = _BOOL_WORDS.get(text.strip().lower())
        if word is None:
            raise ConfigError(
                f"{label}: must be true/false, yes/no, on/off or 1/0, got {_show(text)}"
            )
        return word
    if kind == "list":
        # Items are trimmed; empty items (a trailing comma) are dropped.
        return tuple(item.strip() for item in text.split(",") if item.strip())
    return text


def _port_from_env(environ: Mapping[str, str]) -> int | None:
    text = environ.get("PORT")
    # An empty PORT counts as unset, as the shell's `PORT= cmd` intends.
    if text is None or text.strip() == "":
        return None
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= MAX_PORT:
        raise ConfigError(f"PORT: must be an integer port 0-{MAX_PORT}, got {_show(text)}")
    return port


def _imply_rendezvous_host(values: dict[str, object], origin: dict[str, _Origin]) -> None:
    only, host = "presence.rendezvous_only", "presence.rendezvous_host"
    if values[only] is not True:
        return
    # An explicit false only conflicts when it is said at least as loudly as
    # rendezvous_only: `--rendezvous-only` beats a file's "rendezvous_host": false.
    if (
        values[host] is False
        and origin[host] != "default"
        and _RANK[origin[host]] >= _RANK[origin[only]]
    ):
        raise ConfigError(
            f"{_label(only, origin)}: needs a rendezvous, but {_label(host, origin)} is false"
        )
    values[host] = True


# --- validation --------------------------------------------------------------


def _validate(values: dict[str, object], origin: Mapping[str, _Origin]) -> None:
    """Raise on the first broken rule; normalises presence.rendezvous_wan in place."""

    def label(name: str) -> str:
        return _label(name, origin)

    def text(name: str) -> str:
        value = values[name]
        assert isinstance(value, str)
        return value

    def number(name: str) -> int:
        value = values[name]
        assert isinstance(value, int)
        return value

    def items(name: str) -> tuple[str, ...]:
        value = values[name]
        assert isinstance(value, tuple)
        return value

    for name, (kind, _) in _FIELDS.items():
        if name in _PATH_FIELDS:
            continue
        if kind == "str":
            _check_text(label(name), text(name))
        elif kind == "list":
            for item in items(name):
                _check_text(label(name), item)

    if len(text("profile.label").encode("utf-8")) > MAX_CONTENT_BYTES:
        raise ConfigError(f"{label('profile.label')}: longer than {MAX_CONTENT_BYTES} bytes")
    if len(text("profile.email").encode("utf-8")) > MAX_EMAIL_BYTES:
        raise ConfigError(f"{label('profile.email')}: longer than {MAX_EMAIL_BYTES} bytes")

    _check_range(label("p2p.listen_port"), number("p2p.listen_port"), 0, MAX_PORT)
    _check_mdns_tag(label("p2p.mdns_tag"), text("p2p.mdns_tag"))
    for item in items("p2p.mdns_interfaces"):
        try:
            ipaddress.IPv4Address(item)
        except ValueError:
            raise ConfigError(
                f"{label('p2p.mdns_interfaces')}: {_show(item)} is not an IPv4 address"
            ) from None

    if text("presence.topic") == "":
        raise ConfigError(f"{label('presence.topic')}: must not be empty")
    ttl, heartbeat = number("presence.ttl_seconds"), number("presence.heartbeat_seconds")
    _check_range(label("presence.ttl_seconds"), ttl, 1, MAX_SECONDS)
    _check_range(label("presence.heartbeat_seconds"), heartbeat, 1, MAX_SECONDS)
    if heartbeat >= ttl:
        raise ConfigError(
            f"{label('presence.heartbeat_seconds')}: must be < ttl_seconds "
            f"(got {heartbeat} >= {ttl})"
        )
    _check_range(label("presence.rendezvous_port"), number("presence.rendezvous_port"), 0, MAX_PORT)
    bind = text("presence.rendezvous_bind")
    if not _is_ip_or_localhost(bind):
        raise ConfigError(
            f'{label("presence.rendezvous_bind")}: must be an IP address or "localhost" '
            f"(not a host name), got {_show(bind)}"
        )
    _check_range(label("presence.metrics_port"), number("presence.metrics_port"), 0, MAX_PORT,
                 " (0 = off)")
    metrics_bind = text("presence.metrics_bind")
    if not _is_ip_or_localhost(metrics_bind):
        raise ConfigError(
            f'{label("presence.metrics_bind")}: must be an IP address or "localhost" '
            f"(not a host name), got {_show(metrics_bind)}"
        )
    redis_url = text("presence.redis_url")
    if redis_url:
        _check_redis_url(label("presence.redis_url"), redis_url)
        if text("presence.peer_db_path"):
            raise ConfigError(
                f"{label('presence.redis_url')}: set either it or presence.peer_db_path "
                "(one shared store), not both"
            )
    values["presence.rendezvous_wan"] = _check_wan(
        label("presence.rendezvous_wan"), text("presence.rendezvous_wan")
    )
    for name in (
        "presence.publish_rate_limit",
        "presence.max_subscribers",
        "presence.max_subscribers_per_ip",
        "presence.max_websockets",
        "presence.max_websockets_per_ip",
        "presence.max_peers",
        "presence.max_peers_per_ip",
        "presence.max_table_mb",
        "presence.max_connections_per_ip",
    ):
        _check_range(label(name), number(name), 0, MAX_LIMIT, " (0 = unlimited)")
    for name in ("presence.request_timeout", "presence.idle_timeout", "presence.signature_window"):
        _check_range(label(name), number(name), 1, 3600, " seconds")
    _check_range(label("presence.ipv6_prefix"), number("presence.ipv6_prefix"), 1, 128)

    tls_dir = text("presence.rendezvous_tls_dir")
    if tls_dir and not (os.path.isdir(tls_dir) and _access(tls_dir, os.R_OK | os.X_OK)):
        raise ConfigError(
            f"{label('presence.rendezvous_tls_dir')}: {_show_path(tls_dir)}: "
            "not a readable directory"
        )
    redirect = number("presence.rendezvous_redirect_port")
    _check_range(label("presence.rendezvous_redirect_port"), redirect, 0, MAX_PORT, " (0 = off)")
    if redirect and not tls_dir:
        raise ConfigError(
            f"{label('presence.rendezvous_redirect_port')}: needs presence.rendezvous_tls_dir "
            "(it redirects plain HTTP to HTTPS)"
        )
    ca_file = text("presence.rendezvous_ca_file")
    if ca_file and not (os.path.isfile(ca_file) and _access(ca_file, os.R_OK)):
        raise ConfigError(
            f"{label('presence.rendezvous_ca_file')}: {_show_path(ca_file)}: not a readable file"
        )
    for item in items("presence.trusted_proxies"):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"{label('presence.trusted_proxies')}: {_show(item)} is not an IP address "
                "or CIDR network"
            ) from None

    _split_host_port(label("viewer.http_addr"), text("viewer.http_addr"))


def _check_redis_url(label: str, url: str) -> None:
    """redis://[[user]:password@]host[:port][/db] or rediss://, nothing else."""
    from urllib.parse import urlsplit

    shape = "redis://[:password@]host:port/db or rediss://..."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{label}: not a URL ({e}); want {shape}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"{label}: scheme must be redis or rediss, got {_show(parts.scheme)}")
    if not parts.hostname:
        raise ConfigError(f"{label}: no host; want {shape}")
    if port is not None and not 0 < port <= MAX_PORT:
        raise ConfigError(f"{label}: port out of range")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigError(f"{label}: the database must be a number, got {_show(db)}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{label}: no query or fragment; want {shape}")


def _check_range(label: str, value: int, low: int, high: int, note: str = "") -> None:
    if not low <= value <= high:
        raise ConfigError(f"{label}: must be between {low} and {high}{note}, got {_show(value)}")


def _check_text(label: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # json.loads accepts "\ud800"; such text cannot be sent anywhere.
        raise ConfigError(f"{label}: contains an unpaired surrogate (not valid text)") from None


def _check_path(label: str, value: str) -> None:
    if "\0" in value:
        raise ConfigError(f"{label}: must not contain a NUL character")
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise ConfigError(f"{label}: not a valid file-system path") from None


_MDNS_TAG_RE: Final = re.compile(r"[A-Za-z0-9-]+")
_HAS_LETTER_RE: Final = re.compile(r"[A-Za-z]")


def _check_mdns_tag(label: str, tag: str) -> None:
    # The rules python-zeroconf enforces for a service name (RFC 6335 5.1).
    if not 1 <= len(tag) <= MAX_MDNS_TAG or not _MDNS_TAG_RE.fullmatch(tag):
        raise ConfigError(
            f"{label}: must be 1-{MAX_MDNS_TAG} letters, digits or hyphens "
            f"(it becomes the DNS-SD service _<tag>._udp.local.), got {_show(tag)}"
        )
    if tag.startswith("-") or tag.endswith("-"):
        raise ConfigError(f"{label}: must not start or end with a hyphen, got {_show(tag)}")
    if "--" in tag:
        raise ConfigError(f"{label}: must not contain two hyphens in a row, got {_show(tag)}")
    if not _HAS_LETTER_RE.search(tag):
        raise ConfigError(f"{label}: must contain at least one letter, got {_show(tag)}")


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_HOST_LABEL: Final = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOSTNAME_RE: Final = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?", re.ASCII)
_DIGITS_AND_DOTS_RE: Final = re.compile(r"[0-9.]+")


def _check_wan(label: str, url: str) -> str:
    """Validate a WAN rendezvous URL; return it without trailing slashes."""
    if url == "":
        return url
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"{label}: must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as e:
        raise ConfigError(f"{label}: not a valid URL ({e}), got {_show(url)}") from None
    if not url.lower().startswith(("http://", "https://")):
        raise ConfigError(f"{label}: must be an http:// or https:// URL, got {_show(url)}")
    if not host:
        raise ConfigError(f"{label}: must name a host (e.g. https://rv.example.org)")
    if "?" in url or "#" in url:
        raise ConfigError(f"{label}: must not have a query or fragment, got {_show(url)}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{label}: must not contain a user name or password")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if (
            len(host) > 253
            or not _HOSTNAME_RE.fullmatch(host)
            or _DIGITS_AND_DOTS_RE.fullmatch(host)
        ):
            raise ConfigError(
                f"{label}: {_show(host)} is not a valid host name or IP address "
                "(write international names as xn--...)"
            ) from None
    else:
        if address.is_unspecified:
            raise ConfigError(f"{label}: must not point at {host} (use the server's real address)")
    if port == 0:
        raise ConfigError(f"{label}: port must be between 1 and {MAX_PORT}, got 0")
    return url.rstrip("/")


_PORT_RE: Final = re.compile(r"[0-9]{1,5}")


def _split_host_port(label: str, addr: str) -> tuple[str, int]:
    """Split "HOST:PORT" ("[v6]:PORT"); HOST is an IP, "localhost" or "" (all)."""
    host, sep, port_text = addr.rpartition(":")
    if not sep:
        raise ConfigError(f"{label}: must be HOST:PORT, e.g. 127.0.0.1:8788, got {_show(addr)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                f"{label}: {_show(host)} in brackets is not an IPv6 address"
            ) from None
    elif ":" in host:
        raise ConfigError(
            f"{label}: write an IPv6 address in brackets, e.g. [::1]:8788, got {_show(addr)}"
        )
    elif host and not _is_ip_or_localhost(host):
        raise ConfigError(
            f'{label}: host must be an IP address, "localhost" or empty (all interfaces), '
            f"got {_show(host)}"
        )
    if not _PORT_RE.fullmatch(port_text):
        raise ConfigError(f"{label}: port must be a number 0-{MAX_PORT}, got {_show(port_text)}")
    port = int(port_text)
    if port > MAX_PORT:
        raise ConfigError(f"{label}: port must be between 0 and {MAX_PORT}, got {port}")
    return host, port


# --- message helpers ---------------------------------------------------------


def _label(name: str, origin: Mapping[str, _Origin]) -> str:
    """The field's name, plus its option when the value came from the command line."""
    option = _OPTION_FOR_FIELD.get(name)
    if origin.get(name) == "cli" and option is not None:
        return f"{name} (--{option.name})"
    return name


def _suggest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: object, limit: int = 80) -> str:
    """repr() for a message: quoted, escaped onto one line, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show_key(key: str) -> str:
    return key if key and key.isprintable() and len(key) <= 80 else _show(key)


def _show_path(path: str) -> str:
    return path if path.isprintable() else _show(path, 400)


def _one_line(message: str) -> str:
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _access(path: str, mode: int) -> bool:
    try:
        return os.access(path, mode)
    except (OSError, ValueError):
        return False
