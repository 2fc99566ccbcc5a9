"""A small synthetic microservice application whose traces tests can plant anomalies into.

Two request kinds pass a gateway: `order` (the gateway calls user-service, then
order-service, which reads and writes its database) and `login` (the gateway calls
auth-service, which reads its database). Every call is a client span on the caller and a
server span on the callee, as in TrainTicket. Span times are log-normal around fixed
medians; a span's children run one after the other inside it.

`plant(kind)` builds an order trace with one anomaly and returns it with the span id the
explanation must name:

    wrong_order   order-service is called before user-service (names the order call)
    missing_call  user-service is never called (names the order call that came instead)
    extra_call    user-service is called twice (names the second call)
    unknown_op    order-service runs an operation never seen (names that span)
    slow_span     order-service's database read takes 2 s more (names the read)
    slow_self     order-service's handler spends 2 s more in itself (names the handler)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

T0 = 1_700_000_000_000_000_000
PLANTS = ("wrong_order", "missing_call", "extra_call", "unknown_op", "slow_span", "slow_self")


@dataclass
class Node:
    service: str
    operation: str
    own_ms: float  # time the span spends in itself (before and around its children)
    children: list[Node] = field(default_factory=list)
    kind: str = "internal"
    name: str = ""  # a handle for planting


def call(caller: str, callee: str, verb: str, route: str, server: Node, name: str) -> Node:
    """A client span on the caller with the callee's server span as its only child."""
    server.kind = "server"
    return Node(caller, f"HTTP {verb}", 0.4, [server], kind="client", name=name)


def order_request() -> Node:
    user = call(
        "gateway",
        "user-service",
        "GET",
        "/api/v1/users/{id}",
        Node(
            "user-service", "/api/v1/users/{id}", 1.0, [Node("user-service", "SELECT users", 0.8)]
        ),
        "user_call",
    )
    order = call(
        "gateway",
        "order-service",
        "POST",
        "/api/v1/orders",
        Node(
            "order-service",
            "/api/v1/orders",
            1.5,
            [
                Node("order-service", "SELECT orders", 1.2, name="order_read"),
                Node("order-service", "INSERT orders", 2.0),
            ],
            name="order_handler",
        ),
        "order_call",
    )
    return Node("gateway", "/*", 0.5, [user, order], kind="server")


def login_request() -> Node:
    auth = call(
        "gateway",
        "auth-service",
        "POST",
        "/api/v1/auth/login",
        Node(
            "auth-service", "/api/v1/auth/login", 2.0, [Node("auth-service", "SELECT users", 0.9)]
        ),
        "auth_call",
    )
    return Node("gateway", "/*", 0.5, [auth], kind="server")


def _find(node: Node, name: str) -> Node:
    if node.name == name:
        return node
    for c in node.children:
        try:
            return _find(c, name)
        except KeyError:
            pass
    raise KeyError(name)


def _id(*parts: object) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


class TraceBuilder:
    """Lays traces out in time and turns them into SPANS rows."""

    def __init__(self, seed: int = 0, spread: float = 0.15) -> None:
        self.rng = np.random.default_rng(seed)
        self.spread = spread
        self.rows: list[dict[str, object]] = []
        self.n = 0

    def add(self, root: Node, start_ns: int, extra_ms: dict[str, float] | None = None) -> dict:
        """Append one trace; returns {name: span id} of the named spans."""
        trace_id = _id("trace", self.n)[:32]
        self.n += 1
        names: dict[str, str] = {}
        self._lay(root, trace_id, None, start_ns, extra_ms or {}, names, [0])
        return names

    def _lay(
        self,
        node: Node,
        trace_id: str,
        parent: str | None,
        start: int,
        extra: dict[str, float],
        names: dict[str, str],
        counter: list[int],
    ) -> int:
        span_id = _id(trace_id, counter[0])[:16]
        counter[0] += 1
        if node.name:
            names[node.name] = span_id
        own = node.own_ms * float(self.rng.lognormal(0.0, self.spread)) + extra.get(node.name, 0.0)
        t = start + int(own * 0.5e6)  # half its own time before the first child
        for child in node.children:
            t = self._lay(child, trace_id, span_id, t, extra, names, counter) + 20_000
        end = t + int(own * 0.5e6)
        self.rows.append(
            {
                "trace_id": trace_id,
                "span_id": span_id,
                "parent_id": parent,
                "service": node.service,
                "instance": f"{node.service}-7d9f8-abcde",
                "operation": node.operation,
                "kind": node.kind,
                "start_ns": start,
                "duration_ns": end - start,
                "status": "unset",
            }
        )
        return end

    def table(self) -> pa.Table:
        """The spans so far as an Arrow table (SPANS columns that matter here)."""
        return pa.Table.from_pylist(
            self.rows,
            schema=pa.schema(
                [
                    ("trace_id", pa.string()),
                    ("span_id", pa.string()),
                    ("parent_id", pa.string()),
                    ("service", pa.string()),
                    ("instance", pa.string()),
                    ("operation", pa.string()),
                    ("kind", pa.string()),
                    ("start_ns", pa.int64()),
                    ("duration_ns", pa.int64()),
                    ("status", pa.string()),
                ]
            ),
        )


def normal_traces(b: TraceBuilder, n: int, start_ns: int = T0) -> None:
    """n normal traces, 60 % orders and 40 % logins, one every 100 ms."""
    for i in range(n):
        root = order_request() if b.rng.random() < 0.6 else login_request()
        b.add(root, start_ns + i * 100_000_000)


def plant(b: TraceBuilder, kind: str, start_ns: int) -> str:
    """Add an order trace with one planted anomaly; the span id it must be explained by."""
    root = order_request()
    user, order = root.children
    if kind == "wrong_order":
        root.children = [order, user]
        return b.add(root, start_ns)["order_call"]
    if kind == "missing_call":
        root.children = [order]
        return b.add(root, start_ns)["order_call"]
    if kind == "extra_call":
        second = order_request().children[0]
        second.name = "second_user_call"
        root.children = [user, second, order]
        return b.add(root, start_ns)["second_user_call"]
    if kind == "unknown_op":
        node = _find(root, "order_read")
        node.operation = "SELECT secrets"
        return b.add(root, start_ns)["order_read"]
    if kind == "slow_span":
        return b.add(root, start_ns, {"order_read": 2000.0})["order_read"]
    if kind == "slow_self":
        return b.add(root, start_ns, {"order_handler": 2000.0})["order_handler"]
    raise ValueError(kind)
