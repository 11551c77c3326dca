"""The deployment files in docs/examples say what goop accepts, and do what docs/deploy.md says."""

from __future__ import annotations

import configparser
import json
import shlex
import socket
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from goop.config import load_config
from tests.inmemory import InMemoryServer
from tests.procs import GoopProcess
from tests.test_e2e import SSEStream

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


def twistd_accepts(argv: list[str]) -> None:
    """Parse a twistd command line the way twistd would (plugin options included)."""
    from twisted.scripts._twistd_unix import ServerOptions

    assert Path(argv[0]).name == "twistd", argv
    ServerOptions().parseOptions(argv[1:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ExampleFileTests(SynchronousTestCase):
    def test_systemd_unit_runs_rendezvous_only_hardened(self) -> None:
        """The unit's ExecStart parses as a goop command; hardening and reload are there."""
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read(EXAMPLES / "goop-rendezvous.service")
        service = unit["Service"]
        argv = shlex.split(service["ExecStart"])
        twistd_accepts(argv)
        self.assertIn("--rendezvous-only", argv)
        for key, value in {
            "DynamicUser": "yes",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "KillSignal": "SIGTERM",
        }.items():
            self.assertEqual(service[key], value, key)
        self.assertIn("-HUP", service["ExecReload"])

    def test_supervisord_program_runs_the_tac_with_goop_config(self) -> None:
        """supervisord runs twistd -y goop.tac with GOOP_CONFIG, logs to stdout, stops on TERM."""
        conf = configparser.ConfigParser(interpolation=None)
        conf.read(EXAMPLES / "supervisord.conf")
        program = conf["program:goop"]
        argv = shlex.split(program["command"])
        self.assertEqual(Path(argv[argv.index("-y") + 1]).name, "goop.tac")
        self.assertIn('GOOP_CONFIG="', program["environment"])
        self.assertEqual(program["stopsignal"], "TERM")
        self.assertEqual(program["stdout_logfile"], "/dev/stdout")

    def test_procfile_is_rendezvous_only_on_all_interfaces(self) -> None:
        """Heroku's web process: rendezvous-only, bound to 0.0.0.0, no fixed port."""
        line = (EXAMPLES / "Procfile").read_text().strip()
        kind, _, command = line.partition(":")
        self.assertEqual(kind, "web")
        argv = shlex.split(command)
        twistd_accepts(argv)
        self.assertIn("--rendezvous-only", argv)
        self.assertEqual(argv[argv.index("--rendezvous-bind") + 1], "0.0.0.0")
        self.assertNotIn("--rendezvous-port", argv)

    def test_example_config_loads_and_trusts_the_proxy_of_the_caddyfile(self) -> None:
        """rendezvous.json is valid; it trusts the loopback proxy the Caddyfile forwards from."""
        config = load_config(str(EXAMPLES / "rendezvous.json"), {}, {}, str(ROOT))
        self.assertTrue(config.presence.rendezvous_only)
        self.assertEqual(config.presence.trusted_proxies, ("127.0.0.1",))
        caddy = (EXAMPLES / "Caddyfile.example").read_text()
        self.assertIn("flush_interval -1", caddy)
        self.assertIn(f"reverse_proxy 127.0.0.1:{config.presence.rendezvous_port}", caddy)


class ProxyHeaderTests(SynchronousTestCase):
    def test_subscriber_cap_keys_on_forwarded_client_only_behind_trusted_proxy(self) -> None:
        """Per-address subscriber caps count X-Forwarded-For clients from a trusted proxy,
        and ignore the header from anyone else."""
        server = InMemoryServer(max_subscribers_per_ip=1, trusted_proxies=("127.0.0.1",))
        a = {"X-Forwarded-For": "198.51.100.1"}
        b = {"X-Forwarded-For": "198.51.100.2"}
        self.assertEqual(server.subscribe("127.0.0.1", a).response().status, 200)
        self.assertEqual(server.subscribe("127.0.0.1", b).response().status, 200)
        self.assertEqual(server.subscribe("127.0.0.1", a).response().status, 429)
        # An untrusted client cannot dodge its cap with the header.
        self.assertEqual(server.subscribe("203.0.113.9", a).response().status, 200)
        self.assertEqual(server.subscribe("203.0.113.9", b).response().status, 429)

    def test_forged_hops_left_of_the_proxy_are_ignored(self) -> None:
        """A client-supplied X-Forwarded-For entry is to the left of the one the proxy
        appends; the right-most untrusted hop is the client."""
        server = InMemoryServer(publish_rate_limit=1, trusted_proxies=("127.0.0.1",))
        body = json.dumps({"type": "online", "peerId": "p"}).encode()
        forged = {"X-Forwarded-For": "1.2.3.4, 198.51.100.7"}
        real = {"X-Forwarded-For": "198.51.100.7"}
        self.assertEqual(server.request("POST", "/publish", body, forged, "127.0.0.1").status, 204)
        self.assertEqual(server.request("POST", "/publish", body, real, "127.0.0.1").status, 429)


def test_heroku_port_rule_on_all_interfaces(tmp_path: Path) -> None:
    """PORT=N twistd -n goop --rendezvous-only --rendezvous-bind 0.0.0.0 listens on N."""
    port = free_port()
    proc = GoopProcess(
        ["--rendezvous-only", "--rendezvous-bind", "0.0.0.0"],
        cwd=str(tmp_path),
        env={"PORT": str(port)},
    )
    try:
        assert proc.url() == f"http://0.0.0.0:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        proc.kill()


def test_tac_peer_stopped_with_sigterm_sends_offline(tmp_path: Path) -> None:
    """A peer run from goop.tac (as supervisord does) tells its rendezvous it is
    going when it gets SIGTERM."""
    rv = GoopProcess(["--rendezvous-only", "--rendezvous-port", "0"], cwd=str(tmp_path))
    peer = None
    try:
        url = rv.url()
        stream = SSEStream(url)
        config = tmp_path / "peer.json"
        config.write_text(
            json.dumps(
                {
                    "profile": {"label": "tac peer"},
                    "p2p": {"enabled": False, "mdns_enabled": False},
                    "presence": {"rendezvous_wan": url},
                    "viewer": {"http_addr": "127.0.0.1:0"},
                }
            )
        )
        peer = GoopProcess(
            [], cwd=str(tmp_path), env={"GOOP_CONFIG": str(config)}, tac=str(ROOT / "goop.tac")
        )
        peer_id = peer.wait_for_line(r"peer id (12D3KooW\w+)").group(1)
        stream.wait_for(lambda m: m["peerId"] == peer_id and m["type"] == "online")
        peer.terminate()
        stream.wait_for(lambda m: m["peerId"] == peer_id and m["type"] == "offline")
        assert peer.wait_exit(5) in (0, -15)
        stream.close()
    finally:
        if peer is not None:
            peer.kill()
        rv.kill()
