"""``loadkit run``: resolve the scenario and keys, start the embedded reference server when
the target is ``embedded``, drive the chosen engine, write run.json, then analyse."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from loadkit import __version__
from loadkit.records import RecordWriter
from loadkit.runmeta import Clock, RunMeta, WorkerInfo, fingerprint, new_run_id
from loadkit.scenario import EMBEDDED, Key, Scenario, ScenarioError, load_scenario, resolve_keys

DEFAULT_SCENARIO = "default.toml"


def builtin_scenario(name: str = DEFAULT_SCENARIO) -> Scenario:
    import tomllib

    from loadkit.scenario import scenario_from_dict

    text = resources.files("loadkit.scenarios").joinpath(name).read_text(encoding="utf-8")
    return scenario_from_dict(tomllib.loads(text), source=f"<built-in {name}>")


@dataclass
class Target:
    base_url: str
    keys: list[Key]
    truth_path: Path | None = None


@contextlib.contextmanager
def open_target(scenario: Scenario, out_dir: Path, cpu: int | None = None) -> Iterator[Target]:
    """The target to load: the embedded reference server (started here, stopped after) or
    the scenario's URL with keys from the environment / keys files."""
    if scenario.target.base_url != EMBEDDED:
        yield Target(scenario.target.base_url, resolve_keys(scenario))
        return
    from loadkit.server.process import start_server_process

    truth = out_dir / "truth.jsonl"
    with start_server_process(
        config_path=scenario.target.server_config, truth_path=truth, cpu=cpu
    ) as srv:
        yield Target(srv.base_url, embedded_keys(scenario, srv.keys), truth)


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
) -> RunMeta:
    """Run a scenario and write records and run.json into ``out_dir``; returns the
    metadata (``interrupted`` set if Ctrl-C stopped it)."""
    used = [p.name for p in (out_dir / "run.json", *out_dir.glob("records-*.jsonl")) if p.exists()]
    if used:
        # Records of two runs in one directory would be analysed as one run (two clocks,
        # maybe two servers): never mix them.
        raise ScenarioError(
            f"--out {out_dir}: already holds a run ({', '.join(used[:3])}); "
            "choose another directory or delete this one"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = out_dir.name if out_dir.name else new_run_id()
    # Pin the embedded server and the generator to different cores when there are two.
    server_cpu = 0 if (os.cpu_count() or 1) >= 2 else None
    if engine == "async":
        import loadkit.engine.async_engine  # noqa: F401  (imported before the clock starts)
    with open_target(scenario, out_dir, cpu=server_cpu) as target:
        clock = Clock()
        meta = new_meta(scenario, engine, target.base_url, target.keys, run_id, clock)
        meta.write(out_dir)
        if progress:
            print(
                f"loadkit: {scenario.name}: {engine} engine, {len(target.keys)} keys, "
                f"{_duration_text(scenario)} against {target.base_url}",
                file=sys.stderr,
            )
        if engine == "async":
            _run_async(scenario, target, out_dir, clock, meta, progress)
        else:
            from loadkit.locust_engine import run_locust

            run_locust(scenario, target, out_dir, clock, meta, workers=workers, progress=progress)
        meta.ended_unix = time.time()
        meta.duration_s = clock.now()
        meta.write(out_dir)
    return meta


def _run_async(
    scenario: Scenario, target: Target, out_dir: Path, clock: Clock, meta: RunMeta, progress: bool
) -> None:
    from loadkit.engine.async_engine import run_engine

    worker = "async-0"
    with RecordWriter(out_dir / f"records-{worker}.jsonl") as writer:
        try:
            res = run_engine(
                scenario,
                target.keys,
                target.base_url,
                writer,
                clock,
                meta.run_id,
                progress=progress,
            )
            meta.interrupted = res.interrupted
            meta.stop_reason = res.stop_reason
        except KeyboardInterrupt:
            meta.interrupted = True
            meta.stop_reason = "interrupted (Ctrl-C)"
        meta.workers = [
            WorkerInfo(worker, writer.count, "interrupted" if meta.interrupted else "ok")
        ]


def run_main(args: Any) -> int:
    try:
        scenario = load_scenario(args.scenario) if args.scenario else builtin_scenario()
        scenario = scenario.with_overrides(duration_s=args.duration, base_url=args.target)
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
    try:
        meta = run_scenario(
            scenario, out_dir, engine=engine, workers=args.workers, progress=not args.quiet
        )
    except ScenarioError as exc:
        print(f"loadkit run: {exc}", file=sys.stderr)
        return 2
    print(f"records: {out_dir}", file=sys.stderr)
    if getattr(args, "parquet", False):
        from loadkit.records import write_parquet

        print(f"parquet: {write_parquet(out_dir)}", file=sys.stderr)
    if meta.interrupted:
        print("run interrupted: every finished request was kept", file=sys.stderr)
    if args.no_analyze:
        return 130 if meta.interrupted else 0
    from loadkit.analysis.cli import analyze_and_report

    code = analyze_and_report(out_dir, quiet=args.quiet)
    if getattr(args, "history", None) is not None:  # --history [URL]
        from loadkit.history.cli import add_after_run

        if add_after_run(out_dir, args.history) != 0 and code == 0:
            return 2  # a night missing from the history must not pass silently
    return code


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
