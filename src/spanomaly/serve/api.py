"""The dashboard's JSON API (a FastAPI router under /api): one route behind every view.

Reads run on a cursor of their own in a worker thread where the store offers one
(`Store.cursor`), beside the OTLP writes; otherwise in the collector's writer thread between
write batches (`Writer.call`), holding the writes up for one bounded query. Times in query
parameters are ISO-8601 or unix seconds. Actions (retrain, feedback) are POSTs; no GET
changes anything. The OpenAPI document is at /openapi.json, a local page at /docs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder

from spanomaly import timeparse
from spanomaly.errors import InputError, NotFoundError, SpanomalyError, StoreError
from spanomaly.serve import queries
from spanomaly.serve.hooks import Online
from spanomaly.serve.writer import Writer
from spanomaly.store.base import Store

log = logging.getLogger(__name__)
T = TypeVar("T")
OVERVIEW_TTL_S = 2.0  # an overview answer is reused this long (the page polls every 5 s)

FromQ = Annotated[str | None, Query(alias="from", description="start: ISO-8601 or unix seconds")]
ToQ = Annotated[str | None, Query(alias="to", description="end (exclusive): ISO-8601 or unix s")]


def parse_time(text: str | None, name: str) -> int | None:
    """Nanoseconds of an ISO-8601 or unix-seconds parameter (`timeparse`, as the CLI); HTTP
    400 when malformed."""
    try:
        return timeparse.parse_time(text, name)
    except InputError as exc:
        raise HTTPException(400, str(exc)) from exc


def router(writer: Writer, online: Online | None = None) -> APIRouter:
    """The /api routes of the dashboard over the writer's store and the online hook."""
    api = APIRouter(prefix="/api", tags=["dashboard"])
    cache: dict[tuple[int | None, int | None], tuple[float, dict[str, Any]]] = {}
    # the model's status and retraining: GET /api/model, POST /api/model/retrain (app.py)

    async def read(fn: Callable[[Store], T]) -> T:
        """fn(store) on a cursor of its own beside the writes where the store offers one,
        else in the writer thread between write batches."""
        cursor_of = getattr(writer.store, "cursor", None)
        try:
            if cursor_of is None:
                return await asyncio.wrap_future(writer.call(fn))
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, _on_cursor, cursor_of, fn)
        except StoreError as exc:
            raise HTTPException(503, str(exc)) from exc

    async def act(fn: Callable[[], Any]) -> Any:
        """Run an action in a worker thread (it may wait on the writer itself)."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, fn)
        except SpanomalyError as exc:
            status = 404 if isinstance(exc, NotFoundError) else 400
            raise HTTPException(status, str(exc).splitlines()[0]) from exc
        return jsonable_encoder(result)

    def found(doc: T | None, what: str) -> T:
        if doc is None:
            raise HTTPException(404, f"no {what}")
        return doc

    @api.get("/overview")
    async def overview(start: FromQ = None, end: ToQ = None) -> dict[str, Any]:
        """Service graph (nodes: services with instances, rate, errors, anomaly score;
        edges: calls with rate, errors, mean latency), alarms and top suspects of a window
        (default: the last 15 minutes of data)."""
        lo, hi = parse_time(start, "from"), parse_time(end, "to")
        key = (lo, hi)
        hit = cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < OVERVIEW_TTL_S:
            return hit[1]  # many open dashboards poll; the store is read once per TTL
        doc = await read(lambda s: queries.overview(s, queries.window(s, lo, hi)))
        if len(cache) > 64:
            cache.clear()
        cache[key] = (time.monotonic(), doc)
        return doc

    @api.get("/findings")
    async def findings(
        start: FromQ = None,
        end: ToQ = None,
        service: Annotated[str | None, Query(description="blamed service")] = None,
        kind: Annotated[str | None, Query(description="entity: trace|instance|span")] = None,
        detector: Annotated[str | None, Query(description="detector name prefix")] = None,
        include_normal: Annotated[bool, Query(description="with false positives")] = True,
        limit: Annotated[int, Query(ge=1, le=queries.MAX_FINDINGS)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """A page of findings (time, entity, service, score, reason), newest first, and the
        number matching the filters."""
        q = queries.FindingQuery(
            parse_time(start, "from"),
            parse_time(end, "to"),
            service or None,
            kind or None,
            detector or None,
            include_normal,
            limit,
            offset,
        )
        return await read(lambda s: queries.findings(s, q))

    @api.get("/findings/filters")
    async def finding_filters() -> dict[str, Any]:
        """Services, kinds, detectors and time range the findings filters offer."""
        return await read(queries.filters)

    @api.get("/findings/{finding_id}")
    async def finding(finding_id: str) -> dict[str, Any]:
        """One finding with its explanation (expected versus observed event and duration)."""
        return found(await read(lambda s: queries.finding(s, finding_id)), "such finding")

    @api.post("/findings/{finding_id}/feedback")
    async def feedback(finding_id: str, request: Request) -> dict[str, Any]:
        """Mark a finding as a false positive (body: none, {} or {"normal": true}); with a
        loaded model its trace updates the model. A repeat changes nothing; the answer says
        what changed."""
        await _normal_only(request)
        cache.clear()
        if online is not None:
            return await act(lambda: online.feedback(finding_id))
        before = found(await read(lambda s: queries.finding(s, finding_id)), "such finding")
        return await _mark_normal(writer, finding_id, before.get("feedback") == "normal")

    @api.get("/traces/{trace_id}")
    async def trace(trace_id: str) -> dict[str, Any]:
        """The spans of a trace for the waterfall (offsets in ms) and its findings."""
        return found(await read(lambda s: queries.trace(s, trace_id)), "such trace")

    @api.get("/instances")
    async def instances() -> list[dict[str, Any]]:
        """Every instance with its service, span, metric point and finding counts."""
        return await read(queries.instances)

    @api.get("/instances/{instance}/series")
    async def instance_series(
        instance: str, start: FromQ = None, end: ToQ = None
    ) -> dict[str, Any]:
        """Bucketed metric and span-derived series of an instance with its anomaly windows
        and fault windows (default: its last hour of data)."""
        lo, hi = parse_time(start, "from"), parse_time(end, "to")
        doc = await read(lambda s: queries.instance_series(s, instance, lo, hi))
        return found(doc, "such instance")

    return api


async def _mark_normal(writer: Writer, finding_id: str, already: bool) -> dict[str, Any]:
    """Mark a finding normal in the store (no model loaded: nothing is learnt)."""
    try:  # a write: in the writer thread
        await asyncio.wrap_future(writer.call(lambda s: s.set_feedback([finding_id], "normal")))
    except StoreError as exc:
        raise HTTPException(503, str(exc)) from exc
    changed = ("nothing: the finding was marked normal already" if already
               else "marked normal (no model is loaded: nothing learnt)")  # fmt: skip
    return {"finding": finding_id, "feedback": "normal", "model_updated": False, "changed": changed}


async def _normal_only(request: Request) -> None:
    """400 unless the feedback body says normal (or is empty): a finding can be marked a
    false positive; what a model learnt from one cannot be taken back."""
    raw = await request.body()
    if not raw.strip():
        return
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise HTTPException(400, f"feedback: the body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or set(body) - {"normal"} or body.get("normal", True) is not True:
        raise HTTPException(
            400, 'feedback: the body is {"normal": true} (a false positive) or empty; '
            "no other feedback is supported"
        )  # fmt: skip


def _on_cursor(cursor_of: Callable[[], Store], fn: Callable[[Store], T]) -> T:
    """fn on a fresh cursor of the store, closed afterwards (runs in a worker thread)."""
    store = cursor_of()
    try:
        return fn(store)
    finally:
        store.close()
