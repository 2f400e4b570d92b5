"""Annotation: find the sensitive spans of QA answers (from a span file, rules, a model or an LLM).

``annotate(items, annotator="contrast", **options)`` returns ``(items, report)``: copies of the
items with spans, and what was changed, dropped or could not be annotated. Annotators are
registered by name (``get_annotator``); ``palu annotate`` runs one from a config
(``palu.annotate.command``).
"""

from palu.annotate.base import (
    Annotated,
    AnnotationReport,
    Annotator,
    Change,
    annotate,
    annotator_names,
    get_annotator,
    register,
)
from palu.annotate.contrast import ContrastAnnotator
from palu.annotate.file import FileAnnotator
from palu.annotate.llm import LLMAnnotator
from palu.annotate.rules import RulesAnnotator

__all__ = [
    "Annotated",
    "AnnotationReport",
    "Annotator",
    "Change",
    "ContrastAnnotator",
    "FileAnnotator",
    "LLMAnnotator",
    "RulesAnnotator",
    "annotate",
    "annotator_names",
    "get_annotator",
    "register",
]
