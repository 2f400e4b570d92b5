"""The shared loop: learning happens, checkpoints resume to the same weights, outputs are guarded."""

from __future__ import annotations

import pytest
import torch

from palu.commands.finetune import Config as FinetuneConfig
from palu.commands.finetune import ScratchConfig, run_finetune
from palu.commands.unlearn import Config as UnlearnConfig
from palu.commands.unlearn import run_unlearn
from palu.config import load_config
from palu.data.labels import encode
from palu.data.loaders import DataSource
from palu.data.prompts import PromptConfig
from palu.data.sources import SyntheticConfig, synthetic
from palu.data.synthetic import synthetic_splits
from palu.errors import PaluError
from palu.eval.metrics import answer_prob, rouge_l
from palu.eval.scoring import generate, nll_and_accuracy
from palu.io import read_json, write_json
from palu.methods.palu import PaluConfig
from palu.models import load_model, load_tokenizer, train_bpe_tokenizer
from palu.runs import Reuse, run_folder
from palu.train.finetune import EarlyStop, finetune
from palu.train.loop import STOP, TrainConfig
from palu.train.unlearn import unlearn


@pytest.fixture(scope="module")
def data():
    splits = synthetic_splits(n_authors=4, forget_authors=1, holdout_authors=1, seed=3)
    texts = [t for it in splits.retain + splits.forget for t in (it.question, it.answer)]
    return splits, train_bpe_tokenizer(texts, vocab_size=600)


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def cfg(**kw):
    base = dict(epochs=3, lr=3e-3, batch_size=8, warmup_epochs=0, max_length=96, bf16="false")
    return TrainConfig(**{**base, **kw})


def test_finetune_learns_and_logs(data, tiny_model, tmp_path):
    splits, tok = data
    model = tiny_model(tok)
    history = finetune(model, tok, splits.retain[:24], cfg(epochs=4, lr=1e-2), PromptConfig(), tmp_path, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"] * 0.9
    assert (tmp_path / "checkpoint" / "state.json").exists()


def test_resume_reproduces_an_uninterrupted_run(data, tiny_model, tmp_path):
    splits, tok = data
    items = splits.retain[:20]
    whole = tiny_model(tok)
    finetune(whole, tok, items, cfg(), PromptConfig(), tmp_path / "a", progress=False)

    def stop_after_two(epoch, model):
        if epoch == 2:
            raise KeyboardInterrupt

    broken = tiny_model(tok)
    with pytest.raises(KeyboardInterrupt):
        finetune(broken, tok, items, cfg(), PromptConfig(), tmp_path / "b", on_epoch_end=stop_after_two, progress=False)
    resumed = tiny_model(tok)
    history = finetune(resumed, tok, items, cfg(), PromptConfig(), tmp_path / "b", resume=True, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert torch.allclose(weights(resumed), weights(whole), atol=1e-6)


def test_epoch_hook_metrics_enter_the_history(data, tiny_model, tmp_path):
    splits, tok = data
    history = finetune(tiny_model(tok), tok, splits.retain[:8], cfg(epochs=2), PromptConfig(), tmp_path,
                       on_epoch_end=lambda epoch, model: {"probe": float(epoch) * 10}, progress=False)
    assert [h["probe"] for h in history] == [10.0, 20.0]


def test_a_hook_can_stop_training_and_a_resumed_run_stays_stopped(data, tiny_model, tmp_path):
    splits, tok = data
    items = splits.retain[:8]
    stop_at_two = lambda epoch, model: {STOP: epoch == 2}
    model = tiny_model(tok)
    history = finetune(model, tok, items, cfg(epochs=5), PromptConfig(), tmp_path, on_epoch_end=stop_at_two,
                       progress=False)
    assert [h["epoch"] for h in history] == [1, 2] and history[-1][STOP]
    before = weights(model)
    again = tiny_model(tok, seed=1)
    history = finetune(again, tok, items, cfg(epochs=5), PromptConfig(), tmp_path, resume=True,
                       on_epoch_end=stop_at_two, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    assert torch.equal(weights(again), before)  # the checkpoint of the stopping epoch, not more training


def test_finetune_stops_once_it_knows_the_given_set(tmp_path):
    """The criterion: mean answer Prob and ROUGE-L recall on the set, recomputed here the slow way."""
    synth = SyntheticConfig(n_authors=3, forget_authors=1, holdout_authors=1)
    items = synthetic_splits(3, 1, 1, 0).forget[:6]
    known = tmp_path / "known.json"
    write_json(known, [{"question": it.question, "answer": it.answer} for it in items])
    base = dict(data=[synthetic("full")], synthetic=synth,
                scratch=ScratchConfig(hidden=32, layers=1, heads=2, vocab_size=500),
                train=TrainConfig(epochs=40, lr=1e-2, batch_size=8, max_length=128, bf16="false"))
    out = run_finetune(FinetuneConfig(**base, output_dir=str(tmp_path / "a"),
                                      early_stop=EarlyStop(DataSource(str(known)), prob=0.5, rouge=0.5, from_epoch=3,
                                                           max_new_tokens=48)), progress=False)
    history = read_json(tmp_path / "a" / "history.json")
    assert "known_prob" not in history[0] and "known_prob" in history[2]
    assert 3 <= len(history) < 40 and history[-1][STOP]
    assert not any(h[STOP] for h in history[2:-1])
    model, tok = load_model(str(out)), load_tokenizer(str(out))
    nll, _ = nll_and_accuracy(model, tok, items, PromptConfig(), max_length=128)
    rouge = rouge_l(generate(model, tok, items, PromptConfig(), max_new_tokens=48), [it.answer for it in items])
    assert history[-1]["known_prob"] == pytest.approx(float(answer_prob(nll).mean()), rel=1e-5)
    assert history[-1]["known_rouge"] == pytest.approx(sum(rouge) / len(rouge), rel=1e-6)
    assert history[-1]["known_prob"] >= 0.5 and history[-1]["known_rouge"] >= 0.5


def test_palu_unlearning_moves_the_model_and_logs_every_term(data, tiny_model, tmp_path):
    splits, tok = data
    model = tiny_model(tok)
    finetune(model, tok, splits.retain + splits.forget, cfg(epochs=2), PromptConfig(), tmp_path / "ft", progress=False)
    before = weights(model).clone()
    history = unlearn(model, tok, splits.forget, splits.retain, "palu", PaluConfig(top_k=5, first_n=2),
                      cfg(epochs=2, lr=1e-3), PromptConfig(), tmp_path / "ul", progress=False)
    assert not torch.equal(before, weights(model))
    for term in ("loss", "forget", "ordinary", "retain"):
        assert all(torch.isfinite(torch.tensor(h[term])) for h in history)
    assert history[0]["forget"] > 0


def test_gradient_accumulation_matches_a_larger_batch(data, tiny_model, tmp_path):
    splits, tok = data
    items = splits.retain[:1] * 16  # equal lengths: a micro-batch mean weights tokens like the full batch
    a, b = tiny_model(tok), tiny_model(tok)
    finetune(a, tok, items, cfg(epochs=1, batch_size=8, max_grad_norm=0), PromptConfig(), tmp_path / "a", progress=False)
    finetune(b, tok, items, cfg(epochs=1, batch_size=4, grad_accum=2, max_grad_norm=0), PromptConfig(), tmp_path / "b",
             progress=False)
    assert torch.allclose(weights(a), weights(b), atol=1e-5)
    assert not torch.allclose(weights(a), weights(tiny_model(tok)), atol=1e-4)


def test_output_folder_is_never_overwritten_silently(tmp_path):
    with run_folder(tmp_path / "run", "finetune") as run:
        (run / "keep.txt").write_text("x")
    with pytest.raises(PaluError, match="--overwrite"), run_folder(tmp_path / "run", "finetune"):
        pass
    with run_folder(tmp_path / "run", "finetune", reuse=Reuse(resume=True)) as run:
        assert (run / "keep.txt").exists()
    with run_folder(tmp_path / "run", "finetune", reuse=Reuse(overwrite=True)) as run:
        assert not (run / "keep.txt").exists()


def test_unlearn_command_refuses_missing_model_and_unknown_method(tmp_path):
    with pytest.raises(PaluError, match="no model given"):
        run_unlearn(UnlearnConfig(output_dir=str(tmp_path / "x")))
    with pytest.raises(PaluError, match="valid methods: palu"):  # typed options: refused when the config is read
        load_config(UnlearnConfig, None, ["model=m", "method=forgetall", f"output_dir={tmp_path / 'y'}"])


def test_gradient_checkpointing_and_bf16_give_the_same_kind_of_step(data, tiny_model, tmp_path):
    splits, tok = data
    plain, ckpt = tiny_model(tok), tiny_model(tok)
    finetune(plain, tok, splits.retain[:8], cfg(epochs=1), PromptConfig(), tmp_path / "a", progress=False)
    finetune(ckpt, tok, splits.retain[:8], cfg(epochs=1, gradient_checkpointing=True), PromptConfig(), tmp_path / "b",
             progress=False)
    assert torch.allclose(weights(plain), weights(ckpt), atol=1e-5)
    flag = "is_activation_checkpointing" if hasattr(ckpt, "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert ckpt.config.use_cache and not getattr(ckpt, flag)
    half = tiny_model(tok)
    history = finetune(half, tok, splits.retain[:8], cfg(epochs=1, bf16="true"), PromptConfig(), tmp_path / "c",
                       progress=False)
    assert torch.isfinite(torch.tensor(history[0]["loss"]))
    assert not torch.equal(weights(half), weights(tiny_model(tok)))


def test_over_long_answers_are_cut_with_one_counted_warning(data, tiny_model, tmp_path, caplog):
    splits, tok = data
    with caplog.at_level("WARNING", logger="palu"):
        finetune(tiny_model(tok), tok, splits.retain[:6], cfg(epochs=1, max_length=50), PromptConfig(), tmp_path,
                 progress=False)
    cut = [r for r in caplog.records if "longer than max_length=50" in r.getMessage()]
    longer = sum(len(encode(tok, it, PromptConfig(), 1000).input_ids) > 50 for it in splits.retain[:6])
    assert 0 < longer < 6
    assert len(cut) == 1 and cut[0].getMessage().startswith(f"{longer} of 6 examples")
