"""twistd plugin ``goop``: lazy, so ``twistd --help`` imports nothing of goop."""

from twisted.application.service import ServiceMaker

goop = ServiceMaker(  # type: ignore[no-untyped-call]
    "goop",
    "goop.tap",
    "goop presence and discovery: a peer, or with --rendezvous-only a presence broker",
    "goop",
)
