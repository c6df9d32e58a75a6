"""Who a mentor means in a command: a full MXID, a pill (mention link) or an unambiguous localpart.

Pure functions over the message's plain body, its HTML and the users the bot already knows;
an unknown name becomes a problem to show the mentor, never a guessed user id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import unquote

from bot import texts
from bot.markup import Reply

# Kept identical to bot.config.MXID (a test checks); not imported, so this core needs no pydantic.
MXID_RE = re.compile(r"^@[^:\s]+:[A-Za-z0-9.\-]+(:\d+)?$")

_MATRIX_TO = re.compile(r"https?://matrix\.to/#/(.*)", re.IGNORECASE | re.DOTALL)
_MATRIX_URI = re.compile(r"matrix:u/(.*)", re.IGNORECASE | re.DOTALL)


def _is_mxid(value: str) -> bool:
    # fullmatch: `$` alone would also accept a trailing newline.
    return MXID_RE.fullmatch(value) is not None


def _user_from_href(href: str) -> str | None:
    href = href.strip()
    if match := _MATRIX_TO.fullmatch(href):
        target = unquote(match.group(1).split("?", 1)[0])
    elif match := _MATRIX_URI.fullmatch(href):
        target = "@" + unquote(match.group(1).split("?", 1)[0].split("#", 1)[0])
    else:
        return None
    # Room aliases (#), room ids (!) and event permalinks (a second path segment) are not people.
    if "/" in target or not _is_mxid(target):
        return None
    return target


class _PillParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []  # (user id, link text)
        self._open: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        self._finish()
        href = next((value for name, value in attrs if name == "href" and value), None)
        self._open = _user_from_href(href) if href else None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._finish()

    def _finish(self) -> None:
        if self._open is not None:
            self.found.append((self._open, "".join(self._text).strip()))
        self._open, self._text = None, []

    def close(self) -> None:
        super().close()
        self._finish()  # an unclosed <a> still names someone


def _pill_links(formatted_body: str | None) -> list[tuple[str, str]]:
    if not formatted_body:
        return []
    parser = _PillParser()
    try:
        parser.feed(formatted_body)
        parser.close()
    except (AssertionError, ValueError):  # html.parser's few hard failures on broken markup
        parser._finish()
    return parser.found


def pills(formatted_body: str | None) -> list[str]:
    """MXIDs of the mention links in `formatted_body`, in order, without repeats."""
    return list(dict.fromkeys(user for user, _ in _pill_links(formatted_body)))


@dataclass(frozen=True)
class Resolved:
    """Exactly one of `user_id` and `problem` (the reply to give) is set; `candidates` are an
    ambiguous name's users."""

    user_id: str | None
    problem: Reply | None = None
    candidates: tuple[str, ...] = ()


def _localpart(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0]


def resolve_user(
    token: str, *, pill_ids: Sequence[str], known_users: Iterable[str], default_server: str
) -> Resolved:
    """Resolve one whitespace-free word of a command.

    `pill_ids` are the mentions in the message not yet used by earlier words; a word that is not
    a full MXID is taken to be the display text of the first of them.
    """
    if _is_mxid(token):
        return Resolved(token)
    if pill_ids:
        return Resolved(pill_ids[0])
    name = token.removeprefix("@")
    example = f"@{name}:{default_server}"
    if not name or not _is_mxid(example):
        return Resolved(None, texts.not_a_user(token, default_server))
    wanted = name.lower()
    matches = sorted({u for u in known_users if _is_mxid(u) and _localpart(u).lower() == wanted})
    if len(matches) == 1:
        return Resolved(matches[0])
    if matches:
        return Resolved(None, texts.several_people(token, matches), tuple(matches))
    return Resolved(None, texts.nobody_called(token, example))


def _pill_spans(body_args: str, links: list[tuple[str, str]]) -> list[tuple[int, int, str]] | None:
    """Where each pill's text sits in the plain body, or None if any cannot be found in order."""
    spans: list[tuple[int, int, str]] = []
    cursor = 0
    for user_id, label in links:
        for needle in (label, user_id):
            # Whole words only, so a pill "Bob" is not found inside "Bobby"; clients may add an
            # "@" before or a ":" after the name.
            pattern = rf"(?<!\S)@?{re.escape(needle)}[:,]?(?!\S)"
            found = re.compile(pattern).search(body_args, cursor) if needle else None
            if found:
                spans.append((found.start(), found.end(), user_id))
                cursor = found.end()
                break
        else:
            return None
    return spans


def resolve_users(
    body_args: str,
    formatted_body: str | None,
    *,
    count: int,
    known_users: Iterable[str],
    default_server: str,
) -> list[Resolved]:
    """Resolve up to `count` user references from a command's arguments, in the order written.

    A pill's text in the plain body can hold spaces, so pills are located in the body and their
    text is not read as words. When a pill's text cannot be found there, the message is read as
    mentions only, in the order of the HTML.
    """
    if count <= 0:
        return []
    known = list(known_users)
    links = _pill_links(formatted_body)
    spans = _pill_spans(body_args, links) if links else []
    if spans is None:
        return [Resolved(user_id) for user_id, _ in links[:count]]
    refs: list[Resolved] = []
    cursor = 0
    for at, stop, user_id in [*spans, (len(body_args), len(body_args), "")]:
        for word in body_args[cursor:at].split():
            refs.append(
                resolve_user(word, pill_ids=(), known_users=known, default_server=default_server)
            )
        if user_id:
            refs.append(Resolved(user_id))
        cursor = stop
    return refs[:count]
