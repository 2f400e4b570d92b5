"""Models and tokenizers: hub or local checkpoints, or a tiny Llama built from scratch.

The from-scratch path (a byte-level BPE trained on the data plus a small Llama config) is what
lets the whole TOFU protocol run offline on a CPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from palu.errors import PaluError

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def train_bpe_tokenizer(texts, vocab_size: int = 8000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style, no chat template) trained on ``texts``.

    Encoding with special tokens prepends BOS, as Llama tokenizers do.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(SPECIAL_TOKENS.values())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def tiny_llama(vocab_size: int, hidden: int = 256, layers: int = 4, heads: int = 4, max_positions: int = 512,
               tokenizer=None, seed: int = 0, dtype: str = "float32") -> LlamaForCausalLM:
    """A randomly initialised small Llama (about 5M parameters at the defaults and an 8k vocabulary), in ``dtype``."""
    kwargs = {}
    if tokenizer is not None:
        kwargs = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        **kwargs,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(getattr(torch, dtype))  # initialised in float32 whatever the dtype


def require_model(cfg) -> None:
    """Refuse a command config whose ``model`` is empty, before any work starts."""
    if not cfg.model:
        raise PaluError("no model given; set model=PATH_OR_HUB_ID (e.g. a `palu finetune` or `palu unlearn` run's "
                        "model folder).")


_REMOTE_CODE = {"trust": False}


def trust_remote_code(on: bool) -> None:
    """Let transformers run the Python code a model folder or hub repository ships (``--trust-remote-code``).

    Off by default: such code runs with the user's rights, so palu runs it only when asked.
    """
    _REMOTE_CODE["trust"] = bool(on)


def load_tokenizer(name_or_path: str):
    """A fast tokenizer from the hub or a folder, with a pad token set (EOS when it has none)."""
    with _loading("tokenizer", name_or_path):
        tok = AutoTokenizer.from_pretrained(name_or_path, use_fast=True, trust_remote_code=_REMOTE_CODE["trust"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "auto"):
    """A causal LM from the hub or a folder (a LoRA adapter folder too), in ``dtype``
    ("auto", "float32", "bfloat16")."""
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    remote = _REMOTE_CODE["trust"]
    with _loading("model", name_or_path):
        if (Path(name_or_path) / "adapter_config.json").exists():  # a saved LoRA adapter: merge it
            from peft import AutoPeftModelForCausalLM

            return AutoPeftModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype,
                                                            trust_remote_code=remote).merge_and_unload()
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype, trust_remote_code=remote)


def load_model_config(name_or_path: str):
    """A model's config alone, no weights: from a folder, else the local hub cache, else the hub."""
    remote = _REMOTE_CODE["trust"]
    with _loading("model config", name_or_path):
        if Path(name_or_path).exists():
            return AutoConfig.from_pretrained(name_or_path, trust_remote_code=remote)
        try:
            return AutoConfig.from_pretrained(name_or_path, local_files_only=True, trust_remote_code=remote)
        except OSError:  # not cached: ask the hub
            return AutoConfig.from_pretrained(name_or_path, trust_remote_code=remote)


def in_dtype(model, dtype: str):
    """``model`` cast in place to ``dtype`` ("float32", "bfloat16") unless it is already in it: training holds
    the weights in the type its config names, whichever type the caller loaded them in."""
    if model.dtype != getattr(torch, dtype):
        model.to(getattr(torch, dtype))
    return model


def _looks_local(name: str) -> bool:
    """A path no hub id can be: absolute, relative to here or home, or more than one folder deep."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def load_model_and_tokenizer(model: str, tokenizer: str | None = None, dtype: str = "auto"):
    """A model in ``dtype`` (see :func:`load_model`) and its tokenizer (``tokenizer`` when given, else the
    model's own)."""
    return load_model(model, dtype), load_tokenizer(tokenizer or model)


@contextmanager
def _loading(what: str, name_or_path: str):
    """Turn transformers' and safetensors' loading errors into one line naming the folder and the cure."""
    from safetensors import SafetensorError

    local = Path(name_or_path).exists()
    where = f"cannot load the {what} {name_or_path!r}"
    if not local and _looks_local(name_or_path):
        raise PaluError(f"{where}: no such folder; check the path (a hub id is written owner/name).")
    try:
        yield
    except SafetensorError as exc:
        raise PaluError(f"{where}: a weights file is damaged or incomplete ({exc}); copy or save the model again.") \
            from None
    except (OSError, ValueError, KeyError) as exc:
        text = " ".join(str(exc).split())
        if "custom code" in text or "trust_remote_code" in text:
            raise PaluError(f"{where}: it ships its own Python code, which palu runs only when asked; if you trust "
                            "its source, pass --trust-remote-code.") from None
        if isinstance(exc, ValueError) and "model_type" in text:
            text = "no config.json with a model_type: it is not a saved model folder"
        elif "backend tokenizer" in text:
            text = "no tokenizer files (tokenizer.json) there; set tokenizer=PATH to the model's tokenizer"
        hint = "" if local else " (is it a hub id you can reach, or a folder that exists?)"
        raise PaluError(f"{where}{hint}: {text[:400]}") from None
