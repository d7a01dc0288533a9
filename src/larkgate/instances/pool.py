"""The per-user map of lark-mcp children: start on first use, spares, limits, reaping, health.

One user has at most one child. A token-less default child answers tool discovery for people
who have not logged in. Warm spares are started children with no user yet; since the token
travels with each request, handing one to a newcomer is instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..store import Store
from ..userkey import user_key
from .spawner import Child, Spawner, StartFailed, kill_group, process_gone, stop_orphan

log = logging.getLogger(__name__)

LARK_MCP_MARKER = "lark-mcp"
HUNG_AFTER_FAILED_PROBES = 2


class PoolBusy(Exception):
    """Every instance slot holds a busy user; the caller should retry later."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"every instance is busy; retry after {retry_after}s")
        self.retry_after = retry_after


class InstanceFailed(Exception):
    """The user's child keeps crashing; it is not restarted until the window passes."""


@dataclass
class PoolCounts:
    users: int
    spares: int
    starting: int
    failed: int
    default_ready: bool


class InstancePool:
    def __init__(self, settings: Settings, spawner: Spawner, store: Store) -> None:
        self._settings = settings
        self._spawner = spawner
        self._store = store
        self._by_user: dict[str, Child] = {}
        self._spares: list[Child] = []
        self._default: Child | None = None
        self._starting = 0
        self._starting_users = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self._default_lock = asyncio.Lock()
        self._crashes: dict[str, list[float]] = {}
        self._failed_until: dict[str, float] = {}
        self._probe_failures: dict[str, int] = {}
        self._stopping: set[Child] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._spare_fill: asyncio.Task[None] | None = None
        self.events: dict[str, int] = {
            "spawns": 0,
            "restarts": 0,
            "reaps": 0,
            "crashes": 0,
            "refused": 0,
        }

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._stop_orphans()
        try:
            await self.default_child()
        except StartFailed as exc:
            # Serve anyway: /health says degraded and the next discovery call retries.
            log.error("default child did not start: %s", exc)
        self._fill_spares()
        self._background(self._health_loop())
        self._background(self._reap_loop())

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._spare_fill is not None and not self._spare_fill.done():
            # A spare still starting would meet the closed HTTP client and never be stopped.
            self._spare_fill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._spare_fill
        children = [*self._by_user.values(), *self._spares]
        if self._default is not None:
            children.append(self._default)
        self._by_user.clear()
        self._spares.clear()
        self._default = None
        await asyncio.gather(*(self._stop(c) for c in children), return_exceptions=True)
        await self._spawner.close()

    def _stop_orphans(self) -> None:
        for pid, _port, _user in self._store.list_children():
            if stop_orphan(pid, LARK_MCP_MARKER):
                log.warning("stopped child pid=%d left by a previous run", pid)
            self._store.forget_child(pid)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def spawner(self) -> Spawner:
        return self._spawner

    # -- counts and lookups ----------------------------------------------------------------

    def counts(self) -> PoolCounts:
        now = time.monotonic()
        return PoolCounts(
            users=len(self._by_user),
            spares=len(self._spares),
            starting=self._starting,
            failed=sum(1 for until in self._failed_until.values() if until > now),
            default_ready=self._default is not None and self._default.alive,
        )

    def children(self) -> list[Child]:
        found = [*self._by_user.values(), *self._spares]
        if self._default is not None:
            found.append(self._default)
        return found

    def instances(self) -> list[tuple[str, Child]]:
        """Every child with its role: "user", "spare" or "default" (for metrics and admin)."""
        found = [("user", c) for c in self._by_user.values()]
        found += [("spare", c) for c in self._spares]
        if self._default is not None:
            found.append(("default", self._default))
        return found

    def child_of(self, user_id: str) -> Child | None:
        return self._by_user.get(user_id)

    def log_path(self, user_id: str | None) -> Path:
        if user_id is None:
            return self._settings.data_dir / "logs" / "spare-children.log"
        return self._settings.data_dir / "users" / user_key(user_id) / "lark-mcp.log"

    # -- the default (token-less) child ----------------------------------------------------

    async def default_child(self) -> Child:
        async with self._default_lock:
            if self._default is None or not self._default.alive:
                self._default = await self._spawn(
                    None, self._settings.data_dir / "logs" / "default.log"
                )
            return self._default

    # -- user children ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, user_id: str) -> AsyncIterator[Child]:
        """The user's child, marked busy while the caller talks to it."""
        child = await self.acquire(user_id)
        child.in_flight += 1
        child.last_used = time.monotonic()
        try:
            yield child
        finally:
            child.in_flight -= 1
            child.last_used = time.monotonic()

    async def acquire(self, user_id: str) -> Child:
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            child = self._by_user.get(user_id)
            if child is not None and child.alive:
                return child
            if self._failed_until.get(user_id, 0.0) > time.monotonic():
                raise InstanceFailed(
                    "your lark-mcp process kept crashing and is paused; "
                    f"it will be tried again within {self._settings.restart_window:g}s"
                )
            self._failed_until.pop(user_id, None)
            return await self._place(user_id)

    async def _place(self, user_id: str) -> Child:
        # The cap counts user children only; warm spares are a few extra by design.
        if self._user_slots() >= self._settings.max_instances:
            await self._reclaim_one()
        spare = self._take_spare()
        if spare is not None:
            self._adopt(spare, user_id)
            self._fill_spares()
            return spare
        child = await self._spawn(user_id, self.log_path(user_id))
        self._by_user[user_id] = child
        self._fill_spares()
        return child

    def _take_spare(self) -> Child | None:
        while self._spares:
            spare = self._spares.pop(0)
            if spare.alive:
                return spare
            self._background(self._stop(spare))
        return None

    def _adopt(self, child: Child, user_id: str) -> None:
        child.user_id = user_id
        child.last_used = time.monotonic()
        child.log.move_to(self.log_path(user_id))
        self._by_user[user_id] = child
        self._remember(child, user_id)
        log.info("user %s given spare child %s", user_key(user_id), child.child_id)

    def _user_slots(self) -> int:
        return len(self._by_user) + self._starting_users

    async def _reclaim_one(self) -> None:
        """Free one slot by stopping the least recently used idle user child."""
        idle = [c for c in self._by_user.values() if c.idle]
        if not idle:
            self.events["refused"] += 1
            raise PoolBusy(self._settings.busy_retry_after)
        victim = min(idle, key=lambda c: c.last_used)
        assert victim.user_id is not None
        log.info("reclaiming idle child of user %s for a newcomer", user_key(victim.user_id))
        del self._by_user[victim.user_id]
        self.events["reaps"] += 1
        await self._stop(victim)

    async def discard_if_dead(self, user_id: str, child: Child) -> None:
        """Drop a user's child whose process is gone, before its watcher notices, so that the
        next acquire starts a new one; a live child (a dropped connection) is kept.

        A killed Node process stops listening before it has finished dying, so a refused
        connection may come first: the process gets up to stop_grace to be gone."""
        deadline = time.monotonic() + self._settings.stop_grace
        while not process_gone(child.pid):
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.02)
        if self._by_user.get(user_id) is child:
            del self._by_user[user_id]
            self.events["crashes"] += 1
            await self._stop(child)

    async def stop_user(self, user_id: str) -> bool:
        child = self._by_user.pop(user_id, None)
        if child is None:
            return False
        await self._stop(child)
        return True

    # -- spawning and stopping -------------------------------------------------------------

    async def _spawn(self, user_id: str | None, log_path: Path) -> Child:
        self._starting += 1
        self._starting_users += user_id is not None
        try:
            child = await self._spawner.start(log_path)
        finally:
            self._starting -= 1
            self._starting_users -= user_id is not None
        child.user_id = user_id
        self.events["spawns"] += 1
        self._remember(child, user_id)
        self._background(self._watch(child))
        return child

    def _remember(self, child: Child, user_id: str | None) -> None:
        """Note the child in the store so a restart after a crash can stop it. Best effort:
        with the store unwritable (disk full) the child still serves and is stopped normally."""
        try:
            self._store.record_child(child.pid, child.port, user_id)
        except sqlite3.Error as exc:
            log.error("could not record child %s in the store: %s", child.child_id, exc)

    def _forget(self, child: Child) -> None:
        try:
            self._store.forget_child(child.pid)
        except sqlite3.Error as exc:
            log.error("could not drop child %s from the store: %s", child.child_id, exc)

    async def _stop(self, child: Child) -> None:
        self._stopping.add(child)
        try:
            await self._spawner.stop(child)
        finally:
            self._forget(child)

    def _fill_spares(self) -> None:
        if self._closed or (self._spare_fill is not None and not self._spare_fill.done()):
            return
        self._spare_fill = asyncio.ensure_future(self._fill_spares_now())

    async def _fill_spares_now(self) -> None:
        while not self._closed and len(self._spares) < self._settings.warm_spares:
            try:
                spare = await self._spawn(None, self.log_path(None))
            except StartFailed as exc:
                log.warning("warm spare did not start: %s", exc)
                return
            if self._closed:
                await self._stop(spare)
                return
            self._spares.append(spare)

    # -- crashes, health and idle reaping --------------------------------------------------

    async def _watch(self, child: Child) -> None:
        code = await child.process.wait()
        if child in self._stopping or self._closed:
            self._stopping.discard(child)
            return
        self.events["crashes"] += 1
        self._forget(child)
        user = child.user_id
        log.warning(
            "child %s of %s exited unexpectedly with code %s",
            child.child_id,
            user_key(user) if user else "no user",
            code,
        )
        await self._spawner.stop(child)
        if child in self._spares:
            self._spares.remove(child)
            self._fill_spares()
        if child is self._default:
            await self._restart_default()
        elif user is not None and self._by_user.get(user) is child:
            del self._by_user[user]
            await self._restart_user(user)

    async def _restart_default(self) -> None:
        with contextlib.suppress(StartFailed):
            await self.default_child()
            self.events["restarts"] += 1

    async def _restart_user(self, user_id: str) -> None:
        now = time.monotonic()
        window = self._settings.restart_window
        crashes = [t for t in self._crashes.get(user_id, []) if now - t < window]
        crashes.append(now)
        self._crashes[user_id] = crashes
        if len(crashes) >= self._settings.restart_limit:
            self._failed_until[user_id] = now + window
            log.error(
                "child of user %s crashed %d times in %gs; marked failed",
                user_key(user_id),
                len(crashes),
                window,
            )
            return
        await asyncio.sleep(self._settings.restart_backoff * 2 ** (len(crashes) - 1))
        if self._closed or user_id in self._by_user:
            return
        try:
            await self.acquire(user_id)
            self.events["restarts"] += 1
        except (StartFailed, PoolBusy, InstanceFailed) as exc:
            log.warning("restart for user %s deferred to next call: %s", user_key(user_id), exc)

    def is_failed(self, user_id: str) -> bool:
        return self._failed_until.get(user_id, 0.0) > time.monotonic()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.health_interval)
            # Busy children are probed too: a stopped process hangs its callers until
            # child_timeout, and only a probe notices it sooner.
            alive = [c for c in self.children() if c.alive]
            await asyncio.gather(*(self._check(c) for c in alive), return_exceptions=True)

    async def _check(self, child: Child) -> None:
        if await self._spawner.probe(child, timeout=min(5.0, self._settings.health_interval)):
            self._probe_failures.pop(child.child_id, None)
            return
        failures = self._probe_failures.get(child.child_id, 0) + 1
        self._probe_failures[child.child_id] = failures
        if failures >= HUNG_AFTER_FAILED_PROBES and child.alive:
            log.warning("child %s does not answer probes; killing it", child.child_id)
            self._probe_failures.pop(child.child_id, None)
            # The watcher sees the exit and restarts it like any crash.
            kill_group(child.pid)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self._settings.reap_interval, self._settings.idle_timeout))
            await self.reap_idle()

    async def reap_idle(self) -> int:
        cutoff = time.monotonic() - self._settings.idle_timeout
        victims = [c for c in self._by_user.values() if c.idle and c.last_used < cutoff]
        for child in victims:
            assert child.user_id is not None
            if self._by_user.get(child.user_id) is child:
                del self._by_user[child.user_id]
                log.info("reaping idle child of user %s", user_key(child.user_id))
                self.events["reaps"] += 1
                await self._stop(child)
        return len(victims)
