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
  request tasks, and wait ``LOADKIT_WAIT_S`` between requests (longer after a failure).

Closed-loop users (scenario mode) and plain-mode users back off after every failure: the
advertised Retry-After after a 429, an exponential pause after any other non-2xx or
transport error, recorded in ``pause_s``. In scenario mode a run whose target fails
everything ends early (``loadkit.outcomes.FailureWatch``).

This module holds the users and Locust's event wiring; the master's side is ``_lead`` /
``_coordinator``, a load-sending process's ``_agent``, one request ``_request``, how a
process ends with the run ``_lifecycle``.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any, cast

import gevent
from gevent.lock import BoundedSemaphore
from gevent.pool import Group
from locust import FastHttpUser, events, task
from locust.exception import StopUser
from locust.stats import RequestStats, StatsEntry

from loadkit.api import ApiLayout
from loadkit.arrivals import arrivals
from loadkit.locustfiles import _lifecycle as L
from loadkit.locustfiles import _options as O
from loadkit.locustfiles import _roles, _webui
from loadkit.locustfiles._agent import Agent, Policy
from loadkit.locustfiles._board import TierBoard
from loadkit.locustfiles._lead import STOP_GRACE_S, Lead, fail
from loadkit.locustfiles._request import PauseRule, PhaseBackoff, UserBackoff, send
from loadkit.outcomes import Backoff
from loadkit.payloads import MixPicker, PreparedRequest, prepare
from loadkit.records import RequestRecord
from loadkit.scenario import Key, LoadSpec, Scenario, ScenarioError

log = logging.getLogger("loadkit")

# Keys `loadkit run` hands over through an inherited pipe: read here, at import, before
# --processes forks the workers (which keep them in memory).
try:
    _INHERITED_KEYS = O.read_inherited_keys(os.environ)
except O.KeysError as _exc:
    fail(str(_exc))

# Plain mode (scenario mode takes the scenario's [target] timeouts).
WAIT_S = float(os.environ.get("LOADKIT_WAIT_S", "0") or 0)
REQUEST_TIMEOUT_S = float(os.environ.get("LOADKIT_REQUEST_TIMEOUT_S", "600") or 600)
EVERY_STATUS = frozenset(range(100, 600))


class _Process:
    """This Locust process's part of the run, created at Locust's init (after
    ``--processes`` forked the workers, so never shared between processes)."""

    def __init__(self) -> None:
        self.agent: Agent | None = None  # this process sends load (worker or local)
        self.lead: Lead | None = None  # this process leads the run (master or local)
        self.ttft = RequestStats()  # TTFT beside Locust's stats, never in its totals
        self.sems: dict[int, BoundedSemaphore] = {}

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


# ---------------------------------------------------------------------------------------
# Users


class _TierUser(FastHttpUser):
    abstract = True
    tier = "free"
    # Explicit: one connection per concurrent request of this user (a scheduler user may
    # have many open at once); timeouts from the scenario (set when the master's scenario
    # arrives), else the environment, else generous for long streams.
    concurrency = int(os.environ.get("LOADKIT_USER_CONNECTIONS", "1000"))
    connection_timeout = float(os.environ.get("LOADKIT_CONNECT_TIMEOUT_S", "10"))
    network_timeout = float(os.environ.get("LOADKIT_READ_TIMEOUT_S", "120"))

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        # Every status is an answer to read here: for one it deems an error,
        # geventhttpclient would first read the whole body itself (unbounded, decompressed,
        # before the first byte could be timed).
        agent_ = cast(Any, self.client.client)  # a class-level setting, set for this user
        agent_.valid_response_codes = EVERY_STATUS

    def on_start(self) -> None:
        self.rng = random.Random(f"{os.getpid()}/{id(self)}")
        self.pause = WAIT_S  # plain mode: before the next task
        self.backoff = UserBackoff(Backoff(), WAIT_S)
        got = agent().claim(self.tier)
        if got is None:
            raise StopUser()
        self.key, roles = got
        self.roles: list[_roles.Role] = roles or []

    def wait_time(self) -> float:
        """Plain mode: ``LOADKIT_WAIT_S``, or the backoff after a failure."""
        return self.pause

    def _send(
        self,
        key: Key,
        req: PreparedRequest,
        at: float | None,
        sem: BoundedSemaphore | None = None,
        pause: PauseRule | None = None,
    ) -> RequestRecord:
        return send(self, agent(), proc().ttft, key, req, at, sem, pause)

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
        layout = a.policy.api.layout
        if role.kind == "closed":
            stagger = min(1.0, 0.01 * load.concurrency) * role.user / max(1, load.concurrency)
            end = load.active_until(s.duration_s)
            if not _wait_until(a, load.start_s + stagger):
                return
            backoff = PhaseBackoff(load)
            while a.now() < end and not a.count_reached() and not a.stopping():
                req = _prepare(s, load, rng, picker, layout)
                rec = self._send(role.key, req, None, sem, backoff.pause)
                if rec.pause_s:
                    a.stopped.wait(timeout=rec.pause_s)
            return
        group = Group()
        try:
            for t in arrivals(load, s.duration_s, rng):
                if not _wait_until(a, t) or a.count_reached():
                    break
                req = _prepare(s, load, rng, picker, layout)
                group.spawn(self._send, role.key, req, t, sem)
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
            a.policy.api.layout,
        )
        rec = self._send(self.key, req, None, pause=self.backoff.pause)
        self.pause = rec.pause_s if rec.pause_s is not None else WAIT_S

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


def _prepare(
    s: Scenario, load: LoadSpec, rng: random.Random, picker: MixPicker, layout: ApiLayout
) -> PreparedRequest:
    return prepare(
        picker.pick(rng),
        load.model or s.target.model,
        load.prompt_tokens.sample(rng),
        load.max_tokens.sample(rng),
        rng,
        layout,
    )


def _wait_until(a: Agent, t: float) -> bool:
    """Sleep until run time ``t``; False if the run is stopped first."""
    while (delay := t - a.now()) > 0:
        if a.stopped.wait(timeout=delay):
            return False
    return not a.stopping()


# ---------------------------------------------------------------------------------------
# Locust's events: options, the web UI, the master's lead, the load-sending side.


@events.init_command_line_parser.add_listener
def _on_parser(parser: Any, **_: Any) -> None:
    O.add_options(parser)


@events.init.add_listener
def _on_init(environment: Any, web_ui: Any = None, **_: Any) -> None:
    from locust.runners import MasterRunner, WorkerRunner

    global _P
    runner = environment.runner
    opts = environment.parsed_options
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
        keys = O.load_keys(opts.loadkit_keys_file, os.environ, _INHERITED_KEYS)
    except O.KeysError as exc:
        fail(str(exc))
    p = _P = _Process()
    if not isinstance(runner, WorkerRunner):
        lead = p.lead = Lead(environment, keys, [FreeTierUser, PaidTierUser])
        _check_addressing(lead, environment, isinstance(runner, MasterRunner))
        if lead.coord.scenario is not None:
            _use_timeouts(lead.coord.scenario)
    L.end_with_the_run(p.lead, lambda: p.agent, opts, isinstance(runner, WorkerRunner))
    if not isinstance(runner, MasterRunner):
        a = p.agent = Agent(lambda kind, data: runner.send_message(kind, data), keys)
        runner.register_message("loadkit_grant", lambda msg, **_: a.on_grant(msg.data))
        runner.register_message("loadkit_start", lambda msg, **_: a.on_start(msg.data))
        runner.register_message("loadkit_stop", lambda msg, **_: a.on_stop(msg.data))
        # Added after the runner's own listeners: quitting fires in reverse, so this runs
        # before a worker tells the master it quits.
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
        board, now = None, None
        if p.lead is not None:
            board = TierBoard((k.label, k.tier) for k in p.lead.keys)
            p.lead.coord.on_record = board.add
            now = p.lead.run_time
        _webui.add_tabs(web_ui, p.ttft, board, now)
    # gevent's loop reads the clock once per turn and has not turned since it was created
    # (imports, this set-up): Locust's --run-time timer, started next, would count from
    # then and end a run on a busy machine seconds early.
    gevent.get_hub().loop.update_now()


def _check_addressing(lead: Lead, environment: Any, distributed: bool) -> None:
    """Refuse plain-mode options that cannot address the target, and a ``${VAR}`` in a
    header that this machine's processes lack (a master of workers started by hand only
    warns: they have their own environment)."""
    opts = environment.parsed_options
    spec = lead.coord.scenario.target if lead.coord.scenario else None
    if spec is None:
        try:
            spec = O.plain_target(opts, environment.host or "")
        except O.OptionsError as exc:
            fail(str(exc))
        lead.api = spec.target_api()
    try:
        O.resolve_api(spec, environment.host or "", os.environ)
    except ScenarioError as exc:
        if distributed and not getattr(opts, "processes", None):
            log.warning("loadkit: %s on the master: each worker needs it set", exc)
        else:
            fail(str(exc))


def _policy(a: Agent, opts: Any, host: str) -> Policy | str:
    """How this process sends, or why it cannot (it then takes no key)."""
    s = a.scenario
    try:
        spec = s.target if s is not None else O.plain_target(opts, host)
        api = O.resolve_api(spec, host, os.environ)
    except (ScenarioError, O.OptionsError) as exc:
        return f"{exc} (in the environment of {a.worker})"
    if s is None:
        return Policy(api, REQUEST_TIMEOUT_S)
    return Policy(api, s.target.request_timeout_s, s.honour_retry_after, s.max_retries)


def _guard_web_ui(opts: Any, web_ui: Any) -> None:
    login = O.web_login_from(os.environ)
    problem = O.web_ui_problem(
        opts.web_host, opts.web_port, bool(opts.web_login), login, bool(web_ui.auth_args)
    )
    if problem:
        fail(problem)
    if opts.web_login and login is not None:
        _webui.require_login(web_ui, login, opts.web_base_path or "")


def _use_timeouts(s: Scenario) -> None:
    _TierUser.connection_timeout = s.target.connect_timeout_s
    _TierUser.network_timeout = s.target.read_timeout_s


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    p = proc()
    opts = environment.parsed_options
    if p.lead is not None:
        p.lead.test_started()
    a = p.agent
    if a is not None:
        try:
            a.configure(opts.loadkit_run_id, opts.loadkit_scenario_json, opts.loadkit_start)
        except ScenarioError as exc:
            log.error("loadkit: the master's scenario does not load here: %s", exc)
            raise
        if a.scenario is not None:
            _use_timeouts(a.scenario)
        a.use(_policy(a, opts, environment.host or ""))
        if a.policy_problem:
            log.error("loadkit: %s: this process drives no key", a.policy_problem)
        a.hello()


def _on_quitting_sender(environment: Any, **_: Any) -> None:
    """A process that sends load shuts down (Ctrl-C on it, or the master's quit): open
    requests get the grace, and its last records and final report go to the master."""
    a = proc().agent
    if a is None:
        return
    grace = min(a.scenario.drain_s, STOP_GRACE_S) if a.scenario else STOP_GRACE_S
    try:
        a.drain(grace)
    except Exception as exc:  # the master is gone already: nothing left to tell it
        log.debug("loadkit: final report not sent (%s)", exc)


@events.quit.add_listener
def _on_quit(**_: Any) -> None:
    lead = proc().lead
    if lead is not None:
        log.info(lead.farewell())


@events.quitting.add_listener
def _on_quitting(environment: Any, **_: Any) -> None:
    p = proc()
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if p.lead is not None and prefix:
        _webui.write_ttft_csv(p.ttft, f"{prefix}_ttft.csv")
