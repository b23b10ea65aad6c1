"""Offline checks of deploy/ (Dockerfile, compose, Kubernetes) against the code, and of the CLI it runs.

Nothing here needs Docker, a cluster or a network. The Kubernetes core
resources are validated against the official JSON schemas bundled in
``kubernetes-validate`` (when installed: the ``test`` extra); the custom
resources (Strimzi, KEDA) and everything that ties the files to the code are
checked structurally: selectors match pod labels, Services and Ingresses point
at real pods and ports, every ``CLIO_*`` variable is a real setting, every
``clio-stream`` command parses with the real argument parser, topic names and
ports agree with ``ClioSettings``, and the settings the files set validate.
"""

from __future__ import annotations

import argparse
import re
import threading
import typing
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import pytest
import yaml

from clio_stream.cli import admin, living
from clio_stream.cli import main as cli
from clio_stream.settings import ClioSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / "compose" / ".env.example"
DOCKERFILE = DEPLOY / "Dockerfile"

HELM_VALUES = {"qdrant-values.yaml"}  # values for a chart, not manifests
KUSTOMIZATION = "kustomization.yaml"
CLIO_IMAGE = "clio-stream"  # the image name the manifests use (kustomize rewrites it)
CRD_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "ScaledObject"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
# Environment variables the code reads that are not settings fields (CLI log level, TOML path).
NON_FIELD_ENV = {"CLIO_CONFIG", "CLIO_LOG_LEVEL"}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
DEFAULTS = {name: f.default for name, f in ClioSettings.model_fields.items()}


# ---------------------------------------------------------------------------------------------- loading

def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_docs(path: Path) -> list[Any]:
    with path.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in HELM_VALUES | {KUSTOMIZATION})


def manifests() -> list[tuple[Path, dict]]:
    return [(p, d) for p in manifest_files() for d in load_docs(p)]


def by_kind(kind: str) -> list[dict]:
    return [d for _, d in manifests() if d["kind"] == kind]


def one(kind: str, name: str) -> dict:
    found = [d for d in by_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    spec = workload["spec"]
    template = spec["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob" else spec["template"]
    return template.get("metadata", {}).get("labels", {})


def workloads() -> list[dict]:
    return [d for _, d in manifests() if d["kind"] in WORKLOAD_KINDS]


def containers(workload: dict, *, init: bool = False) -> list[dict]:
    spec = pod_spec(workload)
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", [])) if init else [])


def configmap_data() -> dict[str, str]:
    return one("ConfigMap", "clio-config")["data"]


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def secret_example() -> dict[str, str]:
    return env_file(K8S / "secrets.env.example")


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$`` over a loaded document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        current = env.get(name)
        if op in (":-", "-"):
            return current if current not in (None, "") or (op == "-" and current is not None) else arg
        if op in (":?", "?"):
            assert current not in (None, ""), f"${{{name}}} is required ({arg}) but .env.example leaves it empty"
            return current
        return current or ""

    parts = value.split("$$")
    return "$".join(_VAR.sub(sub, p) for p in parts)


def compose(env: dict[str, str] | None = None) -> dict:
    doc = load_docs(COMPOSE_FILE)[0]
    return interpolate(doc, env_file(ENV_EXAMPLE) if env is None else env)


def clio_services(doc: dict) -> dict[str, dict]:
    """Compose services that run the clio-stream image (entrypoint clio-stream)."""
    return {n: s for n, s in doc["services"].items() if "build" in s and "Dockerfile" in s["build"]["dockerfile"]}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]) -> ClioSettings:
    import os

    for key in list(os.environ):
        if key.startswith("CLIO_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray clio-stream.toml
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return ClioSettings()


# ---------------------------------------------------------------------------------------------- YAML

@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(d, dict) for d in docs)


def test_deploy_has_the_expected_files() -> None:
    for rel in ("README.md", "Dockerfile", "compose/docker-compose.yml", "compose/.env.example",
                "k8s/kustomization.yaml", "k8s/qdrant-values.yaml", "k8s/secrets.env.example"):
        assert (DEPLOY / rel).is_file(), rel
    kinds = {d["kind"] for _, d in manifests()}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "ScaledObject", "Deployment", "Service", "Ingress",
            "CronJob", "ConfigMap", "PersistentVolumeClaim"} <= kinds


# ---------------------------------------------------------------------------------------------- Kubernetes

def test_manifests_have_identity() -> None:
    seen: set[tuple[str, str]] = set()
    for path, doc in manifests():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
        name = doc["metadata"].get("name")
        assert name and DNS_SUBDOMAIN.match(name), f"{path}: bad metadata.name {name!r}"
        assert doc["metadata"].get("namespace") in (None, "clio"), f"{path}: namespace is kustomize's job"
        assert (doc["kind"], name) not in seen, f"duplicate {doc['kind']} {name}"
        seen.add((doc["kind"], name))


def test_kustomization_lists_every_manifest_and_the_secret() -> None:
    k = load_docs(K8S / KUSTOMIZATION)[0]
    assert k["kind"] == "Kustomization" and k["namespace"] == "clio"
    assert sorted(k["resources"]) == sorted(p.name for p in manifest_files())
    assert "qdrant-values.yaml" not in k["resources"]
    gen = {g["name"]: g for g in k["secretGenerator"]}
    assert gen["clio-secrets"]["envs"] == ["secrets.env"]
    assert "secrets.env" in (K8S / ".gitignore").read_text().split()
    assert set(secret_example()) == {"CLIO_API_KEYS", "CLIO_USER_ID_HASH_KEY", "CLIO_METRICS_TOKEN"}
    assert [i["name"] for i in k["images"]] == [CLIO_IMAGE]


def test_core_resources_validate_against_the_kubernetes_schemas() -> None:
    pytest.importorskip("kubernetes_validate")
    import jsonschema
    from kubernetes_validate.utils import SchemaNotFoundError, validate

    skipped = set()
    for path, doc in manifests():
        try:
            validate(doc, "1.30", strict=True)
        except SchemaNotFoundError:
            skipped.add(doc["kind"])
        except jsonschema.ValidationError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert skipped <= CRD_KINDS, f"no schema for {skipped - CRD_KINDS}"


def test_workload_selectors_match_their_pod_labels() -> None:
    for w in workloads():
        if w["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}:
            selector = w["spec"]["selector"]["matchLabels"]
            assert selector and selector.items() <= pod_labels(w).items(), w["metadata"]["name"]


def test_containers_have_images_resources_and_probes() -> None:
    for w in workloads():
        for c in containers(w, init=True):
            where = f"{w['metadata']['name']}/{c['name']}"
            assert c.get("image"), where
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits", {}).get("memory"), f"{where}: requests and memory limit"
        for c in containers(w):
            where = f"{w['metadata']['name']}/{c['name']}"
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            if not ports:
                continue  # serves nothing (workers, jobs): no HTTP probe possible
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{where} exposes ports but has no {probe}"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None:
                    assert port in ports or port in ports.values(), f"{where}: {probe} port {port}"


def test_the_api_probes_healthz_and_readyz_on_the_settings_port() -> None:
    api = one("Deployment", "clio-api")
    (c,) = containers(api)
    assert c["command"] == ["clio-stream", "api"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {p["containerPort"] for p in c["ports"]} == {DEFAULTS["web_port"]} == {8421}
    assert configmap_data()["CLIO_WEB_PORT"] == str(DEFAULTS["web_port"])
    assert configmap_data()["CLIO_WEB_HOST"] == "0.0.0.0"


def _pods_selected(selector: dict) -> list[dict]:
    return [w for w in workloads() if selector.items() <= pod_labels(w).items()]


def test_services_select_existing_pods_and_ports() -> None:
    for svc in by_kind("Service"):
        pods = _pods_selected(svc["spec"]["selector"])
        assert pods, f"Service {svc['metadata']['name']} selects no pod template"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            named = {p.get("name"): p["containerPort"] for w in pods for c in containers(w) for p in c.get("ports", [])}
            assert target in named or target in named.values(), f"{svc['metadata']['name']}: targetPort {target}"


def test_ingress_points_at_a_service_port() -> None:
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    for ing in by_kind("Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = services[backend["name"]]
                names = {p.get("name") for p in svc["spec"]["ports"]} | {p["port"] for p in svc["spec"]["ports"]}
                assert backend["port"].get("name", backend["port"].get("number")) in names


def _refs(node: Any, key: str) -> Iterator[dict]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, dict):
                yield v
            yield from _refs(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v, key)


def test_configmap_secret_and_volume_references_exist() -> None:
    cm = configmap_data()
    secret_keys = set(secret_example())
    claims = {p["metadata"]["name"] for p in by_kind("PersistentVolumeClaim")}
    for w in workloads():
        for ref in _refs(w, "configMapRef"):
            assert ref["name"] == "clio-config"
        for ref in _refs(w, "configMapKeyRef"):
            assert ref["name"] == "clio-config" and ref["key"] in cm
        for ref in _refs(w, "secretKeyRef"):
            assert ref["name"] == "clio-secrets" and ref["key"] in secret_keys
        for ref in _refs(w, "persistentVolumeClaim"):
            assert ref["claimName"] in claims
        spec = pod_spec(w)
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in containers(w, init=True):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{w['metadata']['name']}: mount {m['name']}"
            # A nested mount must come after its parent, or the parent hides it.
            paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
            for i, p in enumerate(paths):
                assert not any(p.startswith(q.rstrip("/") + "/") for q in paths[i + 1:]), f"{c['name']}: {paths}"
    # Workers that write the published versions mount it read-write; the API read-only.
    api_mounts = {m["mountPath"]: m for m in containers(one("Deployment", "clio-api"))[0]["volumeMounts"]}
    assert api_mounts[cm["CLIO_PUBLISH_DIR"]].get("readOnly") is True
    job_mounts = {m["mountPath"]: m for m in containers(one("CronJob", "clio-recluster"))[0]["volumeMounts"]}
    assert not job_mounts[cm["CLIO_PUBLISH_DIR"]].get("readOnly")
    assert "ReadWriteMany" in one("PersistentVolumeClaim", "clio-published")["spec"]["accessModes"]


def test_secrets_are_never_in_the_configmap() -> None:
    assert not set(configmap_data()) & {"CLIO_API_KEYS", "CLIO_USER_ID_HASH_KEY", "CLIO_LLM_API_KEY",
                                         "CLIO_QDRANT_API_KEY"}
    for w in workloads():
        for c in containers(w, init=True):
            for e in c.get("env", []):
                assert e["name"] not in {"CLIO_API_KEYS", "CLIO_USER_ID_HASH_KEY"} or "valueFrom" in e


def test_pods_run_as_non_root() -> None:
    for w in workloads():
        if w["metadata"]["name"] == "vllm":
            continue  # the upstream vLLM image runs as root
        sc = pod_spec(w).get("securityContext", {})
        assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, w["metadata"]["name"]


_CRON_BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def cron_is_valid(expr: str) -> bool:
    """Five fields of ``*``, ``N``, ``A-B``, lists of those, each with an optional ``/STEP``."""
    fields = expr.split()
    if len(fields) != 5:
        return False
    for field, (lo, hi) in zip(fields, _CRON_BOUNDS):
        for part in field.split(","):
            m = re.fullmatch(r"(\*|\d+(?:-\d+)?)(?:/(\d+))?", part)
            if not m:
                return False
            base, step = m.group(1), m.group(2)
            if step is not None and int(step) < 1:
                return False
            if base != "*":
                a, _, b = base.partition("-")
                a_i, b_i = int(a), int(b or a)
                if not (lo <= a_i <= b_i <= hi):
                    return False
    return True


@pytest.mark.parametrize("expr,ok", [("*/10 * * * *", True), ("0 3 * * 1-5", True), ("5,35 */2 * * *", True),
                                     ("61 * * * *", False), ("* * *", False), ("*/0 * * * *", False),
                                     ("@hourly x", False)])
def test_cron_validator(expr: str, ok: bool) -> None:
    assert cron_is_valid(expr) is ok


def test_recluster_cronjob() -> None:
    cj = one("CronJob", "clio-recluster")
    assert cron_is_valid(cj["spec"]["schedule"])
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    (c,) = containers(cj)
    assert c["command"][:2] == ["clio-stream", "recluster"] and "--if-due" in c["command"]
    # A hung run is stopped, and not before it could take and renew the lease a few times.
    deadline = cj["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert ClioSettings().recluster_lock_ttl_s < deadline < 24 * 3600
    assert pod_spec(cj)["restartPolicy"] in ("Never", "OnFailure")


def test_keda_scales_the_consumers_on_the_groups_lag() -> None:
    (so,) = by_kind("ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    target = so["spec"]["scaleTargetRef"]["name"]
    consumer = one("Deployment", target)
    assert containers(consumer)[0]["command"] == ["clio-stream", "consume"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    md = trigger["metadata"]
    cm = configmap_data()
    assert md["topic"] == cm["CLIO_TOPIC"] == DEFAULTS["topic"]
    assert md["consumerGroup"] == cm["CLIO_CONSUMER_GROUP"] == DEFAULTS["consumer_group"]
    keda_host, keda_port = md["bootstrapServers"].rsplit(":", 1)
    cm_host, cm_port = cm["CLIO_KAFKA_BOOTSTRAP"].rsplit(":", 1)
    assert keda_port == cm_port == "9092"
    assert keda_host == cm_host or keda_host.startswith(cm_host + ".clio.svc")
    assert int(md["lagThreshold"]) > 0 and md.get("allowIdleConsumers", "false") == "false"
    topic = next(t for t in by_kind("KafkaTopic") if t["spec"]["topicName"] == md["topic"])
    # More consumers than partitions would sit idle.
    assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= topic["spec"]["partitions"]


def test_strimzi_kafka_topics_match_the_settings() -> None:
    (kafka,) = by_kind("Kafka")
    name = kafka["metadata"]["name"]
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert kafka["metadata"]["annotations"] == {"strimzi.io/node-pools": "enabled", "strimzi.io/kraft": "enabled"}
    assert "zookeeper" not in kafka["spec"]
    listeners = {lst["name"]: lst for lst in kafka["spec"]["kafka"]["listeners"]}
    assert listeners["plain"]["port"] == 9092 and listeners["plain"]["tls"] is False
    pools = [p for p in by_kind("KafkaNodePool") if p["metadata"]["labels"]["strimzi.io/cluster"] == name]
    assert pools and {"controller", "broker"} <= {r for p in pools for r in p["spec"]["roles"]}
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    cm = configmap_data()
    assert cm["CLIO_KAFKA_BOOTSTRAP"] == f"{name}-kafka-bootstrap:9092"
    topics = {t["spec"]["topicName"]: t for t in by_kind("KafkaTopic")}
    for t in topics.values():
        assert t["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == name
        assert 1 <= t["spec"]["replicas"] <= brokers
    wanted = {DEFAULTS["topic"], DEFAULTS["dlq_topic"], DEFAULTS["deltas_topic"]}
    assert set(topics) == wanted == {cm["CLIO_TOPIC"], cm["CLIO_DLQ_TOPIC"], cm["CLIO_DELTAS_TOPIC"]}
    assert topics[cm["CLIO_TOPIC"]]["spec"]["partitions"] == int(cm["CLIO_TOPIC_PARTITIONS"])
    assert topics[cm["CLIO_DELTAS_TOPIC"]]["spec"]["partitions"] == DEFAULTS["deltas_partitions"]
    min_isr = int(kafka["spec"]["kafka"]["config"]["min.insync.replicas"])
    assert all(t["spec"]["replicas"] >= min_isr for t in topics.values())


def test_vllm_serves_the_configured_model_where_the_settings_point() -> None:
    cm = configmap_data()
    vllm = one("Deployment", "vllm")
    (c,) = containers(vllm)
    args = c["args"]
    assert args[args.index("--model") + 1] == "$(CLIO_LLM_MODEL)"
    assert {e["name"] for e in c["env"]} >= {"CLIO_LLM_MODEL"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    url = urlparse(cm["CLIO_LLM_BASE_URL"])
    svc = one("Service", url.hostname)
    assert url.port == svc["spec"]["ports"][0]["port"] == int(args[args.index("--port") + 1])
    assert url.path == "/v1" and cm["CLIO_LLM_BACKEND"] == "openai"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"


def test_qdrant_values_match_the_settings_ports() -> None:
    values = load_docs(K8S / "qdrant-values.yaml")[0]
    ports = {p["name"]: p["port"] for p in values["service"]["ports"]}
    assert ports["http"] == 6333 and ports["grpc"] == 6334
    assert values["persistence"]["size"]
    cm = configmap_data()
    url = urlparse(cm["CLIO_QDRANT_URL"])
    assert url.hostname == values["fullnameOverride"] and url.port == ports["http"] == urlparse(DEFAULTS["qdrant_url"]).port
    assert int(cm["CLIO_QDRANT_GRPC_PORT"]) == ports["grpc"]


def test_configmap_and_secret_make_valid_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cm = configmap_data()
    s = settings_from_env(monkeypatch, tmp_path, {**cm, **secret_example()})
    assert s.topic == cm["CLIO_TOPIC"] and s.web_port == 8421 and s.llm_backend == "openai"
    assert s.store_raw_conversations is False and s.api_keys is not None
    assert str(s.publish_dir) == cm["CLIO_PUBLISH_DIR"]


# ---------------------------------------------------------------------------------------------- compose

def test_compose_services_images_and_dependencies() -> None:
    doc = compose()
    services = doc["services"]
    assert {"kafka", "kafka-init", "qdrant", "vllm", "consumer", "api", "scheduler"} <= services.keys()
    declared_volumes = set(doc.get("volumes", {}))
    for name, svc in services.items():
        image = svc.get("image")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: pin the image"
        for target, cond in (svc.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = cond["condition"]
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                hc = services[target].get("healthcheck", {})
                assert hc.get("test") and not hc.get("disable"), f"{target} has no health check for {name}"
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is a one-shot job"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
    for name in ("kafka", "qdrant", "vllm", "api"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("consumer", "scheduler"):  # their metrics server's liveness, on the port they are given
        port = services[name]["environment"]["CLIO_METRICS_PORT"]
        assert f"127.0.0.1:{port}/livez" in " ".join(services[name]["healthcheck"]["test"]), name
    # Persistent state
    assert any(v.endswith(":/qdrant/storage") for v in services["qdrant"]["volumes"])
    assert any(v.endswith(":/var/lib/kafka/data") for v in services["kafka"]["volumes"])


def test_compose_kafka_is_kraft_and_creates_the_settings_topics() -> None:
    services = compose()["services"]
    env = services["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in str(services).lower()
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    # a listener for producers outside compose: advertised by the host's name, published on loopback by default
    assert "EXTERNAL://:9094" in env["KAFKA_LISTENERS"].split(",")
    assert "EXTERNAL://localhost:9094" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "EXTERNAL:PLAINTEXT" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    assert services["kafka"]["ports"] == ["127.0.0.1:9094:9094"]
    init = services["kafka-init"]
    script = init["command"][0]
    assert {init["environment"][k] for k in ("TOPIC", "DLQ_TOPIC", "DELTAS_TOPIC")} == {
        DEFAULTS["topic"], DEFAULTS["dlq_topic"], DEFAULTS["deltas_topic"]}
    for var in ("TOPIC", "DLQ_TOPIC", "DELTAS_TOPIC"):
        assert f'--topic "${var}"' in script and "--if-not-exists" in script


def test_compose_vllm_has_a_gpu_and_serves_the_settings_model() -> None:
    services = compose()["services"]
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    cmd = vllm["command"]
    model = cmd[cmd.index("--model") + 1]
    port = int(cmd[cmd.index("--port") + 1])
    env = services["consumer"]["environment"]
    assert env["CLIO_LLM_MODEL"] == model
    url = urlparse(env["CLIO_LLM_BASE_URL"])
    assert url.hostname == "vllm" and url.port == port and env["CLIO_LLM_BACKEND"] == "openai"


def test_compose_scales_consumers_and_serves_the_api_on_the_settings_port() -> None:
    services = compose()["services"]
    assert int(services["consumer"]["deploy"]["replicas"]) >= 1
    (mapping,) = services["api"]["ports"]
    assert mapping.rsplit(":", 1)[1] == str(DEFAULTS["web_port"])
    env = services["api"]["environment"]
    assert env["CLIO_WEB_PORT"] == str(DEFAULTS["web_port"]) and env["CLIO_WEB_HOST"] == "0.0.0.0"
    assert any(f":{DEFAULTS['web_port']}/readyz" in part for part in services["api"]["healthcheck"]["test"])
    assert services["qdrant"]["environment"]["QDRANT__SERVICE__HTTP_PORT"] == 6333
    assert services["qdrant"]["environment"]["QDRANT__SERVICE__GRPC_PORT"] == 6334
    cenv = services["consumer"]["environment"]
    assert urlparse(cenv["CLIO_QDRANT_URL"]).port == 6333 and cenv["CLIO_QDRANT_GRPC_PORT"] == "6334"
    assert cenv["CLIO_KAFKA_BOOTSTRAP"] == "kafka:9092"
    # the published versions: written by the scheduler, read (only) by the API
    assert any(v.endswith(":/var/lib/clio/published") for v in services["scheduler"]["volumes"])
    assert any(v.endswith(":/var/lib/clio/published:ro") for v in services["api"]["volumes"])


def test_compose_refuses_to_start_without_the_secrets() -> None:
    env = env_file(ENV_EXAMPLE)
    env.pop("CLIO_API_KEYS")
    with pytest.raises(AssertionError, match="CLIO_API_KEYS"):
        compose(env)


def test_compose_environments_make_valid_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, svc in clio_services(compose()).items():
        s = settings_from_env(monkeypatch, tmp_path, {k: v for k, v in svc["environment"].items()})
        assert s.llm_base_url == "http://vllm:8000/v1", name
        assert s.user_id_hash_key != DEFAULTS["user_id_hash_key"], name


# ---------------------------------------------------------------------------------------------- Dockerfile

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def test_dockerfile_one_image_non_root_with_api_healthcheck() -> None:
    ins = dockerfile_instructions()
    args = {rest.split("=")[0]: rest.split("=", 1)[1] for word, rest in ins if word == "ARG" and "=" in rest}
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms and all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)
    assert args["EXTRA"] in ("cpu", "gpu", "none")
    run = " ".join(rest for word, rest in ins if word == "RUN")
    for extra in ("cpu", "gpu"):
        assert f'{extra})' in run and f'".[{extra}]"' in run
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (health,) = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert "/healthz" in health and "CLIO_WEB_PORT" in health and "8421" in health
    assert ("EXPOSE", str(DEFAULTS["web_port"])) in ins
    assert ("ENTRYPOINT", '["clio-stream"]') in ins
    env = " ".join(rest for word, rest in ins if word == "ENV")
    assert "CLIO_WEB_HOST=0.0.0.0" in env and "HF_HUB_OFFLINE=1" in env
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else -1] == "*", "send an allow-list context"


def _python_snippets() -> Iterator[tuple[str, str]]:
    """Every ``python -c`` program in deploy/ (Dockerfile, compose, manifests)."""

    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            strs = [x for x in node if isinstance(x, str)]
            for i, x in enumerate(strs[:-1]):
                if x in ("python", "python3") and strs[i + 1] == "-c" and i + 2 < len(strs):
                    yield where, strs[i + 2]
            for v in node:
                yield from walk(v, where)

    for path in yaml_files():
        for doc in load_docs(path):
            yield from walk(doc, path.name)
    for word, rest in dockerfile_instructions():
        if word in ("HEALTHCHECK", "RUN"):
            for m in re.finditer(r'python", "-c", "((?:[^"\\]|\\.)*)"', rest):
                yield "Dockerfile " + word, m.group(1).encode().decode("unicode_escape")
            for m in re.finditer(r'python -c "([^"]*)"', rest):
                yield "Dockerfile " + word, m.group(1)


def test_python_snippets_compile() -> None:
    snippets = list(_python_snippets())
    assert len(snippets) >= 4
    for where, code in snippets:
        compile(code, where, "exec")


# ---------------------------------------------------------------------------------------------- code <-> deploy

def _text_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != "secrets.env")


def _field_accepts_nesting(name: str) -> bool:
    ann = ClioSettings.model_fields[name].annotation
    for t in (ann, *typing.get_args(ann)):
        origin = typing.get_origin(t) or t
        if origin is dict or (isinstance(origin, type) and hasattr(origin, "model_fields")):
            return True
    return False


def test_every_clio_variable_in_deploy_is_a_setting() -> None:
    fields = set(ClioSettings.model_fields)
    found: dict[str, set[str]] = {}
    for path in _text_files():
        for var in re.findall(r"\bCLIO_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
            found.setdefault(var, set()).add(str(path.relative_to(DEPLOY)))
    assert len(found) > 20
    bad = {}
    for var, where in found.items():
        if var in NON_FIELD_ENV:
            continue
        head, *nested = var[len("CLIO_"):].lower().split("__")
        if head not in fields or (nested and not _field_accepts_nesting(head)):
            bad[var] = sorted(where)
    assert not bad, f"not ClioSettings fields: {bad}"
    # The allowed non-fields really are read by the code.
    source = "\n".join(p.read_text() for p in (ROOT / "clio_stream").rglob("*.py"))
    for var in NON_FIELD_ENV:
        assert f'"{var}"' in source


def _commands_in_deploy() -> Iterator[tuple[str, list[str]]]:
    """Every clio-stream command line deploy/ runs or documents, as argv after ``clio-stream``."""
    for w in workloads():
        for c in containers(w):
            if c["image"] == CLIO_IMAGE:
                argv = list(c.get("command", [])) + list(c.get("args", []))
                assert argv[0] == "clio-stream", f"{w['metadata']['name']}: run clio-stream explicitly"
                yield w["metadata"]["name"], argv[1:]
    for name, svc in clio_services(compose()).items():
        yield f"compose {name}", list(svc["command"])  # the image's ENTRYPOINT is clio-stream
    ins = dockerfile_instructions()
    (cmd,) = [rest for word, rest in ins if word == "CMD"]
    yield "Dockerfile CMD", yaml.safe_load(cmd)
    # Documented command lines: fenced blocks and inline code in the README; in comments elsewhere,
    # inline code and indented example lines ("#   clio-stream consume ...").
    for path in _text_files():
        text = path.read_text()
        if path.suffix == ".md":
            code = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text))
        else:
            comments = [line.lstrip()[1:] for line in text.splitlines() if line.lstrip().startswith("#")]
            code = "\n".join([c for c in comments if re.match(r"\s{2,}clio-stream ", c)]
                             + [m for c in comments for m in re.findall(r"`([^`\n]+)`", c)])
        for m in re.finditer(r"(?<![\w/.-])clio-stream[ \t]+([a-z][a-z-]*)((?:[ \t]+--?[a-z][\w-]*(?:[ \t=][^\s-][^\s]*)?)*)", code):
            yield f"{path.name}: {m.group(0).strip()}", [m.group(1), *m.group(2).split()]


def test_every_clio_stream_command_in_deploy_parses() -> None:
    known = subcommands()
    seen = set()
    for where, argv in _commands_in_deploy():
        assert argv and argv[0] in known, f"{where}: unknown subcommand {argv[:1]} (have {sorted(known)})"
        seen.add(argv[0])
        try:
            cli.build_parser().parse_args(argv)
        except SystemExit:  # argparse's way of saying no
            pytest.fail(f"{where}: `clio-stream {' '.join(argv)}` does not parse")
    assert {"consume", "api", "recluster", "scheduler"} <= seen


# ---------------------------------------------------------------------------------------------- the CLI

def test_api_scheduler_and_recluster_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIO_USER_ID_HASH_KEY", "a-real-secret-for-this-test")  # services refuse the placeholder
    p = cli.build_parser()
    a = p.parse_args(["api", "--workers", "4", "--port", "9000", "--host", "0.0.0.0"])
    assert (a.func, a.workers, a.port, a.host) == (admin.cmd_api, 4, 9000, "0.0.0.0")
    a = p.parse_args(["api"])
    assert (a.workers, a.port, a.host) == (None, None, None)  # settings decide
    a = p.parse_args(["recluster"])
    assert a.func is living.cmd_recluster and a.if_due is False and a.facets is None and a.llm_base_url is None
    a = p.parse_args(["recluster", "--if-due", "--interval", "60", "--min-points", "5", "--facets", "Request",
                      "--llm-base-url", "http://vllm:8000/v1", "--qdrant-url", "http://q:6333"])
    assert (a.if_due, a.interval, a.min_points, a.facets, a.llm_base_url, a.qdrant_url) == (
        True, 60.0, 5, "Request", "http://vllm:8000/v1", "http://q:6333")
    a = p.parse_args(["scheduler", "--poll", "2", "--new-fraction", "0.2"])
    assert (a.func, a.poll, a.new_fraction, a.interval, a.min_points) == (living.cmd_scheduler, 2.0, 0.2, None, None)
    t = living.triggers_from_args(a)  # unset flags fall back to the settings
    assert (t.new_fraction, t.interval_s, t.min_points) == (0.2, 900.0, 30)
    for bad in (["api", "--workers", "x"], ["recluster", "--interval"], ["scheduler", "--nope"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_recluster_uses_the_server_when_a_base_url_is_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from clio_stream.living.service import effective_settings

    s = settings_from_env(monkeypatch, tmp_path, {"CLIO_LLM_BASE_URL": "http://vllm:8000/v1"})
    assert s.llm_backend == "vllm" and effective_settings(s).llm_backend == "openai"
    plain = settings_from_env(monkeypatch, tmp_path, {})
    assert effective_settings(plain) is plain
    monkeypatch.setenv("CLIO_USER_ID_HASH_KEY", "a-real-secret-for-this-test")
    args = cli.build_parser().parse_args(["recluster", "--llm-base-url", "http://x:1/v1"])
    assert living.recluster_settings(args).llm_backend == "openai"


class _FakeService:
    """Stands in for ReclusterService in the CLI tests; ``outcome`` is what ``run`` does."""

    outcome: Any = None
    snapshot_value: Any = None
    instances: list["_FakeService"] = []

    def __init__(self, settings: ClioSettings, *, facets: Any = None, **_: Any) -> None:
        self.settings, self.facets, self.runs, self.closed = settings, facets, [], False
        self.trigger_facet = "Request"
        self.deletion_passes = 0
        _FakeService.instances.append(self)

    def process_deletions(self) -> None:
        self.deletion_passes += 1

    def snapshot(self) -> Any:
        return self.snapshot_value

    def run(self, reason: str = "manual") -> Any:
        self.runs.append(reason)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def scheduler(self, triggers: Any, *, poll_s: float = 5.0) -> Any:
        self.triggers, self.poll_s = triggers, poll_s
        service = self

        class Sched:
            stopped = False

            def run(self) -> None:
                import os
                import signal

                service.runs.append("scheduler loop")
                os.kill(os.getpid(), signal.SIGTERM)  # what `docker stop` / Kubernetes sends

            def stop(self) -> None:
                Sched.stopped = True
                service.sched_stopped = True

        return Sched()

    def __enter__(self) -> "_FakeService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True


@pytest.fixture
def fake_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[_FakeService]:
    import clio_stream.living.service as rs

    settings_from_env(monkeypatch, tmp_path, {"CLIO_LLM_BASE_URL": "http://vllm:8000/v1",
                                              "CLIO_USER_ID_HASH_KEY": "a-real-secret-for-this-test"})
    _FakeService.instances = []
    _FakeService.outcome = None
    _FakeService.snapshot_value = None
    monkeypatch.setattr(rs, "ReclusterService", _FakeService)
    return _FakeService


def test_recluster_exit_status(fake_service: type[_FakeService]) -> None:
    from clio_stream.living.scheduler import Snapshot

    class Report:
        version = 3

    fake_service.outcome = Report()
    assert cli.main(["recluster"]) == 0
    svc = fake_service.instances[-1]
    assert svc.runs == ["manual"] and svc.closed and svc.settings.llm_backend == "openai"
    fake_service.outcome = None  # another run holds the lock (or nothing stored): skipped, not failed
    assert cli.main(["recluster"]) == 0
    fake_service.outcome = RuntimeError("Qdrant went away")
    assert cli.main(["recluster"]) == 1
    assert fake_service.instances[-1].closed
    # --if-due: not due -> 0 without running; due -> runs with the trigger's reason
    fake_service.outcome = Report()
    fake_service.snapshot_value = Snapshot(now=100.0, last_run_at=50.0, points_at_last_run=1000, points_now=1001)
    assert cli.main(["recluster", "--if-due", "--interval", "3600"]) == 0
    assert fake_service.instances[-1].runs == []
    assert fake_service.instances[-1].deletion_passes == 1  # user deletions are carried out, due or not
    fake_service.snapshot_value = Snapshot(now=100.0, last_run_at=None, points_at_last_run=0, points_now=50)
    assert cli.main(["recluster", "--if-due", "--min-points", "30"]) == 0
    assert fake_service.instances[-1].runs == ["first clustering"]
    # unknown facet: a configuration error
    assert cli.main(["recluster", "--facets", "Nope"]) == 2


def test_scheduler_runs_in_the_foreground_and_stops_on_sigterm(fake_service: type[_FakeService]) -> None:
    assert threading.current_thread() is threading.main_thread()
    import signal

    before = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main(["scheduler", "--interval", "120", "--poll", "1", "--min-points", "7"]) == 0
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    svc = fake_service.instances[-1]
    assert svc.runs == ["scheduler loop"] and svc.sched_stopped and svc.closed
    assert (svc.triggers.interval_s, svc.triggers.min_points, svc.poll_s) == (120.0, 7, 1.0)


def test_api_command_serves_with_uvicorn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    import api.app

    calls: list[tuple[Any, dict]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setattr(api.app, "create_app", lambda settings=None: ("app", settings))
    for key in ("CLIO_WEB_HOST", "CLIO_WEB_PORT", "CLIO_API_WORKERS"):
        monkeypatch.setenv(key, "")  # recorded, so what the command exports is undone after the test
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # recorded: what --workers 3 sets is undone after the test
    settings_from_env(monkeypatch, tmp_path, {"CLIO_API_KEYS": "viewer:" + "v" * 32})
    assert cli.main(["api", "--port", "9123"]) == 2 and not calls  # the default user hash key: refused
    monkeypatch.setenv("CLIO_USER_ID_HASH_KEY", "a-real-secret-for-this-test")
    assert cli.main(["api", "--port", "9123"]) == 0
    app, kw = calls[-1]
    assert app[0] == "app" and app[1].web_port == 9123 and kw["port"] == 9123 and "workers" not in kw
    assert cli.main(["api", "--workers", "3", "--host", "0.0.0.0"]) == 0
    app, kw = calls[-1]
    assert app == "api.app:create_app" and kw["factory"] is True and kw["workers"] == 3 and kw["host"] == "0.0.0.0"
    import os

    assert os.environ["PROMETHEUS_MULTIPROC_DIR"]  # the workers will share one metrics registry
    assert os.environ["CLIO_API_WORKERS"] == "3"  # the worker processes see the same overrides
    monkeypatch.delenv("CLIO_API_KEYS")
    n = len(calls)
    assert cli.main(["api"]) == 2  # no keys: refuse before binding
    assert len(calls) == n


def test_recluster_service_snapshot_and_run(tmp_path: Path) -> None:
    """The shared snapshot/run logic over an embedded store, with the scripted LLM and embedder."""
    from clio_stream.domain.facets import main_facets
    from clio_stream.living.service import ReclusterService
    from clio_stream.living.scheduler import Triggers, due
    from clio_stream.storage.documents import SCHEDULER_STATE, SchedulerState
    from clio_stream.storage.store import QdrantStore

    from .fakes import HashEmbedder, ScriptedLLM, sensible_script
    from .test_recluster import fill

    emb = HashEmbedder()
    store = QdrantStore(":memory:")
    store.ensure_collections(emb.dim)
    settings = ClioSettings(show_progress=False, n_name_description_samples_per_cluster=1, n_rename_samples=1,
                            n_categorize_samples=1, llm_max_retries=0, min_top_level_size=2,
                            min_cluster_users=2, min_cluster_conversations=3)
    service = ReclusterService(settings, store=store, llm=ScriptedLLM(sensible_script), embedder=emb,
                               publish_dir=tmp_path / "published")
    assert service.trigger_facet == next(f.name for f in main_facets if f.has_hierarchy)
    snap = service.snapshot()
    assert (snap.points_now, snap.last_run_at) == (0, None)
    fill(store, emb, n=40)
    snap = service.snapshot()
    assert snap.points_now == 40 and due(snap, Triggers(min_points=30)) == "first clustering"
    report = service.run("first clustering")
    assert report is not None and report.version == 1
    snap = service.snapshot()
    assert snap.points_at_last_run == 40 and snap.last_run_at is not None
    assert due(snap, Triggers(min_points=30)) is None
    sched = service.scheduler(Triggers(min_points=30), poll_s=0.01)
    assert sched.snapshot_fn == service.snapshot and sched.run_fn == service.run
    service.write_state(SchedulerState(runs=1, updated_at=5.0))
    assert store.states.read(SCHEDULER_STATE) == SchedulerState(runs=1, updated_at=5.0)
    service.close()  # the store and LLM were passed in: left open
    assert store.points.count(facet=service.trigger_facet) == 40


def test_recluster_service_before_any_worker_started(tmp_path: Path) -> None:
    """No collections yet (no worker has run): nothing is due and a run is a no-op, not an error."""
    from clio_stream.living.service import ReclusterService
    from clio_stream.living.scheduler import Triggers, due
    from clio_stream.storage.store import QdrantStore

    from .fakes import HashEmbedder, ScriptedLLM, sensible_script

    store = QdrantStore(":memory:")
    settings = ClioSettings(show_progress=False)
    service = ReclusterService(settings, store=store, llm=ScriptedLLM(sensible_script), embedder=HashEmbedder(),
                               publish_dir=tmp_path / "published")
    snap = service.snapshot()
    assert snap.points_now == 0 and due(snap, Triggers()) is None
    assert service.run("manual") is None
    store.ensure_collections(HashEmbedder.dim)
    assert service.collections_exist() and service.snapshot().points_now == 0


def test_the_assignment_pass_is_split_across_an_indexed_job() -> None:
    """The re-clustering's pass runs in CLIO_RECLUSTER_ASSIGN_SHARDS id ranges: the job's own and one per pod of an
    Indexed Job on the same schedule, whose pods restart in place (and resume their shard) when they fail."""
    cj = one("CronJob", "clio-assign-shards")
    job = cj["spec"]["jobTemplate"]["spec"]
    shards = int(configmap_data()["CLIO_RECLUSTER_ASSIGN_SHARDS"])
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"] == shards - 1
    assert cj["spec"]["schedule"] == one("CronJob", "clio-recluster")["spec"]["schedule"]
    (c,) = containers(cj)
    assert c["command"][:2] == ["clio-stream", "assign-shard"] and pod_spec(cj)["restartPolicy"] == "OnFailure"
    assert ClioSettings(recluster_assign_shards=shards).recluster_assign_shards == shards
