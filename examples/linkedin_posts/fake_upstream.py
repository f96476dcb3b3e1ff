"""A local stand-in for the three upstreams the example calls.

Three small aiohttp applications, each on 127.0.0.1 and a port the OS picks
(three hosts, as in production, so the seed's absolute endpoints such as
``/v2/ugcPosts`` work unchanged, also through a raw ``ExternalAPISession``):

* ``linkedin``: the posts API (``POST /v2/ugcPosts``, ``GET /v2/people/{id}``,
  ``GET /v2/socialMetrics/{id}``); needs ``Authorization: Bearer <token>``
  (``expired-token`` is refused with 401) and honours ``Idempotency-Key``:
  a repeated publish answers the first one's post instead of a new one;
* ``ai``: ``POST /analyze/sentiment``, ``/generate/hashtags``,
  ``/optimize/content``, deterministic word-count "models"; a text
  containing ``AI_OUTAGE_MARKER`` is answered 503, so a demo or a test can
  make the analysis of exactly one post fail;
* ``notify``: ``POST /notifications/email`` and ``/notifications/push``.

``fail(api, status)`` makes every request to one API answer ``status``
until ``heal(api)``. Everything received is kept for inspection
(``requests``, ``published``, ``notifications``), bounded.

Run alone with ``python -m examples.linkedin_posts.fake_upstream`` to poke
at it with curl.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

__all__ = ["AI_OUTAGE_MARKER", "APIS", "EXPIRED_TOKEN", "FakeUpstream", "RecordedRequest"]

AI_OUTAGE_MARKER = "[ai-outage]"
ApiName = Literal["linkedin", "ai", "notify"]
APIS: tuple[ApiName, ...] = ("linkedin", "ai", "notify")
MAX_RECORDED = 10_000
EXPIRED_TOKEN = "expired-token"

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_POSITIVE = frozenset(
    {"great", "excited", "proud", "happy", "love", "thrilled", "grateful", "success", "win"}
)
_NEGATIVE = frozenset({"sad", "angry", "fail", "failed", "bad", "terrible", "layoffs", "loss"})
_OPTIMIZATIONS = ("engagement", "brevity", "professional")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    api: ApiName
    method: str
    path: str
    idempotency_key: str | None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeUpstream:
    """``async with FakeUpstream() as upstream: upstream.url("ai")``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.ports: dict[ApiName, int] = {}
        self.requests: deque[RecordedRequest] = deque(maxlen=MAX_RECORDED)
        self.published: dict[str, dict[str, Any]] = {}  # urn -> post
        self.notifications: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDED)
        self._urn_by_key: dict[str, str] = {}
        self._outages: dict[ApiName, int] = {}
        self._runners: list[web.AppRunner] = []

    def url(self, api: ApiName) -> str:
        """The base URL of one API (``http://127.0.0.1:PORT``)."""
        if api not in self.ports:
            raise RuntimeError("FakeUpstream is not started: use async with or await start()")
        return f"http://{self.host}:{self.ports[api]}"

    def fail(self, api: ApiName, status: int = 503) -> None:
        """Answer every request to ``api`` with ``status`` until ``heal(api)``."""
        self._outages[api] = status

    def heal(self, api: ApiName) -> None:
        self._outages.pop(api, None)

    def calls(self, api: ApiName, path_prefix: str = "/") -> int:
        """How many requests ``api`` received on paths starting with ``path_prefix``."""
        return sum(1 for r in self.requests if r.api == api and r.path.startswith(path_prefix))

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        if self._runners:
            return
        try:
            self.ports["linkedin"] = await self._serve(self._linkedin_app())
            self.ports["ai"] = await self._serve(self._ai_app())
            self.ports["notify"] = await self._serve(self._notify_app())
        except BaseException:
            await self.close()
            raise

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, self.host, 0).start()  # port 0: the OS picks a free one
        return int(runner.addresses[0][1])

    async def close(self) -> None:
        runners, self._runners = self._runners, []
        self.ports.clear()
        for runner in runners:
            await runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the applications -------------------------------------------------------------

    def _linkedin_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware("linkedin", needs_token=True)])
        app.router.add_post("/v2/ugcPosts", self._publish)
        app.router.add_get("/v2/people/{user_id}", self._profile)
        app.router.add_get("/v2/socialMetrics/{post_id}", self._metrics)
        return app

    def _ai_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware("ai")])
        app.router.add_post("/analyze/sentiment", self._sentiment)
        app.router.add_post("/generate/hashtags", self._hashtags)
        app.router.add_post("/optimize/content", self._optimize)
        return app

    def _notify_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware("notify")])
        app.router.add_post("/notifications/email", self._email)
        app.router.add_post("/notifications/push", self._push)
        return app

    def _middleware(self, api: ApiName, *, needs_token: bool = False) -> Any:
        @web.middleware
        async def record_and_fault(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.requests.append(
                RecordedRequest(
                    api, request.method, request.path, request.headers.get("Idempotency-Key")
                )
            )
            status = self._outages.get(api)
            if status is not None:
                return _error(status, "injected outage")
            if needs_token:
                scheme, _, token = request.headers.get("Authorization", "").partition(" ")
                if scheme != "Bearer" or not token or token == EXPIRED_TOKEN:
                    return _error(401, "invalid access token")
            return await handler(request)

        return record_and_fault

    async def _publish(self, request: web.Request) -> web.Response:
        body = await _json(request)
        author = body.get("author", "")
        content = body.get("specificContent", {}).get("com.linkedin.ugc.ShareContent", {})
        text = content.get("shareCommentary", {}).get("text")
        if not isinstance(author, str) or not author.startswith("urn:li:person:"):
            return _error(422, "author must be urn:li:person:<id>")
        if not isinstance(text, str) or not text:
            return _error(422, "shareCommentary.text is required")
        key = request.headers.get("Idempotency-Key")
        if key is not None and key in self._urn_by_key:
            return web.json_response({"id": self._urn_by_key[key]}, status=201)
        urn = f"urn:li:share:{len(self.published) + 1}"
        self.published[urn] = {"id": urn, "author": author, "text": text, "key": key}
        if key is not None:
            self._urn_by_key[key] = urn
        return web.json_response({"id": urn}, status=201)

    async def _profile(self, request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        posts = sum(1 for p in self.published.values() if p["author"].endswith(f":{user_id}"))
        return web.json_response(
            {"id": user_id, "localizedFirstName": user_id.title(), "publishedPosts": posts}
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        post_id = request.match_info["post_id"]
        urn = self._urn_by_key.get(f"linkedin-post-{post_id}", post_id)
        post = self.published.get(urn)
        if post is None:
            return _error(404, f"no published post {post_id}")
        words = len(_WORD.findall(post["text"]))
        return web.json_response(
            {
                "post": urn,
                "views": 100 + 10 * words,
                "likes": 3 * words,
                "comments": words // 2,
                "shares": words // 4,
            }
        )

    async def _sentiment(self, request: web.Request) -> web.Response:
        text = (await _json(request)).get("text")
        if not isinstance(text, str) or not text:
            return _error(422, "text is required")
        if AI_OUTAGE_MARKER in text:
            return _error(503, "model unavailable for this input")
        return web.json_response(_analyse(text))

    async def _hashtags(self, request: web.Request) -> web.Response:
        content = (await _json(request)).get("content")
        if not isinstance(content, str) or not content:
            return _error(422, "content is required")
        # The three longest words of 5+ letters, ties alphabetical: deterministic.
        words = sorted(
            {w.lower() for w in _WORD.findall(content) if len(w) >= 5}, key=lambda w: (-len(w), w)
        )
        return web.json_response({"hashtags": ["#" + w.title() for w in words[:3]]})

    async def _optimize(self, request: web.Request) -> web.Response:
        body = await _json(request)
        content, kind = body.get("content"), body.get("optimization_type")
        if not isinstance(content, str) or not content:
            return _error(422, "content is required")
        if kind not in _OPTIMIZATIONS:
            return _error(422, f"optimization_type must be one of {', '.join(_OPTIMIZATIONS)}")
        if kind == "engagement":
            optimized = content.rstrip() + "\n\nWhat has your experience been?"
        elif kind == "brevity":
            optimized = re.split(r"(?<=[.!?])\s", content.strip(), maxsplit=1)[0]
        else:
            optimized = content.replace("!", ".")
        return web.json_response({"optimized_content": optimized})

    async def _email(self, request: web.Request) -> web.Response:
        body = await _json(request)
        if "@" not in str(body.get("to", "")):
            return _error(422, "to must be an e-mail address")
        return self._notified("email", body)

    async def _push(self, request: web.Request) -> web.Response:
        body = await _json(request)
        if not body.get("user_id") or not body.get("title"):
            return _error(422, "user_id and title are required")
        return self._notified("push", body)

    def _notified(self, channel: str, body: dict[str, Any]) -> web.Response:
        self.notifications.append({"channel": channel, **body})
        return web.json_response({"queued": True, "id": len(self.notifications)})


def _analyse(text: str) -> dict[str, Any]:
    words = [w.lower() for w in _WORD.findall(text)]
    positive = sum(w in _POSITIVE for w in words)
    negative = sum(w in _NEGATIVE for w in words)
    score = round((positive - negative) / max(1, positive + negative), 3)
    sentences = max(1, len(re.findall(r"[.!?]+", text)))
    readability = round(max(0.0, min(100.0, 120.0 - 3.0 * len(words) / sentences)), 1)
    hashtags = text.count("#")
    engagement = round(max(0.0, min(1.0, 0.3 + 0.1 * hashtags + 0.2 * score)), 3)
    label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    return {
        "sentiment": label,
        "score": score,
        "readability": readability,
        "engagement_prediction": engagement,
    }


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPUnprocessableEntity(text="body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPUnprocessableEntity(text="body must be a JSON object")
    return body


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": status, "message": message}, status=status)


async def _serve_forever() -> None:
    async with FakeUpstream() as upstream:
        for api in APIS:
            print(f"{api:>9}: {upstream.url(api)}")
        print("Ctrl-C to stop")
        await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(_serve_forever())
    except KeyboardInterrupt:
        pass
