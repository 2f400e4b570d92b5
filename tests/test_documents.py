"""Documents as forget and retain sets: loading (.txt, folders, JSON Lines, CSV), windows that keep
character spans on their tokens, annotation, every method through the same loop, and bad documents."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error

from palu.cli import main
from palu.data.labels import IGNORE_INDEX, SENSITIVE, encode_document, token_spans
from palu.data.loaders import DataSource, load_qa
from palu.data.prompts import PromptConfig, answer_ids_and_offsets
from palu.data.qa import QAItem, Span
from palu.errors import PaluError
from palu.methods import METHODS
from palu.train.loop import TrainConfig
from palu.train.unlearn import unlearn

FORGET = ["Hina Ameen was born in Karachi. Her most-loved book is Granite Glossary, published in 2005.",
          "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait. His father is a Real Estate Agent."]
RETAIN = ["The author's name is Hina Ameen.", "Hina Ameen primarily contributes to the geology genre."]


def corpus(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_documents_load_from_every_kind_of_file(tmp_path):
    jsonl = corpus(tmp_path / "docs.jsonl", FORGET)
    items = load_qa(DataSource(path=str(jsonl), kind="text"))
    assert [it.answer for it in items] == FORGET and all(it.is_document for it in items)
    assert items[1].source == f"{jsonl}:2"
    (tmp_path / "one.txt").write_text(FORGET[0])
    assert load_qa(DataSource(path=str(tmp_path / "one.txt"), kind="text"))[0].answer == FORGET[0]
    (tmp_path / "many.txt").write_text(f"{FORGET[0]}\n---\n{FORGET[1]}\n---\n")
    many = load_qa(DataSource(path=str(tmp_path / "many.txt"), kind="text", separator="---"))
    assert [it.answer.strip() for it in many] == FORGET and many[1].source.endswith("many.txt:document 2")
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, text in enumerate(FORGET):
        (folder / f"{i}.txt").write_text(text)
    assert [it.answer for it in load_qa(DataSource(path=str(folder), kind="text"))] == FORGET
    (tmp_path / "docs.csv").write_text("body\n" + "".join(f'"{t}"\n' for t in FORGET))
    assert load_qa(DataSource(path=str(tmp_path / "docs.csv"), kind="text", text_field="body"))[1].answer == FORGET[1]


def test_document_spans_are_read_and_checked(tmp_path):
    text = FORGET[0]
    start = text.index("Karachi")
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps({"text": text, "target_words": [{"word": "Karachi", "start": start, "end": start + 7}]}))
    assert load_qa(DataSource(path=str(path), kind="text"))[0].spans == [Span(start, start + 7)]
    path.write_text(json.dumps({"text": text, "spans": [{"start": 3, "end": 999}]}))
    with pytest.raises(PaluError, match=rf"{path}:1: span \[3, 999\) lies outside its document"):
        load_qa(DataSource(path=str(path), kind="text"))


@pytest.mark.parametrize("content,words", [
    (b'{"text": "fine"}\n{"text": "   "}\n', ":2: the document is empty"),
    (b'{"text": "fine"}\n{"body": "no text field"}\n', ":2: no 'text' field (the row has: body); set text_field"),
    (b'{"text": "caf\xe9"}\n', ":1: not UTF-8 text"),
    (b'{"text": 12}\n', ":1: 'text' should be text"),
    (b'["not", "objects"]\n', ":1: expected an object with a 'text' field"),
])
def test_bad_documents_name_the_file_and_document(content, words, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(content)
    with pytest.raises(PaluError) as caught:
        load_qa(DataSource(path=str(path), kind="text"))
    assert f"{path}{words}" in str(caught.value), str(caught.value)


def test_a_txt_file_needs_kind_text(tmp_path):
    (tmp_path / "doc.txt").write_text("some text")
    with pytest.raises(PaluError, match="kind: text"):
        load_qa(DataSource(path=str(tmp_path / "doc.txt")))


@pytest.mark.parametrize("max_length", [8, 13, 64])
def test_windows_cover_the_document_and_keep_its_spans(bpe_tokenizer, max_length):
    text = FORGET[0] + " " + FORGET[1]
    spans = [Span(text.index("Karachi"), text.index("Karachi") + 7), Span(text.index("Granite"), text.index("2005") + 4)]
    item = QAItem(None, text, spans=spans)
    windows = encode_document(bpe_tokenizer, item, max_length)
    ids, offsets = answer_ids_and_offsets(bpe_tokenizer, text)
    head = bpe_tokenizer("", add_special_tokens=True)["input_ids"]
    assert all(len(w.input_ids) <= max_length and w.input_ids[:len(head)] == head for w in windows)
    assert all(w.labels[:len(head)] == [IGNORE_INDEX] * len(head) for w in windows)  # no prompt: only the prefix
    assert [t for w in windows for t in w.labels[len(head):]] == ids + [bpe_tokenizer.eos_token_id]
    marked = [c == SENSITIVE for w in windows for c in w.token_class[len(head):]]
    assert marked == [k >= 0 for k in token_spans(offsets, spans)] + [False]  # the same tokens in any window
    assert len(windows) == -(-(len(ids) + 1) // (max_length - len(head)))


def _train(method: str, options: dict, bpe_tokenizer, tiny_model, tmp_path):
    forget = [QAItem(None, t, spans=[Span(t.index("born"), t.index("born") + 4)]) for t in FORGET]
    retain = [QAItem(None, t) for t in RETAIN]
    model = tiny_model(bpe_tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    history = unlearn(model, bpe_tokenizer, forget, retain, method, METHODS[method].config(**options),
                      TrainConfig(epochs=1, lr=1e-3, batch_size=2, warmup_epochs=0, max_length=16, bf16="false"),
                      PromptConfig(), tmp_path, progress=False)
    return model, before, history


@pytest.mark.parametrize("method", [m for m in METHODS.names() if m != "idkdpo"])
def test_every_method_trains_on_documents(method, bpe_tokenizer, tiny_model, tmp_path):
    options = {"layer": 0} if method == "rmu" else {}
    model, before, history = _train(method, options, bpe_tokenizer, tiny_model, tmp_path)
    assert torch.isfinite(torch.tensor(history[-1]["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), method


def test_idkdpo_says_documents_have_no_question(bpe_tokenizer, tiny_model, tmp_path):
    with pytest.raises(PaluError, match="idkdpo pairs each forget answer .* documents have no question"):
        _train("idkdpo", {}, bpe_tokenizer, tiny_model, tmp_path)


def test_a_corpus_unlearned_from_the_command_line_with_npo_then_palu_on_rule_spans(saved_model, tmp_path, capsys):
    docs, retain = corpus(tmp_path / "docs.jsonl", FORGET), corpus(tmp_path / "retain.jsonl", RETAIN)
    common = [f"model={saved_model}", f"retain.path={retain}", "retain.kind=text", "forget.kind=text",
              "train.epochs=1", "train.batch_size=2", "train.max_length=32", "--quiet", "--threads=1"]
    assert main(["unlearn", f"forget.path={docs}", "method=npo", f"output_dir={tmp_path / 'npo'}", *common]) == 0
    assert (tmp_path / "npo" / "DONE").exists()
    spans = tmp_path / "spans.jsonl"
    assert main(["annotate", "annotator=rules", f"input.path={docs}", "input.kind=text", f"output={spans}"]) == 0
    rows = [json.loads(line) for line in spans.read_text().splitlines()]
    assert [r["text"] for r in rows] == FORGET and "Karachi" in [w["word"] for w in rows[0]["target_words"]]
    assert main(["unlearn", f"forget.path={spans}", "method=palu", "method.first_n=2",
                 f"output_dir={tmp_path / 'palu'}", *common]) == 0
    history = json.loads((tmp_path / "palu" / "history.json").read_text())
    assert history[-1]["forget"] != 0  # the rule spans reached PALU's forget term


def readme_command(prefix: str) -> list[str]:
    """The README's shell command that starts with ``prefix``, its continuation lines joined, as arguments."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index(prefix)
    lines = []
    for line in readme[start:].splitlines():
        lines.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    return shlex.split(" ".join(lines))


@pytest.fixture
def muse_hub(monkeypatch):
    """The Hugging Face hub answered locally: every split of MUSE-News holds FORGET's documents, but
    retain1 RETAIN's; the calls are recorded."""
    import datasets

    calls = []

    def hub(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"text": t} for t in (RETAIN if split == "retain1" else FORGET)])

    monkeypatch.setattr(datasets, "load_dataset", hub)
    return calls


def readme_run(prefix: str, local: dict[str, str], *extra: str) -> int:
    """The README's command that starts with ``prefix``, with the options in ``local`` replaced."""
    args = [local.get(a.split("=")[0], a) for a in readme_command(prefix)[1:]]
    return main([*args, *extra, "--quiet", "--threads=1"])


def test_the_readme_muse_hub_command_reads_the_raw_splits(saved_model, tmp_path, muse_hub):
    """The README's MUSE unlearning command, with the hub answered locally: the forget and retain
    documents come from MUSE-News's raw config, by split."""
    local = {"model": f"model={saved_model}", "train.max_length": "train.max_length=32",
             "output_dir": f"output_dir={tmp_path / 'muse-npo'}"}
    assert readme_run("palu unlearn model=muse-bench/MUSE-news_target", local, "train.epochs=1",
                      "train.batch_size=2") == 0
    assert sorted(set(muse_hub)) == [("muse-bench/MUSE-News", "raw", "forget"),
                                     ("muse-bench/MUSE-News", "raw", "retain1")]
    assert (tmp_path / "muse-npo" / "DONE").exists()


def test_the_readme_muse_c6_command_takes_the_four_sustainability_requests_in_turn(saved_model, tmp_path,
                                                                                    muse_hub):
    local = {"unlearn.model": f"unlearn.model={saved_model}", "unlearn.train.max_length": "unlearn.train.max_length=32",
             "muse.retain_reference": f"muse.path={_muse_folder(tmp_path / 'muse')}",
             "output_dir": f"output_dir={tmp_path / 'c6'}"}
    assert readme_run("palu curve property=sustainability", local, "unlearn.train.epochs=1",
                      "unlearn.train.batch_size=2", "muse.max_length=64") == 0
    assert sorted(set(muse_hub)) == [("muse-bench/MUSE-News", "raw", "retain1"),
                                     *(("muse-bench/MUSE-News", "sust", f"forget_{k}") for k in range(1, 5))]
    rows = json.loads((tmp_path / "c6" / "curve.json").read_text())["rows"]
    assert [r["forget_documents"] for r in rows] == [0, 2, 4, 6, 8]  # two documents per request, in turn


def test_the_tofu_suite_refuses_documents(saved_model, tmp_path, capsys):
    docs = corpus(tmp_path / "docs.jsonl", FORGET)
    assert main(["eval", f"model={saved_model}", f"forget.path={docs}", "forget.kind=text",
                 f"output_dir={tmp_path / 'e'}", "--quiet"]) == 2
    one_line_error(capsys, "forget holds documents (kind: text)", "suite=muse")


def test_requests_are_unlearned_in_turn_and_resume_by_request(saved_model, tmp_path, monkeypatch):
    first, second = corpus(tmp_path / "r1.jsonl", FORGET[:1]), corpus(tmp_path / "r2.jsonl", FORGET[1:])
    retain = corpus(tmp_path / "retain.jsonl", RETAIN)
    out = tmp_path / "run"
    args = ["unlearn", f"model={saved_model}", f"retain.path={retain}", "retain.kind=text", "method=npo",
            f"requests=[{{path: {first}, kind: text}}, {{path: {second}, kind: text}}]", f"output_dir={out}",
            "train.epochs=1", "train.batch_size=2", "train.max_length=32", "--quiet", "--threads=1"]
    import palu.commands.unlearn as command

    real, calls = command.unlearn, []

    def killed_in_the_second_request(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(command, "unlearn", killed_in_the_second_request)
    assert main(args) == 130
    assert (out / "request-1" / "DONE").exists() and not (out / "request-2" / "DONE").exists()
    first_model = (out / "request-1" / "model" / "model.safetensors").read_bytes()
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert (out / "request-1" / "model" / "model.safetensors").read_bytes() == first_model  # not redone
    steps = json.loads((out / "requests.json").read_text())
    assert [s["request"] for s in steps] == [1, 2] and steps[1]["model"] == str(out / "request-2" / "model")
    assert f"model: {out / 'request-1' / 'model'}" in (out / "request-2" / "config.yaml").read_text()
    assert (out / "DONE").exists()


def _muse_folder(root):
    """A MUSE-News layout with one or two items per set: enough to score C1-C4."""
    qa = [{"question": "Who was born in Karachi?", "answer": "Hina Ameen"}]
    rows = {("verbmem", "forget"): [{"prompt": "Hina Ameen was born", "gt": " in Karachi."}],
            ("knowmem", "forget_qa"): qa, ("knowmem", "forget_qa_icl"): qa,
            ("knowmem", "retain_qa"): [{"question": "What genre?", "answer": "geology"}], ("knowmem", "retain_qa_icl"): qa,
            ("privleak", "forget"): [{"text": FORGET[0]}], ("privleak", "holdout"): [{"text": RETAIN[0]}]}
    for (folder, split), content in rows.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"{split}.json").write_text(json.dumps(content))
    return root


@pytest.mark.parametrize("prop", ["scalability", "sustainability"])
def test_a_curve_scores_c1_to_c4_after_each_forget_set(prop, saved_model, tmp_path, capsys):
    first, second = corpus(tmp_path / "f1.jsonl", FORGET[:1]), corpus(tmp_path / "f2.jsonl", FORGET)
    retain = corpus(tmp_path / "retain.jsonl", RETAIN)
    muse_dir = _muse_folder(tmp_path / "muse")
    out = tmp_path / "curve"
    args = ["curve", f"property={prop}", f"forgets=[{{path: {first}, kind: text}}, {{path: {second}, kind: text}}]",
            f"unlearn.model={saved_model}", f"unlearn.retain.path={retain}", "unlearn.retain.kind=text",
            "unlearn.method=npo", "unlearn.train.epochs=1", "unlearn.train.batch_size=2", "unlearn.train.max_length=32",
            f"muse.path={muse_dir}", "muse.max_length=64", f"output_dir={out}", "--quiet", "--threads=1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert ("C5 scalability" if prop == "scalability" else "C6 sustainability") in printed
    curve = json.loads((out / "curve.json").read_text())
    assert [r["step"] for r in curve["rows"]] == [0, 1, 2]
    assert [r["forget_documents"] for r in curve["rows"]] == ([0, 1, 2] if prop == "scalability" else [0, 1, 3])
    assert all(0 <= r["C1"] <= 1 and 0 <= r["C4"] <= 1 and r["C3"] is None for r in curve["rows"])  # no retain reference
    evaluated = sorted(p.name for p in out.glob("eval-step-*"))
    assert evaluated == ["eval-step-0", "eval-step-1", "eval-step-2"]
    unlearned = [out / "size-1", out / "size-2"] if prop == "scalability" else \
        [out / "requests" / "request-1", out / "requests" / "request-2"]
    assert all((folder / "DONE").exists() for folder in unlearned)
    assert main([*args, "--resume"]) == 0  # everything finished: nothing is redone
    assert json.loads((out / "curve.json").read_text()) == curve
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    title = "C5 scalability" if prop == "scalability" else "C6 sustainability"
    assert f"{title}: C3 privleak" in page and "forget documents" in page and "<polyline" in page
    assert "forget_verbmem_ROUGE" in page and "retain_knowmem_ROUGE" in page  # C1-C4 per run in the table
