"""loadkit's settings for the Locust users: custom Locust command-line options (each with
an environment variable for hand use), the keys a process loads, and the web UI's exposure
check. No Locust or gevent import: the parser is passed in, the rest is plain functions.

Locust forwards every custom option of the master to its workers in each spawn message,
so the master's settings (the resolved scenario, the run id, the plain-mode start time)
reach every worker without files or environment variables. Keys are the exception: each
process reads its own (``--loadkit-keys-file`` / environment) at start-up and never sends
them over the master/worker connection, which is not encrypted.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadkit.scenario import Key

WEB_USER_ENV = "LOADKIT_WEB_USER"
WEB_PASSWORD_ENV = "LOADKIT_WEB_PASSWORD"
DEFAULT_WEB_USER = "loadkit"
LOOPBACK = "127.0.0.1"


def add_options(parser: Any) -> None:
    """Register loadkit's options on Locust's parser (``init_command_line_parser``)."""
    group = parser.add_argument_group(
        "loadkit", "loadkit tier users (see docs/locust.md in the loadkit project)"
    )
    # Added to a group, not the parser itself: then Locust's web UI does not list them
    # among the custom parameters a browser may change.
    group.add_argument(
        "--loadkit-scenario",
        metavar="FILE",
        env_var="LOADKIT_SCENARIO",
        default="",
        help="scenario mode: run this loadkit scenario (TOML or JSON); read by the master only",
    )
    group.add_argument(
        "--loadkit-out",
        metavar="DIR",
        env_var="LOADKIT_OUT",
        default="",
        help="run directory for records and run.json, written by the master "
        "(default runs/locust-<id>)",
    )
    group.add_argument(
        "--loadkit-keys-file",
        metavar="FILE",
        env_var="LOADKIT_KEYS_FILE",
        default="",
        help='keys as {"keys": [{"label", "tier", "key"}]}; read by every process from its '
        "own command line or environment, never sent between master and workers",
    )
    group.add_argument(
        "--loadkit-paid-tier",
        metavar="TIER",
        env_var="LOADKIT_PAID_TIER",
        default="",
        help="the plan PaidTierUser drives (default: every non-free tier)",
    )
    # Set by the master and forwarded to the workers in Locust's spawn messages.
    for name in ("--loadkit-run-id", "--loadkit-scenario-json", "--loadkit-start"):
        group.add_argument(name, default="", help=argparse.SUPPRESS)
    # Loopback unless asked otherwise: the web UI holds the keys, the master port accepts
    # any worker (ZMQ, neither authenticated nor encrypted).
    parser.set_defaults(web_host=LOOPBACK, master_bind_host=LOOPBACK)


# -- keys ---------------------------------------------------------------------------------


def load_keys(keys_file: str, environ: Mapping[str, str]) -> list[Key]:
    """Keys from ``keys_file`` (the reference server's keys.json shape) and the environment:
    ``LOADKIT_<TIER>_KEYS=k1,k2`` (as in the scenario examples) or ``LOADKIT_KEYS_<TIER>``;
    labels ``<tier>-1``, ``<tier>-2``, … for keys from the environment."""
    keys: list[Key] = []
    if keys_file:
        try:
            data = json.loads(Path(keys_file).read_text(encoding="utf-8"))
            keys += [Key(str(k["label"]), str(k["tier"]), str(k["key"])) for k in data["keys"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeysError(
                f"--loadkit-keys-file {keys_file}: cannot read keys ({exc!r})"
            ) from None
    have = {k.secret for k in keys}
    for name, value in sorted(environ.items()):
        tier = _env_tier(name)
        if tier is None:
            continue
        n = sum(k.tier == tier for k in keys)
        for secret in (s.strip() for s in value.split(",")):
            if secret and secret not in have:
                n += 1
                have.add(secret)
                keys.append(Key(f"{tier}-{n}", tier, secret))
    labels = [k.label for k in keys]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise KeysError(f"key labels are not unique: {', '.join(dup)}")
    return sorted(keys, key=lambda k: (k.tier, _natural(k.label)))


class KeysError(ValueError):
    """Keys that cannot be loaded; the message names the source, never a key."""


def _env_tier(name: str) -> str | None:
    if not name.startswith("LOADKIT_") or name == "LOADKIT_KEYS_FILE":
        return None
    if name.startswith("LOADKIT_KEYS_"):
        tier = name.removeprefix("LOADKIT_KEYS_")
    elif name.endswith("_KEYS"):
        tier = name.removeprefix("LOADKIT_").removesuffix("_KEYS")
    else:
        return None
    return tier.lower() or None


def _natural(label: str) -> tuple[str, int]:
    stem, _, num = label.rpartition("-")
    return (stem, int(num)) if num.isdigit() else (label, -1)


def tier_matches(tier: str, user_tier: str, paid_tier: str | None) -> bool:
    """Whether a key of ``tier`` belongs to a ``FreeTierUser`` ("free") or a
    ``PaidTierUser`` ("paid": the ``paid_tier`` plan, else every non-free tier)."""
    if user_tier == "free":
        return tier == "free"
    return tier == paid_tier if paid_tier else tier != "free"


# -- web UI exposure ---------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "", "*", a name or an interface address: beyond this machine


@dataclass(frozen=True)
class WebLogin:
    user: str
    password: str


def web_login_from(environ: Mapping[str, str]) -> WebLogin | None:
    password = environ.get(WEB_PASSWORD_ENV, "")
    if not password:
        return None
    return WebLogin(environ.get(WEB_USER_ENV, "") or DEFAULT_WEB_USER, password)


def web_ui_problem(
    web_host: str, web_port: int, web_login: bool, login: WebLogin | None, custom_auth: bool
) -> str | None:
    """Why the web UI must not start (None when it may): it holds the keys, so beyond
    loopback it needs a login, and a login needs credentials."""
    where = f"{web_host or 'every interface'}:{web_port}"
    enable = (
        f"bind it to this machine with --web-host {LOOPBACK}, or require a login with "
        f"--web-login and {WEB_PASSWORD_ENV}=<password> in the environment (user "
        f"{WEB_USER_ENV}, default {DEFAULT_WEB_USER!r}; add --tls-cert/--tls-key so the "
        "password does not cross the network in clear)"
    )
    if web_login and login is None and not custom_auth:
        return (
            f"--web-login is set but no password is: set {WEB_PASSWORD_ENV} (and optionally "
            f"{WEB_USER_ENV}) in the environment of the Locust master"
        )
    if not is_loopback(web_host) and not web_login:
        return (
            f"refusing to start the Locust web UI on {where} without a login: anyone who "
            f"can reach it could start load with these keys. To use it, {enable}."
        )
    return None


def parse_start(text: str) -> dict[str, Any] | None:
    """The plain-mode start (an ``Origin`` as JSON) forwarded in ``--loadkit-start``."""
    return json.loads(text) if text else None
