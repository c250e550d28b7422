"""Dockerfile.serving, parsed and checked: no Docker engine is needed (or available) here.

It must serve the exported model under the name the clients use, with a tensorflow/serving
release equal to the TensorFlow that exports the model (an older server cannot load it).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import inspect
import json
import pathlib
import re
import tomllib

import pytest

from nst_client import NSTClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile.serving"
ENTRYPOINT_FLAGS = {"--port", "--rest_api_port", "--model_name", "--model_base_path"}  # set by the image's script


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, line continuations joined."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            result.append((keyword.upper(), arguments.strip()))
    return result


def arguments(keyword: str) -> list[str]:
    return [args for key, args in instructions() if key == keyword]


def env() -> dict[str, str]:
    variables = {}
    for args in arguments("ENV"):
        variables.update(pair.split("=", 1) for pair in args.split())
    return variables


def pins() -> dict[str, str]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.replace(" ", "").split("==") for d in dependencies if "==" in d)


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
