"""The work lane lets everything else run between two slices of heavy work, whatever
the number of heavy requests, and hands its turns out round-robin."""

from __future__ import annotations

import asyncio

from loadkit.server.work import WorkLane, drive


def test_other_tasks_run_between_any_two_heavy_slices() -> None:
    events: list[str] = []

    def heavy(name: str, units: int):  # type: ignore[no-untyped-def]
        for _ in range(units):
            events.append(name)
            yield
        return name

    async def light() -> None:
        for _ in range(40):
            events.append("light")
            await asyncio.sleep(0)

    async def main() -> list[str]:
        lane = WorkLane(slice_ns=0)  # every slice is a single unit
        return await asyncio.gather(light(), *(lane.run(heavy(f"h{i}", 5)) for i in range(3)))

    results = asyncio.run(main())
    assert results[1:] == ["h0", "h1", "h2"]
    heavy_positions = [i for i, e in enumerate(events) if e != "light"]
    assert len(heavy_positions) == 15
    # never two heavy slices without a light step between them
    assert all(b - a > 1 for a, b in zip(heavy_positions, heavy_positions[1:], strict=False))
    # round-robin: each heavy job gets one slice per turn
    assert [events[i] for i in heavy_positions[:6]] == ["h0", "h1", "h2"] * 2


def test_drive_runs_work_to_its_result() -> None:
    def work():  # type: ignore[no-untyped-def]
        yield
        yield
        return 42

    assert drive(work()) == 42
