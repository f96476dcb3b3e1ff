"""Durable batch jobs over HTTP: ``/batch/jobs`` (see docs/jobs.md).

``POST /batch/jobs`` takes the operations of ``/batch/execute`` (up to
``[jobs] max_operations``, in a body up to ``[jobs] max_body_bytes``),
records the job and answers 202 with its id once it is durable.
``GET /batch/jobs/{id}`` answers its progress and a page of results
(``?after=N&limit=M``), or every result as NDJSON with
``Accept: application/x-ndjson``. ``DELETE /batch/jobs/{id}`` cancels it.

A job needs the ``jobs`` scope plus the scope of every operation in it, as a
batch does; only the key that submitted a job can read or cancel it (another
key gets 404, as for a job that does not exist). Raw SQL in a job runs with
the access the submitting key had, wherever a worker runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from iogate.core.errors import InvalidRequestError
from iogate.gateway.audit import audit_of
from iogate.gateway.auth import Principal, principal_of
from iogate.gateway.deps import orchestrator_of, settings_of
from iogate.gateway.jobs_state import JobsDisabledError, jobs_of, jobs_to_read
from iogate.gateway.responses import ORJSONResponse, declared, problem
from iogate.gateway.routes.batch import MAX_CONCURRENCY, authorize_steps, note_steps
from iogate.gateway.settings import Settings
from iogate.jobs.model import JobError, JobNotFoundError, JobProgress
from iogate.jobs.service import JobService
from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.orchestrator.batch import DEFAULT_CONCURRENCY, BatchRefusedError, plan_batch
from iogate.orchestrator.operations import load_operations

__all__ = ["router"]

router = APIRouter(tags=["jobs"])
NDJSON = "application/x-ndjson"
MAX_PAGE = 1000


class JobSubmission(BaseModel):
    """The body of ``POST /batch/jobs`` (documentation: the route reads it itself,
    off the event loop when it is large)."""

    model_config = ConfigDict(extra="forbid")

    operations: list[Any] = Field(
        min_length=1, description="database / api / transaction / operation objects"
    )
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=MAX_CONCURRENCY)


class JobAccepted(BaseModel):
    job_id: str
    status: str
    total: int
    links: dict[str, str]


class JobProgressBody(BaseModel):
    job_id: str
    status: str = Field(description="queued, running, done or cancelled")
    total: int
    done: int
    failed: int
    pending: int
    chunks: int
    chunks_done: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    links: dict[str, str]


class JobStatusBody(JobProgressBody):
    results: list[dict[str, Any]] = Field(description="Results with their index, in order")
    next_after: int | None = Field(description="``after`` for the next page; null: last page")


_SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "The job is recorded; it runs from now on",
        "headers": {"Location": {"schema": {"type": "string"}}},
    },
    **declared(problem=(400, 401, 403, 404, 413, 415, 422, 500, 503)),
}
_STATUS_RESPONSES = declared(JobStatusBody, problem=(401, 403, 404, 422, 500, 503))
_STATUS_RESPONSES[200]["content"] = {NDJSON: {"schema": {"type": "string"}}}
# The largest index a job store can hold (BIGINT): a larger ``after`` is a 422.
MAX_INDEX = 2**63 - 1


def _unavailable(exc: Exception) -> Response:
    if isinstance(exc, JobsDisabledError):
        return problem(404, "Jobs disabled", str(exc))
    return problem(
        503,
        "Job store or broker unavailable",
        str(exc),
        headers={"Retry-After": "1"},
    )


def _not_found(job_id: str) -> Response:
    return problem(404, "Job not found", f"no job {job_id!r} for this key")


def _links(job_id: str) -> dict[str, str]:
    return {"self": f"/batch/jobs/{job_id}"}


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, as every other route requires."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    main, _, sub = media_type.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _wants_ndjson(accept: str) -> bool:
    """Whether ``accept`` lists NDJSON (media types are case-insensitive; ``q=0``
    refuses it)."""
    for item in accept.split(","):
        media_type, *params = item.split(";")
        if media_type.strip().lower() != NDJSON:
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


@router.post(
    "/batch/jobs",
    status_code=202,
    summary="Submit a durable batch job",
    response_model=JobAccepted,
    responses=_SUBMIT_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": JobSubmission.model_json_schema()}},
        }
    },
)
async def submit_job(
    request: Request,
    orchestrator: Annotated[AsyncOperationOrchestrator, Depends(orchestrator_of)],
    settings: Annotated[Settings, Depends(settings_of)],
    principal: Annotated[Principal, Depends(principal_of)],
) -> Response:
    audit = audit_of(request)
    audit.touch(None, "jobs")
    principal.require("jobs")
    # A JSON body needs a CORS preflight, so a page on another origin cannot
    # submit a job to a keyless loopback gateway with a text/plain form post;
    # and only JSON bodies get the max_json_depth/max_string_bytes checks.
    if not _is_json(request.headers.get("content-type")):
        return problem(
            415,
            "Unsupported Media Type",
            "the body of POST /batch/jobs must be sent as application/json",
        )
    raw = await request.body()
    try:
        # A large job is parsed off the event loop.
        large = len(raw) > 1 << 20
        body = await asyncio.to_thread(orjson.loads, raw) if large else orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return problem(400, "Invalid JSON", f"the body is not JSON: {exc}")
    if not isinstance(body, dict) or set(body) - {"operations", "concurrency"}:
        return problem(
            422,
            "Invalid job",
            'the body must be {"operations": [...], "concurrency": N} (concurrency optional)',
        )
    operations = body.get("operations")
    concurrency = body.get("concurrency", DEFAULT_CONCURRENCY)
    if not isinstance(operations, list) or not operations:
        return problem(422, "Invalid job", "operations must be a non-empty list")
    if type(concurrency) is not int or not 1 <= concurrency <= MAX_CONCURRENCY:
        return problem(
            422, "Invalid job", f"concurrency must be an integer from 1 to {MAX_CONCURRENCY}"
        )
    limit = settings.jobs.max_operations
    if len(operations) > limit:
        return problem(
            422,
            "Job too large",
            f"{len(operations)} operations; at most {limit} per job ([jobs] max_operations)",
            limit="max_operations",
        )
    try:
        steps = await asyncio.to_thread(
            plan_batch, operations, max_params=settings.gateway.max_params
        )
    except BatchRefusedError as exc:
        return problem(422, "Job refused", str(exc))
    note_steps(audit, steps, settings)
    # The runner in this process finds [operations.NAME] in the registry.
    load_operations(orchestrator, settings.operations)
    refused = authorize_steps(principal, steps, settings)
    if refused is not None:
        return refused
    guards = {name: principal.sql_guard(name, db) for name, db in settings.databases.items()}
    try:
        service = await jobs_of(request)
        job = await service.submit(
            operations,
            concurrency=concurrency,
            max_rows=settings.gateway.max_rows,
            guards=guards,
            submitted_by=principal.name if principal.authenticated else None,
        )
    except (BatchRefusedError, InvalidRequestError) as exc:
        return problem(422, "Job refused", str(exc))
    except JobError as exc:
        return _unavailable(exc)
    location = f"/batch/jobs/{job.job_id}"
    return ORJSONResponse(
        {
            "job_id": job.job_id,
            "status": "queued",
            "total": job.total,
            "links": _links(job.job_id),
        },
        status_code=202,
        headers={"Location": location},
    )


async def _owned(request: Request, principal: Principal, job_id: str) -> JobService | Response:
    """The service, when ``job_id`` exists and belongs to ``principal``."""
    principal.require("jobs")
    try:
        service = await jobs_to_read(request)
        job = await service.store.job(job_id) if service is not None else None
    except JobError as exc:
        return _unavailable(exc)
    if service is None or job is None:
        return _not_found(job_id)
    if principal.authenticated and job.submitted_by != principal.name:
        return _not_found(job_id)
    return service


@router.get(
    "/batch/jobs/{job_id}",
    summary="A job's progress and a page of its results",
    responses=_STATUS_RESPONSES,
)
async def job_status(
    request: Request,
    job_id: str,
    principal: Annotated[Principal, Depends(principal_of)],
    after: Annotated[
        int, Query(ge=-1, le=MAX_INDEX, description="results with a larger index")
    ] = -1,
    limit: Annotated[int, Query(ge=0, le=MAX_PAGE, description="results in the page")] = 100,
) -> Response:
    audit_of(request).touch(None, "jobs")
    found = await _owned(request, principal, job_id)
    if isinstance(found, Response):
        return found
    service = found
    try:
        progress = await service.progress(job_id)
        if _wants_ndjson(request.headers.get("accept", "")):
            return StreamingResponse(_ndjson(service, job_id, after), media_type=NDJSON)
        page = await service.results(job_id, after=after, limit=limit) if limit else []
    except JobNotFoundError:
        return _not_found(job_id)
    except JobError as exc:
        return _unavailable(exc)
    body: dict[str, Any] = progress.to_dict()
    body["results"] = [{"index": r.index, **r.result} for r in page]
    body["next_after"] = page[-1].index if len(page) == limit and page else None
    body["links"] = _links(job_id)
    return ORJSONResponse(body)


async def _ndjson(service: JobService, job_id: str, after: int) -> AsyncIterator[bytes]:
    while True:
        page = await service.results(job_id, after=after, limit=MAX_PAGE)
        if page:
            yield b"".join(orjson.dumps({"index": r.index, **r.result}) + b"\n" for r in page)
            after = page[-1].index
        if len(page) < MAX_PAGE:
            return


@router.delete(
    "/batch/jobs/{job_id}",
    summary="Cancel a job",
    responses=declared(JobProgressBody, problem=(401, 403, 404, 500, 503)),
)
async def cancel_job(
    request: Request,
    job_id: str,
    principal: Annotated[Principal, Depends(principal_of)],
) -> Response:
    audit_of(request).touch(None, "jobs")
    found = await _owned(request, principal, job_id)
    if isinstance(found, Response):
        return found
    try:
        progress: JobProgress = await found.cancel(job_id)
    except JobNotFoundError:
        return _not_found(job_id)
    except JobError as exc:
        return _unavailable(exc)
    return ORJSONResponse({**progress.to_dict(), "links": _links(job_id)})
