"""What every results dict reduces to: metric name -> aggregate value."""

from __future__ import annotations


def summary(results: dict[str, dict]) -> dict[str, float | None]:
    """Metric name -> aggregate value (None where unavailable)."""
    return {name: res["agg_value"] for name, res in results.items()}
