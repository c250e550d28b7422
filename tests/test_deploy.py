"""deploy/: the Kubernetes and KServe manifests agree with the image, the TensorFlow pin and their sizing.

No cluster is needed (or reachable): core objects are checked against the Kubernetes OpenAPI schemas
that kubernetes-validate bundles, strictly (unknown fields fail) and with the network shut off;
custom resources (InferenceService, ServiceMonitor, PrometheusRule) are checked field by field
against their Go types and CRDs. Every size is recomputed from deploy/sizing.json, whose own
figures are checked against README.md's measurements.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import shutil
import socket
import subprocess

import kubernetes_validate
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2
from test_dockerfile import ENTRYPOINT_FLAGS, arguments, env, pins

from nst_client import DEFAULT_CHUNK, NSTClient
from nst_model.options import MAX_SIDE

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SIZING = json.loads((DEPLOY / "sizing.json").read_text())
# The Kubernetes releases validated against: an old one still in service and the newest bundled schemas.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
KSERVE_RUNTIME_REST_PORT = 8080  # kserve-tensorflow-serving's --rest_api_port (config/runtimes)
KNATIVE_MAX_REVISION_TIMEOUT_S = 600  # config-defaults max-revision-timeout-seconds, unless an operator raises it
METRICS = (":tensorflow:serving:request_count", ":tensorflow:serving:request_latency_count")


def documents(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(folder: pathlib.Path) -> dict:
    return documents(folder / "kustomization.yaml")[0]


def base_objects() -> list[dict]:
    """The objects of deploy/kubernetes, file by file as its kustomization lists them."""
    return [doc for name in kustomization(KUBERNETES)["resources"] for doc in documents(KUBERNETES / name)]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def container(deployment: dict) -> dict:
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return found


def flags(args: list[str]) -> dict[str, str]:
    """--name=value arguments; a repeated flag keeps its last value, as tensorflow_model_server reads them."""
    return dict(arg.split("=", 1) for arg in args)


def isvc() -> dict:
    return documents(DEPLOY / "kserve" / "inferenceservice.yaml")[0]


def sized() -> dict:
    """Every number the manifests must carry, from deploy/sizing.json."""
    calls = SIZING["calls_per_replica"]
    memory_gib = (SIZING["baseline_gib"] + calls * SIZING["request_gib_at_largest"]) * (1 + SIZING["memory_headroom"])
    # One chunk at the largest size: 25 L-BFGS steps and a call's fixed work, in Adam steps timed on the
    # benchmark's cores, slowed by `calls` runs sharing the pod's cores.
    adam_steps = SIZING["chunk_steps"] * SIZING["lbfgs_step_in_adam_steps"] + SIZING["call_overhead_in_adam_steps"]
    share = SIZING["benchmark_cpus"] / (SIZING["cpus"] / calls)
    return {
        "memory": f"{math.ceil(memory_gib)}Gi",
        "cpu": str(SIZING["cpus"]),
        "grpc_max_threads": SIZING["grpc_calls"] + SIZING["grpc_polling_threads"],
        "rest_api_num_threads": calls - SIZING["grpc_calls"],
        "container_concurrency": calls,
        "chunk_s": math.ceil(adam_steps * SIZING["adam_seconds_per_step_at_largest"] * share),
    }


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def kustomize(folder: pathlib.Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    built = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


# ---- one version -----------------------------------------------------------------------------------


def test_every_image_is_the_serving_release_of_the_tensorflow_pin():
    pin = pins()["tensorflow"]
    (base,) = arguments("FROM")
    assert base == f"tensorflow/serving:{pin}"
    (image,) = kustomization(KUBERNETES)["images"]
    assert image["name"] == container(one(base_objects(), "Deployment"))["image"]
    assert image["newTag"] == pin or image["newTag"].startswith(f"{pin}-"), "tag the image with the serving release"
    model = isvc()["spec"]["predictor"]["model"]
    assert model["runtimeVersion"] == pin, "KServe's default tensorflow/serving is too old for this model"
    assert "image" not in model, "an image would bypass runtimeVersion"


def test_containers_repeat_the_image_flags_they_replace():
    (cmd,) = arguments("CMD")
    image_flags = flags(json.loads(cmd))
    deployment_flags = flags(container(one(base_objects(), "Deployment"))["args"])
    assert image_flags.items() <= deployment_flags.items()
    assert not ENTRYPOINT_FLAGS & set(deployment_flags), "the image's entrypoint sets the model and the ports"
    kserve_flags = flags(isvc()["spec"]["predictor"]["model"]["args"])
    assert kserve_flags["--rest_api_timeout_in_ms"] == image_flags["--rest_api_timeout_in_ms"]


def test_request_timeouts_agree():
    """The REST timeout, KServe's request timeout and the sizing's are one figure, no shorter than the client's."""
    timeout_s = SIZING["request_timeout_s"]
    (cmd,) = arguments("CMD")
    assert int(flags(json.loads(cmd))["--rest_api_timeout_in_ms"]) == timeout_s * 1000
    predictor = isvc()["spec"]["predictor"]
    assert predictor["timeout"] == timeout_s
    assert int(flags(predictor["model"]["args"])["--rest_api_timeout_in_ms"]) == timeout_s * 1000
    assert timeout_s >= NSTClient.__init__.__kwdefaults__["timeout"]
    assert timeout_s <= KNATIVE_MAX_REVISION_TIMEOUT_S, "beyond it, docs/deploy.md's Knative settings are needed"


# ---- sizes -----------------------------------------------------------------------------------------


def test_sizing_inputs_are_the_readmes_measurements():
    readme = (ROOT / "README.md").read_text()
    assert SIZING["largest_max_dim"] == MAX_SIDE
    assert SIZING["chunk_steps"] == DEFAULT_CHUNK
    row = re.search(
        rf"^\| {MAX_SIDE} \| \d+x\d+ \| ([\d.]+) / [\d.]+ GiB \| ([\d.]+) / [\d.]+ GiB \| ([\d.]+) /", readme, re.M
    )
    adam_gib, lbfgs_gib, adam_s = (float(x) for x in row.groups())
    assert f"about {SIZING['baseline_gib']} GiB of it is" in readme.replace("\n", " ")
    assert math.isclose(SIZING["request_gib_at_largest"], lbfgs_gib - SIZING["baseline_gib"]), "L-BFGS is the default"
    assert lbfgs_gib > adam_gib
    assert SIZING["adam_seconds_per_step_at_largest"] == adam_s
    assert f"an L-BFGS step cost about {SIZING['lbfgs_step_in_adam_steps']} Adam steps" in readme.replace("\n", " ")


def test_resources_and_threads_follow_from_the_sizing():
    expected = sized()
    main = container(one(base_objects(), "Deployment"))
    quantities = {"cpu": expected["cpu"], "memory": expected["memory"]}
    assert main["resources"] == {"requests": quantities, "limits": quantities}  # Guaranteed QoS
    args = flags(main["args"])
    assert int(args["--grpc_max_threads"]) == expected["grpc_max_threads"]
    assert int(args["--rest_api_num_threads"]) == expected["rest_api_num_threads"]
    assert int(args["--tensorflow_session_parallelism"]) == SIZING["cpus"]
    predictor = isvc()["spec"]["predictor"]
    assert predictor["containerConcurrency"] == expected["container_concurrency"]
    assert predictor["model"]["resources"] == main["resources"]
    assert int(flags(predictor["model"]["args"])["--tensorflow_session_parallelism"]) == SIZING["cpus"]


def test_a_stopping_pod_may_finish_one_chunk():
    spec = one(base_objects(), "Deployment")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= sized()["chunk_s"]


def test_probes():
    objects = base_objects()
    main = container(one(objects, "Deployment"))
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    status_path = f"/v1/models/{env()['MODEL_NAME']}"
    for probe in ("startupProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": status_path, "port": "http"}, probe
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= SIZING["load_and_warmup_allowance_s"]
    assert main["livenessProbe"]["tcpSocket"] == {"port": "grpc"}  # never on the REST threads that Predicts hold


def test_the_stop_hook_is_valid_bash():
    hook = container(one(base_objects(), "Deployment"))["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:2] == ["/bin/bash", "-c"]
    bash = shutil.which("bash")
    checked = subprocess.run([bash, "-n", "-c", hook[2]], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_non_root_read_only_with_a_writable_tmp():
    spec = one(base_objects(), "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    main = container({"spec": {"template": {"spec": spec}}})
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_services_budget_and_autoscaler_select_the_pods():
    objects = base_objects()
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in container(deployment)["ports"]}
    services = {s["metadata"]["name"]: s for s in objects if s["kind"] == "Service"}
    assert set(services) == {"nst-serving", "nst-serving-headless"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert services["nst-serving-headless"]["spec"]["clusterIP"] == "None"
    assert {p["port"] for p in services["nst-serving"]["spec"]["ports"]} == {8500, 8501}
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    autoscaler = one(objects, "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "nst-serving",
    }
    assert autoscaler["spec"]["minReplicas"] > budget["spec"]["maxUnavailable"], "a drain must leave a pod serving"
    assert [m["resource"]["name"] for m in autoscaler["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


# ---- metrics ---------------------------------------------------------------------------------------


def monitoring_config() -> object:
    """deploy/monitoring.config parsed as tensorflow.serving.MonitoringConfig (monitoring_config.proto,
    rebuilt here: the tensorflow-serving-api wheel does not ship it)."""
    proto = descriptor_pb2.FileDescriptorProto(name="nst_test/monitoring_config.proto", package="tensorflow.serving")
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    proto.message_type.add(name="MonitoringConfig").field.add(
        name="prometheus_config",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    config = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))()
    return text_format.Parse((DEPLOY / "monitoring.config").read_text(), config)


def test_metrics_are_served_and_scraped_at_one_path():
    config = monitoring_config().prometheus_config
    assert config.enable
    objects = base_objects()
    deployment = one(objects, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    rest_port = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}["http"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(rest_port),
        "prometheus.io/path": config.path,
    }

    operator = [
        doc
        for name in ("servicemonitor.yaml", "prometheusrule.yaml")
        for doc in documents(KUBERNETES / "prometheus-operator" / name)
    ]
    monitor = one(operator, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == config.path
    selected = [
        s
        for s in objects
        if s["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["nst-serving"], "scrape each pod once"
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert re.fullmatch(r"\d+s", endpoint["interval"]) and re.fullmatch(r"\d+s", endpoint["scrapeTimeout"])

    predictor = isvc()["spec"]["predictor"]
    assert predictor["annotations"] == {
        "prometheus.kserve.io/port": str(KSERVE_RUNTIME_REST_PORT),
        "prometheus.kserve.io/path": config.path,
    }
    assert flags(predictor["model"]["args"])["--monitoring_config_file"] == "/mnt/models/monitoring.config"


def test_the_error_alert():
    rule_file = one(documents(KUBERNETES / "prometheus-operator" / "prometheusrule.yaml"), "PrometheusRule")
    assert rule_file["apiVersion"] == "monitoring.coreos.com/v1"
    ((group),) = rule_file["spec"]["groups"]
    assert group["name"]
    (rule,) = group["rules"]
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"} and rule["alert"]
    expr = rule["expr"]
    for metric in METRICS:
        assert f'{metric}{{model_name="{env()["MODEL_NAME"]}"' in expr
    assert expr.count("(") == expr.count(")")
    statuses = set(re.findall(r'status=~"([^"]+)"', expr))
    assert len(statuses) == 1 and not {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED"} & set(
        statuses.pop().split("|")
    )
    assert re.fullmatch(r"\d+[smh]", rule["for"])


def test_kustomize_builds_the_base_with_the_image_and_the_optional_parts():
    pin = pins()["tensorflow"]
    built = kustomize(KUBERNETES)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in built) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in base_objects()
    )
    (image,) = kustomization(KUBERNETES)["images"]
    assert container(one(built, "Deployment"))["image"] == f"{image['newName']}:{image['newTag']}"
    assert image["newTag"].startswith(pin)
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nst-serving" for o in built)
    assert {o["kind"] for o in kustomize(KUBERNETES / "prometheus-operator")} == {"ServiceMonitor", "PrometheusRule"}


# ---- version labels ---------------------------------------------------------------------------------


def test_version_labels_name_served_versions_of_the_baked_model():
    config = text_format.Parse(
        (DEPLOY / "version-labels" / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (model,) = config.model_config_list.config
    copies = dict(args.split() for args in arguments("COPY"))
    assert (model.name, model.base_path, model.model_platform) == (
        env()["MODEL_NAME"],
        copies["models/nst"],
        "tensorflow",
    )
    versions = set(model.model_version_policy.specific.versions)
    assert set(model.version_labels) == {"stable", "canary"}
    assert set(model.version_labels.values()) <= versions


def test_the_version_labels_overlay_mounts_the_config_the_server_reads():
    built = kustomize(DEPLOY / "version-labels")
    config_map = one(built, "ConfigMap")
    main = container(one(built, "Deployment"))
    args = flags(main["args"])
    mount = next(m for m in main["volumeMounts"] if args["--model_config_file"].startswith(m["mountPath"] + "/"))
    volume = next(
        v for v in one(built, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert pathlib.PurePosixPath(args["--model_config_file"]).name in config_map["data"]
    assert int(args["--model_config_file_poll_wait_seconds"]) > 0
    assert args["--allow_version_labels_for_unavailable_models"] == "true"


# ---- schemas ----------------------------------------------------------------------------------------


def core_objects() -> list[tuple[str, dict]]:
    """(where, object) for every core Kubernetes object here, as written; the built ones too where kubectl is."""
    objects = [(f"deploy/kubernetes {o['kind']}", o) for o in base_objects()]
    if shutil.which("kubectl"):
        objects += [(f"built base {o['kind']}", o) for o in kustomize(KUBERNETES)]
        objects += [(f"built version-labels {o['kind']}", o) for o in kustomize(DEPLOY / "version-labels")]
    return objects


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate_strictly_offline(version, offline):
    for where, obj in core_objects():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where} fails Kubernetes {version}'s schema: {'.'.join(map(str, e.path))}: {e.message}")


def test_the_inference_service_by_hand(offline):
    """InferenceService (serving.kserve.io/v1beta1) against KServe's Go types: no unknown keys where the
    manifest sets them, the required modelFormat.name, and its container fields as a core container."""
    service = isvc()
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert service["metadata"]["name"] == env()["MODEL_NAME"], "KServe serves the model under this name"
    assert set(service["spec"]) == {"predictor"}
    predictor = service["spec"]["predictor"]
    component_keys = {"minReplicas", "maxReplicas", "containerConcurrency", "timeout", "annotations", "labels", "model"}
    assert set(predictor) <= component_keys
    assert predictor["minReplicas"] >= 1 and predictor["maxReplicas"] >= predictor["minReplicas"]
    model = dict(predictor["model"])
    assert model.pop("modelFormat") == {"name": "tensorflow"}
    assert re.fullmatch(r"[a-z0-9]+://\S+", model.pop("storageUri"))
    model.pop("runtimeVersion")
    assert set(model) <= {"args", "resources", "env"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-container-fields"},
        "spec": {"containers": [{"name": "kserve-container", "image": "tensorflow/serving", **model}]},
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)
