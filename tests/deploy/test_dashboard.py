"""The Grafana dashboard queries only metrics that are exported (scraped from a live API and
from the metrics a worker serves), and shows every `licchavi_` family at least once."""

import json

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.engine import Engine

from app.main import create_app
from tests.dashboard_support import (
    DASHBOARD,
    dashboard_metric_names,
    exported_names,
    metric_names,
    parse,
)
from workers.metrics import instruments


def test_the_dashboard_names_only_exported_metrics_and_all_of_ours(sqlite_engine: Engine) -> None:
    with TestClient(create_app()) as client:
        api = parse(client.get("/metrics").text)
    registry = CollectorRegistry()
    for metric in vars(instruments()).values():
        registry.register(metric)
    worker = parse(generate_latest(registry).decode())
    exported = exported_names(api) | exported_names(worker)

    used = dashboard_metric_names()
    assert used <= exported, f"queried but not exported: {sorted(used - exported)}"
    ours = {
        name
        for name in {*api.families, *worker.families}
        # (`_created`: a counter's creation time, which single-process exposition adds.)
        if name.startswith("licchavi_") and not name.endswith("_created")
    }
    shown = {name for name in ours if exported_names_of(name, used)}
    assert shown == ours, f"exported but on no panel: {sorted(ours - shown)}"


def exported_names_of(family: str, used: set[str]) -> bool:
    return any(name == family or name.removeprefix(family) in _SUFFIXES for name in used)


_SUFFIXES = {"_total", "_bucket", "_sum", "_count"}


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert dashboard["uid"] and dashboard["templating"]["list"][0]["type"] == "datasource"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert metric_names(target["expr"]), target
