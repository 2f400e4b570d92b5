"""Shared fixtures: small tokenizers trained on the tests' own text, and tiny random models."""

from __future__ import annotations

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
