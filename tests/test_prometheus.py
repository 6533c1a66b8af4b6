"""deploy/prometheus and deploy/grafana, proven on a real Prometheus scraping the real stack.

Prometheus (Debian's binary), prometheus-nginx-exporter and prometheus-node-exporter run on
free loopback ports; the config is the repository's, with this test's targets and a 1 s
scrape interval. Every dashboard panel's PromQL and every recording rule must return data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from .scrape import INFER, PREDICT, in_parallel, infer, predict
from .stackrunner import ROOT, free_port

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "modelstack.json"
# What Grafana would put in for its variables when the dashboard shows every model.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$model": ".*"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_config_and_rules():
    config = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", *map(str, sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_alert_rules_pass_their_unit_tests():
    result = promtool("test", "rules", str(PROMETHEUS_DIR / "tests" / "alerts.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def dashboard_panels() -> list[dict]:
    return [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"]


def test_dashboards_use_the_provisioned_datasource():
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus"
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "modelstack.yml").read_text())
    assert provider["providers"][0]["options"]["path"].endswith("/modelstack")

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard_panels()
    titles = {panel["title"] for panel in panels}
    assert len(titles) == len(panels)
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == source["uid"]
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"] and target["expr"].strip(), panel["title"]


def rendered_config(directory: Path, targets: dict[str, str]) -> Path:
    """The repository's prometheus.yml with these targets (file_sd files), 1 s intervals and its rules."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / pattern) for pattern in config["rule_files"]]
    (directory / "targets").mkdir(parents=True)
    for job in config["scrape_configs"]:
        [sd] = job["file_sd_configs"]
        [target_file] = sd["files"]
        (directory / target_file).write_text(yaml.safe_dump([{"targets": [targets[job["job_name"]]]}]))
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer within {timeout} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    """A real Prometheus scraping the stack, nginx (through the exporter), the node exporter and itself."""
    directory = tmp_path_factory.mktemp("prometheus")
    ports = {name: free_port() for name in ("prometheus", "nginx", "node")}
    address = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    config = rendered_config(directory, {
        "modelstack": stack.url.removeprefix("http://"),
        "nginx": address["nginx"],
        "node": address["node"],
        "prometheus": address["prometheus"],
    })
    check = promtool("check", "config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    commands = [
        ["prometheus-nginx-exporter", f"-nginx.scrape-uri={stack.url}/nginx_status",
         f"-web.listen-address={address['nginx']}"],
        ["prometheus-node-exporter", f"--web.listen-address={address['node']}"],
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address={address['prometheus']}", "--log.level=warn"],
    ]
    log = open(directory / "processes.log", "wb")
    processes = [subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT) for command in commands]
    try:
        wait_for(f"http://{address['prometheus']}/-/ready")
        yield f"http://{address['prometheus']}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
        shutil.rmtree(directory / "data", ignore_errors=True)


def query(prometheus: str, expr: str) -> list[dict]:
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def recording_rules() -> list[str]:
    """Each recorded series as a selector, e.g. ``name{quantile="0.95"}``."""
    groups = yaml.safe_load((PROMETHEUS_DIR / "rules" / "recording.yml").read_text())["groups"]
    selectors = []
    for rule in (rule for group in groups for rule in group["rules"]):
        labels = ",".join(f'{key}="{value}"' for key, value in rule.get("labels", {}).items())
        selectors.append(f"{rule['record']}{{{labels}}}" if labels else rule["record"])
    return selectors


def test_every_panel_and_recording_rule_returns_data(stack, prometheus):
    # Traffic of every kind a panel shows: both inference endpoints, a bad request, pages, errors.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        calls = [predict(i) for i in range(10)] + [infer(i, batch=1 + i % 4) for i in range(10)]
        assert all(r.status_code == 200 for r in in_parallel(stack.url, calls, threads=2))
        assert stack.post(PREDICT, data=b"not an image", headers={"Content-Type": "image/png"}).status_code == 415
        assert stack.post(INFER, data=b"{", headers={"Content-Type": "application/json"}).status_code == 400
        assert stack.get("/").status_code == 200
        time.sleep(0.3)

    expressions = {f"panel {panel['title']!r}: {target['legendFormat']}": substitute(target["expr"])
                   for panel in dashboard_panels() for target in panel["targets"]}
    expressions.update({f"recording rule {selector}": selector for selector in recording_rules()})
    deadline = time.monotonic() + 30
    while True:
        empty = [name for name, expr in expressions.items() if not query(prometheus, expr)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty, "no data for:\n" + "\n".join(empty)

    # Figures a panel shows are plausible, not only present.
    assert {r["metric"]["job"] for r in query(prometheus, "up == 1")} == {"modelstack", "nginx", "node", "prometheus"}
    stages = {r["metric"]["stage"] for r in query(
        prometheus, 'model_stage:modelstack_inference_stage_duration_seconds:quantile_rate5m{quantile="0.95"}')}
    assert stages == {"queue", "decode", "preprocess", "inference", "postprocess", "other"}
    ready = query(prometheus, 'sum by (model) (modelstack_model_ready)')
    assert [(r["metric"]["model"], r["value"][1]) for r in ready] == [("digits", "2")]

    rules = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = [rule for group in rules for rule in group["rules"]]
    assert len(loaded) == len(recording_rules()) + 4
    assert all(rule["health"] == "ok" for rule in loaded), [r for r in loaded if r["health"] != "ok"]
    assert not query(prometheus, "ALERTS"), "no alert is even pending on a healthy stack"

