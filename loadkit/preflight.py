"""The pre-flight check: before any load, is the target an OpenAI-compatible API that
answers, does every key authenticate, does the model exist, are the answers the OpenAI
shape? Pure: what to ask (:func:`plan_probes`) and what the answers mean
(:func:`judge`); ``loadkit.preflight_client`` sends the probes.

A failed check names the key by label (never the key), the URL, the status and the first
bytes of the body, and says what to change. Every probe is also an ordinary request
record, so a probe that used one of a key's requests is counted by the limit verdicts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from loadkit.api import LAYOUTS, ApiLayout, TargetApi
from loadkit.outcomes import MODEL_NOT_FOUND
from loadkit.records import RequestRecord

BODY_HEAD = 200  # bytes of a body quoted in a message


@dataclass(frozen=True, slots=True)
class Probe:
    """One request the check sends."""

    name: str  # "models", "key", "stream", "other-layout"
    key_label: str | None  # which key (None: no key)
    kind: str  # a payloads mix kind: "models", "chat", "chat_stream", …
    layout: ApiLayout


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back for one probe."""

    probe: Probe
    url: str
    status: int  # 0: no response
    content_type: str
    body: bytes  # the body, kept up to a bound
    record: RequestRecord
    transport_detail: str = ""  # the client's error text when status is 0

    def quote(self) -> str:
        head = self.body[:BODY_HEAD].decode("utf-8", "replace").replace("\n", " ").strip()
        return head + ("…" if len(self.body) > BODY_HEAD else "") if head else "(empty body)"

    def what(self) -> str:
        """``GET URL -> 404 (text/html): <body head>``."""
        if self.status == 0:
            kind = self.record.transport_error or "no response"
            detail = f": {self.transport_detail}" if self.transport_detail else ""
            return f"{self.url} -> no response ({kind}{detail})"
        ctype = f" ({self.content_type})" if self.content_type else ""
        return f"{self.url} -> {self.status}{ctype}: {self.quote()}"


@dataclass(frozen=True, slots=True)
class Problem:
    """A reason not to start the run."""

    what: str  # one line: what failed
    detail: str  # the exchange: URL, status, body head
    fix: str  # what to change

    def text(self) -> str:
        return f"{self.what}\n    {self.detail}\n    fix: {self.fix}"


@dataclass
class Verdict:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def plan_probes(api: TargetApi, key_labels: Sequence[str], kinds: Sequence[str]) -> list[Probe]:
    """The probes for a scenario that uses request ``kinds`` with these keys: the model
    listing (when the scenario lists models, or to check the model exists); one cheapest
    non-streamed request per key (auth: most services list models without a key); one
    streamed request when the scenario streams."""
    lay = api.layout
    base = "chat" if any(k.startswith("chat") for k in kinds) or not kinds else "completions"
    first = key_labels[0] if key_labels else None
    probes = [Probe("models", first, "models", lay)]
    probes += [Probe("key", label, base, lay) for label in key_labels]
    streamed = [k for k in kinds if k.endswith("_stream")]
    if streamed and first is not None:
        probes.append(Probe("stream", first, streamed[0], lay))
    return probes


def other_layout(layout: ApiLayout) -> ApiLayout | None:
    """The layout to try when ``layout`` answers 404 everywhere."""
    if layout.name == "seed":
        return LAYOUTS["openai"]
    if layout.name == "openai":
        return LAYOUTS["seed"]
    return None


def alternative_bases(base_url: str, layout: ApiLayout) -> list[str]:
    """Base URLs where the other layout may live: this one, and the conventional root of
    that layout on the same host (``…/api/v1`` for the seed's, ``…/v1`` for OpenAI's)."""
    from urllib.parse import urlsplit

    base = base_url.rstrip("/")
    u = urlsplit(base)
    root = f"{u.scheme}://{u.netloc}"
    path = u.path
    for suffix in ("/api/v1", "/v1"):
        if path.endswith(suffix):
            root += path[: -len(suffix)]
            break
    conventional = root + ("/v1" if layout.name == "seed" else "/api/v1")
    return [base] if conventional == base else [base, conventional]


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def listed_models(reply: Reply) -> list[str] | None:
    """Model ids of an OpenAI model list (``{"data": [{"id": …}]}``), else None. Only
    judged on a complete body (the client keeps up to a bound)."""
    obj = _json(reply.body)
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        return None
    return [str(m["id"]) for m in obj["data"] if isinstance(m, dict) and "id" in m]


def is_api_error(reply: Reply) -> bool:
    """The body is the API's JSON error (``{"error": {...}}``), not a proxy's page."""
    obj = _json(reply.body)
    return isinstance(obj, dict) and isinstance(obj.get("error"), dict | str)


def judge(
    replies: Sequence[Reply],
    models: Sequence[str],
    key_envs: dict[str, str] | None = None,
    alternative: Reply | None = None,
) -> Verdict:
    """What the probes' answers mean. ``alternative``: the other layout's model listing,
    asked when this layout answered a non-API 404 (so the message can name the fix)."""
    v = Verdict()
    envs = key_envs or {}
    unreachable = [r for r in replies if r.status == 0]
    if unreachable and len(unreachable) == len(replies):
        r = unreachable[0]
        v.problems.append(
            Problem(
                "the target does not answer",
                r.what(),
                "check [target] base_url (or --target): host, port, scheme, and that the "
                "service is up and reachable from here",
            )
        )
        return v
    for r in replies:
        p = _judge_one(r, models, envs, alternative)
        if p is None:
            continue
        if isinstance(p, str):
            v.notes.append(p)
        else:
            v.problems.append(p)
    # One wrong-route problem per URL is enough: every key gets the same 404.
    seen: set[str] = set()
    unique = []
    for p in v.problems:
        if p.detail in seen:
            continue
        seen.add(p.detail)
        unique.append(p)
    v.problems = unique
    return v


def _route_fix(r: Reply, alternative: Reply | None) -> str:
    lay = r.probe.layout
    if alternative is not None and alternative.status == 200 and listed_models(alternative):
        alt = alternative.probe.layout
        base = alternative.url.removesuffix(alt.models)
        where = (
            ""
            if r.url.startswith(base + lay.path(r.probe.kind.removesuffix("_stream")))
            else (f'base_url = "{base}" (or --target {base}) and ')
        )
        return (
            f"the {alt.name!r} layout answers at {alternative.url}: set {where}"
            f'[target] api = "{alt.name}" (paths {alt.chat}, {alt.models})'
        )
    return (
        f"check base_url and the api layout (now {lay.name!r}: {lay.chat}, {lay.models}); "
        'set [target] api = "openai" for …/v1/chat/completions, or give explicit paths '
        "in [target.paths]"
    )


def _judge_one(
    r: Reply, models: Sequence[str], envs: dict[str, str], alternative: Reply | None
) -> Problem | str | None:
    model = models[0]  # the one the key probes asked for
    name = r.probe.name
    label = r.probe.key_label
    who = f"key {label}" if label else "the target"
    if r.status == 0:
        return Problem(
            f"{who}: no response to the {name} check",
            r.what(),
            "check that the target is up; raise [target] connect_timeout_s / "
            "request_timeout_s if it is only slow",
        )
    if name == "models":
        if r.status == 200:
            ids = listed_models(r)
            if ids is None:
                return Problem(
                    "the model listing is not an OpenAI model list",
                    r.what(),
                    "point base_url at the API root (the folder holding chat/completions "
                    "and models), or set the api layout / [target.paths]",
                )
            missing = [m for m in models if m not in ids]
            if missing:
                shown = ", ".join(ids[:8]) + (" …" if len(ids) > 8 else "")
                names = ", ".join(repr(m) for m in missing)
                return Problem(
                    f"model {names} is not among the {len(ids)} models the target lists",
                    f"{r.url} lists: {shown or '(none)'}",
                    "set [target] model (or a load phase's model) to one of them",
                )
            return None
        if r.status in (401, 403):
            return None  # listing needs a key; the key probes say whether keys work
        # Many services do not offer a listing; the key probes decide whether the route
        # is wrong (they hit the completion paths).
        return f"model listing not offered: {r.what()}"
    # A key probe or the stream probe: a completion.
    if r.status in (401, 403):
        env = envs.get(label or "", "")
        where = f" (from {env})" if env else ""
        reason = "Unauthorized" if r.status == 401 else "Forbidden"
        return Problem(
            f"{who}{where} was refused: {r.status} {reason}",
            r.what(),
            "check the key itself, and how it is sent ([target] auth_header / auth_scheme: "
            'e.g. auth_header = "api-key", auth_scheme = "" for Azure)',
        )
    if r.status == 429:
        return (
            f"{who} was already rate-limited at pre-flight ({r.record.error_code or '429'}): "
            "its limiter started before the run"
        )
    if r.status == 404:
        if is_api_error(r) and (r.record.error_code or "") in MODEL_NOT_FOUND:
            return Problem(
                f"model {model!r} does not exist on the target",
                r.what(),
                "set [target] model (or a load phase's model) to a model the target serves",
            )
        return Problem(
            f"the {r.probe.kind.removesuffix('_stream')} path does not exist (404)",
            r.what(),
            _route_fix(r, alternative),
        )
    if r.status in (405, 501) or (r.status >= 400 and not is_api_error(r)):
        return Problem(
            f"{r.url} is not an OpenAI-compatible endpoint ({r.status})",
            r.what(),
            _route_fix(r, alternative),
        )
    if r.status == 402:
        return Problem(
            f"{who} cannot pay for requests (402 {r.record.error_code or ''})".rstrip(),
            r.what(),
            "top up the key's balance or use another key",
        )
    if 400 <= r.status < 500:
        return Problem(
            f"the target rejected loadkit's {r.probe.kind} request ({r.status} "
            f"{r.record.error_code or ''})".rstrip(),
            r.what(),
            "check the model supports this endpoint (chat vs completions) and the mix",
        )
    if r.status >= 500:
        return Problem(
            f"the target failed the {name} check ({r.status})",
            r.what(),
            "the service is failing before any load; retry, or --no-preflight to load it anyway",
        )
    # 2xx: the shape.
    rec = r.record
    if r.probe.kind.endswith("_stream"):
        if "text/event-stream" not in r.content_type:
            return Problem(
                f"a streamed {r.probe.kind.removesuffix('_stream')} request was not answered "
                f"with Server-Sent Events (Content-Type {r.content_type or 'missing'})",
                r.what(),
                "the target must support stream=true the OpenAI way; drop *_stream kinds "
                "from the mix to test it without streaming",
            )
        if rec.transport_error or rec.content_chunks == 0 and rec.finish_reason is None:
            return Problem(
                "the stream is not OpenAI-shaped "
                f"({rec.transport_error or 'no content and no finish_reason'})",
                r.what(),
                "the target's SSE events must be OpenAI chunks ending with data: [DONE]",
            )
        return None
    if "json" not in r.content_type or rec.transport_error:
        return Problem(
            f"the answer to a {r.probe.kind} request is not an OpenAI JSON body",
            r.what(),
            _route_fix(r, alternative),
        )
    obj = _json(r.body)
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        return Problem(
            f"the answer to a {r.probe.kind} request has no 'choices'",
            r.what(),
            "point base_url at an OpenAI-compatible API",
        )
    return None
