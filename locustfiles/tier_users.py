"""Locust users for loadkit's tiers: ``FreeTierUser`` and ``PaidTierUser``.

Run with the ``locust`` command (web UI, ``--headless``, ``--processes``, master/workers) or
through ``loadkit run SCENARIO --engine locust``. Every request yields a loadkit request
record built by the same pure code as the asyncio engine (``loadkit.trace``), written by
the process that sent it into ``LOADKIT_OUT`` as it finishes. See ``docs/locust.md``.

Two modes:

* scenario mode (``LOADKIT_SCENARIO`` set): each user takes one *role* of the scenario's
  plan — one closed-loop user of a key, or the scheduler of an open-loop phase of a key,
  which spawns a greenlet per arrival so sends are on time and never dropped;
* plain mode: users pick keys round-robin, run the weighted request tasks, and wait
  ``LOADKIT_WAIT_S`` between requests.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import gevent
from gevent.lock import BoundedSemaphore
from gevent.pool import Group
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser
from locust.stats import RequestStats, StatsEntry

from loadkit import records as R
from loadkit.arrivals import arrivals
from loadkit.locustfiles import _roles
from loadkit.payloads import MixPicker, PreparedRequest, prepare
from loadkit.records import RecordWriter, RequestRecord
from loadkit.runmeta import Clock, RunMeta, WorkerInfo, fingerprint, new_run_id
from loadkit.scenario import Key, LoadSpec, Scenario, load_scenario, plan
from loadkit.trace import RequestInfo, RequestTrace

REQUEST_ID_HEADER = "x-loadkit-request-id"
STOP_FILE = ".stop"
STOP_GRACE_S = 5.0
DEFAULT_PROMISES = {"free": "60/60/3", "pro": "1000/60/10", "enterprise": "10000/60/100"}
KINDS = ("chat_stream", "chat", "completions_stream", "completions", "models")


# ---------------------------------------------------------------------------------------
# Process state: one record writer, one clock, one key set per Locust process.


class _Process:
    def __init__(self) -> None:
        env = os.environ
        self.out = Path(env.get("LOADKIT_OUT") or f"runs/locust-{new_run_id()}")
        self.run_id = env.get("LOADKIT_RUN_ID") or self.out.name
        self.clock = _clock_from_env(env)
        self.scenario: Scenario | None = (
            load_scenario(env["LOADKIT_SCENARIO"]) if env.get("LOADKIT_SCENARIO") else None
        )
        self.keys = _keys_from_env(env)
        self.paid_tier = env.get("LOADKIT_PAID_TIER") or None
        self.pid = os.getpid()
        self.worker = f"locust-{socket.gethostname()[:8]}-{self.pid}"
        self.writer: RecordWriter | None = None
        self.seq = 0
        self.ttft = RequestStats()
        self.roles = (
            _roles.Roles(plan(self.scenario, self.keys), self.out) if self.scenario else None
        )
        self.rr: dict[str, int] = {}
        self.sems: dict[int, BoundedSemaphore] = {}

    def open(self) -> RecordWriter:
        if self.writer is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self.writer = RecordWriter(self.out / f"records-{self.worker}.jsonl")
            _roles.mark(self.out, self.worker, "started", {"pid": os.getpid()})
        return self.writer

    def next_id(self) -> str:
        self.seq += 1
        return f"{self.worker}-{self.seq}"

    def stopping(self) -> bool:
        """``loadkit run`` asks for a graceful stop (Ctrl-C) by creating ``.stop`` in the run
        directory: no new requests, open ones finish (within STOP_GRACE_S) and are recorded."""
        return (self.out / STOP_FILE).exists()

    def semaphore(self, role: _roles.Role) -> BoundedSemaphore | None:
        """One client-side cap per (key, load phase) in this process, if the phase has one."""
        if not role.load.max_in_flight:
            return None
        return self.sems.setdefault(role.index, BoundedSemaphore(role.load.max_in_flight))

    def tier_keys(self, tier_filter: str) -> list[Key]:
        return [k for k in self.keys if _tier_matches(k.tier, tier_filter, self.paid_tier)]


def _tier_matches(tier: str, user_tier: str, paid_tier: str | None) -> bool:
    if user_tier == "free":
        return tier == "free"
    return tier == paid_tier if paid_tier else tier != "free"


def _clock_from_env(env: os._Environ[str] | dict[str, str]) -> Clock:
    """The run's clock: the runner's monotonic anchor when this process is on the same
    machine (same boot id), else its wall-clock anchor mapped onto this process's monotonic
    clock, else a clock that starts now."""
    mono = env.get("LOADKIT_MONO_ANCHOR_NS")
    wall = env.get("LOADKIT_WALL_ANCHOR")
    if mono and wall and env.get("LOADKIT_BOOT_ID") == _boot_id():
        return Clock(int(mono), float(wall))
    if wall:
        offset_ns = int((time.time() - float(wall)) * 1e9)
        return Clock(time.perf_counter_ns() - offset_ns, float(wall))
    return Clock()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _keys_from_env(env: os._Environ[str] | dict[str, str]) -> list[Key]:
    """Keys from LOADKIT_KEYS_FILE (the reference server's keys.json shape) and
    LOADKIT_KEYS_<TIER>=k1,k2 variables. Secrets never leave this process."""
    keys: list[Key] = []
    path = env.get("LOADKIT_KEYS_FILE")
    if path:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for k in data.get("keys", []):
            keys.append(Key(k["label"], k["tier"], k["key"]))
    for name, value in env.items():
        if name.startswith("LOADKIT_KEYS_") and name != "LOADKIT_KEYS_FILE":
            tier = name.removeprefix("LOADKIT_KEYS_").lower()
            secrets = [s.strip() for s in value.split(",") if s.strip()]
            have = {k.secret for k in keys}
            n = sum(k.tier == tier for k in keys)
            for s in secrets:
                if s not in have:
                    n += 1
                    keys.append(Key(f"{tier}-{n}", tier, s))
    return sorted(keys, key=lambda k: (k.tier, _natural(k.label)))


def _natural(label: str) -> tuple[str, int]:
    stem, _, num = label.rpartition("-")
    return (stem, int(num)) if num.isdigit() else (label, -1)


_P: _Process | None = None


def proc() -> _Process:
    """This process's state. ``--processes`` forks workers after the locustfile was
    imported, so a state inherited from the parent is replaced, never shared."""
    global _P
    if _P is None or _P.pid != os.getpid():
        _P = _Process()
    return _P


# ---------------------------------------------------------------------------------------
# One request: the same RequestTrace as the asyncio engine, Locust's stats on the side.


def send(
    user: FastHttpUser,
    key: Key,
    req: PreparedRequest,
    scheduled: float | None,
    sem: BoundedSemaphore | None = None,
) -> RequestRecord:
    """Send one request and record it; ``sem`` is the phase's client-side cap per key (the
    wait for it is recorded as ``queued_s``, the arrival never dropped)."""
    if sem is None:
        return _send(user, key, req, scheduled, 0.0)
    q0 = proc().clock.now()
    with sem:
        return _send(user, key, req, scheduled, proc().clock.now() - q0)


def _send(
    user: FastHttpUser, key: Key, req: PreparedRequest, scheduled: float | None, queued: float
) -> RequestRecord:
    p = proc()
    writer = p.open()
    clock = p.clock

    info = RequestInfo(
        p.run_id,
        "locust",
        p.worker,
        p.next_id(),
        key.tier,
        key.label,
        req.endpoint,
        req.stream,
        req.model,
        1,
        scheduled,
    )
    headers = {
        "Authorization": f"Bearer {key.secret}",
        "Accept-Encoding": "identity",
        REQUEST_ID_HEADER: info.request_id,
    }
    if req.body is not None:
        headers["Content-Type"] = "application/json"
    trace = RequestTrace(info, clock.now(), queued)
    rec: RequestRecord | None = None
    nbytes = 0
    with user.client.request(
        req.method,
        req.path,
        data=req.body,
        headers=headers,
        stream=True,
        catch_response=True,
        name=req.kind,
    ) as resp:
        try:
            status = resp.status_code
            if not status:
                rec = trace.fail(clock.now(), _error_kind(getattr(resp, "error", None)))
            else:
                trace.response(clock.now(), status, _headers(resp.headers))
                raw = resp._response
                if req.stream and status == 200:
                    while True:
                        line = raw.readline(b"\n")
                        if not line:
                            break
                        nbytes += len(line)
                        trace.data(clock.now(), line)
                else:
                    body = resp.content or b""
                    nbytes = len(body)
                    trace.data(clock.now(), body)
                rec = trace.finish(clock.now())
        except gevent.GreenletExit:
            rec = trace.fail(clock.now(), R.CANCELLED)
            _report(resp, rec, nbytes)
            writer.write(rec)
            raise
        except Exception as exc:  # a reset or timeout mid-body: record it, tell Locust
            rec = trace.fail(clock.now(), _error_kind(exc))
        _report(resp, rec, nbytes)
    writer.write(rec)
    if rec.first_token_s is not None and rec.transport_error is None:
        p.ttft.log_request("TTFT", req.kind, round((rec.first_token_s - rec.send_s) * 1000), 0)
    return rec


def _report(resp: Any, rec: RequestRecord, nbytes: int) -> None:
    """Locust's row: the whole exchange as the response time; failures by status and code."""
    resp.request_meta["response_time"] = (rec.end_s - rec.send_s) * 1000.0
    resp.request_meta["response_length"] = nbytes
    if rec.status == 200 and rec.transport_error is None and rec.error_code is None:
        resp.success()
    else:
        what = rec.error_code or rec.transport_error or "error"
        resp.failure(f"{rec.status} {what}" if rec.status else what)


def _headers(h: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in h.items()} if h is not None else {}


def _error_kind(exc: BaseException | None) -> str:
    if exc is None:
        return R.OTHER
    name = type(exc).__name__.lower()
    text = str(exc).lower()
    if isinstance(exc, ConnectionRefusedError) or "refused" in text:
        return R.REFUSED
    if "timeout" in name or "timed out" in text or isinstance(exc, TimeoutError):
        return R.TIMEOUT
    if isinstance(exc, ConnectionResetError | BrokenPipeError) or "reset" in text:
        return R.RESET
    if "closed" in text or "parse" in name or "incomplete" in text:
        return R.INCOMPLETE_STREAM
    return R.OTHER


# ---------------------------------------------------------------------------------------
# Users


def _fixed_count(user_tier: str) -> int:
    """Scenario mode: one user per key of the tier (0 = Locust's weights decide)."""
    p = proc()
    if p.roles is None:
        return 0
    return len(p.roles.keys(lambda k: _tier_matches(k.tier, user_tier, p.paid_tier)))


class _TierUser(FastHttpUser):
    abstract = True
    tier = "free"
    wait_time = constant(float(os.environ.get("LOADKIT_WAIT_S", "0") or 0))
    # Explicit: one connection per concurrent request of this user (a scheduler user may
    # have many open at once); timeouts from the scenario, else generous for long streams.
    concurrency = int(os.environ.get("LOADKIT_USER_CONNECTIONS", "1000"))
    connection_timeout = float(os.environ.get("LOADKIT_CONNECT_TIMEOUT_S", "10"))
    network_timeout = float(os.environ.get("LOADKIT_READ_TIMEOUT_S", "120"))

    def on_start(self) -> None:
        p = proc()
        self.rng = random.Random(f"{os.getpid()}/{id(self)}")
        self.roles: list[_roles.Role] = []
        if p.roles is not None:
            # Scenario mode: this user is one customer key and drives all its roles.
            self.roles = p.roles.claim(
                p.worker, lambda k: _tier_matches(k.tier, self.tier, p.paid_tier)
            )
            if not self.roles:
                raise StopUser()
            return
        keys = p.tier_keys(self.tier)
        if not keys:
            raise StopUser()
        i = p.rr.get(self.tier, 0)
        p.rr[self.tier] = i + 1
        self.key = keys[i % len(keys)]

    # -- scenario mode --------------------------------------------------------------------

    def _run_key(self) -> None:
        group = Group()
        for role in self.roles:
            group.spawn(self._run_role, role)
        try:
            group.join()
        finally:
            # Stopped (run over, Ctrl-C): every open request still writes its record.
            group.kill(block=True, timeout=10)
        raise StopUser()

    def _run_role(self, role: _roles.Role) -> None:
        p = proc()
        assert p.scenario is not None
        s = p.scenario
        load = role.load
        # The asyncio engine's seed for the same (key, phase): open-loop schedules are the
        # same whichever engine runs them; closed-loop users each get their own stream.
        seed = f"{s.seed}/{role.index}/{role.key.label}"
        rng = random.Random(seed if role.kind == "open" else f"{seed}/{role.user}")
        picker = MixPicker(load.mix)
        sem = p.semaphore(role)
        if role.kind == "closed":
            _wait_until(
                p.clock,
                load.start_s
                + min(1.0, 0.01 * load.concurrency) * role.user / max(1, load.concurrency),
            )
            end = load.active_until(s.duration_s)
            while p.clock.now() < end and not _roles.count_reached(p, s) and not p.stopping():
                rec = send(self, role.key, _prepare(s, load, rng, picker), None, sem)
                pause = load.pause_after(rec.status, rec.retry_after_s, rec.transport_error)
                if pause:
                    gevent.sleep(pause)
            return
        group = Group()
        try:
            for t in arrivals(load, s.duration_s, rng):
                _wait_until(p.clock, t, p)
                if _roles.count_reached(p, s) or p.stopping():
                    break
                group.spawn(send, self, role.key, _prepare(s, load, rng, picker), t, sem)
            group.join(timeout=STOP_GRACE_S if p.stopping() else s.drain_s)
        finally:
            group.kill(block=True, timeout=10)

    # -- plain mode -----------------------------------------------------------------------

    def _plain(self, kind: str) -> None:
        if self.roles:
            self._run_key()
            return
        env = os.environ
        req = prepare(
            kind,
            env.get("LOADKIT_MODEL", "loadkit-small"),
            int(env.get("LOADKIT_PROMPT_TOKENS", "32")),
            int(env.get("LOADKIT_MAX_TOKENS", "32")),
            self.rng,
        )
        send(self, self.key, req, None)

    @task(_roles.weight("chat_stream", 2))
    def chat_stream(self) -> None:
        self._plain("chat_stream")

    @task(_roles.weight("chat", 1))
    def chat(self) -> None:
        self._plain("chat")

    @task(_roles.weight("completions_stream", 1))
    def completions_stream(self) -> None:
        self._plain("completions_stream")

    @task(_roles.weight("completions", 1))
    def completions(self) -> None:
        self._plain("completions")

    @task(_roles.weight("models", 0))
    def models(self) -> None:
        self._plain("models")


class FreeTierUser(_TierUser):
    """A free-tier customer (60 requests per minute, 3 concurrent, by default)."""

    tier = "free"
    fixed_count = _fixed_count("free")


class PaidTierUser(_TierUser):
    """A paid-plan customer: the plan is ``LOADKIT_PAID_TIER`` (e.g. ``pro``), else every
    non-free tier of the scenario."""

    tier = "paid"
    fixed_count = _fixed_count("paid")


def _prepare(s: Scenario, load: LoadSpec, rng: random.Random, picker: MixPicker) -> PreparedRequest:
    return prepare(
        picker.pick(rng),
        load.model or s.target.model,
        load.prompt_tokens.sample(rng),
        load.max_tokens.sample(rng),
        rng,
    )


def _wait_until(clock: Clock, t: float, p: _Process | None = None) -> None:
    """Sleep until run time ``t``; with ``p``, wake early if the run is being stopped."""
    while True:
        delay = t - clock.now()
        if delay <= 0 or (p is not None and p.stopping()):
            return
        gevent.sleep(min(delay, 0.25) if p is not None else delay)


# ---------------------------------------------------------------------------------------
# Events: TTFT stats beside Locust's own (not in its totals), run metadata, worker markers.


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    from locust.runners import MasterRunner, WorkerRunner

    p = proc()
    runner = environment.runner
    if isinstance(runner, WorkerRunner):

        @events.report_to_master.add_listener
        def _to_master(client_id: str, data: dict[str, Any], **_: Any) -> None:
            data["loadkit_ttft"] = p.ttft.serialize_stats()
            p.ttft.clear_all()

    if isinstance(runner, MasterRunner):

        @events.worker_report.add_listener
        def _from_worker(client_id: str, data: dict[str, Any], **_: Any) -> None:
            for row in data.get("loadkit_ttft", []):
                entry = StatsEntry.unserialize(row, p.ttft)
                key = (entry.name, entry.method)
                if key not in p.ttft.entries:
                    p.ttft.entries[key] = StatsEntry(
                        p.ttft, entry.name, entry.method, use_response_times_cache=True
                    )
                p.ttft.entries[key].extend(entry)

    if not isinstance(runner, WorkerRunner):
        _roles.extend_web_ui(environment, p.ttft)


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    from locust.runners import WorkerRunner

    p = proc()
    if not isinstance(environment.runner, WorkerRunner) and not os.environ.get(
        "LOADKIT_RUNNER_OWNS_META"
    ):
        _write_meta(p, environment.host or "")
    if p.scenario is not None and not isinstance(environment.runner, WorkerRunner):
        gevent.spawn(_quit_when_idle, environment)


def _quit_when_idle(environment: Any) -> None:
    """Scenario mode: every user stops itself when its role is done; then the run is over
    (no need to wait for --run-time)."""
    runner = environment.runner
    gevent.sleep(3.0)
    while runner.user_count > 0:
        gevent.sleep(0.5)
    gevent.sleep(1.0)  # the last worker reports
    runner.quit()


@events.quitting.add_listener
def _on_quitting(environment: Any, **_: Any) -> None:
    from locust.runners import WorkerRunner

    p = proc()
    if p.writer is not None:
        # Not closed: a request cancelled while Locust shuts its users down still writes
        # its record (each line is flushed as written; the file closes with the process).
        _roles.mark(p.out, p.worker, "done", {"records": p.writer.count})
    if not isinstance(environment.runner, WorkerRunner):
        prefix = getattr(environment.parsed_options, "csv_prefix", None)
        if prefix:
            _roles.write_ttft_csv(p.ttft, f"{prefix}_ttft.csv")
        if not os.environ.get("LOADKIT_RUNNER_OWNS_META"):
            _finish_meta(p)


def _write_meta(p: _Process, host: str) -> None:
    tiers: dict[str, dict[str, Any]] = {}
    if p.scenario is not None:
        tiers = {n: t.promised() for n, t in p.scenario.tiers.items()}
    else:
        for tier in sorted({k.tier for k in p.keys}):
            spec = os.environ.get(f"LOADKIT_PROMISE_{tier.upper()}", DEFAULT_PROMISES.get(tier))
            if spec:
                r, w, c = spec.split("/")
                tiers[tier] = {"requests": int(r), "window_s": float(w), "concurrency": int(c)}
    meta = RunMeta(
        run_id=p.run_id,
        engine="locust",
        target=host,
        scenario_name=p.scenario.name if p.scenario else "locust-plain",
        started_unix=p.clock.wall_anchor,
        mono_anchor_ns=p.clock.mono_anchor_ns,
        tiers=tiers,
        keys=[
            {"label": k.label, "tier": k.tier, "fingerprint": fingerprint(k.secret)} for k in p.keys
        ],
    )
    meta.write(p.out)


def _finish_meta(p: _Process) -> None:
    from loadkit.runmeta import read_run_meta

    try:
        meta = read_run_meta(p.out)
    except (OSError, ValueError):
        return
    meta.ended_unix = time.time()
    meta.duration_s = p.clock.now()
    meta.workers = [WorkerInfo(**w) for w in _roles.worker_status(p.out)]
    meta.write(p.out)
