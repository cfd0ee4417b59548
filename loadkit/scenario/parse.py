"""Reading a scenario: a TOML (or JSON) file or a dict in the file's shape, validated once
(``tables``) into a ``Scenario``. Besides reading the file, the one look at the file system
is whether the reference-server config a scenario names exists, so a typo is refused before
any load is sent."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from loadkit.scenario.model import Scenario, ScenarioError
from loadkit.scenario.tables import ScenarioFile
from loadkit.schema import Invalid, validate


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read scenario ({exc.strerror})") from None
    is_json = p.suffix.lower() == ".json"
    try:
        data = json.loads(text) if is_json else tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError is a ValueError
        raise ScenarioError(f"{p}: not valid {'JSON' if is_json else 'TOML'} ({exc})") from None
    return scenario_from_dict(data, source=str(p), base_dir=p.parent)


def scenario_from_dict(
    data: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None
) -> Scenario:
    """The scenario of ``data`` (the file's shape); errors start with ``source``, and
    relative paths in it are relative to ``base_dir``."""
    try:
        scenario = validate(ScenarioFile, data).to_model(source, base_dir)
    except Invalid as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    config = scenario.target.server_config
    if config and not Path(config).is_file():
        raise ScenarioError(
            f"{source}: target.server_config: cannot read {config!r} (no such file)"
        )
    return scenario
