"""The roadmap file: the real one loads completely, and a broken one is explained line by line."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bot.roadmap import Check, Roadmap, RoadmapError, load_roadmap

# The team's own document, which roadmap.yaml encodes; kept in the repository beside it.
SOURCE_FILE = Path(__file__).resolve().parents[2] / "docs" / "roadmap-source.md"
LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
# Titles roadmap.yaml writes differently from the source, on purpose (typos, plurals, clarity;
# capitals are not compared).
# Any other difference, or a step added, dropped or moved, fails the test below.
EDITED_TITLES = {
    "Basic Data Structure & Algorithm": "Basic Data Structures & Algorithms",
    "Python2 vs Python3": "Python 2 vs Python 3",
    "OOP": "Object-Oriented Programming (OOP)",
    "Python data type": "Python Data Types",
    "SOLID Principe": "SOLID Principles",
    "Python Framework (web)": "Python Web Frameworks",
    "Important Library": "Important Libraries",
    "Python ASGI": "Python WSGI/ASGI Servers",
    "Advanced Concept": "Advanced Concepts",
    "Posgresql": "PostgreSQL",
    "Databse Index": "Database Index",
    "SQL (Query Language) tutorial": "SQL (Query Language)",
    "In Memory caching": "In-Memory Caching",
    "Tools": "Testing Tools",
    "Monolithic": "Monolithic Architecture",
    "Microservice": "Microservices",
    "Patterns": "Microservice Patterns",
    "Design Pattern": "Design Patterns",
    "Communication concept": "Communication Concepts",
    "hash function": "Hash Functions",
    "Http Request": "HTTP Requests",
    "CI / CD": "CI/CD",
    "Communication Protocol": "Communication Protocols",
}
ENGINES = {"10": "Broker Engines", "14": "Monitoring Engines"}  # both are "Engine" in the source


def source_sections() -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """(section title, [(step title, its links)]) as the source document has them."""
    sections: list[tuple[str, list[tuple[str, list[str]]]]] = []
    for line in SOURCE_FILE.read_text(encoding="utf-8").splitlines():
        if re.match(r"##\s", line):
            title = re.sub(r"^\d+\.\s*", "", LINK.sub(r"\1", line[2:]).strip())
            sections.append((title, []))
        elif re.match(r"###\s", line):
            number, _, title = LINK.sub(r"\1", line[3:]).strip().partition(" ")
            title = title.strip()
            if title == "Engine":
                title = ENGINES[number.split(".")[0]]
            sections[-1][1].append((title, []))
        elif sections and sections[-1][1]:
            sections[-1][1][-1][1].extend(re.findall(r"https?://[^) \s]+", line))
    return sections


def problems(exc: pytest.ExceptionInfo[RoadmapError]) -> list[str]:
    return str(exc.value).splitlines()


def has_line(lines: list[str], *fragments: str) -> bool:
    """True if a single line mentions every fragment: file, place and problem together."""
    return any(all(f in line for f in fragments) for line in lines)


def step(data: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for sec in data["sections"] for s in sec["steps"] if s["id"] == step_id)


# --- the real roadmap ----------------------------------------------------------------------


def test_real_roadmap_has_52_steps_in_14_sections(roadmap: Roadmap) -> None:
    assert len(roadmap) == 52
    assert len(roadmap.sections) == 14
    assert roadmap.title == "Python Backend Developer Roadmap"
    assert [s.index for s in roadmap] == list(range(52))


def test_real_roadmap_keeps_every_link_of_the_seed_document(roadmap: Roadmap) -> None:
    seed_urls = set(re.findall(r"https?://[^) \s]+", SOURCE_FILE.read_text(encoding="utf-8")))
    assert len(seed_urls) == 74
    assert seed_urls - roadmap.all_urls() == set()
    assert len(roadmap.all_urls()) == 74


def test_real_roadmap_has_the_sources_sections_and_steps_in_order(roadmap: Roadmap) -> None:
    def as_encoded(title: str) -> str:  # capitals aside, the title roadmap.yaml should have
        return EDITED_TITLES.get(title, title).lower()

    source = source_sections()
    assert [as_encoded(t) for t, _ in source] == [s.title.lower() for s in roadmap.sections]
    for (_, steps), section in zip(source, roadmap.sections, strict=True):
        assert [as_encoded(t) for t, _ in steps] == [s.title.lower() for s in section.steps]


def test_every_link_of_a_source_step_is_a_resource_of_that_step(roadmap: Roadmap) -> None:
    steps = [step for _, section in source_sections() for step in section]
    assert len(steps) == len(roadmap) == 52
    for (title, links), step in zip(steps, roadmap, strict=True):
        assert set(links) <= {r.url for r in step.resources}, title


def test_real_roadmap_step_numbers_and_ids_are_unique(roadmap: Roadmap) -> None:
    numbers = Counter(s.number for s in roadmap)
    ids = Counter(s.id for s in roadmap)
    assert [n for n, c in numbers.items() if c > 1] == []
    assert [i for i, c in ids.items() if c > 1] == []


def test_second_2_9_of_the_seed_became_2_13(roadmap: Roadmap) -> None:
    # The seed numbers both "Unit Testing" and "Advanced Concept" as 2.9.
    by_number = {s.number: s for s in roadmap}
    assert by_number["2.9"].title == "Unit Testing"
    assert by_number["2.13"].title == "Advanced Concepts"
    assert [s.number for s in roadmap.sections[1].steps][-1] == "2.13"


def test_real_roadmap_step_numbers_follow_their_section(roadmap: Roadmap) -> None:
    for section in roadmap.sections:
        for position, s in enumerate(section.steps, 1):
            assert s.number == f"{section.number}.{position}"
            assert s.section_id == section.id


# --- loader errors -------------------------------------------------------------------------


def test_small_valid_roadmap_loads(write_yaml, small_data) -> None:
    loaded = load_roadmap(write_yaml(small_data))
    assert [s.id for s in loaded] == ["a-one", "a-two", "a-three", "b-one", "b-two"]
    assert loaded.steps[0].resources[0].url == "https://example.org/one"


def test_duplicate_step_id_names_file_step_and_problem(write_yaml, small_data) -> None:
    step(small_data, "b-two")["id"] = "a-one"
    path = write_yaml(small_data)
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert has_line(problems(exc), str(path), "step a-one", "duplicate step id")


def test_missing_title_names_the_step(write_yaml, small_data) -> None:
    del step(small_data, "a-two")["title"]
    path = write_yaml(small_data)
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert has_line(problems(exc), str(path), "step a-two", "missing title")


@pytest.mark.parametrize(
    "url", ["ftp://example.org/file", "example.org/no-scheme", "https://", "https://a b.org/"]
)
def test_bad_url_names_the_step_and_resource(write_yaml, small_data, url: str) -> None:
    step(small_data, "a-one")["resources"][0]["url"] = url
    path = write_yaml(small_data)
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert has_line(problems(exc), str(path), "step a-one, resource 1", "bad URL", repr(url))


def test_unknown_key_is_named_with_the_allowed_ones(write_yaml, small_data) -> None:
    step(small_data, "a-three")["titel"] = "typo"
    path = write_yaml(small_data)
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert has_line(problems(exc), str(path), "step a-three", "unknown key 'titel'", "title")


def test_unknown_resource_kind_lists_the_valid_kinds(write_yaml, small_data) -> None:
    step(small_data, "a-one")["resources"][0]["kind"] = "podcast"
    path = write_yaml(small_data)
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert has_line(
        problems(exc), str(path), "step a-one, resource 1", "unknown kind 'podcast'", "video"
    )


@pytest.mark.parametrize("estimate", ["2 days", "soon", "3x"])
def test_bad_estimate_shows_the_expected_form(write_yaml, small_data, estimate: str) -> None:
    step(small_data, "a-one")["estimate"] = estimate
    path = write_yaml(small_data)
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert has_line(problems(exc), str(path), "step a-one", f"estimate {estimate!r}", "2d")


def test_invalid_yaml_names_the_file_and_line(write_yaml) -> None:
    path = write_yaml("title: x\nsections: [\n  - id: broken\n")
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    first = problems(exc)[0]
    assert first.startswith(f"{path}: line ")
    assert "not valid YAML" in first


def test_invalid_yaml_is_reported_on_one_line(write_yaml) -> None:
    path = write_yaml("title: x\nsections: [\n  - id: broken\n")
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert len(problems(exc)) == 1


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(RoadmapError, match="cannot read the roadmap") as exc:
        load_roadmap(path)
    assert str(exc.value).startswith(str(path))


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    # A directory where the file should be: reading fails the same way a permission error does,
    # and unlike chmod 000 it also fails when the tests run as root.
    path = tmp_path / "roadmap.yaml"
    path.mkdir()
    with pytest.raises(RoadmapError, match="cannot read the roadmap") as exc:
        load_roadmap(path)
    assert str(exc.value).startswith(str(path))


def test_empty_file_is_not_a_roadmap(write_yaml) -> None:
    path = write_yaml("")
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert has_line(problems(exc), str(path), "top level", "must be a mapping")


def test_several_problems_are_reported_together(write_yaml, small_data) -> None:
    step(small_data, "b-two")["id"] = "a-one"
    del step(small_data, "a-two")["title"]
    step(small_data, "a-one")["resources"][0]["kind"] = "podcast"
    step(small_data, "a-three")["estimate"] = "soon"
    path = write_yaml(small_data)
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    lines = problems(exc)
    assert len(lines) == 4
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert has_line(lines, "step a-one", "duplicate step id")
    assert has_line(lines, "step a-two", "missing title")
    assert has_line(lines, "step a-one, resource 1", "unknown kind")
    assert has_line(lines, "step a-three", "estimate 'soon'")


def test_duplicate_step_number_is_reported(write_yaml, small_data) -> None:
    step(small_data, "a-two")["number"] = "1.1"
    path = write_yaml(small_data)
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert has_line(problems(exc), str(path), "step a-two", "duplicate step number 1.1")


# --- knowledge checks ----------------------------------------------------------------------


def a_check(**changes: Any) -> dict[str, Any]:
    """A valid check as the file writes it (answer counted from 1), with some keys changed."""
    check: dict[str, Any] = {
        "question": "Which status code means Created?",
        "options": ["200", "201", "204"],
        "answer": 2,
        "explain": "201 Created, usually with a Location header naming the new resource.",
    }
    check.update(changes)
    return check


def test_checks_are_read_with_the_answer_counted_from_0(write_yaml, small_data) -> None:
    step(small_data, "a-one")["checks"] = [a_check(), a_check(question="Second?", answer=3)]
    loaded = load_roadmap(write_yaml(small_data))
    assert loaded.steps[0].checks == (
        Check(
            question="Which status code means Created?",
            options=("200", "201", "204"),
            answer=1,
            explain="201 Created, usually with a Location header naming the new resource.",
        ),
        Check("Second?", ("200", "201", "204"), 2, a_check()["explain"]),
    )
    assert loaded.steps[1].checks == ()


def test_checks_are_optional_and_may_be_empty(write_yaml, small_data) -> None:
    step(small_data, "a-one")["checks"] = []
    loaded = load_roadmap(write_yaml(small_data))
    assert all(s.checks == () for s in loaded)


def test_check_limits_are_inclusive(write_yaml, small_data) -> None:
    five = [f"option {n}" for n in range(1, 5)] + ["x" * 120]
    step(small_data, "a-one")["checks"] = [
        a_check(options=["yes", "no"], answer=1),
        a_check(options=five, answer=5, explain="e" * 200),
    ]
    loaded = load_roadmap(write_yaml(small_data))
    assert [(c.answer, len(c.options)) for c in loaded.steps[0].checks] == [(0, 2), (4, 5)]


@pytest.mark.parametrize(
    ("check", "message"),
    [
        pytest.param("Which?", "must be a mapping with question, options, answer and explain"),
        pytest.param(a_check(hint="x"), "unknown key 'hint' (allowed: answer, explain, options"),
        pytest.param(a_check(question=None), "missing question", id="no-question"),
        pytest.param(a_check(question="  "), "missing question", id="blank-question"),
        pytest.param(a_check(question="Two\nlines?"), "question must be a single line"),
        pytest.param(a_check(explain=None), "missing explain", id="no-explain"),
        pytest.param(a_check(explain="One.\nTwo."), "explain must be a single line"),
        pytest.param(a_check(explain="e" * 201), "explain is 201 characters long (at most 200)"),
        pytest.param(a_check(options=None), "missing options (a list of 2 to 5 choices)"),
        pytest.param(a_check(options="200, 201"), "options must be a list of 2 to 5 choices"),
        pytest.param(a_check(options=["201"], answer=1), "options must have 2 to 5 choices, not 1"),
        pytest.param(a_check(options=list("abcdef")), "options must have 2 to 5 choices, not 6"),
        pytest.param(a_check(options=["200", " ", "204"]), "option 2 is empty"),
        pytest.param(a_check(options=["200", 201, "204"]), "option 2 must be text, not int"),
        pytest.param(a_check(options=["200", True, "204"]), "option 2 must be text, not bool"),
        pytest.param(a_check(options=["200", None, "204"]), "option 2 must be text, not nothing"),
        pytest.param(a_check(options=["200", "2\n01", "204"]), "option 2 must be a single line"),
        pytest.param(
            a_check(options=["200", "x" * 121, "204"]),
            "option 2 is 121 characters long (at most 120)",
        ),
        pytest.param(a_check(options=["OK", "Created", "ok"]), "option 3 repeats option 1: 'ok'"),
        pytest.param(
            a_check(answer=None), "missing answer (the right option's number, from 1 to 3)"
        ),
        pytest.param(a_check(answer=0), "answer 0 must be the right option's number, from 1 to 3"),
        pytest.param(a_check(answer=4), "answer 4 must be the right option's number, from 1 to 3"),
        pytest.param(a_check(answer="2"), "answer '2' must be the right option's number"),
        pytest.param(a_check(answer=2.0), "answer 2.0 must be the right option's number"),
        pytest.param(a_check(answer=True), "answer True must be the right option's number"),
        pytest.param(
            a_check(options=None, answer=-1),
            "answer -1 must be the right option's number, counting",
        ),
    ],
)
def test_a_bad_check_is_named_with_its_problem(
    write_yaml, small_data, check: Any, message: str
) -> None:
    step(small_data, "a-three")["checks"] = [a_check(), check]
    path = write_yaml(small_data)
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert has_line(problems(exc), str(path), "step a-three, check 2: ", message)
    assert not has_line(problems(exc), "check 1")


def test_checks_that_are_not_a_list_are_named(write_yaml, small_data) -> None:
    step(small_data, "a-two")["checks"] = a_check()
    path = write_yaml(small_data)
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert problems(exc) == [f"{path}: step a-two: checks must be a list"]


def test_every_problem_of_a_check_is_reported(write_yaml, small_data) -> None:
    step(small_data, "b-one")["checks"] = [a_check(question=None, options=["a", "a"], answer=3)]
    path = write_yaml(small_data)
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    assert [line.split(": ", 2)[2] for line in problems(exc)] == [
        "missing question",
        "option 2 repeats option 1: 'a'",
        "answer 3 must be the right option's number, from 1 to 2",
    ]


def test_every_step_of_the_real_roadmap_has_two_checks_or_more(roadmap: Roadmap) -> None:
    assert [s.id for s in roadmap if len(s.checks) < 2] == []


def test_real_roadmap_spreads_the_right_answers_over_the_options(roadmap: Roadmap) -> None:
    checks = [c for s in roadmap for c in s.checks]
    positions = Counter(c.answer for c in checks)
    assert max(positions.values()) <= 0.6 * len(checks), positions
    assert {0, 1, 2} <= set(positions), positions


def test_real_roadmap_never_asks_the_same_question_twice(roadmap: Roadmap) -> None:
    questions = Counter(" ".join(c.question.casefold().split()) for s in roadmap for c in s.checks)
    assert [q for q, n in questions.items() if n > 1] == []


def test_real_roadmap_checks_offer_no_catch_all_options(roadmap: Roadmap) -> None:
    catch_all = re.compile(r"\b(all|none) of the (above|these)\b", re.IGNORECASE)
    options = [o for s in roadmap for c in s.checks for o in c.options]
    assert [o for o in options if catch_all.search(o)] == []
