"""Prompt formatting and the prompt/answer tokenisation shared by training and evaluation.

The prompt and the answer are tokenised separately and concatenated (``prompt + answer + EOS``),
so the tokens a model is trained on after the prompt are exactly the tokens it is asked to
generate after the same prompt, and answer offsets never straddle the prompt boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from palu.errors import PaluError

DEFAULT_TEMPLATE = "Question: {question}\nAnswer: "


@dataclass
class PromptConfig:
    """How a question becomes a prompt.

    Attributes:
        chat_template: "auto" uses the tokenizer's chat template when it has one; "never"
            always uses ``template``.
        template: plain template with a ``{question}`` field, for tokenizers without a chat template.
        system_prompt: optional system message for chat templates.
    """

    chat_template: Literal["auto", "never"] = "auto"
    template: str = DEFAULT_TEMPLATE
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if "{question}" not in self.template:
            raise PaluError("prompt.template must contain the field {question}.")


def uses_chat_template(tokenizer, cfg: PromptConfig) -> bool:
    return cfg.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer, question: str, cfg: PromptConfig) -> list[int]:
    """Token ids of the prompt for ``question`` (special tokens such as BOS included)."""
    if uses_chat_template(tokenizer, cfg):
        messages = [{"role": "user", "content": question}]
        if cfg.system_prompt:
            messages.insert(0, {"role": "system", "content": cfg.system_prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(cfg.template.format(question=question), add_special_tokens=True)["input_ids"]


def answer_ids_and_offsets(tokenizer, answer: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Answer token ids and each token's character range in ``answer``.

    Ends are widened to the next token's start (and the last to the end of the answer): some
    tokenizers (Llama-3's among them) report empty or short ranges, and a token then still
    covers its own characters. Byte pieces of one character keep the character's range.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise PaluError("palu needs a fast (Rust) tokenizer for character offsets; load it with use_fast=True.")
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    fixed = []
    for i, (start, end) in enumerate(offsets):
        nxt = offsets[i + 1][0] if i + 1 < len(offsets) else len(answer)
        fixed.append((start, min(max(end, nxt), len(answer))))
    return ids, fixed
