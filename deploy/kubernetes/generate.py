"""Write deploy/kubernetes/qhybrid.yaml: every object of a qhybrid deployment on Kubernetes.

    python deploy/kubernetes/generate.py [--classes qhybrid/resource_classes.toml] [-o FILE]

Generated, not hand-written, so that it cannot drift from the code: the container commands
are the Procfile's (app.service), the worker Deployments are one per resource class and kind
(`jobs.<class>`, `tasks.<class>`) plus one for the devices, sized from the classes' TOML.
tests/test_deploy.py checks the committed file is what this script writes, validates it
offline, and checks its environment against what Settings reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from app.service import (  # noqa: E402
    device_worker_command,
    task_worker_command,
    web_command,
    worker_command,
)
from qhybrid.resources import ResourceClass, load_classes  # noqa: E402
from tasks.core.queues import jobs_queue, tasks_queue  # noqa: E402

NAMESPACE = "qhybrid"
IMAGE = "ghcr.io/example/qhybrid:0.1.0"          # built from Containerfile; set your registry
SHARED_SECRET = "qhybrid-shared"                # Redis URL, storage URL, S3 endpoint and keys
REDIS_SECRET = "qhybrid-redis"                  # the Redis password (Redis and KEDA read it)
REDIS_HOST = f"qhybrid-redis.{NAMESPACE}.svc.cluster.local"
CLASSES_CONFIG = "qhybrid-classes"
CLASSES_PATH = "/etc/qhybrid/resource_classes.toml"
DATA_DIR = "/var/lib/qhybrid"
JOB_USER = "nobody"
MAX_REPLICAS = 10


def _python(argv: list[str]) -> list[str]:
    return ["python", *argv[1:]] if argv[0] == sys.executable else argv


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "qhybrid", "app.kubernetes.io/component": component}


def _meta(name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": NAMESPACE, "labels": _labels(component)}


def _env(worker: bool) -> list[dict[str, str]]:
    env = [{"name": "QHYBRID_DATA_DIR", "value": DATA_DIR},
           {"name": "QHYBRID_RESOURCE_CLASSES", "value": CLASSES_PATH}]
    if worker:    # workers run as root so that user code runs as this unprivileged account
        env.append({"name": "QHYBRID_JOB_USER", "value": JOB_USER})
    return env


def _container(name: str, argv: list[str], worker: bool, probe: dict[str, Any],
               resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name, "image": IMAGE, "command": _python(argv),
        "env": _env(worker), "envFrom": [{"secretRef": {"name": SHARED_SECRET}}],
        "resources": resources,
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR},
                         {"name": "classes", "mountPath": str(Path(CLASSES_PATH).parent),
                          "readOnly": True}],
        **probe,
    }


def _pod(container: dict[str, Any], component: str, root: bool,
         grace: int) -> dict[str, Any]:
    security = {} if root else {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True}
    return {
        "metadata": {"labels": _labels(component)},
        "spec": {
            "securityContext": security,
            "terminationGracePeriodSeconds": grace,
            "containers": [container],
            "volumes": [{"name": "data", "emptyDir": {}},
                        {"name": "classes", "configMap": {"name": CLASSES_CONFIG}}],
        },
    }


def _deployment(name: str, component: str, container: dict[str, Any], replicas: int,
                root: bool, grace: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, component),
            "spec": {"replicas": replicas, "selector": {"matchLabels": _labels(component)},
                     "template": _pod(container, component, root, grace)}}


def _worker_probe(queue: str | None) -> dict[str, Any]:
    argv = ["python", "-m", "tasks.health", "worker"] + (["--queue", queue] if queue else [])
    return {
        # a worker imports qiskit before it consumes: give it a while to come up
        "startupProbe": {"exec": {"command": argv}, "periodSeconds": 5, "failureThreshold": 36},
        "readinessProbe": {"exec": {"command": argv}, "periodSeconds": 15, "timeoutSeconds": 10},
        "livenessProbe": {"exec": {"command": argv}, "periodSeconds": 30, "timeoutSeconds": 10,
                          "failureThreshold": 3},
    }


def _class_resources(rc: ResourceClass) -> dict[str, Any]:
    cpu = f"{int(rc.cpu * 1000)}m"
    mem = f"{rc.mem // 1024**2 + 1024}Mi"       # the class's memory and the worker's own
    limits: dict[str, Any] = {"cpu": cpu, "memory": mem}
    if rc.gpu:
        limits["nvidia.com/gpu"] = rc.gpu
    return {"requests": {"cpu": cpu, "memory": mem}, "limits": limits}


def _scaled_object(deployment: str, queue: str, component: str) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": _meta(deployment, component),
        "spec": {
            "scaleTargetRef": {"name": deployment},
            # one replica stays: a job's rerun budget is spent if a scale-down stops it
            "minReplicaCount": 1, "maxReplicaCount": MAX_REPLICAS,
            "pollingInterval": 5, "cooldownPeriod": 300,
            "triggers": [{
                "type": "redis",
                "metadata": {"address": f"{REDIS_HOST}:6379", "listName": queue,
                             "listLength": "1", "databaseIndex": "0"},
                "authenticationRef": {"name": REDIS_SECRET},
            }],
        },
    }


def objects(classes_path: Path | None) -> list[dict[str, Any]]:
    classes = load_classes(classes_path)
    toml_text = (classes_path or ROOT / "qhybrid" / "resource_classes.toml").read_text()
    out: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(CLASSES_CONFIG, "config"),
         "data": {Path(CLASSES_PATH).name: toml_text}},
    ]
    # --- Redis: one instance, AOF on a persistent volume --------------------------------------
    redis_labels = _labels("redis")
    out.append({
        "apiVersion": "v1", "kind": "Service", "metadata": _meta("qhybrid-redis", "redis"),
        "spec": {"selector": redis_labels, "ports": [{"name": "redis", "port": 6379}]},
    })
    redis_probe = {"exec": {"command": ["sh", "-c", 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli ping']}}
    out.append({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta("qhybrid-redis", "redis"),
        "spec": {
            "serviceName": "qhybrid-redis", "replicas": 1,
            "selector": {"matchLabels": redis_labels},
            "template": {"metadata": {"labels": redis_labels}, "spec": {"containers": [{
                "name": "redis", "image": "docker.io/library/redis:7.4-alpine",
                # the password goes in a file, never on a command line other processes read
                "command": ["sh", "-c", 'umask 077 && printf "requirepass %s\\n" "$REDIS_PASSWORD"'
                            ' > /tmp/redis.conf && exec redis-server /tmp/redis.conf'
                            ' --appendonly yes --appendfsync everysec --save "" --dir /data'],
                "env": [{"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {
                    "name": REDIS_SECRET, "key": "password"}}}],
                "ports": [{"name": "redis", "containerPort": 6379}],
                "readinessProbe": {**redis_probe, "periodSeconds": 10},
                "livenessProbe": {**redis_probe, "periodSeconds": 30},
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                              "limits": {"memory": "4Gi"}},
                "volumeMounts": [{"name": "redis-data", "mountPath": "/data"}],
            }]}},
            "volumeClaimTemplates": [{"metadata": {"name": "redis-data"}, "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10Gi"}}}}],
        },
    })
    out.append({
        "apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
        "metadata": _meta(REDIS_SECRET, "autoscaling"),
        "spec": {"secretTargetRef": [{"parameter": "password", "name": REDIS_SECRET,
                                      "key": "password"}]},
    })
    # --- web -----------------------------------------------------------------------------------
    web_probe = {
        "readinessProbe": {"httpGet": {"path": "/healthz?scope=web", "port": 8000},
                           "periodSeconds": 10, "timeoutSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz?scope=process", "port": 8000},
                          "periodSeconds": 30, "timeoutSeconds": 5},
    }
    web = _container("web", web_command("0.0.0.0", 8000), False, web_probe,
                     {"requests": {"cpu": "500m", "memory": "512Mi"},
                      "limits": {"memory": "2Gi"}})
    web["ports"] = [{"name": "http", "containerPort": 8000}]
    out.append(_deployment("qhybrid-web", "web", web, replicas=2, root=False, grace=30))
    out.append({
        "apiVersion": "v1", "kind": "Service", "metadata": _meta("qhybrid-web", "web"),
        "spec": {"selector": _labels("web"),
                 "ports": [{"name": "http", "port": 80, "targetPort": 8000}]},
    })
    # --- workers: one Deployment per class and kind, each scaled on its queue -----------------
    for name, rc in classes.items():
        for kind, argv, queue in (
                ("jobs", worker_command(name), jobs_queue(name)),
                ("tasks", task_worker_command(name), tasks_queue(name))):
            deployment = f"qhybrid-{kind}-{name}"
            component = f"worker-{kind}-{name}"
            # one job or task per pod: the pod is sized to the class, the cluster scales pods
            container = _container("worker", [*argv, "--concurrency", "1"], True,
                                   _worker_probe(queue), _class_resources(rc))
            out.append(_deployment(deployment, component, container, replicas=1, root=True,
                                   grace=60))
            out.append(_scaled_object(deployment, queue, component))
    # --- devices: one group of device workers for every configured device ----------------------
    devices = _container("devices", device_worker_command(), True, _worker_probe(None),
                         {"requests": {"cpu": "1", "memory": "2Gi"},
                          "limits": {"memory": "4Gi"}})
    out.append(_deployment("qhybrid-devices", "worker-devices", devices, replicas=1,
                           root=True, grace=60))
    return out


def render(classes_path: Path | None = None) -> str:
    header = ("# Generated by deploy/kubernetes/generate.py from the Procfile's commands and the\n"
              "# resource classes; do not edit by hand. Apply secret.example.yaml (filled in)\n"
              "# first; KEDA (keda.sh) must be installed for the ScaledObjects.\n")
    return header + yaml.safe_dump_all(objects(classes_path), sort_keys=False, width=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=Path, default=None)
    parser.add_argument("-o", "--output", type=Path,
                        default=Path(__file__).with_name("qhybrid.yaml"))
    args = parser.parse_args()
    args.output.write_text(render(args.classes))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
