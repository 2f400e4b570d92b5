"""What every results dict reduces to (metric name -> aggregate value), and how a value is printed."""

from __future__ import annotations


def summary(results: dict[str, dict]) -> dict[str, float | None]:
    """Metric name -> aggregate value (None where unavailable)."""
    return {name: res["agg_value"] for name, res in results.items()}


def format_value(value: float | None) -> str:
    """A metric value for a table: scientific notation for tiny ones (forget quality often is)."""
    if value is None:
        return "n/a"
    return f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
