"""The master's side of a loadkit Locust run, as plain state: which process drives which
key, when the schedule starts, the records that arrive from the workers (written into the
run directory), who is done and who went quiet, and run.json. No Locust or gevent import:
``tier_users.py`` feeds it Locust's messages and events; tests drive it directly.

Each key is driven by exactly one process (its limit is judged on one clock): a user asks
the master for a key (``claim``) and the master hands out each key once, in plan order."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadkit import parquet_twin
from loadkit.locustfiles._options import tier_matches
from loadkit.locustfiles._roles import RoleSpec, role_specs
from loadkit.records import RECORDS_GLOB, RecordWriter, RequestRecord, record_writer
from loadkit.runmeta import (
    RUN_FILE,
    Origin,
    RunMeta,
    WorkerInfo,
    boot_id,
    fingerprint,
    read_run_meta,
)
from loadkit.scenario import Key, Scenario, plan

SILENT_S = 10.0  # no message or heartbeat from a worker for this long: it is named silent
# Scenario mode starts without the keys nobody claimed once every user Locust spawned has
# asked for one, or (a user that never asked) after this long without a claim.
CLAIM_QUIET_S = 30.0


@dataclass(frozen=True)
class Grant:
    """A key for one user: its label and fingerprint (the worker uses its own copy of the
    secret and checks it is the same key), and in scenario mode the key's roles."""

    label: str
    fingerprint: str
    roles: list[RoleSpec] | None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "fingerprint": self.fingerprint, "roles": self.roles}


@dataclass
class Peer:
    """A process that sends load, as the master knows it (``node`` is Locust's client id)."""

    node: str
    last_seen: float
    worker: str = ""
    pid: int | None = None
    boot_id: str = ""
    keys: list[str] = field(default_factory=list)
    received: int = 0
    refused: int = 0
    in_flight: int | None = None
    sent: int | None = None
    cancelled: int = 0
    done: bool = False
    gone: str = ""  # "" | "died" | "silent"
    writer: RecordWriter | None = None


class Coordinator:
    def __init__(
        self,
        out: Path,
        run_id: str,
        keys: list[Key],
        scenario: Scenario | None,
        paid_tier: str | None = None,
        now: Callable[[], float] = time.monotonic,
        alive: Callable[[int], bool] | None = None,
        machine: str | None = None,
    ) -> None:
        self.out = out
        self.run_id = run_id
        self.keys = keys
        self.scenario = scenario
        self.paid_tier = paid_tier
        self.now = now
        self.alive = alive or pid_alive
        self.machine = boot_id() if machine is None else machine
        self.roles = role_specs(scenario, plan(scenario, keys)) if scenario else {}
        self.owner: dict[str, str] = {}  # key label -> node
        self.finished: set[str] = set()
        self.rr: dict[str, int] = {}
        self.peers: dict[str, Peer] = {}
        self.origin: Origin | None = None
        self.spawned_at: float | None = None
        self.spawned_users = 0
        self.claims = 0
        self.last_claim: float | None = None
        self.share = 0  # each process's share of the scenario's max_requests (0 = none)
        self.problems: list[str] = []
        self.on_record: Callable[[RequestRecord], None] | None = None  # e.g. the web UI's
        self._files: set[str] = set()
        # the records files' Parquet twins need pyarrow: imported now, not mid-run
        parquet_twin.prepare()

    # -- messages from the processes that send load --------------------------------------

    def peer(self, node: str) -> Peer:
        """The peer ``node``, created on first contact; any contact proves it alive."""
        p = self.peers.get(node)
        if p is None:
            p = self.peers[node] = Peer(node, self.now())
        p.last_seen = self.now()
        if p.gone == "silent":
            p.gone = ""
        return p

    def hello(self, node: str, worker: str, pid: int, machine: str) -> None:
        p = self.peer(node)
        p.worker, p.pid, p.boot_id = worker, pid, machine

    def claim(self, node: str, user_tier: str) -> Grant | None:
        """A key for a user of ``user_tier`` on ``node``: in scenario mode the next key with
        load that no process drives yet (None when none is left); in plain mode the tier's
        keys round-robin across every process."""
        p = self.peer(node)
        self.claims += 1
        self.last_claim = self.now()
        match = [k for k in self.keys if tier_matches(k.tier, user_tier, self.paid_tier)]
        if self.scenario is None:
            if not match:
                return None
            i = self.rr.get(user_tier, 0)
            self.rr[user_tier] = i + 1
            key = match[i % len(match)]
            if key.label not in p.keys:
                p.keys.append(key.label)
            return Grant(key.label, fingerprint(key.secret), None)
        for key in match:
            if key.label in self.roles and key.label not in self.owner:
                self.owner[key.label] = node
                p.keys.append(key.label)
                return Grant(key.label, fingerprint(key.secret), self.roles[key.label])
        return None

    def refused(self, node: str, label: str, reason: str) -> None:
        """A worker could not take the key it was granted (it has no such key, or another)."""
        p = self.peer(node)
        if label in p.keys:
            p.keys.remove(label)
        self.finished.add(label)
        self.problems.append(f"key {label} not driven: {p.worker or node}: {reason}")

    def records(self, node: str, worker: str, lines: list[str], in_flight: int) -> int:
        """Write a batch of a worker's finished records (JSON lines) into its records file;
        lines that are not records of this run are refused and counted."""
        p = self.peer(node)
        p.worker = p.worker or worker
        p.in_flight = in_flight
        written = 0
        for line in lines:
            try:
                rec = RequestRecord.from_dict(json.loads(line))
            except (ValueError, TypeError):
                p.refused += 1
                continue
            if rec.run_id != self.run_id:
                p.refused += 1
                continue
            if p.writer is None:
                twins = self.scenario is None or self.scenario.parquet_twins
                p.writer = record_writer(self.out / self._file_for(p), twins)
            elif p.writer.closed:  # a record after the run's end: appended, no twin then
                p.writer = RecordWriter(p.writer.path)
            p.writer.write(rec)
            written += 1
            if self.on_record is not None:
                self.on_record(rec)
        p.received += written
        return written

    def close_records(self) -> None:
        """Close every records file (each completes its Parquet twin, ``parquet_twin``)."""
        for p in self.peers.values():
            if p.writer is not None:
                p.writer.close()

    def key_finished(self, node: str, label: str) -> None:
        self.peer(node)
        self.finished.add(label)

    def done(self, node: str, sent: int, cancelled: int) -> None:
        p = self.peer(node)
        p.sent, p.cancelled, p.done, p.in_flight = sent, cancelled, True, 0

    def spawned(self, users: int) -> None:
        """Locust has sent out every user (``spawning_complete``): ``users`` in all."""
        self.spawned_at = self.now()
        self.spawned_users = users

    # -- decisions --------------------------------------------------------------------------

    def ready_to_start(self) -> bool:
        """Scenario mode: every key with load has its process, or every user Locust spawned
        has asked for a key (or none asked for CLAIM_QUIET_S); then the keys nobody took
        are named."""
        if self.scenario is None or self.origin is not None:
            return False
        if set(self.roles) <= set(self.owner):
            return True
        if self.spawned_at is None:
            return False
        if self.claims >= self.spawned_users:
            return True
        quiet_since = max(self.spawned_at, self.last_claim or 0.0)
        return self.now() - quiet_since >= CLAIM_QUIET_S

    def start(self, origin: Origin) -> int:
        """Fix t=0; returns each process's share of the scenario's ``max_requests``."""
        self.origin = origin
        unclaimed = sorted(set(self.roles) - set(self.owner))
        if unclaimed:
            self.problems.append(
                f"keys not driven (no Locust user claimed them; -u too small?): "
                f"{', '.join(unclaimed)}"
            )
        nodes = set(self.owner.values())
        total = self.scenario.max_requests if self.scenario else 0
        self.share = math.ceil(total / len(nodes)) if total and nodes else 0
        return self.share

    def check(self) -> None:
        """Name the workers that died (same machine, process gone) or went silent."""
        now = self.now()
        for p in self.peers.values():
            if p.done or p.gone == "died":
                continue
            if p.pid and p.boot_id and p.boot_id == self.machine and not self.alive(p.pid):
                p.gone = "died"
            elif now - p.last_seen > SILENT_S:
                p.gone = "silent"

    def end_reached(self) -> bool:
        """Scenario mode: the schedule has started and every key it gave out is finished,
        or its process is gone."""
        if self.scenario is None or self.origin is None:
            return False
        return all(
            label in self.finished or self.peers[node].gone for label, node in self.owner.items()
        )

    def waiting(self) -> list[Peer]:
        """The processes whose final report the master still waits for."""
        return [p for p in self.peers.values() if not p.done and not p.gone]

    # -- the run's outcome -------------------------------------------------------------------

    def worker_infos(self, interrupted: bool) -> list[WorkerInfo]:
        out = []
        now = self.now()
        for p in sorted(self.peers.values(), key=lambda p: p.worker or p.node):
            if not (p.worker or p.received or p.keys):
                continue  # connected, never sent load or a word: not part of the run
            notes = []
            if p.refused:
                notes.append(f"{p.refused} lines that were not records of this run refused")
            if p.done:
                status = "interrupted" if interrupted else "ok"
                if p.sent is not None and p.sent != p.received:
                    notes.insert(0, f"reported {p.sent} records, {p.received} arrived")
            elif p.gone == "died":
                status = "died"
                notes.insert(0, "the process ended before its final report (killed or crashed)")
            else:
                status = "silent"
                notes.insert(
                    0, f"no final report; last heard from {now - p.last_seen:.1f} s before the end"
                )
            if not p.done:
                notes.append(f"the {p.received} records that arrived are kept")
                if p.in_flight:
                    notes.append(f"{p.in_flight} request(s) were open when last heard from")
            out.append(
                WorkerInfo(
                    worker=p.worker or p.node,
                    records=p.received,
                    status=status,
                    detail="; ".join(notes),
                    sent=p.sent,
                    in_flight=p.in_flight,
                )
            )
        return out

    def stop_reason(self, natural: bool) -> str:
        died = sum(p.gone == "died" and not p.done for p in self.peers.values())
        silent = sum(p.gone == "silent" and not p.done for p in self.peers.values())
        parts = []
        if died:
            parts.append(f"{died} Locust worker(s) died")
        if silent:
            parts.append(f"{silent} Locust worker(s) went silent")
        parts += self.problems
        if not parts:
            if self.scenario is None:
                return "stopped"
            return "schedule complete" if natural else "stopped before the schedule ended"
        return "; ".join(parts)

    def _file_for(self, p: Peer) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", p.worker or p.node)[:80] or "worker"
        name = f"records-{stem}.jsonl"
        n = 1
        while name in self._files:  # two processes with one name never share a file
            n += 1
            name = f"records-{stem}-{n}.jsonl"
        self._files.add(name)
        return name


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this machine is alive (a zombie is not: a forked worker
    that was killed stays a zombie until Locust's master reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


# -- run.json ------------------------------------------------------------------------------


def check_out_dir(out: Path, run_id: str) -> str | None:
    """Why ``out`` cannot take this run's records (None if it can): records of another run
    would be analysed as one run. A run.json of this run (``loadkit run`` writes it first)
    is adopted."""
    used = sorted(p.name for p in out.glob(RECORDS_GLOB))
    if used:
        return f"{out} already holds records ({', '.join(used[:3])}); choose another directory"
    if (out / RUN_FILE).exists():
        try:
            other = read_run_meta(out).run_id
        except (OSError, ValueError) as exc:
            return f"{out / RUN_FILE}: unreadable ({exc})"
        if other != run_id:
            return f"{out} holds run {other}; choose another directory"
    return None


def write_start(out: Path, origin: Origin, build: Callable[[], RunMeta]) -> RunMeta:
    """run.json with the run's t=0 (adopting the one ``loadkit run`` wrote, if any)."""
    meta = _current(out) or build()
    meta.started_unix = origin.wall
    meta.mono_anchor_ns = origin.mono_ns
    meta.write(out)
    return meta


def write_end(
    out: Path,
    origin: Origin | None,
    workers: list[WorkerInfo],
    stop_reason: str,
    interrupted: bool,
    build: Callable[[], RunMeta],
) -> RunMeta:
    meta = _current(out) or build()
    if origin is not None:
        meta.started_unix = origin.wall
        meta.mono_anchor_ns = origin.mono_ns
        meta.duration_s = origin.local_clock().now()
    meta.ended_unix = time.time()
    meta.workers = workers
    meta.stop_reason = stop_reason
    meta.interrupted = meta.interrupted or interrupted
    meta.write(out)
    return meta


def _current(out: Path) -> RunMeta | None:
    try:
        return read_run_meta(out)
    except (OSError, ValueError):
        return None
