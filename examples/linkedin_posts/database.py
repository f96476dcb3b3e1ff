"""Seed 002's ``LinkedInPostsDatabase``: dedicated post functions on iogate.

Same method names and return shapes as the seed (an id, a row dict or
``None``, ``True``/``False``, a list of rows), with the seed's defects fixed:

* ``update_post`` builds its ``SET`` clause only from ``UPDATABLE_COLUMNS``;
  the seed wrote ``f"{key} = ${n}"`` from the caller's dict keys, which is
  SQL injection through a key. An unknown key is refused by name.
* ``search_posts`` escapes ``%``, ``_`` and ``\\`` in the search term, so
  "100%" finds "100%" and not every post containing "100".
* ``get_posts_by_user`` and ``search_posts`` bound ``limit`` and ``offset``
  and order on a unique key, so pages never overlap or skip rows.
* ``batch_create_posts`` sends one identical ``INSERT`` per post through
  ``execute_batch_operations``; iogate groups them into one transaction on
  one connection (asyncpg's pipelined ``executemany``), one round trip for
  the lot instead of one per post.

Every statement goes through the orchestrator (pooled, timed, counted in
``get_stats()``); a failure raises the matching ``iogate.errors`` class.
The one identifier in the SQL, the table name, is checked against
``TABLE_NAME`` once, in the constructor, and quoted.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iogate import (
    AsyncOperationOrchestrator,
    Result,
    resilient_database_operation,
    track_database_operation,
)
from iogate.errors import InvalidRequestError, QueryError

from .failures import raise_for_database

__all__ = [
    "DEFAULT_TABLE",
    "MAX_BATCH_POSTS",
    "MAX_CONTENT_LENGTH",
    "MAX_OFFSET",
    "MAX_PAGE_SIZE",
    "UPDATABLE_COLUMNS",
    "VISIBILITIES",
    "BatchCreateError",
    "LinkedInPostsDatabase",
    "NewPost",
    "contains_pattern",
]

DEFAULT_TABLE = "linkedin_posts"
# Lower-case, unquoted-safe, short enough that "<table>_user_created" (the
# index) stays within PostgreSQL's 63-byte identifier limit.
TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")
MAX_PAGE_SIZE = 100
# A deep OFFSET makes the server read and discard every skipped row.
MAX_OFFSET = 10_000
MAX_SEARCH_LENGTH = 200
MAX_CONTENT_LENGTH = 3000  # LinkedIn's own limit for a post's commentary
MAX_BATCH_POSTS = 500
VISIBILITIES = ("public", "connections", "private")

# Column -> what it holds. Identity (id, user_id), timestamps and the
# engagement counters are not here: they are set by the service, not by edits.
UPDATABLE_COLUMNS: Mapping[str, str] = {
    "content": "post text",
    "post_type": "kind of post",
    "tone": "tone of voice",
    "target_audience": "intended readers",
    "visibility": "one of " + ", ".join(VISIBILITIES),
    "sentiment_score": "AI sentiment, -1..1",
    "readability_score": "AI readability, 0..100",
    "engagement_prediction": "AI engagement prediction, 0..1",
}

_TEXT_DEFAULTS = {"post_type": "general", "tone": "professional", "target_audience": "general"}


class BatchCreateError(QueryError):
    """Some posts of a batch were not inserted; the others were.

    ``created`` holds the ids that were inserted, ``failures`` maps the
    index of each failed post to its error.
    """

    def __init__(self, message: str, *, created: list[str], failures: dict[int, str]) -> None:
        super().__init__(message)
        self.created = created
        self.failures = failures


@dataclass(frozen=True, slots=True, kw_only=True)
class NewPost:
    """A post as validated for insertion (the seed read raw dict keys)."""

    id: str
    user_id: str
    content: str
    post_type: str
    tone: str
    target_audience: str
    visibility: str

    @classmethod
    def from_data(cls, post_data: Mapping[str, Any], *, at: str = "post_data") -> NewPost:
        """Validate the seed's ``post_data`` dict; unknown keys are ignored
        (the seed passes ``access_token`` alongside for the API)."""
        if not isinstance(post_data, Mapping):
            raise InvalidRequestError(f"{at} must be a dict, not {type(post_data).__name__}")
        user_id = _text(post_data, "user_id", at, max_length=200)
        content = _text(post_data, "content", at, max_length=MAX_CONTENT_LENGTH)
        extras = {
            name: _text(post_data, name, at, max_length=100, default=default)
            for name, default in _TEXT_DEFAULTS.items()
        }
        visibility = _text(post_data, "visibility", at, max_length=20, default="public")
        if visibility not in VISIBILITIES:
            raise InvalidRequestError(
                f"{at}['visibility'] must be one of {', '.join(VISIBILITIES)}, got {visibility!r}"
            )
        return cls(
            id=str(uuid.uuid4()),
            user_id=user_id,
            content=content,
            visibility=visibility,
            **extras,
        )

    def params(self) -> list[Any]:
        return [
            self.id,
            self.user_id,
            self.content,
            self.post_type,
            self.tone,
            self.target_audience,
            self.visibility,
        ]


def contains_pattern(term: str) -> str:
    """An ILIKE pattern matching ``term`` literally anywhere (with ``ESCAPE '\\'``)."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class LinkedInPostsDatabase:
    """Dedicated functions over one posts table on ``db_name`` (seed 002)."""

    def __init__(
        self,
        orchestrator: AsyncOperationOrchestrator,
        db_name: str = "posts_db",
        *,
        table: str = DEFAULT_TABLE,
    ) -> None:
        if not isinstance(table, str) or not TABLE_NAME.match(table):
            raise InvalidRequestError(
                f"table name must match {TABLE_NAME.pattern} (lower-case letters, digits, _), "
                f"got {table!r}"
            )
        self.orchestrator = orchestrator
        self.db_name = db_name
        self.table = table
        quoted = f'"{table}"'
        self._insert = (
            f"INSERT INTO {quoted} "
            "(id, user_id, content, post_type, tone, target_audience, visibility) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )
        self._quoted = quoted

    def __repr__(self) -> str:
        return f"<LinkedInPostsDatabase {self.db_name!r} table={self.table!r}>"

    # -- schema ---------------------------------------------------------------------

    async def create_schema(self) -> bool:
        """Create the table and its index if missing; True if the table is new.

        Idempotent. The caller uses the answer to drop only what it created.
        """
        existed = await self._scalar("SELECT to_regclass($1) IS NOT NULL", [self._quoted])
        t = self._quoted
        await self._run(
            f"""
            CREATE TABLE IF NOT EXISTS {t} (
                id uuid PRIMARY KEY,
                user_id text NOT NULL,
                content text NOT NULL CHECK (length(content) BETWEEN 1 AND {MAX_CONTENT_LENGTH}),
                post_type text NOT NULL DEFAULT 'general',
                tone text NOT NULL DEFAULT 'professional',
                target_audience text NOT NULL DEFAULT 'general',
                visibility text NOT NULL DEFAULT 'public'
                    CHECK (visibility IN ('public', 'connections', 'private')),
                sentiment_score double precision CHECK (sentiment_score BETWEEN -1 AND 1),
                readability_score double precision,
                engagement_prediction double precision,
                views_count bigint NOT NULL DEFAULT 0 CHECK (views_count >= 0),
                likes_count bigint NOT NULL DEFAULT 0 CHECK (likes_count >= 0),
                comments_count bigint NOT NULL DEFAULT 0 CHECK (comments_count >= 0),
                shares_count bigint NOT NULL DEFAULT 0 CHECK (shares_count >= 0),
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            None,
            "create table",
        )
        await self._run(
            f'CREATE INDEX IF NOT EXISTS "{self.table}_user_created" '
            f"ON {t} (user_id, created_at DESC, id DESC)",
            None,
            "create index",
        )
        return not existed

    async def drop_schema(self) -> None:
        """Drop the table (and its index); a missing table is not an error."""
        await self._run(f"DROP TABLE IF EXISTS {self._quoted}", None, "drop table")

    # -- dedicated functions (seed 002) ---------------------------------------------

    @track_database_operation("create_post")
    async def create_post(self, post_data: Mapping[str, Any]) -> str:
        """Insert one post; returns its new id."""
        post = NewPost.from_data(post_data)
        result = await self._run(self._insert, post.params(), "create_post")
        if result.rows_affected != 1:
            raise QueryError(f"create_post: expected 1 row inserted, got {result.rows_affected}")
        return post.id

    @track_database_operation("get_post_by_id")
    async def get_post_by_id(self, post_id: str) -> dict[str, Any] | None:
        """The post as a dict of JSON-friendly values, or None."""
        rows = await self._read(
            f"SELECT * FROM {self._quoted} WHERE id = $1", [_post_id(post_id)], "get_post_by_id"
        )
        return rows[0] if rows else None

    @track_database_operation("update_post")
    async def update_post(self, post_id: str, updates: Mapping[str, Any]) -> bool:
        """Set whitelisted columns of one post; True if the post exists.

        Raises ``InvalidRequestError`` naming every key that is not in
        ``UPDATABLE_COLUMNS`` before anything is sent.
        """
        columns = _updatable(updates)
        assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(columns, start=1))
        query = (
            f"UPDATE {self._quoted} SET {assignments}, updated_at = now() "
            f"WHERE id = ${len(columns) + 1}"
        )
        params = [updates[column] for column in columns] + [_post_id(post_id)]
        result = await self._run(query, params, "update_post")
        return result.rows_affected == 1

    @track_database_operation("delete_post")
    async def delete_post(self, post_id: str) -> bool:
        """Delete one post; True if it existed."""
        result = await self._run(
            f"DELETE FROM {self._quoted} WHERE id = $1", [_post_id(post_id)], "delete_post"
        )
        return result.rows_affected == 1

    @track_database_operation("get_posts_by_user")
    async def get_posts_by_user(
        self, user_id: str, limit: int = 10, offset: int = 0
    ) -> list[dict[str, Any]]:
        """One page of a user's posts, newest first."""
        _check_range("limit", limit, 1, MAX_PAGE_SIZE)
        _check_range("offset", offset, 0, MAX_OFFSET)
        return await self._read(
            f"SELECT * FROM {self._quoted} WHERE user_id = $1 "
            "ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
            [user_id, limit, offset],
            "get_posts_by_user",
        )

    @track_database_operation("search_posts")
    async def search_posts(self, search_term: str, limit: int = 10) -> list[dict[str, Any]]:
        """Posts whose content contains ``search_term`` (case-insensitive, literally)."""
        if not isinstance(search_term, str) or not search_term.strip():
            raise InvalidRequestError("search_term must be a non-empty string")
        if len(search_term) > MAX_SEARCH_LENGTH:
            raise InvalidRequestError(
                f"search_term is {len(search_term)} characters; at most {MAX_SEARCH_LENGTH}"
            )
        _check_range("limit", limit, 1, MAX_PAGE_SIZE)
        return await self._read(
            f"SELECT * FROM {self._quoted} WHERE content ILIKE $1 ESCAPE '\\' "
            "ORDER BY created_at DESC, id DESC LIMIT $2",
            [contains_pattern(search_term), limit],
            "search_posts",
        )

    @track_database_operation("get_post_analytics")
    async def get_post_analytics(self, post_id: str) -> dict[str, Any]:
        """Scores and counters of one post, ``{}`` if there is no such post."""
        rows = await self._read(
            f"""
            SELECT sentiment_score, readability_score, engagement_prediction,
                   views_count, likes_count, comments_count, shares_count,
                   round((likes_count + comments_count + shares_count)::numeric
                         / NULLIF(views_count, 0), 4)::float8 AS engagement_rate
            FROM {self._quoted} WHERE id = $1
            """,
            [_post_id(post_id)],
            "get_post_analytics",
        )
        return rows[0] if rows else {}

    @track_database_operation("record_engagement")
    async def record_engagement(
        self, post_id: str, *, views: int, likes: int, comments: int, shares: int
    ) -> bool:
        """Store counters read from the posts API; True if the post exists."""
        counts = {"views": views, "likes": likes, "comments": comments, "shares": shares}
        for name, value in counts.items():
            _check_range(name, value, 0, 2**62)
        result = await self._run(
            f"UPDATE {self._quoted} SET views_count = $1, likes_count = $2, "
            "comments_count = $3, shares_count = $4, updated_at = now() WHERE id = $5",
            [views, likes, comments, shares, _post_id(post_id)],
            "record_engagement",
        )
        return result.rows_affected == 1

    @track_database_operation("batch_create_posts")
    async def batch_create_posts(self, posts_data: Sequence[Mapping[str, Any]]) -> list[str]:
        """Insert many posts; their ids, in order.

        Every post is validated before anything is sent. The inserts are
        grouped by iogate (one transaction per group); if the database
        refuses some, the others are still inserted and ``BatchCreateError``
        says which is which.
        """
        posts = validate_posts(posts_data)
        results = await self.insert_posts(posts)
        failures = {
            index: result.error or "insert failed"
            for index, result in enumerate(results)
            if not result.success
        }
        created = [post.id for post, result in zip(posts, results, strict=True) if result.success]
        if failures:
            raise BatchCreateError(
                f"batch_create_posts: {len(failures)} of {len(posts)} posts were not inserted "
                f"(first: post {min(failures)}: {failures[min(failures)]})",
                created=created,
                failures=failures,
            )
        return created

    async def insert_posts(self, posts: Sequence[NewPost]) -> list[Result]:
        """One Result per post, in order, from one iogate batch of identical INSERTs."""
        operations = [
            {"type": "database", "db_name": self.db_name, "query": self._insert, "params": p}
            for p in (post.params() for post in posts)
        ]
        if not operations:
            return []
        return await self.orchestrator.execute_batch_operations(operations)

    # -- plumbing --------------------------------------------------------------------

    async def _run(self, query: str, params: list[Any] | None, action: str) -> Result:
        result = await self.orchestrator.execute_database_operation(self.db_name, query, params)
        return raise_for_database(result, action)

    async def _read(self, query: str, params: list[Any], action: str) -> list[dict[str, Any]]:
        # Reads are safe to repeat: retried on connection errors, timeouts
        # and pool exhaustion with the seed's resilient_database_operation.
        result = await resilient_database_operation(
            self.orchestrator.execute_database_operation, self.db_name, query, params
        )
        rows: list[dict[str, Any]] = raise_for_database(result, action).data
        return rows

    async def _scalar(self, query: str, params: list[Any]) -> Any:
        rows = await self._read(query, params, "query")
        return next(iter(rows[0].values())) if rows else None


def validate_posts(posts_data: Sequence[Mapping[str, Any]]) -> list[NewPost]:
    """Validate a batch; the error names the first bad post by index."""
    if isinstance(posts_data, str | bytes) or not isinstance(posts_data, Sequence):
        raise InvalidRequestError("posts_data must be a list of post dicts")
    if len(posts_data) > MAX_BATCH_POSTS:
        raise InvalidRequestError(
            f"posts_data has {len(posts_data)} posts; at most {MAX_BATCH_POSTS} per batch"
        )
    return [NewPost.from_data(data, at=f"posts_data[{i}]") for i, data in enumerate(posts_data)]


def _updatable(updates: Mapping[str, Any]) -> list[str]:
    if not isinstance(updates, Mapping) or not updates:
        raise InvalidRequestError("updates must be a non-empty dict of column -> value")
    unknown = sorted(repr(key)[:80] for key in updates if key not in UPDATABLE_COLUMNS)
    if unknown:
        raise InvalidRequestError(
            f"update_post: cannot update {', '.join(unknown)} "
            f"(updatable columns: {', '.join(UPDATABLE_COLUMNS)})"
        )
    if "visibility" in updates and updates["visibility"] not in VISIBILITIES:
        raise InvalidRequestError(
            f"visibility must be one of {', '.join(VISIBILITIES)}, got {updates['visibility']!r}"
        )
    # Sorted: the same set of columns always gives the same statement text,
    # so it hits the per-connection prepared-statement cache.
    return sorted(updates)


def _post_id(value: Any) -> str:
    try:
        return str(uuid.UUID(value if isinstance(value, str) else str(value)))
    except ValueError:
        raise InvalidRequestError(f"post_id must be a UUID, got {str(value)[:64]!r}") from None


def _check_range(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequestError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _text(
    data: Mapping[str, Any], name: str, at: str, *, max_length: int, default: str | None = None
) -> str:
    value = data.get(name, default)
    if value is None:
        raise InvalidRequestError(f"{at}['{name}'] is required")
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(f"{at}['{name}'] must be a non-empty string")
    if len(value) > max_length:
        raise InvalidRequestError(
            f"{at}['{name}'] is {len(value)} characters; at most {max_length}"
        )
    return value
