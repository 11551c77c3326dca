"""Runs trio inside the Twisted process and turns trio calls into Deferreds.

Two ways to host trio, same interface:

- ``guest``: trio guest mode on the reactor (`trio.lowlevel.start_guest_run`).
  trio's I/O wait runs in a helper thread; every trio step runs on the
  reactor thread between Twisted events.
- ``thread``: ``trio.run`` in a thread of its own; the reactor thread only
  ever sees results handed over with ``reactor.callFromThread``.

trio allows one guest run per thread, so a process has one bridge per
reactor (`shared_bridge`), shared by reference count: two adapters in one
process (the tests) run in the same trio run.

Either way no trio object leaves this module: `call` takes an async
function and returns a Deferred that fires on the reactor thread.
Cancelling that Deferred cancels the trio job.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import outcome
import trio
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

Mode = Literal["guest", "thread"]
MODES: Final = ("guest", "thread")


class BridgeStopped(Exception):
    """The trio side is not running (any more)."""


class TrioBridge:
    """One trio run hosted by a Twisted reactor."""

    log = Logger()

    def __init__(self, reactor: Any, mode: Mode = "guest") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown trio mode {mode!r}")
        self.reactor = reactor
        self.mode = mode
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._done: Deferred[None] | None = None
        self._stopping = False
        self._users = 0
        self._started: Deferred[None] | None = None
        self.thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._nursery is not None and not self._stopping

    def acquire(self) -> Deferred[None]:
        """Count one more user; the first starts trio. Fires once trio takes calls."""
        self._users += 1
        if self._done is None:
            self._started = self._start()
        assert self._started is not None
        return _chain(self._started)

    def release(self) -> Deferred[None]:
        """Count one user less; the last stops trio. Fires when that stop is done."""
        self._users -= 1
        if self._users > 0:
            return succeed(None)
        if _shared.get(id(self.reactor)) is self:
            del _shared[id(self.reactor)]
        return self.stop()

    def _start(self) -> Deferred[None]:
        started: Deferred[None] = Deferred()
        self._done = Deferred()

        async def root() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.reactor.callFromThread(started.callback, None)
                    await trio.sleep_forever()

        def finished(result: outcome.Outcome[None]) -> None:
            self._nursery = None
            if isinstance(result, outcome.Error):
                failure = Failure(result.error)  # type: ignore[no-untyped-call]
                if not started.called:
                    self.reactor.callFromThread(started.errback, failure)
                else:
                    self.reactor.callFromThread(self.log.failure, "the trio run failed", failure)
            assert self._done is not None
            self.reactor.callFromThread(self._done.callback, None)

        if self.mode == "guest":
            trio.lowlevel.start_guest_run(
                root,
                run_sync_soon_threadsafe=self.reactor.callFromThread,
                run_sync_soon_not_threadsafe=lambda f: self.reactor.callLater(0, f),
                done_callback=finished,
                host_uses_signal_set_wakeup_fd=True,
            )
        else:

            def run() -> None:
                finished(outcome.capture(trio.run, root))

            self.thread = threading.Thread(target=run, name="goop-trio", daemon=True)
            self.thread.start()
        return started

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Deferred[None]]:
        """Run ``fn`` as a long-lived trio task; returns its stopper.

        The stopper cancels the task and fires once it has really ended.
        A failure of ``fn`` is logged.
        """
        scope = trio.CancelScope()
        ended: Deferred[None] = Deferred()

        async def task() -> None:
            try:
                with scope:
                    await fn()
            except Exception:
                failure = Failure()  # type: ignore[no-untyped-call]
                self.reactor.callFromThread(self.log.failure, "a trio task failed", failure)
            finally:
                self.reactor.callFromThread(ended.callback, None)

        def begin() -> None:
            if self._nursery is None:
                self.reactor.callFromThread(ended.callback, None)
            else:
                self._nursery.start_soon(task)

        self._run_soon(begin, lambda: ended.callback(None))

        def stop() -> Deferred[None]:
            self._run_soon(scope.cancel, lambda: None)
            return _chain(ended)

        return stop

    def _run_soon(self, fn: Callable[[], None], otherwise: Callable[[], None]) -> None:
        if self._token is None:
            otherwise()
            return
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            otherwise()

    def stop(self) -> Deferred[None]:
        """Cancel everything in trio; fires when the run has ended."""
        if self._done is None:
            return succeed(None)
        if not self._stopping:
            self._stopping = True
            token, scope = self._token, self._scope
            if token is not None and scope is not None:
                try:
                    token.run_sync_soon(scope.cancel)
                except trio.RunFinishedError:
                    pass
        return _chain(self._done)

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Deferred[Any]:
        """Run ``await fn(*args)`` in trio; a Deferred of its result, on the reactor."""
        d: Deferred[Any] = Deferred(lambda _: cancel())
        scope = trio.CancelScope()

        def cancel() -> None:
            if self._token is not None:
                try:
                    self._token.run_sync_soon(scope.cancel)
                except trio.RunFinishedError:
                    pass

        def deliver(result: outcome.Outcome[Any]) -> None:
            if d.called:
                return
            if isinstance(result, outcome.Error):
                d.errback(Failure(result.error))  # type: ignore[no-untyped-call]
            else:
                d.callback(result.value)

        async def job() -> None:
            # Whatever happens (the run itself may be cancelled), d fires.
            result: outcome.Outcome[Any] = outcome.Error(BridgeStopped())
            try:
                with scope:
                    try:
                        result = outcome.Value(await fn(*args))
                    except Exception as e:
                        result = outcome.Error(e)
                if scope.cancelled_caught:
                    result = outcome.Error(CancelledError())
            finally:
                self.reactor.callFromThread(deliver, result)

        def spawn() -> None:
            if self._nursery is None:
                self.reactor.callFromThread(deliver, outcome.Error(BridgeStopped()))
                return
            self._nursery.start_soon(job)

        if self._token is None or self._stopping:
            d.errback(BridgeStopped())
            return d
        try:
            self._token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            d.errback(BridgeStopped())
        return d


_shared: dict[int, TrioBridge] = {}


def shared_bridge(reactor: Any, mode: Mode) -> TrioBridge:
    """The one trio run for ``reactor`` (trio allows one guest run per thread)."""
    bridge = _shared.get(id(reactor))
    if bridge is None or bridge.mode != mode:
        if bridge is not None:
            raise ValueError(f"trio already runs in {bridge.mode} mode here")
        bridge = _shared[id(reactor)] = TrioBridge(reactor, mode)
    return bridge


def _chain(d: Deferred[Any]) -> Deferred[Any]:
    """A new Deferred with ``d``'s result, leaving ``d`` usable for more chains."""
    out: Deferred[Any] = Deferred()

    def fire(result: Any) -> Any:
        if isinstance(result, Failure):
            out.errback(result)
            return None  # handed on; later chains see None
        out.callback(result)
        return result

    d.addBoth(fire)
    return out
