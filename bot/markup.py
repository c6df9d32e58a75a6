"""Message markup: one builder writes the plain `body` and the HTML `formatted_body` together.

Every piece of text is HTML-escaped on the way in, so nothing a user typed can become markup.
The words themselves are texts.py's; the layouts that arrange them are render.py's.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote


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
Line = tuple[Inline, ...]  # the parts of one line, as texts.py hands them out

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
