"""The leading Locust process of a loadkit run (the master, or the single process of a
local run), wired to Locust: the run directory, the scenario sent to the workers in
Locust's spawn messages, the workers' messages fed to the ``Coordinator``, t=0, the end of
the run — at the schedule's end, on a stop (graceful, or at once), or early when the target
fails everything — and run.json. Imports gevent, never Locust: the environment is passed
in."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import gevent
from gevent.event import Event

from loadkit.api import TargetApi
from loadkit.locustfiles._coordinator import Coordinator, check_out_dir, write_end, write_start
from loadkit.locustfiles._options import tier_matches
from loadkit.runmeta import Clock, Origin, RunMeta, fingerprint, new_run_id
from loadkit.scenario import Key, Scenario, ScenarioError, load_scenario, plan, scenario_to_dict

log = logging.getLogger("loadkit")

STOP_GRACE_S = 5.0  # a stop before the schedule's end: open requests get this long (≤ drain)
DONE_TIMEOUT_S = 15.0  # beyond the grace, how long the master waits for final reports
START_LEAD_S = 0.1  # t=0 this far after the decision, so the start message is there first
DEFAULT_PROMISES = {"free": "60/60/3", "pro": "1000/60/10", "enterprise": "10000/60/100"}


@dataclass(frozen=True)
class Ending:
    """How a run that did not reach its schedule's end stops: the grace open requests get
    (None: the scenario's drain, at most STOP_GRACE_S) and whether it was interrupted."""

    grace_s: float | None = None
    interrupted: bool = True


def fail(message: str) -> NoReturn:
    """Refuse to run: the reason on stderr, exit code 2."""
    print(f"loadkit: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class Lead:
    def __init__(self, environment: Any, keys: list[Key], user_classes: list[Any]) -> None:
        """``user_classes``: the tier users (each with a ``tier``), whose ``fixed_count``
        scenario mode sets."""
        self.environment = environment
        self.runner = environment.runner
        self.options = environment.parsed_options
        self.keys = keys
        self.finished = False
        self.ending = Ending()  # how an early stop ends the run (a graceful stop by default)
        self.api: TargetApi | None = None  # plain mode: how the target is addressed
        self.reports = Event()
        self.written = Event()  # run.json holds the run's end
        self.watcher: gevent.Greenlet | None = None
        opts = self.options
        out = Path(opts.loadkit_out or f"runs/locust-{new_run_id()}")
        problem = check_out_dir(out, out.name)
        if problem:
            fail(problem)
        scenario = None
        if opts.loadkit_scenario:
            try:
                scenario = load_scenario(opts.loadkit_scenario)
                plan(scenario, keys)
            except ScenarioError as exc:
                fail(str(exc))
            missing = sorted({ld.tier for ld in scenario.load} - {k.tier for k in keys})
            if missing:
                fail(
                    f"{scenario.source}: no keys of tier {', '.join(missing)} on the master "
                    "(--loadkit-keys-file, or LOADKIT_<TIER>_KEYS in its environment)"
                )
            self._setup_scenario(scenario, user_classes)
        out.mkdir(parents=True, exist_ok=True)
        log.info("loadkit: run %s: records and run.json go to %s", out.name, out)
        self.coord = Coordinator(out, out.name, keys, scenario, opts.loadkit_paid_tier or None)
        opts.loadkit_run_id = out.name
        self._register()

    def _setup_scenario(self, scenario: Scenario, user_classes: list[Any]) -> None:
        """One user per key with load (``fixed_count``), and the resolved scenario forwarded
        to the workers in Locust's spawn messages (without the embedded server's config
        path, which only means something on this machine)."""
        opts = self.options
        loaded = {k.label: k for k, _ in plan(scenario, self.keys)}.values()
        paid = opts.loadkit_paid_tier or None
        for cls in user_classes:
            cls.fixed_count = sum(tier_matches(k.tier, cls.tier, paid) for k in loaded)
        if opts.num_users is None:
            opts.num_users = sum(cls.fixed_count for cls in user_classes)
        if opts.spawn_rate is None:
            opts.spawn_rate = max(1, opts.num_users)
        d = scenario_to_dict(scenario)
        d["target"].pop("server_config", None)
        opts.loadkit_scenario_json = json.dumps(d)

    def _register(self) -> None:
        coord, runner = self.coord, self.runner

        unserved: set[str] = set()

        def on_claim(msg: Any, **_: Any) -> None:
            grant = coord.claim(msg.node_id, msg.data["tier"])
            if grant is None and coord.scenario is None and msg.data["tier"] not in unserved:
                unserved.add(msg.data["tier"])
                log.warning("loadkit: the master has no keys for %s users", msg.data["tier"])
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
            self.reports.set()

        def on_hello(msg: Any, **_: Any) -> None:
            d = msg.data
            coord.hello(msg.node_id, str(d["worker"]), int(d["pid"]), str(d["boot_id"]))

        def on_failing(msg: Any, **_: Any) -> None:
            # Not from inside the message loop: ending the run waits for the reports.
            gevent.spawn(self.target_failing, str(msg.data["reason"]))

        handlers = {
            "loadkit_failing": on_failing,
            "loadkit_hello": on_hello,
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
        events = self.environment.events
        events.heartbeat_sent.add_listener(
            lambda client_id, **_: coord.peer(client_id) if client_id in coord.peers else None
        )
        events.spawning_complete.add_listener(lambda user_count, **_: coord.spawned(user_count))

        # Every way Locust ends a run (--run-time, Ctrl-C, SIGTERM, the last worker
        # quitting) goes through runner.quit(): first the workers drain and report, then
        # Locust quits (its own quit waits only half a second for the workers' last words).
        locust_quit = runner.quit

        def quit_after_reports() -> None:
            self.finish(natural=False)
            locust_quit()

        runner.quit = quit_after_reports

    def test_started(self) -> None:
        coord = self.coord
        if coord.scenario is None and coord.origin is None:
            # Plain mode: t=0 now; the workers get it in Locust's spawn messages, which are
            # sent after this event.
            coord.origin = Origin.now()
            self.options.loadkit_start = json.dumps(coord.origin.to_dict())
            write_start(coord.out, coord.origin, self.new_meta)
        if self.watcher is None:
            self.watcher = gevent.spawn(self._watch)

    def _watch(self) -> None:
        """Name workers that died or went silent, start the schedule once every key has its
        process, end the run when every key is finished."""
        coord = self.coord
        while not self.finished:
            gevent.sleep(0.1)
            coord.check()
            if coord.ready_to_start():
                origin = Origin.now(START_LEAD_S)
                coord.start(origin)
                write_start(coord.out, origin, self.new_meta)
                start = {"origin": origin.to_dict(), "quota": coord.share}
                self.runner.send_message("loadkit_start", start)
            if coord.end_reached():
                self.finish(natural=True)
                if self.options.headless:
                    self.runner.quit()
                else:
                    self.runner.stop()

    def target_failing(self, reason: str) -> None:
        """A process's watch says the target fails everything: stop the run early (open
        requests get the grace) with the reason in run.json. Not an interruption: the
        records say what the target answered."""
        if self.finished:
            return
        log.error("loadkit: %s: stopping the run", reason)
        if reason not in self.coord.problems:
            self.coord.problems.append(reason)
        self.ending = Ending(interrupted=False)
        self._end_early()

    def stop_now(self, reason: str) -> None:
        """Stop at once: no new requests, open ones cancelled (and recorded so), every
        record and run.json written, then Locust quits. A graceful stop under way has its
        grace cut short."""
        if self.finished:
            self.runner.send_message("loadkit_stop", {"grace_s": 0.0})
            return
        log.warning("loadkit: %s: stopping at once", reason)
        self.coord.problems.append(reason)
        self.ending = Ending(grace_s=0.0)
        self._end_early()

    def _end_early(self) -> None:
        if self.options.headless:
            self.runner.quit()  # through quit_after_reports: finish(), then Locust's quit
        else:
            self.finish(natural=False)
            self.runner.stop()

    def finish(self, natural: bool) -> None:
        """Tell every worker to stop (no new requests; open ones get the grace), wait for
        each one's final report (its record count) or its end, then write run.json."""
        coord = self.coord
        if self.finished:
            return
        self.finished = True
        s = coord.scenario
        if natural:
            grace = 0.0
        elif self.ending.grace_s is not None:
            grace = self.ending.grace_s
        elif s is not None:
            grace = min(s.drain_s, STOP_GRACE_S)
        else:
            grace = float(self.environment.stop_timeout or STOP_GRACE_S)
        self.runner.send_message("loadkit_stop", {"grace_s": grace})
        deadline = time.monotonic() + grace + DONE_TIMEOUT_S
        # The master's message loop is one of the runner's greenlets: waiting inside it
        # would keep the reports from arriving.
        can_wait = gevent.getcurrent() not in self.runner.greenlet
        while can_wait and time.monotonic() < deadline:
            coord.check()
            if not coord.waiting():
                break
            self.reports.clear()
            self.reports.wait(timeout=0.5)
        interrupted = not natural and s is not None and self.ending.interrupted
        write_end(
            coord.out,
            coord.origin,
            coord.worker_infos(interrupted),
            coord.stop_reason(natural),
            interrupted,
            self.new_meta,
        )
        self.written.set()
        # after run.json: completing the twins can take a while when their thread fell
        # behind, and a stop meanwhile must not cost the run its metadata
        coord.close_records()

    def run_time(self) -> float:
        """Seconds since the run's t=0 on this machine (0 before it)."""
        origin = self.coord.origin
        return origin.local_clock().now() if origin is not None else 0.0

    def farewell(self) -> str:
        """Where the run's records are, said last (after Locust's summary)."""
        coord = self.coord
        n = sum(p.received for p in coord.peers.values())
        return (
            f"loadkit: run {coord.run_id}: {n} records in {coord.out} "
            f"(analyse them with: loadkit analyze {coord.out})"
        )

    def new_meta(self) -> RunMeta:
        """run.json for a run started by hand (``loadkit run`` writes its own first)."""
        coord = self.coord
        host = self.environment.host or ""
        if coord.scenario is not None:
            from loadkit.run import new_meta

            meta = new_meta(coord.scenario, "locust", host, self.keys, coord.run_id, Clock())
            if not meta.target_api:
                target = coord.scenario.target
                if host:  # "auto" is decided on the URL loaded
                    target = replace(target, base_url=host.rstrip("/"))
                meta.target_api = target.target_api().describe()
            return meta
        tiers: dict[str, dict[str, Any]] = {}
        for tier in sorted({k.tier for k in self.keys}):
            spec = os.environ.get(f"LOADKIT_PROMISE_{tier.upper()}", DEFAULT_PROMISES.get(tier))
            if spec:
                r, w, c = spec.split("/")
                tiers[tier] = {"requests": int(r), "window_s": float(w), "concurrency": int(c)}
        origin = coord.origin or Origin.now()
        api = self.api or TargetApi()
        return RunMeta(
            run_id=coord.run_id,
            engine="locust",
            target=host,
            scenario_name="locust-plain",
            started_unix=origin.wall,
            mono_anchor_ns=origin.mono_ns,
            tiers=tiers,
            keys=[
                {"label": k.label, "tier": k.tier, "fingerprint": fingerprint(k.secret)}
                for k in self.keys
            ],
            target_api=api.describe(),
        )
