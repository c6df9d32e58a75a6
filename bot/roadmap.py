"""The roadmap model: sections, steps, resources and knowledge checks, loaded from YAML and
validated.

Pure: no Matrix, no database. Progress is keyed on step ids, so titles and order may change freely.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

RESOURCE_KINDS = ("article", "book", "docs", "video", "course", "tool")
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
ESTIMATE = re.compile(r"^\d+(?:\.\d+)?[hdw]$")
STEP_NUMBER = re.compile(r"^\d+\.\d+$")
# Limits that keep a check readable in one chat message.
CHECK_OPTIONS = (2, 5)
OPTION_MAX_CHARS = 120
EXPLAIN_MAX_CHARS = 200


class RoadmapError(ValueError):
    """A roadmap file that cannot be used; the message names the file, the place and the fix."""


@dataclass(frozen=True)
class Resource:
    title: str
    url: str
    kind: str


@dataclass(frozen=True)
class Check:
    """A multiple-choice question on a step. The file counts options from 1, as people do."""

    question: str
    options: tuple[str, ...]
    answer: int  # 0-based index into options
    explain: str  # one line on why the answer is right, shown after answering


@dataclass(frozen=True)
class Step:
    id: str
    number: str
    title: str
    section_id: str
    section_title: str
    index: int  # 0-based position in the whole roadmap
    summary: str = ""
    estimate: str = ""
    topics: tuple[str, ...] = ()
    resources: tuple[Resource, ...] = ()
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class Section:
    id: str
    number: int
    title: str
    steps: tuple[Step, ...]
    resources: tuple[Resource, ...] = ()


@dataclass(frozen=True)
class Roadmap:
    title: str
    sections: tuple[Section, ...]
    intro: str = ""
    resources: tuple[Resource, ...] = ()
    steps: tuple[Step, ...] = field(init=False)
    _by_id: Mapping[str, Step] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps = tuple(step for section in self.sections for step in section.steps)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "_by_id", {step.id: step for step in steps})

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def get(self, step_id: str | None) -> Step | None:
        return self._by_id.get(step_id) if step_id else None

    def section_of(self, step: Step) -> Section:
        return next(s for s in self.sections if s.id == step.section_id)

    def all_urls(self) -> set[str]:
        urls = {r.url for r in self.resources}
        for section in self.sections:
            urls.update(r.url for r in section.resources)
            for step in section.steps:
                urls.update(r.url for r in step.resources)
        return urls


# --- step lookup -------------------------------------------------------------------------


@dataclass(frozen=True)
class Lookup:
    """The answer to "which step did they mean": one step, or the closest candidates."""

    step: Step | None
    candidates: tuple[Step, ...] = ()
    ambiguous: bool = False  # several steps match; otherwise candidates are near misses


def find_step(roadmap: Roadmap, query: str, limit: int = 5) -> Lookup:
    """Finds a step by id, by number ("2.8") or by a case-insensitive title fragment."""
    q = " ".join(query.split()).strip().lower()
    if not q:
        return Lookup(None)
    for step in roadmap:
        if step.id == q or step.number == q.rstrip("."):
            return Lookup(step)
    exact = [s for s in roadmap if s.title.lower() == q]
    if len(exact) == 1:
        return Lookup(exact[0])
    fragment = [s for s in roadmap if q in s.title.lower() or q in s.id]
    if len(fragment) == 1:
        return Lookup(fragment[0])
    if fragment:
        return Lookup(None, tuple(fragment[:limit]), ambiguous=True)
    # Nothing contains it: offer the closest titles and ids, best first.
    names = {s.title.lower(): s for s in roadmap} | {s.id: s for s in roadmap}
    close = difflib.get_close_matches(q, list(names), n=limit * 2, cutoff=0.5)
    seen: list[Step] = []
    for name in close:
        if names[name] not in seen:
            seen.append(names[name])
    return Lookup(None, tuple(seen[:limit]))


# --- loading -----------------------------------------------------------------------------

_TOP_KEYS = {"version", "title", "intro", "resources", "sections"}
_SECTION_KEYS = {"id", "number", "title", "resources", "steps"}
_STEP_KEYS = {"id", "number", "title", "summary", "estimate", "topics", "resources", "checks"}
_RESOURCE_KEYS = {"title", "url", "kind"}
_CHECK_KEYS = {"question", "options", "answer", "explain"}


class _Problems:
    """Collects every problem in a file so the admin sees them all at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{self.path}: {where}: {what}")

    def raise_if_any(self) -> None:
        if self.items:
            raise RoadmapError("\n".join(self.items))


def _keys(problems: _Problems, where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    for key in sorted(set(data) - allowed):
        problems.add(where, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def _text(problems: _Problems, where: str, data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        problems.add(where, f"missing {key}")
        return ""
    if not isinstance(value, str | int | float):
        problems.add(where, f"{key} must be text, not {type(value).__name__}")
        return ""
    return str(value).strip()


def _list(problems: _Problems, where: str, data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(where, f"{key} must be a list")
        return []
    return value


def _resources(problems: _Problems, where: str, raw: list[Any]) -> tuple[Resource, ...]:
    out = []
    for i, item in enumerate(raw, 1):
        at = f"{where}, resource {i}"
        if not isinstance(item, dict):
            problems.add(at, "must be a mapping with title, url and kind")
            continue
        _keys(problems, at, item, _RESOURCE_KEYS)
        title = _text(problems, at, item, "title")
        url = _text(problems, at, item, "url")
        kind = str(item.get("kind", "article")).strip()
        parsed = urlparse(url)
        if url and (parsed.scheme not in ("http", "https") or not parsed.netloc or " " in url):
            problems.add(at, f"bad URL {url!r} (needs http:// or https:// and a host)")
        if kind not in RESOURCE_KINDS:
            problems.add(at, f"unknown kind {kind!r} (one of: {', '.join(RESOURCE_KINDS)})")
        out.append(Resource(title=title, url=url, kind=kind))
    return tuple(out)


def _one_line(problems: _Problems, where: str, key: str, value: str, limit: int | None) -> None:
    if len(value.splitlines()) > 1:
        problems.add(where, f"{key} must be a single line")
    if limit is not None and len(value) > limit:
        problems.add(where, f"{key} is {len(value)} characters long (at most {limit})")


def _options(problems: _Problems, where: str, item: Mapping[str, Any]) -> list[str]:
    """The options as text; empty if they are not a list of an allowed length."""
    raw = item.get("options")
    low, high = CHECK_OPTIONS
    if raw is None:
        problems.add(where, f"missing options (a list of {low} to {high} choices)")
        return []
    if not isinstance(raw, list):
        problems.add(where, f"options must be a list of {low} to {high} choices")
        return []
    if not low <= len(raw) <= high:
        problems.add(where, f"options must have {low} to {high} choices, not {len(raw)}")
        return []
    options: list[str] = []
    for i, value in enumerate(raw, 1):
        key = f"option {i}"
        text = value.strip() if isinstance(value, str) else ""
        folded = [o.casefold() for o in options]
        if not isinstance(value, str):
            # YAML reads `yes`, `404` or `1.10` unquoted as something other than the text typed.
            kind = "nothing" if value is None else type(value).__name__
            problems.add(where, f"{key} must be text, not {kind} (put it in quotes)")
        elif not text:
            problems.add(where, f"{key} is empty")
        else:
            _one_line(problems, where, key, text, OPTION_MAX_CHARS)
            if text.casefold() in folded:
                first = folded.index(text.casefold()) + 1
                problems.add(where, f"{key} repeats option {first}: {text!r}")
        options.append(text)
    return options


def _answer(problems: _Problems, where: str, value: Any, options: int) -> int | None:
    """The right option's number as the file counts (from 1); options is 0 if they are unusable,
    and then only the answer's form can be judged."""
    valid = f"from 1 to {options}" if options else "counting from 1"
    if value is None:
        problems.add(where, f"missing answer (the right option's number, {valid})")
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < 1
        or (options and value > options)
    ):
        problems.add(where, f"answer {value!r} must be the right option's number, {valid}")
        return None
    return value


def _checks(problems: _Problems, where: str, raw: list[Any]) -> tuple[Check, ...]:
    out = []
    for i, item in enumerate(raw, 1):
        at = f"{where}, check {i}"
        if not isinstance(item, dict):
            problems.add(at, "must be a mapping with question, options, answer and explain")
            continue
        before = len(problems.items)
        _keys(problems, at, item, _CHECK_KEYS)
        question = _text(problems, at, item, "question")
        if question:
            _one_line(problems, at, "question", question, None)
        options = _options(problems, at, item)
        answer = _answer(problems, at, item.get("answer"), len(options))
        explain = _text(problems, at, item, "explain")
        if explain:
            _one_line(problems, at, "explain", explain, EXPLAIN_MAX_CHARS)
        if len(problems.items) == before and answer is not None:
            out.append(Check(question, tuple(options), answer - 1, explain))
    return tuple(out)


def parse_roadmap(data: Any, path: Path) -> Roadmap:
    """Validates already-parsed YAML; raises RoadmapError listing every problem found."""
    problems = _Problems(path)
    if not isinstance(data, dict):
        problems.add("top level", "must be a mapping with title and sections")
        problems.raise_if_any()
    _keys(problems, "top level", data, _TOP_KEYS)
    if data.get("version", 1) != 1:
        problems.add("version", f"unsupported version {data.get('version')!r} (expected 1)")
    title = _text(problems, "top level", data, "title")
    raw_sections = _list(problems, "top level", data, "sections")
    if not raw_sections:
        problems.add("top level", "no sections: a roadmap needs at least one section with steps")

    sections: list[Section] = []
    step_ids: dict[str, str] = {}
    section_ids: set[str] = set()
    numbers: set[str] = set()
    index = 0
    for s_pos, raw in enumerate(raw_sections, 1):
        where = f"section {s_pos}"
        if not isinstance(raw, dict):
            problems.add(where, "must be a mapping")
            continue
        sid = str(raw.get("id", "")).strip()
        where = f"section {sid or s_pos}"
        _keys(problems, where, raw, _SECTION_KEYS)
        s_title = _text(problems, where, raw, "title")
        if not SLUG.match(sid):
            problems.add(where, f"id {sid!r} must be a slug like 'web-basics' (a-z, 0-9, -)")
        elif sid in section_ids:
            problems.add(where, f"duplicate section id {sid!r}")
        section_ids.add(sid)
        number = raw.get("number", s_pos)
        if not isinstance(number, int):
            problems.add(where, f"number must be a whole number, not {number!r}")
            number = s_pos
        steps: list[Step] = []
        for t_pos, raw_step in enumerate(_list(problems, where, raw, "steps"), 1):
            at = f"{where}, step {t_pos}"
            if not isinstance(raw_step, dict):
                problems.add(at, "must be a mapping")
                continue
            step_id = str(raw_step.get("id", "")).strip()
            at = f"step {step_id}" if step_id else at
            _keys(problems, at, raw_step, _STEP_KEYS)
            if not SLUG.match(step_id):
                problems.add(at, f"id {step_id!r} must be a slug like 'web-server' (a-z, 0-9, -)")
            elif step_id in step_ids:
                problems.add(at, f"duplicate step id (also in section {step_ids[step_id]})")
            step_ids[step_id] = sid
            step_number = str(raw_step.get("number", f"{number}.{t_pos}")).strip()
            if not STEP_NUMBER.match(step_number):
                problems.add(at, f"number {step_number!r} must look like '2.8'")
            elif step_number in numbers:
                problems.add(at, f"duplicate step number {step_number}")
            numbers.add(step_number)
            estimate = str(raw_step.get("estimate") or "").strip()
            if estimate and not ESTIMATE.match(estimate):
                problems.add(at, f"estimate {estimate!r} must look like 4h, 2d or 1w")
            topics = _list(problems, at, raw_step, "topics")
            if any(not isinstance(t, str | int | float) for t in topics):
                problems.add(at, "topics must be a list of text items")
            steps.append(
                Step(
                    id=step_id,
                    number=step_number,
                    title=_text(problems, at, raw_step, "title"),
                    section_id=sid,
                    section_title=s_title,
                    index=index,
                    summary=str(raw_step.get("summary") or "").strip(),
                    estimate=estimate,
                    topics=tuple(
                        str(t).strip() for t in topics if isinstance(t, str | int | float)
                    ),
                    resources=_resources(problems, at, _list(problems, at, raw_step, "resources")),
                    checks=_checks(problems, at, _list(problems, at, raw_step, "checks")),
                )
            )
            index += 1
        if not steps:
            problems.add(where, "has no steps")
        sections.append(
            Section(
                id=sid,
                number=number,
                title=s_title,
                steps=tuple(steps),
                resources=_resources(problems, where, _list(problems, where, raw, "resources")),
            )
        )
    roadmap_resources = _resources(problems, "top level", _list(problems, "top", data, "resources"))
    problems.raise_if_any()
    return Roadmap(
        title=title,
        intro=str(data.get("intro") or "").strip(),
        sections=tuple(sections),
        resources=roadmap_resources,
    )


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: where, and what."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where}not valid YAML: {what}"


def load_roadmap(path: Path) -> Roadmap:
    """Reads and validates a roadmap file; every failure is a RoadmapError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoadmapError(f"{path}: cannot read the roadmap: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise RoadmapError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoadmapError(f"{path}: {yaml_problem(exc)}") from exc
    return parse_roadmap(data, path)
