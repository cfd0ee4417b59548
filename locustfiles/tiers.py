"""loadkit's Locust users: ``FreeTierUser`` and ``PaidTierUser`` load an OpenAI-compatible
API with per-tier keys, and every request becomes a loadkit request record (the same shape,
through the same code, as the asyncio engine's).

Two modes (``docs/locust.md``):

* **scenario mode** (``--loadkit-scenario`` / ``LOADKIT_SCENARIO``): the users drive the
  (key, load phase) roles of ``loadkit.scenario.plan``: closed-loop phases as looping users,
  open-loop phases (constant, poisson, burst) as schedulers that send each request at its
  scheduled time in its own greenlet. ``loadkit run --engine locust`` uses this mode.
* **plain mode** (no scenario): ``locust -f locustfiles/tiers.py --host .../api/v1`` with
  the web UI; users pick keys round-robin and tasks by weight.

Keys are shared out across processes by ``runner.worker_index``: each key is driven by
exactly one process. Each load-generating process writes its own
``records-locust-<index>.jsonl`` into ``LOADKIT_OUT`` as requests finish, and a
``worker-locust-<index>.done.json`` marker when it quits.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
from pathlib import Path
from typing import Any

try:
    import locustfiles  # noqa: F401
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent
from gevent import GreenletExit
from gevent.lock import BoundedSemaphore
from gevent.pool import Group
from locust import FastHttpUser, events, task
from locust.runners import MasterRunner, WorkerRunner
from locust.user.users import LOCUST_STATE_STOPPING

from locustfiles import _setup as S
from locustfiles._exchange import ALL_STATUSES, REQUEST_ID_HEADER, exchange, request_name
from locustfiles._ttft import TtftStats, install_web_ui
from loadkit.arrivals import arrivals
from loadkit.payloads import MixPicker, PreparedRequest, prepare
from loadkit.records import RecordWriter, RequestRecord
from loadkit.runmeta import new_run_id
from loadkit.scenario import Key, LoadSpec, Scenario
from loadkit.trace import RequestInfo

log = logging.getLogger("loadkit.locust")

# Users that have driven their roles idle this long between (empty) tasks: waiting, so a
# stop kills them at once instead of waiting out --stop-timeout.
_IDLE_S = 3600.0
# gevent's timers wake up to ~1 ms late: wake a little early, then yield until due.
_EARLY_S = 0.0012
# How often a sleeping scheduler or user looks whether the run is stopping.
_STOP_POLL_S = 0.2


# ---------------------------------------------------------------------------------------
# Options (each also an environment variable; secrets only ever come from the environment)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser  # include_in_web_ui is only understood by Locust's own parser, not groups
    g.add_argument(
        "--loadkit-scenario",
        env_var="LOADKIT_SCENARIO",
        default="",
        include_in_web_ui=False,
        help="scenario file (TOML, or the runner's resolved JSON): scenario mode",
    )
    g.add_argument(
        "--loadkit-keys-file",
        env_var="LOADKIT_KEYS_FILE",
        default="",
        include_in_web_ui=False,
        help='JSON keys file {"keys": [{label, tier, key}]} (the reference server writes one)',
    )
    g.add_argument(
        "--loadkit-out",
        env_var="LOADKIT_OUT",
        default="",
        include_in_web_ui=False,
        help="run directory for records-locust-<worker>.jsonl (none = no records)",
    )
    g.add_argument(
        "--loadkit-workers",
        env_var="LOADKIT_WORKERS",
        type=int,
        default=0,
        include_in_web_ui=False,
        help="load-generating processes the keys are shared among (default: --expect-workers)",
    )
    g.add_argument(
        "--loadkit-paid-tier",
        env_var="LOADKIT_PAID_TIER",
        default=S.DEFAULT_PAID_TIER,
        help="plain mode: the tier whose keys PaidTierUser uses",
    )
    g.add_argument(
        "--loadkit-weights",
        env_var="LOADKIT_WEIGHTS",
        default=S.DEFAULT_WEIGHTS,
        help="plain mode: task weights, kind=weight,... "
        "(kinds: chat_stream, chat, completions_stream, completions, models)",
    )
    g.add_argument(
        "--loadkit-wait",
        env_var="LOADKIT_WAIT",
        default="1",
        help="plain mode: seconds between a user's requests, or min,max",
    )
    g.add_argument(
        "--loadkit-model", env_var="LOADKIT_MODEL", default="loadkit-small", help="plain mode"
    )
    g.add_argument(
        "--loadkit-prompt-tokens",
        env_var="LOADKIT_PROMPT_TOKENS",
        type=int,
        default=16,
        help="plain mode: prompt length in tokens",
    )
    g.add_argument(
        "--loadkit-max-tokens",
        env_var="LOADKIT_MAX_TOKENS",
        type=int,
        default=16,
        help="plain mode: max_tokens of each completion",
    )
    g.add_argument(
        "--loadkit-timeouts",
        env_var="LOADKIT_TIMEOUTS",
        default="10,120,600",
        help="plain mode: connect, read (longest silence), whole-request timeouts in seconds",
    )


# ---------------------------------------------------------------------------------------
# Per-process state


class LoadkitProcess:
    """What one Locust process shares among its users: the run clock, keys, roles, the
    record writer, the TTFT statistics."""

    def __init__(self, environment: Any) -> None:
        self.env = environment
        self.clock = S.clock_from_env(os.environ)
        self.run_id = os.environ.get("LOADKIT_RUN_ID") or new_run_id()
        self.ttft = TtftStats()
        self.configured = False
        self.scenario: Scenario | None = None
        self.keys: list[Key] = []
        self.index = 0
        self.count = 1
        self.worker = S.worker_label(0)
        self.out: Path | None = None
        self.writer: RecordWriter | None = None
        self.seq = 0
        self.sent = 0
        self.cap = 0
        self.cancelled = 0
        self.origin = 0.0
        self.stopping = False
        self.killed_running = False
        self.board: RoleBoard | None = None
        self.plain_keys: dict[str, list[Key]] = {}
        self.plain_next: dict[str, int] = {}
        self.sems: dict[tuple[int, str], BoundedSemaphore] = {}
        self.done_sent = False
        self.done_workers: set[int] = set()
        self.stop_greenlet: gevent.Greenlet | None = None
        self.timeouts = (10.0, 120.0, 600.0)

    @property
    def generates_load(self) -> bool:
        return not isinstance(self.env.runner, MasterRunner)

    def now(self) -> float:
        return self.clock.now()

    def configure(self) -> None:
        """Read options and keys, share keys out; called at every test start."""
        opts = self.env.parsed_options
        runner = self.env.runner
        self.stopping = False
        if isinstance(runner, WorkerRunner):
            self.index = max(0, runner.worker_index)
            self.count = (
                getattr(opts, "loadkit_workers", 0) or getattr(opts, "expect_workers", 1) or 1
            )
        else:
            self.index, self.count = 0, max(1, getattr(opts, "loadkit_workers", 0) or 1)
        self.worker = S.worker_label(self.index)
        out = getattr(opts, "loadkit_out", "") or ""
        self.out = Path(out) if out else None
        file_keys = (
            S.read_keys_file(opts.loadkit_keys_file)
            if getattr(opts, "loadkit_keys_file", "")
            else []
        )
        scenario_path = getattr(opts, "loadkit_scenario", "") or ""
        if scenario_path:
            sc = S.read_scenario(scenario_path)
            self.scenario = sc
            _apply_scenario_tasks()
            t = sc.target
            self.timeouts = (t.connect_timeout_s, t.read_timeout_s, t.request_timeout_s)
            if not self.generates_load:
                self.configured = True
                return
            self.keys = S.scenario_keys(sc, file_keys or S.keys_from_env(_env_keys_only()))
            mine = S.my_keys(self.keys, self.index, self.count)
            roles = S.roles_for(sc, self.keys, mine)
            self.cap = S.request_cap(sc.max_requests, self.index, self.count)
            self.board = RoleBoard(self, roles)
            if self.index >= self.count:
                log.warning(
                    "loadkit: worker index %d >= %d workers: this worker drives no key "
                    "(start the master with --expect-workers N)",
                    self.index,
                    self.count,
                )
        else:
            self.scenario = None
            keys = S.keys_from_env({**_env_keys_only(), **_file_env(opts)})
            self.keys = keys
            self.timeouts = _parse_timeouts(opts.loadkit_timeouts)
            paid = opts.loadkit_paid_tier
            by_class = {
                S.FREE_USER: [k for k in keys if k.tier == S.FREE_TIER],
                S.PAID_USER: [k for k in keys if k.tier == paid],
            }
            self.plain_keys = {
                cls: S.my_keys(ks, self.index, self.count) if self.index < self.count else []
                for cls, ks in by_class.items()
            }
            self.plain_next = {cls: 0 for cls in by_class}
            _apply_plain_weights(opts.loadkit_weights)
        self.configured = True

    # -- records ----------------------------------------------------------------------

    def next_id(self) -> str:
        self.seq += 1
        return f"{self.worker}-{self.seq}"

    def write(self, rec: RequestRecord) -> None:
        if self.out is None:
            return
        if self.writer is None:
            self.writer = RecordWriter(self.out / S.records_name(self.worker))
        self.writer.write(rec)

    def take_slot(self) -> bool:
        if self.cap and self.sent >= self.cap:
            return False
        self.sent += 1
        return True

    def sem(self, role: S.Role) -> BoundedSemaphore | None:
        if not role.load.max_in_flight:
            return None
        k = (role.index, role.key.label)
        if k not in self.sems:
            self.sems[k] = BoundedSemaphore(role.load.max_in_flight)
        return self.sems[k]

    def finish(self) -> None:
        """Process quitting: cancel what still runs (each becomes a "cancelled" record),
        close the records, leave the done-marker."""
        if not self.generates_load:
            return
        if self.board is not None:
            self.killed_running = self.board.kill_all() or self.killed_running
        n = self.writer.count if self.writer else 0
        if self.writer is not None:
            self.writer.close()
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            S.DoneMarker(
                worker=self.worker,
                records=n,
                cancelled=self.cancelled,
                pid=os.getpid(),
                status="interrupted" if self.killed_running else "ok",
                detail="stopped while requests were running" if self.killed_running else "",
                extra={"clock": self.clock.mode, "run_id": self.run_id},
            ).write(self.out)

    # -- ending the run (scenario mode) -----------------------------------------------

    def stop_run(self, reason: str) -> None:
        """Stop the whole test from the master (or the local runner): stop() lets users
        finish what they are doing (--stop-timeout is the drain); quit() then ends."""
        runner = self.env.runner
        if self.stop_greenlet is not None or isinstance(runner, WorkerRunner):
            return

        def _stop() -> None:
            log.info("loadkit: %s, stopping", reason)
            runner.stop()
            runner.quit()

        self.stop_greenlet = gevent.spawn(_stop)

    def roles_done(self) -> None:
        if self.done_sent:
            return
        self.done_sent = True
        runner = self.env.runner
        if isinstance(runner, WorkerRunner):
            # Called from greenlet link callbacks (in the hub): send from a greenlet.
            gevent.spawn(runner.send_message, "loadkit_roles_done", {"index": self.index})
        else:
            self.stop_run("schedule complete")

    def on_worker_done(self, msg: Any, **_: Any) -> None:
        self.done_workers.add(int(msg.data.get("index", -1)))
        if len(self.done_workers) >= self.count:
            self.stop_run("schedule complete on every worker")


PROC: LoadkitProcess | None = None


def _proc() -> LoadkitProcess:
    assert PROC is not None, "loadkit's init listener did not run"
    return PROC


def _env_keys_only() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("LOADKIT_KEYS_")}


def _file_env(opts: Any) -> dict[str, str]:
    path = getattr(opts, "loadkit_keys_file", "")
    return {"LOADKIT_KEYS_FILE": path} if path else {}


def _parse_timeouts(text: str) -> tuple[float, float, float]:
    try:
        c, r, t = (float(x) for x in text.split(","))
    except ValueError:
        raise S.SetupError(
            f"LOADKIT_TIMEOUTS: expected connect,read,total seconds, got {text!r}"
        ) from None
    if min(c, r, t) <= 0:
        raise S.SetupError(f"LOADKIT_TIMEOUTS: every timeout must be > 0, got {text!r}")
    return c, r, t


# ---------------------------------------------------------------------------------------
# Roles (scenario mode): which user drives which (key, load phase)


class RoleBoard:
    """Hands this process's roles to its users. Locust decides how many users of each class
    a process gets, and that need not match the roles of the keys it drives: each user takes
    a role of its class as it starts; once every expected user has started (or after a
    second), roles still open are adopted by the least busy users (of their class if any).
    A user may therefore drive several roles, each in its own greenlet."""

    def __init__(self, proc: LoadkitProcess, roles: list[S.Role]) -> None:
        self.proc = proc
        self.roles = roles
        self.pending = list(roles)
        self.hosts: list[LoadkitUser] = []
        self.complete = False
        self.finished = 0
        if not roles:
            self.complete = True
        self._timer = gevent.spawn_later(1.0, self.adopt_all)

    def join(self, user: LoadkitUser) -> None:
        self.hosts.append(user)
        cls = type(user).__name__
        for role in self.pending:
            if role.user_class == cls:
                self.pending.remove(role)
                user.host(role)
                break
        runner = self.proc.env.runner
        expected = sum(getattr(runner, "target_user_classes_count", {}).values()) or getattr(
            runner, "target_user_count", 0
        )
        if expected and len(self.hosts) >= expected:
            self.adopt_all()

    def adopt_all(self) -> None:
        if self.complete:
            return
        if self.pending and not self.hosts:
            log.error(
                "loadkit: %d roles but no Locust user on this process to drive them "
                "(run with -u >= the number of roles)",
                len(self.pending),
            )
            return
        for role in list(self.pending):
            same = [h for h in self.hosts if type(h).__name__ == role.user_class]
            host = min(same or self.hosts, key=lambda h: len(h.role_group))
            self.pending.remove(role)
            host.host(role)
        self.complete = True
        self.check_done()

    def role_finished(self) -> None:
        self.finished += 1
        self.check_done()

    def check_done(self) -> None:
        if self.complete and self.finished >= len(self.roles):
            self.proc.roles_done()

    def kill_all(self) -> bool:
        running = False
        for h in self.hosts:
            if len(h.role_group):
                running = True
                h.role_group.kill(block=True, timeout=5)
        return running


# ---------------------------------------------------------------------------------------
# Users


class LoadkitUser(FastHttpUser):
    abstract = True
    tier_class = ""

    def __init__(self, environment: Any) -> None:
        proc = _proc()
        if not proc.configured:
            proc.configure()
        connect, read, _ = proc.timeouts
        # Explicit, per run: FastHttpUser's 60 s defaults would measure the tool.
        self.connection_timeout = connect
        self.network_timeout = read
        # One socket per request in flight: bursts and long streams must not queue in the
        # pool (a wait there would be counted as the target's latency).
        self.concurrency = 100_000
        super().__init__(environment)
        self.client.client.valid_response_codes = ALL_STATUSES
        self.role_group = Group()
        self.roles_done = False
        self._plain_key: Key | None = None
        self._rng = random.Random()

    def on_start(self) -> None:
        proc = _proc()
        if proc.scenario is not None:
            if proc.board is not None:
                proc.board.join(self)
            return
        keys = proc.plain_keys.get(type(self).__name__, [])
        if not keys:
            log.error(
                "loadkit: %s has no key on this process (set LOADKIT_KEYS_%s or "
                "LOADKIT_KEYS_FILE; paid tier: --loadkit-paid-tier)",
                type(self).__name__,
                "FREE" if type(self).__name__ == S.FREE_USER else "PRO",
            )
            from locust.exception import StopUser

            raise StopUser()
        i = proc.plain_next[type(self).__name__]
        proc.plain_next[type(self).__name__] = i + 1
        self._plain_key = keys[i % len(keys)]

    def wait_time(self) -> float:
        proc = _proc()
        if proc.scenario is not None:
            return _IDLE_S
        lo, hi = S.parse_wait(self.environment.parsed_options.loadkit_wait)
        return lo if lo == hi else random.uniform(lo, hi)

    # -- scenario mode ----------------------------------------------------------------

    def host(self, role: S.Role) -> None:
        if role.closed:
            rng = random.Random(f"{_proc().scenario.seed}/{role.index}/{role.key.label}")
            picker = MixPicker(role.load.mix)
            users = [
                self.role_group.spawn(self._closed_user, role, rng, picker, u)
                for u in range(role.load.concurrency)
            ]
            done = {"n": 0}

            def _one_done(_g: Any) -> None:
                done["n"] += 1
                if done["n"] == len(users):
                    _proc().board.role_finished()  # type: ignore[union-attr]

            for g in users:
                g.link(_one_done)
        else:
            g = self.role_group.spawn(self._scheduler, role)
            g.link(lambda _g: _proc().board.role_finished())  # type: ignore[union-attr]

    @task
    def loadkit(self) -> None:
        proc = _proc()
        if proc.scenario is None:
            self._plain_request()
            return
        if self.roles_done:
            return
        try:
            while True:
                self.role_group.join()
                board = proc.board
                if board is None or (board.complete and not len(self.role_group)):
                    break
                gevent.sleep(0.05)
        except GreenletExit:
            # --stop-timeout is over: cancel what still runs; each request left open
            # becomes a "cancelled" record.
            if len(self.role_group):
                proc.killed_running = True
            self.role_group.kill(block=True, timeout=5)
            raise
        self.roles_done = True

    def _stopping(self) -> bool:
        return _proc().stopping or self._state == LOCUST_STATE_STOPPING

    def _sleep_until(self, when: float) -> bool:
        """Sleep until run time ``when``; False if the run started stopping meanwhile."""
        now = _proc().now
        while True:
            if self._stopping():
                return False
            delay = when - now()
            if delay <= 0:
                return True
            if delay > _STOP_POLL_S:
                gevent.sleep(_STOP_POLL_S)
            elif delay > _EARLY_S:
                gevent.sleep(delay - _EARLY_S)
            else:
                while now() < when:
                    gevent.sleep(0)
                return not self._stopping()

    def _closed_user(self, role: S.Role, rng: random.Random, picker: MixPicker, u: int) -> None:
        proc = _proc()
        sc = proc.scenario
        assert sc is not None
        load = role.load
        if not self._sleep_until(proc.origin + load.start_s + rng.random() * 0.05 * u):
            return
        end = proc.origin + load.active_until(sc.duration_s)
        sem = proc.sem(role)
        while not self._stopping() and proc.now() < end and proc.take_slot():
            rec = self._request(role.key, self._prepare(sc, load, rng, picker), sem, None)
            pause = load.think_s
            if rec is not None and rec.status == 429:
                pause = max(pause, backoff_after_429(load, rec.retry_after_s))
            if pause and not self._sleep_until(proc.now() + pause):
                return

    def _scheduler(self, role: S.Role) -> None:
        proc = _proc()
        sc = proc.scenario
        assert sc is not None
        load = role.load
        rng = random.Random(f"{sc.seed}/{role.index}/{role.key.label}")
        picker = MixPicker(load.mix)
        sem = proc.sem(role)
        requests = Group()
        try:
            for t in arrivals(load, sc.duration_s, rng):
                when = proc.origin + t
                if not self._sleep_until(when) or not proc.take_slot():
                    break
                req = self._prepare(sc, load, rng, picker)
                requests.spawn(self._request, role.key, req, sem, when)
            requests.join()
        except GreenletExit:
            requests.kill(block=True, timeout=5)
            raise

    @staticmethod
    def _prepare(
        sc: Scenario, load: LoadSpec, rng: random.Random, picker: MixPicker
    ) -> PreparedRequest:
        return prepare(
            picker.pick(rng),
            load.model or sc.target.model,
            load.prompt_tokens.sample(rng),
            load.max_tokens.sample(rng),
            rng,
        )

    # -- plain mode -------------------------------------------------------------------

    def _plain_request(self, kind: str | None = None) -> None:
        opts = self.environment.parsed_options
        assert self._plain_key is not None
        req = prepare(
            kind or "chat_stream",
            opts.loadkit_model,
            opts.loadkit_prompt_tokens,
            opts.loadkit_max_tokens,
            self._rng,
        )
        self._request(self._plain_key, req, None, None)

    # -- one request (and its retries) ------------------------------------------------

    def _request(
        self,
        key: Key,
        req: PreparedRequest,
        sem: BoundedSemaphore | None,
        scheduled: float | None,
        attempt: int = 1,
    ) -> RequestRecord | None:
        proc = _proc()
        info = RequestInfo(
            proc.run_id,
            "locust",
            proc.worker,
            proc.next_id(),
            key.tier,
            key.label,
            req.endpoint,
            req.stream,
            req.model,
            attempt,
            scheduled,
        )
        headers = {
            "Authorization": f"Bearer {key.secret}",
            "Accept-Encoding": "identity",
            REQUEST_ID_HEADER: info.request_id,
        }
        if req.body is not None:
            headers["Content-Type"] = "application/json"
        queued = 0.0
        if sem is not None:
            q0 = proc.now()
            sem.acquire()
            queued = proc.now() - q0
        try:
            out = exchange(
                self.client,
                proc.now,
                info,
                req,
                headers,
                proc.timeouts[2],
                self.environment.events.request.fire,
                queued,
            )
        except GreenletExit as exc:
            rec = getattr(exc, "loadkit_record", None)
            if rec is not None:
                proc.write(rec)
                proc.cancelled += 1
            raise
        finally:
            if sem is not None:
                sem.release()
        rec = out.record
        proc.write(rec)
        if rec.first_token_s is not None:
            proc.ttft.log(request_name(req, key.tier), (rec.first_token_s - rec.send_s) * 1000)
        sc = proc.scenario
        if (
            sc is not None
            and sc.honour_retry_after
            and rec.status == 429
            and attempt <= sc.max_retries
            and not self._stopping()
        ):
            delay = rec.retry_after_s if rec.retry_after_s is not None else 1.0
            if self._sleep_until(proc.now() + delay):
                return self._request(key, req, sem, proc.now(), attempt + 1)
        return rec


def backoff_after_429(load: LoadSpec, retry_after_s: float | None) -> float:
    """How long a closed-loop user pauses after a 429 (LoadSpec.backoff_429_s); the same
    rule as the asyncio engine's, which cannot be imported here (it imports asyncio/aiohttp
    and this process runs gevent)."""
    if load.backoff_429_s is not None:
        return load.backoff_429_s
    return min(5.0, retry_after_s) if retry_after_s is not None else 1.0


class FreeTierUser(LoadkitUser):
    """Free-tier keys (tier ``free``)."""

    tier_class = S.FREE_USER


class PaidTierUser(LoadkitUser):
    """Paid-plan keys: in scenario mode every non-free tier of the scenario; in plain mode
    the tier given by ``--loadkit-paid-tier`` / ``LOADKIT_PAID_TIER`` (default ``pro``)."""

    tier_class = S.PAID_USER


# Plain-mode tasks, one per request kind, weighted by --loadkit-weights.
def _kind_task(kind: str):  # type: ignore[no-untyped-def]
    def run(user: LoadkitUser) -> None:
        user._plain_request(kind)

    run.__name__ = kind
    return run


_KIND_TASKS = {kind: _kind_task(kind) for kind in S.MIX_KINDS}


def _apply_plain_weights(text: str) -> None:
    weights = S.parse_weights(text)
    lo = min(w for _, w in weights)
    tasks = []
    for kind, w in weights:
        tasks += [_KIND_TASKS[kind]] * max(1, round(w / lo))  # Locust weighs by repetition
    for cls in (FreeTierUser, PaidTierUser):
        cls.tasks = tasks


def _apply_scenario_tasks() -> None:
    for cls in (FreeTierUser, PaidTierUser):
        cls.tasks = [LoadkitUser.loadkit]


# ---------------------------------------------------------------------------------------
# Events


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    global PROC
    PROC = LoadkitProcess(environment)
    runner = environment.runner
    events_ = environment.events
    if isinstance(runner, WorkerRunner):
        events_.report_to_master.add_listener(PROC.ttft.on_report_to_master)
    if isinstance(runner, MasterRunner):
        events_.worker_report.add_listener(PROC.ttft.on_worker_report)
        runner.register_message("loadkit_roles_done", PROC.on_worker_done)
    if environment.web_ui is not None:
        install_web_ui(environment, PROC.ttft)
    opts = environment.parsed_options
    if opts is not None and not getattr(opts, "loadkit_scenario", ""):
        _apply_plain_weights(getattr(opts, "loadkit_weights", S.DEFAULT_WEIGHTS))


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    proc = _proc()
    proc.configure()
    proc.origin = proc.now()
    sc = proc.scenario
    if sc is not None and not isinstance(environment.runner, WorkerRunner):
        proc.stop_greenlet = None
        if not math.isinf(sc.duration_s):
            # A little after the schedules end on every worker (their origins differ by
            # the spawn message's latency), so no scheduled arrival is cut off.
            gevent.spawn_later(sc.duration_s + 0.25, proc.stop_run, "duration reached")


@events.test_stopping.add_listener
def _on_test_stopping(environment: Any, **_: Any) -> None:
    _proc().stopping = True


@events.reset_stats.add_listener
def _on_reset_stats(**_: Any) -> None:
    if PROC is not None:
        PROC.ttft.reset()


@events.quitting.add_listener
def _on_quitting(environment: Any, **_: Any) -> None:
    proc = _proc()
    proc.finish()
    opts = environment.parsed_options
    prefix = getattr(opts, "csv_prefix", None) if opts is not None else None
    if prefix and not isinstance(environment.runner, WorkerRunner):
        Path(f"{prefix}_ttft.csv").write_text(proc.ttft.csv_text(), encoding="utf-8")
