"""Read Prometheus scrapes and the Grafana dashboard's queries, to check one against the other."""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "licchavi.json"

# PromQL words that are not metric names: functions, aggregations and their modifiers.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "rate", "irate", "increase", "delta",
    "histogram_quantile", "abs", "clamp_min", "clamp_max", "absent", "time", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "offset", "topk", "bottomk",
}  # fmt: skip


@dataclass
class Scrape:
    """One scrape: sample values keyed by (name, sorted labels), and each family's type."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)


def parse(exposition: str) -> Scrape:
    scrape = Scrape()
    for family in text_string_to_metric_families(exposition):
        scrape.families[family.name] = family.type
        for sample in family.samples:
            scrape.values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return scrape


def exported_names(scrape: Scrape) -> set[str]:
    """Every series name the scrape exports or would export once a family has samples."""
    names = {name for name, _labels in scrape.values}
    for family, kind in scrape.families.items():
        names.add(family)
        if kind == "counter":
            names.add(f"{family}_total")
        if kind == "histogram":
            names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expressions.append(target["expr"])
    return expressions


def metric_names(expression: str) -> set[str]:
    """The metric names one PromQL expression reads."""
    bare = re.sub(r'"[^"]*"', "", expression)  # label values
    bare = re.sub(r"\{[^}]*\}", "", bare)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # ranges
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)  # grouping labels
    words = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare)
    return {word for word in words if word not in PROMQL_WORDS}


def dashboard_metric_names() -> set[str]:
    return {name for expression in dashboard_expressions() for name in metric_names(expression)}
