"""monitoring/: the alert rules and the Grafana dashboard name only metrics the agent and the controller
serve (promtool tests the rules themselves, in make lint)."""

from __future__ import annotations

import json
import re

import yaml

from appliance.health import dcgm
from appliance.health.agent import Metrics
from appliance.health.controller import Controller, ControllerConfig, plan
from appliance.health.smi import Finding, Reading
from tests.conftest import PROJECT

MONITORING = PROJECT / "monitoring"
NAME = re.compile(r"\bappliance_[a-z_]+")


def served() -> set[str]:
    """The metric families the agent and the controller declare (# TYPE), with a histogram's series."""
    agent = Metrics()
    throttled = Finding("ClocksThrottled", "ignore", "ignore: x", "00000000:90:00.0")
    agent.smi = Reading(True, True, (), (throttled,), 0.1)
    agent.dcgm = dcgm.Reading(True, "Healthy", (), 0.2)
    controller = Controller(ControllerConfig(), client=object())  # type: ignore[arg-type]
    controller.last_plan = plan([], controller.config, 0.0)  # after its first reconciliation
    names = set()
    for line in (agent.render("gpu-1") + controller.metrics()).splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}_{part}" for part in ("bucket", "sum", "count"))
    return names


def test_the_alert_rules_name_only_served_metrics():
    rules = yaml.safe_load((MONITORING / "prometheus" / "gpu-health-rules.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    named = {name for expr in exprs for name in NAME.findall(expr)}
    assert named and named <= served(), named - served()


def test_the_dashboard_names_only_served_metrics():
    dashboard = json.loads((MONITORING / "grafana" / "gpu-health-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = {name for expr in exprs for name in NAME.findall(expr)}
    assert len(named) >= 10 and named <= served(), named - served()
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
