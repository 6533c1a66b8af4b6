"""Service level objectives: the thresholds that decide a run's exit code, and the capacity knee."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .recorder import Figures


@dataclass(frozen=True)
class Slo:
    p95_ms: float
    p99_ms: float
    max_failure_ratio: float

    def check(self, figures: Figures) -> list[Verdict]:
        return [
            Verdict("p95", figures.p95, self.p95_ms, "ms"),
            Verdict("p99", figures.p99, self.p99_ms, "ms"),
            Verdict("failure ratio", figures.failure_ratio, self.max_failure_ratio, ""),
        ]

    def met(self, figures: Figures) -> bool:
        return figures.requests > 0 and all(v.ok for v in self.check(figures))


@dataclass(frozen=True)
class Verdict:
    name: str
    measured: float
    limit: float
    unit: str

    @property
    def ok(self) -> bool:
        return self.measured <= self.limit

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return (f"{self.name} {self.measured:.4g}{unit} {'<=' if self.ok else '>'} {self.limit:.4g}{unit}: "
                f"{'pass' if self.ok else 'FAIL'}")


@dataclass(frozen=True)
class Step:
    """One plateau of a step-load run, measured after its users settled."""

    users: int
    rps: float
    p95: float
    p99: float
    failure_ratio: float
    requests: int
    within_slo: bool

    @classmethod
    def of(cls, users: int, figures: Figures, slo: Slo) -> Step:
        # The knee is defined at the p95 target; p99 is reported, not gated on, per step.
        within = figures.requests > 0 and figures.p95 <= slo.p95_ms and figures.failure_ratio <= slo.max_failure_ratio
        return cls(users, figures.rps, figures.p95, figures.p99, figures.failure_ratio, figures.requests, within)

    def as_dict(self) -> dict:
        return asdict(self)


def knee(steps: list[Step]) -> Step | None:
    """The capacity knee: the busiest step (most requests/s) that still met the p95 target."""
    within = [step for step in steps if step.within_slo]
    return max(within, key=lambda step: step.rps) if within else None
