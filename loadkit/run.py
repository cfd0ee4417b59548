"""``loadkit run``: resolve the scenario and keys, start the embedded reference server when
the target is ``embedded`` (else check the target before any load), drive the chosen engine,
write run.json, then analyse. SIGINT, SIGTERM and SIGHUP all stop the run gracefully."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from loadkit import __version__
from loadkit.api import TargetApi
from loadkit.engine.worker_plan import WorkerPlan, available_cores, default_workers, split_plan
from loadkit.records import RecordWriter, RequestRecord, record_writer, shifted
from loadkit.runmeta import Clock, Origin, RunMeta, WorkerInfo, fingerprint, new_run_id, start_at
from loadkit.scenario import EMBEDDED, Key, Scenario, ScenarioError, load_scenario, resolve_keys
from loadkit.stop_signals import stop_signals

DEFAULT_SCENARIO = "default.toml"

# The single-process engine's t=0 this long after it is ready: run.json is written with the
# new origin first (a killed run's records and run.json agree).
START_LEAD_S = 0.005


def builtin_scenario(name: str = DEFAULT_SCENARIO) -> Scenario:
    import tomllib

    from loadkit.scenario import scenario_from_dict

    text = resources.files("loadkit.scenarios").joinpath(name).read_text(encoding="utf-8")
    return scenario_from_dict(tomllib.loads(text), source=f"<built-in {name}>")


class PreflightFailed(Exception):
    """The target failed the pre-flight check; the message lists each problem."""


@dataclass
class Target:
    base_url: str
    keys: list[Key]
    truth_path: Path | None = None
    api: TargetApi = field(default_factory=TargetApi)
    embedded: bool = False


@contextlib.contextmanager
def open_target(
    scenario: Scenario,
    out_dir: Path,
    cpu: int | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Iterator[Target]:
    """The target to load: the embedded reference server (started here, stopped after) or
    the scenario's URL with keys from the environment / keys files. ``say`` is told where
    the scenario's promises differ from the embedded server's plan."""
    api = scenario.target.target_api(os.environ)
    if scenario.target.base_url != EMBEDDED:
        yield Target(scenario.target.base_url, resolve_keys(scenario), api=api)
        return
    if api.layout.name not in ("seed", "openai"):
        raise ScenarioError(
            "target.paths: the embedded reference server serves the 'seed' or 'openai' "
            "layout only; explicit paths need a real target (--target URL)"
        )
    from loadkit.server.process import start_server_process

    config = _embedded_config(scenario)
    for line in plan_differences(scenario, config) if config is not None else []:
        say(line)
    truth = out_dir / "truth.jsonl"
    with start_server_process(
        config_path=scenario.target.server_config,
        truth_path=truth,
        cpu=cpu,
        api=api.layout.name,
    ) as srv:
        yield Target(srv.base_url, embedded_keys(scenario, srv.keys), truth, api, embedded=True)


# A tier's promises a scenario states and the embedded server enforces, with their units.
_PLAN_FIELDS = (
    ("requests", "requests"),
    ("window_s", "s window"),
    ("concurrency", "concurrent"),
    ("tokens", "tokens"),
    ("token_window_s", "s token window"),
    ("requests_per_day", "requests a day"),
)


def plan_differences(scenario: Scenario, server: Any) -> list[str]:
    """For each tier whose promises (the scenario's) differ from what the embedded
    server's config enforces, a line naming both: the verdicts judge the promise, so such
    a run reports the server's plan as violations (or as not tested). Pure."""
    out = []
    for tier in scenario.tiers.values():
        try:
            enforced = server.tier(tier.name)
        except KeyError:
            continue  # refused by embedded_keys
        promised, actual = [], []
        for name, unit in _PLAN_FIELDS:
            want, have = getattr(tier, name, None), getattr(enforced, name, None)
            if want is not None and want != have:
                promised.append(f"{_num(want)} {unit}")
                actual.append(f"{_num(have)} {unit}" if have is not None else f"no {unit} limit")
        if promised:
            out.append(
                f"tier {tier.name}: the scenario promises {', '.join(promised)}; the embedded "
                f"server enforces {', '.join(actual)} (the verdicts judge the promise)"
            )
    return out


def _num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:g}"


def _embedded_config(scenario: Scenario) -> Any:
    from loadkit.server.config import ConfigError, default_config, load_config

    path = scenario.target.server_config
    try:
        return load_config(path) if path else default_config()
    except ConfigError:
        return None  # the server itself says why, as it starts


def embedded_keys(scenario: Scenario, server_keys: list[dict[str, str]]) -> list[Key]:
    out: list[Key] = []
    for tier in scenario.tiers.values():
        mine = [k for k in server_keys if k["tier"] == tier.name]
        if not mine:
            have = sorted({k["tier"] for k in server_keys})
            raise ScenarioError(
                f"tiers.{tier.name}: the embedded server has no keys of tier "
                f"{tier.name!r} (its tiers: {', '.join(have)})"
            )
        if tier.keys:
            if tier.keys > len(mine):
                raise ScenarioError(
                    f"tiers.{tier.name}.keys: asks for {tier.keys} keys, the "
                    f"embedded server has {len(mine)}"
                )
            mine = mine[: tier.keys]
        out += [Key(k["label"], tier.name, k["key"]) for k in mine]
    return out


def new_meta(
    scenario: Scenario, engine: str, base_url: str, keys: list[Key], run_id: str, clock: Clock
) -> RunMeta:
    return RunMeta(
        run_id=run_id,
        engine=engine,
        target=base_url,
        scenario_name=scenario.name,
        started_unix=clock.wall_anchor,
        mono_anchor_ns=clock.mono_anchor_ns,
        tiers={name: t.promised() for name, t in scenario.tiers.items()},
        keys=[
            {"label": k.label, "tier": k.tier, "fingerprint": fingerprint(k.secret)} for k in keys
        ],
        slo=dict(scenario.slo),
        goodput=dict(scenario.goodput),
        scenario=_jsonable(scenario.to_dict()),
        warmup_s=scenario.warmup_s,
        loadkit_version=__version__,
    )


def run_scenario(
    scenario: Scenario,
    out_dir: Path,
    engine: str = "async",
    workers: int | None = None,
    progress: bool = True,
    preflight: bool = True,
) -> RunMeta:
    """Run a scenario and write records and run.json into ``out_dir``; returns the
    metadata (``interrupted`` set if a signal stopped it). ``workers``: processes that send
    load (asyncio engine: None, 0 or 1 is this process, N > 1 that many worker processes
    owning whole keys; Locust engine: local worker processes, None or 0 none). Raises
    PreflightFailed (nothing written, no load sent) when the target fails the pre-flight
    check, WorkersFailed (no load sent) when a worker process cannot start."""
    used = [p.name for p in (out_dir / "run.json", *out_dir.glob("records-*.jsonl")) if p.exists()]
    if used:
        # Records of two runs in one directory would be analysed as one run (two clocks,
        # maybe two servers): never mix them.
        raise ScenarioError(
            f"--out {out_dir}: already holds a run ({', '.join(used[:3])}); "
            "choose another directory or delete this one"
        )
    if engine == "locust" and scenario.target.http_client is not None:
        raise ScenarioError(
            f"[target] http_client = {scenario.target.http_client!r}: chooses the asyncio "
            "engine's HTTP client; the Locust engine sends with Locust's own. Remove it, "
            "or run with --engine async"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = out_dir.name if out_dir.name else new_run_id()
    # Pin the embedded server and the generator to different cores when there are two.
    server_cpu = _server_cpu()
    if engine == "async":
        import loadkit.engine.async_engine  # noqa: F401  (imported before the clock starts)
    with (
        # a run stops on them as on Ctrl-C: stop sending, drain, keep every record,
        # analyse what there is (the engines turn a second signal into "skip the drain")
        stop_signals(),
        open_target(
            scenario, out_dir, cpu=server_cpu, say=lambda text: _say(progress, text)
        ) as target,
    ):
        wplan = None
        if engine == "async":
            wplan = _async_workers(scenario, target, workers or 1, progress)
        clock = Clock()
        meta = new_meta(scenario, engine, target.base_url, target.keys, run_id, clock)
        meta.target_api = target.api.describe()
        probes: list[RequestRecord] = []
        if preflight and not target.embedded:
            probes = _preflight(scenario, target, clock, run_id, engine, progress)
        meta.write(out_dir)
        if progress:
            print(
                f"loadkit: {scenario.name}: {engine} engine"
                f"{f', {len(wplan.shares)} workers' if wplan else ''}, {len(target.keys)} keys, "
                f"{_duration_text(scenario)} against {target.base_url}"
                f"{' (loadkit reference server)' if target.embedded else ''}",
                file=sys.stderr,
            )
        anchor_ns = clock.mono_anchor_ns
        try:
            if engine == "async" and wplan is not None:
                from loadkit.engine.workers import run_workers

                run_workers(scenario, target, out_dir, clock, meta, wplan, progress)
            elif engine == "async":
                _run_async(scenario, target, out_dir, clock, meta, progress)
            else:
                from loadkit.locust_engine import run_locust

                run_locust(
                    scenario, target, out_dir, clock, meta, workers=workers, progress=progress
                )
        finally:
            # The probes were timed on the clock as it was; the engine may have moved t=0.
            _write_probes(out_dir, probes, (anchor_ns - clock.mono_anchor_ns) / 1e9)
        meta.ended_unix = time.time()
        meta.duration_s = clock.now()
        meta.write(out_dir)
    return meta


def _preflight(
    scenario: Scenario, target: Target, clock: Clock, run_id: str, engine: str, progress: bool
) -> list[RequestRecord]:
    from loadkit.preflight_client import PreflightSettings, run_preflight

    kinds = sorted({kind for load in scenario.load for kind, _ in load.mix})
    models = [scenario.target.model] + sorted(
        {load.model for load in scenario.load if load.model and load.model != scenario.target.model}
    )
    t = scenario.target
    settings = PreflightSettings(t.connect_timeout_s, min(t.request_timeout_s, 60.0))
    if progress:
        print(f"loadkit: pre-flight check of {target.base_url} ...", file=sys.stderr)
    res = run_preflight(
        target.base_url,
        target.api,
        target.keys,
        models,
        kinds,
        clock,
        run_id,
        engine,
        settings,
        {k.label: src for k in target.keys if (src := key_sources(scenario).get(k.tier))},
    )
    for note in res.verdict.notes:
        print(f"loadkit: pre-flight: note: {note}", file=sys.stderr)
    if not res.verdict.ok:
        problems = "\n".join(f"  - {p.text()}" for p in res.verdict.problems)
        raise PreflightFailed(
            f"pre-flight check failed, no load was sent ({len(res.verdict.problems)} "
            f"problem{'s' if len(res.verdict.problems) != 1 else ''}):\n{problems}\n"
            "(docs/targets.md explains each message; --no-preflight skips the check)"
        )
    if progress:
        print(
            f"loadkit: pre-flight: ok ({len(res.records)} requests, "
            f"{len(target.keys)} keys authenticated)",
            file=sys.stderr,
        )
    return res.records


def key_sources(scenario: Scenario) -> dict[str, str]:
    """Where each tier's keys come from, for messages: tier -> variable or file."""
    out: dict[str, str] = {}
    for tier in scenario.tiers.values():
        src = tier.keys_env or (f"keys file {tier.keys_file}" if tier.keys_file else "")
        if src:
            out[tier.name] = src
    return out


def _write_probes(out_dir: Path, probes: list[RequestRecord], delta_s: float) -> None:
    if not probes:
        return
    with RecordWriter(out_dir / "records-preflight.jsonl") as w:
        for rec in probes:
            w.write(shifted(rec, delta_s) if delta_s else rec)


def _server_cpu() -> int | None:
    """The core the embedded server is pinned to: the generator gets the others."""
    return 0 if (os.cpu_count() or 1) >= 2 else None


def default_async_workers(scenario: Scenario) -> int:
    """``loadkit run --engine async`` without ``--workers``: one worker per available core,
    less the one the embedded reference server is pinned to."""
    pinned = scenario.target.base_url == EMBEDDED and _server_cpu() is not None
    return default_workers(available_cores(), pinned)


def _async_workers(
    scenario: Scenario, target: Target, workers: int, progress: bool
) -> WorkerPlan | None:
    """The asyncio engine's worker processes for this run, or None for one process (the
    engine in this process, as it always ran): ``workers`` 1 (or a plan that leaves one
    worker)."""
    if workers <= 1:
        return None
    if scenario.max_requests:
        # A run-wide request count is decided on one clock, by one process.
        _say(progress, f"one worker, not {workers}: max_requests counts the run's arrivals")
        return None
    wplan = split_plan(scenario, target.keys, workers)
    if wplan.note:
        _say(progress, wplan.note)
    return wplan if len(wplan.shares) > 1 else None


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"loadkit: {text}", file=sys.stderr)


def _run_async(
    scenario: Scenario, target: Target, out_dir: Path, clock: Clock, meta: RunMeta, progress: bool
) -> None:
    from loadkit.engine.async_engine import run_engine

    worker = "async-0"

    def start() -> None:
        # t=0 is when the load begins. The pre-flight check, opening the record files
        # (pyarrow's import) and the event loop's start came before it: kept on the old
        # origin, the arrivals scheduled meanwhile would all leave at once, a burst the
        # scenario never asked for (seconds of arrivals against a slow target).
        origin = Origin.now(START_LEAD_S)
        start_at(clock, meta, origin.mono_ns, origin.wall)
        meta.write(out_dir)

    with record_writer(out_dir / f"records-{worker}.jsonl", scenario.parquet_twins) as writer:
        info = WorkerInfo(worker)
        try:
            res = run_engine(
                scenario,
                target.keys,
                target.base_url,
                writer,
                clock,
                meta.run_id,
                progress=progress,
                api=target.api,
                on_start=start,
            )
            meta.interrupted = res.interrupted
            meta.stop_reason = res.stop_reason
            # Every record it produced (retries and never-sent arrivals included), and what
            # was open when it stopped: analysis counts the records against these.
            info.sent = res.sent + res.not_sent
            info.in_flight = res.in_flight
        except KeyboardInterrupt:  # a signal before or after the engine's own handlers
            meta.interrupted = True
            meta.stop_reason = "interrupted (signal)"
        info.records = writer.count
        info.status = "interrupted" if meta.interrupted else "ok"
        meta.workers = [info]


def run_main(args: Any) -> int:
    try:
        scenario = load_scenario(args.scenario) if args.scenario else builtin_scenario()
        scenario = scenario.with_overrides(
            duration_s=args.duration,
            base_url=args.target,
            parquet_twins=False if getattr(args, "no_twins", False) else None,
        )
    except ScenarioError as exc:
        print(f"loadkit run: {exc}", file=sys.stderr)
        return 2
    engine = args.engine or scenario.engine or "locust"
    if args.workers is not None and args.workers < 0:
        print(f"loadkit run: --workers: must be >= 0, got {args.workers}", file=sys.stderr)
        return 2
    try:
        from loadkit.analysis.slo import SloSyntaxError, slos_from_run

        slos_from_run(scenario.slo)  # a bad SLO is refused before any load is sent
    except SloSyntaxError as exc:
        print(f"loadkit run: {scenario.source}: slo: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else Path("runs") / new_run_id()
    from loadkit.engine.workers import WorkersFailed

    workers = args.workers
    if workers is None and engine == "async":
        workers = default_async_workers(scenario)
    _say_if_embedded(scenario, args)
    created = not out_dir.exists()
    try:
        meta = run_scenario(
            scenario,
            out_dir,
            engine=engine,
            workers=workers,
            progress=not args.quiet,
            preflight=not getattr(args, "no_preflight", False),
        )
    except ScenarioError as exc:
        print(f"loadkit run: {exc}", file=sys.stderr)
        return 2
    except WorkersFailed as exc:
        print(f"loadkit run: {exc}", file=sys.stderr)
        return 2
    except PreflightFailed as exc:
        print(f"loadkit run: {exc}", file=sys.stderr)
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # nothing was written: a retry may use the same --out
        return 2
    print(f"records: {out_dir}", file=sys.stderr)
    if meta.stop_reason:
        print(f"run ended: {meta.stop_reason}", file=sys.stderr)
    if getattr(args, "parquet", False):
        from loadkit.records import write_parquet

        print(f"parquet: {write_parquet(out_dir)}", file=sys.stderr)
    if meta.interrupted:
        print("run interrupted: every finished request was kept", file=sys.stderr)
    if args.no_analyze:
        return 130 if meta.interrupted else 0
    from loadkit.analysis.cli import analyze_and_report

    code = analyze_and_report(
        out_dir, charts=not getattr(args, "no_charts", False), quiet=args.quiet
    )
    if getattr(args, "history", None) is not None:  # --history [URL]
        from loadkit.history.cli import add_after_run

        if add_after_run(out_dir, args.history) != 0 and code == 0:
            return 2  # a night missing from the history must not pass silently
    return code


def _say_if_embedded(scenario: Scenario, args: Any) -> None:
    """The embedded server is never tested silently in place of the user's service."""
    if scenario.target.base_url != EMBEDDED:
        return
    envs = sorted(
        {t.keys_env for t in scenario.tiers.values() if t.keys_env and os.environ.get(t.keys_env)}
    )
    if envs:
        print(
            "loadkit run: NOTE: no target: this run tests loadkit's embedded reference "
            f"server, and ignores the keys in {', '.join(envs)}. To test your service, "
            "pass --target URL (or set [target] base_url in the scenario).",
            file=sys.stderr,
        )
    elif not getattr(args, "quiet", False):
        print(
            "loadkit run: target: loadkit's embedded reference server (--target URL tests another)",
            file=sys.stderr,
        )


def _duration_text(s: Scenario) -> str:
    parts = []
    if s.duration_s != float("inf"):
        parts.append(f"{s.duration_s:g} s")
    if s.max_requests:
        parts.append(f"at most {s.max_requests} requests")
    return " / ".join(parts)


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, list | tuple):
        return [_jsonable(v) for v in d]
    if isinstance(d, float) and d == float("inf"):
        return None
    return d
