"""Layouts: how a step, a newcomer's progress and the roadmap are laid out in a message.

The words are texts.py's and the builder is markup.py's; this only arranges them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from bot import texts
from bot.forecast import Forecast
from bot.markup import Block, Bold, Code, Inline, Link, Message, Reply
from bot.progress import Progress, State, current_step, section_progress, totals
from bot.roadmap import Resource, Roadmap, Step

STATE_MARK = {State.PENDING: "○", State.LEARNING: "◐", State.DONE: "✓", State.SKIPPED: "↷"}


def bar(done: int, total: int, width: int = 10) -> str:
    filled = round(width * done / total) if total else 0
    return "█" * filled + "░" * (width - filled)


def resource_items(resources: Iterable[Resource]) -> list[list[Inline]]:
    return [[Link(r.title, r.url), f" ({r.kind})"] for r in resources]


@lru_cache(maxsize=1024)
def _step_blocks(step: Step, steps: int, prefix: str) -> tuple[Block, Block]:
    """What a step's view says whatever the newcomer's progress: the lines above the
    summary and the lines below it. Rendered once per step (and roadmap size, and prefix)."""
    head = Message().line(*texts.step_heading(step, steps)).freeze()
    m = Message()
    if step.topics:
        m.line(texts.TOPICS).bullets([[t] for t in step.topics])
    if step.resources:
        m.line(texts.RESOURCES).bullets(resource_items(step.resources))
    m.line(*texts.step_done_hint(prefix))
    return head, m.freeze()


def render_step(
    m: Message, roadmap: Roadmap, progress: Progress, step: Step, prefix: str
) -> Message:
    head, tail = _step_blocks(step, len(roadmap), prefix)
    m.block(head)
    if summary := texts.step_summary(step.summary, step.estimate, progress.state(step.id)):
        m.line(summary)
    return m.block(tail)


def render_current(m: Message, roadmap: Roadmap, progress: Progress, prefix: str) -> Message:
    step = current_step(roadmap, progress)
    if step is None:
        done, skipped, total = totals(roadmap, progress)
        return m.line(*texts.roadmap_finished(done, skipped, total, prefix))
    return render_step(m, roadmap, progress, step, prefix)


def section_bars(roadmap: Roadmap, progress: Progress) -> list[list[Inline]]:
    """A bar and a count per section, for a progress view."""
    rows: list[list[Inline]] = []
    for sp in section_progress(roadmap, progress):
        finished = sp.done + sp.skipped
        rows.append(
            [
                Code(f"{bar(finished, sp.total)} {finished:>2}/{sp.total}"),
                f" {sp.section.number}. {sp.section.title}",
            ]
        )
    return rows


def render_progress(roadmap: Roadmap, progress: Progress, outlook: Forecast | None = None) -> Reply:
    """`outlook`: the newcomer's forecast; None (finished, or not asked for) says nothing."""
    done, skipped, total = totals(roadmap, progress)
    m = Message().line(*texts.progress_heading(done, skipped, total))
    m.bullets(section_bars(roadmap, progress))
    current = current_step(roadmap, progress)
    if current is not None:
        m.line(*texts.progress_current(current))
    if outlook is not None:
        m.line(*texts.progress_forecast(outlook))
    return m.reply()


def render_roadmap(roadmap: Roadmap, progress: Progress) -> Reply:
    m = Message().line(*texts.roadmap_heading(roadmap.title, len(roadmap)))
    current = current_step(roadmap, progress)
    for section in roadmap.sections:
        m.line(Bold(f"{section.number}. {section.title}"))
        m.bullets(
            [
                STATE_MARK[progress.state(s.id)] + " ",
                texts.step_name(s),
                Code(f" [{s.id}]"),
                texts.ROADMAP_CURRENT if current is not None and s.id == current.id else "",
            ]
            for s in section.steps
        )
    m.line(texts.ROADMAP_LEGEND)
    return m.reply()


def render_candidates(
    query: str, candidates: Sequence[Step], ambiguous: bool, prefix: str
) -> Reply:
    if not candidates:
        return texts.unknown_step(query, prefix)
    m = Message()
    m.line(*(texts.ambiguous_step(query) if ambiguous else texts.closest_steps(query)))
    m.bullets([[Code(s.number), f" {s.title} ", Code(f"[{s.id}]")] for s in candidates])
    return m.line(*texts.name_a_step(candidates[0].number)).reply()
