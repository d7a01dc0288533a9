"""The admin page as HTML: a sign-in form and the dashboard, charts drawn as inline SVG.

No script and no outside resource: the page works under a strict Content-Security-Policy and
shows the same thing in any browser. Every value is escaped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape
from typing import Any

from .. import __version__
from .actions import InstanceView, UserView

MIB = 1024 * 1024
REFRESH_SECONDS = 30
CHART_WIDTH = 160
CHART_HEIGHT = 36
RSS_COLOR = "#3370ff"
CPU_COLOR = "#14a85f"

STYLE = """
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,sans-serif;color:#1f2329;
background:#f5f6f7}header{background:#3370ff;color:#fff;padding:14px 24px;display:flex;
align-items:center;gap:16px}header h1{font-size:18px;margin:0;flex:1}header form{margin:0}
main{padding:16px 24px;max-width:1200px}section{background:#fff;border:1px solid #dee0e3;
border-radius:8px;padding:12px 16px;margin-bottom:16px}h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 8px;
border-top:1px solid #eff0f1;vertical-align:middle}th{color:#646a73;font-weight:500;
border-top:0}.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;
background:#eff0f1}.ready,.logged-in,.sent{background:#d9f5e5}.idle,.spare,.default{
background:#e1eaff}.needs-login,.logged-out,.warning,.suppressed{background:#fff3d6}
.critical,.failed,.exited{background:#fde2e2}button{font:inherit;border:1px solid #c9cdd4;
background:#fff;border-radius:6px;padding:3px 10px;cursor:pointer}button.danger{color:#d83931;
border-color:#f0b8b5}.muted{color:#8f959e}.stats{display:flex;gap:24px;flex-wrap:wrap}
.stat b{display:block;font-size:20px}code{font-size:12px}svg{display:block}
.login{max-width:360px;margin:12vh auto;background:#fff;padding:24px;border-radius:8px;
border:1px solid #dee0e3}.login input{width:100%;padding:8px;margin:8px 0 12px;font:inherit}
.error{color:#d83931}
"""


def _page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} - LarkGate admin</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><style>{STYLE}</style></head>
<body>{body}</body></html>"""


def login_page(error: str = "") -> str:
    shown = f'<p class="error">{escape(error)}</p>' if error else ""
    return _page(
        "Sign in",
        f"""<form class="login" method="post" action="/admin/login">
<h1>LarkGate admin</h1>{shown}
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<button type="submit">Sign in</button>
<p class="muted">The token is <code>LARKGATE_ADMIN_TOKEN</code>, or the file
<code>admin.token</code> in the gateway's data directory.</p></form>""",
    )


def sparkline(values: Sequence[float], color: str, label: str, ceiling: float = 0.0) -> str:
    """A small line chart of ``values`` (oldest first) as inline SVG."""
    w, h = CHART_WIDTH, CHART_HEIGHT
    top = max([ceiling, *(v * 1.25 for v in values), 1e-9])
    if len(values) < 2:
        points = [(0.0, h - 1.0), (float(w), h - 1.0)]
    else:
        step = w / (len(values) - 1)
        points = [(i * step, h - 1 - (v / top) * (h - 4)) for i, v in enumerate(values)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    area = f"0,{h} {line} {w},{h}"
    return (
        f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{escape(label)}"><polygon points="{area}" fill="{color}" '
        f'fill-opacity="0.15"/><polyline points="{line}" fill="none" stroke="{color}" '
        f'stroke-width="1.5"/></svg>'
    )


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) if epoch else "-"


def _pill(text: str) -> str:
    return f'<span class="pill {escape(text.replace(" ", "-"))}">{escape(text)}</span>'


def _post_button(action: str, csrf: str, label: str, confirm_name: str) -> str:
    return (
        f'<form method="post" action="{escape(action)}">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<button class="danger" type="submit" name="confirm" value="{escape(confirm_name)}">'
        f"{escape(label)}</button></form>"
    )


def _instance_rows(instances: list[InstanceView], csrf: str) -> str:
    if not instances:
        return '<tr><td colspan="8" class="muted">No instance is running.</td></tr>'
    rows = []
    for i in instances:
        who = escape(i.user_name or "") + (f" <code>{escape(i.user)}</code>" if i.user else "")
        rss = f"{i.rss_bytes / MIB:.0f} MiB" if i.rss_bytes is not None else "-"
        cpu = f"{i.cpu_percent:.1f}%" if i.cpu_percent is not None else "-"
        stop = (
            _post_button(f"/admin/instances/{i.id}/stop", csrf, "Stop", i.id)
            if i.role == "user"
            else ""
        )
        rows.append(
            f'<tr data-instance="{escape(i.id)}"><td><code>{escape(i.id)}</code></td>'
            f"<td>{_pill(i.state)}</td><td>{who or '-'}</td><td>{_age(i.age_seconds)}</td>"
            f"<td>{rss}<br>{sparkline(i.rss_history, RSS_COLOR, 'memory of ' + i.id)}</td>"
            f"<td>{cpu}<br>{sparkline(i.cpu_history, CPU_COLOR, 'CPU of ' + i.id, 100)}</td>"
            f"<td>{i.pid}</td><td>{stop}</td></tr>"
        )
    return "".join(rows)


def _user_rows(users: list[UserView], csrf: str) -> str:
    if not users:
        return '<tr><td colspan="7" class="muted">Nobody has logged in yet.</td></tr>'
    rows = []
    for u in users:
        reason = f'<br><span class="muted">{escape(u.reason)}</span>' if u.reason else ""
        end = (
            _post_button(f"/admin/users/{u.user}/end-sessions", csrf, "End sessions", u.user)
            if u.sessions
            else ""
        )
        instance = f"<code>{escape(u.instance)}</code>" if u.instance else "-"
        rows.append(
            f'<tr data-user="{escape(u.user)}"><td>{escape(u.name)}</td>'
            f"<td><code>{escape(u.user)}</code></td><td>{_pill(u.login)}{reason}</td>"
            f"<td>{_when(u.last_seen_at)}</td><td>{u.sessions}</td><td>{instance}</td>"
            f"<td>{end}</td></tr>"
        )
    return "".join(rows)


def _alert_rows(alerts: list[dict[str, Any]]) -> str:
    if not alerts:
        return '<tr><td colspan="4" class="muted">No alert since the gateway started.</td></tr>'
    rows = []
    for a in alerts:
        level = "resolved" if a["status"] == "resolved" else a["severity"]
        rows.append(
            f"<tr><td>{_when(a['at'])}</td><td>{_pill(level)}</td>"
            f"<td>{escape(a['title'])}</td><td>{_pill(a['result'].split(' ')[0])}</td></tr>"
        )
    return "".join(rows)


def dashboard(
    status: dict[str, Any],
    *,
    instances: list[InstanceView],
    users: list[UserView],
    gateway_rss: list[int],
    gateway_cpu: list[float],
    csrf: str,
    notice: str = "",
) -> str:
    g = status["gateway"]
    sessions = g["sessions"]
    rss = f"{g['rss_bytes'] / MIB:.0f} MiB" if g["rss_bytes"] is not None else "-"
    cpu = f"{g['cpu_percent']:.1f}%" if g["cpu_percent"] is not None else "-"
    shown_notice = f'<section role="status">{escape(notice)}</section>' if notice else ""
    body = f"""<header><h1>LarkGate admin</h1><span>v{escape(__version__)}</span>
<form method="post" action="/admin/logout"><input type="hidden" name="csrf"
value="{escape(csrf)}"><button type="submit">Sign out</button></form></header>
<main>{shown_notice}
<section><h2>Gateway</h2><div class="stats">
<div class="stat"><span class="muted">up</span><b>{_age(time.time() - g["started_at"])}</b></div>
<div class="stat"><span class="muted">requests/s</span><b>{g["requests_per_second"]:.2f}</b></div>
<div class="stat"><span class="muted">sessions</span>
<b>{sum(sessions.values())}</b></div>
<div class="stat"><span class="muted">memory</span><b>{rss}</b>
{sparkline(gateway_rss, RSS_COLOR, "gateway memory")}</div>
<div class="stat"><span class="muted">CPU</span><b>{cpu}</b>
{sparkline(gateway_cpu, CPU_COLOR, "gateway CPU", 100)}</div></div></section>
<section><h2>Instances</h2><table id="instances"><thead><tr><th>id</th><th>state</th>
<th>user</th><th>age</th><th>memory</th><th>CPU</th><th>pid</th><th></th></tr></thead>
<tbody>{_instance_rows(instances, csrf)}</tbody></table></section>
<section><h2>Users</h2><table id="users"><thead><tr><th>name</th><th>user</th><th>login</th>
<th>last use (UTC)</th><th>sessions</th><th>instance</th><th></th></tr></thead>
<tbody>{_user_rows(users, csrf)}</tbody></table></section>
<section><h2>Recent alerts</h2><table id="alerts"><thead><tr><th>time (UTC)</th><th>level</th>
<th>alert</th><th>delivery</th></tr></thead><tbody>{_alert_rows(status["alerts"])}</tbody>
</table></section></main>"""
    page = _page("Dashboard", body)
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
    return page.replace('<meta charset="utf-8">', '<meta charset="utf-8">' + refresh, 1)
