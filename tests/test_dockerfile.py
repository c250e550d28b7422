"""Dockerfile.serving, parsed and checked: no Docker engine is needed (or available) here.

It must serve the exported model under the name the clients use, with a tensorflow/serving
release equal to the TensorFlow that exports the model (an older server cannot load it).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import inspect
import json
import re
import tomllib

import pytest
from helpers import DOCKERFILE, ENTRYPOINT_FLAGS, ROOT, arguments, env, pins

from nst_client import NSTClient


def test_base_image_is_the_serving_release_of_the_tensorflow_pin():
    (base,) = arguments("FROM")
    image, _, tag = base.partition(":")
    assert image == "tensorflow/serving"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin a full release, not {tag!r}"
    assert tag == pins()["tensorflow"]
    assert pins()["tensorflow-serving-api"] == pins()["tensorflow"]
    assert importlib.metadata.version("tensorflow") == pins()["tensorflow"], "the exporting TensorFlow is not the pin"


def copies() -> dict[str, str]:
    """COPY source -> destination."""
    return dict(args.split() for args in arguments("COPY"))


def test_the_model_is_copied_where_the_entrypoint_serves_it():
    variables = env()
    assert variables["MODEL_NAME"] == "nst"
    base_path = variables.get("MODEL_BASE_PATH", "/models")  # the image's default
    assert copies() == {
        "models/nst": f"{base_path}/{variables['MODEL_NAME']}",
        "deploy/monitoring.config": "/etc/nst-serving/monitoring.config",
    }
    assert not arguments("ENTRYPOINT"), "keep the image's entrypoint: it passes MODEL_NAME and the ports"


def test_ports():
    exposed = {port for args in arguments("EXPOSE") for port in args.split()}
    assert {"8500", "8501"} <= exposed


def test_server_flags():
    (cmd,) = arguments("CMD")
    flags = dict(flag.split("=", 1) for flag in json.loads(cmd))  # exec form: appended to the entrypoint
    assert not ENTRYPOINT_FLAGS & set(flags)
    rest_timeout_ms = int(flags["--rest_api_timeout_in_ms"])
    client_timeout_s = inspect.signature(NSTClient).parameters["timeout"].default
    assert rest_timeout_ms == 0 or rest_timeout_ms >= client_timeout_s * 1000, "REST would cut runs the client allows"
    # The metrics endpoint: the config the server reads is the one copied into the image.
    assert flags["--monitoring_config_file"] == copies()["deploy/monitoring.config"]


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("models/nst/1/saved_model.pb", True),
        ("models/nst/1/variables/variables.index", True),
        ("models/nst/.2-staging-x1/saved_model.pb", False),
        ("models/nst/.staging-x1/saved_model.pb", False),
        ("models/nst/.staging-x1.lock", False),
        (".venv/bin/python", False),
        ("client/cli.py", False),
        ("deploy/monitoring.config", True),
        ("deploy/kubernetes/deployment.yaml", False),
        ("deploy/sizing.json", False),
    ],
)
def test_build_context_is_the_model_only(path, sent):
    patterns = [
        line.strip()
        for line in (ROOT / "Dockerfile.serving.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a folder's rule covers its files
    excluded = False
    for pattern in patterns:  # the last matching pattern wins, as in Docker
        negated = pattern.startswith("!")
        if any(fnmatch.fnmatchcase(p, pattern.lstrip("!")) for p in prefixes):
            excluded = not negated
    assert excluded != sent


def test_the_server_runs_as_a_user_and_publishes_on_loopback():
    (user,) = arguments("USER")
    uid, _, gid = user.partition(":")
    assert int(uid) > 0 and int(gid) > 0, "a numeric non-root user (Kubernetes checks runAsNonRoot by number)"
    documented = [DOCKERFILE, ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    runs = [line for path in documented for line in path.read_text().splitlines() if "docker run" in line]
    published = [port for line in runs for port in re.findall(r"-p (\S+)", line)]
    assert published and all(p.startswith("127.0.0.1:") for p in published), "the server has no authentication"


def test_health_service_on_profiler_off():
    (cmd,) = arguments("CMD")
    flags = dict(flag.split("=", 1) for flag in json.loads(cmd))
    assert flags["--enable_grpc_healthcheck_service"] == "true"  # what Kubernetes' gRPC probes ask
    assert flags["--enable_profiler"] == "false"  # on by default: any caller could profile the server


def test_the_build_backend_accepts_the_license_string():
    """A PEP 639 license expression (license = "Apache-2.0") needs setuptools 77 or newer."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(pyproject["project"]["license"], str)
    (requirement,) = [r for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")]
    minimum = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", requirement.replace(" ", ""))
    assert minimum and int(minimum.group(1)) >= 77, requirement
