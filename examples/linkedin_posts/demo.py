"""The short demo ``python -m examples.linkedin_posts`` runs.

It starts the fake upstreams in-process, opens the service on PostgreSQL,
creates its own table (a unique name unless ``table`` is given), calls every
dedicated function once, and cleans up: it drops the table only if it
created it, otherwise it deletes only the posts it inserted.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from iogate.errors import InvalidRequestError

from .fake_upstream import AI_OUTAGE_MARKER, EXPIRED_TOKEN, FakeUpstream
from .seed_shapes import tour
from .service import DEFAULT_DATABASE_URL, LinkedInPostsService, open_service

__all__ = ["ACCESS_TOKEN", "DEMO_USER", "run_demo"]

DEMO_USER = "ada"
ACCESS_TOKEN = "demo-access-token"

Say = Callable[[str], None]


def _quiet(line: str) -> None:
    return None


async def run_demo(
    database_url: str = DEFAULT_DATABASE_URL,
    *,
    table: str | None = None,
    keep: bool = False,
    say: Say = _quiet,
) -> dict[str, Any]:
    """Run the demo; returns a JSON-friendly summary of what happened."""
    table = table or f"linkedin_posts_demo_{uuid.uuid4().hex[:8]}"
    async with (
        FakeUpstream() as upstream,
        open_service(
            database_url,
            linkedin_url=upstream.url("linkedin"),
            ai_url=upstream.url("ai"),
            notification_url=upstream.url("notify"),
            table=table,
        ) as service,
    ):
        created_table = await service.database.create_schema()
        say(f"table {table!r}: {'created' if created_table else 'already there, reused'}")
        inserted: list[str] = []
        try:
            summary = await _steps(service, upstream, database_url, inserted, say)
        finally:
            if keep:
                say(f"kept table {table!r} (--keep)")
            elif created_table:
                await service.database.drop_schema()
                say(f"dropped table {table!r}")
            else:
                for post_id in inserted:
                    await service.database.delete_post(post_id)
                say(f"deleted the {len(inserted)} demo posts from the existing table {table!r}")
        summary.update(
            table=table,
            table_created=created_table,
            table_dropped=created_table and not keep,
            stats=_stats(service),
        )
        return summary


async def _steps(
    service: LinkedInPostsService,
    upstream: FakeUpstream,
    database_url: str,
    inserted: list[str],
    say: Say,
) -> dict[str, Any]:
    db = service.database
    summary: dict[str, Any] = {}

    post_id = await db.create_post(
        {"user_id": DEMO_USER, "content": "Thrilled: our team hit 100% uptime this quarter!"}
    )
    inserted.append(post_id)
    say(f"create_post -> {post_id}")
    post = await db.get_post_by_id(post_id)
    if post is None:
        raise RuntimeError(f"post {post_id} was created but cannot be read back")
    say(f"get_post_by_id -> {post['content']!r} ({post['visibility']})")
    updated = await db.update_post(post_id, {"visibility": "connections", "tone": "celebratory"})
    say(f"update_post visibility, tone -> {updated}")
    try:
        await db.update_post(post_id, {"likes_count": 1_000_000})
    except InvalidRequestError as exc:
        summary["refused_update"] = str(exc)
        say(f"update_post likes_count -> refused: {exc}")

    batch_ids = await db.batch_create_posts(
        [
            {"user_id": DEMO_USER, "content": "100 percent of our deploys are now automated."},
            {"user_id": DEMO_USER, "content": "Naming tip: snake_case for Python functions."},
            {"user_id": "grace", "content": "Grateful for a great mentor this year."},
        ]
    )
    inserted.extend(batch_ids)
    say(f"batch_create_posts -> {len(batch_ids)} posts in one grouped batch")
    percent = await db.search_posts("100%")
    underscore = await db.search_posts("e_c")
    summary["search"] = {"100%": len(percent), "e_c": len(underscore)}
    say(f"search_posts '100%' -> {len(percent)} post (not the '100 percent' one)")
    say(f"search_posts 'e_c' -> {len(underscore)} post ('snake_case', '_' taken literally)")
    first_page = await db.get_posts_by_user(DEMO_USER, limit=2, offset=0)
    second_page = await db.get_posts_by_user(DEMO_USER, limit=2, offset=2)
    summary["pages"] = [len(first_page), len(second_page)]
    say(f"get_posts_by_user {DEMO_USER!r} -> pages of {len(first_page)} and {len(second_page)}")

    outcomes = await service.batch.batch_create_posts_with_api(
        [
            {
                "user_id": DEMO_USER,
                "content": "Excited to announce our new open-source release! #python",
                "access_token": ACCESS_TOKEN,
            },
            {
                "user_id": DEMO_USER,
                "content": f"This one trips the AI service {AI_OUTAGE_MARKER}.",
                "access_token": ACCESS_TOKEN,
            },
            {
                "user_id": "grace",
                "content": "Hiring: two backend engineers.",
                "access_token": EXPIRED_TOKEN,
            },
        ]
    )
    inserted.extend(o["post_id"] for o in outcomes if o.get("post_id"))
    summary["outcomes"] = [
        {key: outcome.get(key) for key in _OUTCOME_COLUMNS} for outcome in outcomes
    ]
    say("batch_create_posts_with_api:")
    for row, outcome in zip(summary["outcomes"], outcomes, strict=True):
        say("  " + "  ".join(f"{key}={row[key]}" for key in _OUTCOME_COLUMNS))
        for key in ("database_error", "api_error", "analysis_error"):
            if key in outcome:
                say(f"      {key}: {outcome[key]}")

    published = outcomes[0].get("post_id")
    if published is None or outcomes[0].get("api_status") != "created":
        raise RuntimeError(f"the first post was not published: {outcomes[0]}")
    metrics = await service.linkedin.get_linkedin_analytics(published, ACCESS_TOKEN)
    await db.record_engagement(
        published,
        views=metrics["views"],
        likes=metrics["likes"],
        comments=metrics["comments"],
        shares=metrics["shares"],
    )
    analytics = await db.get_post_analytics(published)
    summary["analytics"] = analytics
    say(f"get_post_analytics -> {analytics}")
    profile = await service.linkedin.get_linkedin_profile(DEMO_USER, ACCESS_TOKEN)
    hashtags = await service.ai.generate_hashtags(post["content"])
    shorter = await service.ai.optimize_content(
        "We shipped it. It took a year. Thanks, team!", "brevity"
    )
    emailed = await service.notifications.send_email_notification(
        "ada@example.com", "Weekly digest", f"{len(inserted)} posts this week"
    )
    summary.update(profile=profile, hashtags=hashtags, optimized=shorter, emailed=emailed)
    say(f"get_linkedin_profile -> {profile}")
    say(f"generate_hashtags -> {hashtags}; optimize_content -> {shorter!r}")
    say(f"send_email_notification -> {emailed}")

    summary["seed_shapes"] = await tour(
        service,
        database_url=database_url,
        linkedin_url=upstream.url("linkedin"),
        post_id=published,
        user_id=DEMO_USER,
        access_token=ACCESS_TOKEN,
    )
    shapes = summary["seed_shapes"]
    say(f"DatabaseConnectionPool: counted {shapes['pool_row_count']} rows on a raw connection")
    say(f"ExternalAPISession GET /v2/people/{DEMO_USER} -> {shapes['session_profile_status']}")
    say(f"circuit_breaker_api_call(get_linkedin_analytics) -> {shapes['breaker_metrics']}")
    say(f"resilient_api_operation(generate_hashtags) -> {shapes['resilient_hashtags']}")
    say(f"@cached get_post_by_id_cached -> cache hits: {shapes['cache_hits']}")

    deleted = await db.delete_post(post_id)
    gone = await db.get_post_by_id(post_id) is None
    inserted.remove(post_id)
    summary["deleted"] = deleted and gone
    say(f"delete_post -> {deleted}; get_post_by_id afterwards -> None: {gone}")
    summary["posts_created"] = len(inserted) + 1
    summary["notifications_received"] = len(upstream.notifications)
    return summary


_OUTCOME_COLUMNS = (
    "index",
    "database_status",
    "api_status",
    "analysis_status",
    "notification_status",
)


def _stats(service: LinkedInPostsService) -> dict[str, dict[str, Any]]:
    stats = service.orchestrator.get_stats()
    resources = {**stats["databases"], **stats["apis"]}
    return {
        name: {"operations": entry["count"], "errors": entry["errors_by_type"]}
        for name, entry in resources.items()
    }
