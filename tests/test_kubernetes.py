"""deploy/kubernetes stays valid and in step with the code, without a cluster.

Each document is validated (jsonschema) against the schema of its kind in
``deploy/kubernetes/schemas`` — written for aexec from the Kubernetes API reference and
KEDA's CRD, strict about unknown fields — and then against the code: the containers'
arguments parse as aexec commands, their probes ask the endpoint's paths on the metrics
port, and KEDA's query names a metric the coordinator exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from aexec.cli.main import build_parser
from aexec.config import Settings
from aexec.exposition import CoordinatorCollector
from aexec.metrics import CoordinatorMetrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
SCHEMAS = {
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "Secret"): "secret-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "kustomization.json",
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path.name, doc))
    return found


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == kind}


def validate(doc: dict[str, Any]) -> None:
    schema = json.loads((DEPLOY / "schemas" / SCHEMAS[doc["apiVersion"], doc["kind"]]).read_text())
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize(
    ("source", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else v.get("kind")
)
def test_every_manifest_validates_against_the_schema_of_its_kind(
    source: str, doc: dict[str, Any]
) -> None:
    validate(doc)


def test_the_schemas_refuse_what_a_cluster_would_refuse() -> None:
    scaled = by_kind("ScaledObject")["aexec-worker"]
    bad = json.loads(json.dumps(scaled))
    bad["spec"]["triggers"][0]["metadata"]["threshold"] = 30  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    worker = json.loads(json.dumps(by_kind("Deployment")["aexec-worker"]))
    worker["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # a typo
    with pytest.raises(jsonschema.ValidationError):
        validate(worker)


def test_the_kustomization_lists_every_manifest() -> None:
    [kustomization] = [d for _, d in documents() if d["kind"] == "Kustomization"]
    manifests = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_containers_run_aexec_commands_with_probes_on_their_metrics_port() -> None:
    deployments = by_kind("Deployment")
    assert set(deployments) == {"aexec-coordinator", "aexec-worker"}
    secret = by_kind("Secret")["aexec-backends"]["stringData"]
    settings = Settings.resolve(environ=secret)
    assert settings.broker is not None and settings.broker.startswith("amqp://")
    assert settings.store_url.startswith("postgresql://")
    for name, deployment in deployments.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        args = build_parser().parse_args(container["args"])
        assert callable(args.handler), name
        for module in getattr(args, "modules", None) or []:
            assert (ROOT / module).is_file(), f"{name} loads a missing file {module}"
        port = container["ports"][0]
        assert port["containerPort"] == args.metrics_port
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(args.metrics_port)
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        refs = [e["secretRef"]["name"] for e in container["envFrom"]]
        assert refs == ["aexec-backends"]


def test_keda_scales_the_workers_to_zero_and_back_on_predicted_demand() -> None:
    scaled = by_kind("ScaledObject")["aexec-worker"]["spec"]
    assert scaled["scaleTargetRef"]["name"] in by_kind("Deployment")
    assert scaled["minReplicaCount"] == 0 and scaled["maxReplicaCount"] >= 1
    [trigger] = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"  # replicas = demand / threshold
    metadata = trigger["metadata"]
    assert float(metadata["threshold"]) > 0 and float(metadata["activationThreshold"]) == 0
    metric = re.findall(r"\b(aexec_[a-z_]+)", metadata["query"])
    exported = {
        family.name for family in CoordinatorCollector(CoordinatorMetrics(), dict, dict).collect()
    }
    assert metric == ["aexec_queue_predicted_demand_seconds"]
    assert set(metric) <= exported
