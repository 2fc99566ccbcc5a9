"""The encyclopedia's services: frontend, movies, books, evaluation (one process each).

Run one instance with ``python -m spanomaly.testbed.services --service movies ...``. Call
graph (every call goes through the callee's fault proxy, picked at random among instances):

- frontend ``GET /movie/{id}``: movies ``/movies/{id}`` (-> evaluation ratings, and when the
  ratings come back empty, evaluation ``POST .../recompute``), then evaluation reviews;
  ``GET /book/{id}`` likewise with books; ``GET /search``: movies and books search in
  parallel, and the movies ``/popular`` list when both come back empty; ``GET /top``:
  evaluation ``/top/movie`` then movies ``/movies/{id}/summary`` for each; ``POST /review``:
  the catalogue's ``/summary`` to check the item, then evaluation ``POST /reviews``.
- movies and books: SQLite catalogues; evaluation: SQLite ratings and reviews.

In-code faults arrive through a control file (JSON, polled) that only the testbed writes;
each request they hit is appended to a ground-truth file (trace id, span id), never to the
span. Each handler writes a log line through Python logging and the OpenTelemetry log
handler (trace context attached) to the collector's /v1/logs: a caught exception for
``code_error``, an empty result (and the caller's fallback) for ``wrong_result``. A v2 instance is slower (+25 ms a request) and chattier (also fetches reviews).
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

SERVICES = ("frontend", "movies", "books", "evaluation")
V2_EXTRA_S = 0.025
CALL_TIMEOUT_S = 2.0
ITEMS = 300
WORDS = [
    "star",
    "night",
    "river",
    "city",
    "ghost",
    "king",
    "love",
    "war",
    "dream",
    "stone",
    "blue",
    "iron",
    "last",
    "red",
    "sea",
    "gold",
]


def pi_digits(n: int) -> int:
    """Pi to n digits (Machin's formula): the CPU-burning fault's work."""
    scale = 10 ** (n + 10)

    def arctan_inv(x: int) -> int:
        total = term = scale // x
        x2, k, sign = x * x, 1, -1
        while term:
            term //= x2
            k += 2
            total += sign * (term // k)
            sign = -sign
        return total

    return 4 * (4 * arctan_inv(5) - arctan_inv(239))


def _title(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))).title()


def seed_db(path: Path, service: str) -> None:
    """Create the instance's SQLite database (a replica: same seed for every instance)."""
    rng = random.Random(7)
    con = sqlite3.connect(path)
    with con:
        if service in ("movies", "books"):
            con.execute(
                "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, title TEXT, "
                "author TEXT, year INTEGER, blurb TEXT)"
            )
            rows = [
                (i, _title(rng), _title(rng), rng.randint(1950, 2024), _title(rng) * 4)
                for i in range(1, ITEMS + 1)
            ]
            con.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?)", rows)
        elif service == "evaluation":
            con.execute(
                "CREATE TABLE IF NOT EXISTS ratings (kind TEXT, item INTEGER, stars INTEGER)"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS reviews (kind TEXT, item INTEGER, stars INTEGER, "
                "text TEXT, time REAL)"
            )
            con.execute("CREATE INDEX IF NOT EXISTS r_item ON ratings (kind, item)")
            con.execute("CREATE INDEX IF NOT EXISTS v_item ON reviews (kind, item)")
            if con.execute("SELECT count(*) FROM ratings").fetchone()[0] == 0:
                rows = [
                    (kind, rng.randint(1, ITEMS), rng.randint(1, 5))
                    for kind in ("movie", "book")
                    for _ in range(ITEMS * 4)
                ]
                con.executemany("INSERT INTO ratings VALUES (?, ?, ?)", rows)
    con.close()


class FaultState:
    """In-code faults now active for this instance (read from the control file)."""

    def __init__(self, control: Path | None, truth: Path | None) -> None:
        self.control = control
        self.truth = truth.open("a", buffering=1) if truth else None
        self.active: list[dict[str, Any]] = []
        self.leak: list[bytes] = []
        self._mtime = 0.0

    def poll(self) -> None:
        if self.control is None:
            return
        try:
            mtime = self.control.stat().st_mtime
        except FileNotFoundError:
            self.active = []
            return
        if mtime != self._mtime:
            self._mtime = mtime
            with contextlib.suppress(OSError, ValueError):
                self.active = json.loads(self.control.read_text() or "[]")

    def hits(self, kind: str) -> dict[str, Any] | None:
        """The first active fault of `kind` that this request draws, recorded as hit."""
        for fault in self.active:
            if fault["kind"] == kind and random.random() < float(fault.get("p", 1.0)):
                self.record(fault)
                return fault
        return None

    def record(self, fault: dict[str, Any]) -> None:
        from opentelemetry import trace

        ctx = trace.get_current_span().get_span_context()
        if self.truth is not None and ctx.is_valid:
            line = {
                "fault_id": fault["fault_id"],
                "trace_id": f"{ctx.trace_id:032x}",
                "span_id": f"{ctx.span_id:016x}",
            }
            self.truth.write(json.dumps(line) + "\n")

    def leak_step(self, dt: float) -> None:
        leaks = [f for f in self.active if f["kind"] == "memory_leak"]
        if not leaks:
            self.leak.clear()
            return
        mb = sum(float(f.get("mb_per_s", 8)) for f in leaks) * dt
        self.leak.append(b"x" * int(mb * 1024 * 1024))


def _whole_exchange_transport() -> type:
    """An httpx transport whose call returns once the answer's body is read, so that the
    client span the OpenTelemetry instrumentation wraps around it covers the whole exchange
    (around the plain transport it ends at the headers, and a slow body, a bandwidth limit
    say, lands in the caller's own time)."""
    import httpx

    class WholeExchange(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            await response.aread()
            return response

    return WholeExchange


class _Telemetry:
    """The instance's tracer and logger providers (None without a collector) and its logger."""

    def __init__(
        self, service: str, instance: str, version: str, node: str, collector: str | None
    ) -> None:
        from opentelemetry import trace

        from spanomaly.testbed import instrumentation

        self.provider = self.log_provider = None
        if collector:
            res = instrumentation.resource(service, instance, version, node)
            self.provider = instrumentation.tracer_provider(res, collector)
            trace.set_tracer_provider(self.provider)
            self.log_provider = instrumentation.logger_provider(res, collector)
        self.log = instrumentation.app_logger(
            f"spanomaly.testbed.app.{instance}", self.log_provider
        )

    def shutdown(self) -> None:
        """Flush and stop both providers."""
        for p in (self.provider, self.log_provider):
            if p is not None:
                p.shutdown()


def _lifespan(
    telemetry: _Telemetry, faults: FaultState, peers: dict[str, list[str]], box: dict[str, Any]
) -> Any:
    """The app's lifespan: the instrumented HTTP client (in box['c']) and the fault poller."""
    import httpx
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    port_service = {url.rsplit(":", 1)[1]: name for name, urls in peers.items() for url in urls}

    async def name_peer(span: Any, request: Any) -> None:
        target = port_service.get(str(request.url.port))
        if target and span.is_recording():
            span.set_attribute("peer.service", target)

    async def background() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.2)
            faults.poll()
            now = time.monotonic()
            faults.leak_step(now - last)
            last = now

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        box["c"] = httpx.AsyncClient(
            timeout=CALL_TIMEOUT_S,
            transport=_whole_exchange_transport()(limits=httpx.Limits(max_connections=64)),
        )
        HTTPXClientInstrumentor.instrument_client(box["c"], request_hook=name_peer)
        task = asyncio.create_task(background())
        try:
            yield
        finally:
            task.cancel()
            await box["c"].aclose()
            telemetry.shutdown()

    return lifespan


def _fault_dependency(faults: FaultState, service: str, version: str, log: Any) -> Any:
    """The dependency every request runs first: in-code faults, and v2's extra time."""
    from fastapi import HTTPException, Request

    async def inject_faults(request: Request) -> None:
        for fault in list(faults.active):
            kind = fault["kind"]
            if kind not in ("code_delay", "code_cpu", "code_error"):
                continue
            if random.random() >= float(fault.get("p", 1.0)):
                continue
            faults.record(fault)
            if kind == "code_delay":
                await asyncio.sleep(float(fault.get("ms", 200)) / 1000)
            elif kind == "code_cpu":
                pi_digits(int(fault.get("digits", 8000)))
            else:
                try:  # the handler's bug: an exception it catches, logs and answers 500 for
                    raise RuntimeError(f"{service} state is inconsistent")
                except RuntimeError:
                    log.exception("request to %s failed, answering 500", request.url.path)
                raise HTTPException(status_code=500, detail="internal error")
        if version == "v2":
            await asyncio.sleep(V2_EXTRA_S)

    return inject_faults


def _querier(db_path: Path) -> Any:
    """A function running one SQL statement on the instance's database."""

    def query(sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(db_path)
        try:
            with con:  # a cursor: the sqlite3 instrumentation traces cursor.execute
                return con.cursor().execute(sql, args).fetchall()
        finally:
            con.close()

    return query


def _caller(peers: dict[str, list[str]], box: dict[str, Any]) -> Any:
    """A function calling a peer service (a random instance); errors become 502s."""
    import httpx
    from fastapi import HTTPException

    async def call(target: str, method: str, path: str, **kw: Any) -> Any:
        url = random.choice(peers[target]) + path
        try:
            resp = await box["c"].request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise HTTPException(status_code=502, detail=f"{target}: {type(exc).__name__}") from exc
        if resp.status_code >= 400:
            raise HTTPException(status_code=502, detail=f"{target}: {resp.status_code}")
        try:
            return resp.json()
        except ValueError as exc:
            raise HTTPException(status_code=502, detail=f"{target}: bad answer") from exc

    return call


def _frontend_routes(app: Any, call: Any, log: Any) -> None:
    """The user-facing pages."""

    @app.get("/movie/{item}")
    async def movie_page(item: int) -> dict[str, Any]:
        movie = await call("movies", "GET", f"/movies/{item}")
        reviews = await call("evaluation", "GET", f"/reviews/movie/{item}")
        log.info("movie page %d served with %d reviews", item, len(reviews))
        return {"movie": movie, "reviews": reviews}

    @app.get("/book/{item}")
    async def book_page(item: int) -> dict[str, Any]:
        book = await call("books", "GET", f"/books/{item}")
        reviews = await call("evaluation", "GET", f"/reviews/book/{item}")
        log.info("book page %d served with %d reviews", item, len(reviews))
        return {"book": book, "reviews": reviews}

    @app.get("/search")
    async def search(q: str) -> dict[str, Any]:
        movies, books = await asyncio.gather(
            call("movies", "GET", "/movies/search", params={"q": q}),
            call("books", "GET", "/books/search", params={"q": q}),
        )
        if not movies and not books:  # nothing found: suggest what is popular
            log.warning("search %r found nothing, falling back to popular movies", q)
            movies = await call("movies", "GET", "/movies/popular")
        else:
            log.info("search %r: %d movies, %d books", q, len(movies), len(books))
        return {"movies": movies, "books": books}

    @app.get("/top")
    async def top() -> dict[str, Any]:
        best = await call("evaluation", "GET", "/top/movie")
        items = await asyncio.gather(
            *(call("movies", "GET", f"/movies/{row['item']}/summary") for row in best)
        )
        log.info("top list of %d movies served", len(items))
        return {"top": items}

    @app.post("/review")
    async def post_review(review: dict[str, Any]) -> dict[str, Any]:
        kind = "movie" if review.get("kind") == "movie" else "book"
        target = "movies" if kind == "movie" else "books"
        await call(target, "GET", f"/{target}/{int(review['item'])}/summary")
        stored = await call("evaluation", "POST", "/reviews", json=review | {"kind": kind})
        log.info("review of %s %d accepted", kind, int(review["item"]))
        return stored


def _catalogue_routes(
    app: Any, service: str, version: str, faults: FaultState, query: Any, call: Any, log: Any
) -> None:
    """The movies and books catalogues."""
    from fastapi import HTTPException

    kind = service[:-1]

    @app.get(f"/{service}/search")
    async def search_items(q: str) -> list[dict[str, Any]]:
        if faults.hits("wrong_result") is not None:
            rows = []  # the bug: the query's rows are lost
        else:
            rows = query(
                "SELECT id, title, year FROM items WHERE title LIKE ? LIMIT 10", (f"%{q}%",)
            )
        if rows:
            log.info("search %r in %s: %d items", q, service, len(rows))
        else:
            log.warning("search %r in %s: empty result", q, service)
        return [{"id": r[0], "title": r[1], "year": r[2]} for r in rows]

    @app.get(f"/{service}/popular")
    async def popular() -> list[dict[str, Any]]:
        rows = query("SELECT id, title, year FROM items ORDER BY year DESC LIMIT 5")
        log.info("popular %s list of %d items", service, len(rows))
        return [{"id": r[0], "title": r[1], "year": r[2]} for r in rows]

    @app.get(f"/{service}/{{item}}/summary")
    async def summary(item: int) -> dict[str, Any]:
        rows = query("SELECT id, title, year FROM items WHERE id = ?", (item,))
        if not rows:
            raise HTTPException(status_code=404, detail="no such item")
        return {"id": rows[0][0], "title": rows[0][1], "year": rows[0][2]}

    @app.get(f"/{service}/{{item}}")
    async def detail(item: int) -> dict[str, Any]:
        rows = query("SELECT id, title, author, year, blurb FROM items WHERE id = ?", (item,))
        if not rows:
            raise HTTPException(status_code=404, detail="no such item")
        doc: dict[str, Any] = dict(
            zip(("id", "title", "author", "year", "blurb"), rows[0], strict=True)
        )
        rating = await call("evaluation", "GET", f"/ratings/{kind}/{item}")
        if not rating.get("count"):  # no ratings: ask for them to be recomputed
            log.warning("%s %d came back without ratings, asking for a recompute", kind, item)
            rating = await call("evaluation", "POST", f"/ratings/{kind}/{item}/recompute")
        log.info("%s %d served with a rating of %s votes", kind, item, rating.get("count"))
        doc["rating"] = rating
        if version == "v2":  # the chattier release also fetches the reviews itself
            doc["reviews"] = await call("evaluation", "GET", f"/reviews/{kind}/{item}")
        return doc


def _evaluation_routes(app: Any, faults: FaultState, query: Any, log: Any) -> None:
    """Ratings and reviews."""

    def rating_of(kind: str, item: int) -> dict[str, Any]:
        rows = query(
            "SELECT count(*), avg(stars) FROM ratings WHERE kind = ? AND item = ?", (kind, item)
        )
        return {"count": rows[0][0], "stars": rows[0][1]}

    @app.get("/ratings/{kind}/{item}")
    async def ratings(kind: str, item: int) -> dict[str, Any]:
        hit = faults.hits("wrong_result") is not None
        rating = {"count": 0, "stars": None} if hit else rating_of(kind, item)
        if rating["count"]:
            log.info("rating of %s %d from %d votes", kind, item, rating["count"])
        else:
            log.warning("ratings of %s %d: empty result", kind, item)
        return rating

    @app.post("/ratings/{kind}/{item}/recompute")
    async def recompute(kind: str, item: int) -> dict[str, Any]:
        query("ANALYZE ratings")
        log.info("ratings of %s %d recomputed", kind, item)
        return rating_of(kind, item)

    @app.get("/reviews/{kind}/{item}")
    async def reviews(kind: str, item: int) -> list[dict[str, Any]]:
        rows = query(
            "SELECT stars, text FROM reviews WHERE kind = ? AND item = ? "
            "ORDER BY time DESC LIMIT 5",
            (kind, item),
        )
        log.info("%d reviews of %s %d", len(rows), kind, item)
        return [{"stars": r[0], "text": r[1]} for r in rows]

    @app.post("/reviews")
    async def add_review(review: dict[str, Any]) -> dict[str, Any]:
        kind, item = str(review["kind"]), int(review["item"])
        stars = max(1, min(5, int(review.get("stars", 3))))
        query(
            "INSERT INTO reviews VALUES (?, ?, ?, ?, ?)",
            (kind, item, stars, str(review.get("text", ""))[:500], time.time()),
        )
        query("INSERT INTO ratings VALUES (?, ?, ?)", (kind, item, stars))
        log.info("review of %s %d with %d stars stored", kind, item, stars)
        return {"stored": True}

    @app.get("/top/{kind}")
    async def top_items(kind: str) -> list[dict[str, Any]]:
        rows = query(
            "SELECT item, avg(stars) AS s FROM ratings WHERE kind = ? GROUP BY item "
            "ORDER BY s DESC, item LIMIT 3",
            (kind,),
        )
        log.info("top %s list of %d items computed", kind, len(rows))
        return [{"item": r[0], "stars": r[1]} for r in rows]


def create_app(
    service: str,
    instance: str,
    version: str,
    node: str,
    peers: dict[str, list[str]],
    collector: str | None,
    data_dir: Path,
    control: Path | None = None,
    truth: Path | None = None,
) -> Any:
    """The FastAPI app of one instance, instrumented with OpenTelemetry."""
    from fastapi import Depends, FastAPI
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

    telemetry = _Telemetry(service, instance, version, node, collector)
    log = telemetry.log
    SQLite3Instrumentor().instrument()
    db_path = data_dir / f"{instance}.sqlite"
    seed_db(db_path, service)
    faults = FaultState(control, truth)
    box: dict[str, Any] = {}
    app = FastAPI(
        lifespan=_lifespan(telemetry, faults, peers, box),
        dependencies=[Depends(_fault_dependency(faults, service, version, log))],
    )
    query, call = _querier(db_path), _caller(peers, box)
    if service == "frontend":
        _frontend_routes(app, call, log)
    elif service in ("movies", "books"):
        _catalogue_routes(app, service, version, faults, query, call, log)
    elif service == "evaluation":
        _evaluation_routes(app, faults, query, log)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=telemetry.provider, exclude_spans=["receive", "send"]
    )
    return app


def main(argv: list[str] | None = None) -> None:
    """Run one instance: uvicorn on 127.0.0.1:PORT."""
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--service", choices=SERVICES, required=True)
    p.add_argument("--instance", required=True)
    p.add_argument("--version", default="v1")
    p.add_argument("--node", default="node-1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--peers", default="{}", help="JSON: service -> list of base URLs")
    p.add_argument("--collector", default=None, help="OTLP/HTTP base URL")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--control", type=Path, default=None)
    p.add_argument("--truth", type=Path, default=None)
    a = p.parse_args(argv)
    app = create_app(
        a.service,
        a.instance,
        a.version,
        a.node,
        json.loads(a.peers),
        a.collector,
        a.data_dir,
        a.control,
        a.truth,
    )
    os.environ.setdefault("OTEL_PYTHON_LOG_CORRELATION", "false")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=a.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
