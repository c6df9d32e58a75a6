"""The Kubernetes manifests (deploy/kubernetes): rendered as `kubectl apply -k` would, every
object validated offline against the Kubernetes OpenAPI schemas (kubernetes-validate), and the
properties ops rely on checked, down to the bot's own config loader accepting the ConfigMap."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from bot.config import ENV_PASSWORD, ENV_RECOVERY_KEY, load_config
from bot.secret_storage import encode_recovery_key, new_key

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
PLACEHOLDER = "CHANGE-ME"
PORT = 9100
UID = 10001

# The part of kustomize these manifests use; anything else in kustomization.yaml fails the
# test rather than being silently ignored by this renderer.
KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "configMapGenerator",
    "secretGenerator",
    "images",
}
# The oldest and the newest Kubernetes whose schemas the package bundles.
SCHEMA_VERSIONS = sorted({all_versions()[0], all_versions()[-1]})

Obj = dict[str, Any]


def render(directory: Path) -> list[Obj]:
    """The objects kustomize makes of directory, without the content hash kustomize appends
    to generated names (it rewrites the references to match; they are checked by name here)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unknown, f"kustomization.yaml: {sorted(unknown)} not rendered by this test"
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    objects: list[Obj] = []
    for name in kustomization.get("resources", []):
        objects += [o for o in yaml.safe_load_all((directory / name).read_text()) if o]
    for generator in kustomization.get("configMapGenerator", []):
        assert set(generator) <= {"name", "files"}, generator
        data = {}
        for entry in generator["files"]:
            key, _, path = entry.rpartition("=")
            data[key or Path(path).name] = (directory / path).read_text()
        objects.append(_object("v1", "ConfigMap", generator["name"], data=data))
    for generator in kustomization.get("secretGenerator", []):
        assert set(generator) <= {"name", "literals", "type"}, generator
        literals = dict(entry.split("=", 1) for entry in generator["literals"])
        data = {k: base64.b64encode(v.encode()).decode() for k, v in literals.items()}
        secret = _object("v1", "Secret", generator["name"], data=data)
        objects.append({**secret, "type": generator.get("type", "Opaque")})
    for image in kustomization.get("images", []):
        for container in _containers(objects):
            name, tag = _split_image(container["image"])
            if name == image["name"]:
                name, tag = image.get("newName", name), image.get("newTag", tag)
                container["image"] = f"{name}:{tag}" if tag else name
    return objects


def _split_image(image: str) -> tuple[str, str]:
    """registry:5000/team/bot:1.0 -> (registry:5000/team/bot, 1.0); no tag -> ""."""
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:
        return image, ""
    return name, tag


def _object(api_version: str, kind: str, name: str, **fields: Any) -> Obj:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **fields}


def _containers(objects: list[Obj]) -> list[Obj]:
    pods = [o["spec"]["template"]["spec"] for o in objects if o["kind"] == "StatefulSet"]
    return [c for pod in pods for c in pod.get("initContainers", []) + pod["containers"]]


def invalid(obj: Obj, version: str) -> str | None:
    """None if obj is valid for that Kubernetes version (unknown fields refused), else why."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}"
    return None


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    return render(KUSTOMIZE_DIR)


def one(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def statefulset(objects: list[Obj]) -> Obj:
    return one(objects, "StatefulSet")


@pytest.fixture(scope="module")
def pod(statefulset: Obj) -> Obj:
    return statefulset["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def bot(pod: Obj) -> Obj:
    (container,) = pod["containers"]
    return container


def test_the_kustomization_makes_exactly_these_objects(objects: list[Obj]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == [
        ("ConfigMap", "onboarding-bot-config"),
        ("Secret", "onboarding-bot-secrets"),
        ("Service", "onboarding-bot"),
        ("StatefulSet", "onboarding-bot"),
    ]


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(
    objects: list[Obj], version: str
) -> None:
    problems = [p for o in objects if (p := invalid(o, version))]
    assert not problems, "\n".join(problems)


def test_the_validation_refuses_a_broken_manifest(statefulset: Obj) -> None:
    # Guards the test above against passing vacuously (a schema not found, strictness lost).
    version = SCHEMA_VERSIONS[-1]
    misspelt = copy.deepcopy(statefulset)
    context = misspelt["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    context["readOnlyRootFileSystem"] = context.pop("readOnlyRootFilesystem")
    assert "'readOnlyRootFileSystem' was unexpected" in (invalid(misspelt, version) or "")
    wrong_type = copy.deepcopy(statefulset)
    wrong_type["spec"]["replicas"] = "1"
    assert "spec.replicas: '1' is not of type" in (invalid(wrong_type, version) or "")


def test_the_bot_runs_once_with_its_data_on_a_volume_claim(statefulset: Obj, bot: Obj) -> None:
    spec = statefulset["spec"]
    assert spec["replicas"] == 1
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["mountPath"]: m["name"] for m in bot["volumeMounts"]}
    assert mounts["/data"] == claim["metadata"]["name"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert bot["image"] == "onboarding-bot:local"


def test_the_pod_runs_as_10001_on_a_read_only_root(pod: Obj, bot: Obj) -> None:
    assert pod["securityContext"]["fsGroup"] == UID
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    for context in (pod["securityContext"], bot["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert (context["runAsUser"], context["runAsGroup"]) == (UID, UID)
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    context = bot["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = next(m for m in bot["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]]
    # Every other mount is the data volume or read-only.
    writable = {m["mountPath"] for m in bot["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/data", "/tmp"}


def _port(bot: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in bot["ports"] if p["name"] == port)


def test_probes_ask_healthz_and_liveness_outlasts_a_homeserver_outage(bot: Obj) -> None:
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = bot[probe]["httpGet"]
        assert (get["path"], _port(bot, get["port"])) == ("/healthz", PORT), probe

    def patience(probe: str) -> int:
        return bot[probe]["periodSeconds"] * bot[probe]["failureThreshold"]

    assert patience("readinessProbe") <= 60
    assert patience("livenessProbe") >= 300
    assert patience("startupProbe") >= 300


def test_resources_are_the_measured_figures_and_shutdown_has_time(pod: Obj, bot: Obj) -> None:
    assert bot["resources"] == {
        "requests": {"memory": "128Mi", "cpu": "50m"},
        "limits": {"memory": "256Mi", "cpu": "500m"},
    }
    assert pod["terminationGracePeriodSeconds"] >= 10


def test_password_and_recovery_key_come_from_the_placeholder_secret(
    objects: list[Obj], bot: Obj
) -> None:
    secret = one(objects, "Secret")
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert values == {"password": PLACEHOLDER}, "only placeholders belong in the repository"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in bot["env"] if "valueFrom" in e}
    assert set(refs) == {ENV_PASSWORD, ENV_RECOVERY_KEY}
    for ref in refs.values():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in values or ref.get("optional") is True, ref
    assert refs[ENV_RECOVERY_KEY].get("optional") is True


def test_the_bot_accepts_the_configmap(
    objects: list[Obj], pod: Obj, bot: Obj, tmp_path: Path
) -> None:
    env = {e["name"]: e["value"] for e in bot["env"] if "value" in e}
    config_path = Path(env["ONBOARDING_BOT_CONFIG"])
    mount = next(m for m in bot["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = one(objects, "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]

    copy_path = tmp_path / config_path.name
    copy_path.write_text(configmap["data"][config_path.name])
    secrets = {ENV_PASSWORD: "pw", ENV_RECOVERY_KEY: encode_recovery_key(new_key())}
    config = load_config(copy_path, environ=secrets)
    assert config.storage.data_dir.is_relative_to("/data")
    assert config.roadmap == Path("/app/roadmap.yaml")
    assert config.http.host_port == ("0.0.0.0", PORT)
    assert config.matrix.homeserver.endswith(".svc.cluster.local:8008")


def test_the_metrics_service_is_scraped_and_reaches_the_bot(
    objects: list[Obj], statefulset: Obj, bot: Obj
) -> None:
    service = one(objects, "Service")
    assert service["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(PORT),
        "prometheus.io/path": "/metrics",
    }
    (port,) = service["spec"]["ports"]
    assert port["port"] == PORT
    assert _port(bot, port["targetPort"]) == PORT
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
