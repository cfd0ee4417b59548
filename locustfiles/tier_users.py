"""Locust users for loadkit's tiers: ``FreeTierUser`` and ``PaidTierUser``.

Run with the ``locust`` command (web UI, ``--headless``, ``--processes``, master/workers) or
through ``loadkit run SCENARIO --engine locust``. Every request yields a loadkit request
record built by the same pure code as the asyncio engine (``loadkit.trace``); the process
that sent it streams it to the master (Locust's custom messages), which writes the run
directory. See ``docs/locust.md``.

Two modes:

* scenario mode (``--loadkit-scenario FILE``): each user takes one key of the scenario's
  plan from the master and drives all its roles — closed-loop users, and for open-loop
  phases a scheduler that spawns a greenlet per arrival so sends are on time and never
  dropped — from the t=0 the master sends once every key has its process;
* plain mode: users take keys of their tier round-robin from the master, run the weighted
  request tasks, and wait ``LOADKIT_WAIT_S`` between requests.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore
from gevent.pool import Group
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser
from locust.stats import RequestStats, StatsEntry

from loadkit import records as R
from loadkit.arrivals import arrivals
from loadkit.locustfiles import _options as O
from loadkit.locustfiles import _roles, _webui
from loadkit.locustfiles._agent import Agent
from loadkit.locustfiles._coordinator import Coordinator, check_out_dir, write_end, write_start
from loadkit.payloads import MixPicker, PreparedRequest, prepare
from loadkit.records import RequestRecord
from loadkit.runmeta import Clock, Origin, RunMeta, fingerprint, new_run_id
from loadkit.scenario import (
    Key,
    LoadSpec,
    Scenario,
    ScenarioError,
    load_scenario,
    plan,
    scenario_to_dict,
)
from loadkit.trace import RequestInfo, RequestTrace

log = logging.getLogger("loadkit")

REQUEST_ID_HEADER = "x-loadkit-request-id"
STOP_GRACE_S = 5.0  # a stop before the schedule's end: open requests get this long (≤ drain)
DONE_TIMEOUT_S = 15.0  # beyond the grace, how long the master waits for final reports
START_LEAD_S = 0.1  # t=0 this far after the decision, so the start message is there first
DEFAULT_PROMISES = {"free": "60/60/3", "pro": "1000/60/10", "enterprise": "10000/60/100"}


# ---------------------------------------------------------------------------------------
# Process state, created at Locust's init (after ``--processes`` forked the workers).


class _Process:
    def __init__(self, environment: Any, keys: list[Key]) -> None:
        self.environment = environment
        self.runner = environment.runner
        self.options = environment.parsed_options
        self.keys = keys
        self.agent: Agent | None = None  # this process sends load (worker or local)
        self.coord: Coordinator | None = None  # this process leads the run (master or local)
        self.ttft = RequestStats()
        self.sems: dict[int, BoundedSemaphore] = {}
        self.watcher: gevent.Greenlet | None = None
        self.finished = False
        self.reports = Event()

    def semaphore(self, role: _roles.Role) -> BoundedSemaphore | None:
        """One client-side cap per (key, load phase) in this process, if the phase has one."""
        if not role.load.max_in_flight:
            return None
        return self.sems.setdefault(role.index, BoundedSemaphore(role.load.max_in_flight))


_P: _Process | None = None


def proc() -> _Process:
    assert _P is not None, "loadkit's Locust users need Locust's init event"
    return _P


def agent() -> Agent:
    a = proc().agent
    assert a is not None, "this Locust process sends no load"
    return a


def _fail(message: str) -> NoReturn:
    print(f"loadkit: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


# ---------------------------------------------------------------------------------------
# One request: the same RequestTrace as the asyncio engine, Locust's stats on the side.


def send(
    user: FastHttpUser,
    key: Key,
    req: PreparedRequest,
    scheduled: float | None,
    sem: BoundedSemaphore | None = None,
) -> RequestRecord | None:
    """Send one request and record it; ``sem`` is the phase's client-side cap per key (the
    wait for it is recorded as ``queued_s``). None when the run stopped before it was sent."""
    a = agent()
    if sem is None:
        return _send(user, key, req, scheduled, 0.0)
    q0 = a.now()
    with sem:
        if a.stopping():
            return None
        return _send(user, key, req, scheduled, a.now() - q0)


def _send(
    user: FastHttpUser, key: Key, req: PreparedRequest, scheduled: float | None, queued: float
) -> RequestRecord:
    a = agent()
    info = RequestInfo(
        a.run_id,
        "locust",
        a.worker,
        a.next_id(),
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
    nbytes = 0
    with a.in_flight():
        trace = RequestTrace(info, a.now(), queued)
        with user.client.request(
            req.method,
            req.path,
            data=req.body,  # type: ignore[arg-type]  # bytes: sent as they are
            headers=headers,
            stream=True,
            catch_response=True,
            name=req.kind,
        ) as resp:
            try:
                status = resp.status_code
                if not status:
                    rec = trace.fail(a.now(), _error_kind(getattr(resp, "error", None)))
                else:
                    trace.response(a.now(), status, _headers(resp.headers))
                    raw = resp._response
                    if req.stream and status == 200:
                        while True:
                            line = raw.readline(b"\n")
                            if not line:
                                break
                            nbytes += len(line)
                            trace.data(a.now(), line)
                    else:
                        body = resp.content or b""
                        nbytes = len(body)
                        trace.data(a.now(), body)
                    rec = trace.finish(a.now())
            except gevent.GreenletExit:
                rec = trace.fail(a.now(), R.CANCELLED)
                _report(resp, rec, nbytes)
                a.emit(rec)
                raise
            except Exception as exc:  # a reset or timeout mid-body: record it, tell Locust
                rec = trace.fail(a.now(), _error_kind(exc))
            _report(resp, rec, nbytes)
        a.emit(rec)
    if rec.first_token_s is not None and rec.transport_error is None:
        ms = round((rec.first_token_s - rec.send_s) * 1000)
        proc().ttft.log_request("TTFT", req.kind, ms, 0)
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


class _TierUser(FastHttpUser):
    abstract = True
    tier = "free"
    wait_time = constant(float(os.environ.get("LOADKIT_WAIT_S", "0") or 0))
    # Explicit: one connection per concurrent request of this user (a scheduler user may
    # have many open at once); timeouts from the scenario (set when the master's scenario
    # arrives), else the environment, else generous for long streams.
    concurrency = int(os.environ.get("LOADKIT_USER_CONNECTIONS", "1000"))
    connection_timeout = float(os.environ.get("LOADKIT_CONNECT_TIMEOUT_S", "10"))
    network_timeout = float(os.environ.get("LOADKIT_READ_TIMEOUT_S", "120"))

    def on_start(self) -> None:
        self.rng = random.Random(f"{os.getpid()}/{id(self)}")
        got = agent().claim(self.tier)
        if got is None:
            raise StopUser()
        self.key, roles = got
        self.roles: list[_roles.Role] = roles or []

    # -- scenario mode --------------------------------------------------------------------

    def _run_key(self) -> None:
        a = agent()
        if not a.wait_start():
            raise StopUser()
        group = Group()
        for role in self.roles:
            group.spawn(self._run_role, role)
        try:
            group.join()
            a.key_finished(self.key.label)
        finally:
            # Stopped by Locust: every open request still writes its record.
            group.kill(block=True, timeout=10)
        raise StopUser()

    def _run_role(self, role: _roles.Role) -> None:
        a = agent()
        s = a.scenario
        assert s is not None
        load = role.load
        # The asyncio engine's seed for the same (key, phase): open-loop schedules are the
        # same whichever engine runs them; closed-loop users each get their own stream.
        seed = f"{s.seed}/{role.index}/{role.key.label}"
        rng = random.Random(seed if role.kind == "open" else f"{seed}/{role.user}")
        picker = MixPicker(load.mix)
        sem = proc().semaphore(role)
        if role.kind == "closed":
            stagger = min(1.0, 0.01 * load.concurrency) * role.user / max(1, load.concurrency)
            end = load.active_until(s.duration_s)
            if not _wait_until(a, load.start_s + stagger):
                return
            while a.now() < end and not a.count_reached() and not a.stopping():
                rec = send(self, role.key, _prepare(s, load, rng, picker), None, sem)
                if rec is None:
                    return
                pause = load.pause_after(rec.status, rec.retry_after_s, rec.transport_error)
                if pause:
                    a.stopped.wait(timeout=pause)
            return
        group = Group()
        try:
            for t in arrivals(load, s.duration_s, rng):
                if not _wait_until(a, t) or a.count_reached():
                    break
                group.spawn(send, self, role.key, _prepare(s, load, rng, picker), t, sem)
            # In flight at the end: they finish within the drain (on a stop, the agent's
            # grace ends them first).
            group.join(timeout=s.drain_s)
        finally:
            group.kill(block=True, timeout=10)

    # -- plain mode -----------------------------------------------------------------------

    def _plain(self, kind: str) -> None:
        if self.roles:
            self._run_key()
            return
        a = agent()
        if a.stopping():
            raise StopUser()
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


class PaidTierUser(_TierUser):
    """A paid-plan customer: the plan is ``--loadkit-paid-tier`` (e.g. ``pro``), else every
    non-free tier of the keys."""

    tier = "paid"


def _prepare(s: Scenario, load: LoadSpec, rng: random.Random, picker: MixPicker) -> PreparedRequest:
    return prepare(
        picker.pick(rng),
        load.model or s.target.model,
        load.prompt_tokens.sample(rng),
        load.max_tokens.sample(rng),
        rng,
    )


def _wait_until(a: Agent, t: float) -> bool:
    """Sleep until run time ``t``; False if the run is stopped first."""
    while (delay := t - a.now()) > 0:
        if a.stopped.wait(timeout=delay):
            return False
    return not a.stopping()


# ---------------------------------------------------------------------------------------
# Locust's events: options, the web UI, the master's coordination, the workers' side.


@events.init_command_line_parser.add_listener
def _on_parser(parser: Any, **_: Any) -> None:
    O.add_options(parser)


@events.init.add_listener
def _on_init(environment: Any, runner: Any = None, web_ui: Any = None, **_: Any) -> None:
    from locust.runners import MasterRunner, WorkerRunner

    global _P
    runner = environment.runner
    opts = environment.parsed_options
    leads = not isinstance(runner, WorkerRunner)
    sends = not isinstance(runner, MasterRunner)
    if web_ui is not None:
        _guard_web_ui(opts, web_ui)
    if isinstance(runner, MasterRunner) and not O.is_loopback(opts.master_bind_host):
        log.warning(
            "loadkit: the master listens on %s:%s for workers; Locust's master/worker traffic "
            "is neither encrypted nor authenticated: keep that port on a trusted network",
            opts.master_bind_host or "every interface",
            opts.master_bind_port,
        )
    try:
        keys = O.load_keys(opts.loadkit_keys_file, os.environ)
    except O.KeysError as exc:
        _fail(str(exc))
    p = _P = _Process(environment, keys)
    if leads:
        _lead(p)
    if sends:
        a = p.agent = Agent(lambda kind, data: runner.send_message(kind, data), keys)
        runner.register_message("loadkit_grant", lambda msg, **_: a.on_grant(msg.data))
        runner.register_message("loadkit_start", lambda msg, **_: a.on_start(msg.data))
        runner.register_message("loadkit_stop", lambda msg, **_: a.on_stop(msg.data))
        # After the runner's own listeners: with reverse=True this one runs first, before
        # a worker tells the master it quits.
        environment.events.quitting.add_listener(_on_quitting_sender)

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

    if web_ui is not None:
        _webui.add_ttft_tab(web_ui, p.ttft)


def _guard_web_ui(opts: Any, web_ui: Any) -> None:
    login = O.web_login_from(os.environ)
    problem = O.web_ui_problem(
        opts.web_host, opts.web_port, bool(opts.web_login), login, bool(web_ui.auth_args)
    )
    if problem:
        _fail(problem)
    if opts.web_login and login is not None:
        _webui.require_login(web_ui, login, opts.web_base_path or "")


def _lead(p: _Process) -> None:
    """The master's (or the local runner's) part: the run directory, the scenario, and the
    handlers of the workers' messages."""
    opts = p.options
    runner = p.runner
    out = Path(opts.loadkit_out or f"runs/locust-{new_run_id()}")
    run_id = out.name
    problem = check_out_dir(out, run_id)
    if problem:
        _fail(problem)
    scenario = None
    if opts.loadkit_scenario:
        try:
            scenario = load_scenario(opts.loadkit_scenario)
            plan(scenario, p.keys)
        except ScenarioError as exc:
            _fail(str(exc))
        _setup_scenario(p, scenario)
    paid = opts.loadkit_paid_tier or None
    out.mkdir(parents=True, exist_ok=True)
    coord = p.coord = Coordinator(out, run_id, p.keys, scenario, paid)
    opts.loadkit_run_id = run_id

    def on_claim(msg: Any, **_: Any) -> None:
        grant = coord.claim(msg.node_id, msg.data["tier"])
        data: dict[str, Any] = {"token": msg.data["token"], "grant": None}
        if grant is not None:
            data["grant"] = grant.to_dict()
            if coord.origin is not None:
                data["start"] = {"origin": coord.origin.to_dict(), "quota": coord.share}
        runner.send_message("loadkit_grant", data, client_id=msg.node_id)

    def on_records(msg: Any, **_: Any) -> None:
        d = msg.data
        coord.records(msg.node_id, str(d["worker"]), list(d["lines"]), int(d["in_flight"]))

    def on_done(msg: Any, **_: Any) -> None:
        coord.done(msg.node_id, int(msg.data["records"]), int(msg.data["cancelled"]))
        p.reports.set()

    handlers = {
        "loadkit_hello": lambda msg, **_: coord.hello(
            msg.node_id, str(msg.data["worker"]), int(msg.data["pid"]), str(msg.data["boot_id"])
        ),
        "loadkit_claim": on_claim,
        "loadkit_records": on_records,
        "loadkit_finished": lambda msg, **_: coord.key_finished(msg.node_id, msg.data["label"]),
        "loadkit_refuse": lambda msg, **_: coord.refused(
            msg.node_id, msg.data["label"], msg.data["reason"]
        ),
        "loadkit_done": on_done,
    }
    for kind, handler in handlers.items():
        runner.register_message(kind, handler)
    p.environment.events.heartbeat_sent.add_listener(
        lambda client_id, **_: coord.peer(client_id) if client_id in coord.peers else None
    )
    p.environment.events.spawning_complete.add_listener(lambda **_: coord.spawned())

    # Every way Locust ends a run (--run-time, Ctrl-C, SIGTERM, the last worker quitting)
    # goes through runner.quit(): first the workers drain and report, then Locust quits
    # (its own quit waits only half a second for the workers' last words).
    locust_quit = runner.quit

    def quit_after_reports() -> None:
        _finish(p, natural=False)
        locust_quit()

    runner.quit = quit_after_reports


def _setup_scenario(p: _Process, scenario: Scenario) -> None:
    """One user per key with load (``fixed_count``), and the resolved scenario forwarded to
    the workers in Locust's spawn messages (without the embedded server's config path,
    which only means something on this machine)."""
    opts = p.options
    pairs = plan(scenario, p.keys)
    paid = opts.loadkit_paid_tier or None
    loaded = {k.label: k for k, _ in pairs}.values()
    for cls in (FreeTierUser, PaidTierUser):
        cls.fixed_count = sum(O.tier_matches(k.tier, cls.tier, paid) for k in loaded)
    if opts.num_users is None:
        opts.num_users = FreeTierUser.fixed_count + PaidTierUser.fixed_count
    if opts.spawn_rate is None:
        opts.spawn_rate = max(1, opts.num_users)
    d = scenario_to_dict(scenario)
    d["target"].pop("server_config", None)
    opts.loadkit_scenario_json = json.dumps(d)
    _TierUser.connection_timeout = scenario.target.connect_timeout_s
    _TierUser.network_timeout = scenario.target.read_timeout_s


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    p = proc()
    opts = environment.parsed_options
    coord = p.coord
    if coord is not None:
        if coord.scenario is None and coord.origin is None:
            # Plain mode: t=0 now; the workers get it in Locust's spawn messages, which
            # are sent after this event.
            coord.origin = Origin.now()
            opts.loadkit_start = json.dumps(coord.origin.to_dict())
            write_start(coord.out, coord.origin, lambda: _new_meta(p))
        if p.watcher is None:
            p.watcher = gevent.spawn(_watch, p)
    a = p.agent
    if a is not None:
        try:
            a.configure(opts.loadkit_run_id, opts.loadkit_scenario_json, opts.loadkit_start)
        except ScenarioError as exc:
            log.error("loadkit: the master's scenario does not load here: %s", exc)
            raise
        if a.scenario is not None:
            _TierUser.connection_timeout = a.scenario.target.connect_timeout_s
            _TierUser.network_timeout = a.scenario.target.read_timeout_s
        a.hello()


def _watch(p: _Process) -> None:
    """The master's loop: name workers that died or went silent, start the schedule once
    every key has its process, end the run when every key is finished."""
    coord = p.coord
    assert coord is not None
    while not p.finished:
        gevent.sleep(0.1)
        coord.check()
        if coord.ready_to_start():
            origin = Origin.now(START_LEAD_S)
            coord.start(origin)
            write_start(coord.out, origin, lambda: _new_meta(p))
            p.runner.send_message(
                "loadkit_start", {"origin": origin.to_dict(), "quota": coord.share}
            )
        if coord.end_reached():
            _finish(p, natural=True)
            if p.options.headless:
                p.runner.quit()
            else:
                p.runner.stop()


def _finish(p: _Process, natural: bool) -> None:
    """Tell every worker to stop (no new requests; open ones get the grace), wait for each
    one's final report (its record count) or its end, then write run.json."""
    coord = p.coord
    if p.finished or coord is None:
        return
    p.finished = True
    s = coord.scenario
    if natural:
        grace = 0.0
    elif s is not None:
        grace = min(s.drain_s, STOP_GRACE_S)
    else:
        grace = float(p.environment.stop_timeout or STOP_GRACE_S)
    p.runner.send_message("loadkit_stop", {"grace_s": grace})
    deadline = time.monotonic() + grace + DONE_TIMEOUT_S
    # The master's message loop is one of the runner's greenlets: waiting inside it would
    # keep the reports from arriving.
    can_wait = gevent.getcurrent() not in p.runner.greenlet
    while can_wait and time.monotonic() < deadline:
        coord.check()
        if not coord.waiting():
            break
        p.reports.clear()
        p.reports.wait(timeout=0.5)
    interrupted = not natural and s is not None
    write_end(
        coord.out,
        coord.origin,
        coord.worker_infos(interrupted),
        coord.stop_reason(natural),
        interrupted,
        lambda: _new_meta(p),
    )


def _on_quitting_sender(environment: Any, **_: Any) -> None:
    """A process that sends load shuts down (Ctrl-C on it, or the master's quit): open
    requests get the grace, and its last records and final report go to the master."""
    a = proc().agent
    if a is not None:
        a.drain(STOP_GRACE_S)


@events.quitting.add_listener
def _on_quitting(environment: Any, **_: Any) -> None:
    p = proc()
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if p.coord is not None and prefix:
        _webui.write_ttft_csv(p.ttft, f"{prefix}_ttft.csv")


def _new_meta(p: _Process) -> RunMeta:
    """run.json for a run started by hand (``loadkit run`` writes its own first)."""
    coord = p.coord
    assert coord is not None
    host = p.environment.host or ""
    if coord.scenario is not None:
        from loadkit.run import new_meta

        return new_meta(coord.scenario, "locust", host, p.keys, coord.run_id, Clock())
    tiers: dict[str, dict[str, Any]] = {}
    for tier in sorted({k.tier for k in p.keys}):
        spec = os.environ.get(f"LOADKIT_PROMISE_{tier.upper()}", DEFAULT_PROMISES.get(tier))
        if spec:
            r, w, c = spec.split("/")
            tiers[tier] = {"requests": int(r), "window_s": float(w), "concurrency": int(c)}
    origin = coord.origin or Origin.now()
    return RunMeta(
        run_id=coord.run_id,
        engine="locust",
        target=host,
        scenario_name="locust-plain",
        started_unix=origin.wall,
        mono_anchor_ns=origin.mono_ns,
        tiers=tiers,
        keys=[
            {"label": k.label, "tier": k.tier, "fingerprint": fingerprint(k.secret)} for k in p.keys
        ],
    )
