"""deploy/: the Kubernetes and KServe manifests agree with the image, the TensorFlow pin and their sizing.

No cluster is needed (or reachable): core objects are checked against the Kubernetes OpenAPI schemas
that kubernetes-validate bundles, strictly (unknown fields fail) and with the network shut off;
custom resources (InferenceService, ServiceMonitor, PrometheusRule, ScaledObject) are checked field
by field against their Go types and CRDs. Every size is recomputed from deploy/sizing.json, whose own
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
import sys

import kubernetes_validate
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from helpers import ENTRYPOINT_FLAGS, arguments, env, pins
from tensorflow_serving.config import model_server_config_pb2

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
LATENCY_SUM = ":tensorflow:serving:request_latency_sum"  # microseconds of successful calls, by model_name and API
MONITORING_NAMESPACE = "monitoring"
CLIENT_NAMESPACE_LABEL = {"nst-serving/client": "true"}  # docs/deploy.md tells operators to set it
# node-feature-discovery's labels for the CPU features that make bfloat16 pay (docs/usage/features.md there).
BFLOAT16_NODE_LABELS = (
    "feature.node.kubernetes.io/cpu-cpuid.AMXBF16",
    "feature.node.kubernetes.io/cpu-cpuid.AVX512BF16",
)


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


def memory(calls: int) -> str:
    """The memory of a pod running `calls` runs at the largest size at once."""
    gib = (SIZING["baseline_gib"] + calls * SIZING["request_gib_at_largest"]) * (1 + SIZING["memory_headroom"])
    return f"{math.ceil(gib)}Gi"


def chunk_s(calls: int) -> int:
    """One chunk at the largest size: 25 L-BFGS steps and a call's fixed work, in Adam steps timed on the
    benchmark's cores, slowed by `calls` runs sharing the pod's cores."""
    adam_steps = SIZING["chunk_steps"] * SIZING["lbfgs_step_in_adam_steps"] + SIZING["call_overhead_in_adam_steps"]
    share = SIZING["benchmark_cpus"] / (SIZING["cpus"] / calls)
    return math.ceil(adam_steps * SIZING["adam_seconds_per_step_at_largest"] * share)


def sized() -> dict:
    """Every number the manifests must carry, from deploy/sizing.json."""
    calls = SIZING["calls_per_replica"]
    kserve_calls = SIZING["kserve_calls_per_replica"]
    return {
        "memory": memory(calls),
        "cpu": str(SIZING["cpus"]),
        "grpc_max_threads": SIZING["grpc_calls"] + SIZING["grpc_polling_threads"],
        "rest_api_num_threads": calls - SIZING["grpc_calls"],
        "chunk_s": chunk_s(calls),
        "container_concurrency": kserve_calls,
        "kserve_memory": memory(kserve_calls),
        "kserve_chunk_s": chunk_s(kserve_calls),
        "busy_calls_target": SIZING["grpc_calls"] * SIZING["scale_target_utilization"],
    }


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


OVERLAYS = ("version-labels", "keda", "bfloat16")  # folders of deploy/ built on deploy/kubernetes


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
    assert sized()["kserve_chunk_s"] <= predictor["timeout"], "a chunk at the largest size must pass queue-proxy"


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
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", expected["container_concurrency"])
    kserve_quantities = {"cpu": expected["cpu"], "memory": expected["kserve_memory"]}
    assert predictor["model"]["resources"] == {"requests": kserve_quantities, "limits": kserve_quantities}
    kserve_args = flags(predictor["model"]["args"])
    assert int(kserve_args["--tensorflow_session_parallelism"]) == SIZING["cpus"]
    # The server admits over gRPC what queue-proxy lets through, no more: a call past queue-proxy is refused.
    assert expected["container_concurrency"] <= SIZING["grpc_calls"]
    assert int(kserve_args["--grpc_max_threads"]) == expected["grpc_max_threads"]


def test_a_stopping_pod_may_finish_one_chunk():
    spec = one(base_objects(), "Deployment")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= sized()["chunk_s"]


def test_probes_ask_the_grpc_health_service():
    """gRPC health checks run on gRPC's callback threads, not the --grpc_max_threads workers or the REST
    threads that Predict calls hold (docs/deploy.md), and the stock server serves them only when told to."""
    deployment = one(base_objects(), "Deployment")
    main = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    assert flags(main["args"])["--enable_grpc_healthcheck_service"] == "true"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["grpc"] == {"port": ports["grpc"]}, probe  # service "": the whole server
        assert not {"httpGet", "tcpSocket", "exec"} & set(main[probe]), probe
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= SIZING["load_and_warmup_allowance_s"]
    assert deployment["spec"]["progressDeadlineSeconds"] > SIZING["load_and_warmup_allowance_s"], (
        "a rollout would be reported failed while its new pod still loads"
    )


def test_pods_spread_over_nodes_and_zones_and_stay_put():
    template = one(base_objects(), "Deployment")["spec"]["template"]
    spread = template["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert template["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert flags(container({"spec": {"template": template}})["args"])["--enable_profiler"] == "false"


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
    # The image runs as the same user where no securityContext says otherwise (docker run).
    (user,) = arguments("USER")
    context = spec["securityContext"]
    assert user == f"{context['runAsUser']}:{context['runAsGroup']}"


def test_the_network_policy_admits_callers_and_the_scraper_only():
    objects = base_objects()
    deployment = one(objects, "Deployment")
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    policy = one(objects, "NetworkPolicy")
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    admitted = {}
    for rule in policy["spec"]["ingress"]:
        ((selector),) = rule["from"]
        assert set(selector) == {"namespaceSelector"}, "namespaces, never all pods or IP blocks"
        key = tuple(sorted(selector["namespaceSelector"]["matchLabels"].items()))
        admitted[key] = {(p["protocol"], p["port"]) for p in rule["ports"]}
    monitor = one(documents(KUBERNETES / "prometheus-operator" / "servicemonitor.yaml"), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    service = one(objects, "Service", "nst-serving")
    scraped = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert admitted == {
        tuple(CLIENT_NAMESPACE_LABEL.items()): {("TCP", ports["grpc"]), ("TCP", ports["http"])},
        (("kubernetes.io/metadata.name", MONITORING_NAMESPACE),): {("TCP", ports[scraped["targetPort"]])},
    }
    docs = (ROOT / "docs" / "deploy.md").read_text()
    label = "{}={}".format(*next(iter(CLIENT_NAMESPACE_LABEL.items())))
    assert "kubectl label namespace" in docs and label in docs


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
    assert {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")} == {
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
    digest = f"@{image['digest']}" if "digest" in image else ""  # docs/deploy.md: pin by digest
    assert container(one(built, "Deployment"))["image"] == f"{image['newName']}:{image['newTag']}{digest}"
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
    objects += [(f"deploy/kserve {o['kind']}", o) for o in documents(DEPLOY / "kserve" / "storage-credentials.yaml")]
    if shutil.which("kubectl"):
        objects += [(f"built base {o['kind']}", o) for o in kustomize(KUBERNETES)]
        for overlay in OVERLAYS:
            built = [o for o in kustomize(DEPLOY / overlay) if o["kind"] != "ScaledObject"]  # checked by hand
            objects += [(f"built {overlay} {o['kind']}", o) for o in built]
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
    manifest sets them, the required modelFormat.name, its pod and container fields as a core Pod's, and
    only the pod fields Knative admits by default (pkg/apis/serving/fieldmask.go there)."""
    service = isvc()
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert service["metadata"]["name"] == env()["MODEL_NAME"], "KServe serves the model under this name"
    assert set(service["spec"]) == {"predictor"}
    predictor = dict(service["spec"]["predictor"])
    component_keys = {
        "minReplicas",
        "maxReplicas",
        "containerConcurrency",
        "scaleMetric",
        "scaleTarget",
        "timeout",
        "annotations",
        "labels",
        "model",
    }
    # PodSpec fields that Knative's PodSpecMask keeps with its features at their defaults.
    knative_pod_keys = {"serviceAccountName", "automountServiceAccountToken", "volumes", "enableServiceLinks"}
    assert set(predictor) <= component_keys | knative_pod_keys
    assert predictor["minReplicas"] >= 1 and predictor["maxReplicas"] >= predictor["minReplicas"]
    assert predictor["automountServiceAccountToken"] is False, "Knative admits only false here"
    model = dict(predictor.pop("model"))
    assert model.pop("modelFormat") == {"name": "tensorflow"}
    assert model.pop("runtime") == "kserve-tensorflow-serving"
    assert re.fullmatch(r"[a-z0-9]+://\S+", model.pop("storageUri"))
    model.pop("runtimeVersion")
    assert set(model) <= {"args", "resources", "env", "ports", "securityContext", "volumeMounts"}
    # gRPC through Knative: one port, named h2c, the runtime's --port.
    assert model["ports"] == [{"name": "h2c", "containerPort": 9000, "protocol": "TCP"}]
    # The Deployment's security settings, at the container level (Knative's SecurityContextMask).
    deployment_spec = one(base_objects(), "Deployment")["spec"]["template"]["spec"]
    security = model["securityContext"]
    assert set(security) <= {
        "capabilities",
        "readOnlyRootFilesystem",
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
        "allowPrivilegeEscalation",
        "seccompProfile",
    }
    assert container({"spec": {"template": {"spec": deployment_spec}}})["securityContext"].items() <= security.items()
    assert deployment_spec["securityContext"].items() <= security.items()
    assert set(security["capabilities"]) == {"drop"}, "adding capabilities needs a Knative feature flag"
    mounts = {m["mountPath"]: m["name"] for m in model["volumeMounts"]}
    assert "emptyDir" in {v["name"]: v for v in predictor["volumes"]}[mounts["/tmp"]]
    pod_fields = {k: predictor[k] for k in knative_pod_keys & set(predictor)}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-container-fields"},
        "spec": {"containers": [{"name": "kserve-container", "image": "tensorflow/serving", **model}], **pod_fields},
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)


def test_kserve_reads_storage_credentials_from_the_service_account():
    objects = documents(DEPLOY / "kserve" / "storage-credentials.yaml")
    account = one(objects, "ServiceAccount")
    secret = one(objects, "Secret")
    assert isvc()["spec"]["predictor"]["serviceAccountName"] == account["metadata"]["name"]
    assert {"name": secret["metadata"]["name"]} in account["secrets"]
    assert account["automountServiceAccountToken"] is False
    # Keys and annotations KServe reads (pkg/credentials/s3/s3_secret.go there).
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(secret["metadata"]["annotations"]) <= {
        f"serving.kserve.io/{name}" for name in ("s3-endpoint", "s3-usehttps", "s3-region", "s3-verifyssl")
    }
    assert "://" not in secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"]


def test_kserve_metric_aggregation_is_documented_where_it_is_on():
    annotations = isvc()["metadata"]["annotations"]
    if annotations.get("serving.kserve.io/enable-metric-aggregation") == "true":
        # Without KServe's queue-proxy extension the pod is scraped at a port nothing serves.
        assert "queue-sidecar-image" in (ROOT / "docs" / "deploy.md").read_text()


# ---- overlays ---------------------------------------------------------------------------------------


def test_every_yaml_parses_and_every_kustomization_lists_what_exists():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        assert documents(path), f"{path.relative_to(ROOT)} is empty"
    for path in sorted(DEPLOY.rglob("kustomization.yaml")):
        folder = path.parent
        listed = documents(path)[0]
        for entry in listed.get("resources", []):
            assert (folder / entry).exists(), f"{path.relative_to(ROOT)} lists {entry}, which does not exist"
        for generator in listed.get("configMapGenerator", []):
            for name in generator.get("files", []):
                assert (folder / name).is_file(), f"{path.relative_to(ROOT)} generates from {name}"
    assert {p.parent.name for p in DEPLOY.glob("*/kustomization.yaml")} >= set(OVERLAYS)


def scaled_object() -> dict:
    return one(documents(DEPLOY / "keda" / "scaledobject.yaml"), "ScaledObject")


def test_the_keda_scaled_object_by_hand(offline):
    """ScaledObject (keda.sh/v1alpha1) against KEDA's Go types (apis/keda/v1alpha1/scaledobject_types.go,
    scaletriggers_types.go) and its scalers' metadata (pkg/scalers/prometheus_scaler.go, cpu_memory_scaler.go)."""
    scaler = scaled_object()
    assert (scaler["apiVersion"], scaler["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    spec = scaler["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "pollingInterval",
        "initialCooldownPeriod",
        "cooldownPeriod",
        "idleReplicaCount",
        "minReplicaCount",
        "maxReplicaCount",
        "advanced",
        "triggers",
        "fallback",
    }
    assert set(spec["scaleTargetRef"]) <= {"name", "apiVersion", "kind", "envSourceContainerName"}
    assert set(spec["advanced"]) <= {
        "horizontalPodAutoscalerConfig",
        "restoreToOriginalReplicaCount",
        "scalingModifiers",
    }
    assert set(spec["advanced"]["horizontalPodAutoscalerConfig"]) <= {"behavior", "name"}
    assert set(spec["fallback"]) <= {"failureThreshold", "replicas", "behavior"}
    assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    triggers = {t["type"]: t for t in spec["triggers"]}
    assert set(triggers) == {"prometheus", "cpu"}
    for trigger in spec["triggers"]:
        assert set(trigger) <= {"type", "name", "useCachedMetrics", "metadata", "authenticationRef", "metricType"}
        assert all(isinstance(v, str) for v in trigger["metadata"].values()), "trigger metadata is a string map"
    prometheus = triggers["prometheus"]
    # A fallback needs a trigger other than cpu/memory with metricType AverageValue (CheckFallbackValid).
    assert prometheus["metricType"] == "AverageValue"
    known = {"serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace"}
    known |= {"customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout", "identityOwner"}
    assert {"serverAddress", "query", "threshold"} <= set(prometheus["metadata"]) <= known
    assert re.fullmatch(r"https?://\S+", prometheus["metadata"]["serverAddress"])
    cpu = triggers["cpu"]
    assert cpu["metricType"] == "Utilization" and set(cpu["metadata"]) <= {"value", "containerName"}
    # Its HPA's behavior is a core HorizontalPodAutoscaler's.
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-behavior"},
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"],
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[-1], strict=True)


def test_keda_scales_on_busy_grpc_calls_and_keeps_the_cpu_fallback():
    spec = scaled_object()["spec"]
    autoscaler = one(base_objects(), "HorizontalPodAutoscaler")["spec"]
    assert spec["scaleTargetRef"] == autoscaler["scaleTargetRef"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (autoscaler["minReplicas"], autoscaler["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == autoscaler["behavior"]
    triggers = {t["type"]: t for t in spec["triggers"]}
    (cpu_metric,) = autoscaler["metrics"]
    assert int(triggers["cpu"]["metadata"]["value"]) == cpu_metric["resource"]["target"]["averageUtilization"]
    metadata = triggers["prometheus"]["metadata"]
    query = metadata["query"]
    # Seconds of successful gRPC Predict work per second: the calls running on average (Little's law).
    assert f'rate({LATENCY_SUM}{{model_name="{env()["MODEL_NAME"]}",API="Predict"}}[' in query
    assert query.rstrip().endswith("/ 1e6") and query.count("(") == query.count(")")
    assert math.isclose(float(metadata["threshold"]), sized()["busy_calls_target"])
    assert float(metadata["threshold"]) < SIZING["grpc_calls"], "a fleet of busy pods must look short of pods"


def test_the_overlays_build():
    keda = kustomize(DEPLOY / "keda")
    kinds = {o["kind"] for o in keda}
    assert "HorizontalPodAutoscaler" not in kinds, "KEDA's HPA would fight the base's"
    assert kinds == ({o["kind"] for o in base_objects()} - {"HorizontalPodAutoscaler"}) | {"ScaledObject"}
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nst-serving" for o in keda)

    bfloat16 = kustomize(DEPLOY / "bfloat16")
    deployment = one(bfloat16, "Deployment")
    image = container(deployment)["image"]
    assert image.startswith(f"{kustomization(KUBERNETES)['images'][0]['newName']}:{pins()['tensorflow']}-")
    terms = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    # One term per label: Kubernetes ORs the terms, so either CPU feature will do.
    assert [t["matchExpressions"] for t in terms] == [
        [{"key": label, "operator": "In", "values": ["true"]}] for label in BFLOAT16_NODE_LABELS
    ]


# ---- benchmarks/server_sizing.py ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_sizing():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import server_sizing
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return server_sizing


def test_server_sizing_reads_the_memory_a_command_prints(server_sizing):
    assert server_sizing.gib("nst-serving-7d9f 3512m 9876Mi") == pytest.approx(9876 / 1024)
    assert server_sizing.gib("12Gi") == 12
    assert server_sizing.gib("1048576Ki\n") == 1
    with pytest.raises(ValueError, match="memory"):
        server_sizing.gib("no figure here")


def test_server_sizing_fields_are_the_sizing_files(server_sizing):
    # Calls of 4 steps and a last one of 2: 1 s an Adam step, 1.3 s an L-BFGS step, 2.5 s of fixed work a call.
    adam = server_sizing.Timing(chunk=4, last=2, chunk_call_s=6.5, last_call_s=4.5)
    lbfgs = server_sizing.Timing(chunk=4, last=2, chunk_call_s=7.7, last_call_s=5.1)
    assert adam.step_s == pytest.approx(1.0) and lbfgs.call_s == pytest.approx(2.5)
    fields = server_sizing.fields(adam, lbfgs, baseline_gib=0.8, peak_gib=10.2, calls=1, cpus=4)
    assert fields == {
        "adam_seconds_per_step_at_largest": 1.0,
        "lbfgs_step_in_adam_steps": 1.3,
        "call_overhead_in_adam_steps": 2.5,
        "benchmark_cpus": 4,
        "baseline_gib": 0.8,
        "request_gib_at_largest": 9.4,
    }
    assert set(fields) <= set(SIZING)
    two = server_sizing.fields(adam, lbfgs, baseline_gib=0.8, peak_gib=19.6, calls=2, cpus=4)
    assert two["request_gib_at_largest"] == 9.4
    assert "baseline_gib" not in server_sizing.fields(adam, lbfgs, baseline_gib=None, peak_gib=None, calls=1, cpus=4)


def test_server_sizing_command_line(server_sizing):
    args = server_sizing.parser().parse_args(["--server", "localhost:8500", "--cpus", "4"])
    assert (args.server, args.cpus, args.memory_command) == ("localhost:8500", 4, None)
    assert args.sizes == [512, SIZING["largest_max_dim"]]
