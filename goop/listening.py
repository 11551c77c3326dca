"""The server ports: the one-line error when one cannot be had, checked before twistd forks.

Run as a daemon (``twistd goop`` without ``-n``), twistd forks and the
launching process waits on a pipe for the child to say it started; an
error the child raises after that reaches only twistd.log, and a
`SystemExit` (what a failed bind used to be) is not even reported on the
pipe, so the launching command waited forever. So:

- `check_ports` tries every configured fixed port from the plugin's
  ``makeService``, which twistd calls before it forks or writes a pidfile:
  a port in use (or privileged) ends the command at once, exit status 1,
  with the one-line error on the terminal.
- `StartupError` is what the services raise when a bind fails anyway (the
  port was taken in between): a `SystemExit` (``-n`` prints its one line and
  exits 1) that is also an `Exception`, so a daemonizing twistd reports it on
  its pipe (the launching command exits 1) and removes its pidfile.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

from goop.config import Config


class StartupError(SystemExit, Exception):
    """A service cannot start (a port cannot be bound); str() is the one-line error."""


def cannot_listen(what: str, host: str, port: int, reason: str, hint: str) -> StartupError:
    return StartupError(f"goop: {what} cannot listen on {host}:{port}: {reason} ({hint})")


def _ports(config: Config) -> Iterator[tuple[str, str, int, str]]:
    presence = config.presence
    if presence.rendezvous_only or presence.rendezvous_host:
        yield (
            "rendezvous", presence.rendezvous_bind, presence.rendezvous_port,
            "presence.rendezvous_port / --rendezvous-port",
        )  # fmt: skip
        if presence.metrics_port:
            yield (
                "metrics", presence.metrics_bind, presence.metrics_port,
                "presence.metrics_port / --metrics-port",
            )  # fmt: skip
        if presence.rendezvous_redirect_port:
            yield (
                "rendezvous redirect", presence.rendezvous_bind,
                presence.rendezvous_redirect_port,
                "presence.rendezvous_redirect_port / --rendezvous-redirect-port",
            )  # fmt: skip
    if not presence.rendezvous_only:
        yield (
            "viewer", config.viewer.viewer_host, config.viewer.viewer_port,
            "viewer.http_addr / --http-addr; use port 0 for any free port",
        )  # fmt: skip


def check_ports(config: Config) -> None:
    """Raise `StartupError` naming the first configured fixed TCP port that cannot be
    bound now (in use, or privileged). Port 0 (any free port) is never checked."""
    for what, host, port, hint in _ports(config):
        if not port:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            # As Twisted's listener does: a port left in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            probe.listen(1)
        except OSError as e:
            raise cannot_listen(what, host, port, e.strerror or str(e), hint) from None
        finally:
            probe.close()
