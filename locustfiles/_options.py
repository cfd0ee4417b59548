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
import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loadkit.api import TargetApi
from loadkit.scenario import Key, TargetSpec
from loadkit.schema import Invalid, validate_value

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
    # How the target is addressed (plain mode; a scenario's [target] says it in scenario
    # mode). The master forwards these to its workers; each process expands ${VAR} in a
    # header value from its own environment.
    group.add_argument(
        "--loadkit-api",
        metavar="LAYOUT",
        env_var="LOADKIT_API",
        default="auto",
        help='path layout: "seed" (/ai/chat/completions under .../api/v1), "openai" '
        '(/chat/completions under .../v1), or "auto" (openai when --host ends in /v1 but not '
        "/api/v1, else seed)",
    )
    group.add_argument(
        "--loadkit-paths",
        metavar="JSON",
        env_var="LOADKIT_PATHS",
        default="",
        help='explicit endpoint paths over the layout, e.g. \'{"chat": "/deployments/d/chat"}\' '
        "(chat, completions, models, model with {model})",
    )
    group.add_argument(
        "--loadkit-auth-header",
        metavar="NAME",
        env_var="LOADKIT_AUTH_HEADER",
        default="Authorization",
        help="the header that carries the key (api-key, x-api-key, ...)",
    )
    group.add_argument(
        "--loadkit-auth-scheme",
        metavar="WORD",
        env_var="LOADKIT_AUTH_SCHEME",
        default="Bearer",
        help='written before the key ("Bearer KEY"); "none" sends the bare key',
    )
    group.add_argument(
        "--loadkit-headers",
        metavar="JSON",
        env_var="LOADKIT_HEADERS",
        default="",
        help='extra headers on every request, e.g. \'{"OpenAI-Organization": "${ORG}"}\'; '
        "${VAR} is read from each process's environment (put secrets there)",
    )
    # Set by the master and forwarded to the workers in Locust's spawn messages.
    for name in ("--loadkit-run-id", "--loadkit-scenario-json", "--loadkit-start"):
        group.add_argument(name, default="", help=argparse.SUPPRESS)
    # Set by `loadkit run`: the process that started the run (every process of the run
    # stops when it is gone).
    group.add_argument("--loadkit-parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    # Loopback unless asked otherwise: the web UI holds the keys, the master port accepts
    # any worker (ZMQ, neither authenticated nor encrypted).
    parser.set_defaults(web_host=LOOPBACK, master_bind_host=LOOPBACK)


# -- how the target is addressed ------------------------------------------------------

# TargetSpec field -> the plain-mode option that sets it
API_OPTIONS = {
    "api": "--loadkit-api",
    "paths": "--loadkit-paths",
    "auth_header": "--loadkit-auth-header",
    "auth_scheme": "--loadkit-auth-scheme",
    "headers": "--loadkit-headers",
}


class OptionsError(ValueError):
    """An option that cannot be used; the message names the option, never a secret."""


def plain_target(options: Any, host: str) -> TargetSpec:
    """The target's addressing from the plain-mode options, validated as a scenario's
    ``[target]`` is (``${VAR}`` in header values not expanded yet)."""
    raw: dict[str, Any] = {
        "base_url": (host or "http://localhost").rstrip("/") or "http://localhost",
        "api": options.loadkit_api or "auto",
        "auth_header": options.loadkit_auth_header,
        "auth_scheme": ""
        if options.loadkit_auth_scheme.lower() == "none"
        else options.loadkit_auth_scheme,
    }
    for field, attr in (("paths", "loadkit_paths"), ("headers", "loadkit_headers")):
        text = getattr(options, attr) or ""
        if text.strip():
            try:
                raw[field] = json.loads(text)
            except ValueError:
                raise OptionsError(
                    f"{API_OPTIONS[field]}: expected a JSON object such as "
                    + (
                        '\'{"chat": "/my/chat"}\''
                        if field == "paths"
                        else '\'{"X-Name": "value"}\''
                    )
                ) from None
    try:
        spec: TargetSpec = validate_value(TargetSpec, raw, root="")
    except Invalid as exc:
        text = str(exc)
        field, _, rest = text.partition(":")
        name = field.split(".", 1)[0].strip()
        if name in API_OPTIONS:
            sub = field.strip()[len(name) :]
            raise OptionsError(f"{API_OPTIONS[name]}{sub}:{rest}") from None
        raise OptionsError(text) from None
    return spec


def resolve_api(spec: TargetSpec, host: str, environ: Mapping[str, str]) -> TargetApi:
    """``spec``'s layout and auth for the URL actually loaded (``host`` decides an "auto"
    layout), header values' ``${VAR}`` expanded from ``environ`` (this process's). Raises
    ``ScenarioError`` naming a variable that is not set."""
    if host:
        spec = replace(spec, base_url=host.rstrip("/"))
    return spec.target_api(environ)


# -- keys ---------------------------------------------------------------------------------


def load_keys(
    keys_file: str, environ: Mapping[str, str], inherited: Sequence[Key] = ()
) -> list[Key]:
    """Keys from ``keys_file`` (the reference server's keys.json shape), those ``loadkit run``
    handed this process (``inherited``, see ``read_inherited_keys``) and the environment:
    ``LOADKIT_<TIER>_KEYS=k1,k2`` (as in the scenario examples) or ``LOADKIT_KEYS_<TIER>``;
    labels ``<tier>-1``, ``<tier>-2``, … for keys from the environment."""
    keys: list[Key] = list(inherited)
    if keys_file:
        try:
            text = Path(keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise KeysError(
                f"--loadkit-keys-file {keys_file}: cannot read keys ({exc.strerror})"
            ) from None
        keys += keys_from_json(text, f"--loadkit-keys-file {keys_file}")
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
    # Grouped by tier, each tier's keys in the order given: a scenario's ``keys = [2]``
    # means the tier's second key as `loadkit run` listed them.
    return sorted(keys, key=lambda k: k.tier)


def keys_from_json(text: str | bytes, source: str) -> list[Key]:
    """Keys of a ``{"keys": [{"label", "tier", "key"}]}`` document."""
    try:
        data = json.loads(text)
        return [Key(str(k["label"]), str(k["tier"]), str(k["key"])) for k in data["keys"]]
    except (ValueError, KeyError, TypeError) as exc:
        # The exception's class only: its text could quote a key.
        raise KeysError(f"{source}: cannot read keys ({type(exc).__name__})") from None


KEYS_FD_ENV = "LOADKIT_KEYS_FD"


def read_inherited_keys(environ: MutableMapping[str, str]) -> list[Key]:
    """The keys ``loadkit run`` writes into a pipe this process inherited (its descriptor
    number in ``LOADKIT_KEYS_FD``): keys never touch the disk nor a command line. Read once,
    when the locustfile is imported — before ``--processes`` forks the workers, which keep
    them in memory — and the variable removed."""
    fd = environ.pop(KEYS_FD_ENV, "")
    if not fd:
        return []
    try:
        with os.fdopen(int(fd), "rb") as pipe:
            text = pipe.read()
    except (OSError, ValueError) as exc:
        raise KeysError(f"{KEYS_FD_ENV}={fd}: cannot read keys ({exc!r})") from None
    return keys_from_json(text, "the keys from loadkit run")


class KeysError(ValueError):
    """Keys that cannot be loaded; the message names the source, never a key."""


def _env_tier(name: str) -> str | None:
    if not name.startswith("LOADKIT_") or name in ("LOADKIT_KEYS_FILE", KEYS_FD_ENV):
        return None
    if name.startswith("LOADKIT_KEYS_"):
        tier = name.removeprefix("LOADKIT_KEYS_")
    elif name.endswith("_KEYS"):
        tier = name.removeprefix("LOADKIT_").removesuffix("_KEYS")
    else:
        return None
    return tier.lower() or None


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
