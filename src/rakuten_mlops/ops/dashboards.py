"""The Grafana dashboards in config/grafana/dashboards/: reading, checking, publishing.

Compose mode provisions them from files (config/grafana/provisioning/). For a Grafana
that does not use provisioning, `publish` (the `publish-dashboards` command) pushes
them through its HTTP API with `grafana-client`: a folder, then each dashboard with
overwrite, its datasource uids rewritten to that Grafana's (`lake`, `prometheus` by
default, as provisioned).

`panel_queries` lists every query of every panel, and `expand_sql` replaces the few
Grafana macros the SQL panels use, so tests can run each query for real.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rakuten_mlops.settings import Settings, project_root

DASHBOARD_DIR = Path("config/grafana/dashboards")
DATASOURCE_UIDS = ("lake", "prometheus")


class PublishError(RuntimeError):
    """Grafana could not be reached, refused the credentials, or refused a dashboard."""


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str  # uid
    panel: str  # title
    ref_id: str
    datasource: str  # uid: lake | prometheus
    query: str  # rawSql or PromQL expr
    format: str = ""  # SQL: table | time_series
    instant: bool = False


def dashboard_files(root: Path | None = None) -> list[Path]:
    folder = (root or project_root()) / DASHBOARD_DIR
    return sorted(folder.glob("*.json"))


def load_dashboards(root: Path | None = None) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in dashboard_files(root)]


def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # panels inside collapsed rows


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    """Every target of every panel (rows excluded), with its datasource uid."""
    found = []
    for panel in _panels(dashboard.get("panels", [])):
        if panel.get("type") == "row":
            continue
        for target in panel.get("targets", []):
            datasource = (target.get("datasource") or panel.get("datasource") or {}).get("uid", "")
            text = target.get("rawSql") if "rawSql" in target else target.get("expr", "")
            found.append(
                PanelQuery(
                    dashboard["uid"],
                    panel.get("title", ""),
                    target["refId"],
                    datasource,
                    text,
                    target.get("format", ""),
                    bool(target.get("instant")),
                )
            )
    return found


_TIME_FILTER = re.compile(r"\$__timeFilter\(([^)]+)\)")


def expand_sql(sql: str, start: datetime, end: datetime) -> str:
    """The query Grafana would send for the time range [start, end] (macros it uses)."""
    sql = _TIME_FILTER.sub(
        lambda m: f"{m.group(1)} BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'", sql
    )
    sql = sql.replace("$__timeFrom()", f"'{start.isoformat()}'")
    sql = sql.replace("$__timeTo()", f"'{end.isoformat()}'")
    if "$" in sql:
        raise ValueError(f"unexpanded Grafana variable in: {sql}")
    return sql


def expand_promql(expr: str, rate_interval: str = "1m", range_: str = "5m") -> str:
    """A PromQL expression with Grafana's interval variables replaced."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    expr = expr.replace("$__interval", rate_interval)
    if "$" in expr:
        raise ValueError(f"unexpanded Grafana variable in: {expr}")
    return expr


def with_datasources(dashboard: dict[str, Any], uids: dict[str, str]) -> dict[str, Any]:
    """A copy whose datasource uids are mapped through `uids` (provisioned uid -> target)."""

    def rewrite(node):
        if isinstance(node, dict):
            if set(node) >= {"uid", "type"} and node.get("uid") in uids:
                node["uid"] = uids[node["uid"]]
            for value in node.values():
                rewrite(value)
        elif isinstance(node, list):
            for value in node:
                rewrite(value)

    copied = copy.deepcopy(dashboard)
    rewrite(copied)
    return copied


def _credential(settings: Settings):
    if settings.grafana_token is not None and settings.grafana_token.get_secret_value():
        return settings.grafana_token.get_secret_value()
    if settings.grafana_admin_password is not None:
        return (settings.grafana_admin_user, settings.grafana_admin_password.get_secret_value())
    raise PublishError(
        "no Grafana credentials: set GRAFANA_TOKEN (a service-account token) "
        "or GRAFANA_ADMIN_USER / GRAFANA_ADMIN_PASSWORD"
    )


def publish(
    settings: Settings,
    url: str | None = None,
    folder: str = "Rakuten MLOps",
    datasources: dict[str, str] | None = None,
    report: Callable[[str], None] = print,
    root: Path | None = None,
) -> list[str]:
    """Create `folder` if needed and upload every dashboard into it (overwrite); their urls."""
    import requests
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError, GrafanaException

    base = url or settings.grafana_base_url
    api = GrafanaApi.from_url(base, credential=_credential(settings), timeout=15)
    uids = {k: v for k, v in (datasources or {}).items() if k != v}
    dashboards = load_dashboards(root)
    if not dashboards:
        raise PublishError(f"no dashboard JSON in {(root or project_root()) / DASHBOARD_DIR}")
    published = []
    try:
        folder_uid = _ensure_folder(api, folder, GrafanaClientError)
        for dashboard in dashboards:
            body = with_datasources(dashboard, uids)
            body.pop("id", None)  # Grafana matches on uid; a stale numeric id would conflict
            answer = api.dashboard.update_dashboard(
                {
                    "dashboard": body,
                    "folderUid": folder_uid,
                    "overwrite": True,
                    "message": "rakuten-mlops publish-dashboards",
                }
            )
            link = f"{base.rstrip('/')}{answer.get('url', '/d/' + body['uid'])}"
            report(f"{body['title']}: {answer.get('status', 'success')} {link}")
            published.append(link)
    except requests.exceptions.RequestException as exc:
        raise PublishError(f"Grafana at {base} is unreachable: {exc}") from exc
    except GrafanaException as exc:
        raise PublishError(f"Grafana at {base} refused: {exc}") from exc
    return published


def _ensure_folder(api, title: str, not_found) -> str:
    uid = re.sub(r"[^a-z0-9-]+", "-", title.lower()).strip("-")[:40] or "rakuten-mlops"
    try:
        return api.folder.get_folder(uid)["uid"]
    except not_found as exc:
        if exc.status_code != 404:
            raise
        return api.folder.create_folder(title, uid=uid)["uid"]
