"""The twistd plugin's command line and the builder of goop's service tree.

`build_service` only assembles: it loads nothing from the network and binds
nothing; each child binds when it starts. Config errors become one line on
stderr and exit status 1 (`SystemExit`), never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from goop.config import CLI_OPTIONS, Config, ConfigError, load_config, overrides_from_cli
from goop.logbuffer import LogBuffer

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
    ] + [[o.name, None, None, o.help] for o in CLI_OPTIONS if not o.flag]
    optFlags: list[list[Any]] = [[o.name, None, o.help] for o in CLI_OPTIONS if o.flag]


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


def build_service(config: Config, reactor: Any = None) -> MultiService:
    """The goop service tree for ``config`` (children start in this order)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    root = MultiService()  # type: ignore[no-untyped-call]
    root.setName("goop")  # type: ignore[no-untyped-call]
    presence = config.presence
    if presence.rendezvous_only or presence.rendezvous_host:
        from goop.rendezvous.service import RendezvousService

        rendezvous = RendezvousService(presence, reactor, logs=LogBuffer())
        rendezvous.setName("rendezvous")  # type: ignore[no-untyped-call]
        rendezvous.setServiceParent(root)  # type: ignore[no-untyped-call]
    if not presence.rendezvous_only:
        log.warn(
            "goop: this build serves the rendezvous only; the peer services "
            "(identity, presence publisher, viewer) are not part of it yet"
        )
    return root


def makeService(options: Mapping[str, Any]) -> IService:
    return build_service(config_from_options(options))


def tac_service(environ: Mapping[str, str] | None = None) -> MultiService:
    """The tree for goop.tac: config from $GOOP_CONFIG (default ./goop.json)."""
    env = os.environ if environ is None else environ
    path = env.get("GOOP_CONFIG") or None
    return build_service(config_from_options({"config": path}, environ=env))
