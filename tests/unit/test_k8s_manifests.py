"""deploy/k8s/ checked without a cluster: every document against the Kubernetes schemas kubernetes-validate ships
(strict: unknown fields refuse), and the pieces against each other (the coordinator's ms_coordinator.json passes
our own validation, its pod selector matches the instances' labels, the RBAC lets its ServiceAccount watch pods,
probes hit /health and /readiness)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from mindie_like.coordinator.config import CoordinatorConfig   # noqa: E402

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSION = "1.30.0"


def documents() -> list[dict]:
    docs = []
    for f in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in documents() if d["kind"] == kind]


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_schema(doc):
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_pieces_fit():
    coord = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "ms-coordinator")
    instances = [d for d in by_kind("Deployment") if d["metadata"]["labels"].get("role") == "instance"]
    assert instances
    secret = next(d for d in by_kind("Secret") if d["metadata"]["name"] == "mindie-like-coordinator-config")
    cfg = CoordinatorConfig.model_validate(json.loads(secret["stringData"]["ms_coordinator.json"]))
    k = cfg.instances.kubernetes
    assert k is not None and k.namespace == "mindie-like"
    for inst in instances:
        pod_labels = inst["spec"]["template"]["metadata"]["labels"]
        assert all(pod_labels.get(a) == b for a, b in k.selector.items())
        ports = {p["containerPort"] for p in inst["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert k.port in ports
        probe = inst["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        assert f":{k.port}/health" in " ".join(probe["exec"]["command"])
    spec = coord["spec"]["template"]["spec"]
    sa = spec["serviceAccountName"]
    binding = by_kind("RoleBinding")[0]
    assert binding["subjects"][0]["name"] == sa
    role = next(r for r in by_kind("Role") if r["metadata"]["name"] == binding["roleRef"]["name"])
    assert {"get", "list", "watch"} <= set(role["rules"][0]["verbs"]) and role["rules"][0]["resources"] == ["pods"]
    ports = {p["containerPort"] for p in spec["containers"][0]["ports"]}
    assert ports == {int(cfg.http_config.predict_port), int(cfg.http_config.manage_port)}
    assert "/readiness" in " ".join(spec["containers"][0]["readinessProbe"]["exec"]["command"])
    service = by_kind("Service")[0]
    assert service["spec"]["selector"] == coord["spec"]["selector"]["matchLabels"]
    assert spec["terminationGracePeriodSeconds"] > cfg.instances.shutdown_grace_seconds
