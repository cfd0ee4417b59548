"""API errors of the reference server: one exception type carrying the HTTP status and
the OpenAI error body ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

# The OpenAI ``type`` that goes with each status; clients key on the status and ``code``.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
}


class ApiError(Exception):
    """An error answered to the client with ``status`` and the OpenAI error body."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    @property
    def type(self) -> str:
        return _TYPE_BY_STATUS.get(self.status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r}, param={self.param!r})"


def invalid(param: str | None, message: str) -> ApiError:
    return ApiError(400, "invalid_parameters", message, param)


def unauthorized(message: str = "missing or unknown access key") -> ApiError:
    return ApiError(401, "unauthorized", message)


def forbidden(message: str = "this path needs the admin key") -> ApiError:
    return ApiError(403, "forbidden", message)


def model_not_found(model_id: str) -> ApiError:
    return ApiError(404, "model_not_found", f"the model {model_id!r} does not exist", "model")


def model_not_supported(model_id: str, capability: str) -> ApiError:
    return ApiError(
        400,
        "model_not_supported",
        f"the model {model_id!r} does not support {capability} requests",
        "model",
    )


def context_length_exceeded(
    param: str, prompt_tokens: int, max_tokens: int, ctx: int, floor: bool = False
) -> ApiError:
    """``floor``: the prompt was counted only this far (it holds at least that many)."""
    least = "at least " if floor else ""
    return ApiError(
        400,
        "context_length_exceeded",
        f"this model's maximum context length is {ctx} tokens; the request asks for "
        f"{least}{prompt_tokens + max_tokens} ({least}{prompt_tokens} in the prompt, "
        f"{max_tokens} to generate)",
        param,
    )


def billing_check_failed(balance: float, cost: float) -> ApiError:
    return ApiError(
        402,
        "billing_check_failed",
        f"the key's balance {balance:.6f} cannot pay for this request (up to {cost:.6f})",
    )


def internal_error(message: str = "internal error (the server keeps serving)") -> ApiError:
    return ApiError(500, "internal_error", message)
