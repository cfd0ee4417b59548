"""The Locust engine's coordination as plain state, without Locust: keys handed out once,
t=0, records written by the master, workers that die or go silent, run.json, the clock
across machines, keys from the environment, and the web UI's exposure check."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from loadkit.arrivals import arrivals
from loadkit.locustfiles import _coordinator as C
from loadkit.locustfiles._options import (
    KeysError,
    WebLogin,
    is_loopback,
    load_keys,
    web_login_from,
    web_ui_problem,
)
from loadkit.locustfiles._roles import role_specs, roles_from
from loadkit.records import RequestRecord, iter_records
from loadkit.runmeta import Origin, RunMeta, read_run_meta
from loadkit.scenario import Key, ScenarioError, plan, scenario_from_dict

KEYS = [
    Key("free-1", "free", "sk-free-one"),
    Key("free-2", "free", "sk-free-two"),
    Key("free-3", "free", "sk-free-three"),
    Key("pro-1", "pro", "sk-pro-one"),
    Key("ent-1", "enterprise", "sk-ent-one"),
]


def scenario(**run):
    return scenario_from_dict(
        {
            "name": "coord",
            "target": {"base_url": "http://127.0.0.1:9/api/v1"},
            "run": {"duration_s": 10, "seed": 5, **run},
            "tiers": {
                "free": {"requests": 60, "window_s": 60, "concurrency": 3},
                "pro": {"requests": 600, "window_s": 60, "concurrency": 10},
                "enterprise": {"requests": 6000, "window_s": 60, "concurrency": 100},
            },
            "load": [
                {"tier": "free", "keys": [1, 2], "pattern": "constant", "rate_per_s": 2},
                {"tier": "free", "keys": [2], "pattern": "closed", "concurrency": 3},
                {"tier": "pro", "pattern": "poisson", "rate_per_s": 5},
            ],
        }
    )


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def coordinator(tmp_path, sc=None, alive=lambda pid: True, now=None):
    return C.Coordinator(
        tmp_path,
        tmp_path.name,
        KEYS,
        sc,
        now=now or FakeTime(),
        alive=alive,
        machine="boot-a",
    )


def record(run_id: str, rid: str, status: int = 200) -> str:
    return RequestRecord(
        run_id=run_id,
        engine="locust",
        worker="w",
        request_id=rid,
        attempt=1,
        tier="free",
        key="free-1",
        endpoint="chat",
        stream=False,
        model="m",
        scheduled_s=None,
        send_s=1.0,
        headers_s=1.1,
        first_token_s=None,
        last_token_s=None,
        end_s=1.2,
        status=status,
    ).to_json()


# -- keys handed out --------------------------------------------------------------------


def test_scenario_mode_hands_each_key_with_load_to_exactly_one_process(tmp_path):
    c = coordinator(tmp_path, scenario())
    grants = [
        c.claim("A", "free"),
        c.claim("B", "free"),
        c.claim("A", "paid"),
        c.claim("B", "free"),  # free-3 has no load: nothing left for this user
        c.claim("B", "paid"),  # ent-1 has no load either
    ]
    assert [g.label if g else None for g in grants] == ["free-1", "free-2", "pro-1", None, None]
    assert c.owner == {"free-1": "A", "free-2": "B", "pro-1": "A"}
    # free-2 gets its constant-rate phase and its three closed-loop users, in plan order
    assert grants[1].roles == [
        (1, 0, "open", 0),
        (2, 1, "closed", 0),
        (2, 1, "closed", 1),
        (2, 1, "closed", 2),
    ]
    assert grants[0].fingerprint == C.fingerprint("sk-free-one")


def test_grants_rebuild_the_plan_on_the_worker(tmp_path):
    sc = scenario()
    specs = role_specs(sc, plan(sc, KEYS))
    # through msgpack, tuples arrive as lists
    roles = roles_from([list(s) for s in specs["free-2"]], KEYS[1], sc)
    assert [(r.index, r.load, r.kind, r.user) for r in roles] == [
        (1, sc.load[0], "open", 0),
        (2, sc.load[1], "closed", 0),
        (2, sc.load[1], "closed", 1),
        (2, sc.load[1], "closed", 2),
    ]
    # the seed of an open-loop role is the asyncio engine's: the same schedule either way
    seed = f"{sc.seed}/{roles[0].index}/free-2"
    a = list(arrivals(roles[0].load, sc.duration_s, random.Random(seed)))
    b = list(arrivals(sc.load[0], sc.duration_s, random.Random(seed)))
    assert a == b and len(a) == 20


def test_paid_users_take_the_named_plan_only(tmp_path):
    c = C.Coordinator(tmp_path, "r", KEYS, None, paid_tier="enterprise", machine="m")
    assert [c.claim("A", "paid").label for _ in range(3)] == ["ent-1", "ent-1", "ent-1"]


def test_plain_mode_shares_keys_round_robin_across_processes(tmp_path):
    c = coordinator(tmp_path)
    labels = [c.claim(node, "free").label for node in ("A", "B", "A", "B")]
    # one rotation for the whole run, not one per process (which would put both
    # processes' first users on free-1)
    assert labels == ["free-1", "free-2", "free-3", "free-1"]
    assert c.claim("A", "paid").roles is None
    assert c.peers["A"].keys == ["free-1", "free-3", "pro-1"]


def test_a_key_a_worker_lacks_is_named_not_driven(tmp_path):
    c = coordinator(tmp_path, scenario())
    assert c.claim("A", "free").label == "free-1"
    c.refused("A", "free-1", "this process has no key labelled 'free-1'")
    assert c.peers["A"].keys == [] and c.owner == {"free-1": "A"}  # never handed out again
    assert c.claim("B", "free").label == "free-2"
    assert c.stop_reason(natural=True) == (
        "key free-1 not driven: A: this process has no key labelled 'free-1'"
    )


# -- t=0 and the end --------------------------------------------------------------------


def test_start_waits_for_every_key_then_splits_max_requests(tmp_path):
    c = coordinator(tmp_path, scenario(max_requests=101))
    c.claim("A", "free")
    c.claim("B", "free")
    assert not c.ready_to_start()
    c.claim("A", "paid")
    assert c.ready_to_start()
    assert c.start(Origin(1000.0, 5, "boot-a")) == 51  # two processes: ceil(101 / 2)
    assert not c.ready_to_start() and not c.problems


def test_start_without_keys_nobody_claimed_names_them(tmp_path):
    now = FakeTime()
    c = coordinator(tmp_path, scenario(), now=now)
    c.claim("A", "free")
    c.spawned(2)  # -u 2 for three keys with load
    assert not c.ready_to_start()  # one user has not asked yet: it may be slow to start
    now.t += 20
    c.claim("B", "paid")
    assert c.ready_to_start()  # both users asked
    c.start(Origin(1000.0, 5, "boot-a"))
    assert c.problems == ["keys not driven (no Locust user claimed them; -u too small?): free-2"]


def test_a_user_that_never_asks_delays_the_start_boundedly(tmp_path):
    now = FakeTime()
    c = coordinator(tmp_path, scenario(), now=now)
    c.claim("A", "free")
    c.spawned(3)
    now.t += C.CLAIM_QUIET_S - 0.1
    assert not c.ready_to_start()
    now.t += 0.2
    assert c.ready_to_start()


def test_the_run_ends_when_every_key_is_finished_or_its_process_gone(tmp_path):
    c = coordinator(tmp_path, scenario())
    for node, tier in (("A", "free"), ("B", "free"), ("B", "paid")):
        c.claim(node, tier)
    assert not c.end_reached()  # not started
    c.start(Origin(1000.0, 5, "boot-a"))
    c.key_finished("A", "free-1")
    assert not c.end_reached()
    c.peers["B"].gone = "died"
    assert c.end_reached()


# -- records ----------------------------------------------------------------------------


def test_records_from_workers_land_in_the_run_directory(tmp_path):
    c = coordinator(tmp_path)
    run = tmp_path.name
    c.hello("A", "locust-hostA-10", 10, "boot-x")
    c.hello("B", "locust-hostB-10", 10, "boot-y")
    assert c.records("A", "locust-hostA-10", [record(run, "a1"), record(run, "a2")], 3) == 2
    assert c.records("B", "locust-hostB-10", [record(run, "b1", 429)], 0) == 1
    # not a record, or another run's: refused, counted
    assert c.records("A", "locust-hostA-10", ["{oops", record("other-run", "x")], 1) == 0
    files = sorted(p.name for p in tmp_path.glob("records-*.jsonl"))
    assert files == ["records-locust-hostA-10.jsonl", "records-locust-hostB-10.jsonl"]
    assert sorted((r.request_id, r.status) for r in iter_records(tmp_path)) == [
        ("a1", 200),
        ("a2", 200),
        ("b1", 429),
    ]
    c.done("A", 2, 0)
    c.done("B", 1, 0)
    infos = {w.worker: w for w in c.worker_infos(interrupted=False)}
    assert infos["locust-hostA-10"].records == 2 and infos["locust-hostA-10"].sent == 2
    assert infos["locust-hostA-10"].status == "ok"
    assert infos["locust-hostA-10"].detail == "2 lines that were not records of this run refused"
    assert infos["locust-hostB-10"].detail == ""


def test_closing_the_records_completes_each_files_parquet_twin(tmp_path):
    from loadkit.parquet_twin import MIN_TWIN_BYTES, valid_twin
    from loadkit.records import read_table

    c = coordinator(tmp_path)
    run = tmp_path.name
    n = MIN_TWIN_BYTES // len(record(run, "a-00000")) + 100  # just over the minimum
    lines = [record(run, f"a-{i:05d}") for i in range(n)]
    assert c.records("A", "locust-hostA-10", lines, 0) == n
    path = tmp_path / "records-locust-hostA-10.jsonl"
    assert valid_twin(path) is None  # still open
    c.close_records()  # the master's end of the run (the workers have reported)
    assert valid_twin(path) is not None
    # a record after that is appended: the twin no longer stands for the file
    assert c.records("A", "locust-hostA-10", [record(run, "late")], 0) == 1
    c.close_records()
    assert valid_twin(path) is None
    ids = [r.request_id for r in iter_records(tmp_path)]
    assert len(ids) == n + 1 and ids[-1] == "late"
    assert read_table(tmp_path).num_rows == n + 1


def test_a_scenario_without_twins_gets_none(tmp_path):
    from loadkit.parquet_twin import MIN_TWIN_BYTES

    off = scenario().with_overrides(parquet_twins=False)
    c = coordinator(tmp_path, off)
    run = tmp_path.name
    n = MIN_TWIN_BYTES // len(record(run, "a-00000")) + 100
    c.records("A", "locust-hostA-10", [record(run, f"a-{i:05d}") for i in range(n)], 0)
    c.close_records()
    assert sorted(p.name for p in tmp_path.glob("records-*")) == ["records-locust-hostA-10.jsonl"]


def test_two_processes_with_one_name_never_share_a_file(tmp_path):
    c = coordinator(tmp_path)
    run = tmp_path.name
    c.records("A", "locust-h/x-1", [record(run, "a")], 0)
    c.records("B", "locust-h/x-1", [record(run, "b")], 0)
    assert sorted(p.name for p in tmp_path.glob("records-*")) == [
        "records-locust-h_x-1-2.jsonl",
        "records-locust-h_x-1.jsonl",
    ]


def test_a_worker_that_dies_or_goes_silent_is_named(tmp_path):
    now = FakeTime()
    dead = {20}
    c = coordinator(tmp_path, alive=lambda pid: pid not in dead, now=now)
    run = tmp_path.name
    c.hello("A", "w-here-20", 20, "boot-a")  # same machine: its death is seen at once
    c.hello("B", "w-there-20", 20, "boot-b")  # another machine: only silence tells
    c.hello("C", "w-ok-30", 30, "boot-a")
    c.records("A", "w-here-20", [record(run, "a1")], 4)
    c.records("B", "w-there-20", [record(run, "b1"), record(run, "b2")], 2)
    c.check()
    assert c.peers["A"].gone == "died" and c.peers["B"].gone == ""
    now.t += C.SILENT_S + 1
    c.peer("C")  # C's heartbeat
    c.check()
    assert c.peers["B"].gone == "silent" and c.peers["C"].gone == ""
    assert [p.node for p in c.waiting()] == ["C"]
    c.done("C", 0, 0)
    infos = {w.worker: w for w in c.worker_infos(interrupted=False)}
    assert (infos["w-here-20"].status, infos["w-here-20"].records) == ("died", 1)
    assert infos["w-here-20"].in_flight == 4
    assert "killed or crashed" in infos["w-here-20"].detail
    assert "4 request(s) were open" in infos["w-here-20"].detail
    assert (infos["w-there-20"].status, infos["w-there-20"].records) == ("silent", 2)
    assert infos["w-ok-30"].status == "ok"
    assert c.stop_reason(natural=True) == "1 Locust worker(s) died; 1 Locust worker(s) went silent"
    # a silent worker that speaks again is back
    c.peer("B")
    assert c.peers["B"].gone == ""


def test_pid_alive_sees_a_zombie_as_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert C.pid_alive(os.getpid())
        # wait for its exit without reaping it: a zombie, like a killed forked worker
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert not C.pid_alive(child.pid)
    finally:
        child.wait()
    assert not C.pid_alive(child.pid)  # reaped: gone


# -- run.json ---------------------------------------------------------------------------


def meta(run_id: str) -> RunMeta:
    return RunMeta(run_id, "locust", "http://x", "s", 1.0, 1)


def test_run_json_of_loadkit_run_is_adopted_and_another_run_refused(tmp_path):
    out = tmp_path / "r1"
    assert C.check_out_dir(out, "r1") is None  # not there yet
    out.mkdir()
    meta("r1").write(out)
    assert C.check_out_dir(out, "r1") is None
    assert "holds run r1" in C.check_out_dir(out, "r2")
    (out / "records-x.jsonl").write_text("")
    assert "already holds records" in C.check_out_dir(out, "r1")


def test_run_json_gets_the_masters_t0_and_outcome(tmp_path):
    meta(tmp_path.name).write(tmp_path)
    origin = Origin(1234.5, 987, "boot")
    C.write_start(tmp_path, origin, lambda: pytest.fail("adopts, never builds"))
    m = read_run_meta(tmp_path)
    assert (m.started_unix, m.mono_anchor_ns, m.engine) == (1234.5, 987, "locust")
    c = coordinator(tmp_path)
    c.hello("A", "w1", 1, "boot-a")
    c.done("A", 0, 0)
    C.write_end(tmp_path, origin, c.worker_infos(True), "stopped", True, lambda: None)
    m = read_run_meta(tmp_path)
    assert [(w.worker, w.status) for w in m.workers] == [("w1", "interrupted")]
    assert m.interrupted and m.stop_reason == "stopped" and m.ended_unix


# -- the clock across machines ----------------------------------------------------------


def test_origin_is_exact_on_one_machine_and_wall_mapped_on_another():
    o = Origin(wall=1000.0, mono_ns=5_000_000_000, boot_id="boot-a")
    same = o.clock("boot-a", wall_now=1003.0, mono_now_ns=77)
    assert (same.mono_anchor_ns, same.wall_anchor) == (5_000_000_000, 1000.0)
    # elsewhere: 2.5 s after the origin by the wall clock is 2.5 s on the local clock
    other = o.clock("boot-b", wall_now=1002.5, mono_now_ns=9_000_000_000)
    assert other.mono_anchor_ns == 6_500_000_000 and other.wall_anchor == 1000.0
    assert Origin.from_dict(json.loads(json.dumps(o.to_dict()))) == o
    # no boot id (not Linux): never taken for the same machine
    assert Origin(1.0, 5, "").clock("", 1.0, 9).mono_anchor_ns == 9


# -- keys and the web UI ----------------------------------------------------------------


def test_keys_from_a_file_and_the_environment(tmp_path):
    f = tmp_path / "keys.json"
    f.write_text(json.dumps({"keys": [{"label": "free-1", "tier": "free", "key": "sk-a"}]}))
    env = {
        "LOADKIT_FREE_KEYS": "sk-a, sk-b",  # sk-a is in the file already
        "LOADKIT_KEYS_PRO": "sk-p",
        "LOADKIT_KEYS_FILE": str(f),  # the file, not a tier
        "LOADKIT_OUT": "x",
    }
    keys = load_keys(str(f), env)
    assert [(k.label, k.tier, k.secret) for k in keys] == [
        ("free-1", "free", "sk-a"),
        ("free-2", "free", "sk-b"),
        ("pro-1", "pro", "sk-p"),
    ]
    f.write_text('{"keys": [{"label": "x", "tier": "free", "key": "sk-secret-1"}, 1]}')
    with pytest.raises(KeysError) as exc:
        load_keys(str(f), {})
    assert "sk-secret-1" not in str(exc.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.5", "[::1]"])
def test_loopback_web_ui_needs_no_login(host):
    assert is_loopback(host)
    assert web_ui_problem(host, 8089, False, None, False) is None


@pytest.mark.parametrize("host", ["", "*", "0.0.0.0", "::", "192.168.1.5", "myhost"])
def test_web_ui_beyond_loopback_without_login_is_refused(host):
    problem = web_ui_problem(host, 8089, False, None, False)
    assert problem.startswith("refusing to start the Locust web UI")
    assert "--web-host 127.0.0.1" in problem and "--web-login" in problem
    assert "LOADKIT_WEB_PASSWORD" in problem
    login = web_login_from({"LOADKIT_WEB_PASSWORD": "pw"})
    assert login == WebLogin("loadkit", "pw")
    assert web_ui_problem(host, 8089, True, login, False) is None


def test_a_login_needs_a_password():
    assert web_login_from({"LOADKIT_WEB_USER": "ops"}) is None
    problem = web_ui_problem("0.0.0.0", 8089, True, None, False)
    assert problem.startswith("--web-login is set but no password is")
    assert web_ui_problem("0.0.0.0", 8089, True, None, True) is None  # auth set up elsewhere


def test_coordination_imports_neither_locust_nor_gevent():
    code = (
        "import sys, loadkit.locustfiles._coordinator, loadkit.locustfiles._options, "
        "loadkit.locust_engine; "
        "print([m for m in ('locust', 'gevent') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


# -- how plain mode addresses the target, keys from loadkit run ---------------------------


def options(**kw):
    from types import SimpleNamespace

    base = {
        "loadkit_api": "auto",
        "loadkit_paths": "",
        "loadkit_auth_header": "Authorization",
        "loadkit_auth_scheme": "Bearer",
        "loadkit_headers": "",
    }
    return SimpleNamespace(**{**base, **kw})


def test_plain_mode_options_address_the_target_as_a_scenario_would():
    from loadkit.locustfiles._options import plain_target, resolve_api

    spec = plain_target(
        options(
            loadkit_auth_header="x-api-key",
            loadkit_auth_scheme="none",
            loadkit_paths='{"chat": "/deployments/d/chat"}',
            loadkit_headers='{"X-Org": "${ORG}"}',
        ),
        "https://gw.example.com/v1",
    )
    api = resolve_api(spec, "https://gw.example.com/v1", {"ORG": "org-1"})
    assert api.headers("sk-x") == {
        "X-Org": "org-1",
        "Accept-Encoding": "identity",
        "x-api-key": "sk-x",
    }
    assert (api.layout.chat, api.layout.models) == ("/deployments/d/chat", "/models")
    # "auto" is decided on the URL loaded, not on the options' placeholder
    seed = resolve_api(plain_target(options(), ""), "http://127.0.0.1:8080/api/v1", {})
    assert seed.layout.name == "seed" and seed.headers("k")["Authorization"] == "Bearer k"
    with pytest.raises(ScenarioError, match="environment variable ORG is not set"):
        resolve_api(spec, "https://gw.example.com/v1", {})


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"loadkit_api": "oai"}, "--loadkit-api: expected 'auto', 'seed' or 'openai'"),
        ({"loadkit_paths": '{"chat": "x"}'}, "--loadkit-paths.chat: expected a path"),
        ({"loadkit_paths": "chat=/x"}, "--loadkit-paths: expected a JSON object"),
        ({"loadkit_headers": '{"Content-Type": "a"}'}, "--loadkit-headers.Content-Type:"),
        ({"loadkit_auth_header": "a b"}, "--loadkit-auth-header: expected an HTTP header"),
    ],
)
def test_plain_mode_options_that_cannot_work_are_named(opts, message):
    from loadkit.locustfiles._options import OptionsError, plain_target

    with pytest.raises(OptionsError) as exc:
        plain_target(options(**opts), "http://x/v1")
    assert str(exc.value).startswith(message)


def test_keys_from_loadkit_run_come_through_a_pipe_in_their_order():
    from loadkit.locustfiles._options import KEYS_FD_ENV, read_inherited_keys

    doc = {
        "keys": [
            {"label": "zeta", "tier": "free", "key": "sk-z"},
            {"label": "alpha", "tier": "free", "key": "sk-a"},
            {"label": "p", "tier": "pro", "key": "sk-p"},
        ]
    }
    r, w = os.pipe()
    os.write(w, json.dumps(doc).encode())
    os.close(w)
    env = {KEYS_FD_ENV: str(r), "LOADKIT_FREE_KEYS": "sk-e"}
    inherited = read_inherited_keys(env)
    assert KEYS_FD_ENV not in env  # read once
    keys = load_keys("", env, inherited)
    # a tier's keys keep loadkit run's order: a scenario's `keys = [2]` is the same key
    assert [(k.label, k.secret) for k in keys] == [
        ("zeta", "sk-z"),
        ("alpha", "sk-a"),
        ("free-3", "sk-e"),
        ("p", "sk-p"),
    ]
    assert read_inherited_keys({}) == []
