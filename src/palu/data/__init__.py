"""QA data: loading, built-in synthetic data, prompt formatting and token labels."""

from palu.data.qa import QAItem, Span

__all__ = ["QAItem", "Span"]
