"""`palu annotate annotator=llm` against a real local HTTP server that misbehaves in many ways.

Whatever the server answers, the API key (or a password in base_url) must show up nowhere, not even
in part: not in stdout, stderr, the log, the cache or the output. A run in which no item could be
annotated must fail; a partly failed run writes its output and reports the failures.
"""

from __future__ import annotations

import base64
import json
import logging
import socket

import pytest
from conftest import completion

from palu.cli import main

KEY = "sk-SECRETKEY123456"
PASSWORD = "pa55-w0rd-XYZ"
BASIC = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
PADS = (0, 10, 20, 30, 40)  # with a 41-character echo, any cut of the text splits some key for one of these


@pytest.fixture
def serve(chat_endpoint):
    """``serve(reply)`` starts a server on a free port; returns its /v1 URL and the list of its requests.

    Each POST is answered by ``reply(n, authorization, answer)``: n counts the requests, answer is the one asked about.
    """

    def start(reply):
        answer = lambda request: request["body"]["messages"][-1]["content"].split("\nAnswer: ", 1)[1]
        return chat_endpoint(lambda request: reply(request["n"], request["auth"], answer(request)))

    return start


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, caplog):
    for name in ("PALU_LLM_BASE_URL", "PALU_LLM_MODEL", "PALU_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.INFO, logger="palu")


def chat(content: str) -> tuple[int, str, dict]:
    return 200, completion(content), {}


def good(answer: str) -> tuple[int, str, dict]:
    """A usable reply: the answer's first word, as a JSON list."""
    return chat(json.dumps([answer.split()[0]]))


def echo(auth: str, pad: int) -> str:
    """Text that repeats the request's Authorization header, so that truncation anywhere cuts a copy."""
    return "x" * pad + f"Authorization: {auth} " * 20


def annotate(tmp_path, url: str, key: str = KEY, *extra: str) -> int:
    return main(["annotate", "annotator=llm", f"options.base_url={url}", "options.model=m",
                 f"options.api_key={key}", f"options.cache_dir={tmp_path / 'cache'}", "options.retries=1",
                 "options.backoff=0", "options.timeout=5", "input.path=synthetic", "input.split=forget",
                 "input.limit=3", f"output={tmp_path / 'out.jsonl'}", "--threads", "1", "--quiet", *extra])


def shown(tmp_path, capsys, caplog) -> tuple[str, str]:
    """stderr, and everything palu showed or wrote (stdout, stderr, log, every file under ``tmp_path``)."""
    out, err = capsys.readouterr()
    files = [p.read_text(errors="replace") for p in sorted(tmp_path.rglob("*")) if p.is_file()]
    return err, "\n".join([out, err, caplog.text, *files])


def assert_hidden(text: str, *secrets: str) -> None:
    """No piece of 8 characters or more of any secret is in ``text``."""
    for secret in secrets:
        pieces = [secret[i : i + 8] for i in range(len(secret) - 7)]
        assert not [p for p in pieces if p in text], f"a piece of {secret!r} was shown"


def assert_failed(code: int, err: str, tmp_path) -> None:
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("palu annotate: error: ")
    assert not (tmp_path / "out.jsonl").exists()


# --- every reply unusable: the command fails, no output, no key ---------------------------------


@pytest.mark.parametrize("pad", PADS)
def test_html_reply_echoing_the_key_fails_without_showing_it(serve, tmp_path, capsys, caplog, pad):
    url, requests = serve(lambda n, auth, answer: (200, f"<html><body>{echo(auth, pad)}</body></html>",
                                                   {"Content-Type": "text/html"}))
    code = annotate(tmp_path, url)
    err, text = shown(tmp_path, capsys, caplog)
    assert_failed(code, err, tmp_path)
    assert "no item annotated" in err and "all 3 items failed" in err and "not JSON" in err
    assert len(requests) == 3 and requests[0]["auth"] == f"Bearer {KEY}"  # malformed replies are not retried
    assert_hidden(text, KEY)


@pytest.mark.parametrize("pad", PADS)
def test_content_that_is_not_a_list_and_echoes_the_key(serve, tmp_path, capsys, caplog, pad):
    url, _ = serve(lambda n, auth, answer: chat(json.dumps({"phrases": echo(auth, pad)})))
    code = annotate(tmp_path, url)
    err, text = shown(tmp_path, capsys, caplog)
    assert_failed(code, err, tmp_path)
    assert "no item annotated" in err and "not a list of strings" in err
    assert_hidden(text, KEY)


@pytest.mark.parametrize("pad", PADS)
def test_content_that_is_not_json_and_echoes_the_key(serve, tmp_path, capsys, caplog, pad):
    url, _ = serve(lambda n, auth, answer: chat(echo(auth, pad)))
    code = annotate(tmp_path, url)
    err, text = shown(tmp_path, capsys, caplog)
    assert_failed(code, err, tmp_path)
    assert_hidden(text, KEY)


@pytest.mark.parametrize("status", [401, 500])
@pytest.mark.parametrize("pad", PADS)
def test_http_error_bodies_echoing_the_key_are_redacted_before_they_are_cut(serve, tmp_path, capsys, caplog,
                                                                           status, pad):
    url, requests = serve(lambda n, auth, answer: (status, json.dumps({"error": echo(auth, pad)}), {}))
    code = annotate(tmp_path, url)
    err, text = shown(tmp_path, capsys, caplog)
    assert_failed(code, err, tmp_path)
    assert f"HTTP {status}" in err and "***" in err
    assert len(requests) == (1 if status == 401 else 2)  # 5xx is retried (retries=1), 401 is not
    assert_hidden(text, KEY)


def test_a_list_that_echoes_the_key_is_cached_redacted(serve, tmp_path, capsys, caplog):
    url, _ = serve(lambda n, auth, answer: chat(json.dumps([auth, answer.split()[0]])))
    assert annotate(tmp_path, url) == 0
    err, text = shown(tmp_path, capsys, caplog)
    assert (tmp_path / "out.jsonl").exists() and "Traceback" not in err
    assert_hidden(text, KEY)


# --- partial failure, success, cache, retries ----------------------------------------------------


def test_some_unusable_replies_are_reported_and_the_rest_written(serve, tmp_path, capsys, caplog):
    url, _ = serve(lambda n, auth, answer: good(answer) if n % 2 == 0 else (200, f"<html>{auth}</html>", {}))
    assert annotate(tmp_path, url) == 0
    err, text = shown(tmp_path, capsys, caplog)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [[w["word"] for w in r["target_words"]] == [r["answer"].split()[0]] for r in rows] == [True, False, True]
    assert "errors (1):" in text and "item 1]: malformed reply" in text and "Traceback" not in err
    assert_hidden(text, KEY)


def test_good_replies_are_written_and_a_second_run_uses_the_cache(serve, tmp_path, capsys, caplog):
    url, requests = serve(lambda n, auth, answer: good(answer))
    assert annotate(tmp_path, url) == 0
    first = (tmp_path / "out.jsonl").read_text()
    rows = [json.loads(line) for line in first.splitlines()]
    assert len(rows) == 3 and all(r["target_words"][0]["word"] == r["answer"].split()[0] for r in rows)
    assert all(r["path"] == "/v1/chat/completions" and r["auth"] == f"Bearer {KEY}" for r in requests)
    assert annotate(tmp_path, url, KEY, "--overwrite") == 0
    assert len(requests) == 3 and (tmp_path / "out.jsonl").read_text() == first
    _, text = shown(tmp_path, capsys, caplog)
    assert_hidden(text, KEY)


def test_a_rate_limit_is_retried(serve, tmp_path, capsys, caplog):
    url, requests = serve(lambda n, auth, answer: (429, "{}", {"Retry-After": "0"}) if n == 0 else good(answer))
    assert annotate(tmp_path, url) == 0
    _, text = shown(tmp_path, capsys, caplog)
    assert len(requests) == 4 and "HTTP 429, retrying" in caplog.text and "errors (" not in text


# --- no server, credentials in base_url ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_one_line(tmp_path, capsys, caplog):
    port = free_port()
    code = annotate(tmp_path, f"http://127.0.0.1:{port}/v1")
    err, text = shown(tmp_path, capsys, caplog)
    assert_failed(code, err, tmp_path)
    assert f"cannot reach http://127.0.0.1:{port}/v1/chat/completions" in err
    assert_hidden(text, KEY)


@pytest.mark.parametrize("key", [KEY, ""])
def test_a_password_in_base_url_is_never_shown(serve, tmp_path, capsys, caplog, key):
    url, requests = serve(lambda n, auth, answer: (200, f"<html>{echo(auth, 0)}</html>", {}))
    code = annotate(tmp_path, url.replace("http://", f"http://alice:{PASSWORD}@"), key)
    err, text = shown(tmp_path, capsys, caplog)
    assert_failed(code, err, tmp_path)
    assert requests[0]["auth"] == (f"Bearer {KEY}" if key else f"Basic {BASIC}")  # the URL's credentials as Basic auth
    assert_hidden(text, KEY, PASSWORD, BASIC)


def test_a_password_in_an_unreachable_base_url_is_never_shown(tmp_path, capsys, caplog):
    for url in (f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}/v1", f"ftp://alice:{PASSWORD}@host/v1",
                f"http://alice:{PASSWORD}@host:port/v1"):
        code = annotate(tmp_path, url)
        err, text = shown(tmp_path, capsys, caplog)
        assert_failed(code, err, tmp_path)
        assert "base_url" in err and "alice" not in err
        assert_hidden(text, KEY, PASSWORD)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_so_the_key_stays_home(serve, tmp_path, capsys, caplog, status):
    elsewhere, stolen = serve(lambda n, auth, answer: good(answer))
    url, _ = serve(lambda n, auth, answer: (status, "", {"Location": f"{elsewhere}/chat/completions"}))
    code = annotate(tmp_path, url)
    err, text = shown(tmp_path, capsys, caplog)
    assert_failed(code, err, tmp_path)
    assert f"redirects (HTTP {status})" in err and stolen == []
    assert_hidden(text, KEY)
