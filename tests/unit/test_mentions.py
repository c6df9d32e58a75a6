"""How a mentor names people in a command: full ids, pills and unambiguous localparts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.config import MXID
from bot.mentions import MXID_RE, Resolved, pills, resolve_user, resolve_users

KNOWN = ["@bob:example.org", "@alice:example.org", "@Sam:example.org", "@sam:other.net"]


def link(href: str, text: str = "someone") -> str:
    return f'<a href="{href}">{text}</a>'


def resolve(token: str, pill_ids: tuple[str, ...] = ()) -> Resolved:
    return resolve_user(token, pill_ids=pill_ids, known_users=KNOWN, default_server="example.org")


def users(body: str, html: str | None = None, count: int = 5) -> list[str | None]:
    found = resolve_users(body, html, count=count, known_users=KNOWN, default_server="example.org")
    return [r.user_id or (r.problem.body if r.problem else None) for r in found]


def test_mxid_pattern_matches_the_config_one() -> None:
    assert MXID_RE.pattern == MXID.pattern


# --- pills -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "href",
    [
        "https://matrix.to/#/@bob:example.org",
        "https://matrix.to/#/%40bob%3Aexample.org",
        "https://matrix.to/#/@bob:example.org?via=example.org",
        "HTTPS://Matrix.to/#/@bob:example.org",
        "matrix:u/bob:example.org",
        "matrix:u/bob:example.org?action=chat",
        "matrix:u/bob%3Aexample.org",
        "https://matrix.to/#/&#64;bob:example.org",  # entity, as some clients escape it
    ],
)
def test_pills_read_mention_links(href: str) -> None:
    assert pills(f"Please pair with {link(href, 'Bob')} today") == ["@bob:example.org"]


def test_pills_keep_order_and_drop_repeats() -> None:
    html = (
        link("https://matrix.to/#/@carol:example.org")
        + link("matrix:u/alice:example.org")
        + link("https://matrix.to/#/@carol:example.org")
        + link("https://matrix.to/#/@bob:example.org:8448")
    )
    assert pills(html) == ["@carol:example.org", "@alice:example.org", "@bob:example.org:8448"]


@pytest.mark.parametrize(
    "href",
    [
        "https://matrix.to/#/#onboarding:example.org",
        "https://matrix.to/#/%23onboarding%3Aexample.org",
        "https://matrix.to/#/!abcdef:example.org",
        "https://matrix.to/#/!abcdef:example.org/$event123",
        "https://matrix.to/#/@bob:example.org/$event123",
        "matrix:r/onboarding:example.org",
        "matrix:roomid/abcdef:example.org/e/event123",
        "https://example.org/#/@bob:example.org",
        "https://matrix.to/#/@bob",
        "https://matrix.to/#/@bob:example.org%0A",
        "mailto:bob@example.org",
    ],
)
def test_pills_ignore_rooms_events_and_other_links(href: str) -> None:
    assert pills(link(href)) == []


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ('<a href="https://matrix.to/#/@bob:example.org">Bob', ["@bob:example.org"]),
        ("<a href=https://matrix.to/#/@bob:example.org>Bob</a>", ["@bob:example.org"]),
        ('<p><b><a href="matrix:u/bob:example.org">Bob</b></p></a></div>', ["@bob:example.org"]),
        ('<a name="x">no href</a><a href="">empty</a><a href>bare</a>', []),
        ('<a href="https://matrix.to/#/@bob:example.org"', []),
        ("<<<>>></a><![CDATA[ <!-- unterminated", []),
        ("plain text with @bob:example.org but no link", []),
    ],
)
def test_pills_tolerate_malformed_html(html: str, expected: list[str]) -> None:
    assert pills(html) == expected


def test_pills_of_nothing() -> None:
    assert pills(None) == []
    assert pills("") == []


# --- resolve_user ----------------------------------------------------------------------------


def test_a_full_mxid_is_itself_even_when_unknown() -> None:
    assert resolve("@bob:example.org") == Resolved("@bob:example.org")
    assert resolve("@newcomer:elsewhere.net:8448") == Resolved("@newcomer:elsewhere.net:8448")


@pytest.mark.parametrize("token", ["bob", "@bob", "BOB", "@Bob"])
def test_a_unique_localpart_finds_the_known_user_in_any_case(token: str) -> None:
    assert resolve(token) == Resolved("@bob:example.org")


@pytest.mark.parametrize("token", ["sam", "@SAM"])
def test_an_ambiguous_localpart_lists_the_candidates(token: str) -> None:
    result = resolve(token)
    assert result.user_id is None
    assert result.candidates == ("@Sam:example.org", "@sam:other.net")
    assert result.problem is not None
    assert f"{token} could be several people" in result.problem.body
    assert "@Sam:example.org, @sam:other.net" in result.problem.body


def test_an_unknown_name_is_a_problem_not_an_invented_id() -> None:
    result = resolve("carol")
    assert result.user_id is None
    assert result.candidates == ()
    assert result.problem is not None
    assert result.problem.body.startswith("I don't know anyone called carol;")
    assert "@carol:example.org" in result.problem.body  # as a hint of what to write


@pytest.mark.parametrize("token", ["@", "", "bob:", "@bob:bad server", "a:b:c"])
def test_something_that_cannot_be_a_name_says_what_would_be_valid(token: str) -> None:
    result = resolve(token)
    assert result.user_id is None
    assert result.problem is not None
    assert "@name:example.org" in result.problem.body


def test_a_non_mxid_token_takes_the_next_unused_pill() -> None:
    pill_ids = ("@carol:example.org", "@dave:example.org")
    assert resolve("Carol", pill_ids) == Resolved("@carol:example.org")
    assert resolve("bob", pill_ids) == Resolved("@carol:example.org")
    assert resolve("@alice:example.org", pill_ids) == Resolved("@alice:example.org")


# --- resolve_users ---------------------------------------------------------------------------


def test_words_without_pills_are_ids_or_localparts_in_order() -> None:
    assert users("@newbie:example.org alice") == ["@newbie:example.org", "@alice:example.org"]


def test_count_limits_the_references() -> None:
    assert users("alice bob @x:example.org", count=2) == ["@alice:example.org", "@bob:example.org"]
    assert users("alice bob", count=0) == []
    assert users("", count=2) == []


def test_problems_stay_in_their_place() -> None:
    result = users("carol bob")
    assert result[0] is not None and result[0].startswith("I don't know anyone called carol;")
    assert result[1] == "@bob:example.org"


def test_a_problem_shows_the_typed_name_short_and_inert() -> None:
    token = "\u202ehttps://evil.example/" + "x" * 100
    result = resolve(token)
    assert result.problem is not None
    assert "evil.example" in result.problem.html  # shown, but as code: no link
    assert "<a " not in result.problem.html and "\u202e" not in result.problem.body
    assert "x" * 40 not in result.problem.body


def test_pills_with_spaces_in_their_text_are_one_reference_each() -> None:
    html = (
        link("https://matrix.to/#/@carol:example.org", "Carol Ann Smith")
        + " "
        + link("https://matrix.to/#/@dave:example.org", "Dave")
    )
    assert users("Carol Ann Smith Dave", html) == ["@carol:example.org", "@dave:example.org"]


def test_pills_and_typed_names_mix_in_the_order_written() -> None:
    html = "alice " + link("https://matrix.to/#/@carol:example.org", "Carol Ann") + " @bob"
    assert users("alice Carol Ann @bob", html) == [
        "@alice:example.org",
        "@carol:example.org",
        "@bob:example.org",
    ]


def test_a_pill_text_is_matched_as_whole_words_only() -> None:
    html = "Bobby " + link("https://matrix.to/#/@robert:example.org", "Bob")
    result = users("Bobby Bob:", html)
    assert result[1] == "@robert:example.org"
    assert result[0] is not None and "called Bobby;" in result[0]


def test_a_pill_whose_plain_text_is_its_id_is_found_by_id() -> None:
    html = link("https://matrix.to/#/@carol:example.org", "Carol")
    assert users("@carol:example.org bob", html) == ["@carol:example.org", "@bob:example.org"]


def test_pills_alone_when_their_text_is_not_in_the_body() -> None:
    html = link("matrix:u/carol:example.org", "Carol") + link("matrix:u/dave:example.org", "Dave")
    assert users("someone else", html) == ["@carol:example.org", "@dave:example.org"]
    assert users("someone else", html, count=1) == ["@carol:example.org"]


def test_room_links_are_not_people() -> None:
    html = link("https://matrix.to/#/#onboarding:example.org", "#onboarding") + " bob"
    first, second = resolve_users(
        "#onboarding bob", html, count=2, known_users=KNOWN, default_server="example.org"
    )
    assert first.user_id is None and first.problem is not None
    assert second == Resolved("@bob:example.org")


def test_known_users_may_be_a_one_shot_iterator() -> None:
    found = resolve_users(
        "alice bob", None, count=2, known_users=iter(KNOWN), default_server="example.org"
    )
    assert [r.user_id for r in found] == ["@alice:example.org", "@bob:example.org"]


# --- properties ------------------------------------------------------------------------------

html_ish = st.lists(
    st.one_of(
        st.text(),
        st.sampled_from(
            ["<a ", "href=", '"', "'", ">", "</a>", "<", "&", "#", "matrix:u/", "@", ":", "%",
             "https://matrix.to/#/", "<!--", "<![CDATA[", "<?", "&#x", ";", "/", "$", "?"]
        ),
    )
).map("".join)  # fmt: skip


@given(html_ish)
def test_pills_never_raise_and_return_valid_ids(html: str) -> None:
    for user_id in pills(html):
        assert MXID_RE.fullmatch(user_id)


@given(st.text(), st.one_of(st.none(), html_ish), st.integers(-1, 6))
def test_resolve_users_never_raises_and_sets_exactly_one_field(
    body: str, html: str | None, count: int
) -> None:
    found = resolve_users(body, html, count=count, known_users=KNOWN, default_server="example.org")
    assert len(found) <= max(count, 0)
    for result in found:
        assert (result.user_id is None) != (result.problem is None)
