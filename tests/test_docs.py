"""The docs a new user reads say what the code does (each line here was once wrong)."""

from __future__ import annotations

import re
from pathlib import Path

from goop.config import CLI_OPTIONS

ROOT = Path(__file__).resolve().parent.parent


def read(path: str) -> str:
    return (ROOT / path).read_text()


def test_every_option_is_in_running_md() -> None:
    running = read("docs/running.md")
    missing = [o.name for o in CLI_OPTIONS if f"--{o.name}`" not in running]
    assert missing == [], missing


def test_running_md_does_not_promise_what_is_there() -> None:
    assert "arrives with" not in read("docs/running.md")


def test_the_makefile_names_its_own_variables() -> None:
    makefile = read("Makefile")
    for name in re.findall(r"make run (\w+)=", makefile):
        assert re.search(rf"^{name} \?=", makefile, re.M), name


def test_deploy_commands_clear_the_pidfile() -> None:
    for line in re.findall(r"`(twistd --nodaemon[^`]*)`", read("docs/deploy.md")):
        assert "--pidfile=" in line, line
    assert "--pidfile=" in read("docs/examples/goop-rendezvous.service")
    assert "--pidfile=" in read("docs/examples/supervisord.conf")


def test_supervisord_example_says_how_to_make_its_user() -> None:
    conf = read("docs/examples/supervisord.conf")
    assert "user=goop" not in conf or "useradd" in conf
    assert "terminated by" in read("docs/deploy.md")


def test_readme_says_why_the_demo_peer_goes_and_what_make_run_needs() -> None:
    readme = read("README.md")
    assert "ttl_seconds" in readme and "disappears" in readme
    assert "libgmp-dev" in readme and "RUN_ADMIN_PASSWORD" in readme
    assert "needs only Python" not in readme
