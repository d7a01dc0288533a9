"""The admin commands: users, instances, sessions, logs, backup and restore.

They read the same store as the gateway (SQLite in WAL mode, so reading and small writes are
safe while it serves). What only the running gateway can do, stopping a live instance or
closing an open event stream, goes through its admin API on the loopback address with the
admin token; when no gateway runs, the store is changed directly, as nothing else holds it.
Pointed at a directory where no gateway has run, they say so in one line and create nothing
(no directory, store or key).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from .admin.actions import SESSION_PREFIX_MIN, find_user, login_state
from .admin.auth import NoAdminToken, admin_token, token_file
from .backup import BackupError, restore, state_sealer, write_backup
from .config import ENV_PREFIX, ConfigError, Settings, load_settings
from .datadir import require_gateway_data
from .keys import KeyFileError, open_store
from .logs import redact
from .store import Store, UserRecord
from .userkey import user_key

API_TIMEOUT = 30.0
FOLLOW_POLL = 0.5
USER_HASH_CHARS = 16
USER_HELP = "the USER hash from `users list`, the Feishu open_id, or a name only one user has"


def _store(settings: Settings) -> Store:
    """The gateway's store; an admin command never creates one, nor a key."""
    require_gateway_data(settings)
    return open_store(settings, create=False)


def lookup_user(users: list[UserRecord], ref: str) -> UserRecord | None:
    """A user by open_id, hash, or Feishu name when one user alone has it; None (and why, on
    stderr) when there is none or the name is ambiguous."""
    found = find_user(users, ref)
    if found is not None:
        return found
    named = [u for u in users if u.name and u.name.casefold() == ref.casefold()]
    if len(named) == 1:
        return named[0]
    if named:
        print(
            f"larkgate: {len(named)} users are named {ref!r}: give the USER hash from "
            "`larkgate users list`",
            file=sys.stderr,
        )
    else:
        print(f"larkgate: no user {ref!r}", file=sys.stderr)
    return None


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else "-"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


class GatewayApi:
    """The running gateway's admin API on loopback; ``None`` answers mean it is not running."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.url = settings.local_url

    def call(self, method: str, path: str) -> dict[str, Any] | None:
        try:
            token = admin_token(self._settings, create=False)
        except NoAdminToken:
            token = ""
        try:
            with httpx.Client(trust_env=False, timeout=API_TIMEOUT) as http:
                if not token:
                    # Without a token only "is a gateway there?" can be asked.
                    http.get(self.url + "/health")
                    raise ConfigError(self._no_token())
                response = http.request(
                    method, self.url + path, headers={"Authorization": f"Bearer {token}"}
                )
        except httpx.ConnectError:
            return None
        if response.status_code == 401:
            raise SystemExit(
                f"larkgate: the gateway at {self.url} refused the admin token; set "
                "LARKGATE_ADMIN_TOKEN to the one it uses"
            )
        body = response.json()
        if response.status_code >= 400:
            raise SystemExit(f"larkgate: {body.get('error', response.status_code)}")
        return body  # type: ignore[no-any-return]

    def _no_token(self) -> str:
        return (
            f"no admin token for the gateway at {self.url}: {ENV_PREFIX}ADMIN_TOKEN is not set "
            f"and {token_file(self._settings).resolve()} does not exist; set {ENV_PREFIX}DATA_DIR "
            f"to the gateway's data directory, or {ENV_PREFIX}ADMIN_TOKEN to its admin token"
        )


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = commands.add_parser("users", help="list, show or log out users")
    users_do = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = users_do.add_parser("list", help="every user with login state and last use")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_users_list)
    p = users_do.add_parser("show", help="one user's login, sessions and log file")
    p.add_argument("user", help=USER_HELP)
    p.set_defaults(run=_users_show)
    p = users_do.add_parser("logout", help="forget a user's Feishu login and end their sessions")
    p.add_argument("user", help=USER_HELP)
    p.set_defaults(run=_users_logout)

    instances = commands.add_parser("instances", help="list or stop lark-mcp instances")
    instances_do = instances.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = instances_do.add_parser("list", help="running instances (asks the running gateway)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_instances_list)
    p = instances_do.add_parser("stop", help="stop a user's instance; it restarts on next use")
    p.add_argument("instance", help="instance id from `instances list`")
    p.set_defaults(run=_instances_stop)

    sessions = commands.add_parser("sessions", help="list or end MCP sessions")
    sessions_do = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sessions_do.add_parser("list", help="sessions with transport, user and last use")
    p.add_argument("--user", help=f"only this user's: {USER_HELP}")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_sessions_list)
    p = sessions_do.add_parser("end", help="end one session, or every session of --user")
    p.add_argument(
        "session",
        nargs="?",
        help=f"the first {SESSION_PREFIX_MIN} or more characters of a SESSION from "
        "`sessions list`",
    )
    p.add_argument("--user", help=f"end every session of this user: {USER_HELP}")
    p.set_defaults(run=_sessions_end)

    p = commands.add_parser("logs", help="show a user's lark-mcp log (stdout and stderr)")
    p.add_argument("user", help="Feishu open_id or the user's hash; 'default' or 'spares'")
    p.add_argument("-n", "--lines", type=int, default=100, help="last N lines (default 100)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.set_defaults(run=_logs)

    p = commands.add_parser("backup", help="write a sealed snapshot of state and settings")
    p.add_argument("--out", type=Path, help="file or directory (default LARKGATE_BACKUP_DIR)")
    p.set_defaults(run=_backup)
    p = commands.add_parser("restore", help="put a snapshot back (the gateway must be stopped)")
    p.add_argument("snapshot", type=Path, help="a file written by `larkgate backup`")
    p.set_defaults(run=_restore)


# -- users ----------------------------------------------------------------------------------


def _session_counts(store: Store) -> dict[str, int]:
    counts: dict[str, int] = {}
    for session in store.list_sessions():
        if session.user_id:
            counts[session.user_id] = counts.get(session.user_id, 0) + 1
    return counts


def _users_list(args: argparse.Namespace) -> int:
    store = _store(load_settings())
    try:
        counts = _session_counts(store)
        rows: list[dict[str, Any]] = [
            {
                "user": user_key(u.user_id),
                "name": u.name,
                "login": login_state(u),
                "reason": u.needs_login or "",
                "last_seen": _when(u.last_seen_at),
                "sessions": counts.get(u.user_id, 0),
            }
            for u in store.list_users()
        ]
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["USER", "NAME", "LOGIN", "LAST USE", "SESSIONS"]
    print(
        _table(
            [[r["user"], r["name"], r["login"], r["last_seen"], str(r["sessions"])] for r in rows],
            header,
        )
    )
    return 0


def _users_show(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = _store(settings)
    try:
        user = lookup_user(store.list_users(), args.user)
        if user is None:
            return 1
        loaded = store.load_tokens(user.user_id)
        sessions = [s for s in store.list_sessions() if s.user_id == user.user_id]
    finally:
        store.close()
    key = user_key(user.user_id)
    lines = [
        f"user          {key}",
        f"open_id       {user.user_id}",
        f"union_id      {user.union_id}",
        f"tenant        {user.tenant_key}",
        f"name          {user.name}",
        f"login         {login_state(user)}"
        + (f" ({user.needs_login})" if user.needs_login else ""),
        f"first login   {_when(user.created_at)}",
        f"last use      {_when(user.last_seen_at)}",
    ]
    if loaded is not None:
        tokens = loaded[0]
        lines += [
            f"access until  {_when(tokens.access_expires_at)}",
            "refresh until "
            + (
                _when(tokens.refresh_expires_at)
                if tokens.refresh_token
                else "no refresh token (offline_access not granted)"
            ),
            f"authorized    {_when(tokens.authorized_at)} (Feishu allows 365 days at most)",
        ]
    lines.append(f"sessions      {len(sessions)}")
    lines += [
        f"  {s.digest[:12]}  {s.transport:<10}  last use {_when(s.last_seen_at)}" for s in sessions
    ]
    lines.append(f"log           {settings.data_dir / 'users' / key / 'lark-mcp.log'}")
    print("\n".join(lines))
    return 0


def _users_logout(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = _store(settings)
    try:
        user = lookup_user(store.list_users(), args.user)
        if user is None:
            return 1
        key = user_key(user.user_id)
        answer = GatewayApi(settings).call("POST", f"/admin/api/users/{key}/logout")
        if answer is None:
            for session in store.list_sessions():
                if session.user_id == user.user_id:
                    store.end_session_digest(session.digest)
            store.logout_user(user.user_id, "logged out by an operator")
    finally:
        store.close()
    print(f"user {key} logged out; their next call answers with a login link")
    return 0


# -- instances ------------------------------------------------------------------------------


def _instances_list(args: argparse.Namespace) -> int:
    settings = load_settings()
    api = GatewayApi(settings)
    status = api.call("GET", "/admin/api/status")
    if status is None:
        store = _store(settings)
        try:
            recorded = store.list_children()
        finally:
            store.close()
        print(f"no gateway answers at {api.url}; children recorded by its last run:")
        for pid, port, user in recorded:
            print(f"  pid {pid}  port {port}  user {user_key(user) if user else '-'}")
        return 1
    instances = status["instances"]
    if args.json:
        print(json.dumps(instances, indent=2))
        return 0
    rows = [
        [
            i["id"],
            i["state"],
            i["user"] or "-",
            i["user_name"] or "",
            f"{int(i['age_seconds'])}s",
            f"{i['rss_bytes'] // (1024 * 1024)} MiB" if i["rss_bytes"] is not None else "-",
            f"{i['cpu_percent']:.1f}%" if i["cpu_percent"] is not None else "-",
            str(i["pid"]),
        ]
        for i in instances
    ]
    print(_table(rows, ["INSTANCE", "STATE", "USER", "NAME", "AGE", "RSS", "CPU", "PID"]))
    return 0


def _instances_stop(args: argparse.Namespace) -> int:
    api = GatewayApi(load_settings())
    answer = api.call("POST", f"/admin/api/instances/{args.instance}/stop")
    if answer is None:
        print(f"larkgate: no gateway answers at {api.url}; nothing to stop", file=sys.stderr)
        return 1
    print(
        f"instance {answer['stopped']} of user {answer['user']} stopped; "
        "it starts again on that user's next call"
    )
    return 0


# -- sessions -------------------------------------------------------------------------------


def _sessions_list(args: argparse.Namespace) -> int:
    store = _store(load_settings())
    try:
        users = store.list_users()
        only = None
        if args.user:
            found = lookup_user(users, args.user)
            if found is None:
                return 1
            only = found.user_id
        rows: list[dict[str, Any]] = [
            {
                "session": s.digest[:12],
                "transport": s.transport,
                "user": user_key(s.user_id) if s.user_id else "",
                "created": _when(s.created_at),
                "last_seen": _when(s.last_seen_at),
            }
            for s in store.list_sessions()
            if only is None or s.user_id == only
        ]
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["SESSION", "TRANSPORT", "USER", "CREATED", "LAST USE"]
    print(
        _table(
            [
                [r["session"], r["transport"], r["user"] or "-", r["created"], r["last_seen"]]
                for r in rows
            ],
            header,
        )
    )
    return 0


def _sessions_end(args: argparse.Namespace) -> int:
    settings = load_settings()
    if bool(args.session) == bool(args.user):
        print("larkgate: name one session, or --user", file=sys.stderr)
        return 2
    if args.session and len(args.session) < SESSION_PREFIX_MIN:
        print(
            f"larkgate: give at least {SESSION_PREFIX_MIN} characters of a SESSION from "
            "`larkgate sessions list`",
            file=sys.stderr,
        )
        return 2
    store = _store(settings)
    try:
        if args.user:
            user = lookup_user(store.list_users(), args.user)
            if user is None:
                return 1
            path = f"/admin/api/users/{user_key(user.user_id)}/end-sessions"
            targets = [s.digest for s in store.list_sessions() if s.user_id == user.user_id]
        else:
            path = f"/admin/api/sessions/{args.session}/end"
            targets = [
                s.digest for s in store.list_sessions() if s.digest.startswith(args.session)
            ]
            if len(targets) != 1:
                print(f"larkgate: no single session starts with {args.session!r}", file=sys.stderr)
                return 1
        if GatewayApi(settings).call("POST", path) is None:
            for digest in targets:
                store.end_session_digest(digest)
    finally:
        store.close()
    print(f"ended {len(targets)} session(s)")
    return 0


# -- logs -----------------------------------------------------------------------------------


def log_file(settings: Settings, ref: str) -> Path:
    if ref == "default":
        return settings.data_dir / "logs" / "default.log"
    if ref == "spares":
        return settings.data_dir / "logs" / "spare-children.log"
    is_hash = len(ref) == USER_HASH_CHARS and all(c in "0123456789abcdef" for c in ref)
    key = ref if is_hash else user_key(ref)
    return settings.data_dir / "users" / key / "lark-mcp.log"


def _tail(path: Path, count: int) -> list[str]:
    lines: list[str] = []
    for older in (path.with_name(path.name + ".1"), path):
        if older.exists():
            lines += older.read_text(errors="replace").splitlines()
    return lines[-count:] if count > 0 else []


def _follow(path: Path) -> Iterator[str]:
    position = path.stat().st_size if path.exists() else 0
    while True:
        time.sleep(FOLLOW_POLL)
        if not path.exists():
            continue
        size = path.stat().st_size
        if size < position:  # rotated
            position = 0
        if size > position:
            with path.open("rb") as f:
                f.seek(position)
                chunk = f.read(size - position)
            position = size
            yield from chunk.decode(errors="replace").splitlines()


def _logs(args: argparse.Namespace) -> int:
    settings = load_settings()
    require_gateway_data(settings)
    path = log_file(settings, args.user)
    if not path.exists() and not args.follow:
        print(f"larkgate: no log at {path} (has this user's instance ever run?)", file=sys.stderr)
        return 1
    for line in _tail(path, args.lines):
        print(redact(line))
    if args.follow:
        try:
            for line in _follow(path):
                print(redact(line), flush=True)
        except KeyboardInterrupt:
            return 0
    return 0


# -- backup and restore ---------------------------------------------------------------------


def _backup(args: argparse.Namespace) -> int:
    settings = load_settings()
    require_gateway_data(settings)
    try:
        sealer = state_sealer(settings, create=False)
        path = write_backup(settings, sealer, args.out or settings.backup_path)
    except BackupError as exc:
        print(f"larkgate: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _restore(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        # Only the key that sealed the snapshot opens it: a restore never makes a new one.
        sealer = state_sealer(settings, create=False)
    except KeyFileError as exc:
        print(
            f"larkgate: restore refused: {exc}; put the key files of the gateway that wrote the "
            f"backup into {settings.keys_dir}, or set {ENV_PREFIX}ENCRYPTION_KEY to its key",
            file=sys.stderr,
        )
        return 1
    try:
        snapshot = restore(settings, sealer, args.snapshot)
    except (BackupError, OSError) as exc:
        print(f"larkgate: restore refused: {exc}", file=sys.stderr)
        return 1
    saved = settings.data_dir / "settings.restored.json"
    saved.write_text(json.dumps(snapshot.settings, indent=2) + "\n")
    saved.chmod(0o600)
    print(
        f"restored the store from {args.snapshot.name} (taken {_when(snapshot.created_at)} "
        f"by LarkGate {snapshot.version}); the settings it ran with, secrets left out, are "
        f"in {saved}. Start the gateway."
    )
    return 0
