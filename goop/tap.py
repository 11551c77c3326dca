"""The twistd plugin's command line and the builder of goop's service tree.

`build_service` only assembles: it loads nothing from the network and binds
nothing; each child binds when it starts. Config errors become one line on
stderr and exit status 1 (`SystemExit`), never a traceback.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Mapping
from typing import Any, Final

from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from goop import logformat
from goop.config import CLI_OPTIONS, Config, ConfigError, load_config, overrides_from_cli
from goop.gcpacer import GcPacer
from goop.listening import check_ports
from goop.logbuffer import LogBuffer
from goop.presence.node import SequentialMultiService

log = Logger()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a goop peer, or with --rendezvous-only a pure presence broker. "
        "Settings come from --config PATH (default ./goop.json when present); "
        "each option below overrides the file."
    )
    optParameters: list[list[Any]] = [
        ["config", "c", None, "JSON config file (default: ./goop.json if present)"],
        ["log-format", None, "text", "Log lines as text, or json: one JSON object per line."],
    ] + [[o.name, None, None, o.help] for o in CLI_OPTIONS if not o.flag]
    optFlags: list[list[Any]] = [[o.name, None, o.help] for o in CLI_OPTIONS if o.flag]

    def parseOptions(self, options: Any = None) -> None:
        # twistd prints its whole help (50 lines) before a subcommand's usage
        # error; the error first, and a pointer to the help, is what one needs.
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            raise SystemExit(f"goop: {e}\n(twistd goop --help lists every option)") from None

    def postOptions(self) -> None:
        if self["log-format"] not in logformat.FORMATS:
            known = ", ".join(logformat.FORMATS)
            raise usage.UsageError(
                f"--log-format: must be one of {known}, got {self['log-format']!r}"
            )


class GoopRoot(SequentialMultiService):
    """The root of the tree. Given to twistd's application, it also hands over
    ``log_observer`` (when set) as the application's log observer, which
    twistd then uses for every line, its own included."""

    log_observer: ILogObserver | None = None

    def setServiceParent(self, parent: Any) -> None:
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]


def config_from_options(
    options: Mapping[str, Any], environ: Mapping[str, str] | None = None, cwd: str | None = None
) -> Config:
    """Config from parsed options; raises SystemExit with one line on error."""
    try:
        return load_config(
            options.get("config"),
            overrides_from_cli(options),
            os.environ if environ is None else environ,
            os.getcwd() if cwd is None else cwd,
        )
    except ConfigError as e:
        raise SystemExit(f"goop: {e}") from None


def _loopback_url(rendezvous: Any, trust: Any) -> str:
    """How this process reaches its own rendezvous (bound by the time this is asked)."""
    bind = rendezvous.config.rendezvous_bind
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)
    if rendezvous.tls is not None:
        # Its certificate names the public host, not this address: see tlsclient.
        trust.trust_own_loopback(host, rendezvous.port)
    url_host = f"[{host}]" if ":" in host else host
    return f"{rendezvous.scheme}://{url_host}:{rendezvous.port}"


def _url_of(channel: Any) -> Any:
    return lambda: channel.url


def _manager(table: Any, source: str) -> Any:
    def managed(on: bool, now: float) -> None:
        if on:
            table.manage(source, now)
        else:
            table.unmanage(source, now)

    return managed


def build_service(config: Config, reactor: Any = None) -> MultiService:
    """The goop service tree for ``config``.

    Children start in the order added and stop one by one in reverse, so
    the publisher's ``offline`` goes out while our own rendezvous still runs.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    root = GoopRoot()  # type: ignore[no-untyped-call]
    root.setName("goop")  # type: ignore[no-untyped-call]
    presence = config.presence
    rendezvous = None
    if presence.rendezvous_only or presence.rendezvous_host:
        from goop.rendezvous.service import RendezvousService
        from goop.rendezvous.store import StoreError
        from goop.rendezvous.tls import TLSSetupError

        try:
            rendezvous = RendezvousService(presence, reactor, logs=LogBuffer())
        except TLSSetupError as e:
            raise SystemExit(f"goop: presence.rendezvous_tls_dir: {e}") from None
        except StoreError as e:
            field = "redis_url" if presence.redis_url else "peer_db_path"
            raise SystemExit(f"goop: presence.{field}: {e}") from None
        rendezvous.setName("rendezvous")  # type: ignore[no-untyped-call]
        rendezvous.setServiceParent(root)  # type: ignore[no-untyped-call]
    if not presence.rendezvous_only:
        _add_peer_services(root, config, reactor, rendezvous)
    return root


def _sse_factory(reactor: Any, post: Any, http: Any, self_id: str) -> Any:
    """Builds the /events consumer a link falls back to (a fresh one each time)."""
    from goop.presence.consumer import EventStreamConsumer

    def make(on_message: Any, on_managed: Any, on_punch: Any) -> Any:
        return EventStreamConsumer(
            reactor,
            _url_of(post),
            on_message,
            http,
            name=post.name,
            on_managed=on_managed,
            self_id=self_id,
            on_punch=on_punch,
        )

    return make


def _add_peer_services(root: MultiService, config: Config, reactor: Any, rendezvous: Any) -> None:
    from goop.identity import IdentityError, load_or_create
    from goop.peertable import PeerTable
    from goop.presence.link import RendezvousLink
    from goop.presence.node import (
        HttpClientService,
        IdentityService,
        PeerTableService,
        PunchDialer,
        SelfPresence,
        table_feeder,
    )
    from goop.presence.publisher import Channel, PresencePublisher, RendezvousChannel
    from goop.presence.tlsclient import RendezvousTrust
    from goop.presence.wsclient import AutobahnConnector
    from goop.viewer.service import ViewerService

    try:
        identity, created = load_or_create(config.identity.key_file)
    except IdentityError as e:
        raise SystemExit(f"goop: identity.key_file: {e}") from None
    presence = config.presence
    me = SelfPresence(reactor, identity, config.profile.label, config.profile.email)
    table = PeerTable(identity.peer_id, presence.ttl_seconds)
    try:
        trust = RendezvousTrust(presence.rendezvous_ca_file)
    except (OSError, ValueError) as e:
        raise SystemExit(f"goop: presence.rendezvous_ca_file: {e}") from None
    http = HttpClientService(reactor, trust)
    parts: list[Any] = [IdentityService(identity, created), PeerTableService(reactor, table), http]

    posts: list[RendezvousChannel] = []
    if rendezvous is not None:
        posts.append(
            RendezvousChannel("local", lambda: _loopback_url(rendezvous, trust), http.client)
        )
    if presence.rendezvous_wan:
        wan = presence.rendezvous_wan
        posts.append(RendezvousChannel("wan", lambda: wan, http.client))
    # One link per rendezvous: /ws when it has one, else /events + POST. Each
    # is the publisher's channel there, so heartbeats ride the socket.
    punch = PunchDialer()
    connector = AutobahnConnector(reactor, trust)
    channels: list[Channel] = []
    for post in posts:
        link = RendezvousLink(
            reactor,
            post,
            identity.peer_id,
            connector,
            _sse_factory(reactor, post, http.client, identity.peer_id),
            table_feeder(table, post.name, reactor),
            _manager(table, post.name),
            on_punch=punch,
        )
        link.setName(f"link-{post.name}")  # type: ignore[no-untyped-call]
        parts.append(link)
        channels.append(link.channel)
    for part in parts:
        part.setServiceParent(root)
    parts = []
    lan: list[Channel] = []
    if config.p2p.enabled or config.p2p.mdns_enabled:
        # Imported here: --rendezvous-only never loads libp2p or zeroconf.
        from goop.p2p import add_lan_services

        # Attached before the publisher, so the publisher stops first and its
        # offline still goes out on the LAN topic. Once libp2p listens, our
        # presence carries its addresses: sent at once, not at the next beat.
        lan = add_lan_services(
            root, config, reactor, identity, table, me, punch, lambda: publisher.refresh()
        )
    if not channels and not lan:
        log.warn(
            "goop: no rendezvous configured (rendezvous_host / rendezvous_wan) and LAN "
            "discovery is off (p2p.enabled false): this peer will see no one"
        )
    publisher = PresencePublisher(reactor, me.message, channels + lan, presence.heartbeat_seconds)
    parts.append(publisher)
    viewer = config.viewer
    parts.append(ViewerService(reactor, viewer.viewer_host, viewer.viewer_port, table, me.current))
    for part in parts:
        part.setServiceParent(root)


# Allocations between two collections of the youngest generation (Python: 700).
GC_YOUNG_THRESHOLD: Final = 20_000
# Young collections between two of the middle generation (Python: 10). With
# the larger young generation, 10 let the middle one grow to 200,000 objects:
# a 221 ms collection under the hardening soak's churn; 2 keeps it near 40 ms.
GC_MIDDLE_THRESHOLD: Final = 2


def tune_gc(root: MultiService | None = None) -> None:
    """Garbage collection for a process holding thousands of open streams.

    Process-wide policy, so it is set here where the process is assembled
    (twistd plugin, goop.tac), not by a service that tests start in-process.

    A full collection scans every tracked object, and with 5,000 streams open
    that took 317 ms (bench, K=5000): the longest reactor stall by far.
    Freezing what exists at start (modules, classes, config: never garbage)
    takes it out of every later scan, and a larger youngest generation lets
    short-lived objects (a request, its headers) die young instead of piling
    up in the old generation, which is what triggers full collections.
    """
    gc.collect()
    gc.freeze()
    young, _, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), GC_MIDDLE_THRESHOLD, old)
    if root is not None:
        # Young and middle collections on a clock, in small steps (goop.gcpacer);
        # the thresholds above remain the backstop.
        from twisted.internet import reactor

        GcPacer(reactor).setServiceParent(root)  # type: ignore[no-untyped-call]


def makeService(options: Mapping[str, Any]) -> IService:
    config = config_from_options(options)
    # twistd calls this before it forks (daemon mode) or writes its pidfile:
    # a port in use ends the command here, with the error on the terminal.
    check_ports(config)
    service = build_service(config)
    tune_gc(service)
    # twistd's own options (the parent of ours): where it would have logged.
    twistd_options = getattr(options, "parent", None)
    out = logformat.destination(twistd_options)
    if out is not None and isinstance(service, GoopRoot):
        service.log_observer = logformat.observer(options.get("log-format") or "text", out)
    _log_settings(config)
    return service


def _log_settings(config: Config) -> None:
    def flat(c: Config) -> dict[str, Any]:
        return {f"{s}.{k}": v for s, fields in c.to_json_dict().items() for k, v in fields.items()}

    values, defaults = flat(config), flat(Config())
    for name, default in defaults.items():
        # Relative paths are resolved when loaded: the default, resolved, is no change.
        resolved = os.path.abspath(default) if isinstance(default, str) and default else None
        if name.endswith(("_file", "_path")) and values[name] == resolved:
            values[name] = default
    log.info("{line}", line=logformat.settings_line(values, defaults, config.source))


def tac_service(environ: Mapping[str, str] | None = None) -> MultiService:
    """The tree for goop.tac: config from $GOOP_CONFIG (default ./goop.json)."""
    env = os.environ if environ is None else environ
    path = env.get("GOOP_CONFIG") or None
    config = config_from_options({"config": path}, environ=env)
    check_ports(config)  # a .tac is read before twistd forks, too
    service = build_service(config)
    tune_gc(service)
    fmt = env.get("GOOP_LOG_FORMAT", "text")
    if fmt not in logformat.FORMATS:
        raise SystemExit(f"goop: GOOP_LOG_FORMAT: must be one of text, json, got {fmt!r}")
    if isinstance(service, GoopRoot):
        # twistd -ny goop.tac --nodaemon (supervisord): stdout.
        service.log_observer = logformat.observer(fmt, sys.stdout)
    _log_settings(config)
    return service
