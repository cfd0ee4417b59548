"""A model's request window and concurrency in the reference server's limiter: refused
with codes of their own (not the key's), and the two wrong modes that the per-model
verdicts must catch (``models_per_key``: kept per key; ``models_off``: not enforced)."""

from __future__ import annotations

from loadkit.server.token_limiter import Ask, Rules, TokenLimiter, WindowRule

S = 1_000_000_000
RULES = Rules((WindowRule("requests", 2, 10 * S, model="a"),), concurrency=(("a", 1),))
A, B = Ask(1, 1, "a"), Ask(1, 1, "b")


def test_a_models_refusals_carry_their_own_codes() -> None:
    lim = TokenLimiter()
    assert lim.commit("k", RULES, A, 0) == {"models.a.requests": 1, "models.a.concurrency": 1}
    conc = lim.check("k", RULES, A, 1)
    assert conc is not None and (conc.rule, conc.code) == (
        "models.a.concurrency",
        "model_concurrency_limit_exceeded",
    )
    lim.release("k", RULES, A)
    lim.commit("k", RULES, A, 2)
    lim.release("k", RULES, A)
    window = lim.check("k", RULES, A, 3)
    assert window is not None and (window.rule, window.code, window.retry_after_ns) == (
        "models.a.requests",
        "model_rate_limit_exceeded",
        10 * S - 3,  # until the first of the two leaves the window
    )
    assert lim.check("k", RULES, B, 3) is None  # another model is not limited


def test_models_per_key_counts_every_model_against_the_models_limit() -> None:
    right, wrong = TokenLimiter("exact"), TokenLimiter("models_per_key")
    for lim in (right, wrong):
        for t in (0, 1):
            lim.commit("k", RULES, B, t)
    assert right.check("k", RULES, A, 2) is None
    refusal = wrong.check("k", RULES, A, 2)  # two requests to b filled a's window
    assert refusal is not None and refusal.rule == "models.a.requests"
    assert wrong.check("k", RULES, B, 2) is None  # it refuses only requests to its model
    held = TokenLimiter("models_per_key")
    held.commit("k", Rules(concurrency=(("a", 1),)), B, 0)  # a request to b in flight
    conc = held.check("k", Rules(concurrency=(("a", 1),)), A, 1)
    assert conc is not None and conc.rule == "models.a.concurrency"
    held.release("k", Rules(concurrency=(("a", 1),)), B)
    assert held.check("k", Rules(concurrency=(("a", 1),)), A, 2) is None


def test_models_off_enforces_neither_the_window_nor_the_cap() -> None:
    lim = TokenLimiter("models_off")
    for t in range(5):
        assert lim.check("k", RULES, A, t) is None
        lim.commit("k", RULES, A, t)  # never released: 5 in flight
    tokens = Rules((WindowRule("tokens", 3, 10 * S, "input", "a"),))
    for t in range(3):
        lim.commit("k", tokens, A, t)
    assert lim.check("k", tokens, A, 4) is not None  # a model's token limit still holds
