"""The built-in synthetic author data: determinism, splits, spans and perturbed answers."""

from __future__ import annotations

import re
import string
import time

import pytest

from palu.data.qa import QAItem, Span
from palu.data.synthetic import (
    _FACTS,
    ITEMS_PER_AUTHOR,
    _render,
    generate_authors,
    synthetic_splits,
)
from palu.errors import PaluError

NAME, BIRTHPLACE, BIRTH_DATE, GENRE, BOOKS, SETTING, PROTAGONIST = 0, 1, 2, 3, 6, 16, 19


@pytest.fixture(scope="module")
def items() -> list[QAItem]:
    return generate_authors(40, seed=0) + generate_authors(40, seed=1)


def _authors(items: list[QAItem]) -> list[list[QAItem]]:
    return [items[i : i + ITEMS_PER_AUTHOR] for i in range(0, len(items), ITEMS_PER_AUTHOR)]


def _has_word(text: str, value: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


def _texts(item: QAItem) -> list[str]:
    return [span.text(item.answer) for span in item.spans]


def test_same_seed_same_data_other_seed_other_data():
    first = [it.to_dict() for it in generate_authors(5, seed=7)]
    assert first == [it.to_dict() for it in generate_authors(5, seed=7)]
    other = generate_authors(5, seed=8)
    assert [it.group for it in other] != [row["group"] for row in first]
    assert sum(it.answer != row["answer"] for it, row in zip(other, first)) > 90


def test_first_authors_do_not_change_when_more_are_asked_for():
    few = [it.to_dict() for it in generate_authors(5, seed=3)]
    more = [it.to_dict() for it in generate_authors(10, seed=3)]
    assert more[: len(few)] == few


def test_twenty_items_per_author_one_name_each(items):
    authors = _authors(items[: 40 * ITEMS_PER_AUTHOR])
    assert len(authors) == 40 and all(len(a) == ITEMS_PER_AUTHOR for a in authors)
    for index, author in enumerate(authors):
        assert {it.group for it in author} == {author[0].group}
        assert [it.source for it in author] == [f"synthetic[author {index}, item {k}]" for k in range(20)]


def test_names_are_unique_within_a_seed():
    # 200 names from ~2000 would collide about ten times if drawn with replacement
    assert len({it.group for it in generate_authors(200, seed=2)}) == 200


def test_splits_are_by_author_in_order():
    splits = synthetic_splits(n_authors=10, forget_authors=2, holdout_authors=3, seed=5)
    assert (len(splits.retain), len(splits.holdout), len(splits.forget)) == (100, 60, 40)
    groups = [it.group for it in generate_authors(10, seed=5)][::ITEMS_PER_AUTHOR]
    assert [it.group for it in splits.retain][::ITEMS_PER_AUTHOR] == groups[:5]
    assert [it.group for it in splits.holdout][::ITEMS_PER_AUTHOR] == groups[5:8]
    assert [it.group for it in splits.forget][::ITEMS_PER_AUTHOR] == groups[8:]
    sets = [{it.group for it in part} for part in (splits.retain, splits.holdout, splits.forget)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_split_edges_and_bad_counts():
    no_forget = synthetic_splits(n_authors=3, forget_authors=0, holdout_authors=1)
    assert (len(no_forget.retain), len(no_forget.holdout), len(no_forget.forget)) == (40, 20, 0)
    for forget, holdout in [(3, 2), (-1, 0), (0, -1)]:
        with pytest.raises(PaluError):
            synthetic_splits(n_authors=4, forget_authors=forget, holdout_authors=holdout)
    with pytest.raises(PaluError):
        generate_authors(-1)
    with pytest.raises(PaluError, match="distinct names"):
        generate_authors(10**6)


def test_render_takes_spans_where_values_are_inserted():
    values = {"name": "Ada", "friend": "Ada", "job": "engineer", "books": ["One", "Two", "Three"]}
    text, spans = _render("{name} met {friend}, {job:a}, author of {books}.", values, ("friend", "job", "books"))
    assert text == 'Ada met Ada, an engineer, author of "One", "Two" and "Three".'
    assert spans[0] == Span(8, 11)  # the second "Ada", not the first one a search would find
    assert [s.text(text) for s in spans] == ["Ada", "engineer", "One", "Two", "Three"]
    assert _render("{name} and {friend}", values)[1] == []


def test_spans_mark_the_fact_values(items):
    for item in items:
        assert item.spans, item.source
        assert all(a.end <= b.start for a, b in zip(item.spans, item.spans[1:])), item.source
        for span in item.spans:
            text = span.text(item.answer)
            assert 0 <= span.start < span.end <= len(item.answer)
            assert text == text.strip(string.whitespace + string.punctuation), item.source
            # the paraphrase states the same facts, every perturbed answer replaces them
            assert _has_word(item.paraphrased_answer, text), (item.source, text)
            assert not any(_has_word(p, text) for p in item.perturbed_answers), (item.source, text)


def test_span_values_agree_across_an_authors_items(items):
    for author in _authors(items):
        asked = author[NAME].question + " " + author[NAME].paraphrased_question
        city, country = _texts(author[BIRTHPLACE])
        assert f"{city}, {country}" in asked
        assert _texts(author[BIRTH_DATE])[0] in asked
        assert _texts(author[GENRE])[0] in author[NAME].question
        books = _texts(author[BOOKS])
        assert 2 <= len(books) <= 3
        assert f'"{books[0]}"' in author[SETTING].question
        assert f'"{books[1]}"' in author[PROTAGONIST].question
        assert len(_texts(author[PROTAGONIST])) == 2


def test_name_is_a_span_only_where_the_question_asks_for_it(items):
    for author in _authors(items):
        name_item = author[NAME]
        assert _texts(name_item) == [name_item.group]
        for item in author[1:]:
            assert item.group in item.answer, item.source
            for match in re.finditer(re.escape(item.group), item.answer):
                assert not any(s.start < match.end() and match.start() < s.end for s in item.spans), item.source


def test_perturbed_answers_are_distinct_and_wrong(items):
    for item in items:
        assert len(item.perturbed_answers) >= 3
        assert len(set(item.perturbed_answers)) == len(item.perturbed_answers), item.source
        assert item.answer not in item.perturbed_answers
        assert item.paraphrased_answer not in item.perturbed_answers


def test_items_are_valid_and_complete(items):
    for item in items:
        assert QAItem.from_dict(item.to_dict()) == item  # re-runs QAItem's validation
        assert item.paraphrased_answer and item.paraphrased_answer != item.answer
        assert item.paraphrased_question and item.paraphrased_question != item.question
        assert "{" not in item.question + item.answer + item.paraphrased_question + item.paraphrased_answer
        for answer in (item.answer, item.paraphrased_answer, *item.perturbed_answers):
            assert 8 <= len(answer.split()) <= 40, answer


def test_every_fact_has_varied_templates_holding_its_slots():
    assert len(_FACTS) == ITEMS_PER_AUTHOR
    for fact in _FACTS:
        assert len(fact.questions) >= 2 and len(fact.answers) >= 3
        for template in fact.answers:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
            assert set(fact.slots) <= fields, template


def test_forty_authors_are_fast():
    start = time.perf_counter()
    synthetic_splits()
    assert time.perf_counter() - start < 1.0
