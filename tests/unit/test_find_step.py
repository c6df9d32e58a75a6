"""find_step: which step a newcomer meant, by id, number or a piece of its title."""

from __future__ import annotations

import pytest

from bot.roadmap import Roadmap, find_step


@pytest.mark.parametrize(
    ("query", "step_id"),
    [
        ("docker", "docker"),
        ("DOCKER", "docker"),
        ("web-frameworks", "web-frameworks"),
        ("2.8", "web-frameworks"),
        ("2.8.", "web-frameworks"),
        ("2.1", "data-structures"),  # not 2.10-2.13
        ("2.13", "advanced-concepts"),
        ("kubernetes", "kubernetes"),
        ("  Web   Frameworks ", "web-frameworks"),  # case and spacing do not matter
        ("bash/term", "bash-terminal"),
        ("solid principles", "solid"),
    ],
)
def test_finds_one_step(roadmap: Roadmap, query: str, step_id: str) -> None:
    found = find_step(roadmap, query)
    assert found.step is not None, found
    assert found.step.id == step_id
    assert found.candidates == ()
    assert not found.ambiguous


def test_fragment_of_several_titles_is_ambiguous(roadmap: Roadmap) -> None:
    found = find_step(roadmap, "testing")
    assert found.step is None
    assert found.ambiguous
    assert [s.number for s in found.candidates] == ["2.9", "7.1", "7.2"]


def test_same_title_twice_is_ambiguous_not_the_first(roadmap: Roadmap) -> None:
    # "Unit Testing" is the title of both 2.9 and 7.1.
    found = find_step(roadmap, "unit testing")
    assert found.step is None
    assert found.ambiguous
    assert {s.id for s in found.candidates} == {"unit-testing", "testing-unit"}


def test_ambiguous_candidates_are_limited(roadmap: Roadmap) -> None:
    found = find_step(roadmap, "python", limit=3)
    assert found.ambiguous
    assert [s.number for s in found.candidates] == ["2.2", "2.4", "2.6"]


@pytest.mark.parametrize(("typo", "meant"), [("dokcer", "docker"), ("kubernets", "kubernetes")])
def test_typo_offers_near_misses(roadmap: Roadmap, typo: str, meant: str) -> None:
    found = find_step(roadmap, typo)
    assert found.step is None
    assert not found.ambiguous
    assert found.candidates
    assert found.candidates[0].id == meant


def test_nonsense_has_no_candidates(roadmap: Roadmap) -> None:
    found = find_step(roadmap, "zzqqxx")
    assert (found.step, found.candidates, found.ambiguous) == (None, (), False)


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query_finds_nothing(roadmap: Roadmap, query: str) -> None:
    found = find_step(roadmap, query)
    assert (found.step, found.candidates, found.ambiguous) == (None, (), False)
