"""Seed 002's dedicated API clients, each on its own named ``AsyncAPIManager``.

The seed gave every client a raw ``aiohttp`` session and wrapped each call in
``try/except Exception: raise APIError(...)``, which also turned its own
``KeyError``s and cancellations into "API errors". Here each client holds an
iogate API manager, registered on the orchestrator under its own name with
its own timeout, retry policy and circuit breaker (``API_SETTINGS``), so a
slow AI service cannot trip the posts API's breaker. Methods keep the seed's
names and return shapes; a failure raises the matching ``iogate.errors``
class (see ``failures.raise_for_api``).

Retries: iogate never repeats a POST that may have reached the upstream
unless it carries an ``Idempotency-Key``. Publishing a post sends one
derived from the post's database id, so a retried publish cannot create the
post twice; analysis calls are side-effect free and say so the same way;
notifications are not retried at all (a duplicate e-mail is worse than a
late one).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from iogate import (
    AsyncAPIManager,
    CircuitBreakerConfig,
    RetryPolicy,
    track_api_operation,
)
from iogate.errors import APIError, InvalidRequestError

from .failures import raise_for_api

__all__ = [
    "AI_ANALYSIS_API",
    "API_SETTINGS",
    "LINKEDIN_API",
    "NOTIFICATION_API",
    "AIAnalysisAPI",
    "ApiSettings",
    "LinkedInAPI",
    "NotificationAPI",
]

logger = logging.getLogger("examples.linkedin_posts")

_ANALYSIS_KEYS = ("sentiment", "score", "readability", "engagement_prediction")


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """How one upstream is called: its resource name and resilience."""

    name: str
    timeout: float
    retry: RetryPolicy
    circuit_breaker: CircuitBreakerConfig
    max_connections: int = 20

    def manager(self, base_url: str) -> AsyncAPIManager:
        return AsyncAPIManager(
            base_url,
            max_connections=self.max_connections,
            timeout=self.timeout,
            retry=self.retry,
            circuit_breaker=self.circuit_breaker,
            name=self.name,
        )


LINKEDIN_API = ApiSettings(
    name="linkedin_api",
    timeout=10.0,
    retry=RetryPolicy(attempts=3, backoff_initial=0.1, backoff_max=1.0),
    circuit_breaker=CircuitBreakerConfig(failure_threshold=5, recovery_timeout=30.0),
)
AI_ANALYSIS_API = ApiSettings(
    name="ai_analysis_api",
    timeout=5.0,
    retry=RetryPolicy(attempts=2, backoff_initial=0.05, backoff_max=0.5),
    # Consecutive failures only: a few bad inputs must not look like an outage.
    circuit_breaker=CircuitBreakerConfig(
        failure_threshold=5, recovery_timeout=15.0, failure_ratio=None
    ),
)
NOTIFICATION_API = ApiSettings(
    name="notification_api",
    timeout=5.0,
    retry=RetryPolicy(attempts=1),
    circuit_breaker=CircuitBreakerConfig(failure_threshold=3, recovery_timeout=30.0),
)
API_SETTINGS = (LINKEDIN_API, AI_ANALYSIS_API, NOTIFICATION_API)


class LinkedInAPI:
    """The posts API: publish a post, read a profile, read a post's metrics."""

    def __init__(self, manager: AsyncAPIManager) -> None:
        self.manager = manager

    @track_api_operation("create_linkedin_post")
    async def create_linkedin_post(self, post_data: dict[str, Any]) -> dict[str, Any]:
        """Publish ``post_data`` (user_id, content, access_token[, post_id])."""
        for key in ("user_id", "content", "access_token"):
            if not post_data.get(key):
                raise InvalidRequestError(f"create_linkedin_post: post_data[{key!r}] is required")
        headers = _bearer(post_data["access_token"])
        if post_data.get("post_id"):
            headers["Idempotency-Key"] = f"linkedin-post-{post_data['post_id']}"
        result = await self.manager.post(
            "/v2/ugcPosts",
            {
                "author": f"urn:li:person:{post_data['user_id']}",
                "lifecycleState": "PUBLISHED",
                "specificContent": {
                    "com.linkedin.ugc.ShareContent": {
                        "shareCommentary": {"text": post_data["content"]},
                        "shareMediaCategory": "NONE",
                    }
                },
                "visibility": {"com.linkedin.ugc.MemberNetworkVisibility": "PUBLIC"},
            },
            headers=headers,
        )
        data: dict[str, Any] = raise_for_api(result, "create_linkedin_post").data
        return data

    @track_api_operation("get_linkedin_profile")
    async def get_linkedin_profile(self, user_id: str, access_token: str) -> dict[str, Any]:
        result = await self.manager.get(
            f"/v2/people/{_segment(user_id, 'user_id')}", headers=_bearer(access_token)
        )
        data: dict[str, Any] = raise_for_api(result, "get_linkedin_profile").data
        return data

    @track_api_operation("get_linkedin_analytics")
    async def get_linkedin_analytics(self, post_id: str, access_token: str) -> dict[str, Any]:
        result = await self.manager.get(
            f"/v2/socialMetrics/{_segment(post_id, 'post_id')}", headers=_bearer(access_token)
        )
        data: dict[str, Any] = raise_for_api(result, "get_linkedin_analytics").data
        return data


class AIAnalysisAPI:
    """Sentiment, hashtags and rewriting; every call is safe to repeat."""

    def __init__(self, manager: AsyncAPIManager) -> None:
        self.manager = manager

    @track_api_operation("analyze_sentiment")
    async def analyze_sentiment(self, text: str) -> dict[str, Any]:
        """``{"sentiment", "score", "readability", "engagement_prediction"}``."""
        data = await self._post("/analyze/sentiment", {"text": text})
        missing = [key for key in _ANALYSIS_KEYS if not isinstance(data, dict) or key not in data]
        if missing:
            # A malformed answer is the upstream's failure, reported like one.
            raise APIError(f"analyze_sentiment: the answer lacks {', '.join(missing)}")
        analysis: dict[str, Any] = data
        return analysis

    @track_api_operation("generate_hashtags")
    async def generate_hashtags(self, content: str) -> list[str]:
        data = await self._post("/generate/hashtags", {"content": content})
        hashtags: list[str] = data.get("hashtags", [])
        return hashtags

    @track_api_operation("optimize_content")
    async def optimize_content(self, content: str, optimization_type: str) -> str:
        data = await self._post(
            "/optimize/content", {"content": content, "optimization_type": optimization_type}
        )
        optimized: str = data.get("optimized_content", content)
        return optimized

    async def _post(self, endpoint: str, body: dict[str, str]) -> Any:
        # Analysis has no side effects: the key makes iogate willing to retry
        # the POST after a 502/503/504 or a timeout.
        digest = hashlib.sha256(repr(sorted(body.items())).encode()).hexdigest()[:32]
        result = await self.manager.post(
            endpoint, body, headers={"Idempotency-Key": f"analysis-{digest}"}
        )
        return raise_for_api(result, endpoint.strip("/").replace("/", "_")).data


class NotificationAPI:
    """E-mail and push; as in the seed, a failure is logged and answered False."""

    def __init__(self, manager: AsyncAPIManager) -> None:
        self.manager = manager

    @track_api_operation("send_email_notification")
    async def send_email_notification(self, user_email: str, subject: str, content: str) -> bool:
        result = await self.manager.post(
            "/notifications/email", {"to": user_email, "subject": subject, "content": content}
        )
        if not result.success:
            logger.warning("e-mail notification not sent: %s", result.error)
        return result.success

    @track_api_operation("send_push_notification")
    async def send_push_notification(self, user_id: str, title: str, message: str) -> bool:
        result = await self.manager.post(
            "/notifications/push", {"user_id": user_id, "title": title, "message": message}
        )
        if not result.success:
            logger.warning("push notification not sent: %s", result.error)
        return result.success


def _bearer(access_token: str) -> dict[str, str]:
    # iogate treats Authorization as secret: it never appears in a Result,
    # an error message or the stats.
    if not isinstance(access_token, str) or not access_token:
        raise InvalidRequestError("access_token must be a non-empty string")
    return {"Authorization": f"Bearer {access_token}"}


def _segment(value: str, name: str) -> str:
    """One path segment; iogate would refuse '..' or '/' anyway, this names the field."""
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidRequestError(f"{name} must be a non-empty string of at most 200 characters")
    return quote(value, safe="")
