"""A load-sending Locust process's side of a loadkit run (a worker, or the single process
of a local run): it asks the master for keys, waits for the master's t=0, sends its
finished records to the master in small batches, tells the master when the target fails
everything, and drains when the master says stop.

Talks to the master only through Locust's messages (``send`` is the runner's
``send_message``); imports gevent, never Locust, so the runner is passed in."""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.event import AsyncResult, Event

from loadkit import records as R
from loadkit.api import TargetApi
from loadkit.locustfiles._roles import Role, roles_from
from loadkit.outcomes import FailureWatch, classify
from loadkit.records import RequestRecord
from loadkit.runmeta import Clock, Origin, boot_id, fingerprint
from loadkit.scenario import Key, Scenario, scenario_from_dict

log = logging.getLogger("loadkit")

FLUSH_S = 0.25  # records reach the master at most this late (or BATCH_N at a time)
BATCH_N = 200
KEEPALIVE_S = 1.0  # with nothing to send, still report in-flight requests this often
CLAIM_TIMEOUT_S = 60.0

Send = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Policy:
    """How this process sends: the target's layout and auth (``${ENV}`` header values
    expanded from this process's environment), the whole-request bound, and the scenario's
    retry rule (plain mode: no retries)."""

    api: TargetApi = TargetApi()
    request_timeout_s: float = 600.0
    honour_retry_after: bool = False
    max_retries: int = 0


def worker_name() -> str:
    return f"locust-{socket.gethostname()[:8]}-{os.getpid()}"


class Agent:
    def __init__(self, send: Send, keys: list[Key], worker: str | None = None) -> None:
        self.send = send
        self.keys = {k.label: k for k in keys}
        self.worker = worker or worker_name()
        self.scenario: Scenario | None = None
        self.policy = Policy()
        # Why this process cannot address the target (a ${VAR} not set here): it then takes
        # no key, and the master names the keys it was granted as not driven.
        self.policy_problem: str | None = None
        self.run_id = ""
        self.clock: Clock | None = None
        self.quota = 0  # scenario max_requests share of this process (0 = none)
        self.started = Event()
        self.stopped = Event()
        self.seq = 0
        self.produced = 0
        self.cancelled = 0
        self.outbox: list[str] = []
        self.inflight: set[gevent.Greenlet] = set()  # requests sent, not finished
        self.queued: set[gevent.Greenlet] = set()  # requests waiting for a client-side slot
        self.watch: FailureWatch | None = None  # scenario mode: stop a target failing all
        self.failing = ""  # the watch's reason, once told to the master
        self._idle = Event()
        self._idle.set()
        self._pending: dict[int, AsyncResult] = {}
        self._tokens = itertools.count(1)
        self._flusher: gevent.Greenlet | None = None
        self._last_flush = time.monotonic()
        self._drained = Event()
        self._draining = False
        self._cut = Event()  # the grace is over: cancel what is still open
        self._reported = -1  # records counted in the last final report

    # -- settings from the master ----------------------------------------------------------

    def configure(self, run_id: str, scenario_json: str, start_json: str) -> None:
        """The master's forwarded options (Locust's spawn message): run id, the resolved
        scenario, and in plain mode the run's t=0."""
        self.run_id = run_id or self.run_id
        if scenario_json and self.scenario is None:
            self.scenario = scenario_from_dict(json.loads(scenario_json), source="<master>")
            self.watch = FailureWatch()
        if start_json and not self.started.is_set():
            self._start(json.loads(start_json), 0)

    def use(self, policy: Policy | str) -> None:
        """How this process addresses the target, or why it cannot (then it drives no key)."""
        if isinstance(policy, str):
            self.policy_problem = policy
        else:
            self.policy, self.policy_problem = policy, None

    def hello(self) -> None:
        self.send(
            "loadkit_hello", {"worker": self.worker, "pid": os.getpid(), "boot_id": boot_id()}
        )
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush_loop)

    def now(self) -> float:
        if self.clock is None:  # a request before any t=0 (should not happen): start here
            self.clock = Clock()
        return self.clock.now()

    # -- keys ------------------------------------------------------------------------------

    def claim(self, user_tier: str) -> tuple[Key, list[Role] | None] | None:
        """Ask the master for a key for a user of ``user_tier``: the key (this process's own
        copy) and, in scenario mode, its roles; None when there is none for this user."""
        token = next(self._tokens)
        result: AsyncResult = AsyncResult()
        self._pending[token] = result
        try:
            self.send("loadkit_claim", {"token": token, "tier": user_tier, "worker": self.worker})
            data = result.get(timeout=CLAIM_TIMEOUT_S)
        except gevent.Timeout:
            log.error("loadkit: no key from the master within %.0f s", CLAIM_TIMEOUT_S)
            return None
        finally:
            self._pending.pop(token, None)
        grant = data.get("grant")
        if not grant:
            return None
        label = grant["label"]
        key = self.keys.get(label)
        if self.policy_problem is not None:
            log.error("loadkit: cannot drive key %s: %s", label, self.policy_problem)
            self.send("loadkit_refuse", {"label": label, "reason": self.policy_problem})
            return None
        if key is None or fingerprint(key.secret) != grant["fingerprint"]:
            reason = (
                f"this process has no key labelled {label!r} (its keys: "
                f"{', '.join(sorted(self.keys)) or 'none'})"
                if key is None
                else f"this process's key {label!r} is not the master's (fingerprints differ)"
            )
            log.error("loadkit: %s; give every process the same keys", reason)
            self.send("loadkit_refuse", {"label": label, "reason": reason})
            return None
        if data.get("start"):
            self._start(data["start"]["origin"], data["start"]["quota"])
        roles = grant.get("roles")
        if roles is None:
            return key, None
        assert self.scenario is not None, "scenario mode without the master's scenario"
        return key, roles_from(roles, key, self.scenario)

    def on_grant(self, data: dict[str, Any]) -> None:
        result = self._pending.get(int(data["token"]))
        if result is not None:
            result.set(data)

    # -- start and stop --------------------------------------------------------------------

    def on_start(self, data: dict[str, Any]) -> None:
        self._start(data["origin"], data.get("quota", 0))

    def _start(self, origin: dict[str, Any], quota: int) -> None:
        if self.started.is_set():
            return
        self.clock = Origin.from_dict(origin).local_clock()
        self.quota = int(quota or 0)
        self.started.set()

    def wait_start(self) -> bool:
        """Block until the master's t=0 (True) or a stop before it (False)."""
        gevent.wait([self.started, self.stopped], count=1)
        return bool(self.started.is_set() and not self.stopped.is_set())

    def stopping(self) -> bool:
        return bool(self.stopped.is_set())

    def count_reached(self) -> bool:
        return bool(self.quota) and self.seq >= self.quota

    def on_stop(self, data: dict[str, Any]) -> None:
        grace = float(data.get("grace_s", 0.0))
        if self._draining and grace <= 0:
            self._cut.set()  # a second stop, at once: the grace already under way ends
        gevent.spawn(self.drain, grace)

    def drain(self, grace_s: float) -> None:
        """No new requests; what waits for a client-side slot is cancelled at once, open
        requests get ``grace_s`` to finish, then are cancelled (each recorded so); every
        record goes to the master, then the final report."""
        if self._draining:
            if grace_s <= 0:
                self._cut.set()
            self._drained.wait()
        else:
            self._draining = True
            self.stopped.set()
            if self.queued:
                gevent.killall(list(self.queued), block=True, timeout=10)
            if grace_s > 0 and not self._cut.is_set():
                gevent.wait([self._idle, self._cut], count=1, timeout=grace_s)
            if self.inflight or self.queued:
                gevent.killall([*self.inflight, *self.queued], block=True, timeout=10)
            self._drained.set()
        self.report_done()

    def report_done(self) -> None:
        """The final report: every record first, then the count (again only if it grew:
        a process asked twice, by the master's stop and its own quit, answers once)."""
        if self._reported == self.produced:
            return
        self.flush()
        self.send(
            "loadkit_done",
            {"worker": self.worker, "records": self.produced, "cancelled": self.cancelled},
        )
        self._reported = self.produced

    # -- requests and records --------------------------------------------------------------

    def next_id(self) -> str:
        self.seq += 1
        return f"{self.worker}-{self.seq}"

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        g = gevent.getcurrent()
        self.inflight.add(g)
        self._idle.clear()
        try:
            yield
        finally:
            self.inflight.discard(g)
            if not self.inflight:
                self._idle.set()

    def emit(self, rec: RequestRecord) -> None:
        self.outbox.append(rec.to_json())
        self.produced += 1
        if rec.transport_error == R.CANCELLED:
            self.cancelled += 1
        if len(self.outbox) >= BATCH_N:
            self.flush()
        watch = self.watch
        if watch is not None and not self.failing:
            outcome = classify(rec.status, rec.error_code, rec.content_type, rec.transport_error)
            if watch.observe(outcome, rec.status, rec.transport_error, rec.end_s):
                self.failing = watch.reason()
                gevent.spawn(self._tell_failing)

    def _tell_failing(self) -> None:
        """The target fails everything this process sends: the master stops the run."""
        log.error("loadkit: %s; asking the master to stop the run", self.failing)
        try:
            self.flush()  # the evidence first: messages to the master arrive in order
            self.send("loadkit_failing", {"reason": self.failing})
        except Exception as exc:
            log.warning("loadkit: could not tell the master the target fails (%s)", exc)

    def flush(self) -> None:
        lines, self.outbox = self.outbox, []
        self._last_flush = time.monotonic()
        try:
            self.send(
                "loadkit_records",
                {"worker": self.worker, "lines": lines, "in_flight": len(self.inflight)},
            )
        except Exception:  # the connection is being reset: keep them for the next batch
            self.outbox[:0] = lines
            raise

    def key_finished(self, label: str) -> None:
        try:
            self.flush()  # its records first: messages to the master arrive in order
            self.send("loadkit_finished", {"label": label})
        except Exception as exc:  # the master learns it from the final report instead
            log.warning("loadkit: could not tell the master key %s is done (%s)", label, exc)

    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(FLUSH_S)
            if self.outbox or time.monotonic() - self._last_flush >= KEEPALIVE_S:
                try:
                    self.flush()
                except Exception as exc:
                    log.warning("loadkit: records not sent yet (%s); retrying", exc)
