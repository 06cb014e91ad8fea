"""The stand-in's state and controls (``StandIn``): what to answer, what was received."""

from __future__ import annotations

import collections
import math
import random
import threading
import time

from voucherify_ingest.standin.actions import _check_action
from voucherify_ingest.standin.activity import ActivityLog
from voucherify_ingest.standin.handler import _Handler, _Server, _Server6
from voucherify_ingest.standin.oauth import TokenIssuer
from voucherify_ingest.standin.records import Received, _Verdict


class StandIn:
    """A Voucherify stand-in on loopback; ``with StandIn() as api: ... api.url``."""

    def __init__(
        self,
        app_id: str = "test-app",
        app_token: str = "test-token",  # noqa: S107 - a stand-in's test credential
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        token_lifetime_s: float = 900.0,
    ):
        self.app_id, self.app_token = app_id, app_token
        self.tokens = TokenIssuer(token_lifetime_s)  # POST /v1/oauth/token, Bearer auth
        self.host, self.port, self.seed = host, port, seed
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ctl = threading.Lock()
        self._cond = threading.Condition()
        self._reset_state()

    def _reset_state(self) -> None:
        with self._ctl:
            self._plan: collections.deque[dict] = collections.deque()
            self._down: tuple[int, dict] | None = None
            self._latency_s = 0.0
            self._chaos: dict | None = None
            self._rng = random.Random(self.seed)
            self._rate: dict | None = None
            self._tat = 0.0  # GCRA theoretical arrival time, on time.monotonic()
            self._refuse: tuple[float, int | None] | None = None
            self._too_many = 0
            self._activity_ctl = {"lag_s": 0.0, "fail": None, "stall_s": 0.0}
            self._activities = ActivityLog()
        with self._cond:
            self._records: list[Received] = []
            self._delivered_n = 0

    # -- lifecycle --

    def start(self) -> StandIn:
        """Bind and serve in a daemon thread; the port is known as soon as this returns."""
        if self._server is not None:
            raise RuntimeError("StandIn already started")
        server_cls = _Server6 if ":" in self.host else _Server
        self._stopping.clear()
        self._server = server_cls((self.host, self.port), _Handler)
        self._server.standin = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"standin:{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, cut open connections, wake stalled handlers and wait for them."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections(time.monotonic() + timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> StandIn:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("StandIn is not started")
        host, port = self._server.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # -- records --

    def _record(self, rec: Received) -> None:
        with self._cond:
            self._records.append(rec)
            if rec.status == 200:
                self._delivered_n += 1
            self._cond.notify_all()

    def _record_activity(self, request, answer: dict, at: float) -> None:
        with self._ctl:
            lag_s, log = self._activity_ctl["lag_s"], self._activities
        if isinstance(request, dict):
            log.record(request, answer, at, lag_s)

    def _lookup(self, ref: str, query: str, authed: bool) -> tuple[int, dict | None, float]:
        """One List Customer Activity call: (status, body, seconds to stall first)."""
        with self._ctl:
            ctl, log = dict(self._activity_ctl), self._activities
        if not authed:
            log.lookups += 1
            return 401, None, 0.0
        if ctl["fail"]:
            log.lookups += 1
            return int(ctl["fail"]), None, ctl["stall_s"]
        status, body = log.page(ref, query)
        return status, body, ctl["stall_s"]

    def set_activity(self, lag_s: float = 0.0, fail: int | None = None,
                     stall_s: float = 0.0) -> None:
        """List Customer Activity: new activities visible ``lag_s`` after their event;
        ``fail`` answers every lookup with that status; ``stall_s`` delays every answer."""
        with self._ctl:
            self._activity_ctl = {"lag_s": max(0.0, float(lag_s)),
                                  "fail": int(fail) if fail else None,
                                  "stall_s": max(0.0, float(stall_s))}

    def received(self) -> list[Received]:
        with self._cond:
            return list(self._records)

    def delivered(self) -> list[Received]:
        return [r for r in self.received() if r.status == 200]

    def delivered_ids(self) -> collections.Counter:
        """Event ids (``X-Ingest-Event-Id``) answered 200; a count above 1 is a duplicate."""
        return collections.Counter(r.event_id for r in self.delivered() if r.event_id is not None)

    def wait_for_delivered(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._delivered_n >= n, timeout)

    def wait_for_received(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._records) >= n, timeout)

    def too_many_count(self) -> int:
        """How many 429s the rate limit (``set_rate_limit``) answered."""
        with self._ctl:
            return self._too_many

    def stats(self) -> dict:
        records = self.received()
        ids = collections.Counter(r.event_id for r in records if r.status == 200 and r.event_id)
        return {
            "total": len(records),
            "delivered": sum(1 for r in records if r.status == 200),
            "by_status": dict(collections.Counter(str(r.status) for r in records)),
            "duplicates": sum(n - 1 for n in ids.values() if n > 1),
            "duplicate_ids": sum(1 for n in ids.values() if n > 1),
            "schema_invalid": sum(1 for r in records if not r.schema_valid),
            "too_many": self.too_many_count(),
            "tokens_issued": self.tokens.issued,
            "lookups": self._activities.lookups,
            "activities": self._activities.count(),
        }

    def reset(self) -> None:
        """Forget records and counters and undo every control (plan, down, chaos, limits)."""
        self._reset_state()
        self.tokens.reset()

    # -- controls --

    def plan(self, *actions: dict) -> None:
        """Queue one-shot actions, consumed one per request before the default behaviour."""
        checked = [_check_action(a) for a in actions]
        with self._ctl:
            self._plan.extend(checked)

    def set_down(self, status: int = 503, headers: dict[str, str] | None = None) -> None:
        with self._ctl:
            self._down = (status, dict(headers or {}))

    def set_up(self) -> None:
        with self._ctl:
            self._down = None

    def set_latency(self, seconds: float) -> None:
        with self._ctl:
            self._latency_s = max(0.0, float(seconds))

    def set_chaos(
        self,
        p_503: float = 0.0,
        p_stall: float = 0.0,
        p_drop: float = 0.0,
        stall_s: float = 3.0,
        p_429: float = 0.0,
        retry_after_s: int = 1,
    ) -> None:
        """Random faults from a ``random.Random(seed)``; all probabilities 0 turns chaos off."""
        if p_503 + p_stall + p_drop + p_429 > 1.0:
            raise ValueError("chaos probabilities add up to more than 1")
        chaos = {
            "p_503": p_503,
            "p_stall": p_stall,
            "p_drop": p_drop,
            "stall_s": stall_s,
            "p_429": p_429,
            "retry_after_s": retry_after_s,
        }
        with self._ctl:
            self._chaos = chaos if p_503 + p_stall + p_drop + p_429 > 0 else None

    def set_rate_limit(
        self, per_second: float | None, burst: int = 1, retry_after_s: int | None = None
    ) -> None:
        """Enforce ``per_second`` with a bucket of ``burst`` (GCRA); None or 0 disables."""
        with self._ctl:
            if not per_second:
                self._rate = None
                return
            self._rate = {
                "per_second": float(per_second),
                "burst": max(1, int(burst)),
                "retry_after_s": retry_after_s,
            }
            self._tat = 0.0

    def refuse_for(self, seconds: float, retry_after_s: int | None = None) -> None:
        """A 429 storm: answer everything 429 with ``Retry-After`` for ``seconds`` from now."""
        with self._ctl:
            self._refuse = (time.monotonic() + seconds, retry_after_s)

    def config(self) -> dict:
        """The current controls, as JSON-ready data."""
        with self._ctl:
            refuse_s = max(0.0, self._refuse[0] - time.monotonic()) if self._refuse else 0.0
            return {
                "down": {"status": self._down[0], "headers": self._down[1]} if self._down else None,
                "latency_s": self._latency_s,
                "chaos": self._chaos,
                "rate_limit": self._rate,
                "refusing_for_s": refuse_s,
                "plan": list(self._plan),
                "activity": dict(self._activity_ctl),
            }

    def configure(self, changes: dict) -> None:
        """Apply a ``POST /_standin/config`` document; unknown keys refuse the whole document."""
        handlers = {
            "down": lambda v: (
                self.set_up()
                if v is False or v is None
                else (
                    self.set_down(**v)
                    if isinstance(v, dict)
                    else self.set_down()
                    if v is True
                    else self.set_down(int(v))
                )
            ),
            "up": lambda v: self.set_up() if v else None,
            "latency_s": self.set_latency,
            "chaos": lambda v: self.set_chaos(**(v or {})),
            "rate_limit": lambda v: self.set_rate_limit(**v) if v else self.set_rate_limit(None),
            "refuse_for": lambda v: self.refuse_for(**v),
            "plan": lambda v: self.plan(*v),
            "token_lifetime_s": self.tokens.set_lifetime,
            "revoke_tokens": lambda v: self.tokens.revoke_all() if v else None,
            "activity": lambda v: self.set_activity(**(v or {})),
        }
        if not isinstance(changes, dict) or set(changes) - set(handlers):
            raise ValueError(f"config keys must be among {sorted(handlers)}")
        for key, value in changes.items():
            handlers[key](value)

    # -- the decision, under one lock --

    def _decide(self, authed: bool) -> _Verdict:
        now = time.monotonic()
        with self._ctl:
            verdict = _Verdict(delay_s=self._latency_s)
            action = self._plan.popleft() if self._plan else None
            if action is not None:
                if "stall" not in action:
                    return _planned(action, verdict)
                verdict.delay_s += action["stall"]
                verdict.outcome = "stalled"
            if self._down is not None:
                verdict.status, verdict.headers = self._down[0], dict(self._down[1])
                verdict.outcome = "down"
                return verdict
            if self._chaos is not None and self._roll_chaos(verdict):
                return verdict
            if self._refuse is not None:
                until, retry_after = self._refuse
                if until > now:
                    wait = until - now
                    verdict.status, verdict.outcome = 429, "refused"
                    verdict.headers = _too_many_headers(wait, retry_after, None)
                    return verdict
                self._refuse = None
            if not authed:
                verdict.status, verdict.outcome = 401, "unauthorized"
                return verdict
            if self._rate is not None:
                self._apply_rate(now, verdict)
            return verdict

    def _roll_chaos(self, verdict: _Verdict) -> bool:
        c, roll = self._chaos, self._rng.random()
        if roll < c["p_503"]:
            verdict.status, verdict.outcome = 503, "chaos_503"
        elif roll < c["p_503"] + c["p_429"]:
            verdict.status, verdict.outcome = 429, "chaos_429"
            verdict.headers = {"Retry-After": str(max(1, int(c["retry_after_s"])))}
        elif roll < c["p_503"] + c["p_429"] + c["p_drop"]:
            verdict.drop, verdict.outcome = True, "chaos_drop"
        elif roll < c["p_503"] + c["p_429"] + c["p_drop"] + c["p_stall"]:
            verdict.delay_s += c["stall_s"]
            verdict.outcome = "chaos_stall"
            return False
        else:
            return False
        return True

    def _apply_rate(self, now: float, verdict: _Verdict) -> None:
        rate = self._rate
        interval = 1.0 / rate["per_second"]
        burst = rate["burst"]
        tat = max(self._tat, now)
        allowed_at = tat - interval * (burst - 1)
        if allowed_at > now:
            self._too_many += 1
            verdict.status, verdict.outcome = 429, "rate_limited"
            verdict.headers = _too_many_headers(allowed_at - now, rate["retry_after_s"], burst)
            return
        self._tat = tat + interval
        remaining = int((interval * burst - (self._tat - now)) / interval + 1e-9)
        verdict.headers = {
            "X-Rate-Limit-Limit": str(burst),
            "X-Rate-Limit-Remaining": str(max(0, remaining)),
        }


def _too_many_headers(wait_s: float, retry_after_s: int | None, limit: int | None) -> dict:
    retry_after = max(1, int(retry_after_s) if retry_after_s else math.ceil(wait_s))
    headers = {
        "Retry-After": str(retry_after),
        "X-Rate-Limit-Remaining": "0",
        "X-Rate-Limit-Retry": str(math.ceil(time.time() + wait_s)),
    }
    if limit is not None:
        headers["X-Rate-Limit-Limit"] = str(limit)
    return headers


def _planned(action: dict, verdict: _Verdict) -> _Verdict:
    verdict.outcome = "planned"
    if "drop" in action:
        verdict.drop = True
    elif "html" in action:
        verdict.status, verdict.html = action["html"], True
    elif "garbage" in action:
        verdict.status, verdict.garbage = 200, action["garbage"]
    else:
        verdict.status, verdict.body = action["respond"], action["body"]
        verdict.headers = dict(action["headers"])
    return verdict
