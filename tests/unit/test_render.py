"""Rendering: plain body and HTML formatted_body say the same thing; user text stays text."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from bot import texts
from bot.forecast import Forecast
from bot.markup import Bold, Code, Link, Message, echo, text
from bot.ops import PAUSED_FOREVER
from bot.progress import NewcomerInfo, Progress, State
from bot.render import render_candidates, render_current, render_progress, render_roadmap
from bot.reports import DIGEST_ROWS, render_digest, render_status
from bot.roadmap import Roadmap
from tests.unit.common import POLICY

HTML_TAG = re.compile(r"</?(p|ul|ol|li|strong|code|a|table|thead|tbody|tr|td|th)\b[^>]*>")


def test_user_text_is_escaped_in_html() -> None:
    reply = text("You said ", "<b>x</b> & <script>")
    assert reply.html == "<p>You said &lt;b&gt;x&lt;/b&gt; &amp; &lt;script&gt;</p>"
    assert reply.body == "You said <b>x</b> & <script>"


def test_unknown_step_reply_escapes_the_query() -> None:
    reply = render_candidates("<b>x</b>", [], ambiguous=False, prefix="!")
    assert "<code>&lt;b&gt;x&lt;/b&gt;</code>" in reply.html
    assert "<b>" not in reply.html
    assert "called <b>x</b>." in reply.body


def test_echo_is_short_code_without_controls_or_bidi_overrides() -> None:
    typed = (
        "\u202e”. \u26a0 Mentors:\x07 your\u2066 session\u200f expires, re-login at "
        "https://evil.example/login\u061c\u2069\n“"
    )
    shown = echo(typed)
    assert isinstance(shown, Code)
    assert len(shown.text) <= 40
    assert shown.text == "”. \u26a0 Mentors: your session expires, re-…"
    hidden = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F]}
    assert not hidden & set(shown.text)
    reply = text("You said ", shown)
    assert "<code>" in reply.html and "<a " not in reply.html


@pytest.mark.parametrize(
    ("typed", "shown"),
    [("dokcer", "dokcer"), ("x" * 40, "x" * 40), ("x" * 41, "x" * 39 + "…"), ("a\tb", "a b")],
)
def test_echo_keeps_short_text_as_typed(typed: str, shown: str) -> None:
    assert echo(typed) == Code(shown)


def test_bold_and_code_are_escaped_inside_their_tags() -> None:
    reply = text(Bold("a<b"), Code("!goto <step>"))
    assert reply.html == "<p><strong>a&lt;b</strong><code>!goto &lt;step&gt;</code></p>"


def test_links_are_anchors_in_html_and_spelled_out_in_the_body() -> None:
    reply = text("See ", Link("Docs & more", 'https://example.org/?a=1&b="2"'))
    assert reply.html == (
        '<p>See <a href="https://example.org/?a=1&amp;b=&quot;2&quot;">Docs &amp; more</a></p>'
    )
    assert reply.body == 'See Docs & more <https://example.org/?a=1&b="2">'


def test_bullets_become_a_list() -> None:
    reply = Message().line("Topics:").bullets([["one"], [Bold("two")]]).reply()
    assert reply.html == "<p>Topics:</p><ul><li>one</li><li><strong>two</strong></li></ul>"
    assert reply.body == "Topics:\n• one\n• two"


def test_empty_bullets_add_nothing() -> None:
    reply = Message().line("x").bullets([]).reply()
    assert (reply.body, reply.html) == ("x", "<p>x</p>")


def test_content_is_a_notice_with_both_renderings() -> None:
    content = text("hi").content()
    assert content == {
        "msgtype": "m.notice",
        "body": "hi",
        "format": "org.matrix.custom.html",
        "formatted_body": "<p>hi</p>",
    }


def test_step_view_links_every_resource_and_escapes_topics(roadmap: Roadmap) -> None:
    web_server = roadmap.get("web-server")
    assert web_server is not None
    progress = Progress("@n:example.org", current_id="web-server")
    reply = render_current(Message(), roadmap, progress, "!").reply()
    for resource in web_server.resources:
        assert f'<a href="{resource.url}">' in reply.html
        assert f"<{resource.url}>" in reply.body
    assert "<li>WSGI &amp; ASGI</li>" in reply.html
    assert "• WSGI & ASGI" in reply.body
    assert "step 3 of 52" in reply.body


def test_bodies_carry_no_html(roadmap: Roadmap) -> None:
    progress = Progress(
        "@n:example.org",
        current_id="docker",
        states={"bash-terminal": State.DONE, "docker": State.LEARNING},
    )
    replies = [
        render_current(Message(), roadmap, progress, "!").reply(),
        render_progress(roadmap, progress),
        render_roadmap(roadmap, progress),
        render_candidates("dokcer", roadmap.steps[:2], ambiguous=False, prefix="!"),
    ]
    for reply in replies:
        assert HTML_TAG.search(reply.body) is None, reply.body
        assert HTML_TAG.search(reply.html) is not None


def test_roadmap_view_marks_states_and_the_current_step(roadmap: Roadmap) -> None:
    progress = Progress(
        "@n:example.org",
        current_id="docker",
        states={
            "bash-terminal": State.DONE,
            "basic-internet": State.SKIPPED,
            "docker": State.LEARNING,
        },
    )
    lines = render_roadmap(roadmap, progress).body.splitlines()
    assert "• ✓ 1.1 Bash/Terminal [bash-terminal]" in lines
    assert "• ↷ 1.2 Basic Internet [basic-internet]" in lines
    assert "• ◐ 11.1 Docker [docker] ← current" in lines
    assert "• ○ 1.3 Web Server [web-server]" in lines
    assert sum("← current" in line for line in lines) == 1


# --- the pace forecast in !progress ----------------------------------------------------------


def outlook(**changes: object) -> Forecast:
    """Wednesday 1 April 2026; done around Tuesday 14 April at this pace, Friday 10 by the
    estimates alone."""
    base = Forecast(
        today=date(2026, 4, 1),
        elapsed=timedelta(days=6),
        done=timedelta(days=5),
        remaining=timedelta(days=7),
        expected=date(2026, 4, 10),
        pace=1.2,
        finish=date(2026, 4, 14),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_progress_says_when_the_newcomer_finishes_at_their_pace(roadmap: Roadmap) -> None:
    progress = Progress("@n:example.org", current_id="docker")
    reply = render_progress(roadmap, progress, outlook())
    assert reply.body.splitlines()[-2:] == [
        "Current step: 11.1 Docker",
        "📅 Going by the estimates, at your pace you'll finish around Tue 14 Apr.",
    ]
    assert "finish around <strong>Tue 14 Apr</strong>.</p>" in reply.html
    next_year = render_progress(roadmap, progress, outlook(finish=date(2027, 1, 5))).body
    assert next_year.endswith("you'll finish around Tue 5 Jan 2027.")


def test_progress_without_a_pace_or_a_forecast(roadmap: Roadmap) -> None:
    progress = Progress("@n:example.org", current_id="docker")
    unknown = render_progress(roadmap, progress, outlook(pace=None, finish=None)).body
    assert unknown.splitlines()[-1] == (
        "📅 When you'll finish: not enough to go on yet; ask again once you've done a step."
    )
    too_far = render_progress(roadmap, progress, outlook(finish=None)).body
    assert too_far.splitlines()[-1] == (
        "📅 At your pace so far, the finish is too far off to put a date on."
    )
    # No forecast (finished, or none asked for): the view ends with the current step.
    assert render_progress(roadmap, progress).body.splitlines()[-1] == "Current step: 11.1 Docker"


# --- the command prefix ----------------------------------------------------------------------

COMMAND = re.compile(r"!\w")  # "!" before a word: a command written with the default prefix


def test_texts_that_name_a_command_use_the_chat_prefix(roadmap: Roadmap) -> None:
    step = roadmap.steps[0]
    replies = [
        text(*texts.step_done_hint("?")),
        text(*texts.roadmap_finished(1, 2, 3, "?")),
        text(*texts.welcome("Roadmap", 3, 1, "?")),
        texts.paused(None, "?"),
        texts.your_timezone(None, "UTC", "?"),
        text(texts.paused_until_resume("?")),
        text(*texts.removed_progress_kept("?")),
        text(texts.digest_cut(25, "?")),
        texts.unknown_command("?dnoe", ["done"], "?"),
        texts.role_refused("team", "mentor", "?"),
        texts.unknown_step("x", "?"),
        texts.greeting("?"),
        texts.nudge("@n:example.org", step, timedelta(days=2), "?"),
    ]
    for reply in replies:
        assert "?" in reply.body and COMMAND.search(reply.body) is None, reply.body


def test_mentor_views_name_commands_with_the_chat_prefix(roadmap: Roadmap) -> None:
    now = datetime(2026, 3, 5, 10, tzinfo=UTC)

    def newcomer(n: int, paused_until: datetime | None = None) -> NewcomerInfo:
        return NewcomerInfo(
            user_id=f"@n{n}:example.org",
            enrolled_at=now - timedelta(days=9),
            current_step=roadmap.steps[0].id,
            last_activity_at=now - timedelta(hours=1),
            mentor=None,
            paused_until=paused_until,
            timezone=None,
            finished_at=None,
            last_nudged_at=None,
            nudges_in_row=0,
            nudges_total=0,
            done=1,
            skipped=0,
        )

    away = newcomer(0, paused_until=PAUSED_FOREVER)
    status = render_status(roadmap, away, Progress(away.user_id), POLICY, now, prefix="?")
    assert "• Paused: until ?resume" in status.body.splitlines()

    many = [newcomer(n) for n in range(DIGEST_ROWS + 1)]
    since = now - timedelta(days=7)
    digests = [
        render_digest(roadmap, many, {i.user_id: 1 for i in many}, POLICY, now, since, prefix=p)
        for p in ("!", "?")
    ]
    assert [r.body.splitlines()[-1] for r in digests] == [
        f"(at most {DIGEST_ROWS} of each shown; !team has everyone)",
        f"(at most {DIGEST_ROWS} of each shown; ?team has everyone)",
    ]
