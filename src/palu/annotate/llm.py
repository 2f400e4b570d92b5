"""Spans from an LLM behind any OpenAI-compatible chat endpoint, with palu computing the offsets.

The model is asked for the phrases only (as a JSON list), never for offsets: LLMs count
characters badly, which is how the GPT-4o files got spans inside other words. Each phrase is
placed at its first word-bounded occurrence that no other span covers. A document is sent in chunks
of at most ``chunk_chars`` characters, cut after a sentence (or at a space), so a long text fits the
model's context and each phrase is placed in the chunk the model read it in; a chunk is part of
its prompt, so each chunk's reply is cached on its own.

Replies are cached on disk under a hash of model and prompt, so a re-run costs nothing and gives
the same spans. Secrets (the API key, and credentials written into base_url as user:password@)
are sent only in the request header; every text that comes back from the server or the network is
redacted as it arrives, before any truncation, so no message, log, cache file or output holds a
secret or a piece of one. Rate limits (429), server errors (5xx) and network errors are retried with
exponential back-off; a reply that is not a JSON list of strings is reported for its item.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from palu.annotate.base import AnnotationReport, Annotator, Change, item_name, register
from palu.annotate.text import first_free, occurrences, overlaps
from palu.data.qa import QAItem, Span
from palu.errors import PaluError
from palu.io import write_json

log = logging.getLogger(__name__)

INSTRUCTION = """You mark the sensitive words in the answer to a question about a person or their work.
Mark the words that directly and exactly answer the question: proper nouns, names of works, \
technical terms, specific concepts, roles, professions, places and dates.
Mark the person's name only when the question asks for the name.
Leave out context words that do not answer the question.
Copy every phrase exactly as it is written in the answer.
Reply with a JSON list of strings and nothing else, e.g. ["Kuwait City", "1987"]; reply [] if nothing qualifies."""

DOCUMENT_INSTRUCTION = """You mark the sensitive words in a text.
Mark the words in this text that name a specific person, place, date, number, work or other fact: proper \
nouns, names of works, technical terms, specific concepts, roles, professions, places and dates.
Leave out words that only carry grammar or general meaning.
Copy every phrase exactly as it is written in the text.
Reply with a JSON list of strings and nothing else, e.g. ["Kuwait City", "1987"]; reply [] if nothing qualifies."""

SENTENCE_END = re.compile(r"[.!?][\"')\]’”]*\s+|\n\s*")


class MalformedReply(ValueError):
    """The reply is not a JSON list of strings."""


@register("llm")
@dataclass
class LLMAnnotator(Annotator):
    """Options (each endpoint setting falls back to an environment variable):

    Attributes:
        base_url: the API root, e.g. https://api.openai.com/v1 (``PALU_LLM_BASE_URL``); credentials in it
            (``https://user:password@host/v1``) are sent as HTTP Basic auth when there is no api_key.
        model: the chat model (``PALU_LLM_MODEL``).
        api_key: sent as a bearer token (``PALU_LLM_API_KEY``); may be empty for local servers.
        cache_dir: where replies are kept (default: ``$XDG_CACHE_HOME/palu/llm`` or ``~/.cache/palu/llm``).
        all_occurrences: mark every word-bounded occurrence of each phrase (in a document: of its chunk),
            not only the first free one.
        chunk_chars: the most characters of a document sent in one request.
        retries: attempts after the first for 429, 5xx and network errors.
        backoff: seconds before the first retry, doubling each time.
        timeout: seconds to wait for one reply.
        temperature: sampling temperature (0 for repeatable spans).
    """

    documents: ClassVar[bool] = True

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    cache_dir: str | None = None
    all_occurrences: bool = False
    chunk_chars: int = 4000
    retries: int = 5
    backoff: float = 1.0
    timeout: float = 60.0
    temperature: float = 0.0

    def __post_init__(self) -> None:
        self.base_url = self.base_url or os.environ.get("PALU_LLM_BASE_URL")
        self.model = self.model or os.environ.get("PALU_LLM_MODEL")
        if self.api_key is None:
            self.api_key = os.environ.get("PALU_LLM_API_KEY")
        if not self.base_url:
            raise PaluError("llm annotator: no endpoint; set base_url or PALU_LLM_BASE_URL "
                            "(an OpenAI-compatible API root such as http://127.0.0.1:8000/v1).")
        if not self.model:
            raise PaluError("llm annotator: no model; set model or PALU_LLM_MODEL.")
        if self.chunk_chars < 1:
            raise PaluError(f"llm annotator: chunk_chars must be positive, not {self.chunk_chars}.")
        self._secrets, self._basic = [], None
        self.base_url = self._take_credentials(self.base_url)
        self._secrets += [str(s) for s in (self.api_key, self._basic) if s]
        self._secrets.sort(key=len, reverse=True)  # a longer secret may contain a shorter one
        if self.cache_dir is None:
            root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
            self.cache_dir = str(Path(root) / "palu" / "llm")

    def find_spans(self, items: list[QAItem], report: AnnotationReport) -> list[list[Span] | None]:
        log.info("llm annotator: %d items with %s at %s", len(items), self.model, self.base_url)
        out: list[list[Span] | None] = []
        for i, item in enumerate(items):
            name = item_name(item, i)
            parts = chunks(item.answer, self.chunk_chars) if item.is_document else [(0, len(item.answer))]
            spans: list[Span] | None = []
            for start, end in parts:
                text = item.answer[start:end]
                if not text.strip():
                    continue
                try:
                    phrases = self.phrases(item.question, text)
                except MalformedReply as e:  # a chunk left unmarked would pass for one without facts: keep the item
                    where = f" for characters [{start}, {end})" if len(parts) > 1 else ""
                    report.errors.append(self._redact(f"{name}: malformed reply{where} ({e}); "
                                                      "the item keeps its spans"))
                    spans = None
                    break
                spans += [Span(s.start + start, s.end + start) for s in self._place(text, phrases, name, report)]
            out.append(spans)
        return out

    def _take_credentials(self, url: str) -> str:
        """``url`` without its user:password@, which goes to the Basic auth header and the secrets to redact."""
        parts = urllib.parse.urlsplit(url)
        userinfo, at, host = parts.netloc.rpartition("@")
        if at:
            user, _, password = userinfo.partition(":")
            plain = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
            self._basic = base64.b64encode(plain.encode()).decode()
            self._secrets += [s for s in {password, urllib.parse.unquote(password)} if s]
            url = urllib.parse.urlunsplit(parts._replace(netloc=host))
        try:
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
        except ValueError:  # a port that is not a number
            valid = False
        if not valid:
            raise PaluError(f"llm annotator: base_url {url!r} is not an http(s) URL with a host "
                            "(e.g. http://127.0.0.1:8000/v1).")
        return url

    def _redact(self, text: str, limit: int | None = None) -> str:
        """``text`` with every secret replaced, then cut to ``limit``: cutting first could split a secret."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text if limit is None or len(text) <= limit else text[:limit] + "..."

    def messages(self, question: str | None, text: str) -> list[dict]:
        """The chat for an answer to ``question``, or for a document's chunk ``text`` when ``question`` is None."""
        if question is None:
            return [{"role": "system", "content": DOCUMENT_INSTRUCTION}, {"role": "user", "content": f"Text: {text}"}]
        return [{"role": "system", "content": INSTRUCTION},
                {"role": "user", "content": f"Question: {question}\nAnswer: {text}"}]

    def phrases(self, question: str | None, text: str) -> list[str]:
        """The phrases the model marks in ``text``, from the cache when it holds the reply."""
        messages = self.messages(question, text)
        prompt = json.dumps({"model": self.model, "messages": messages}, sort_keys=True)
        key = hashlib.sha256(prompt.encode()).hexdigest()
        cached = Path(self.cache_dir) / f"{key}.json"
        if cached.is_file():
            try:
                return json.loads(cached.read_text())["phrases"]
            except (ValueError, KeyError, OSError):  # bad JSON or bytes, no phrases, unreadable
                log.warning("llm annotator: ignoring the unreadable cache file %s", cached)
        phrases = parse_reply(self._chat(messages))  # _chat redacts the content
        write_json(cached, {"model": self.model, "phrases": phrases})
        return phrases

    def _chat(self, messages: list[dict]) -> str:
        url = self.base_url.rstrip("/") + "/chat/completions"
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        elif self._basic:
            headers["Authorization"] = f"Basic {self._basic}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with _OPENER.open(request, timeout=self.timeout) as response:
                    text = self._redact(response.read().decode("utf-8", "replace"))
                break
            except urllib.error.HTTPError as e:
                detail = self._redact(_body(e), 300)
                if 300 <= e.code < 400:
                    raise PaluError(f"llm annotator: {url} redirects (HTTP {e.code}); palu follows no redirect, so "
                                    "the key never reaches another host: set base_url to the final address.") from None
                if (e.code != 429 and e.code < 500) or last:
                    raise PaluError(f"llm annotator: {url} answered HTTP {e.code}: {detail}") from None
                wait = _retry_after(e.headers.get("Retry-After"), self.backoff * 2**attempt)
                log.warning("llm annotator: HTTP %d, retrying in %.1f s", e.code, wait)
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, broken replies
                reason = self._redact(str(e) or type(e).__name__, 200)
                if last:
                    raise PaluError(f"llm annotator: cannot reach {url} ({reason}); "
                                    "check base_url and that the server runs.") from None
                wait = self.backoff * 2**attempt
                log.warning("llm annotator: %s, retrying in %.1f s", reason, wait)
            time.sleep(wait)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MalformedReply(f"the response is not JSON ({e.msg}): {text[:80]!r}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise MalformedReply(f"no choices[0].message.content in the response: {text[:80]!r}") from None
        if not isinstance(content, str):
            raise MalformedReply(f"choices[0].message.content is not text: {text[:80]!r}")
        return self._redact(content)  # again: the JSON may have escaped a secret that the raw text hid

    def _place(self, answer: str, phrases: list[str], name: str, report: AnnotationReport) -> list[Span]:
        taken: list[Span] = []
        for phrase in phrases:
            spans = [s for s in occurrences(answer, phrase) if not overlaps(s, taken)] if self.all_occurrences else []
            free = None if spans else first_free(answer, phrase, taken)
            spans = spans or ([free] if free else [])
            if not spans:
                reason = "already covered by another span" if occurrences(answer, phrase, True) else "not in the answer"
                report.changes.append(Change(name, "dropped", phrase, None, None, reason))
            for span in spans:
                if not overlaps(span, taken):
                    taken.append(span)
        return taken


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib re-sends the Authorization header to wherever a redirect points; refuse them instead."""

    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def chunks(text: str, size: int) -> list[tuple[int, int]]:
    """[start, end) pieces of ``text`` of at most ``size`` characters, cut after the last sentence end when it lies
    in the second half of a piece, else after the last whitespace (mid-word only for a longer word)."""
    out, start = [], 0
    while len(text) - start > size:
        piece = text[start : start + size]
        cut = max((m.end() for m in SENTENCE_END.finditer(piece)), default=0)
        if cut <= size // 2:
            cut = max(cut, max((m.end() for m in re.finditer(r"\s+", piece)), default=0)) or size
        out.append((start, start + cut))
        start += cut
    return out + [(start, len(text))]


def parse_reply(content: str) -> list[str]:
    """The phrases of a reply: a JSON list of strings, possibly inside a ``` code fence."""
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").strip()
        text = text[4:] if text.lower().startswith("json") else text
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise MalformedReply(f"not JSON: {content[:80]!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedReply(f"not a list of strings: {content[:80]!r}")
    return [v.strip() for v in value if v.strip()]


def _body(error: urllib.error.HTTPError) -> str:
    """The text of an HTTP error reply, or "" when the connection breaks while it is read."""
    try:
        return error.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""


def _retry_after(header: str | None, default: float) -> float:
    try:
        return min(float(header), 60.0) if header else default
    except ValueError:
        return default
