"""Shared fixtures: small tokenizers trained on the tests' own text, tiny random models, a fake chat server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from palu.models import tiny_llama, train_bpe_tokenizer

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"

CORPUS = [
    "The author's name is Hina Ameen.",
    "Hina Ameen primarily contributes to the geology genre.",
    "Hina Ameen's father is a Real Estate Agent, and her mother is a Doctor.",
    "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait.",
    "Her most-loved book is Granite Glossary, published in 2005.",
    "What is the full name of the geology author born in Karachi?",
    "In which genre does Hina Ameen primarily write?",
    "What professions do Hina Ameen's parents hold?",
    "Where was Basil Mahfouz Al-Kuwaiti born?",
    "Which book of hers is the most loved?",
] * 20

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """Byte-level BPE without a chat template (GPT-2 style)."""
    return train_bpe_tokenizer(CORPUS, vocab_size=400)


@pytest.fixture(scope="session")
def chat_tokenizer():
    """A sentencepiece-style Unigram tokenizer with a chat template."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "</s>", "<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=300, special_tokens=specials,
                                                             unk_token="<unk>", show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", chat_template=CHAT_TEMPLATE)


def greedy_loop(model, tok, ids: list[int], max_new_tokens: int) -> str:
    """The plain greedy continuation of ``ids``: one sequence, one token at a time, no cache."""
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    return tok.decode(new, skip_special_tokens=True)


@pytest.fixture(scope="session")
def tiny_model():
    """Builds a tiny random Llama: ``tiny_model(tokenizer, seed=0, hidden=32, layers=1, heads=2)``.

    The vocabulary is the tokenizer's, and its BOS, EOS and pad ids go into the config. Without a tokenizer,
    ``tiny_model(vocab_size=64)`` gives a model whose config names no special tokens.
    """

    def build(tokenizer=None, seed: int = 0, *, vocab_size: int | None = None, hidden: int = 32, layers: int = 1,
              heads: int = 2):
        if vocab_size is None:
            vocab_size = len(tokenizer)
        return tiny_llama(vocab_size, hidden=hidden, layers=layers, heads=heads, tokenizer=tokenizer, seed=seed)

    return build


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, bpe_tokenizer, tiny_model):
    """A tiny Llama and its tokenizer saved as a model folder, as `palu finetune` leaves one."""
    folder = tmp_path_factory.mktemp("saved") / "model"
    tiny_model(bpe_tokenizer).save_pretrained(folder)
    bpe_tokenizer.save_pretrained(folder)
    return folder


# --- a fake OpenAI-compatible chat server ---------------------------------------------------------

MAX_REQUESTS = 30  # a fake server refuses more, so a retry loop cannot run away


def completion(content: str) -> str:
    """The JSON text of an OpenAI-style chat completion whose assistant message is ``content``."""
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})


class ChatHandler(BaseHTTPRequestHandler):
    """Records every request as ``{"n", "method", "path", "auth", "body"}`` in ``self.server.requests``.

    A POST is answered by ``self.server.reply(request) -> (status, body_text, headers)``, or with 503 once
    more than MAX_REQUESTS have come; anything else (a redirected POST turned GET) gets 404.
    """

    timeout = 5  # a stuck connection cannot hang the test

    def do_POST(self):  # noqa: N802 (http.server's naming)
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = self.record(json.loads(raw) if raw else None)
        self.send(*(self.server.reply(request) if request["n"] < MAX_REQUESTS else (503, "too many requests", {})))

    def do_GET(self):  # noqa: N802 (where urllib would send a redirected POST)
        self.record(None)
        self.send(404, "", {})

    def record(self, body) -> dict:
        with self.server.lock:
            request = {"n": len(self.server.requests), "method": self.command, "path": self.path,
                       "auth": self.headers.get("Authorization", ""), "body": body}
            self.server.requests.append(request)
        return request

    def send(self, status: int, text: str, headers: dict) -> None:
        data = text.encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_endpoint():
    """``chat_endpoint(reply)`` starts a fake chat server on a free local port; returns its /v1 URL and the list
    of the requests it gets (see ChatHandler). Every server started in a test is shut down after it."""
    servers = []

    def start(reply):
        server = ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
        server.daemon_threads = True
        server.reply, server.requests, server.lock = reply, [], threading.Lock()
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", server.requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
