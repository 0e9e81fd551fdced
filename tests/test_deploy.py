"""Deployment: the container image and Kubernetes manifests, proven without a cluster.

The manifests are what deploy/kubernetes/generate.py writes (so they follow the Procfile's
commands and the resource classes), valid Kubernetes (kubernetes-validate, strict) and valid
KEDA objects (KEDA's own CRD schemas, vendored), and their environment is the one Settings
reads. The probes they name answer on a running service.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml

from tasks.core.settings import SHARED_ENV, Settings
from tasks.sandbox.isolation import job_account
from tests.conftest import ROOT, RunningService

DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"
# read by boto3 (the storage adapter), the standard AWS way
AWS_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _crd_schemas() -> dict[str, dict[str, Any]]:
    out = {}
    for path in (DEPLOY / "schemas").glob("*.yaml"):
        crd = _docs(path)[0]
        for version in crd["spec"]["versions"]:
            key = f"{crd['spec']['group']}/{version['name']}/{crd['spec']['names']['kind']}"
            out[key] = version["schema"]["openAPIV3Schema"]
    return out


def _qhybrid_containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for doc in docs if doc["kind"] == "Deployment"
            for c in doc["spec"]["template"]["spec"]["containers"]]


def test_the_committed_manifests_are_what_the_generator_writes() -> None:
    sys.path.insert(0, str(DEPLOY))
    try:
        import generate
    finally:
        sys.path.remove(str(DEPLOY))
    assert (DEPLOY / "qhybrid.yaml").read_text() == generate.render(), \
        "run: python deploy/kubernetes/generate.py"


def test_every_manifest_is_valid_kubernetes_and_keda() -> None:
    crds = _crd_schemas()
    docs = _docs(DEPLOY / "qhybrid.yaml") + _docs(DEPLOY / "secret.example.yaml")
    kinds = [doc["kind"] for doc in docs]
    for doc in docs:
        group_version = doc["apiVersion"]
        if group_version.startswith("keda.sh/"):
            jsonschema.validate(doc, crds[f"{group_version}/{doc['kind']}"])
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # and a wrong one is caught, by both
    bad = next(d for d in docs if d["kind"] == "Deployment")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**bad, "spec": {**bad["spec"], "replicas": "two"}},
                                     K8S_VERSION, strict=True)
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**scaled, "spec": {"triggers": scaled["spec"]["triggers"]}},
                            crds["keda.sh/v1alpha1/ScaledObject"])
    assert {"Deployment", "Service", "StatefulSet", "ScaledObject", "Secret"} <= set(kinds)


def test_one_scaled_worker_deployment_per_class_and_queue() -> None:
    from qhybrid.resources import load_classes

    docs = _docs(DEPLOY / "qhybrid.yaml")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    for cls in load_classes(None):
        for kind in ("jobs", "tasks"):
            name = f"qhybrid-{kind}-{cls}"
            container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
            assert container["command"][:5] == ["python", "-m", "tasks.worker", kind, cls]
            assert container["livenessProbe"]["exec"]["command"][-1] == f"{kind}.{cls}"
            trigger = scaled[name]["spec"]["triggers"][0]
            assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == f"{kind}.{cls}"
    assert "qhybrid-devices" in deployments and "qhybrid-web" in deployments
    redis = next(d for d in docs if d["kind"] == "StatefulSet")
    assert "--appendonly yes" in " ".join(redis["spec"]["template"]["spec"]["containers"][0]["command"])


class _Recording(dict):  # type: ignore[type-arg]
    """An environment that notes every variable read from it."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def test_the_manifests_set_only_what_settings_read_and_all_it_requires() -> None:
    env = _Recording()
    Settings.from_env(env)
    job_account(env)
    readable = env.read | AWS_ENV
    docs = _docs(DEPLOY / "qhybrid.yaml")
    secrets = {d["metadata"]["name"]: set(d["stringData"])
               for d in _docs(DEPLOY / "secret.example.yaml")}
    for container in _qhybrid_containers(docs):
        names = {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            names |= secrets[source["secretRef"]["name"]]
        unknown = names - readable
        assert not unknown, f"{container['name']} sets {unknown}, which nothing reads"
        assert set(SHARED_ENV) <= names, f"{container['name']} lacks the shared settings"
        assert "QHYBRID_SECRET_KEY" in names      # every web replica signs the same sessions


def test_the_probes_answer_on_a_running_service(service: RunningService) -> None:
    docs = _docs(DEPLOY / "qhybrid.yaml")
    web = next(c for c in _qhybrid_containers(docs) if c["name"] == "web")
    for probe in ("readinessProbe", "livenessProbe"):
        path = web[probe]["httpGet"]["path"]
        assert requests.get(service.url + path, timeout=10).status_code == 200, path
    assert requests.get(service.url + "/healthz?scope=nonsense", timeout=10).status_code == 400
    # a worker's probe: alive for a queue this host consumes, not for one it does not
    env = {**service.env, "PYTHONPATH": str(ROOT)}

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tasks.health", "worker", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    ok = check("--queue", "jobs.small")
    assert ok.returncode == 0 and ok.stdout.startswith(socket.gethostname()), ok.stderr
    assert check("--queue", "jobs.large").returncode == 1
    assert check("--queue", "jobs.small", "--host", "elsewhere").returncode == 1
    bare = {k: v for k, v in env.items() if k != "QHYBRID_REDIS_URL"}
    gone = subprocess.run([sys.executable, "-m", "tasks.health", "worker"], env=bare,
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "QHYBRID_REDIS_URL" in gone.stderr


def test_the_containerfile_installs_from_the_lock() -> None:
    text = (ROOT / "Containerfile").read_text()
    assert "uv.lock" in text and "--frozen" in text
    uv_pin = next(line for line in (ROOT / "scripts" / "_uv").read_text().splitlines()
                  if line.startswith("UV_VERSION="))
    assert f'"uv=={uv_pin.split("=", 1)[1]}"' in text
    for package in ("qhybrid", "app", "tasks", "backends", "storage"):
        assert f"COPY {package} " in text
    assert os.path.exists(ROOT / "uv.lock")
