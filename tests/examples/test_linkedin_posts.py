"""examples/linkedin_posts: every dedicated function, on real PostgreSQL and the fake upstreams."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from examples.linkedin_posts import BatchCreateError, FakeUpstream, LinkedInPostsService
from examples.linkedin_posts.database import LinkedInPostsDatabase, contains_pattern
from examples.linkedin_posts.fake_upstream import AI_OUTAGE_MARKER, EXPIRED_TOKEN
from examples.linkedin_posts.seed_shapes import tour
from examples.linkedin_posts.service import open_service

from iogate.errors import AuthenticationError, HTTPStatusError, InvalidRequestError
from tests.conftest import free_port

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-access-token-1234"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def service(
    postgres_url: str, upstream: FakeUpstream, table_name: str, pg_raw: asyncpg.Connection
) -> AsyncIterator[LinkedInPostsService]:
    async with open_service(
        postgres_url,
        linkedin_url=upstream.url("linkedin"),
        ai_url=upstream.url("ai"),
        notification_url=upstream.url("notify"),
        table=table_name,
        max_connections=4,
    ) as opened:
        try:
            assert await opened.database.create_schema() is True
            yield opened
        finally:
            await pg_raw.execute(f'DROP TABLE IF EXISTS "{table_name}"')


def post(content: str, user_id: str = "ada", **extra: str) -> dict[str, str]:
    return {"user_id": user_id, "content": content, **extra}


async def xmins(pg_raw: asyncpg.Connection, table: str, ids: list[str]) -> int:
    """How many transactions inserted these rows (xmin is the inserting transaction)."""
    count: int = await pg_raw.fetchval(
        f'SELECT count(DISTINCT xmin::text) FROM "{table}" WHERE id = ANY($1::uuid[])', ids
    )
    return count


# -- schema ----------------------------------------------------------------------------


async def test_create_schema_is_idempotent(
    service: LinkedInPostsService, pg_raw: asyncpg.Connection, table_name: str
) -> None:
    assert await service.database.create_schema() is False  # already there
    index = await pg_raw.fetchval("SELECT to_regclass($1)::text", f"{table_name}_user_created")
    assert index == f"{table_name}_user_created"


def test_a_table_name_that_is_not_a_plain_identifier_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="table name must match"):
        LinkedInPostsDatabase(None, table='posts"; DROP TABLE users; --')  # type: ignore[arg-type]


# -- dedicated database functions -------------------------------------------------------


async def test_create_get_update_delete(service: LinkedInPostsService) -> None:
    db = service.database
    post_id = await db.create_post(post("Hello, network!", post_type="news"))
    row = await db.get_post_by_id(post_id)
    assert row is not None
    assert row["id"] == post_id
    assert (row["content"], row["post_type"], row["visibility"]) == (
        "Hello, network!",
        "news",
        "public",
    )
    assert row["likes_count"] == 0

    assert await db.update_post(post_id, {"content": "Edited", "visibility": "private"}) is True
    edited = await db.get_post_by_id(post_id)
    assert edited is not None
    assert (edited["content"], edited["visibility"]) == ("Edited", "private")
    assert edited["updated_at"] > row["updated_at"]

    missing = "00000000-0000-4000-8000-000000000000"
    assert await db.update_post(missing, {"content": "x"}) is False
    assert await db.delete_post(post_id) is True
    assert await db.delete_post(post_id) is False
    assert await db.get_post_by_id(post_id) is None
    with pytest.raises(InvalidRequestError, match="post_id must be a UUID"):
        await db.get_post_by_id("1 OR 1=1")


async def test_create_post_validates_its_input(service: LinkedInPostsService) -> None:
    with pytest.raises(InvalidRequestError, match=r"post_data\['content'\] is required"):
        await service.database.create_post({"user_id": "ada"})
    with pytest.raises(InvalidRequestError, match="visibility"):
        await service.database.create_post(post("x", visibility="everyone"))


async def test_update_post_refuses_columns_outside_the_whitelist(
    service: LinkedInPostsService, pg_raw: asyncpg.Connection, table_name: str
) -> None:
    db = service.database
    post_id = await db.create_post(post("Original"))
    injection = "content = 'pwned', likes_count"
    with pytest.raises(InvalidRequestError) as refused:
        await db.update_post(post_id, {"content": "ok", "likes_count": 10**6, injection: 1})
    message = str(refused.value)
    assert "'likes_count'" in message
    assert repr(injection) in message
    assert "updatable columns: content" in message
    # Nothing was sent: the valid key in the same call was not applied either.
    row = await pg_raw.fetchrow(
        f'SELECT content, likes_count FROM "{table_name}" WHERE id = $1::uuid', post_id
    )
    assert row is not None
    assert dict(row) == {"content": "Original", "likes_count": 0}

    with pytest.raises(InvalidRequestError, match="non-empty dict"):
        await db.update_post(post_id, {})
    with pytest.raises(InvalidRequestError, match="visibility must be one of"):
        await db.update_post(post_id, {"visibility": "everyone"})


async def test_get_posts_by_user_pages_are_bounded_and_disjoint(
    service: LinkedInPostsService,
) -> None:
    db = service.database
    ids = await db.batch_create_posts([post(f"post {i}") for i in range(5)])
    await db.create_post(post("someone else's", user_id="grace"))

    pages = [await db.get_posts_by_user("ada", limit=2, offset=o) for o in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 1]
    seen = [row["id"] for page in pages for row in page]
    assert sorted(seen) == sorted(ids)  # every post once, no overlap, no gap
    keys = [(row["created_at"], row["id"]) for page in pages for row in page]
    assert keys == sorted(keys, reverse=True)

    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"offset": 10_001}, {"limit": True}):
        with pytest.raises(InvalidRequestError, match=next(iter(bad))):
            await db.get_posts_by_user("ada", **bad)


async def test_search_posts_takes_wildcards_literally(service: LinkedInPostsService) -> None:
    db = service.database
    await db.batch_create_posts(
        [
            post("Revenue: 100% growth"),
            post("Revenue: 100 percent GROWTH"),
            post("use snake_case"),
            post("use snakeXcase"),
            post("a back\\slash"),
        ]
    )

    async def found(term: str) -> list[str]:
        return sorted(row["content"] for row in await db.search_posts(term))

    assert await found("100%") == ["Revenue: 100% growth"]
    assert await found("e_c") == ["use snake_case"]
    assert await found("\\") == ["a back\\slash"]
    assert await found("growth") == ["Revenue: 100 percent GROWTH", "Revenue: 100% growth"]
    assert len(await db.search_posts("revenue", limit=1)) == 1
    assert contains_pattern("5%_\\") == "%5\\%\\_\\\\%"
    with pytest.raises(InvalidRequestError, match="non-empty"):
        await db.search_posts("  ")
    with pytest.raises(InvalidRequestError, match="at most 200"):
        await db.search_posts("x" * 201)


async def test_get_post_analytics(service: LinkedInPostsService) -> None:
    db = service.database
    post_id = await db.create_post(post("Numbers"))
    fresh = await db.get_post_analytics(post_id)
    assert fresh["views_count"] == 0
    assert fresh["engagement_rate"] is None  # no views: no rate, not a division error
    assert await db.record_engagement(post_id, views=200, likes=10, comments=6, shares=4)
    assert await db.update_post(post_id, {"sentiment_score": 0.5})
    analytics = await db.get_post_analytics(post_id)
    assert analytics == {
        "sentiment_score": 0.5,
        "readability_score": None,
        "engagement_prediction": None,
        "views_count": 200,
        "likes_count": 10,
        "comments_count": 6,
        "shares_count": 4,
        "engagement_rate": 0.1,
    }
    assert await db.get_post_analytics("00000000-0000-4000-8000-000000000000") == {}
    with pytest.raises(InvalidRequestError, match="likes"):
        await db.record_engagement(post_id, views=1, likes=-1, comments=0, shares=0)


async def test_batch_create_posts_groups_the_inserts_into_one_transaction(
    service: LinkedInPostsService, pg_raw: asyncpg.Connection, table_name: str
) -> None:
    db = service.database
    ids = await db.batch_create_posts([post(f"batch {i}") for i in range(20)])
    assert len(set(ids)) == 20
    assert await xmins(pg_raw, table_name, ids) == 1  # one grouped transaction
    singles = [await db.create_post(post("one")), await db.create_post(post("two"))]
    assert await xmins(pg_raw, table_name, singles) == 2  # the check can tell them apart
    assert await db.batch_create_posts([]) == []


async def test_batch_create_posts_validates_every_post_before_sending(
    service: LinkedInPostsService, pg_raw: asyncpg.Connection, table_name: str
) -> None:
    with pytest.raises(InvalidRequestError, match=r"posts_data\[1\]\['content'\]"):
        await service.database.batch_create_posts([post("fine"), {"user_id": "ada"}])
    assert await pg_raw.fetchval(f'SELECT count(*) FROM "{table_name}"') == 0


@pytest.fixture
async def refuse_content(
    service: LinkedInPostsService, pg_raw: asyncpg.Connection, table_name: str
) -> AsyncIterator[str]:
    """A trigger making PostgreSQL refuse posts whose content is the yielded text."""
    function = f"{table_name}_refuse"
    await pg_raw.execute(
        f"""
        CREATE FUNCTION "{function}"() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.content = 'refused by the database' THEN
                RAISE EXCEPTION 'content refused by trigger';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON "{table_name}"
            FOR EACH ROW EXECUTE FUNCTION "{function}"();
        """
    )
    try:
        yield "refused by the database"
    finally:
        await pg_raw.execute(f'DROP TABLE IF EXISTS "{table_name}"')
        await pg_raw.execute(f'DROP FUNCTION IF EXISTS "{function}"()')


async def test_batch_create_posts_keeps_the_posts_the_database_accepted(
    service: LinkedInPostsService,
    refuse_content: str,
    pg_raw: asyncpg.Connection,
    table_name: str,
) -> None:
    with pytest.raises(BatchCreateError) as failed:
        await service.database.batch_create_posts(
            [post("first"), post(refuse_content), post("third")]
        )
    assert list(failed.value.failures) == [1]
    assert "content refused by trigger" in failed.value.failures[1]
    assert len(failed.value.created) == 2
    stored = await pg_raw.fetch(f'SELECT id::text FROM "{table_name}"')
    assert sorted(r["id"] for r in stored) == sorted(failed.value.created)


# -- batch_create_posts_with_api ----------------------------------------------------------


async def test_an_ai_failure_is_isolated_to_its_post(
    service: LinkedInPostsService,
    upstream: FakeUpstream,
    pg_raw: asyncpg.Connection,
    table_name: str,
) -> None:
    outcomes = await service.batch.batch_create_posts_with_api(
        [
            post("Thrilled to share great news", access_token=TOKEN),
            post(f"Analysis fails here {AI_OUTAGE_MARKER}", access_token=TOKEN),
            post("Proud of the team", access_token=TOKEN),
        ]
    )
    assert [o["database_status"] for o in outcomes] == ["created"] * 3
    assert [o["api_status"] for o in outcomes] == ["created"] * 3
    assert [o["analysis_status"] for o in outcomes] == ["analyzed", "failed", "analyzed"]
    assert [o["notification_status"] for o in outcomes] == ["sent"] * 3
    failed = outcomes[1]
    assert failed["analysis_error_type"] == "http_error"
    assert "503" in failed["analysis_error"]
    assert "analysis" not in failed
    assert outcomes[0]["analysis"]["sentiment"] == "positive"

    rows = {
        r["id"]: r["sentiment_score"]
        for r in await pg_raw.fetch(f'SELECT id::text, sentiment_score FROM "{table_name}"')
    }
    assert set(rows) == {o["post_id"] for o in outcomes}  # no post lost
    assert rows[failed["post_id"]] is None
    assert rows[outcomes[0]["post_id"]] == 1.0
    # The failing analysis was retried once (it carries an Idempotency-Key).
    assert upstream.calls("ai", "/analyze/sentiment") == 4
    assert len(upstream.published) == 3
    assert TOKEN not in json.dumps(outcomes)


async def test_every_step_fails_on_its_own_post(
    service: LinkedInPostsService,
    upstream: FakeUpstream,
    refuse_content: str,
    pg_raw: asyncpg.Connection,
    table_name: str,
) -> None:
    upstream.fail("notify", 503)
    outcomes = await service.batch.batch_create_posts_with_api(
        [
            post("Publishes fine", access_token=TOKEN),
            {"user_id": "ada"},  # invalid: no content
            post(refuse_content, access_token=TOKEN),
            post("Token expired", access_token=EXPIRED_TOKEN),
        ]
    )
    ok, invalid, refused, expired = outcomes
    assert (ok["database_status"], ok["api_status"], ok["analysis_status"]) == (
        "created",
        "created",
        "analyzed",
    )
    assert ok["notification_status"] == "failed"
    assert invalid["database_status"] == "failed"
    assert "posts_data[1]['content'] is required" in invalid["database_error"]
    assert refused["database_status"] == "failed"
    assert "content refused by trigger" in refused["database_error"]
    for skipped in (invalid, refused):
        assert "post_id" not in skipped
        assert (skipped["api_status"], skipped["analysis_status"]) == ("skipped", "skipped")
    assert expired["database_status"] == "created"
    assert expired["api_status"] == "failed"
    assert "401" in expired["api_error"]
    assert EXPIRED_TOKEN not in expired["api_error"]
    assert expired["analysis_status"] == "analyzed"
    assert await pg_raw.fetchval(f'SELECT count(*) FROM "{table_name}"') == 2
    assert upstream.calls("linkedin", "/v2/ugcPosts") == 2  # nothing for unsaved posts


async def test_the_ai_breaker_opens_and_later_posts_fail_fast(
    service: LinkedInPostsService, upstream: FakeUpstream
) -> None:
    upstream.fail("ai", 503)
    outcomes = await service.batch.batch_create_posts_with_api(
        [post(f"post {i}", access_token=TOKEN) for i in range(5)], concurrency=1
    )
    assert [o["database_status"] for o in outcomes] == ["created"] * 5
    assert [o["api_status"] for o in outcomes] == ["created"] * 5
    types = [o["analysis_error_type"] for o in outcomes]
    # 5 consecutive failures open it: posts 0 and 1 use 2 attempts each, post 2 one.
    assert types == ["http_error"] * 3 + ["circuit_open"] * 2
    assert upstream.calls("ai") == 5
    assert service.ai.manager.breaker_state() == "open"


async def test_batch_with_api_bounds_its_arguments(service: LinkedInPostsService) -> None:
    with pytest.raises(InvalidRequestError, match="concurrency"):
        await service.batch.batch_create_posts_with_api([], concurrency=0)
    with pytest.raises(InvalidRequestError, match="at most 500"):
        await service.batch.batch_create_posts_with_api([post("x")] * 501)


# -- dedicated API clients ----------------------------------------------------------------


async def test_linkedin_api(service: LinkedInPostsService, upstream: FakeUpstream) -> None:
    api = service.linkedin
    data = post("Hello", access_token=TOKEN, post_id="3f1e7f0e-0000-4000-8000-000000000001")
    first = await api.create_linkedin_post(data)
    again = await api.create_linkedin_post(data)  # same Idempotency-Key: same post
    assert first == again == {"id": "urn:li:share:1"}
    assert len(upstream.published) == 1

    profile = await api.get_linkedin_profile("ada", TOKEN)
    assert profile == {"id": "ada", "localizedFirstName": "Ada", "publishedPosts": 1}
    metrics = await api.get_linkedin_analytics(data["post_id"], TOKEN)
    assert metrics["post"] == "urn:li:share:1"
    assert metrics["views"] > 0
    with pytest.raises(HTTPStatusError) as missing:
        await api.get_linkedin_analytics("unknown", TOKEN)
    assert missing.value.status_code == 404
    with pytest.raises(AuthenticationError) as refused:
        await api.get_linkedin_profile("ada", EXPIRED_TOKEN)
    assert EXPIRED_TOKEN not in str(refused.value)
    with pytest.raises(InvalidRequestError, match="access_token"):
        await api.create_linkedin_post(post("no token"))


async def test_publish_is_retried_only_with_an_idempotency_key(
    service: LinkedInPostsService, upstream: FakeUpstream
) -> None:
    upstream.fail("linkedin", 503)
    keyed = post("x", access_token=TOKEN, post_id="3f1e7f0e-0000-4000-8000-000000000002")
    with pytest.raises(HTTPStatusError) as failed:
        await service.linkedin.create_linkedin_post(keyed)
    assert failed.value.status_code == 503
    keys = {r.idempotency_key for r in upstream.requests if r.path == "/v2/ugcPosts"}
    assert upstream.calls("linkedin", "/v2/ugcPosts") == 3
    assert keys == {f"linkedin-post-{keyed['post_id']}"}

    with pytest.raises(HTTPStatusError):
        await service.linkedin.create_linkedin_post(post("y", access_token=TOKEN))
    assert upstream.calls("linkedin", "/v2/ugcPosts") == 4  # unkeyed POST: one attempt


async def test_ai_analysis_api(service: LinkedInPostsService) -> None:
    ai = service.ai
    analysis = await ai.analyze_sentiment("Terrible news, sad day")
    assert analysis["sentiment"] == "negative"
    assert analysis["score"] == -1.0
    assert await ai.generate_hashtags("Shipping software together, with care") == [
        "#Shipping",
        "#Software",
        "#Together",
    ]
    assert await ai.optimize_content("Short. And long.", "brevity") == "Short."
    with pytest.raises(HTTPStatusError) as refused:
        await ai.optimize_content("text", "clickbait")
    assert refused.value.status_code == 422


async def test_notification_api(service: LinkedInPostsService, upstream: FakeUpstream) -> None:
    notify = service.notifications
    assert await notify.send_email_notification("ada@example.com", "Hi", "Body") is True
    assert await notify.send_email_notification("not-an-address", "Hi", "Body") is False
    assert await notify.send_push_notification("ada", "Title", "Message") is True
    assert [n["channel"] for n in upstream.notifications] == ["email", "push"]
    upstream.fail("notify", 500)
    assert await notify.send_push_notification("ada", "Title", "Message") is False
    assert upstream.calls("notify", "/notifications/push") == 2  # notifications: no retries


async def test_seed_shapes_work_as_the_seed_wrote_them(
    service: LinkedInPostsService, postgres_url: str, upstream: FakeUpstream
) -> None:
    outcomes = await service.batch.batch_create_posts_with_api(
        [post("Excited about asyncio pooling", access_token=TOKEN)]
    )
    post_id = outcomes[0]["post_id"]
    shapes = await tour(
        service,
        database_url=postgres_url,
        linkedin_url=upstream.url("linkedin"),
        post_id=post_id,
        user_id="ada",
        access_token=TOKEN,
    )
    assert shapes["pool_row_count"] == 1
    assert shapes["pool_content"] == "Excited about asyncio pooling"
    assert shapes["session_profile_status"] == 200
    assert shapes["session_profile"]["id"] == "ada"
    assert shapes["breaker_metrics"]["post"] == "urn:li:share:1"
    assert shapes["resilient_hashtags"] == ["#Asyncio", "#Excited", "#Pooling"]
    assert shapes["cached_same_post"] is True
    assert shapes["cache_hits"] == 1


# -- the one-command runner ---------------------------------------------------------------


def run_example(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.linkedin_posts", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_the_demo_runs_with_one_command_and_drops_its_table(
    postgres_url: str, pg_raw: asyncpg.Connection
) -> None:
    done = run_example("--database-url", postgres_url, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["table_created"] is True
    assert summary["table_dropped"] is True
    assert await pg_raw.fetchval("SELECT to_regclass($1)", summary["table"]) is None
    assert [o["analysis_status"] for o in summary["outcomes"]] == ["analyzed", "failed", "analyzed"]
    assert [o["api_status"] for o in summary["outcomes"]] == ["created", "created", "failed"]
    assert summary["search"] == {"100%": 1, "e_c": 1}
    assert summary["deleted"] is True
    assert "likes_count" in summary["refused_update"]


async def test_the_demo_leaves_an_existing_table_as_it_found_it(
    postgres_url: str, pg_raw: asyncpg.Connection, table_name: str
) -> None:
    async with open_service(
        postgres_url,
        linkedin_url="http://127.0.0.1:1",
        ai_url="http://127.0.0.1:1",
        notification_url="http://127.0.0.1:1",
        table=table_name,
    ) as opened:
        await opened.database.create_schema()
        kept = await opened.database.create_post(post("mine, not the demo's"))
    try:
        done = run_example("--database-url", postgres_url, "--table", table_name)
        assert done.returncode == 0, done.stderr
        assert "already there, reused" in done.stdout
        rows = await pg_raw.fetch(f'SELECT id::text FROM "{table_name}"')
        assert [r["id"] for r in rows] == [kept]
    finally:
        await pg_raw.execute(f'DROP TABLE IF EXISTS "{table_name}"')


def test_the_runner_reports_an_unreachable_database() -> None:
    done = run_example("--database-url", f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    assert done.returncode == 2
    assert "error: cannot connect" in done.stderr
    assert "Traceback" not in done.stderr
