"""How a target API is addressed: its path layout (the seed's ``/ai/...`` paths, the common
OpenAI ``/v1/...`` layout, or explicit paths) and how a key is presented (``Authorization:
Bearer``, ``api-key``, ``x-api-key``, …), plus static extra headers. Pure: both engines and
the pre-flight check build URLs and headers here, so they always agree."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

ENDPOINT_KINDS = ("chat", "completions", "models", "model")
# Header names a scenario may not set as "extra" headers: the engines own them.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "accept-encoding", "host", "x-loadkit-request-id"}
)


@dataclass(frozen=True, slots=True)
class ApiLayout:
    """Paths of each endpoint, relative to the target's base URL. ``model`` holds
    ``{model}`` where the model id goes."""

    name: str
    chat: str
    completions: str
    models: str
    model: str

    def path(self, endpoint: str, model: str | None = None) -> str:
        if endpoint == "chat":
            return self.chat
        if endpoint == "completions":
            return self.completions
        if endpoint == "models":
            return self.models
        if endpoint == "model":
            return self.model.replace("{model}", model or "")
        raise ValueError(f"unknown endpoint {endpoint!r} (expected one of {ENDPOINT_KINDS})")


SEED = ApiLayout(
    "seed", "/ai/chat/completions", "/ai/completions", "/ai/models", "/ai/models/{model}"
)
OPENAI = ApiLayout("openai", "/chat/completions", "/completions", "/models", "/models/{model}")
LAYOUTS = {"seed": SEED, "openai": OPENAI}


def default_layout_name(base_url: str) -> str:
    """The layout a base URL most likely has when the scenario does not say: the seed's
    documented base ends in ``/api/v1``; any other ``…/v1`` is the common OpenAI layout;
    anything else is taken as the seed's (the pre-flight check names the alternative when
    the guess answers 404)."""
    path = urlsplit(base_url).path.rstrip("/")
    if path.endswith("/api/v1"):
        return "seed"
    if path.endswith("/v1"):
        return "openai"
    return "seed"


def custom_layout(base: ApiLayout, paths: Mapping[str, str]) -> ApiLayout:
    """``base`` with some endpoint paths replaced (``{"chat": "/deployments/x/chat"}``)."""
    unknown = sorted(set(paths) - set(ENDPOINT_KINDS))
    if unknown:
        raise ValueError(f"unknown endpoint(s) {', '.join(unknown)} (expected {ENDPOINT_KINDS})")
    for name, p in paths.items():
        if not p.startswith("/"):
            raise ValueError(f"paths.{name}: expected a path starting with '/', got {p!r}")
    if "model" in paths and "{model}" not in paths["model"]:
        raise ValueError(f"paths.model: must contain '{{model}}', got {paths['model']!r}")
    return ApiLayout(
        "custom" if paths else base.name,
        paths.get("chat", base.chat),
        paths.get("completions", base.completions),
        paths.get("models", base.models),
        paths.get("model", base.model),
    )


@dataclass(frozen=True, slots=True)
class AuthStyle:
    """How a key is sent: ``header: scheme KEY`` (``Authorization: Bearer KEY``), or the
    bare key when ``scheme`` is empty (``api-key: KEY``, ``x-api-key: KEY``)."""

    header: str = "Authorization"
    scheme: str = "Bearer"

    def value(self, secret: str) -> str:
        return f"{self.scheme} {secret}" if self.scheme else secret

    def describe(self) -> str:
        """For logs and run.json: never the key."""
        return f"{self.header}: {self.scheme + ' ' if self.scheme else ''}<key>"


@dataclass(frozen=True, slots=True)
class TargetApi:
    """Everything needed to address one target besides its base URL and keys."""

    layout: ApiLayout = SEED
    auth: AuthStyle = AuthStyle()
    extra_headers: tuple[tuple[str, str], ...] = ()

    def headers(self, secret: str | None) -> dict[str, str]:
        """The static headers of every request with this key (``None``: no key)."""
        out = dict(self.extra_headers)
        # The traces decode gzip/deflate when a server insists, but identity is cheapest
        # to measure and what every OpenAI-compatible server serves.
        out["Accept-Encoding"] = "identity"
        if secret is not None:
            out[self.auth.header] = self.auth.value(secret)
        return out

    def describe(self) -> dict[str, object]:
        """For run.json and console: layout, paths, auth style, extra header *names*."""
        lay = self.layout
        return {
            "api": lay.name,
            "paths": {
                "chat": lay.chat,
                "completions": lay.completions,
                "models": lay.models,
                "model": lay.model,
            },
            "auth": self.auth.describe(),
            "extra_headers": sorted(h for h, _ in self.extra_headers),
        }


def check_header_name(name: str, where: str) -> None:
    """Refuse a header name that is not a valid HTTP token or that the engines own."""
    if not name or any(c in name for c in ' \t\r\n:()<>@,;\\"/[]?={}') or not name.isascii():
        raise ValueError(f"{where}: not a valid HTTP header name: {name!r}")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError(f"{where}: {name!r} is set by loadkit itself and cannot be overridden")


def check_header_value(value: str, where: str) -> None:
    if any(c in value for c in "\r\n\0"):
        # The value may be a secret: never echo it.
        raise ValueError(f"{where}: header value contains a line break or NUL")
