"""nst-devserver answers like tensorflow_model_server: results, versions, errors and messages.

Most checks go over gRPC to the session's devserver (a subprocess); the deadline check and
a few others drive the same code in-process with the `serving` fixture's Session.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import SERVED_VERSIONS, quiet_env, script, serving_default, wait_for
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from nst_client.quiet import hidden_stderr
from nst_devserver import server as cli
from nst_devserver import serving as ds
from nst_export.exporter import read_warmup
from nst_model.options import DEFAULTS

pytest_plugins = ["serving_fixtures"]

NEWEST = max(SERVED_VERSIONS)


@pytest.fixture(scope="module")
def channel(devserver):
    with grpc.insecure_channel(devserver["address"], options=ds.GRPC_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


@pytest.fixture(scope="module")
def predictions(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def request(signature: str = "", name: str = "nst", version: int | None = None, output_filter=(), **inputs):
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        spec.version.value = version
    req = predict_pb2.PredictRequest(model_spec=spec, output_filter=list(output_filter))
    for key, value in inputs.items():
        req.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return req


def small(content_png: bytes, style_png: bytes, steps: int = 2) -> dict:
    return {"content": content_png, "style": style_png, "steps": np.int32(steps), "max_dim": np.int32(32)}


def fails(call, req) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(req, timeout=60)
    return info.value


# ---- Predict ------------------------------------------------------------------------------------


def test_predict_returns_what_the_server_loader_computes(predictions, serving, content_png, style_png):
    response = predictions.Predict(request(**small(content_png, style_png)), timeout=60)
    expected = serving_default(serving, content_png, style_png, steps=2, max_dim=32)
    assert tf.make_ndarray(response.outputs["image_bytes"]).item() == expected
    assert response.model_spec.name == "nst"
    assert response.model_spec.signature_name == "serving_default"  # "" means serving_default
    assert response.model_spec.version.value == NEWEST
    assert set(response.outputs) == set(serving.signature("serving_default").outputs)
    # Like the real server (Tensor::AsProtoField): values in the typed fields, not tensor_content.
    assert len(response.outputs["loss"].float_val) == 1
    assert not response.outputs["loss"].tensor_content


def test_a_requested_version_serves_and_an_absent_one_is_not_found(predictions, content_png):
    req = request("decode", version=1, image=content_png, max_dim=np.int32(16))
    assert predictions.Predict(req, timeout=60).model_spec.version.value == 1
    error = fails(predictions.Predict, request("decode", version=2, image=content_png))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Specific(nst, 2)"
    error = fails(predictions.Predict, request("decode", name="other", image=content_png))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(other)"


def test_model_spec_errors(predictions, content_png):
    error = fails(predictions.Predict, predict_pb2.PredictRequest())
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    error = fails(predictions.Predict, request("decode", name="", image=content_png))
    assert error.details() == "ModelSpec has no name specified."
    req = request("decode", image=content_png)
    req.model_spec.version_label = "stable"
    error = fails(predictions.Predict, req)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: stable",
    )


def test_unknown_signature_fails_precondition(predictions, content_png):
    error = fails(predictions.Predict, request("nope", image=content_png))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == 'Serving signature key "nope" not found.'


def test_omitted_inputs_take_the_signature_defaults(predictions, content_png):
    response = predictions.Predict(request("decode", image=content_png), timeout=60)
    assert max(tf.make_ndarray(response.outputs["pixels"]).shape[1:3]) == DEFAULTS["max_dim"]


def test_missing_and_extra_inputs(predictions, serving, content_png, style_png):
    signature = serving.signature("serving_default")
    error = fails(predictions.Predict, request(style=style_png))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"Signature input alias: content(feed name: {signature.inputs['content'].name}) not found in request and "
        "no default value provided. Inputs expected to be in the request {style}, or default input alias set: "
        + ",".join(sorted(signature.defaults))
    )
    error = fails(predictions.Predict, request(content=content_png, style=style_png, bogus=np.int32(1)))
    assert error.details() == (
        "Inputs contains invalid name. Used request inputs: content,style, request input: bogus,content,style"
    )
    too_many = {f"x{i}": np.int32(i) for i in range(len(signature.inputs) + 1)}
    error = fails(predictions.Predict, request(**too_many))
    assert error.details().startswith(f"input size does not match signature: {len(too_many)}!={len(signature.inputs)} ")
    assert error.details().endswith("Missing but required: {" + ",".join(sorted(signature.inputs)) + "}.")


def test_dtypes_are_not_converted_and_a_wrong_one_is_named(predictions, content_png, style_png):
    error = fails(predictions.Predict, request(**{**small(content_png, style_png), "steps": np.int64(2)}))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expects input steps to be int32 but int64 is provided",  # the Session's words, with the input's name
    )
    error = fails(predictions.Predict, request("decode", image=content_png, max_dim=np.float32(16)))
    assert error.details() == "Expects input max_dim to be int32 but float is provided"


@pytest.mark.parametrize("dtype", [types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT])
def test_resource_and_variant_tensors_are_refused_naming_the_input(predictions, content_png, dtype):
    req = request("decode", image=content_png)
    req.inputs["max_dim"].CopyFrom(tensor_pb2.TensorProto(dtype=dtype))
    error = fails(predictions.Predict, req)
    kind = types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Expects input max_dim to be int32 but {kind} is provided",
    )
    with pytest.raises(ds.ServingError) as info:  # and the parser refuses them whatever the signature says
        ds.tensor_from_proto("handle", tensor_pb2.TensorProto(dtype=dtype))
    assert info.value.message == f"tensor parsing error: handle: {kind} tensors cannot come from a request"


def declared(dtype: int, shape: list[int], **fields) -> tensor_pb2.TensorProto:
    """A TensorProto built by hand: a shape and whatever values the test gives, checked by nobody."""
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in shape]
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims), **fields)


def peak_rss_kib(pid: int, reset: bool = False) -> int:
    """The process's peak resident memory (VmHWM); `reset` first sets the peak to the current RSS."""
    if reset:
        pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])


def test_huge_declared_shapes_are_refused_before_anything_is_allocated(devserver, predictions, content_png):
    """A few bytes declaring 4 TiB, 512 MiB or 4M strings: refused by their declared size, and the
    server's peak memory does not move (each used to be allocated, or tried, before anything else)."""
    pid = devserver["process"].pid
    before = peak_rss_kib(pid, reset=True)
    cases = {
        "4 TiB of float": ("pixels", "content", declared(types_pb2.DT_FLOAT, [1, 2**20, 2**20, 1], float_val=[0.5])),
        "512 MiB of float": ("pixels", "content", declared(types_pb2.DT_FLOAT, [1, 2**13, 2**14, 1], float_val=[0.5])),
        "4M strings": ("", "content", declared(types_pb2.DT_STRING, [2**22], string_val=[content_png])),
        "short tensor_content": (
            "pixels",
            "content",
            declared(types_pb2.DT_FLOAT, [1, 64, 64, 3], tensor_content=b"\0" * 8),
        ),
        "more values than the shape": ("decode", "max_dim", declared(types_pb2.DT_INT32, [], int_val=[16, 32])),
        "negative dimension": ("decode", "max_dim", declared(types_pb2.DT_INT32, [-1], int_val=[16])),
    }
    messages = {}
    for case, (signature, alias, proto) in cases.items():
        req = request(signature, image=content_png) if signature == "decode" else request(signature)
        req.inputs[alias].CopyFrom(proto)
        error = fails(predictions.Predict, req)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        messages[case] = error.details()
        assert messages[case].startswith(f"tensor parsing error: {alias}: "), case
    assert (
        "declares 1099511627776 elements (4398046511104 bytes), more than a request can carry"
        in messages["4 TiB of float"]
    )
    assert (
        "float_val has 1 values for shape [1, 8192, 16384, 1] of 134217728 elements: send every value"
        in (messages["512 MiB of float"])
    )
    assert "string_val has 1 values for shape [4194304] of 4194304 elements" in messages["4M strings"]
    assert messages["more values than the shape"].endswith("int_val has 2 values for shape [] of 1 elements")
    assert "tensor_content holds 8 bytes; shape [1, 64, 64, 3] of float needs 49152" in messages["short tensor_content"]
    assert peak_rss_kib(pid) - before < 64 * 1024  # a single 512 MiB tensor would show eight times over
    response = predictions.Predict(request("decode", image=content_png, max_dim=np.int32(16)), timeout=60)
    assert response.outputs["pixels"].float_val  # and the next request is served


def test_short_typed_fields_are_filled_as_tensorflow_fills_them():
    filled = ds.tensor_from_proto("x", declared(types_pb2.DT_FLOAT, [2, 3], float_val=[1.0, 2.0]))
    assert filled.tolist() == [[1, 2, 2], [2, 2, 2]]  # the last value repeats (tensor.cc FromProtoField)
    assert ds.tensor_from_proto("x", declared(types_pb2.DT_INT32, [4])).tolist() == [0, 0, 0, 0]
    assert ds.tensor_from_proto("x", declared(types_pb2.DT_STRING, [2], string_val=[b"a"])).tolist() == [b"a", b"a"]
    with pytest.raises(ds.ServingError, match="short fields are filled only up to 65536 elements"):
        ds.tensor_from_proto("x", declared(types_pb2.DT_FLOAT, [ds.MAX_FILL + 1], float_val=[1.0]))


def test_graph_errors_keep_their_code_and_message(predictions, content_png, style_png):
    error = fails(predictions.Predict, request(**small(content_png, style_png, steps=-1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("assertion failed: [steps must be between 0 and 10000; got] [-1]")


def test_output_filter(predictions, serving, content_png, style_png):
    response = predictions.Predict(request(output_filter=["loss"], **small(content_png, style_png)), timeout=60)
    assert set(response.outputs) == {"loss"}
    error = fails(predictions.Predict, request(output_filter=["nope"], **small(content_png, style_png)))
    outputs = ",".join(sorted(serving.signature("serving_default").outputs))
    assert error.details() == (
        f"output tensor alias not found in signature: nope Outputs expected to be in the set {{{outputs}}}."
    )
    error = fails(predictions.Predict, request(output_filter=["loss", "loss"], **small(content_png, style_png)))
    assert error.details() == "duplicate output tensor alias: loss"


# ---- metadata and status -------------------------------------------------------------------------


def test_model_metadata(predictions):
    req = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="nst"), metadata_field=["signature_def"]
    )
    response = predictions.GetModelMetadata(req, timeout=60)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "pixels", "decode"} <= set(signatures.signature_def)
    assert response.model_spec.version.value == NEWEST
    del req.metadata_field[:]
    assert fails(predictions.GetModelMetadata, req).details() == (
        "GetModelMetadataRequest must specify at least one metadata_field"
    )
    req.metadata_field.append("labels")
    assert fails(predictions.GetModelMetadata, req).details() == "Metadata field labels is not supported"


def test_model_status(models):
    def status(**spec):
        return models.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(**spec)), timeout=60
        )

    response = status(name="nst")
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (v, get_model_status_pb2.ModelVersionStatus.AVAILABLE) for v in sorted(SERVED_VERSIONS, reverse=True)
    ]
    assert [s.version for s in status(name="nst", version={"value": 1}).model_version_status] == [1]
    with pytest.raises(grpc.RpcError) as info:
        status(name="nst", version={"value": 2})
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 2 of model nst",
    )
    with pytest.raises(grpc.RpcError) as info:
        status(name="other")
    assert info.value.details() == "Could not find any versions of model other"


def test_binds_loopback_and_replays_the_warmup_requests(devserver, exported):
    assert devserver["address"].startswith("127.0.0.1:")
    warmup = len(read_warmup(exported / "assets.extra" / "tf_serving_warmup_requests"))
    assert warmup > 0
    assert f"(versions 1, 3; {2 * warmup} warmup requests replayed)" in devserver["banner"]
    assert re.search(r"; plaintext, \d+ runs at once, \d+ queued;", devserver["banner"])


# ---- start-up: quiet, and no TensorFlow for --help ----------------------------------------------


def test_start_up_is_quiet(devserver):
    """The session's server started without TF_CPP_MIN_LOG_LEVEL (quiet_env): none of TensorFlow's
    start-up lines (cuInit, CPU features, absl's MLIR line at the first run) reached its stderr.
    Grappler's "Skipping loop optimization" warning may follow later, when a request brings a set of
    inputs and outputs the warmup requests did not prepare: that is serving, not start-up."""
    lines = devserver["log"].read_text().splitlines()
    assert [line for line in lines if "loop_optimizer.cc" not in line] == []


@pytest.mark.slow  # starts a process
def test_a_failed_start_is_one_line(tmp_path):
    absent = tmp_path / "absent"  # fails after TensorFlow is imported, when its start-up lines are out
    done = subprocess.run(
        [script("nst-devserver"), "--model-dir", absent], capture_output=True, text=True, env=quiet_env(), timeout=300
    )
    assert done.returncode == 2
    assert done.stderr == (
        f"nst-devserver: error: cannot load {absent}: [Errno 2] No such file or directory: '{absent}'\n"
    )


def test_start_up_output_is_hidden_unless_the_start_fails(capfd):
    with hidden_stderr(hidden=True) as terminal:
        os.write(2, b"I0000 00:00:1.0 1 mlir_graph_optimization_pass.cc:437] MLIR V1 optimization pass is off\n")
        terminal.write("shown meanwhile\n")  # what the user should see (a progress bar) still reaches them
    assert capfd.readouterr().err == "shown meanwhile\n"
    with pytest.raises(cli.StartError), hidden_stderr(hidden=True):
        os.write(2, b"E why the load failed\n")
        raise cli.StartError("cannot load", 2)
    assert capfd.readouterr().err == "E why the load failed\n"
    with hidden_stderr(hidden=False):  # --verbose
        os.write(2, b"I shown\n")
    assert capfd.readouterr().err == "I shown\n"


@pytest.mark.slow  # starts a process
def test_help_does_not_import_tensorflow():
    code = (
        "import sys\nfrom nst_devserver.server import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tensorflow_serving'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=quiet_env(), timeout=120)
    assert "usage: nst-devserver" in done.stdout and "--verbose" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]", done.stderr


# ---- in-process: deadline, warmup, loading, message limits ---------------------------------------


def test_the_deadline_stops_the_run_in_the_server(serving, content_png, style_png):
    model = ds.Model("nst", {1: serving})
    long_run = request(**small(content_png, style_png, steps=10_000))
    with pytest.raises(ds.ServingError) as info:
        model.predict(long_run, timeout_ms=300)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    response = model.predict(request(**small(content_png, style_png)), timeout_ms=60_000)
    assert response.outputs["image_bytes"].string_val


def test_a_cancelled_call_runs_until_its_deadline_and_no_longer(serving, content_png, style_png):
    """TensorFlow stops a Session run only at its timeout (or by closing the whole Session): a cancelled
    call holds its run slot until the deadline the client gave it, then the slot is free again."""
    slots = ds.RunSlots(running=1, waiting=1)
    server, port = ds.serve(ds.Model("nst", {1: serving}), port=0, slots=slots)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
            started = time.monotonic()
            call = predict.future(request(**small(content_png, style_png, steps=10_000)), timeout=3)
            wait_for(lambda: slots.running == 1, timeout_s=30)
            call.cancel()
            assert call.cancelled()
            wait_for(lambda: slots.running == 0, timeout_s=60)  # 10000 steps would take many minutes
            assert time.monotonic() - started < 60
            assert predict(request(**small(content_png, style_png)), timeout=60).outputs["image_bytes"].string_val
    finally:
        server.stop(grace=None)


def test_load_takes_numeric_folders_and_the_folder_name(exported, tmp_path):
    base = tmp_path / "painter"
    base.mkdir()
    with pytest.raises(FileNotFoundError, match="no version folders"):
        ds.Model.load(base)
    (base / "2").symlink_to(exported, target_is_directory=True)
    (base / ".3-staging").mkdir()  # an export in progress: the server ignores non-numeric names
    model = ds.Model.load(base)
    try:
        assert (model.name, list(model.versions)) == ("painter", [2])
    finally:
        model.close()
    with pytest.raises(SystemExit) as info:
        cli.main(["--model-dir", str(tmp_path / "absent")])
    assert info.value.code == 2


# ---- polling the model folder: new, half-written, corrupt and deleted versions --------------------


def half_written(exported: pathlib.Path, folder: pathlib.Path) -> None:
    """A version folder as an export that writes in place leaves it midway: no saved_model.pb yet."""
    shutil.copytree(exported, folder, ignore=shutil.ignore_patterns("saved_model.pb"))


def corrupt(exported: pathlib.Path, folder: pathlib.Path) -> None:
    """A version folder whose saved_model.pb is not a SavedModel."""
    shutil.copytree(exported, folder)
    (folder / "saved_model.pb").write_bytes(b"\x0a\xff\xff\xff\x0fnot a saved model" * 64)


@pytest.mark.slow  # loads three versions of its own
@pytest.mark.timeout(900)
def test_polling_loads_new_versions_logs_bad_ones_once_and_unloads_deleted_ones(
    exported, tmp_path, content_png, style_png
):
    base = tmp_path / "nst"
    base.mkdir()
    shutil.copytree(exported, base / "1")
    lines: list[str] = []
    model = ds.Model.load(base, log=lines.append)
    try:
        half_written(exported, base / "2")
        corrupt(exported, base / "3")
        model.poll()
        assert list(model.versions) == [1]  # both failed: version 1 goes on serving
        assert len(lines) == 2, lines
        for version, line in zip((2, 3), lines, strict=True):
            assert line.startswith(f"nst-devserver: cannot load version {version} from {base / str(version)}: ")
            assert line.endswith("; still serving versions 1; trying again when its files change")
        assert model.predict(request(**small(content_png, style_png)), 60_000).model_spec.version.value == 1
        states = {s.version: s.state for s in model.status(status_request()).model_version_status}
        assert states == {1: AVAILABLE, 2: END, 3: END}

        model.poll()  # nothing changed: not tried again, not logged again
        assert len(lines) == 2 and list(model.versions) == [1]
        shutil.copy(exported / "saved_model.pb", base / "2" / "saved_model.pb")  # the export finishes
        model.poll()
        assert sorted(model.versions) == [1, 2] and lines[2].startswith("nst-devserver: now serving version 2")
        newest = model.predict(request(**small(content_png, style_png)), 60_000)
        assert newest.model_spec.version.value == 2

        # A version deleted while it runs a call: unloaded at once, its Session closed when the call ends.
        session = model.versions[2]
        started = time.monotonic()
        model.predict(request(**small(content_png, style_png, steps=20)), 60_000)
        steps = max(40, int(20 * 6 / (time.monotonic() - started)))  # about 6 s: still running at the poll
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            call = pool.submit(model.predict, request(**small(content_png, style_png, steps=steps)), 300_000)
            wait_for(lambda: session.running == 1, timeout_s=60)
            shutil.rmtree(base / "2")
            model.poll()
            assert list(model.versions) == [1]
            assert lines[-1].endswith("unloaded once its 1 running calls finish"), lines[-1]
            assert call.result(timeout=300).model_spec.version.value == 2  # the call in flight finished
        assert session.running == 0 and session.session._closed
        gone = request(version=2, **small(content_png, style_png))
        with pytest.raises(ds.ServingError, match=r"Servable not found for request: Specific\(nst, 2\)"):
            model.predict(gone, 60_000)
    finally:
        model.close()


def status_request() -> get_model_status_pb2.GetModelStatusRequest:
    return get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="nst"))


AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


@pytest.mark.slow  # starts a process
@pytest.mark.timeout(600)
def test_the_server_process_survives_bad_version_folders_and_keeps_serving(exported, tmp_path, content_png, style_png):
    base = tmp_path / "nst"
    base.mkdir()
    (base / "1").symlink_to(exported, target_is_directory=True)
    from serving_fixtures import running_devserver  # here: a plugin of this module, imported by pytest first

    log = tmp_path / "stderr.log"
    with running_devserver(base, log, "--file-system-poll-wait-seconds", "0.1") as server:
        corrupt(exported, base / "3")
        half_written(exported, base / "2")
        wait_for(lambda: log.read_text().count("nst-devserver: cannot load version") == 2, timeout_s=120)
        with grpc.insecure_channel(server["address"], options=ds.GRPC_OPTIONS) as channel:
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            statuses = models.GetModelStatus(status_request(), timeout=60).model_version_status
            assert {s.version: s.state for s in statuses} == {1: AVAILABLE, 2: END, 3: END}
            predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            answer = predictions.Predict(request(**small(content_png, style_png)), timeout=120)
            assert answer.model_spec.version.value == 1
        assert server["process"].poll() is None
    lines = [line for line in log.read_text().splitlines() if "loop_optimizer.cc" not in line]
    assert len(lines) == 2, lines  # one line per bad folder, however many polls saw it
    for version, line in zip((2, 3), sorted(lines), strict=True):
        assert line.startswith(f"nst-devserver: cannot load version {version} from {base / str(version)}: ")
        assert line.endswith("; still serving versions 1; trying again when its files change")


def test_long_messages_are_truncated_like_the_server():
    class Context:
        def abort(self, code, message):
            raise grpc.RpcError(code, message)

    def fail():
        raise ds.ServingError(grpc.StatusCode.INTERNAL, "x" * 2000)

    with pytest.raises(grpc.RpcError) as info:
        ds._answer(Context(), fail)
    code, message = info.value.args
    assert code == grpc.StatusCode.INTERNAL
    assert message == "x" * 1024 + "...TRUNCATED"


def test_outputs_use_the_typed_proto_fields():
    proto = ds.as_proto_field(np.arange(6, dtype=np.float32).reshape(1, 2, 3))
    assert list(proto.float_val) == [0, 1, 2, 3, 4, 5] and not proto.tensor_content
    assert tf.make_ndarray(proto).shape == (1, 2, 3)
    assert ds.as_proto_field(np.array(b"png", object)).string_val == [b"png"]
    assert tf.make_ndarray(ds.as_proto_field(np.array(7, np.int32))) == 7


def test_inputs_read_both_tensor_forms():
    values = np.arange(24, dtype=np.float32).reshape(1, 2, 4, 3)
    typed = ds.as_proto_field(values)  # float_val, as outputs go out and chunked clients send them back
    for proto in (typed, tf.make_tensor_proto(values)):  # and tensor_content
        assert np.array_equal(ds.tensor_from_proto("x", proto), values)
    assert ds.tensor_from_proto("x", tf.make_tensor_proto(np.array(b"png", object))) == b"png"


# ---- overload: run slots and the wait queue --------------------------------------------------------


class FakeContext:
    """The parts of grpc.ServicerContext that RunSlots uses."""

    def __init__(self, deadline_s: float | None = None):
        self.deadline = None if deadline_s is None else time.monotonic() + deadline_s
        self.active = True
        self.callbacks = []

    def time_remaining(self):
        return None if self.deadline is None else self.deadline - time.monotonic()

    def is_active(self):
        return self.active

    def add_callback(self, callback):
        self.callbacks.append(callback)
        return True

    def cancel(self):
        self.active = False
        for callback in self.callbacks:
            callback()


def test_run_slots_queue_calls_then_refuse_them():
    slots = ds.RunSlots(running=1, waiting=1)
    second_ran = threading.Event()

    def second():
        with slots.hold(FakeContext(deadline_s=30)):
            second_ran.set()

    with slots.hold(FakeContext()):
        queued = threading.Thread(target=second)
        queued.start()
        wait_for(lambda: slots.waiting == 1)
        with pytest.raises(ds.ServingError) as info, slots.hold(FakeContext()):
            pytest.fail("a call beyond the queue ran")
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.message == (
            "server busy: 1 running (--max-concurrent) and 1 queued (--max-queue) already; retry later"
        )
        assert not second_ran.is_set()
    queued.join(10)
    assert second_ran.is_set()  # the queued call ran once the slot was free
    assert (slots.running, slots.waiting) == (0, 0)


def test_a_queued_call_leaves_at_its_deadline_or_cancellation_without_running():
    slots = ds.RunSlots(running=1, waiting=4)
    with slots.hold(FakeContext()):
        started = time.monotonic()
        with pytest.raises(ds.ServingError) as info, slots.hold(FakeContext(deadline_s=0.3)):
            pytest.fail("a call whose deadline passed in the queue ran")
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.3 <= time.monotonic() - started < 5

        cancelled = FakeContext(deadline_s=20)
        threading.Timer(0.2, cancelled.cancel).start()
        started = time.monotonic()
        with pytest.raises(ds.ServingError) as info, slots.hold(cancelled):
            pytest.fail("a cancelled call ran")
        assert info.value.code == grpc.StatusCode.CANCELLED
        assert time.monotonic() - started < 5  # woken by the cancellation, not the deadline
    assert (slots.running, slots.waiting) == (0, 0)


@pytest.fixture
def tiny_server(serving):
    """An in-process devserver on the session's Session: one run at a time, one queued."""
    slots = ds.RunSlots(running=1, waiting=1)
    server, port = ds.serve(ds.Model("nst", {1: serving}), port=0, slots=slots)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=ds.GRPC_OPTIONS) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel), slots, port
    server.stop(grace=None)


def test_a_full_server_refuses_at_once_and_serves_again(tiny_server, content_png, style_png):
    predictions, slots, port = tiny_server
    long_run = predictions.Predict.future(request(**small(content_png, style_png, steps=10_000)), timeout=8)
    wait_for(lambda: slots.running == 1)
    queued = predictions.Predict.future(request("decode", image=content_png), timeout=60)
    wait_for(lambda: slots.waiting == 1)

    started = time.monotonic()
    error = fails(predictions.Predict, request("decode", image=content_png))
    assert time.monotonic() - started < 2  # refused at once, not queued
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details().endswith("already; retry later")
    # A probe does not queue behind the work: the health service answers at once on a spare thread.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        started = time.monotonic()
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - started < 2 and slots.running == 1 and slots.waiting == 1

    queued.cancel()  # a cancelled call leaves the queue: the next one may wait there
    wait_for(lambda: slots.waiting == 0)
    with pytest.raises(grpc.RpcError) as info:
        predictions.Predict(request("decode", image=content_png), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # queued, then out of time; not refused

    assert long_run.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert predictions.Predict(request("decode", image=content_png), timeout=60).outputs["pixels"].float_val


def test_limit_and_tls_flags_are_checked_before_loading(tmp_path, capsys):
    for argv, message in (
        (["--max-concurrent", "0"], "--max-concurrent must be at least 1"),
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", str(tmp_path / "no.pem"), "--tls-key", str(tmp_path / "no.pem")], "no.pem: No such file"),
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(["--model-dir", str(tmp_path / "absent"), *argv])
        assert info.value.code == 2
        assert message in capsys.readouterr().err
