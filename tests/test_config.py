"""Tests for goop.config: loading, precedence, paths and every validation rule."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from goop.config import (
    CLI_OPTIONS,
    Config,
    ConfigError,
    IdentityConfig,
    P2PConfig,
    PresenceConfig,
    ProfileConfig,
    ViewerConfig,
    load_config,
    overrides_from_cli,
)

SECTIONS: dict[str, type[Any]] = {
    "identity": IdentityConfig,
    "profile": ProfileConfig,
    "p2p": P2PConfig,
    "presence": PresenceConfig,
    "viewer": ViewerConfig,
}
FIELDS = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# --- strategies --------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
section_names = st.sampled_from([*SECTIONS, "other"]) | st.text(max_size=8)
field_names = st.sampled_from(sorted({f.split(".", 1)[1] for f in FIELDS})) | st.text(max_size=8)
# Mostly config-shaped objects, sometimes anything at all.
config_shaped = st.dictionaries(
    section_names, st.dictionaries(field_names, json_values, max_size=4) | json_values, max_size=4
)
file_contents = config_shaped | json_values

surrogates = st.integers(0xD800, 0xDFFF).map(chr)
override_text = st.one_of(
    st.text(max_size=30),
    st.text(st.sampled_from("0123456789,.:[]/-tfx \0"), max_size=12),
    st.lists(surrogates | st.characters(), max_size=6).map("".join),
    st.integers(-(2**40), 2**40).map(str),
)


class ConfigTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.cwd = self.makeDir()

    def makeDir(self) -> str:
        """A fresh absolute temp directory, removed (with its empty parents) after the test."""
        path = os.path.abspath(self.mktemp())
        os.mkdir(path)
        parent = os.path.dirname(path)

        def clean() -> None:
            shutil.rmtree(parent, ignore_errors=True)
            try:
                os.removedirs(os.path.dirname(parent))
            except OSError:
                pass

        self.addCleanup(clean)
        return path

    def writeFile(self, content: object, folder: str | None = None, name: str = "goop.json") -> str:
        """Write JSON (or raw str/bytes) to folder/name; return the absolute path."""
        path = os.path.join(folder or self.cwd, name)
        if isinstance(content, bytes):
            data = content
        elif isinstance(content, str):
            data = content.encode("utf-8")
        else:
            data = json.dumps(content).encode("utf-8")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def load(
        self,
        overrides: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> Config:
        return load_config(path, overrides or {}, environ or {}, self.cwd)

    def assertConfigError(self, field: str, call: Callable[[], object]) -> str:
        """call() raises ConfigError whose one-line text starts with field; return it."""
        with self.assertRaises(ConfigError) as cm:
            call()
        message = str(cm.exception)
        self.assertTrue(message.startswith(field), message)
        self.assertNotIn("\n", message)
        return message

    def assertFileError(self, field: str, content: object) -> str:
        """Loading a goop.json holding content fails naming field."""
        self.writeFile(content)
        return self.assertConfigError(field, self.load)

    def assertOverrideError(self, field: str, value: str) -> str:
        """Overriding field with value fails naming field."""
        return self.assertConfigError(field, lambda: self.load({field: value}))

    def loadPresence(self, **presence: object) -> PresenceConfig:
        self.writeFile({"presence": presence})
        return self.load().presence


class DefaultsTests(ConfigTestCase):
    def test_defaults_equal_the_brief(self) -> None:
        """With no file and no options every field has the brief's default."""
        config = self.load()
        self.assertEqual(config.source, "")
        self.assertEqual(config.identity.key_file, os.path.join(self.cwd, "data", "identity.key"))
        self.assertEqual(config.profile, ProfileConfig(label="hello", email=""))
        self.assertEqual(
            config.p2p,
            P2PConfig(
                listen_port=0,
                mdns_tag="goop-mdns",
                enabled=True,
                mdns_enabled=True,
                mdns_interfaces=(),
            ),
        )
        self.assertEqual(
            config.presence,
            PresenceConfig(
                topic="goop.presence.v1",
                ttl_seconds=20,
                heartbeat_seconds=5,
                rendezvous_host=False,
                rendezvous_port=8787,
                rendezvous_bind="127.0.0.1",
                rendezvous_wan="",
                rendezvous_only=False,
                admin_password="",
                peer_db_path="",
                publish_rate_limit=1200,
                max_subscribers=10000,
                max_subscribers_per_ip=64,
                rendezvous_tls_dir="",
                rendezvous_ca_file="",
                trusted_proxies=(),
            ),
        )
        self.assertEqual(config.viewer.http_addr, "127.0.0.1:8788")

    def test_dataclass_defaults_equal_the_brief(self) -> None:
        """The dataclasses' own defaults are the brief's (key_file still relative)."""
        self.assertEqual(IdentityConfig().key_file, "data/identity.key")
        self.assertEqual(Config().presence, PresenceConfig())
        self.assertEqual(PresenceConfig().rendezvous_port, 8787)
        self.assertEqual(ViewerConfig().http_addr, "127.0.0.1:8788")
        self.assertEqual(Config().source, "")

    def test_config_error_is_a_value_error(self) -> None:
        """ConfigError is a ValueError."""
        self.assertTrue(issubclass(ConfigError, ValueError))

    def test_dataclasses_are_frozen(self) -> None:
        """Config values cannot be changed after loading."""
        config = self.load()
        with self.assertRaises(dataclasses.FrozenInstanceError):
            config.presence.ttl_seconds = 3  # type: ignore[misc]

    def test_viewer_host_and_port_are_parsed(self) -> None:
        """viewer_host / viewer_port split the default http_addr."""
        viewer = self.load().viewer
        self.assertEqual((viewer.viewer_host, viewer.viewer_port), ("127.0.0.1", 8788))

    def test_viewer_ipv6_host_loses_its_brackets(self) -> None:
        """An http_addr of [::1]:9000 gives host ::1 and port 9000."""
        viewer = self.load({"viewer.http_addr": "[::1]:9000"}).viewer
        self.assertEqual((viewer.viewer_host, viewer.viewer_port), ("::1", 9000))

    def test_viewer_empty_host_means_all_interfaces(self) -> None:
        """An http_addr of :8788 is accepted and gives an empty host."""
        viewer = self.load({"viewer.http_addr": ":8788"}).viewer
        self.assertEqual((viewer.viewer_host, viewer.viewer_port), ("", 8788))


class FileTests(ConfigTestCase):
    def test_goop_json_in_cwd_is_used_without_a_path(self) -> None:
        """path=None reads <cwd>/goop.json when it exists."""
        path = self.writeFile({"profile": {"label": "from file"}})
        config = self.load()
        self.assertEqual(config.profile.label, "from file")
        self.assertEqual(config.source, path)

    def test_explicit_path_is_relative_to_cwd(self) -> None:
        """A relative --config path is found from cwd."""
        os.mkdir(os.path.join(self.cwd, "etc"))
        path = self.writeFile({"profile": {"label": "x"}}, os.path.join(self.cwd, "etc"), "a.json")
        config = self.load(path="etc/a.json")
        self.assertEqual(config.source, path)
        self.assertEqual(config.profile.label, "x")

    def test_explicit_path_wins_over_goop_json(self) -> None:
        """An explicit path is used even when <cwd>/goop.json exists."""
        self.writeFile({"profile": {"label": "implicit"}})
        other = self.writeFile({"profile": {"label": "explicit"}}, name="other.json")
        self.assertEqual(self.load(path=other).profile.label, "explicit")

    def test_missing_explicit_file_is_an_error_naming_the_path(self) -> None:
        """--config pointing nowhere is refused, naming the path."""
        missing = os.path.join(self.cwd, "nope.json")
        message = self.assertConfigError("config", lambda: self.load(path=missing))
        self.assertIn(missing, message)
        self.assertIn("no such file", message)

    def test_empty_explicit_path_is_an_error(self) -> None:
        """--config "" is refused."""
        self.assertConfigError("config", lambda: self.load(path=""))

    def test_directory_as_config_is_an_error(self) -> None:
        """--config naming a directory is refused, naming it."""
        message = self.assertConfigError("config", lambda: self.load(path=self.cwd))
        self.assertIn(self.cwd, message)

    def test_unreadable_file_is_an_error(self) -> None:
        """A file without read permission is refused, naming it."""
        if IS_ROOT:
            raise self.skipTest("root can read any file")
        path = self.writeFile({})
        os.chmod(path, 0)
        self.addCleanup(os.chmod, path, 0o600)
        message = self.assertConfigError("config", lambda: self.load(path=path))
        self.assertIn(path, message)

    def test_invalid_json_names_path_line_and_column(self) -> None:
        """Malformed JSON gives the path, line and column of the problem."""
        path = self.writeFile('{\n  "presence": {\n    "ttl_seconds": 20\n    "x": 1}}')
        message = self.assertConfigError("config", lambda: self.load(path=path))
        self.assertEqual(message, f"config {path}: line 4 column 5: Expecting ',' delimiter")

    def test_invalid_implicit_goop_json_is_an_error(self) -> None:
        """A broken ./goop.json is not silently skipped."""
        message = self.assertFileError("config", "{")
        self.assertIn("goop.json", message)

    def test_empty_file_is_an_error(self) -> None:
        """An empty file is not valid JSON."""
        self.assertFileError("config", "")

    def test_non_object_json_is_an_error(self) -> None:
        """A JSON array at the top is refused."""
        message = self.assertFileError("config", [1, 2])
        self.assertIn("must be a JSON object, got array", message)

    def test_non_utf8_file_is_an_error(self) -> None:
        """Bytes that are not UTF-8 are refused."""
        message = self.assertFileError("config", b'{"profile": {"label": "\xff"}}')
        self.assertIn("UTF-8", message)

    def test_byte_order_mark_is_tolerated(self) -> None:
        """A UTF-8 byte-order mark at the start is accepted."""
        self.writeFile(b'\xef\xbb\xbf{"profile": {"label": "bom"}}')
        self.assertEqual(self.load().profile.label, "bom")

    def test_duplicate_key_is_an_error(self) -> None:
        """The same key twice in one object is refused."""
        message = self.assertFileError(
            "config", '{"presence": {"ttl_seconds": 20, "ttl_seconds": 30}}'
        )
        self.assertIn("duplicate key 'ttl_seconds'", message)

    def test_deep_nesting_is_an_error(self) -> None:
        """Absurdly nested JSON gives a ConfigError, not a RecursionError."""
        self.assertFileError("config", "[" * 100000 + "]" * 100000)

    def test_all_sections_are_optional(self) -> None:
        """An empty object means all defaults."""
        self.writeFile({})
        self.assertEqual(self.load().presence, PresenceConfig())

    def test_full_example_from_the_spec_loads(self) -> None:
        """The example config in SPEC.md loads as is."""
        self.writeFile(
            {
                "identity": {"key_file": "data/identity.key"},
                "profile": {"label": "hello", "email": ""},
                "p2p": {
                    "listen_port": 0,
                    "mdns_tag": "goop-mdns",
                    "enabled": True,
                    "mdns_enabled": True,
                    "mdns_interfaces": [],
                },
                "presence": {
                    "topic": "goop.presence.v1",
                    "ttl_seconds": 20,
                    "heartbeat_seconds": 5,
                    "rendezvous_host": False,
                    "rendezvous_port": 8787,
                    "rendezvous_bind": "127.0.0.1",
                    "rendezvous_wan": "",
                    "rendezvous_only": False,
                    "admin_password": "",
                    "peer_db_path": "",
                },
                "viewer": {"http_addr": "127.0.0.1:8788"},
            }
        )
        self.assertEqual(self.load().presence, PresenceConfig())

    def test_unknown_section_is_an_error(self) -> None:
        """A section the brief does not define is refused."""
        message = self.assertFileError("presense", {"presense": {}})
        self.assertIn("unknown section", message)
        self.assertIn("did you mean presence?", message)

    def test_unknown_field_is_an_error(self) -> None:
        """A field the brief does not define is refused, exactly as documented."""
        message = self.assertFileError("presence.foo", {"presence": {"foo": 1}})
        self.assertEqual(message, "presence.foo: unknown field")

    def test_unknown_field_suggests_a_near_name(self) -> None:
        """A misspelt field gets a suggestion."""
        message = self.assertFileError("presence.ttl_second", {"presence": {"ttl_second": 1}})
        self.assertIn("did you mean ttl_seconds?", message)

    def test_section_that_is_not_an_object_is_an_error(self) -> None:
        """A section must be a JSON object."""
        message = self.assertFileError("presence", {"presence": [1]})
        self.assertEqual(message, "presence: must be an object, got array")

    def test_string_for_integer_is_an_error(self) -> None:
        """A string where an integer belongs is refused, as documented."""
        message = self.assertFileError("presence.ttl_seconds", {"presence": {"ttl_seconds": "20"}})
        self.assertEqual(message, "presence.ttl_seconds: must be an integer, got string")

    def test_bool_for_integer_is_an_error(self) -> None:
        """true is not accepted where an integer belongs."""
        message = self.assertFileError("p2p.listen_port", {"p2p": {"listen_port": True}})
        self.assertIn("got boolean", message)

    def test_float_for_integer_is_an_error(self) -> None:
        """20.0 is not accepted where an integer belongs."""
        message = self.assertFileError("presence.ttl_seconds", {"presence": {"ttl_seconds": 20.0}})
        self.assertIn("got number", message)

    def test_integer_for_bool_is_an_error(self) -> None:
        """1 is not accepted where a boolean belongs."""
        message = self.assertFileError("p2p.enabled", {"p2p": {"enabled": 1}})
        self.assertIn("must be true or false, got integer", message)

    def test_number_for_string_is_an_error(self) -> None:
        """A number is not accepted where a string belongs."""
        message = self.assertFileError("profile.label", {"profile": {"label": 5}})
        self.assertIn("must be a string, got integer", message)

    def test_null_is_an_error(self) -> None:
        """null is not a way to ask for the default."""
        self.assertFileError("presence.topic", {"presence": {"topic": None}})

    def test_string_for_list_is_an_error(self) -> None:
        """A comma-separated string is not a list in the file."""
        message = self.assertFileError(
            "presence.trusted_proxies", {"presence": {"trusted_proxies": "10.0.0.1"}}
        )
        self.assertIn("must be a list of strings, got string", message)

    def test_list_item_that_is_not_a_string_is_an_error(self) -> None:
        """Every list item must be a string; the message gives its index."""
        message = self.assertFileError(
            "p2p.mdns_interfaces", {"p2p": {"mdns_interfaces": ["10.0.0.1", 7]}}
        )
        self.assertTrue(message.startswith("p2p.mdns_interfaces[1]:"), message)

    def test_list_becomes_a_tuple(self) -> None:
        """A JSON list is stored as a tuple."""
        self.writeFile({"p2p": {"mdns_interfaces": ["10.0.0.1", "192.168.1.2"]}})
        self.assertEqual(self.load().p2p.mdns_interfaces, ("10.0.0.1", "192.168.1.2"))

    def test_lone_surrogate_in_text_is_an_error(self) -> None:
        """A lone surrogate (\\ud800) cannot be sent on, so it is refused."""
        self.assertFileError("profile.label", '{"profile": {"label": "\\ud800"}}')


class OverrideTests(ConfigTestCase):
    def test_integer_override_is_converted(self) -> None:
        """The text 9000 for an int field becomes 9000."""
        self.assertEqual(self.load({"p2p.listen_port": "9000"}).p2p.listen_port, 9000)

    def test_bad_integer_override_names_field_and_option(self) -> None:
        """A non-integer is refused with the documented message."""
        message = self.assertOverrideError("presence.rendezvous_port", "abc")
        self.assertEqual(
            message, "presence.rendezvous_port (--rendezvous-port): must be an integer, got 'abc'"
        )

    def test_bool_words_are_accepted_in_any_case(self) -> None:
        """true/false/yes/no/1/0/on/off convert, case-insensitively."""
        for word, expected in [
            ("true", True),
            ("YES", True),
            ("1", True),
            ("On", True),
            ("false", False),
            ("No", False),
            ("0", False),
            ("OFF", False),
        ]:
            self.assertEqual(self.load({"p2p.enabled": word}).p2p.enabled, expected, word)

    def test_bad_bool_override_is_an_error(self) -> None:
        """A word that is not a boolean is refused, naming the option."""
        message = self.assertOverrideError("p2p.mdns_enabled", "maybe")
        self.assertIn("(--no-mdns)", message)

    def test_list_override_splits_on_commas(self) -> None:
        """The text "a, b" becomes ("a", "b")."""
        config = self.load({"presence.trusted_proxies": "10.0.0.0/8, 127.0.0.1"})
        self.assertEqual(config.presence.trusted_proxies, ("10.0.0.0/8", "127.0.0.1"))

    def test_empty_list_override_is_an_empty_tuple(self) -> None:
        """An empty string clears a list, even one set in the file."""
        self.writeFile({"p2p": {"mdns_interfaces": ["10.0.0.1"]}})
        self.assertEqual(self.load({"p2p.mdns_interfaces": ""}).p2p.mdns_interfaces, ())

    def test_trailing_comma_in_list_override_is_ignored(self) -> None:
        """Empty items from a trailing comma are dropped."""
        config = self.load({"p2p.mdns_interfaces": "10.0.0.1,"})
        self.assertEqual(config.p2p.mdns_interfaces, ("10.0.0.1",))

    def test_string_override_is_kept_as_typed(self) -> None:
        """A string option is not trimmed or changed."""
        config = self.load({"presence.admin_password": " s3cret "})
        self.assertEqual(config.presence.admin_password, " s3cret ")

    def test_unknown_override_is_an_error(self) -> None:
        """A dotted name that is no field is refused."""
        self.assertOverrideError("presence.nope", "1")


class PrecedenceTests(ConfigTestCase):
    def test_command_line_beats_file_beats_port_beats_default(self) -> None:
        """rendezvous_port comes from the highest layer that sets it."""
        env = {"PORT": "5000"}
        self.assertEqual(self.load().presence.rendezvous_port, 8787)
        self.assertEqual(self.load(environ=env).presence.rendezvous_port, 5000)
        self.writeFile({"presence": {"rendezvous_port": 9001}})
        self.assertEqual(self.load(environ=env).presence.rendezvous_port, 9001)
        config = self.load({"presence.rendezvous_port": "9002"}, env)
        self.assertEqual(config.presence.rendezvous_port, 9002)

    def test_command_line_beats_file(self) -> None:
        """An option overrides the same field in the file."""
        self.writeFile({"profile": {"label": "file"}, "p2p": {"enabled": True}})
        config = self.load({"profile.label": "cli", "p2p.enabled": "false"})
        self.assertEqual((config.profile.label, config.p2p.enabled), ("cli", False))

    def test_file_keeps_fields_it_does_not_set_at_default(self) -> None:
        """A file setting one field leaves the others at their defaults."""
        presence = self.loadPresence(ttl_seconds=30)
        self.assertEqual(presence, dataclasses.replace(PresenceConfig(), ttl_seconds=30))

    def test_bad_port_variable_is_an_error(self) -> None:
        """PORT that is not an integer is refused, as documented."""
        message = self.assertConfigError("PORT", lambda: self.load(environ={"PORT": "x"}))
        self.assertEqual(message, "PORT: must be an integer port 0-65535, got 'x'")

    def test_out_of_range_port_variable_is_an_error(self) -> None:
        """PORT above 65535 is refused."""
        self.assertConfigError("PORT", lambda: self.load(environ={"PORT": "70000"}))

    def test_port_variable_is_ignored_when_the_port_is_set(self) -> None:
        """A bad PORT does not matter when the file sets the port."""
        self.writeFile({"presence": {"rendezvous_port": 9001}})
        self.assertEqual(self.load(environ={"PORT": "x"}).presence.rendezvous_port, 9001)

    def test_empty_port_variable_counts_as_unset(self) -> None:
        """PORT="" leaves the default port."""
        self.assertEqual(self.load(environ={"PORT": ""}).presence.rendezvous_port, 8787)


class PathTests(ConfigTestCase):
    def test_file_paths_are_relative_to_the_file_folder(self) -> None:
        """Relative paths in a file resolve against that file's folder."""
        etc = os.path.join(self.cwd, "etc")
        os.makedirs(os.path.join(etc, "tls"))
        self.writeFile("", etc, "ca.pem")
        path = self.writeFile(
            {
                "identity": {"key_file": "keys/id.key"},
                "presence": {
                    "peer_db_path": "peers.db",
                    "rendezvous_tls_dir": "tls",
                    "rendezvous_ca_file": "ca.pem",
                },
            },
            etc,
            "goop.json",
        )
        config = load_config(path, {}, {}, "/")
        self.assertEqual(config.identity.key_file, os.path.join(etc, "keys", "id.key"))
        self.assertEqual(config.presence.peer_db_path, os.path.join(etc, "peers.db"))
        self.assertEqual(config.presence.rendezvous_tls_dir, os.path.join(etc, "tls"))
        self.assertEqual(config.presence.rendezvous_ca_file, os.path.join(etc, "ca.pem"))

    def test_override_paths_are_relative_to_cwd(self) -> None:
        """Relative paths from the command line resolve against cwd."""
        os.mkdir(os.path.join(self.cwd, "tls"))
        self.writeFile("", name="ca.pem")
        config = self.load(
            {
                "identity.key_file": "id.key",
                "presence.peer_db_path": "sub/peers.db",
                "presence.rendezvous_tls_dir": "tls",
                "presence.rendezvous_ca_file": "ca.pem",
            }
        )
        self.assertEqual(config.identity.key_file, os.path.join(self.cwd, "id.key"))
        self.assertEqual(config.presence.peer_db_path, os.path.join(self.cwd, "sub", "peers.db"))
        self.assertEqual(config.presence.rendezvous_tls_dir, os.path.join(self.cwd, "tls"))
        self.assertEqual(config.presence.rendezvous_ca_file, os.path.join(self.cwd, "ca.pem"))

    def test_default_key_file_is_relative_to_cwd_even_with_a_file(self) -> None:
        """A default path is not moved to the config file's folder."""
        other = self.makeDir()
        path = self.writeFile({}, other)
        config = self.load(path=path)
        self.assertEqual(config.identity.key_file, os.path.join(self.cwd, "data", "identity.key"))

    def test_absolute_paths_are_kept(self) -> None:
        """An absolute path is stored unchanged."""
        config = self.load({"presence.peer_db_path": "/var/lib/goop/peers.db"})
        self.assertEqual(config.presence.peer_db_path, "/var/lib/goop/peers.db")

    def test_empty_paths_stay_empty(self) -> None:
        """An empty path means "none" and is not resolved."""
        self.writeFile({"identity": {"key_file": ""}, "presence": {"peer_db_path": ""}})
        config = self.load()
        self.assertEqual((config.identity.key_file, config.presence.peer_db_path), ("", ""))

    def test_sqlite_memory_name_is_not_a_path(self) -> None:
        """peer_db_path ":memory:" is kept as SQLite's in-memory name."""
        config = self.load({"presence.peer_db_path": ":memory:"})
        self.assertEqual(config.presence.peer_db_path, ":memory:")

    def test_nul_in_a_path_is_an_error(self) -> None:
        """A path holding NUL cannot be opened, so it is refused."""
        self.assertOverrideError("identity.key_file", "a\0b")


class RendezvousOnlyTests(ConfigTestCase):
    def test_rendezvous_only_implies_a_rendezvous_host(self) -> None:
        """rendezvous_only: true sets rendezvous_host true."""
        presence = self.loadPresence(rendezvous_only=True)
        self.assertTrue(presence.rendezvous_host)

    def test_rendezvous_only_flag_implies_a_rendezvous_host(self) -> None:
        """--rendezvous-only sets rendezvous_host true."""
        presence = self.load({"presence.rendezvous_only": "true"}).presence
        self.assertEqual((presence.rendezvous_only, presence.rendezvous_host), (True, True))

    def test_rendezvous_only_with_host_false_in_the_file_is_an_error(self) -> None:
        """The file cannot ask for rendezvous_only and refuse the host, as documented."""
        message = self.assertFileError(
            "presence.rendezvous_only",
            {"presence": {"rendezvous_only": True, "rendezvous_host": False}},
        )
        self.assertEqual(
            message,
            "presence.rendezvous_only: needs a rendezvous, but presence.rendezvous_host is false",
        )

    def test_host_false_on_the_command_line_conflicts_with_the_file(self) -> None:
        """An override setting rendezvous_host false conflicts with rendezvous_only."""
        self.writeFile({"presence": {"rendezvous_only": True}})
        self.assertConfigError(
            "presence.rendezvous_only",
            lambda: self.load({"presence.rendezvous_host": "false"}),
        )

    def test_rendezvous_only_flag_beats_host_false_in_the_file(self) -> None:
        """--rendezvous-only outranks a file's rendezvous_host: false (e.g. the example)."""
        self.writeFile({"presence": {"rendezvous_host": False}})
        presence = self.load({"presence.rendezvous_only": "true"}).presence
        self.assertTrue(presence.rendezvous_host)

    def test_rendezvous_only_leaves_p2p_fields_alone(self) -> None:
        """rendezvous_only does not rewrite the p2p section."""
        config = self.load({"presence.rendezvous_only": "true"})
        self.assertEqual(config.p2p, P2PConfig())


class ValidationTests(ConfigTestCase):
    # ports
    def test_listen_port_above_65535_is_an_error(self) -> None:
        """p2p.listen_port must be 0-65535."""
        self.assertFileError("p2p.listen_port", {"p2p": {"listen_port": 65536}})

    def test_rendezvous_port_below_zero_is_an_error(self) -> None:
        """presence.rendezvous_port must be 0-65535."""
        self.assertFileError("presence.rendezvous_port", {"presence": {"rendezvous_port": -1}})

    def test_rendezvous_port_above_65535_on_the_command_line_is_an_error(self) -> None:
        """The range error names the option too."""
        message = self.assertOverrideError("presence.rendezvous_port", "65536")
        self.assertIn("--rendezvous-port", message)

    def test_port_extremes_are_accepted(self) -> None:
        """0 and 65535 are valid ports."""
        config = self.load({"p2p.listen_port": "65535", "presence.rendezvous_port": "0"})
        self.assertEqual((config.p2p.listen_port, config.presence.rendezvous_port), (65535, 0))

    def test_viewer_port_above_65535_is_an_error(self) -> None:
        """The port in viewer.http_addr must be 0-65535."""
        self.assertOverrideError("viewer.http_addr", "127.0.0.1:65536")

    # timing
    def test_ttl_below_one_is_an_error(self) -> None:
        """presence.ttl_seconds must be >= 1."""
        self.assertFileError("presence.ttl_seconds", {"presence": {"ttl_seconds": 0}})

    def test_heartbeat_below_one_is_an_error(self) -> None:
        """presence.heartbeat_seconds must be >= 1."""
        self.assertFileError("presence.heartbeat_seconds", {"presence": {"heartbeat_seconds": 0}})

    def test_heartbeat_not_below_ttl_is_an_error(self) -> None:
        """heartbeat >= ttl is refused with the documented message."""
        message = self.assertFileError(
            "presence.heartbeat_seconds", {"presence": {"heartbeat_seconds": 30}}
        )
        self.assertEqual(
            message, "presence.heartbeat_seconds: must be < ttl_seconds (got 30 >= 20)"
        )

    def test_heartbeat_equal_to_ttl_is_an_error(self) -> None:
        """heartbeat == ttl is refused too."""
        self.assertFileError(
            "presence.heartbeat_seconds",
            {"presence": {"ttl_seconds": 10, "heartbeat_seconds": 10}},
        )

    def test_smallest_timing_is_accepted(self) -> None:
        """ttl 2, heartbeat 1 is valid."""
        presence = self.loadPresence(ttl_seconds=2, heartbeat_seconds=1)
        self.assertEqual((presence.ttl_seconds, presence.heartbeat_seconds), (2, 1))

    def test_ttl_above_a_day_is_an_error(self) -> None:
        """presence.ttl_seconds is capped at 86400 so timers cannot overflow."""
        self.assertFileError("presence.ttl_seconds", {"presence": {"ttl_seconds": 10**30}})

    # limits
    def test_negative_publish_rate_limit_is_an_error(self) -> None:
        """presence.publish_rate_limit must be >= 0."""
        self.assertFileError(
            "presence.publish_rate_limit", {"presence": {"publish_rate_limit": -1}}
        )

    def test_negative_max_subscribers_is_an_error(self) -> None:
        """presence.max_subscribers must be >= 0."""
        self.assertFileError("presence.max_subscribers", {"presence": {"max_subscribers": -1}})

    def test_negative_max_subscribers_per_ip_is_an_error(self) -> None:
        """presence.max_subscribers_per_ip must be >= 0."""
        self.assertOverrideError("presence.max_subscribers_per_ip", "-5")

    def test_zero_limits_mean_unlimited_and_are_accepted(self) -> None:
        """0 is valid for every limit."""
        presence = self.loadPresence(
            publish_rate_limit=0, max_subscribers=0, max_subscribers_per_ip=0
        )
        self.assertEqual(presence.publish_rate_limit, 0)

    # rendezvous_bind
    def test_bind_host_name_is_an_error(self) -> None:
        """rendezvous_bind takes IP literals or localhost; the message says so."""
        message = self.assertFileError(
            "presence.rendezvous_bind", {"presence": {"rendezvous_bind": "example.org"}}
        )
        self.assertIn('"localhost"', message)

    def test_bind_empty_is_an_error(self) -> None:
        """An empty rendezvous_bind is refused."""
        self.assertOverrideError("presence.rendezvous_bind", "")

    def test_bind_accepts_ipv4_ipv6_and_localhost(self) -> None:
        """0.0.0.0, ::, ::1 and localhost are valid bind addresses."""
        for bind in ["0.0.0.0", "::", "::1", "localhost", "192.168.1.10"]:
            config = self.load({"presence.rendezvous_bind": bind})
            self.assertEqual(config.presence.rendezvous_bind, bind)

    # rendezvous_wan
    def test_wan_that_is_not_http_is_an_error(self) -> None:
        """rendezvous_wan must be http:// or https://."""
        self.assertOverrideError("presence.rendezvous_wan", "ftp://rv.example.org")

    def test_wan_without_scheme_is_an_error(self) -> None:
        """A bare host:port is not a URL."""
        self.assertOverrideError("presence.rendezvous_wan", "rv.example.org:8787")

    def test_wan_without_host_is_an_error(self) -> None:
        """http:// with no host is refused."""
        self.assertOverrideError("presence.rendezvous_wan", "http://")

    def test_wan_pointing_at_0_0_0_0_is_an_error(self) -> None:
        """The unspecified address is refused with the documented message."""
        message = self.assertFileError(
            "presence.rendezvous_wan",
            {"presence": {"rendezvous_wan": "http://0.0.0.0:8787"}},
        )
        self.assertEqual(
            message,
            "presence.rendezvous_wan: must not point at 0.0.0.0 (use the server's real address)",
        )

    def test_wan_pointing_at_ipv6_unspecified_is_an_error(self) -> None:
        """http://[::]:8787 is refused like 0.0.0.0."""
        message = self.assertOverrideError("presence.rendezvous_wan", "http://[::]:8787/")
        self.assertIn("must not point at ::", message)

    def test_wan_trailing_slash_is_stripped(self) -> None:
        """https://host/ is stored as https://host."""
        config = self.load({"presence.rendezvous_wan": "https://rv.example.org/"})
        self.assertEqual(config.presence.rendezvous_wan, "https://rv.example.org")

    def test_wan_with_port_path_and_ipv6_is_accepted(self) -> None:
        """Ports, paths and bracketed IPv6 hosts are fine."""
        for url in ["http://127.0.0.1:8787", "https://rv.example.org/goop", "http://[::1]:8787"]:
            config = self.load({"presence.rendezvous_wan": url})
            self.assertEqual(config.presence.rendezvous_wan, url)

    def test_wan_with_query_is_an_error(self) -> None:
        """A query string is refused."""
        self.assertOverrideError("presence.rendezvous_wan", "https://rv.example.org/?a=1")

    def test_wan_with_fragment_is_an_error(self) -> None:
        """A fragment is refused."""
        self.assertOverrideError("presence.rendezvous_wan", "https://rv.example.org/#top")

    def test_wan_with_space_is_an_error(self) -> None:
        """Whitespace inside the URL is refused."""
        self.assertOverrideError("presence.rendezvous_wan", "https://rv.exa mple.org")

    def test_wan_with_credentials_is_an_error(self) -> None:
        """user:password@ in the URL is refused."""
        self.assertOverrideError("presence.rendezvous_wan", "https://u:p@rv.example.org")

    def test_wan_with_bad_port_is_an_error(self) -> None:
        """A port that is not 1-65535 is refused."""
        self.assertOverrideError("presence.rendezvous_wan", "http://rv.example.org:99999")
        self.assertOverrideError("presence.rendezvous_wan", "http://rv.example.org:0")

    def test_wan_with_bad_host_name_is_an_error(self) -> None:
        """A host that is neither a name nor an IP is refused."""
        self.assertOverrideError("presence.rendezvous_wan", "http://-bad-.example.org")

    # viewer.http_addr
    def test_http_addr_without_port_is_an_error(self) -> None:
        """viewer.http_addr needs HOST:PORT."""
        self.assertFileError("viewer.http_addr", {"viewer": {"http_addr": "127.0.0.1"}})

    def test_http_addr_with_non_numeric_port_is_an_error(self) -> None:
        """The port must be digits."""
        self.assertOverrideError("viewer.http_addr", "127.0.0.1:http")

    def test_http_addr_with_unbracketed_ipv6_is_an_error(self) -> None:
        """IPv6 must be written in brackets."""
        message = self.assertOverrideError("viewer.http_addr", "::1:8788")
        self.assertIn("[::1]:8788", message)

    def test_http_addr_with_bad_bracketed_address_is_an_error(self) -> None:
        """Brackets must hold an IPv6 address."""
        self.assertOverrideError("viewer.http_addr", "[nope]:8788")

    def test_http_addr_with_host_name_is_an_error(self) -> None:
        """The viewer binds to IP literals or localhost only."""
        self.assertOverrideError("viewer.http_addr", "example.org:8788")

    # mdns_interfaces / trusted_proxies
    def test_mdns_interface_that_is_not_ipv4_is_an_error(self) -> None:
        """Each mdns_interfaces item must be an IPv4 address."""
        message = self.assertFileError(
            "p2p.mdns_interfaces", {"p2p": {"mdns_interfaces": ["10.0.0.1", "::1"]}}
        )
        self.assertIn("'::1'", message)

    def test_trusted_proxy_that_is_not_an_address_is_an_error(self) -> None:
        """Each trusted_proxies item must be an address or network."""
        self.assertOverrideError("presence.trusted_proxies", "10.0.0.1,proxy.example.org")

    def test_trusted_proxies_accept_addresses_and_networks(self) -> None:
        """Addresses and (non-strict) CIDR networks of both families are accepted."""
        config = self.load({"presence.trusted_proxies": "10.0.0.1,10.1.2.3/8,fd00::/8,::1"})
        self.assertEqual(len(config.presence.trusted_proxies), 4)

    # mdns_tag / topic
    def test_empty_mdns_tag_is_an_error(self) -> None:
        """p2p.mdns_tag must not be empty."""
        self.assertFileError("p2p.mdns_tag", {"p2p": {"mdns_tag": ""}})

    def test_mdns_tag_over_15_characters_is_an_error(self) -> None:
        """p2p.mdns_tag is at most 15 characters (RFC 6335)."""
        self.assertOverrideError("p2p.mdns_tag", "a" * 16)

    def test_mdns_tag_of_15_characters_is_accepted(self) -> None:
        """Exactly 15 characters is fine."""
        self.assertEqual(self.load({"p2p.mdns_tag": "a" * 15}).p2p.mdns_tag, "a" * 15)

    def test_mdns_tag_with_other_characters_is_an_error(self) -> None:
        """Only letters, digits and hyphens (ASCII) are allowed."""
        for tag in ["goop_mdns", "goop.mdns", "göop"]:
            self.assertOverrideError("p2p.mdns_tag", tag)

    def test_mdns_tag_with_edge_hyphen_is_an_error(self) -> None:
        """A tag may not start or end with a hyphen."""
        self.assertOverrideError("p2p.mdns_tag", "-goop")
        self.assertOverrideError("p2p.mdns_tag", "goop-")

    def test_mdns_tag_with_double_hyphen_is_an_error(self) -> None:
        """A tag may not hold "--"."""
        self.assertOverrideError("p2p.mdns_tag", "goop--mdns")

    def test_mdns_tag_without_letter_is_an_error(self) -> None:
        """A tag needs at least one letter."""
        self.assertOverrideError("p2p.mdns_tag", "1234")

    def test_empty_topic_is_an_error(self) -> None:
        """presence.topic must not be empty."""
        self.assertFileError("presence.topic", {"presence": {"topic": ""}})

    # TLS files
    def test_missing_tls_dir_is_an_error(self) -> None:
        """rendezvous_tls_dir must exist, as documented."""
        missing = os.path.join(self.cwd, "nope")
        message = self.assertOverrideError("presence.rendezvous_tls_dir", missing)
        self.assertEqual(
            message,
            f"presence.rendezvous_tls_dir (--rendezvous-tls-dir): {missing}: "
            "not a readable directory",
        )

    def test_tls_dir_that_is_a_file_is_an_error(self) -> None:
        """rendezvous_tls_dir must be a directory."""
        path = self.writeFile("", name="file.pem")
        self.assertOverrideError("presence.rendezvous_tls_dir", path)

    def test_unreadable_tls_dir_is_an_error(self) -> None:
        """A directory without read permission is refused."""
        if IS_ROOT:
            raise self.skipTest("root can read any directory")
        path = os.path.join(self.cwd, "tls")
        os.mkdir(path, 0)
        self.addCleanup(os.chmod, path, 0o700)
        self.assertOverrideError("presence.rendezvous_tls_dir", path)

    def test_missing_ca_file_is_an_error(self) -> None:
        """rendezvous_ca_file must exist."""
        message = self.assertFileError(
            "presence.rendezvous_ca_file", {"presence": {"rendezvous_ca_file": "ca.pem"}}
        )
        self.assertIn("not a readable file", message)

    def test_ca_file_that_is_a_directory_is_an_error(self) -> None:
        """rendezvous_ca_file must be a regular file."""
        self.assertOverrideError("presence.rendezvous_ca_file", self.cwd)

    # profile
    def test_label_over_4096_bytes_is_an_error(self) -> None:
        """profile.label is at most 4096 UTF-8 bytes (not characters)."""
        self.assertOverrideError("profile.label", "€" * 1366)  # 4098 bytes

    def test_label_of_4096_bytes_is_accepted(self) -> None:
        """Exactly 4096 bytes is fine."""
        self.assertEqual(len(self.load({"profile.label": "x" * 4096}).profile.label), 4096)

    def test_email_over_320_bytes_is_an_error(self) -> None:
        """profile.email is at most 320 bytes."""
        self.assertFileError("profile.email", {"profile": {"email": "a" * 321}})


class CliTests(ConfigTestCase):
    def test_every_field_has_exactly_one_option(self) -> None:
        """CLI_OPTIONS covers each config field once."""
        self.assertEqual(sorted(o.field for o in CLI_OPTIONS), sorted(FIELDS))

    def test_option_names_are_the_documented_ones(self) -> None:
        """The option names are exactly those of the brief."""
        names = {o.name for o in CLI_OPTIONS if not o.flag}
        self.assertEqual(
            names,
            set(
                "key-file label email listen-port mdns-tag mdns-interfaces topic ttl-seconds "
                "heartbeat-seconds rendezvous-port rendezvous-bind rendezvous-wan "
                "admin-password peer-db-path redis-url publish-rate-limit max-subscribers "
                "max-websockets "
                "max-websockets-per-ip max-peers max-peers-per-ip max-table-mb "
                "max-connections-per-ip "
                "request-timeout idle-timeout ipv6-prefix "
                "max-subscribers-per-ip rendezvous-tls-dir rendezvous-redirect-port "
                "rendezvous-ca-file trusted-proxies signature-window metrics-port metrics-bind "
                "http-addr".split()
            ),
        )
        self.assertEqual(len({o.name for o in CLI_OPTIONS}), len(CLI_OPTIONS))
        self.assertTrue(all(o.help for o in CLI_OPTIONS))

    def test_flags_set_the_non_default_value(self) -> None:
        """The five flags set the documented values."""
        flags = {o.name: (o.field, o.flag_value) for o in CLI_OPTIONS if o.flag}
        self.assertEqual(
            flags,
            {
                "rendezvous-only": ("presence.rendezvous_only", "true"),
                "rendezvous-host": ("presence.rendezvous_host", "true"),
                "no-p2p": ("p2p.enabled", "false"),
                "no-mdns": ("p2p.mdns_enabled", "false"),
                "require-signed": ("presence.require_signed", "true"),
            },
        )

    def test_overrides_from_cli_keeps_only_given_options(self) -> None:
        """None parameters and 0 flags are left out; given ones become dotted overrides."""
        values: dict[str, object] = {o.name: (0 if o.flag else None) for o in CLI_OPTIONS}
        values.update(
            {"rendezvous-port": "9000", "no-mdns": 1, "ttl-seconds": 30, "config": "x.json"}
        )
        self.assertEqual(
            overrides_from_cli(values),
            {
                "presence.rendezvous_port": "9000",
                "p2p.mdns_enabled": "false",
                "presence.ttl_seconds": "30",
            },
        )

    def test_twisted_usage_options_built_from_the_table_feed_load_config(self) -> None:
        """A usage.Options made from CLI_OPTIONS parses a command line into a Config."""

        class Options(usage.Options):
            optFlags = [[o.name, None, o.help] for o in CLI_OPTIONS if o.flag]
            optParameters = [[o.name, None, None, o.help] for o in CLI_OPTIONS if not o.flag]

        options = Options()
        options.parseOptions(
            ["--rendezvous-only", "--rendezvous-port", "9000", "--trusted-proxies", "10.0.0.0/8"]
        )
        config = self.load(overrides_from_cli(options))
        self.assertEqual(config.presence.rendezvous_port, 9000)
        self.assertTrue(config.presence.rendezvous_only)
        self.assertTrue(config.presence.rendezvous_host)
        self.assertEqual(config.presence.trusted_proxies, ("10.0.0.0/8",))


class JsonDictTests(ConfigTestCase):
    def test_to_json_dict_round_trips_through_a_file(self) -> None:
        """Writing to_json_dict() to a file and loading it gives the same config."""
        os.mkdir(os.path.join(self.cwd, "tls"))
        self.writeFile(
            {
                "profile": {"label": "Alice's node", "email": "a@example.org"},
                "p2p": {"listen_port": 4001, "mdns_interfaces": ["10.0.0.2"], "enabled": False},
                "presence": {
                    "rendezvous_wan": "https://rv.example.org/",
                    "rendezvous_only": True,
                    "rendezvous_tls_dir": "tls",
                    "trusted_proxies": ["10.0.0.0/8"],
                    "peer_db_path": "peers.db",
                },
                "viewer": {"http_addr": "[::1]:9999"},
            }
        )
        first = self.load()
        other = self.makeDir()
        path = self.writeFile(first.to_json_dict(), other)
        second = self.load(path=path)
        self.assertEqual(dataclasses.replace(second, source=first.source), first)

    def test_to_json_dict_writes_tuples_as_lists(self) -> None:
        """Tuple fields come out as JSON lists; all five sections are present."""
        data = self.load({"p2p.mdns_interfaces": "10.0.0.1"}).to_json_dict()
        self.assertEqual(data["p2p"]["mdns_interfaces"], ["10.0.0.1"])
        self.assertEqual(list(data), ["identity", "profile", "p2p", "presence", "viewer"])
        json.dumps(data)


class PropertyTests(ConfigTestCase):
    def assertConfigOrError(self, call: Callable[[], Config]) -> None:
        try:
            config = call()
        except ConfigError as e:
            message = str(e)
            self.assertTrue(message)
            self.assertTrue(message.isprintable(), repr(message))
        else:
            self.assertIsInstance(config, Config)

    @settings(max_examples=300, deadline=None)
    @given(content=file_contents)
    def test_any_json_file_gives_config_or_config_error(self, content: object) -> None:
        """Any JSON value as the file yields a Config or a one-line ConfigError."""
        self.writeFile(content)
        self.assertConfigOrError(self.load)

    @settings(max_examples=100, deadline=None)
    @given(data=st.binary(max_size=60) | st.text(max_size=60).map(str.encode))
    def test_any_bytes_as_file_give_config_or_config_error(self, data: bytes) -> None:
        """Arbitrary bytes as the file yield a Config or a one-line ConfigError."""
        self.writeFile(data)
        self.assertConfigOrError(self.load)

    @settings(max_examples=400, deadline=None)
    @given(field=st.sampled_from(FIELDS), text=override_text)
    def test_any_override_gives_config_or_config_error(self, field: str, text: str) -> None:
        """Any string for any field yields a Config or a one-line ConfigError."""
        self.assertConfigOrError(lambda: self.load({field: text}))

    @settings(max_examples=100, deadline=None)
    @given(port=st.integers(0, 65535), spaces=st.sampled_from(["", " "]))
    def test_port_overrides_round_trip(self, port: int, spaces: str) -> None:
        """Any port 0-65535 set by override is the port in the Config."""
        config = self.load(
            {
                "presence.rendezvous_port": f"{spaces}{port}{spaces}",
                "p2p.listen_port": str(port),
                "viewer.http_addr": f"127.0.0.1:{port}",
            }
        )
        self.assertEqual(config.presence.rendezvous_port, port)
        self.assertEqual(config.p2p.listen_port, port)
        self.assertEqual(config.viewer.viewer_port, port)

    @settings(max_examples=100, deadline=None)
    @given(port=st.integers(0, 65535))
    def test_port_variable_round_trips(self, port: int) -> None:
        """Any PORT 0-65535 becomes the rendezvous port when nothing else sets it."""
        self.assertEqual(self.load(environ={"PORT": str(port)}).presence.rendezvous_port, port)
