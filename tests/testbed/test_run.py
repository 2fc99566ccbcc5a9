"""The shared run: data from every service and instance, ground truth, each fault's effect."""

from __future__ import annotations

import json

import duckdb

from spanomaly.testbed.run import RunResult
from spanomaly.testbed.supervisor import processes_of

INSTANCES = {f"{s}-{k}" for s in ("frontend", "movies", "books", "evaluation") for k in (1, 2)}


def one(con: duckdb.DuckDBPyConnection, sql: str, *args: object) -> object:
    return con.execute(sql, list(args)).fetchone()[0]


def window(con: duckdb.DuckDBPyConnection, kind: str) -> tuple[int, int, str]:
    return con.execute(
        "SELECT start_ns, end_ns, instance FROM faults WHERE kind = ?", [kind]
    ).fetchone()


def test_every_service_instance_and_metric_is_stored(testbed_run, con) -> None:
    result, _ = testbed_run
    assert result.summary["crashed"] == []
    assert {r[0] for r in con.execute("SELECT DISTINCT service FROM spans").fetchall()} == {
        "frontend",
        "movies",
        "books",
        "evaluation",
    }
    assert {
        r[0] for r in con.execute("SELECT DISTINCT instance FROM spans").fetchall()
    } == INSTANCES
    metered = {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT instance FROM metrics WHERE name = 'process.memory.rss'"
        ).fetchall()
    }
    assert metered == INSTANCES
    names = {r[0] for r in con.execute("SELECT DISTINCT name FROM metrics").fetchall()}
    assert {
        "process.cpu.utilization",
        "process.threads",
        "process.context_switches",
        "process.io.read_bytes",
        "node.cpu.utilization",
        "system.cpu.utilization",
    } <= names
    versions = dict(con.execute("SELECT DISTINCT instance, version FROM spans").fetchall())
    assert versions["books-2"] == "v2" and versions["books-1"] == "v1"
    # database spans, and traces at least 3 services deep (frontend -> movies -> evaluation)
    assert one(con, "SELECT count(*) FROM spans WHERE attributes LIKE '%db.system%'") > 0
    depth = one(
        con,
        """
        WITH RECURSIVE d(trace_id, span_id, depth) AS (
          SELECT trace_id, span_id, 1 FROM spans WHERE parent_id IS NULL
          UNION ALL SELECT s.trace_id, s.span_id, d.depth + 1 FROM spans s
          JOIN d ON s.parent_id = d.span_id AND s.trace_id = d.trace_id)
        SELECT max(depth) FROM d""",
    )
    assert depth >= 5
    services_per_trace = one(
        con, "SELECT max(n) FROM (SELECT count(DISTINCT service) n FROM spans GROUP BY trace_id)"
    )
    assert services_per_trace >= 3
    load = result.summary["load"]
    assert abs(load["achieved_rate"] - 20) / 20 < 0.1


def test_faults_table_matches_the_schedule(con) -> None:
    kinds = {r[0] for r in con.execute("SELECT kind FROM faults").fetchall()}
    assert kinds == {
        "version",
        "code_delay",
        "code_cpu",
        "code_error",
        "wrong_result",
        "memory_leak",
        "network_delay",
        "network_loss",
        "network_corrupt",
        "network_bandwidth",
        "cpu_throttle",
        "cpu_contention",
    }
    start, end, inst = window(con, "code_delay")
    assert inst == "movies-1" and 15e9 < end - start < 21e9
    params = json.loads(one(con, "SELECT params FROM faults WHERE kind = 'code_delay'"))
    assert params == {"ms": 200, "p": 1.0}


def test_in_code_faults_leave_trace_ids_in_fault_traces(con) -> None:
    hit = dict(
        con.execute("""
        SELECT f.kind, count(*) FROM fault_traces t JOIN faults f USING (fault_id)
        GROUP BY 1""").fetchall()
    )
    assert hit.keys() == {"code_delay", "code_cpu", "code_error", "wrong_result"}
    assert min(hit.values()) > 10
    # the recorded span is the server span of the faulty instance
    wrong = con.execute("""
        SELECT count(*), count(s.span_id), count(*) FILTER (WHERE s.instance = f.instance)
        FROM fault_traces t JOIN faults f USING (fault_id)
        LEFT JOIN spans s ON s.trace_id = t.trace_id AND s.span_id = t.span_id""").fetchone()
    assert wrong[1] >= 0.95 * wrong[0] and wrong[2] == wrong[1]
    # and no span attribute tells a detector about it
    assert one(con, "SELECT count(*) FROM spans WHERE attributes LIKE '%fault%'") == 0


def _server_ms(con, instance: str, kind: str, inside: bool, agg: str = "median") -> float:
    start, end, _ = window(con, kind)
    cond = "BETWEEN ? AND ?" if inside else "NOT BETWEEN ? AND ?"
    return one(
        con,
        f"""SELECT {agg}(duration_ns) / 1e6 FROM spans WHERE instance = ? AND kind = 'server'
               AND start_ns {cond}""",
        instance,
        start,
        end,
    )


def _network_ms(con, instance: str, kind: str, inside: bool) -> float:
    """Client span minus the callee's server span: time spent on the wire and in the proxy."""
    start, end, _ = window(con, kind)
    cond = "BETWEEN ? AND ?" if inside else "NOT BETWEEN ? AND ?"
    return one(
        con,
        f"""SELECT median(c.duration_ns - s.duration_ns) / 1e6 FROM spans s
        JOIN spans c ON s.parent_id = c.span_id AND s.trace_id = c.trace_id
        WHERE s.instance = ? AND c.kind = 'client' AND s.start_ns {cond}""",
        instance,
        start,
        end,
    )


def test_latency_faults_raise_latency(con) -> None:
    assert (
        _server_ms(con, "movies-1", "code_delay", True)
        > _server_ms(con, "movies-1", "code_delay", False) + 150
    )
    assert _server_ms(con, "evaluation-1", "code_cpu", True) > 2 * _server_ms(
        con, "evaluation-1", "code_cpu", False
    )
    assert (
        _network_ms(con, "movies-2", "network_delay", True)
        > _network_ms(con, "movies-2", "network_delay", False) + 100
    )
    assert (
        _network_ms(con, "movies-1", "network_bandwidth", True)
        > _network_ms(con, "movies-1", "network_bandwidth", False) + 30
    )
    assert _server_ms(con, "evaluation-2", "cpu_throttle", True, "avg") > 2 * _server_ms(
        con, "evaluation-2", "cpu_throttle", False, "avg"
    )
    assert _server_ms(con, "frontend-2", "cpu_contention", True) > 1.3 * _server_ms(
        con, "frontend-2", "cpu_contention", False
    )


def _errors(con, kind: str, where: str, inside: bool) -> float:
    start, end, _ = window(con, kind)
    cond = "BETWEEN ? AND ?" if inside else "NOT BETWEEN ? AND ?"
    return one(
        con,
        f"""SELECT avg(CASE WHEN status = 'error' THEN 1.0 ELSE 0 END) FROM spans
        WHERE {where} AND start_ns {cond}""",
        start,
        end,
    )


def test_error_faults_and_loss_raise_errors(con) -> None:
    first = one(con, "SELECT min(start_ns) FROM faults WHERE kind <> 'version'")

    def before(where: str) -> float:  # the error rate of the warm-up, before any fault
        return one(
            con,
            f"SELECT avg(CASE WHEN status = 'error' THEN 1.0 ELSE 0 END) FROM spans "
            f"WHERE {where} AND start_ns < ?",
            first,
        )

    books1 = "instance = 'books-1' AND kind = 'server'"
    assert _errors(con, "code_error", books1, True) > 0.3
    assert before(books1) < 0.05
    to_books = "peer_service = 'books' AND kind = 'client'"
    assert _errors(con, "network_loss", to_books, True) > max(0.08, 3 * before(to_books))
    to_eval = "peer_service = 'evaluation' AND kind = 'client'"
    assert _errors(con, "network_corrupt", to_eval, True) > max(0.05, 3 * before(to_eval))


def test_wrong_result_changes_the_call_sequence(con) -> None:
    start, end, _ = window(con, "wrong_result")
    recompute = "operation LIKE '%/recompute'"
    inside = one(
        con,
        f"SELECT count(*) FROM spans WHERE {recompute} AND start_ns BETWEEN ? AND ?",
        start,
        end,
    )
    outside = one(
        con,
        f"SELECT count(*) FROM spans WHERE {recompute} AND start_ns NOT BETWEEN ? AND ?",
        start,
        end,
    )
    span = one(con, "SELECT (max(start_ns) - min(start_ns)) FROM spans")
    assert inside > 20
    assert inside / (end - start) > 2 * outside / (span - (end - start))


def test_memory_leak_grows_rss(con) -> None:
    start, end, inst = window(con, "memory_leak")
    before = one(
        con,
        "SELECT median(value) FROM metrics WHERE instance = ? AND name = 'process.memory.rss' AND time_ns < ?",
        inst,
        start,
    )
    peak = one(
        con,
        "SELECT max(value) FROM metrics WHERE instance = ? AND name = 'process.memory.rss' AND time_ns BETWEEN ? AND ?",
        inst,
        start,
        end + 3e9,
    )
    assert peak - before > 100e6


def test_v2_instance_has_a_different_latency_profile(con) -> None:
    def median(inst: str) -> float:
        return one(
            con,
            "SELECT median(duration_ns) / 1e6 FROM spans WHERE instance = ? AND operation = 'GET /books/{item}'",
            inst,
        )

    assert median("books-2") > median("books-1") + 20
    calls = dict(
        con.execute("""
        SELECT s.instance, count(c.span_id) / count(DISTINCT s.span_id) FROM spans s
        LEFT JOIN spans c ON c.parent_id = s.span_id AND c.trace_id = s.trace_id
        WHERE s.operation = 'GET /books/{item}' GROUP BY 1""").fetchall()
    )
    assert calls["books-2"] > calls["books-1"]  # chattier too


def test_no_process_outlives_the_run(testbed_run: tuple[RunResult, object]) -> None:
    assert processes_of(testbed_run[0].run_id) == []
