"""Seed 002's ``BatchOperations.batch_create_posts_with_api``, isolated per operation.

For each post: insert it (all inserts in one grouped iogate batch), publish
it through the posts API, have the AI API score it and store the scores,
then push a notification to its author. Each step of each post has its own
outcome: an AI outage, a refused publish or a failed notification is
reported on that post and stops nothing else, and a created post is never
lost because a later call failed. Only a post the database refused skips its
API calls (there is nothing to publish).

The seed caught ``Exception`` around ``asyncio.gather``; this catches only
iogate's errors, so a bug in this code still surfaces as one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from iogate.errors import InvalidRequestError, IogateError

from .clients import AIAnalysisAPI, LinkedInAPI, NotificationAPI
from .database import MAX_BATCH_POSTS, LinkedInPostsDatabase, NewPost

__all__ = ["MAX_CONCURRENCY", "BatchOperations", "PostOutcome"]

MAX_CONCURRENCY = 50

Status = Literal["created", "analyzed", "sent", "failed", "skipped"]


@dataclass(slots=True, kw_only=True)
class PostOutcome:
    """What happened to one post; ``to_dict()`` is the seed's result dict, extended."""

    index: int
    post_id: str | None = None
    database_status: Status = "skipped"
    database_error: str | None = None
    api_status: Status = "skipped"
    api_response: dict[str, Any] | None = None
    api_error: str | None = None
    analysis_status: Status = "skipped"
    analysis: dict[str, Any] | None = None
    analysis_error: str | None = None
    analysis_error_type: str | None = None
    notification_status: Status = "skipped"

    def to_dict(self) -> dict[str, Any]:
        """Only the keys that apply, as the seed did (``api_error`` only on failure)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


class BatchOperations:
    """``BatchOperations(database, api)`` as in the seed, plus the AI and notification clients."""

    def __init__(
        self,
        database: LinkedInPostsDatabase,
        api: LinkedInAPI,
        ai: AIAnalysisAPI | None = None,
        notifications: NotificationAPI | None = None,
    ) -> None:
        self.database = database
        self.api = api
        self.ai = ai
        self.notifications = notifications

    async def batch_create_posts_with_api(
        self, posts_data: Sequence[Mapping[str, Any]], *, concurrency: int = 10
    ) -> list[dict[str, Any]]:
        """Create, publish, analyse and notify; one outcome dict per post, in order.

        An invalid post is reported on its own outcome (``database_status``
        "failed") instead of refusing the batch. ``access_token`` in a post's
        data is used for publishing only: it is never stored or reported.
        """
        if isinstance(concurrency, bool) or not 1 <= concurrency <= MAX_CONCURRENCY:
            raise InvalidRequestError(
                f"concurrency must be from 1 to {MAX_CONCURRENCY}, got {concurrency!r}"
            )
        if isinstance(posts_data, str | bytes) or not isinstance(posts_data, Sequence):
            raise InvalidRequestError("posts_data must be a list of post dicts")
        if len(posts_data) > MAX_BATCH_POSTS:
            raise InvalidRequestError(
                f"posts_data has {len(posts_data)} posts; at most {MAX_BATCH_POSTS} per batch"
            )
        outcomes = [PostOutcome(index=i) for i in range(len(posts_data))]
        valid: dict[int, NewPost] = {}
        for index, data in enumerate(posts_data):
            try:
                valid[index] = NewPost.from_data(data, at=f"posts_data[{index}]")
            except InvalidRequestError as exc:
                _refused(outcomes[index], str(exc))
        results = await self.database.insert_posts(list(valid.values()))
        created: list[int] = []
        for (index, post), result in zip(valid.items(), results, strict=True):
            if result.success:
                outcomes[index].post_id = post.id
                outcomes[index].database_status = "created"
                created.append(index)
            else:
                _refused(outcomes[index], result.error or "insert failed")

        gate = asyncio.Semaphore(concurrency)

        async def follow_up(index: int) -> None:
            async with gate:
                await self._follow_up(valid[index], posts_data[index], outcomes[index])

        await asyncio.gather(*(follow_up(index) for index in created))
        return [outcome.to_dict() for outcome in outcomes]

    async def _follow_up(
        self, post: NewPost, data: Mapping[str, Any], outcome: PostOutcome
    ) -> None:
        """Publish and analyse concurrently, then notify; every step isolated."""
        await asyncio.gather(self._publish(post, data, outcome), self._analyse(post, outcome))
        await self._notify(post, outcome)

    async def _publish(self, post: NewPost, data: Mapping[str, Any], outcome: PostOutcome) -> None:
        request = {
            "post_id": post.id,
            "user_id": post.user_id,
            "content": post.content,
            "access_token": data.get("access_token"),
        }
        try:
            response = await self.api.create_linkedin_post(request)
        except IogateError as exc:
            outcome.api_status, outcome.api_error = "failed", str(exc)
        else:
            outcome.api_status, outcome.api_response = "created", response

    async def _analyse(self, post: NewPost, outcome: PostOutcome) -> None:
        if self.ai is None:
            return
        try:
            analysis = await self.ai.analyze_sentiment(post.content)
            await self.database.update_post(
                post.id,
                {
                    "sentiment_score": analysis["score"],
                    "readability_score": analysis["readability"],
                    "engagement_prediction": analysis["engagement_prediction"],
                },
            )
        except IogateError as exc:
            outcome.analysis_status = "failed"
            outcome.analysis_error, outcome.analysis_error_type = str(exc), exc.error_type
        else:
            outcome.analysis_status, outcome.analysis = "analyzed", analysis

    async def _notify(self, post: NewPost, outcome: PostOutcome) -> None:
        if self.notifications is None:
            return
        published = outcome.api_status == "created"
        title = "Your post is live" if published else "Your post is saved"
        message = f"Post {post.id} " + ("was published" if published else "was saved as a draft")
        if outcome.analysis is not None:
            message += f" (sentiment: {outcome.analysis['sentiment']})"
        sent = await self.notifications.send_push_notification(post.user_id, title, message)
        outcome.notification_status = "sent" if sent else "failed"


def _refused(outcome: PostOutcome, error: str) -> None:
    outcome.database_status, outcome.database_error = "failed", error
