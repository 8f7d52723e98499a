"""Cost per million tokens on your own hardware, beside the API prices you pay.

    hours per Mtok      = 1e6 / tokens_per_s / 3600
    energy per Mtok     = power_w * hours / 1000                      (kWh)
    electricity / Mtok  = energy * price_per_kwh
    hardware / Mtok     = hw_cost / hw_lifetime_h * hours             (straight-line amortization)
    total / Mtok        = electricity + hardware

The throughput is measured (single-stream tg or pp tokens/s, or a load test's output
tokens/s at its best concurrency); the power is measured (GPU energy from NVML plus CPU
package energy from RAPL, over the timed repetitions) or given by the user. A part
that lacks an input is None, and the total is None with it: never a silent zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.core.errors import ConfigError

SECONDS_PER_HOUR = 3600.0
TOKENS = 1_000_000


@dataclass(frozen=True)
class CostInputs:
    kwh_price: float | None = None  # currency per kWh
    hw_cost: float | None = None  # currency, purchase price of the machine (or its share)
    hw_lifetime_h: float | None = None  # hours over which hw_cost is written off
    power_w: float | None = None  # user-given average power draw, W; overrides a measured one
    currency: str = "USD"

    def check(self) -> "CostInputs":
        for name, v in (("--kwh-price", self.kwh_price), ("--hw-cost", self.hw_cost), ("--power-w", self.power_w)):
            if v is not None and v < 0:
                raise ConfigError(f"{name} must not be negative, not {v:g}")
        if self.hw_lifetime_h is not None and self.hw_lifetime_h <= 0:
            raise ConfigError(f"--hw-lifetime-h must be positive, not {self.hw_lifetime_h:g}")
        if (self.hw_cost is None) != (self.hw_lifetime_h is None):
            raise ConfigError("--hw-cost and --hw-lifetime-h go together: amortization needs both")
        return self


@dataclass(frozen=True)
class Cost:
    tokens_per_s: float
    power_w: float | None
    power_source: str
    hours: float
    kwh: float | None
    electricity: float | None
    hardware: float | None

    @property
    def total(self) -> float | None:
        parts = [self.electricity, self.hardware]
        if any(p is None for p in parts):
            return None
        return sum(parts)  # type: ignore[arg-type]


def hours_per_mtok(tokens_per_s: float) -> float:
    if tokens_per_s <= 0:
        raise ConfigError(f"throughput must be positive to price it, not {tokens_per_s:g} tokens/s")
    return TOKENS / tokens_per_s / SECONDS_PER_HOUR


def cost_per_mtok(tokens_per_s: float, inputs: CostInputs, measured_power_w: float | None = None) -> Cost:
    hours = hours_per_mtok(tokens_per_s)
    if inputs.power_w is not None:
        power, source = inputs.power_w, "given (--power-w)"
    elif measured_power_w is not None:
        power, source = measured_power_w, "measured"
    else:
        power, source = None, "unknown (give --power-w)"
    kwh = power * hours / 1000 if power is not None else None
    electricity = kwh * inputs.kwh_price if kwh is not None and inputs.kwh_price is not None else None
    hardware = inputs.hw_cost / inputs.hw_lifetime_h * hours if inputs.hw_cost is not None and inputs.hw_lifetime_h else None
    return Cost(tokens_per_s, power, source, hours, kwh, electricity, hardware)


def measured_power_w(energy_j: float | None, seconds: float) -> float | None:
    """Average power over a timed window; None without an energy reading."""
    if energy_j is None or seconds <= 0:
        return None
    return energy_j / seconds


@dataclass(frozen=True)
class ApiPrice:
    name: str
    input_per_mtok: float
    output_per_mtok: float


_API_PRICE = re.compile(r"^\s*([^=]+?)\s*=\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def parse_api_price(text: str) -> ApiPrice:
    """'gpt-4o=2.50/10.00' -> input and output prices per million tokens."""
    m = _API_PRICE.match(text)
    if not m:
        raise ConfigError(f"--api-price: bad value '{text}'; write NAME=IN/OUT in price per million tokens, e.g. gpt-4o=2.5/10")
    return ApiPrice(m.group(1), float(m.group(2)), float(m.group(3)))
