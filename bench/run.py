"""``make bench``: the rendezvous server under SSE fan-out load, one JSON line per cell.

For each cell (K subscribers x a publish rate) this starts a fresh
``twistd goop --rendezvous-only`` pinned to core 0, opens K ``/events``
streams and publishes presence messages from the load generator
(``bench/loadgen.py``: one subscriber process and one publisher process, both
pinned to core 1), then prints one JSON line and, at the end, Markdown
tables, which it also writes into ``docs/benchmarks.md``.

Besides the K x rate grid, the default run has a multi-instance cell (three
servers sharing one ``--peer-db-path`` file, publishers on the first,
subscribers spread over all three), steady-state cells (N peers each
heartbeating every 5 s over HTTP, watched by 100 subscribers on classic
streams or on ``/events?changes=1`` streams) and ``/ws`` cells: N peers each
heartbeating every 5 s on its own changes-only WebSocket
(``bench/wsload.py``, core 1), 100 changes-only streams watching, and the
server's RSS per idle socket on the way.

    .venv/bin/python bench/run.py                      # the default run (~20 min)
    .venv/bin/python bench/run.py --seconds 3 --cells 10:2,200:max --steady '' --ws '' --docs ''
    .venv/bin/python bench/run.py --cells '' --steady '' --ws 1000 --ws-seconds 5 --docs ''
    .venv/bin/python bench/run.py serve                # just the pinned server (cross-checks)

A cell is ``K:RATE[:INSTANCES]`` with RATE a number of msg/s, ``k/5`` or
``max``; ``--steady N,...`` and ``--ws N,...`` list the steady-state peer
counts. ``--py-spy DIR`` profiles the server in the steady-state and ``/ws``
windows. Only 127.0.0.1 is contacted; every wait is bounded; the server and
the generators are killed at the end and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import datetime
import http.client
import json
import math
import os
import platform
import queue
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
WSLOAD = Path(__file__).resolve().parent / "wsload.py"
# The 10,000-peer HTTP steady row (changes-only) on the day the /ws target
# ("< 20% of one core") was set (issue 10): the yardstick for other days.
HTTP_REFERENCE_PCT = 42.0
DOCS = ROOT / "docs" / "benchmarks.md"
DEFAULT_CELLS = ",".join(
    [f"{k}:{r}" for k in (10, 200, 1000, 5000) for r in ("k/5", "200", "max")]
    + ["300:200:3", "300:200:3:redis"]
)
ADMIN_PASSWORD = "X"
URL_RE = re.compile(r"rendezvous listening on (http://127\.0\.0\.1:(\d+))")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


class Proc:
    """A child process whose stdout lines are read by a thread into a queue."""

    def __init__(self, cmd: list[str], name: str, stdin: bool = False, **kw: Any) -> None:
        self.name = name
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.recent: deque[str] = deque(maxlen=60)
        # False: lines are only kept in ``recent`` (a chatty server's log
        # would otherwise pile up in the queue once nobody waits on it).
        self.queue_lines = True
        self.p = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
            **kw,
        )
        LIVE.add(self)
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    @property
    def pid(self) -> int:
        return self.p.pid

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.recent.append(line.rstrip("\n"))
            if self.queue_lines:
                self.lines.put(line)
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def _next_line(self, deadline: float, waiting_for: str) -> str:
        """The next stdout line before ``deadline``; raises on timeout or exit."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no {waiting_for} in time")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                tail = "\n".join(self.recent)
                raise RuntimeError(f"{self.name}: exited (code {self.p.wait()}):\n{tail}")
            return line

    def read_json(self, timeout: float) -> dict[str, Any]:
        """The next stdout line that is a JSON object; raises on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._next_line(deadline, f"answer within {timeout:.0f}s")
            if line.startswith("{"):
                obj: dict[str, Any] = json.loads(line)
                return obj

    def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            line = self._next_line(deadline, f"{pattern.pattern!r} within {timeout:.0f}s")
            m = pattern.search(line)
            if m:
                return m

    def stop(self, grace: float = 5.0) -> None:
        LIVE.discard(self)
        if self.p.poll() is not None:
            return
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait(5)


# Every child not yet stopped; `main` stops any left at exit.
LIVE: set[Proc] = set()


def stop_all() -> None:
    for proc in list(LIVE):
        proc.stop(grace=2.0)


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")": state is field 3, so utime (14) and stime (15) are [11], [12].
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_sys_s(pid: int) -> float:
    """The kernel part (stime) of ``proc_cpu_s``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[12]) / CLK_TCK


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_KB


class Server:
    def __init__(
        self, args: argparse.Namespace, peer_db_path: str = "", extra: tuple[str, ...] = ()
    ) -> None:
        self.args = args
        self.proc: Proc | None = None
        self.port = 0
        self.url = ""
        self.peer_db_path = peer_db_path
        self.extra = list(extra)  # more twistd goop options
        self._tmp = tempfile.TemporaryDirectory(prefix="goop-bench-")

    def start(self) -> None:
        twistd = str(Path(sys.executable).parent / "twistd")
        cmd = [
            "taskset", "-c", self.args.server_core, twistd, "--pidfile=", "-n", "goop",
            "--rendezvous-only", "--rendezvous-port", "0", "--publish-rate-limit", "0",
            "--max-subscribers", "0", "--max-subscribers-per-ip", "0",
            "--max-peers", "0", "--max-peers-per-ip", "0", "--max-connections-per-ip", "0",
            "--admin-password", ADMIN_PASSWORD,
        ]  # fmt: skip
        if self.peer_db_path:
            cmd += ["--peer-db-path", self.peer_db_path]
        cmd += self.extra
        self.proc = Proc(cmd, "server", cwd=self._tmp.name, stderr=subprocess.STDOUT)
        m = self.proc.wait_line(URL_RE, 30)
        self.url, self.port = m.group(1), int(m.group(2))
        self.proc.queue_lines = False  # its log from here on: only the tail, for errors

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = self.admin_json("/stats.json")
        return out

    def admin_json(self, path: str, timeout: float = 10) -> Any:
        """GET an admin-protected JSON endpoint (``/stats.json``, ``/peers.json``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        auth = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
        try:
            conn.request("GET", path, headers={"Authorization": f"Basic {auth}"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path} answered {resp.status}: {body[:200]!r}")
            return json.loads(body)
        finally:
            conn.close()

    def peer_rows(self, page: int = 5000) -> list[dict[str, Any]]:
        """Every row of the admin ``/peers.json``, page by page (bounded)."""
        rows: list[dict[str, Any]] = []
        for _ in range(1000):
            got = self.admin_json(f"/peers.json?offset={len(rows)}&limit={page}", timeout=60)
            rows.extend(got)
            if len(got) < page:
                break
        return rows

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.p.poll() is not None:
            tail = "\n".join(self.proc.recent)
            raise RuntimeError(f"server exited (code {self.proc.p.returncode}):\n{tail}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        self._tmp.cleanup()


# ---------------------------------------------------------------- one cell


def parse_cells(spec: str) -> list[tuple[int, str, int, str]]:
    """``K:RATE[:INSTANCES[:ENGINE]],...`` -> [(k, rate, instances, engine)]; ENGINE is
    ``sqlite`` (the default: instances share a peer_db_path file) or ``redis``."""
    cells = []
    for item in spec.split(","):
        if not item.strip():
            continue
        k, _, rest = item.strip().partition(":")
        rate, _, inst = rest.partition(":")
        inst, _, engine = inst.partition(":")
        engine = engine.strip() or "sqlite"
        if engine not in ("sqlite", "redis"):
            raise ValueError(f"engine must be sqlite or redis in {item!r}")
        rate = rate.strip().lower() or "max"
        if rate not in ("max", "k/5"):
            float(rate)  # raises on nonsense
        n = int(inst) if inst.strip() else 1
        if n < 1:
            raise ValueError(f"instances must be >= 1 in {item!r}")
        cells.append((int(k), rate, n, engine))
    return cells


def target_rate(k: int, rate: str) -> float:
    """msg/s; 0 means as fast as possible."""
    if rate == "max":
        return 0.0
    if rate == "k/5":
        return k / 5
    return float(rate)


def stop_procs(procs: list[Proc | None], servers: list[Server]) -> None:
    # A second Ctrl-C must not cut the cleanup short.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for p in procs:
            if p is not None:
                p.stop()
        for server in servers:
            server.stop()
    finally:
        signal.signal(signal.SIGINT, previous)


def start_servers(
    args: argparse.Namespace, instances: int, tmp: str, redis_url: str = ""
) -> list[Server]:
    """One server, or ``instances`` sharing one peer_db_path file in ``tmp`` (or one Redis)."""
    db = str(Path(tmp) / "peers.db") if instances > 1 and not redis_url else ""
    servers = []
    for _ in range(instances):
        server = Server(args, db, ("--redis-url", redis_url) if redis_url else ())
        servers.append(server)
        server.start()
        server.stats()  # warm the admin route before the baseline
    return servers


def start_redis(core: str) -> Any:
    """A real redis-server (the tests' helper: free port, temp dir, AOF), on ``core``."""
    sys.path.insert(0, str(ROOT))
    from tests.redisproc import RedisServer

    server = RedisServer()
    assert server.proc is not None
    subprocess.run(["taskset", "-p", "-c", core, str(server.proc.pid)], capture_output=True)
    return server


def redis_commands(url: str) -> tuple[int, int]:
    """(commands Redis ran, scripts called: EVALSHA round trips) since it started; the
    commands a script runs inside it count among the first."""
    import redis

    client = redis.Redis.from_url(url)
    total = int(client.info("stats")["total_commands_processed"])
    scripts = int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    return total, scripts


def run_cell(
    args: argparse.Namespace,
    k: int,
    rate_spec: str,
    index: int,
    instances: int = 1,
    engine: str = "sqlite",
) -> dict[str, Any]:
    rate = target_rate(k, rate_spec)
    peers = max(1, min(k, args.peers_max))
    seconds = args.seconds
    py = sys.executable
    gen = ["taskset", "-c", args.gen_core, py, str(LOADGEN)]
    servers: list[Server] = []
    sub: Proc | None = None
    pub: Proc | None = None
    tmp = tempfile.TemporaryDirectory(prefix="goop-bench-db-")
    redis_server = start_redis(args.server_core) if engine == "redis" else None
    redis_url = redis_server.url if redis_server is not None else ""
    commands0 = commands1 = (0, 0)
    try:
        servers = start_servers(args, instances, tmp.name, redis_url)
        server = servers[0]  # publishers talk to this one
        pids = [s.pid for s in servers]
        time.sleep(0.3)
        rss0 = sum(proc_rss_kb(pid) for pid in pids)
        ports = ",".join(str(s.port) for s in servers)
        sub_cmd = [
            *gen,
            "subscribe", "--port", ports, "--k", str(k), "--parser", args.parser,
            "--drain-max", str(args.drain_max), "--drain-idle", str(args.drain_idle),
        ]  # fmt: skip
        sub = Proc(sub_cmd, "subscribers", stdin=True)
        ready = sub.read_json(90)
        if ready.get("ready") != k:
            raise RuntimeError(f"only {ready.get('ready')}/{k} subscribers connected: {ready}")
        time.sleep(0.5)
        for s in servers:
            s.check_alive()
        rss1 = sum(proc_rss_kb(pid) for pid in pids)
        pub_cmd = [
            *gen,
            "publish", "--port", str(server.port), "--rate", str(rate), "--seconds", str(seconds),
            "--peers", str(peers), "--peer-prefix", f"bench-{index}-",
            "--conns", str(args.conns), "--depth", str(args.max_depth if rate == 0 else args.depth),
        ]  # fmt: skip
        pub = Proc(pub_cmd, "publisher", stdin=True)
        pub.read_json(30)
        stats0 = [s.stats() for s in servers]
        if redis_url:
            commands0 = redis_commands(redis_url)
        cpu0 = sum(proc_cpu_s(pid) for pid in pids)
        t0 = time.monotonic()
        sub.send("go")
        sub.read_json(10)
        pub.send("start")
        pres = pub.read_json(seconds + 60)
        sub.send("drain " + json.dumps(pres.pop("latest")))
        sres = sub.read_json(args.drain_max + 60)
        wall = time.monotonic() - t0
        cpu1 = sum(proc_cpu_s(pid) for pid in pids)
        if redis_url:
            commands1 = redis_commands(redis_url)
        for s in servers:
            s.check_alive()
        stats1 = [s.stats() for s in servers]
        sub.send("quit")
    finally:
        stop_procs([pub, sub], servers)
        if redis_server is not None:
            redis_server.stop()
        tmp.cleanup()

    server_cpu = cpu1 - cpu0
    events = sres["events"]
    send_s = pres["send_s"]
    accepted_per_s = pres["accepted"] / send_s
    gen_cpu = sres["cpu_s"] + pres["cpu_s"]
    return {
        "k": k,
        "rate": rate_spec if rate_spec == "max" else rate,
        "instances": instances,
        "engine": engine if instances > 1 else "memory",
        # Per accepted publish over the window: Redis commands (those a script
        # runs inside included, and every instance's tailing and pruning), and
        # script calls (round trips on the publish path: one EVALSHA each).
        "redis_commands_per_publish": round((commands1[0] - commands0[0]) / pres["accepted"], 2)
        if redis_url and pres["accepted"]
        else None,
        "redis_scripts_per_publish": round((commands1[1] - commands0[1]) / pres["accepted"], 3)
        if redis_url and pres["accepted"]
        else None,
        "seconds": seconds,
        "peers": peers,
        "sent": pres["sent"],
        "accepted": pres["accepted"],
        "errors": pres["errors"],
        "unanswered": pres["unanswered"],
        "publishes_per_s": round(accepted_per_s, 1),
        "accepted_of_target": round(pres["accepted"] / (rate * seconds), 4) if rate else None,
        "delivered": events,
        "delivered_per_s": round(sres["events_per_s"], 1),
        "latest_state_ratio": round(sres["latest_ratio"], 6),
        "latest_state_complete": sres["complete"],
        "lat_p50_ms": round(sres["lat_p50_ms"], 2),
        "lat_p99_ms": round(sres["lat_p99_ms"], 2),
        "lat_max_ms": round(sres["lat_max_ms"], 2),
        "server_cpu_ms_per_1k": round(server_cpu * 1e6 / events, 2) if events else None,
        "server_cpu_pct": round(100 * server_cpu / wall, 1),
        "rss_idle_kb": rss0,
        "rss_per_sub_kb": round((rss1 - rss0) / k, 2),
        "stall_ms": max(st["window_max_stall_ms"] for st in stats1),
        "gc_ms": max(st.get("window_max_gc_ms", 0.0) for st in stats1),
        "stall_ms_before": max(st["window_max_stall_ms"] for st in stats0),
        "paused_subs_end": sum(st.get("paused_subscribers", 0) for st in stats1),
        "gen_cpu_pct": round(100 * gen_cpu / wall, 1),
        "gen_sub_cpu_s": round(sres["cpu_s"], 2),
        "gen_pub_cpu_s": round(pres["cpu_s"], 2),
        "pub_late_max_s": pres["late_max_s"],
        "subs_closed": sres["closed"],
        "connect_s": ready["connect_s"],
        "wall_s": round(wall, 2),
    }


SPY_STARTED = re.compile(r"Sampling process")


def start_profile(args: argparse.Namespace, pid: int, name: str, seconds: float) -> Proc | None:
    """With ``--py-spy DIR``: sample the server during a window of ``seconds`` (py-spy on
    the generator's core, not pausing the server) into DIR/NAME.txt as collapsed stacks
    (``bench/spysum.py`` sums them up). Returns once sampling has begun; it stops a
    second before the window ends, so nothing after the window is in the profile."""
    if not args.py_spy:
        return None
    spy = Path(sys.executable).parent / "py-spy"
    out = Path(args.py_spy) / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    # --native needs to stop the server for each sample: fewer samples then.
    how = (
        ["--native", "--rate", "100"] if args.py_spy_native else ["--nonblocking", "--rate", "250"]
    )
    cmd = [
        "taskset", "-c", args.gen_core, str(spy), "record", *how, "--format", "raw",
        "-d", str(max(1, int(seconds) - 1)), "-p", str(pid), "-o", str(out),
    ]  # fmt: skip
    proc = Proc(cmd, "py-spy", stderr=subprocess.STDOUT)
    proc.wait_line(SPY_STARTED, 30)
    return proc


def run_steady(args: argparse.Namespace, n: int, changes: bool, index: int) -> dict[str, Any]:
    """N peers heartbeating every 5 s (1 message in 100 a change), S subscribers."""
    rate = n / 5
    subs = args.steady_subs
    seconds = args.steady_seconds
    py = sys.executable
    gen = ["taskset", "-c", args.gen_core, py, str(LOADGEN)]
    servers: list[Server] = []
    sub: Proc | None = None
    pub: Proc | None = None
    spy: Proc | None = None
    try:
        servers = start_servers(args, 1, "")
        server = servers[0]
        pub_cmd = [
            *gen,
            "publish", "--port", str(server.port), "--rate", str(rate), "--seconds", str(seconds),
            "--peers", str(n), "--peer-prefix", f"steady-{index}-", "--conns", str(args.conns),
            "--depth", str(args.depth), "--steady", "--register", "--change-every", "100",
        ]  # fmt: skip
        pub = Proc(pub_cmd, "publisher", stdin=True)
        registered = pub.read_json(120)
        sub_cmd = [
            *gen,
            "subscribe", "--port", str(server.port), "--k", str(subs), "--steady",
            "--expect-peers", str(n),
            "--drain-max", str(args.drain_max), "--drain-idle", str(args.drain_idle),
            *(["--changes"] if changes else []),
        ]  # fmt: skip
        sub = Proc(sub_cmd, "subscribers", stdin=True)
        ready = sub.read_json(90)
        if ready.get("ready") != subs:
            raise RuntimeError(f"only {ready.get('ready')}/{subs} subscribers connected: {ready}")
        server.check_alive()
        server.stats()  # starts a new stall window
        spy = start_profile(
            args, server.pid, f"steady-{n}-{'changes' if changes else 'classic'}", seconds
        )
        cpu0 = proc_cpu_s(server.pid)
        sys0 = proc_sys_s(server.pid)
        t0 = time.monotonic()
        sub.send("go")
        sub.read_json(10)
        pub.send("start")
        pres = pub.read_json(seconds + 60)
        cpu1 = proc_cpu_s(server.pid)
        sys1 = proc_sys_s(server.pid)
        pub_wall = time.monotonic() - t0
        stats1 = server.stats()
        sub.send("drain " + json.dumps(pres.pop("latest")))
        sres = sub.read_json(args.drain_max + 60)
        wall = time.monotonic() - t0
        server.check_alive()
        rss = proc_rss_kb(server.pid)
        sub.send("quit")
        if spy is not None:
            spy.p.wait(30)
    finally:
        stop_procs([pub, sub, spy], servers)

    window = sres["go_to_drain_s"] or pub_wall
    nbytes = sres["bytes_at_drain"]
    gen_cpu = sres["cpu_s"] + pres["cpu_s"]
    return {
        "mode": "steady",
        "peers": n,
        "stream": "changes" if changes else "classic",
        "subscribers": subs,
        "seconds": seconds,
        "target_per_s": rate,
        "accepted": pres["accepted"],
        "errors": pres["errors"],
        "publishes_per_s": round(pres["accepted"] / pres["send_s"], 1),
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / pub_wall, 1),
        "server_sys_pct": round(100 * (sys1 - sys0) / pub_wall, 1),
        "bytes_per_s": round(nbytes / window),
        "bytes_per_s_per_sub": round(nbytes / window / subs),
        "events_per_s_per_sub": round(sres["events"] / window / subs, 1),
        "change_lat_p50_ms": round(sres["lat_p50_ms"], 2),
        "change_lat_p99_ms": round(sres["lat_p99_ms"], 2),
        "change_lat_max_ms": round(sres["lat_max_ms"], 2),
        "changes_timed": sres["lat_samples"],
        "latest_state_ratio": round(sres["latest_ratio"], 6),
        "stall_ms": stats1["window_max_stall_ms"],
        "gc_ms": stats1.get("window_max_gc_ms", 0.0),
        "rss_kb": rss,
        "gen_cpu_pct": round(100 * gen_cpu / wall, 1),
        "register_s": registered.get("register_s"),
        "subs_closed": sres["closed"],
        "wall_s": round(wall, 2),
    }


def verifications_per_s(core: str, seconds: float = 2.0) -> float:
    """Signed presence messages one core verifies per second (a bounded loop, pinned)."""
    from dataclasses import replace

    from goop.identity import _from_seed
    from goop.message import PresenceMessage
    from goop.signing import Verifier, sign, signing_key

    os.sched_setaffinity(0, {int(core.split(",")[0])})
    try:
        me = _from_seed(b"\x09" * 32, "")
        message = PresenceMessage("update", me.peer_id, "bench", ts=1796203421127)
        message = replace(message, sig=sign(signing_key(me.seed), message))
        verifier = Verifier()
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds and done < 1_000_000:
            for _ in range(100):
                verifier.check(message)
            done += 100
        return done / (time.perf_counter() - t0)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def run_ws(args: argparse.Namespace, n: int, index: int, signed: bool = False) -> dict[str, Any]:
    """N peers on /ws (changes-only sockets) heartbeating every 5 s, S changes-only SSE
    streams; and, on the way, the RSS cost of the N sockets while idle. ``signed``:
    every heartbeat signed by the peer's key (the server verifies each one)."""
    subs = args.ws_subs
    seconds = args.ws_seconds
    interval = 5.0
    py = sys.executable
    gen = ["taskset", "-c", args.gen_core, py]
    extra = (
        "--max-websockets", "0", "--max-websockets-per-ip", "0",
        "--ttl-seconds", str(args.ws_ttl),
    )  # fmt: skip
    servers: list[Server] = []
    ws: Proc | None = None
    sub: Proc | None = None
    spy: Proc | None = None
    try:
        server = Server(args, extra=extra)
        servers = [server]
        server.start()
        server.stats()
        ws_cmd = [
            *gen, str(WSLOAD), "--port", str(server.port), "--n", str(n),
            "--prefix", f"ws-{index}-",
            "--interval", str(interval), "--connect-timeout", str(args.ws_open_timeout),
            "--open", args.ws_open, *(["--signed"] if signed else []),
        ]  # fmt: skip
        ws = Proc(ws_cmd, "ws peers", stdin=True)
        registered = ws.read_json(180)
        if registered.get("registered") != n:
            raise RuntimeError(f"registered {registered.get('registered')}/{n} peers")
        time.sleep(1.0)  # the registering connections are closed; let the server settle
        server.check_alive()
        rss0 = proc_rss_kb(server.pid)
        ws.send("open")
        opened = ws.read_json(args.ws_open_timeout + 60)
        if opened.get("open") != n:
            raise RuntimeError(f"only {opened.get('open')}/{n} sockets open: {opened}")
        time.sleep(1.0)
        server.check_alive()
        idle = server.stats()
        rss1 = proc_rss_kb(server.pid)
        if idle["peers"] != n or idle["subscribers"] != n:
            raise RuntimeError(
                f"server counts {idle['peers']} peers, {idle['subscribers']} subscribers; "
                f"expected {n} of each"
            )
        sub_cmd = [
            *gen, str(LOADGEN),
            "subscribe", "--port", str(server.port), "--k", str(subs), "--steady", "--changes",
            "--expect-peers", str(n),
            "--drain-max", str(args.drain_max), "--drain-idle", str(args.drain_idle),
        ]  # fmt: skip
        sub = Proc(sub_cmd, "subscribers", stdin=True)
        ready = sub.read_json(120)
        if ready.get("ready") != subs:
            raise RuntimeError(f"only {ready.get('ready')}/{subs} subscribers connected: {ready}")
        ws.send("go")
        ws.read_json(10)
        # Every peer heartbeats at least once before the window, and the
        # server's pings (every 5 s per socket) are in their cycle.
        time.sleep(args.ws_warmup)
        server.check_alive()
        spy = start_profile(args, server.pid, f"ws-{n}", seconds)
        sub.send("go")
        sub.read_json(10)
        ws.send("stats")
        g0 = ws.read_json(10)
        # The window: server CPU from cpu0 to cpu1; stalls and accepted messages
        # (the event id count) between two /stats.json reads just inside it.
        cpu0 = proc_cpu_s(server.pid)
        sys0 = proc_sys_s(server.pid)
        t0 = time.monotonic()
        stats0 = server.stats()  # starts a new stall window
        s0 = time.monotonic()
        time.sleep(max(0.0, seconds - (s0 - t0)))
        s1 = time.monotonic()
        stats1 = server.stats()
        s2 = time.monotonic()
        cpu1 = proc_cpu_s(server.pid)
        sys1 = proc_sys_s(server.pid)
        wall = time.monotonic() - t0
        ws.send("stats")
        g1 = ws.read_json(10)
        # Heartbeats stop, so the table holds still while it is paged through.
        ws.send("stop")
        ws.read_json(10)
        stopped = time.time()
        sub.send("drain {}")
        sres = sub.read_json(args.drain_max + 60)
        server.check_alive()
        rss2 = proc_rss_kb(server.pid)
        # Every peer's heartbeats reached the server: each was heard within the
        # last interval (plus slack) before they stopped, and none went offline.
        prefix = "" if signed else f"ws-{index}-"  # signing peers have real IDs
        mine = {r["peer_id"]: r for r in server.peer_rows() if r["peer_id"].startswith(prefix)}
        fresh = sum(1 for r in mine.values() if stopped - r["last_seen"] <= interval + 1.0)
        ws.send("quit")
        sub.send("quit")
        if spy is not None:
            spy.p.wait(30)
    finally:
        stop_procs([ws, sub, spy], servers)

    g_wall = g1["t"] - g0["t"]
    # Each count was read somewhere inside its request: time them at the middle.
    accepted = (stats1["event_head"] - stats0["event_head"]) / ((s1 + s2) / 2 - (t0 + s0) / 2)
    gen_cpu = g1["cpu_s"] - g0["cpu_s"] + sres["cpu_s"]
    return {
        "mode": "ws",
        "peers": n,
        "signed": signed,
        "subscribers": subs,
        "seconds": seconds,
        "target_per_s": n / interval,
        "heartbeats_per_s": round((g1["heartbeats"] - g0["heartbeats"]) / g_wall, 1),
        "accepted_per_s": round(accepted, 1),
        "pongs_per_s": round((g1["pongs"] - g0["pongs"]) / g_wall, 1),
        "keepalives_per_s": round((g1.get("keepalives", 0) - g0.get("keepalives", 0)) / g_wall, 1),
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / wall, 1),
        "server_sys_pct": round(100 * (sys1 - sys0) / wall, 1),
        "stall_ms": stats1["window_max_stall_ms"],
        "gc_ms": stats1.get("window_max_gc_ms", 0.0),
        "gc_generation": stats1.get("window_max_gc_generation"),
        "rss_before_kb": rss0,
        "rss_idle_kb": rss1,
        "rss_kb": rss2,
        "rss_per_socket_kb": round((rss1 - rss0) / n, 2),
        "peers_fresh": fresh,
        "peers_end": len(mine),
        "sockets_closed": g1["closed"],
        "hb_partial": g1["hb_partial"],
        "hb_late_max_s": g1["late_max_s"],
        "sse_bytes_per_s": round(sres["bytes_at_drain"] / max(1e-9, sres["go_to_drain_s"])),
        "sse_events": sres["events"],
        "sse_closed": sres["closed"],
        "gen_cpu_pct": round(100 * gen_cpu / wall, 1),
        "register_s": registered.get("register_s"),
        "handshakes_s": opened.get("handshakes_s"),
        "open_s": opened.get("open_s"),
        "open_mode": args.ws_open,
        "snapshot_bytes": opened.get("bytes_in"),
        "snapshot_frames_min": opened.get("texts_min"),
        "wall_s": round(wall, 2),
    }


# ---------------------------------------------------------------- report


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import twisted

        tw = twisted.__version__
    except ImportError:
        tw = "?"
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "goop"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        commit = f"{head} (goop/ with uncommitted changes)" if dirty else head
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return {
        "commit": commit or "?",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": tw,
    }


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| K | target msg/s | publishes/s accepted | % of target | delivered events/s "
        "| latest state delivered | latency p50 / p99 / max ms | server CPU ms per 1k events "
        "| server CPU % | RSS per idle sub KB | longest stall ms | generator CPU % (core 1) |\n"
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n"
    )
    out = []
    for r in rows:
        if "error" in r:
            out.append(f"| {r['k']} | {r['rate']} | failed: {r['error']} ||||||||||")
            continue
        target = "max" if r["rate"] == "max" else _fmt(float(r["rate"]), 0)
        kk = f"{r['k']:,}" + (
            f" ({r['instances']} instances, {r.get('engine', 'sqlite')})"
            if r.get("instances", 1) > 1
            else ""
        )
        pct = "-" if r["accepted_of_target"] is None else f"{100 * r['accepted_of_target']:.1f}%"
        lat = f"{_fmt(r['lat_p50_ms'])} / {_fmt(r['lat_p99_ms'])} / {_fmt(r['lat_max_ms'])}"
        out.append(
            f"| {kk} | {target} | {_fmt(r['publishes_per_s'])} | {pct} "
            f"| {_fmt(r['delivered_per_s'], 0)} | {100 * r['latest_state_ratio']:.2f}% | {lat} "
            f"| {_fmt(r['server_cpu_ms_per_1k'], 2)} | {_fmt(r['server_cpu_pct'])} "
            f"| {_fmt(r['rss_per_sub_kb'])} | {_fmt(r['stall_ms'])} | {_fmt(r['gen_cpu_pct'])} |"
        )
    return head + "\n".join(out) + "\n"


def steady_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| peers | streams | subscribers | heartbeats/s accepted | server CPU % of one core "
        "| bytes/s to all subscribers | bytes/s per subscriber | events/s per subscriber "
        "| change latency p50 / p99 ms | latest state delivered | longest stall ms "
        "| server RSS MB | generator CPU % |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n"
    )
    out = []
    for r in rows:
        if "error" in r:
            out.append(f"| {r['peers']} | {r['stream']} | failed: {r['error']} ||||||||||")
            continue
        out.append(
            f"| {r['peers']:,} | {r['stream']} | {r['subscribers']} "
            f"| {_fmt(r['publishes_per_s'])} | {_fmt(r['server_cpu_pct'])} "
            f"| {_fmt(r['bytes_per_s'])} | {_fmt(r['bytes_per_s_per_sub'])} "
            f"| {_fmt(r['events_per_s_per_sub'])} "
            f"| {_fmt(r['change_lat_p50_ms'])} / {_fmt(r['change_lat_p99_ms'])} "
            f"| {100 * r['latest_state_ratio']:.2f}% | {_fmt(r['stall_ms'])} "
            f"| {r['rss_kb'] / 1024:.0f} | {_fmt(r['gen_cpu_pct'])} |"
        )
    return head + "\n".join(out) + "\n"


def ws_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| peers on /ws | SSE subscribers (changes) | heartbeats/s sent / accepted "
        "| server pings / pongs per s | server CPU % of one core (kernel part) "
        "| longest stall ms "
        "| RSS per idle socket KB "
        "| server RSS MB: registered / sockets open / end | peers heard in the last 6 s "
        "| generator CPU % |\n"
        "|---:|---:|---|---:|---:|---:|---:|---|---:|---:|\n"
    )
    out = []
    for r in rows:
        if "error" in r:
            out.append(f"| {r['peers']:,} | failed: {r['error']} |||||||||")
            continue
        mb = "{:.0f} / {:.0f} / {:.0f}".format(
            r["rss_before_kb"] / 1024, r["rss_idle_kb"] / 1024, r["rss_kb"] / 1024
        )
        out.append(
            f"| {r['peers']:,}{' signed' if r.get('signed') else ''} | {r['subscribers']} "
            f"| {_fmt(r['heartbeats_per_s'])} / {_fmt(r['accepted_per_s'])} "
            f"| {_fmt(r['pongs_per_s'])} / {_fmt(r.get('keepalives_per_s'))} "
            f"| {_fmt(r['server_cpu_pct'])} "
            f"({_fmt(r.get('server_sys_pct'))}) | {_fmt(r['stall_ms'])} "
            f"| {_fmt(r['rss_per_socket_kb'])} | {mb} | {r['peers_fresh']:,} / {r['peers']:,} "
            f"| {_fmt(r['gen_cpu_pct'])} |"
        )
    return head + "\n".join(out) + "\n"


def targets(rows: list[dict[str, Any]]) -> str:
    steady = [r for r in rows if r.get("mode") == "steady"]
    ws = [r for r in rows if r.get("mode") == "ws"]
    shared = [r for r in rows if r.get("instances", 1) > 1 and "error" not in r]
    rows = [r for r in rows if r.get("mode") not in ("steady", "ws") and r.get("instances", 1) == 1]

    def cell(k: int, rate: str) -> dict[str, Any] | None:
        for r in rows:
            if r["k"] == k and "error" not in r and str(r["rate"]) in (rate, f"{rate}.0"):
                return r
        return None

    lines = []
    for r in shared:
        per = r.get("redis_commands_per_publish")
        trips = r.get("redis_scripts_per_publish")
        lines.append(
            f"- K={r['k']:,} across {r['instances']} instances on one {r['engine']} store, "
            f"{r['rate']} msg/s: p99 {_fmt(r['lat_p99_ms'])} ms, all instances' CPU "
            f"{_fmt(r['server_cpu_pct'])}% of one core"
            + (
                f"; round trips per publish: {trips} (one EVALSHA; pruning's scripts "
                f"included), {per} Redis commands per publish in all (those inside the "
                "script, and every instance's tailing every 20 ms)"
                if per is not None
                else ""
            )
        )
    m = cell(1000, "max")
    if m:
        ok = m["server_cpu_ms_per_1k"] is not None and m["server_cpu_ms_per_1k"] <= 5
        full = m["latest_state_ratio"] >= 1.0
        lines.append(
            f"- K=1000 max rate: {_fmt(m['server_cpu_ms_per_1k'], 2)} ms CPU per 1,000 events "
            f"(target ≤ 5: {'met' if ok else 'NOT met'}), latest state delivered "
            f"{100 * m['latest_state_ratio']:.2f}% (target 100%: {'met' if full else 'NOT met'})"
        )
    t = cell(1000, "200")
    if t:
        acc = t["accepted_of_target"] or 0
        lines.append(
            f"- K=1000, 200 msg/s: {100 * acc:.1f}% of the target publishes accepted "
            f"(target ≥ 99%: {'met' if acc >= 0.99 else 'NOT met'}), "
            f"p99 {_fmt(t['lat_p99_ms'])} ms "
            f"(target ≤ 15: {'met' if t['lat_p99_ms'] <= 15 else 'NOT met'})"
        )
    big = [r for r in rows if "error" not in r and r["k"] >= 1000]
    if big:
        rss = max(big, key=lambda r: r["k"])
        lines.append(
            f"- RSS per idle subscriber (K={rss['k']}): {_fmt(rss['rss_per_sub_kb'])} KB "
            f"(target ≤ 20: {'met' if rss['rss_per_sub_kb'] <= 20 else 'NOT met'})"
        )
    ok_rows = [r for r in rows if "error" not in r]
    if ok_rows:
        heavy = max(ok_rows, key=lambda r: r["server_cpu_pct"] * r["k"])
        worst = max(ok_rows, key=lambda r: r["stall_ms"])
        lines.append(
            f"- Longest reactor stall: {_fmt(worst['stall_ms'])} ms (K={worst['k']}, "
            f"{worst['rate']}); in the heaviest cell (K={heavy['k']}, {heavy['rate']}) "
            f"{_fmt(heavy['stall_ms'])} ms (target ≤ 50: "
            f"{'met' if heavy['stall_ms'] <= 50 else 'NOT met'})"
        )
    http_cpu: dict[int, float] = {}
    for r in steady:
        if "error" not in r and r["peers"] == 10000 and r["stream"] == "changes":
            ok = r["server_cpu_pct"] < 20
            lines.append(
                f"- 10,000 steady peers, {r['subscribers']} changes-only subscribers: server "
                f"{_fmt(r['server_cpu_pct'])}% of one core (target < 20%: "
                f"{'met' if ok else 'NOT met'})"
            )
        if "error" not in r and r["stream"] == "changes":
            http_cpu[r["peers"]] = r["server_cpu_pct"]
    unsigned_cpu = {r["peers"]: r["server_cpu_pct"] for r in ws if "error" not in r
                    and not r.get("signed")}  # fmt: skip
    for r in ws:
        if "error" in r:
            continue
        if r.get("signed"):
            base = unsigned_cpu.get(r["peers"])
            vs = (
                f"; unsigned in this run: {_fmt(base)}%, so checking signatures costs "
                f"{_fmt(r['server_cpu_pct'] - base)} points ({r['server_cpu_pct'] / base:.2f}x)"
                if base
                else ""
            )
            lines.append(
                f"- {r['peers']:,} signing peers heartbeating over /ws (every heartbeat "
                f"verified): server {_fmt(r['server_cpu_pct'])}% of one core{vs}; accepted "
                f"{_fmt(r['accepted_per_s'])}/s of {_fmt(r['heartbeats_per_s'])}/s sent; "
                f"longest stall {_fmt(r['stall_ms'])} ms"
            )
            continue
        target = ""
        if r["peers"] == 10000:
            ok = r["server_cpu_pct"] < 20
            target = f" (target < 20%: {'met' if ok else 'NOT met'} as measured"
            h = http_cpu.get(10000, 0.0)
            if h > 0:
                # The issue set "< 20%" on a machine where the HTTP row was 42%;
                # this shared machine's speed varies 2-3x from day to day, so the
                # same-run HTTP row is the yardstick.
                scaled = r["server_cpu_pct"] * HTTP_REFERENCE_PCT / h
                target += (
                    f"; scaled to the reference machine, where this HTTP row was "
                    f"{HTTP_REFERENCE_PCT:g}%: {_fmt(scaled)}%, "
                    f"{'met' if scaled < 20 else 'NOT met'}"
                )
            target += ")"
        vs = ""
        if r["peers"] in http_cpu and http_cpu[r["peers"]] > 0:
            h = http_cpu[r["peers"]]
            ratio = r["server_cpu_pct"] / h
            vs = (
                f"; the same peers heartbeating over HTTP POST in this run: {_fmt(h)}% "
                f"(/ws takes {ratio:.2f}x that)"
            )
        lines.append(
            f"- {r['peers']:,} peers heartbeating over /ws, {r['subscribers']} changes-only "
            f"subscribers: server {_fmt(r['server_cpu_pct'])}% of one core{target}{vs}; "
            f"longest stall {_fmt(r['stall_ms'])} ms"
            + (
                f" (longest garbage collection in the window: {_fmt(r['gc_ms'])} ms)"
                if r["gc_ms"] >= 1
                else ""
            )
        )
        ok = r["rss_per_socket_kb"] <= 20
        lines.append(
            f"- Idle /ws socket ({r['peers']:,} open): {_fmt(r['rss_per_socket_kb'])} KB of "
            f"server RSS each (target ≤ 20: {'met' if ok else 'NOT met'})"
        )
    return "\n".join(lines) + "\n"


def write_docs(path: Path, text: str) -> None:
    block = f"{START}\n{text}{END}\n"
    old = path.read_text() if path.exists() else "# Benchmarks\n\n## Results\n\n"
    if START in old and END in old:
        rest = old.split(END, 1)[1].lstrip("\n")
        new = old.split(START, 1)[0] + block + ("\n" + rest if rest else "")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


# ---------------------------------------------------------------- main


def serve(args: argparse.Namespace) -> None:
    server = Server(args)
    try:
        server.start()
        print(json.dumps({"url": server.url, "pid": server.pid}), flush=True)
        deadline = time.monotonic() + args.serve_seconds
        while time.monotonic() < deadline:
            server.check_alive()
            time.sleep(0.5)
    finally:
        server.stop()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", choices=("bench", "serve"), default="bench")
    p.add_argument("--cells", default=DEFAULT_CELLS, help="K:RATE,... (RATE: msg/s, k/5, max)")
    p.add_argument("--seconds", type=float, default=10.0, help="publishing time per cell")
    p.add_argument("--peers-max", type=int, default=100, help="distinct peers: min(K, this)")
    p.add_argument("--parser", choices=("fast", "sseparse"), default="fast")
    p.add_argument("--conns", type=int, default=4, help="publishing connections")
    p.add_argument(
        "--depth", type=int, default=16, help="rate cells: most pipelined requests per connection"
    )
    p.add_argument(
        "--max-depth", type=int, default=1, help="max cells: requests in flight per connection"
    )
    p.add_argument("--steady", default="1000,10000", help="steady-state peer counts ('' = none)")
    p.add_argument("--steady-seconds", type=float, default=15.0)
    p.add_argument("--steady-subs", type=int, default=100)
    p.add_argument(
        "--ws", default="1000,10000", help="peer counts heartbeating over /ws ('' = none)"
    )
    p.add_argument(
        "--ws-signed", default="10000",
        help="peer counts heartbeating over /ws with every heartbeat signed ('' = none)",
    )  # fmt: skip
    p.add_argument("--ws-seconds", type=float, default=15.0, help="/ws: measured seconds")
    p.add_argument("--ws-subs", type=int, default=100, help="/ws: changes-only SSE streams")
    p.add_argument(
        "--ws-warmup", type=float, default=7.0, help="/ws: heartbeating before the window"
    )
    p.add_argument(
        "--ws-ttl", type=int, default=600,
        help="/ws: the server's ttl_seconds (the registrations must outlive opening the sockets)",
    )  # fmt: skip
    p.add_argument(
        "--ws-open-timeout", type=float, default=1200.0, help="/ws: opening every socket, at most"
    )
    p.add_argument(
        "--ws-open",
        choices=("paced", "storm"),
        default="paced",
        help="/ws: 64 sockets opening at a time, each until its snapshot is in (paced) "
        "or until its handshake is (storm: every snapshot owed at once)",
    )
    p.add_argument(
        "--py-spy", default="", help="DIR: profile the server in steady and /ws windows (py-spy)"
    )
    p.add_argument(
        "--py-spy-native", action="store_true", help="py-spy: C frames too (pauses the server)"
    )
    p.add_argument("--drain-max", type=float, default=10.0)
    p.add_argument("--drain-idle", type=float, default=2.0)
    p.add_argument("--server-core", default="0")
    p.add_argument("--gen-core", default="1")
    p.add_argument("--docs", default=str(DOCS), help="file to write the table into ('' = none)")
    p.add_argument("--json-out", default="", help="also append the JSON lines to this file")
    p.add_argument("--serve-seconds", type=float, default=600.0)
    args = p.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    # A SIGTERM to us cleans up like Ctrl-C does (the children run in their
    # own sessions, so only we see either, and the `finally`s stop them).
    signal.signal(signal.SIGTERM, _interrupt)
    atexit.register(stop_all)

    if args.mode == "serve":
        serve(args)
        return 0

    cells = parse_cells(args.cells)
    steady = [int(n) for n in args.steady.split(",") if n.strip()]
    ws_counts = [int(n) for n in args.ws.split(",") if n.strip()]
    ws_signed_counts = [int(n) for n in args.ws_signed.split(",") if n.strip()]
    need = max([k for k, _, _, _ in cells] + [args.steady_subs] + ws_counts) + 200
    if hard < need:
        log(f"warning: RLIMIT_NOFILE hard limit {hard} < {need}; large cells may fail")
    info = machine()
    jobs: list[tuple[str, Any]] = [("cell", c) for c in cells]
    jobs += [("steady", (n, changes)) for n in steady for changes in (True, False)]
    jobs += [("ws", (n, False)) for n in ws_counts]
    jobs += [("ws", (n, True)) for n in ws_signed_counts]
    log(
        f"{len(cells)} cells ({args.seconds:g} s each), {2 * len(steady)} steady-state runs "
        f"({args.steady_seconds:g} s each), {len(ws_counts)} /ws runs "
        f"({args.ws_seconds:g} s each); {info['nproc']} CPUs, {info['cpu']}"
    )
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for i, (kind, spec) in enumerate(jobs):
        try:
            if kind == "cell":
                k, rate, inst, engine = spec
                log(f"cell {i + 1}/{len(jobs)}: K={k} rate={rate} instances={inst} {engine}")
                fail: dict[str, Any] = {"k": k, "rate": rate, "instances": inst, "engine": engine}
                row = run_cell(args, k, rate, i, inst, engine)
            elif kind == "steady":
                n, changes = spec
                stream = "changes" if changes else "classic"
                log(f"steady {i + 1}/{len(jobs)}: {n} peers, {stream} streams")
                fail = {"mode": "steady", "peers": n, "stream": stream}
                row = run_steady(args, n, changes, i)
            else:
                n, signed = spec
                log(
                    f"ws {i + 1}/{len(jobs)}: {n} {'signing ' if signed else ''}peers on /ws, "
                    f"{args.ws_subs} SSE streams"
                )
                fail = {"mode": "ws", "peers": n, "signed": signed}
                row = run_ws(args, n, i, signed)
        except KeyboardInterrupt:
            log("interrupted; server and generator stopped")
            break
        except Exception as e:  # one broken cell must not lose the others
            row = {**fail, "error": str(e).splitlines()[0][:200]}
            log(f"{kind} failed: {e}")
        rows.append(row)
        line = json.dumps(row, separators=(",", ":"))
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(line + "\n")
    elapsed = time.monotonic() - started

    grid = [r for r in rows if r.get("mode") not in ("steady", "ws")]
    steady_rows = [r for r in rows if r.get("mode") == "steady"]
    ws_rows = [r for r in rows if r.get("mode") == "ws"]
    md = table(grid) if grid else ""
    if steady_rows:
        md += (
            f"\nSteady state: each peer heartbeats every 5 s (1 message in 100 changes its "
            f"content), {args.steady_seconds:g} s per run.\n\n" + steady_table(steady_rows)
        )
    if ws_rows:
        md += (
            f"\nSteady state over `/ws`: each peer sends its heartbeat (nothing changes) as a "
            f"text frame on its own changes-only socket every 5 s, answers the server's "
            f"pings (a socket heard within 6 s gets an unsolicited pong instead, which needs "
            f"no answer); {args.ws_subs} changes-only SSE streams watch; {args.ws_seconds:g} s "
            f"measured after {args.ws_warmup:g} s of heartbeats.\n\n" + ws_table(ws_rows)
        )
        if any(r.get("signed") for r in ws_rows):
            rate = verifications_per_s(args.gen_core)
            md += (
                f"\nRows marked *signed*: every heartbeat carries a fresh `ts` and its "
                f"Ed25519 signature (docs/signing.md), which the server verifies before "
                f"anything else. One core verifies {rate:,.0f} signatures a second here "
                f"(`goop.signing.Verifier.check`: PyNaCl, the key parsed once per peer), "
                f"{1e6 / rate:.0f} µs each.\n"
            )
    print()
    print(md)
    print(targets(rows))
    if args.docs and rows:
        cmdline = " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])])
        text = (
            f"Run {info['date']} on {info['nproc']} CPUs ({info['cpu']}), Linux "
            f"{info['kernel']}, Python {info['python']}, Twisted {info['twisted']}, goop at "
            f"{info['commit']}; `{cmdline.strip()}` "
            f"({args.seconds:g} s per cell, {elapsed:.0f} s in all).\n\n"
            + md
            + "\nAgainst the targets:\n\n"
            + targets(rows)
        )
        write_docs(Path(args.docs), text)
        log(f"results written to {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
