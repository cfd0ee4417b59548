"""Per-key balances, pure: a request holds the most it could cost (prompt + every
possible completion token) so concurrent requests cannot overdraw, then is charged its
actual usage and the rest of the hold is returned."""

from __future__ import annotations

from dataclasses import dataclass

from loadkit.server.config import BillingConfig
from loadkit.server.errors import billing_check_failed


@dataclass(frozen=True)
class Hold:
    label: str
    amount: float


class Ledger:
    def __init__(self, prices: BillingConfig, balances: dict[str, float | None]) -> None:
        self.prices = prices
        # label -> balance; a label absent (or None) is unlimited
        self._balance: dict[str, float] = {k: v for k, v in balances.items() if v is not None}
        self.spent: dict[str, float] = {}

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        p = self.prices
        return (prompt_tokens * p.prompt_per_1k + completion_tokens * p.completion_per_1k) / 1000.0

    def hold(self, label: str, prompt_tokens: int, max_completion_tokens: int) -> Hold:
        """Reserve the worst case or raise 402 ``billing_check_failed``."""
        amount = self.cost(prompt_tokens, max_completion_tokens)
        bal = self._balance.get(label)
        if bal is None:
            return Hold(label, 0.0)
        if amount > bal + 1e-12:
            raise billing_check_failed(bal, amount)
        self._balance[label] = bal - amount
        return Hold(label, amount)

    def settle(self, hold: Hold, prompt_tokens: int, completion_tokens: int) -> float:
        """Charge the actual usage against the hold; returns the charge."""
        charge = min(hold.amount, self.cost(prompt_tokens, completion_tokens))
        if hold.label in self._balance:
            self._balance[hold.label] += hold.amount - charge
        else:
            charge = self.cost(prompt_tokens, completion_tokens)
        self.spent[hold.label] = self.spent.get(hold.label, 0.0) + charge
        return charge

    def balance(self, label: str) -> float | None:
        return self._balance.get(label)

    def balances(self) -> dict[str, float]:
        return dict(self._balance)
