"""Message rendering: one builder writes the plain `body` and the HTML `formatted_body` together.

Every piece of text is HTML-escaped on the way in, so nothing a user typed can become markup.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

from bot.progress import Progress, State, current_step, section_progress, totals
from bot.roadmap import Resource, Roadmap, Step


@dataclass(frozen=True)
class Reply:
    body: str
    html: str

    def content(self) -> dict[str, str]:
        return {
            "msgtype": "m.notice",
            "body": self.body,
            "format": "org.matrix.custom.html",
            "formatted_body": self.html,
        }


@dataclass(frozen=True)
class Bold:
    text: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Link:
    text: str
    url: str


@dataclass(frozen=True)
class Mention:
    """A user pill: a matrix.to link in HTML, the bare user id in plain text."""

    user_id: str


Inline = str | Bold | Code | Link | Mention

ECHO_LIMIT = 40
# Marks that reorder or hide text: the bidi embeddings, overrides and isolates, and the
# directional marks. With control characters, they are dropped from anything echoed.
_BIDI = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200e", "\u200f", "\u061c"]
)


def echo(typed: str) -> Code:
    """What a user typed, repeated in a reply: in code formatting (no link, no preview), without
    control or bidi characters, at most ECHO_LIMIT characters. The bot's voice must not carry
    someone's long message, let alone a link or text that reads backwards."""
    flat = " ".join(typed.split())
    shown = "".join(c for c in flat if c not in _BIDI and unicodedata.category(c) != "Cc")
    if len(shown) > ECHO_LIMIT:
        shown = shown[: ECHO_LIMIT - 1] + "…"
    return Code(shown)


@dataclass(frozen=True)
class Block:
    """Lines rendered once (both renderings), to be added to many messages."""

    plain: tuple[str, ...]
    html: str


def _plain(parts: Sequence[Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, Link):
            out.append(f"{part.text} <{part.url}>")
        elif isinstance(part, Mention):
            out.append(part.user_id)
        elif isinstance(part, Bold | Code):
            out.append(part.text)
        else:
            out.append(part)
    return "".join(out)


def _html(parts: Sequence[Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, Link):
            out.append(f'<a href="{html.escape(part.url)}">{html.escape(part.text)}</a>')
        elif isinstance(part, Mention):
            url = "https://matrix.to/#/" + quote(part.user_id, safe="@:")
            out.append(f'<a href="{html.escape(url)}">{html.escape(part.user_id)}</a>')
        elif isinstance(part, Bold):
            out.append(f"<strong>{html.escape(part.text)}</strong>")
        elif isinstance(part, Code):
            out.append(f"<code>{html.escape(part.text)}</code>")
        else:
            out.append(html.escape(part))
    return "".join(out)


class Message:
    """Builds a reply block by block; each block goes to both renderings."""

    def __init__(self) -> None:
        self._plain: list[str] = []
        self._html: list[str] = []

    def line(self, *parts: Inline) -> Message:
        self._plain.append(_plain(parts))
        self._html.append(f"<p>{_html(parts)}</p>")
        return self

    def bullets(self, items: Iterable[Sequence[Inline]]) -> Message:
        items = list(items)
        if items:
            self._plain.extend("• " + _plain(item) for item in items)
            self._html.append("<ul>" + "".join(f"<li>{_html(i)}</li>" for i in items) + "</ul>")
        return self

    def numbered(self, items: Iterable[Sequence[Inline]]) -> Message:
        items = list(items)
        if items:
            self._plain.extend(f"{n}. {_plain(item)}" for n, item in enumerate(items, 1))
            self._html.append("<ol>" + "".join(f"<li>{_html(i)}</li>" for i in items) + "</ol>")
        return self

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Inline]]) -> Message:
        """A real HTML table; in plain text, columns padded to line up."""
        rows = [list(r) for r in rows]
        plain = [list(headers)] + [[_plain([c]) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in plain) for i in range(len(headers))]
        self._plain.extend(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in plain
        )
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{_html([c])}</td>" for c in r) + "</tr>" for r in rows
        )
        self._html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def block(self, block: Block) -> Message:
        self._plain.extend(block.plain)
        self._html.append(block.html)
        return self

    def freeze(self) -> Block:
        return Block(tuple(self._plain), "".join(self._html))

    def reply(self) -> Reply:
        return Reply("\n".join(self._plain), "".join(self._html))


def text(*parts: Inline) -> Reply:
    return Message().line(*parts).reply()


# --- roadmap views -----------------------------------------------------------------------

STATE_MARK = {State.PENDING: "○", State.LEARNING: "◐", State.DONE: "✓", State.SKIPPED: "↷"}


def bar(done: int, total: int, width: int = 10) -> str:
    filled = round(width * done / total) if total else 0
    return "█" * filled + "░" * (width - filled)


def resource_items(resources: Iterable[Resource]) -> list[list[Inline]]:
    return [[Link(r.title, r.url), f" ({r.kind})"] for r in resources]


def step_heading(step: Step, steps: int) -> list[Inline]:
    return [
        Bold(f"{step.number} {step.title}"),
        f" — step {step.index + 1} of {steps}, section {step.section_title}",
    ]


@lru_cache(maxsize=1024)
def _step_blocks(step: Step, steps: int, prefix: str) -> tuple[Block, Block]:
    """What a step's view says whatever the newcomer's progress: the lines above the
    summary and the lines below it. Rendered once per step (and roadmap size, and prefix)."""
    head = Message().line(*step_heading(step, steps)).freeze()
    m = Message()
    if step.topics:
        m.line("Topics:").bullets([[t] for t in step.topics])
    if step.resources:
        m.line("Resources:").bullets(resource_items(step.resources))
    m.line(
        "When you have finished it, say ",
        Code(f"{prefix}done"),
        "; to put it aside, ",
        Code(f"{prefix}skip"),
        ".",
    )
    return head, m.freeze()


def render_step(
    m: Message, roadmap: Roadmap, progress: Progress, step: Step, prefix: str
) -> Message:
    head, tail = _step_blocks(step, len(roadmap), prefix)
    state = progress.state(step.id)
    m.block(head)
    details = []
    if step.estimate:
        details.append(f"about {step.estimate}")
    if state != State.PENDING:
        details.append(f"you marked it {state.value}")
    if step.summary or details:
        m.line(step.summary + (f" ({', '.join(details)})" if details else ""))
    return m.block(tail)


def render_current(m: Message, roadmap: Roadmap, progress: Progress, prefix: str) -> Message:
    step = current_step(roadmap, progress)
    if step is None:
        done, skipped, total = totals(roadmap, progress)
        return m.line(
            "🎉 You have been through the whole roadmap: ",
            f"{done} of {total} steps done, {skipped} skipped. ",
            "Say ",
            Code(f"{prefix}roadmap"),
            " to look back, or ",
            Code(f"{prefix}goto <step>"),
            " to revisit one.",
        )
    return render_step(m, roadmap, progress, step, prefix)


def render_progress(roadmap: Roadmap, progress: Progress) -> Reply:
    done, skipped, total = totals(roadmap, progress)
    m = Message().line(Bold("Your progress: "), f"{done} done, {skipped} skipped, of {total} steps")
    rows: list[list[Inline]] = []
    for sp in section_progress(roadmap, progress):
        finished = sp.done + sp.skipped
        rows.append(
            [
                Code(f"{bar(finished, sp.total)} {finished:>2}/{sp.total}"),
                f" {sp.section.number}. {sp.section.title}",
            ]
        )
    m.bullets(rows)
    current = current_step(roadmap, progress)
    if current is not None:
        m.line("Current step: ", Bold(f"{current.number} {current.title}"))
    return m.reply()


def render_roadmap(roadmap: Roadmap, progress: Progress) -> Reply:
    m = Message().line(Bold(roadmap.title), f" — {len(roadmap)} steps")
    current = current_step(roadmap, progress)
    for section in roadmap.sections:
        m.line(Bold(f"{section.number}. {section.title}"))
        m.bullets(
            [
                STATE_MARK[progress.state(s.id)] + " ",
                f"{s.number} {s.title}",
                Code(f" [{s.id}]"),
                " ← current" if current is not None and s.id == current.id else "",
            ]
            for s in section.steps
        )
    m.line("✓ done  ◐ learning  ↷ skipped  ○ to do")
    return m.reply()


def render_candidates(
    query: str, candidates: Sequence[Step], ambiguous: bool, prefix: str
) -> Reply:
    if not candidates:
        return text(
            "I don't know a step called ",
            echo(query),
            ". Say ",
            Code(f"{prefix}roadmap"),
            " to see every step with its number and id.",
        )
    m = Message()
    if ambiguous:
        m.line(echo(query), " could be more than one step; which one did you mean?")
    else:
        m.line("I don't know a step called ", echo(query), ". The closest are:")
    m.bullets([[Code(s.number), f" {s.title} ", Code(f"[{s.id}]")] for s in candidates])
    return m.line("Name it by number or id, e.g. ", Code(candidates[0].number), ".").reply()
