"""nst_client against nst-devserver on loopback: results, progress, concurrency, errors, exit codes.

The end-to-end test runs both console scripts as subprocesses; the others call the client's
Python API or `cli.main` in-process against the session's devserver.
"""

from __future__ import annotations

import _thread
import concurrent.futures
import contextlib
import io
import math
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator

import grpc
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
from helpers import SERVED_VERSIONS, make_image, png_bytes, quiet_env, script, serving_default, wait_for
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from nst_client import NSTClient, RestClient, ServerError, chunked, cli, contract, errors, images, settings, tensors
from nst_devserver import rest
from nst_devserver import serving as ds
from nst_model.options import DEFAULTS, MAX_STEPS

pytest_plugins = ["serving_fixtures"]

SMALL = {"max_dim": 32}  # every run here is tiny: 32 px, a few steps


@pytest.fixture
def client(devserver):
    with NSTClient(devserver["address"], timeout=120) as client:
        yield client


@pytest.fixture
def image_files(tmp_path, content_png, style_png):
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    content.write_bytes(content_png)
    style.write_bytes(style_png)
    return content, style


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- results ------------------------------------------------------------------------------------


def test_cli_end_to_end_writes_the_in_process_png(devserver, serving, image_files, tmp_path, content_png, style_png):
    output = tmp_path / "out.png"
    done = subprocess.run(
        [
            script("nst-client"),
            "--server",
            devserver["address"],
            *image_files,
            "-o",
            output,
            "--steps",
            "5",
            "--chunk",
            "2",
            "--max-dim",
            "32",
            "--style-weight",
            "0.05",
        ],
        capture_output=True,
        text=True,
        env=quiet_env(),
        timeout=300,
    )
    assert done.returncode == errors.EXIT_OK, done.stderr
    expected = serving_default(serving, content_png, style_png, steps=5, max_dim=32, style_weight=0.05)
    assert output.read_bytes() == expected
    assert re.search(
        rf"wrote {re.escape(str(output))} \(32x22\) in [\d.]+ s by version {max(SERVED_VERSIONS)}", done.stderr
    )


def test_chunked_run_equals_one_call_and_reports_progress(client, content_png, style_png):
    reports = []
    chunked = client.run(content_png, style_png, steps=5, chunk=2, progress=lambda *r: reports.append(r), **SMALL)
    single = client.run(content_png, style_png, steps=5, chunk=0, **SMALL)
    assert chunked.png == single.png
    assert chunked.losses == single.losses
    assert [(done, total) for done, total, _ in reports] == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert math.isnan(reports[0][2]) and reports[-1][2] == single.losses["loss"]


def test_stylize_takes_pil_images_and_arrays_and_returns_a_pil_image(client):
    content, style = make_image(40, 56, seed=1), make_image(48, 48, seed=2)
    image = client.stylize(PIL.Image.fromarray(np.uint8(content * 255)), style, steps=1, chunk=0, **SMALL)
    assert isinstance(image, PIL.Image.Image) and image.size == (32, 22)


def test_default_steps_come_from_the_served_signature(client):
    assert client.default_steps() == DEFAULTS["steps"]


def test_concurrent_requests_return_what_serial_requests_return(devserver):
    inputs = [
        (png_bytes(make_image(40 + 4 * i, 56, seed=i)), png_bytes(make_image(48, 48, seed=100 + i))) for i in range(8)
    ]
    chunks = [0, 2] * 4  # half single calls, half chunked runs that pass state back and forth
    with NSTClient(devserver["address"], timeout=300) as client:
        serial = [client.run(c, s, steps=4, chunk=0, **SMALL).png for c, s in inputs]
        barrier = threading.Barrier(len(inputs))

        def run(i: int) -> bytes:
            barrier.wait()
            return client.run(*inputs[i], steps=4, chunk=chunks[i], **SMALL).png

        with concurrent.futures.ThreadPoolExecutor(len(inputs)) as pool:
            concurrent_results = list(pool.map(run, range(len(inputs))))
    assert len(set(serial)) == len(inputs)  # different inputs, different images
    assert concurrent_results == serial


def test_the_served_signatures_have_what_the_client_drives(serving):
    """The client names only the images, steps, max_dim and the losses; the state it derives."""
    default, pixels, decode = (serving.signature(n) for n in ("serving_default", "pixels", "decode"))
    assert {"content", "style", "steps", "max_dim"} <= set(default.inputs)
    assert {"image_bytes", *contract.LOSSES} <= set(default.outputs)
    assert {"content", "style", "steps"} <= set(pixels.inputs)
    assert {"image_bytes", *contract.LOSSES} <= set(pixels.outputs)
    assert set(chunked.state_names("adam")) | set(chunked.state_names("lbfgs")) <= set(pixels.outputs) & set(
        pixels.inputs
    )
    assert {"image", *contract.DECODE_OPTIONS} <= set(decode.inputs)
    # Every option serving_default takes, pixels takes too, except those decode takes instead.
    assert set(contract.option_names(default)) - set(contract.DECODE_OPTIONS) <= set(pixels.inputs)


def test_more_options_and_several_styles_chunked_equal_one_call(client, serving, content_png, style_png):
    default, pixels = serving.signature("serving_default"), serving.signature("pixels")
    wanted = {"style_scale": 1.5, "init": "noise", "seed": 3, "preserve_colors": True, "style_weights": [0.7, 0.3]}
    options = {k: v for k, v in wanted.items() if k in default.inputs}
    styles = [style_png, png_bytes(make_image(30, 50, seed=7))] if "style_sizes" in pixels.inputs else style_png
    if not isinstance(styles, list):
        options.pop("style_weights", None)
    chunked = client.run(content_png, styles, steps=3, chunk=2, **SMALL, **options)
    assert chunked.png == client.run(content_png, styles, steps=3, chunk=0, **SMALL, **options).png
    assert chunked.png == serving_default(serving, content_png, styles, steps=3, **SMALL, **options)


# ---- operators' commands -------------------------------------------------------------------------


def test_status_and_signatures_commands(devserver, capsys):
    code, out, _ = run_cli(capsys, "--server", devserver["address"], "status")
    assert code == 0
    assert "version 3: AVAILABLE" in out and "version 1: AVAILABLE" in out
    code, out, _ = run_cli(capsys, "--server", devserver["address"], "--model-version", "1", "signatures")
    assert code == 0
    assert "model 'nst' version 1" in out
    assert re.search(rf"in  steps +DT_INT32 +\? +default: {DEFAULTS['steps']}\n", out)  # any shape: the graph checks it
    assert re.search(r"in  content +DT_STRING +\? +required\n", out)
    assert "__saved_model_init_op" not in out
    assert f"limits: longest side 16 to 2048 px, at most {MAX_STEPS} steps per call, 8 styles" in out


# ---- errors and exit codes -----------------------------------------------------------------------


def test_unreachable_server(capsys, image_files, tmp_path):
    port = closed_port()
    code, _, err = run_cli(capsys, "--server", f"127.0.0.1:{port}", "--connect-timeout", "1", "status")
    assert code == errors.EXIT_UNREACHABLE
    assert err == (
        f"nst-client: error: UNAVAILABLE: cannot reach a model server at 127.0.0.1:{port} within 1 s: "
        "Failed to connect to remote host: Connection refused; is it running?\n"
    )
    code, _, err = run_cli(capsys, "--rest", f"http://127.0.0.1:{port}", "--retries", "0", *image_files)
    assert code == errors.EXIT_UNREACHABLE
    assert err.startswith(f"nst-client: error: UNAVAILABLE: cannot reach a model server at http://127.0.0.1:{port}")


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
def test_calls_whose_server_went_away_are_retried_with_backoff(monkeypatch, code):
    sleeps, calls = [], []
    monkeypatch.setattr(errors.time, "sleep", sleeps.append)

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ServerError(code, "not now")
        return "ok"

    assert errors.with_retries(flaky, retries=3, wait_s=3600, replicas=3) == "ok"
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2] <= 4.0 * 1.2  # jittered, doubling
    calls.clear()
    with pytest.raises(ServerError) as info:
        errors.with_retries(flaky, retries=1, wait_s=3600)  # the wait for a busy replica is not theirs
    assert info.value.code == code and len(calls) == 2


class FakeClock:
    """time.monotonic and time.sleep for errors.with_retries: sleeping advances the clock, nothing waits."""

    def __init__(self, monkeypatch):
        self.now, self.sleeps = 1000.0, []
        monkeypatch.setattr(errors.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(errors.time, "sleep", self.sleep)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_busy_refusal_is_a_wait_on_its_own_budget(monkeypatch):
    """Busy refusals go to the other replicas at once, then wait with full jitter (pauses drawn from 0 to a
    bound that doubles up to a cap) until the wait budget is spent; `retries` does not bound them."""
    clock = FakeClock(monkeypatch)
    bounds = []
    monkeypatch.setattr(errors.random, "uniform", lambda low, high: bounds.append((low, high)) or high)
    calls, reports = [], []

    def busy():
        calls.append(clock.now)
        clock.now += 0.01  # a refusal takes a moment
        raise ServerError(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy: ...; retry later")

    waiting = errors.Waiting(reports.append)
    with pytest.raises(ServerError) as info:
        errors.with_retries(busy, retries=0, wait_s=20, replicas=3, waiting=waiting)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.message == "server busy: ...; retry later (every replica stayed busy for 20 s)"
    assert all(low == 0 for low, _ in bounds)  # full jitter
    highs = [high for _, high in bounds]
    assert highs[:5] == [0.5, 1.0, 2.0, 4.0, 4.0] and set(highs[3:]) == {settings.BUSY_BACKOFF_CAP_S}
    assert clock.sleeps[:-1] == highs[:-1] and clock.sleeps[-1] <= highs[-1]  # the last pause ends at the budget
    # Three tries (one per replica) between pauses, the first three at once.
    assert len(calls) == 3 * (len(clock.sleeps) + 1)
    assert calls[2] - calls[0] == pytest.approx(0.02)
    assert reports == sorted(reports) and reports[0] == pytest.approx(0.02) and reports[-1] < 20
    assert waiting.total_s == 0  # no call got through


def test_the_wait_ends_when_a_replica_has_room_and_is_counted(monkeypatch):
    clock = FakeClock(monkeypatch)
    monkeypatch.setattr(errors.random, "uniform", lambda low, high: high)
    outcomes = iter(["busy"] * 5 + ["ok"])

    def call():
        if next(outcomes) == "busy":
            raise ServerError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Server Threadpool Exhausted")
        return "ran"

    waiting = errors.Waiting()
    assert errors.with_retries(call, retries=0, wait_s=60, replicas=2, waiting=waiting) == "ran"
    assert clock.sleeps == [0.5, 1.0]  # after the 2nd and 4th refusals: each replica once per round
    assert waiting.total_s == pytest.approx(1.5)


def test_no_wait_tries_each_replica_once(monkeypatch):
    clock = FakeClock(monkeypatch)
    calls = []

    def busy():
        calls.append(1)
        raise ServerError(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy")

    with pytest.raises(ServerError) as info:
        errors.with_retries(busy, retries=3, wait_s=0, replicas=3)
    assert len(calls) == 3 and clock.sleeps == [] and info.value.message == "server busy"


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL]
)
def test_other_errors_are_final(monkeypatch, code):
    monkeypatch.setattr(errors.time, "sleep", lambda _: pytest.fail("slept before a retry"))
    calls = []

    def failing():
        calls.append(1)
        raise ServerError(code, "no")

    with pytest.raises(ServerError):
        errors.with_retries(failing, retries=3)
    assert len(calls) == 1


def test_a_busy_server_is_retried_until_it_has_room(serving, content_png, style_png):
    slots = ds.RunSlots(running=1, waiting=0)
    server, port = ds.serve(ds.Model("nst", {1: serving}), port=0, slots=slots)
    long_run = {"content": content_png, "style": style_png, "steps": np.int32(10_000), "max_dim": np.int32(32)}
    decode = {"image": content_png, "max_dim": np.int32(16)}
    try:
        with (
            NSTClient(f"127.0.0.1:{port}", timeout=4, wait=0) as once,
            NSTClient(f"127.0.0.1:{port}", retries=0, timeout=None) as patient,  # waits for room, however long
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            # The Session builds an executor per set of inputs and outputs before a deadline applies
            # (seconds of graph optimisation): built here, so that the long run's deadline is all it has.
            patient.predict("serving_default", {**long_run, "steps": np.int32(0)})
            running = pool.submit(once.predict, "serving_default", long_run)
            wait_for(lambda: slots.running == 1)
            with pytest.raises(ServerError) as info:
                once.predict("decode", decode)
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert str(info.value).endswith("retry later") and info.value.exit_code == errors.EXIT_SERVER_ERROR
            assert patient.predict("decode", decode)["pixels"].shape[0] == 1
            with pytest.raises(ServerError) as info:
                running.result()
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        server.stop(grace=None)


def test_bad_images(devserver, capsys, image_files, tmp_path, content_png):
    _, style = image_files
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, _, err = run_cli(capsys, "--server", devserver["address"], text, style)
    assert code == errors.EXIT_BAD_INPUT
    assert (
        err == f"nst-client: error: content image {text} is not an image the client can read (UnidentifiedImageError)\n"
    )

    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(content_png[:60])  # a PNG signature and header, then nothing: the server finds out
    code, _, err = run_cli(capsys, "--server", devserver["address"], truncated, style, "--steps", "1")
    assert code == errors.EXIT_BAD_INPUT
    assert err.startswith("nst-client: error: INVALID_ARGUMENT: ") and "PNG" in err and "Traceback" not in err

    code, _, err = run_cli(capsys, "--server", devserver["address"], tmp_path / "absent.png", style)
    assert code == errors.EXIT_BAD_INPUT
    assert "cannot read the content image" in err


def test_invalid_options(devserver, capsys, image_files):
    server = ("--server", devserver["address"])
    code, _, err = run_cli(capsys, *server, *image_files, "--steps", "-1", "--max-dim", "32")
    assert (code, err) == (
        errors.EXIT_BAD_INPUT,
        "nst-client: error: INVALID_ARGUMENT: steps must be between 0 and 10000; got -1\n",
    )
    code, _, err = run_cli(capsys, *server, *image_files, "--steps", "1.5")  # caught before sending
    assert (code, err) == (errors.EXIT_BAD_INPUT, "nst-client: error: steps must be an integer; got '1.5'\n")
    code, _, err = run_cli(capsys, *server, *image_files, "-O", "stepz=3")
    assert code == errors.EXIT_BAD_INPUT
    assert err.startswith("nst-client: error: the model has no option 'stepz'; it has: ") and "max_dim" in err


def test_unknown_signature_model_and_version(client, devserver, capsys, content_png):
    with pytest.raises(ServerError) as info:
        client.predict("nope", {"image": content_png})
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert str(info.value) == 'FAILED_PRECONDITION: Serving signature key "nope" not found.'
    assert info.value.exit_code == errors.EXIT_SERVER_ERROR
    code, _, err = run_cli(capsys, "--server", devserver["address"], "--model-name", "other", "status")
    assert (code, err) == (
        errors.EXIT_SERVER_ERROR,
        "nst-client: error: NOT_FOUND: Could not find any versions of model other\n",
    )
    code, _, err = run_cli(capsys, "--server", devserver["address"], "--model-version", "2", "signatures")
    assert (code, err) == (
        errors.EXIT_SERVER_ERROR,
        "nst-client: error: NOT_FOUND: Servable not found for request: Specific(nst, 2)\n",
    )


def test_deadline_exceeded_then_the_server_answers_the_next_request(client, devserver, capsys, image_files):
    code, _, err = run_cli(
        capsys,
        "--server",
        devserver["address"],
        *image_files,
        "--steps",
        "10000",
        "--chunk",
        "0",
        "--max-dim",
        "64",
        "--timeout",
        "0.5",
    )
    assert code == errors.EXIT_DEADLINE
    assert err.startswith("nst-client: error: DEADLINE_EXCEEDED: ")
    assert client.run(*image_files, steps=1, chunk=0, **SMALL).png.startswith(b"\x89PNG")


def test_ctrl_c_cancels_the_call_in_flight():
    arrived, cancelled = threading.Event(), threading.Event()

    class Hanging(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            context.add_callback(cancelled.set)  # called when the call ends: here, only by cancellation
            arrived.set()
            cancelled.wait(60)
            return predict_pb2.PredictResponse()

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Hanging(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with NSTClient(f"127.0.0.1:{port}", timeout=60) as client:
            # Ctrl-C, as the main thread sees it, once the call is in flight.
            threading.Thread(target=lambda: arrived.wait(60) and _thread.interrupt_main()).start()
            with pytest.raises(KeyboardInterrupt):
                client.predict("decode", {"image": b"png"})
            assert cancelled.wait(10), "the server never heard that the call was cancelled"
    finally:
        server.stop(grace=None)


def test_ctrl_c_exits_130_and_the_server_keeps_serving(client, devserver, image_files, tmp_path):
    process = subprocess.Popen(
        [script("nst-client"), "--server", devserver["address"], *image_files, "-o", tmp_path / "out.png",
         "--steps", "10000", "--chunk", "1", "--max-dim", "32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=quiet_env(),
    )  # fmt: skip
    try:
        stderr = read_until(process.stderr, rb" [1-9]\d*/10000 ", timeout_s=120)  # chunks are going through
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == errors.EXIT_INTERRUPTED
        stderr += process.stderr.read()
    finally:
        process.kill()
    last_line = stderr.decode().strip().splitlines()[-1]
    assert last_line.startswith("nst-client: interrupted; the call in flight is cancelled, but the server finishes")
    assert "Traceback" not in stderr.decode()
    assert client.run(*image_files, steps=1, chunk=0, **SMALL).png.startswith(b"\x89PNG")


def read_until(stream, pattern: bytes, timeout_s: float) -> bytes:
    """What a subprocess wrote to `stream` up to the first match of `pattern` (a progress bar has no newlines)."""
    data, deadline = b"", time.monotonic() + timeout_s
    while not re.search(pattern, data):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([stream], [], [], max(left, 0))
        chunk = os.read(stream.fileno(), 4096) if ready else b""
        assert chunk, f"no {pattern!r} in the output: {data.decode(errors='replace')[-2000:]}"
        data += chunk
    return data


def test_usage_errors_exit_2(capsys, image_files):
    for argv in (
        ["only-one.png"],
        [*image_files, "-o", "out.jpg"],
        [*image_files, "--rest", "http://x", "--chunk", "5"],
        [*image_files, "-O", "steps"],
    ):
        with pytest.raises(SystemExit) as info:
            cli.main([str(a) for a in argv])
        assert info.value.code == errors.EXIT_BAD_INPUT, argv
        err = capsys.readouterr().err
        assert err.startswith("nst-client: error: ") and err.count("\n") == 1, err  # one line, no usage dump


MAX = 2**63 - 1  # the largest version a ModelSpec holds (int64)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-O", "content=x"], "-O content: the images are the arguments, CONTENT STYLE [STYLE ...]"),
        (["-O", "chunk=1"], "-O chunk: use --chunk (-O sets the model's other inputs)"),
        (["--steps", "3", "-O", "steps=3"], "-O steps: use --steps (-O sets the model's other inputs)"),
        (["-O", "max_dim=64"], "-O max_dim: use --max-dim (-O sets the model's other inputs)"),
        (["-O", "progress=0"], "-O progress: not a model input; the progress bar shows unless --quiet"),
        (["-O", "init=noise", "-O", "init=style"], "-O init is given twice"),
        (["--chunk", "-1"], "argument --chunk: must be a whole number >= 0; got '-1'"),
        (["--retries", "x"], "argument --retries: must be a whole number >= 0; got 'x'"),
        *(
            (
                ["--model-version", v],
                f"argument --model-version: must be a version number from 1 to {2**63 - 1}; got {v!r}",
            )
            for v in (str(2**63), "0", "-3", "1.5")
        ),
        *(
            (["--timeout", v], f"argument --timeout: must be a finite number of seconds > 0 (0: none); got {v!r}")
            for v in ("inf", "nan", "-1", "soon")
        ),
        (["--connect-timeout", "0"], "argument --connect-timeout: must be a finite number of seconds > 0; got '0'"),
        (
            ["--rest", "http://x", "--tls-server-name", "nst"],
            "--tls, --ca-file, --tls-server-name and client certificates are for gRPC; over REST use an https:// URL",
        ),
    ],
)
def test_bad_arguments_get_one_line_before_anything_is_sent(capsys, image_files, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main([*map(str, image_files), "--server", f"127.0.0.1:{closed_port()}", *argv])
    assert info.value.code == errors.EXIT_BAD_INPUT
    assert capsys.readouterr().err == f"nst-client: error: {message}\n"


def test_the_limits_that_arguments_may_reach(image_files):
    args = cli.parse_args([*map(str, image_files), "--timeout", "0", "--model-version", str(2**63 - 1)])
    assert (args.timeout, args.model_version) == (0, 2**63 - 1)  # 0: no deadline
    assert cli.make_client(args).timeout is None


def test_option_text_is_sent_as_utf8_or_refused_in_one_line(devserver, capsys, image_files):
    server = ("--server", devserver["address"], "--steps", "1", "--max-dim", "32", "--chunk", "0")
    code, _, err = run_cli(capsys, *server, *image_files, "-O", "init=ünïcode")
    assert code == errors.EXIT_BAD_INPUT  # sent: the model names what it takes
    assert err.startswith("nst-client: error: INVALID_ARGUMENT: ") and err.count("\n") == 1, err
    assert "init" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, *server, *image_files, "-O", "init=\udcff")  # argv bytes that are not UTF-8
    assert (code, err) == (errors.EXIT_BAD_INPUT, "nst-client: error: init must be UTF-8 text; got '\\udcff'\n")


@pytest.mark.slow  # starts a process
def test_commands_do_not_import_tensorflow_before_the_arguments_pass():
    """--help and argument errors come before grpc and TensorFlow's protos, which take seconds to load."""
    code = (
        "import sys\nfrom nst_client.cli import main\n"
        "for argv in (['--help'], ['a', 'b', '--timeout', 'nan'], ['only-one.png'], ['a', 'b', '-O', 'chunk=1']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'grpc', 'tensorflow_serving'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=quiet_env(), timeout=120)
    assert "usage: nst-client" in done.stdout and "--verbose" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]", done.stderr


@pytest.mark.slow  # starts a process
def test_start_up_is_quiet():
    """TensorFlow, loaded once the arguments pass, prints nothing: the one line is the error."""
    port = closed_port()
    done = subprocess.run(
        [script("nst-client"), "--server", f"127.0.0.1:{port}", "--connect-timeout", "1", "status"],
        capture_output=True,
        text=True,
        env=quiet_env(),
        timeout=300,
    )
    assert done.returncode == errors.EXIT_UNREACHABLE
    assert done.stderr.startswith(f"nst-client: error: UNAVAILABLE: cannot reach a model server at 127.0.0.1:{port}")
    assert done.stderr.count("\n") == 1, done.stderr


def test_quiet_tensorflow_leaves_an_explicit_level_and_verbose_shows_all(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    cli.quiet_tensorflow(verbose=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    cli.quiet_tensorflow(verbose=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    cli.quiet_tensorflow(verbose=True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


# ---- fleets: server lists, replicas that go away, out of memory, keepalive ------------------------


class Replica(prediction_service_pb2_grpc.PredictionServiceServicer):
    """A replica that names itself in its answers. The fleet's first "hang" call waits until the fleet
    stops; its first "cancel" call is cancelled by the server, as by one shutting down or by a proxy."""

    def __init__(self, index: int, fleet: types.SimpleNamespace):
        self.index, self.fleet = index, fleet

    def Predict(self, request, context):
        name = request.model_spec.signature_name
        if name == "hang" and not self.fleet.hanging:
            self.fleet.hanging.append(self.index)
            self.fleet.stopped.wait(60)
        if name == "cancel" and not self.fleet.cancelled:
            self.fleet.cancelled.append(self.index)
            context.abort(grpc.StatusCode.CANCELLED, "the server is shutting down")
        return predict_pb2.PredictResponse(model_spec=model_pb2.ModelSpec(name=str(self.index)))


@contextlib.contextmanager
def replicas(count: int, credentials: grpc.ServerCredentials | None = None) -> Iterator[types.SimpleNamespace]:
    """`count` Replica servers on loopback (TLS with `credentials`): .servers, .ports, .addresses
    ("127.0.0.1:p1,..."), .hanging and .cancelled (which replica took the first "hang" and "cancel" call)."""
    fleet = types.SimpleNamespace(servers=[], ports=[], hanging=[], cancelled=[], stopped=threading.Event())
    for index in range(count):
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Replica(index, fleet), server)
        if credentials is None:
            fleet.ports.append(server.add_insecure_port("127.0.0.1:0"))
        else:
            fleet.ports.append(server.add_secure_port("127.0.0.1:0", credentials))
        server.start()
        fleet.servers.append(server)
    fleet.addresses = ",".join(f"127.0.0.1:{port}" for port in fleet.ports)
    try:
        yield fleet
    finally:
        fleet.stopped.set()
        for server in fleet.servers:
            server.stop(grace=None)


def answered_by(client: NSTClient, signature: str = "decode") -> int:
    return int(client._predict(signature, {}).model_spec.name)


def reach_all(client: NSTClient, count: int) -> None:
    """Call until each of `count` replicas has answered: they connect in their own time."""
    seen: set[int] = set()
    wait_for(lambda: seen.add(answered_by(client)) or len(seen) == count, timeout_s=30)


def test_calls_go_round_robin_and_a_call_whose_replica_goes_away_is_sent_to_another():
    with (
        replicas(3) as fleet,
        NSTClient(fleet.addresses, timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        reach_all(client, 3)
        assert {answered_by(client) for _ in range(3)} == {0, 1, 2}  # each call to the next one
        hanging = pool.submit(answered_by, client, "hang")
        wait_for(lambda: fleet.hanging, timeout_s=30)
        fleet.servers[fleet.hanging[0]].stop(grace=None)  # the replica goes away mid-call: UNAVAILABLE
        assert hanging.result(timeout=60) != fleet.hanging[0]
        assert {answered_by(client) for _ in range(4)} == {0, 1, 2} - set(fleet.hanging)
        assert answered_by(client, "cancel") != fleet.cancelled[0]  # a server's CANCELLED is not a Ctrl-C


def test_a_call_cut_by_close_is_not_retried():
    with (
        replicas(1) as fleet,
        NSTClient(fleet.addresses, timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        hanging = pool.submit(answered_by, client, "hang")
        wait_for(lambda: fleet.hanging, timeout_s=30)
        client.close()
        with pytest.raises(errors.ClientError, match="the client was closed during the call"):
            hanging.result(timeout=60)


def test_a_list_over_tls_checks_the_name_its_replicas_share(tmp_path):
    from helpers import OPENSSL, make_certificate

    if OPENSSL is None:
        pytest.skip("no openssl command to make test certificates with")
    cert, key = make_certificate(tmp_path, "server", "localhost")  # names localhost and 127.0.0.1
    with replicas(2, grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])) as fleet:
        first, second = fleet.ports
        for server, name in (
            (f"127.0.0.1:{first},127.0.0.1:{second}", None),
            (f"localhost:{first},localhost:{second}", None),
            (f"127.0.0.1:{first},localhost:{second}", "localhost"),
        ):
            with NSTClient(server, ca_file=cert, tls_server_name=name, timeout=60) as client:
                reach_all(client, 2)
        with pytest.raises(errors.InputError, match="a list of different hosts needs --tls-server-name"):
            NSTClient(f"127.0.0.1:{first},localhost:{second}", ca_file=cert)


def test_busy_refusals_go_round_as_many_replicas_as_the_target_has():
    from nst_client.grpc_client import replica_count

    def resolve(host, port, type):  # a DNS name with two addresses (one listed twice, as A and AAAA may be)
        assert (host, port) == ("nst-headless.serving", "8500")
        return [(0, 0, 0, "", (a, 8500)) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.2")]

    def unknown(host, port, type):
        raise OSError("Name or service not known")

    assert replica_count("ipv4:127.0.0.1:1,127.0.0.2:1,127.0.0.3:1") == 3
    assert replica_count("ipv6:[::1]:1") == 1
    assert replica_count("dns:///nst-headless.serving:8500", resolve) == 2
    assert replica_count("nst-headless.serving:8500", resolve) == 2
    assert replica_count("dns:///nowhere:8500", unknown) == 1
    assert replica_count("unix:/run/nst.sock") == 1


def test_server_lists_become_one_target_of_addresses():
    from nst_client.grpc_client import channel_target, list_target, server_list

    assert server_list("localhost:8500") is None and server_list("dns:///nst-headless:8500") is None
    assert server_list("ipv4:10.0.0.1:8500,10.0.0.2:8500") is None  # a gRPC target URI: gRPC resolves it
    assert server_list("a:8500, b:8501,[::1]:8502") == [("a", 8500), ("b", 8501), ("::1", 8502)]
    for bad in ("a:8500,", "a:8500,b", "a:1,b:0", "a:1,b:65536", "a:1,[::1:2", "a:1,http://b:2", "a:1,b c:2"):
        with pytest.raises(errors.InputError, match=r"each server of a list must be host:port or \[IPv6\]:port"):
            server_list(bad)

    table = {"a": ["10.0.0.1"], "b": ["10.0.0.2", "fd00::2"], "c": ["fd00::3"]}

    def resolve(host: str, port: int, type: int) -> list:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, port)) for a in table[host]]

    assert list_target([("a", 1), ("b", 2), ("10.0.0.1", 1)], resolve) == "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert list_target([("b", 2), ("c", 3)], resolve) == "ipv6:[fd00::2]:2,[fd00::3]:3"
    with pytest.raises(errors.InputError, match="must all have IPv4 or all have IPv6 addresses"):
        list_target([("a", 1), ("c", 3)], resolve)
    with pytest.raises(ServerError, match="cannot look up the server 'nowhere'") as info:
        list_target([("a", 1), ("nowhere", 2)], resolve)
    assert info.value.exit_code == errors.EXIT_UNREACHABLE

    assert channel_target("dns:///nst-headless:8500", None, tls=True) == ("dns:///nst-headless:8500", [])
    target, options = channel_target("127.0.0.1:1,127.0.0.1:2", None, tls=True)  # one host: its name is checked
    assert (target, options) == ("ipv4:127.0.0.1:1,127.0.0.1:2", [("grpc.default_authority", "127.0.0.1:1")])
    with pytest.raises(errors.InputError, match="with TLS, a list of different hosts needs --tls-server-name"):
        channel_target("10.0.0.1:1,10.0.0.2:1", None, tls=True)
    _, options = channel_target("10.0.0.1:1,10.0.0.2:1", "nst.example.com", tls=True)
    assert ("grpc.ssl_target_name_override", "nst.example.com") in options


def test_a_bad_server_list_is_one_line(capsys):
    code, _, err = run_cli(capsys, "--server", "127.0.0.1:1,b", "status")
    assert (code, err) == (
        errors.EXIT_BAD_INPUT,
        "nst-client: error: each server of a list must be host:port or [IPv6]:port, port 1 to 65535; got 'b'\n",
    )


def test_out_of_memory_is_final_and_says_what_to_lower(monkeypatch):
    monkeypatch.setattr(errors.time, "sleep", lambda _: pytest.fail("slept before a retry"))
    oom = (
        "OOM when allocating tensor with shape[1,64,2048,2048] and type float on "
        "/job:localhost/replica:0/task:0/device:CPU:0 by allocator cpu\n\t [[{{node Conv2D_1}}]]\n"
        "Hint: If you want to see a list of allocated tensors when OOM happens, add report_tensor_allocations_upon_oom "
        "to RunOptions for current allocation info. This isn't available when running in Eager mode.\n"
    )
    calls = []

    def out_of_memory():
        calls.append(1)
        raise ServerError(grpc.StatusCode.RESOURCE_EXHAUSTED, oom)

    with pytest.raises(ServerError) as info:
        errors.with_retries(out_of_memory, retries=3)
    assert len(calls) == 1 and info.value.exit_code == errors.EXIT_SERVER_ERROR
    assert str(info.value) == (
        "RESOURCE_EXHAUSTED: the server ran out of memory for this run (OOM when allocating tensor with "
        "shape[1,64,2048,2048]): lower max_dim, or the runs a server takes at once (--grpc_max_threads; "
        "nst-devserver --max-concurrent)"
    )
    assert not ServerError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (5 vs. 4)").retryable
    for busy in (
        "Server Threadpool Exhausted",  # the stock server's gRPC threads
        "server busy: 2 running (--max-concurrent) and 8 queued (--max-queue) already; retry later",
        "Concurrent RPC limit exceeded!",  # grpcio's maximum_concurrent_rpcs
    ):
        assert ServerError(grpc.StatusCode.RESOURCE_EXHAUSTED, busy).retryable, busy


def test_keepalive_pings_no_sooner_than_servers_accept():
    """Servers (tensorflow_model_server included) take pings 5 minutes apart at most while calls run, and
    none without calls (2 hours): sooner, and a second such ping gets the connection closed (GOAWAY)."""
    from nst_client.grpc_client import CHANNEL_OPTIONS

    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.keepalive_time_ms"] >= 300_000  # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS
    assert options.get("grpc.keepalive_permit_without_calls", 0) == 0
    assert options["grpc.http2.max_pings_without_data"] == 0  # keeps pinging through a call that sends nothing
    assert options["grpc.client_idle_timeout_ms"] < 240_000  # idle connections closed before load balancers do


# ---- REST ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rest_gateway(serving):
    """The dev server's REST API (the real server's JSON), in process on the session's Session."""
    slots = ds.RunSlots(running=2, waiting=4)
    with rest.rest_server(ds.Model("nst", {1: serving}), "127.0.0.1", 0, slots) as port:
        yield f"http://127.0.0.1:{port}"


def test_rest_mode(rest_gateway, serving, capsys, image_files, tmp_path, content_png, style_png):
    output = tmp_path / "rest.png"
    code, _, err = run_cli(
        capsys,
        "--rest",
        rest_gateway,
        *image_files,
        "-o",
        output,
        "--steps",
        "3",
        "--max-dim",
        "32",
        "--style-weight",
        "0.05",
    )
    assert code == errors.EXIT_OK, err
    assert output.read_bytes() == serving_default(
        serving, content_png, style_png, steps=3, max_dim=32, style_weight=0.05
    )

    over_rest = RestClient(rest_gateway, version=1)
    assert [(s.version, s.state) for s in over_rest.status()] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    ]
    version, signatures = over_rest.signatures()
    assert version == 1 and {"serving_default", "pixels", "decode", "limits"} == set(signatures)
    assert tensors.to_array(signatures["serving_default"].defaults["steps"]) == DEFAULTS["steps"]

    code, _, err = run_cli(capsys, "--rest", rest_gateway, *image_files, "--steps", "-1", "--max-dim", "32")
    assert (code, err) == (
        errors.EXIT_BAD_INPUT,
        "nst-client: error: INVALID_ARGUMENT: steps must be between 0 and 10000; got -1\n",
    )


# ---- hostile servers: trickling, non-JSON, silent ----------------------------------------------------


@contextlib.contextmanager
def tcp_server(handle) -> Iterator[int]:
    """A loopback TCP server that runs `handle(connection, stopped)` on each connection it accepts, in a
    thread of its own, until the block ends; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stopped, connections = threading.Event(), []

    def accept() -> None:
        while not stopped.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connections.append(connection)
            threading.Thread(target=handle, args=(connection, stopped), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopped.set()
        listener.close()
        for connection in connections:
            connection.close()


def trickle(connection: socket.socket, stopped: threading.Event) -> None:
    """An HTTP server that sends its headers a byte every 50 ms, for ever."""
    with contextlib.suppress(OSError):
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\n")
        while not stopped.wait(0.05):
            connection.sendall(b"X")


def answer(body: bytes, status: bytes = b"200 OK"):
    """An HTTP server that answers every request with `body`."""

    def handle(connection: socket.socket, stopped: threading.Event) -> None:
        with contextlib.suppress(OSError):
            connection.recv(65536)
            connection.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            connection.close()

    return handle


def silent(connection: socket.socket, stopped: threading.Event) -> None:
    """A server that accepts the connection and never says a word."""
    stopped.wait(120)


def test_a_trickling_rest_server_is_cut_off_at_the_timeout():
    with tcp_server(trickle) as port:
        client = RestClient(f"http://127.0.0.1:{port}", timeout=1, retries=0)
        started = time.monotonic()
        with pytest.raises(ServerError) as info:
            client.status()
        assert time.monotonic() - started < 5  # the whole call, not each read
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert str(info.value) == f"DEADLINE_EXCEEDED: no whole answer from http://127.0.0.1:{port} within 1 s"


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (b"<html>hi</html>", b"200 OK", "bytes that are not a TensorFlow Serving JSON object ('<html>hi</html>')"),
        (b'{"outputs": {"image_bytes": {"b64"', b"200 OK", "not a TensorFlow Serving JSON object"),  # cut short
        (b"\xff\xfe\x00", b"200 OK", "not a TensorFlow Serving JSON object"),  # not UTF-8
        (b"[1, 2]", b"200 OK", "not a TensorFlow Serving JSON object"),
        (b'{"model_version_status": 7}', b"200 OK", "JSON that is not TensorFlow Serving's"),
        (b"<html>busy</html>", b"503 Service Unavailable", "HTTP 503 Service Unavailable"),
    ],
)
def test_a_rest_answer_that_is_not_the_apis_is_one_line(body, status, expected):
    with tcp_server(answer(body, status)) as port:
        with pytest.raises(ServerError) as info:
            RestClient(f"http://127.0.0.1:{port}", timeout=10, retries=0).status()
        assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow  # starts a process
@pytest.mark.timeout(120)
def test_nst_client_over_rest_ends_at_its_timeout_in_one_line(image_files):
    with tcp_server(trickle) as trickling, tcp_server(answer(b"<html></html>")) as html:
        for port, code, line in (
            (trickling, errors.EXIT_DEADLINE, f"no whole answer from http://127.0.0.1:{trickling} within 2 s"),
            (html, errors.EXIT_SERVER_ERROR, "bytes that are not a TensorFlow Serving JSON object"),
        ):
            started = time.monotonic()
            done = subprocess.run(
                [script("nst-client"), "--rest", f"http://127.0.0.1:{port}", "--timeout", "2", *image_files],
                capture_output=True,
                text=True,
                timeout=90,
                env=quiet_env(),
            )
            assert done.returncode == code, done.stderr
            assert line in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
            assert "Traceback" not in done.stderr
        assert time.monotonic() - started < 60


def test_a_silent_replica_is_passed_over_for_the_others():
    with (
        tcp_server(silent) as port,
        replicas(1) as fleet,
        NSTClient(f"127.0.0.1:{port},{fleet.addresses}", timeout=10, connect_timeout=10) as client,
    ):
        assert [answered_by(client) for _ in range(4)] == [0, 0, 0, 0]


@pytest.mark.slow  # starts a process
@pytest.mark.timeout(120)
def test_a_silent_server_alone_is_one_line_naming_it_after_the_connect_timeout():
    with tcp_server(silent) as port:
        started = time.monotonic()
        done = subprocess.run(
            [script("nst-client"), "--server", f"127.0.0.1:{port}", "--connect-timeout", "1", "status"],
            capture_output=True,
            text=True,
            timeout=90,
            env=quiet_env(),
        )
        assert done.returncode == errors.EXIT_UNREACHABLE, done.stderr
        assert done.stderr == (
            f"nst-client: error: UNAVAILABLE: cannot reach a model server at 127.0.0.1:{port} within 1 s: "
            "no answer; is it running?\n"
        )
        assert time.monotonic() - started < 60


# ---- pieces --------------------------------------------------------------------------------------


def test_files_travel_as_they_are(tmp_path):
    pixels = np.uint8(make_image(30, 40) * 255)
    for name, options in (("photo.jpg", {"quality": 80}), ("photo.png", {}), ("photo.gif", {})):
        path = tmp_path / name
        PIL.Image.fromarray(pixels).save(path, **options)
        assert images.encode(path) == path.read_bytes(), name
    webp = tmp_path / "photo.webp"
    PIL.Image.fromarray(pixels).save(webp, lossless=True)
    converted = images.encode(webp)
    assert converted.startswith(b"\x89PNG")  # a format the model cannot read becomes a lossless PNG
    assert np.array_equal(np.asarray(PIL.Image.open(webp)), np.asarray(PIL.Image.open(io.BytesIO(converted))))


def bmp_top_down(pixels: np.ndarray) -> bytes:
    """A 24-bit BMP whose rows run top-down (a negative height), one of the layouts TensorFlow misreads."""
    height, width, _ = pixels.shape
    padding = b"\0" * ((-3 * width) % 4)
    rows = b"".join(pixels[y, :, ::-1].tobytes() + padding for y in range(height))  # BGR
    info = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(rows), 0, 0, 14 + len(info)) + info + rows


def test_every_bmp_goes_as_a_lossless_png_of_what_pillow_decodes(tmp_path):
    pixels = np.uint8(make_image(13, 10, seed=5) * 255)  # odd width: rows are padded
    top_down = tmp_path / "top_down.bmp"
    top_down.write_bytes(bmp_top_down(pixels))
    palette = tmp_path / "palette.bmp"
    PIL.Image.fromarray(pixels).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=16).save(palette)
    plain = tmp_path / "plain.bmp"
    PIL.Image.fromarray(pixels).save(plain)
    expected = {top_down: pixels, palette: np.asarray(PIL.Image.open(palette).convert("RGB")), plain: pixels}
    for path, want in expected.items():
        for sent in (images.encode(path), images.encode(path.read_bytes())):
            assert sent.startswith(b"\x89PNG"), path
            assert np.array_equal(np.asarray(PIL.Image.open(io.BytesIO(sent)).convert("RGB")), want), path


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA", "I;16", "P", "PA", "La", "RGBa", "CMYK", "YCbCr",
                                  "LAB", "HSV", "I", "F", "I;16B", "RGBX"])  # fmt: skip
def test_pil_images_of_any_mode_become_pngs(mode):
    """Modes PNG stores go as they are; the others become RGB, or RGBA where they have alpha: the bytes
    nst_model's own encoder gave wherever the two already agreed."""
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (6, 7, 4), np.uint8), "RGBA").convert(mode)
    keeps = {"1", "L", "LA", "RGB", "RGBA", "I;16"}
    alpha = {"PA": "RGBA", "La": "LA", "RGBa": "RGBA"}
    want = image if mode in keeps else image.convert(alpha.get(mode, "RGB"))
    buffer = io.BytesIO()
    want.save(buffer, format="PNG")
    assert images.encode(image) == buffer.getvalue()


def test_arrays_become_pngs_of_the_same_pixels():
    floats = make_image(20, 30, seed=3)
    bytes_ = np.uint8(make_image(20, 30, seed=4) * 255)
    for array, expected in (
        (floats, np.round(floats * 65535)),  # float [0, 1]: 16-bit, no precision lost
        (floats[np.newaxis], np.round(floats * 65535)),
        (bytes_, bytes_),
        (bytes_[..., :1], bytes_[..., :1]),
        (bytes_[..., 0], bytes_[..., :1]),
        (np.concatenate([bytes_, bytes_[..., :1]], -1), np.concatenate([bytes_, bytes_[..., :1]], -1)),
    ):
        decoded = tf.io.decode_png(images.encode(array), dtype=tf.uint16 if array.dtype.kind == "f" else tf.uint8)
        assert np.array_equal(decoded, expected), (array.shape, array.dtype)


def test_image_errors_are_input_errors_naming_the_image_and_file(tmp_path):
    absent = tmp_path / "absent.png"
    for image, name, message in (
        (absent, "style", f"cannot read the style image {absent}: No such file or directory"),
        (tmp_path, "content", f"the content image {tmp_path} is not a regular file: give an image file"),
        (np.zeros((4, 4, 2), np.uint8), "content", "content array must be shaped [H, W], [H, W, 1|3|4] or"),
        (np.full((4, 4, 3), 1.5), "style", "style float array values must be finite and within [0, 1]"),
        (np.zeros((4, 4, 3), np.int16), "style", "style array must be uint8 (0-255) or float (0-1); got int16"),
        (3, "content", "content must be a path, bytes, a PIL image or a numpy array; got int"),
        (b"not an image", "style", "style image is not an image the client can read (UnidentifiedImageError)"),
    ):
        with pytest.raises(errors.InputError) as info:
            images.encode(image, name)
        assert isinstance(info.value, ValueError)
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_devices_fifos_and_huge_files_are_refused_unread(tmp_path):
    with pytest.raises(errors.InputError, match=r"^the content image /dev/zero is not a regular file"):
        images.encode("/dev/zero", "content")  # would read until the memory ran out
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reading = pool.submit(images.encode, fifo, "style")  # would wait for a writer forever
        try:
            with pytest.raises(errors.InputError, match="is not a regular file"):
                reading.result(timeout=60)
        finally:
            with contextlib.suppress(OSError):  # a reader stuck on open: let it go, so the pool can close
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    huge = tmp_path / "huge.ppm"
    with huge.open("wb") as f:
        f.truncate(images.MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(errors.InputError, match=r"is larger than 512 MiB, more than any image the model takes"):
        images.encode(huge, "style")


def test_decompression_bombs_are_refused_in_one_line(devserver, capsys, tmp_path, image_files, monkeypatch):
    content, _ = image_files
    warned = tmp_path / "warned.ppm"  # above Pillow's limit, which only warns, then decodes
    warned.write_bytes(b"P6\n10000 10000\n255\n")
    refused = tmp_path / "refused.ppm"  # above twice the limit: DecompressionBombError, not an OSError
    refused.write_bytes(b"P6\n20000 10000\n255\n")
    for path in (warned, refused):
        code, _, err = run_cli(capsys, "--server", devserver["address"], content, path, "--steps", "1")
        assert code == errors.EXIT_BAD_INPUT
        assert err.startswith(f"nst-client: error: style image {path} is too large to decode (Image size (")
        assert err.count("\n") == 1
    tiff = tmp_path / "small.tiff"
    PIL.Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tiff)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # the same refusal for a TIFF, at any size
    with pytest.raises(errors.InputError, match="is too large to decode"):
        images.encode(tiff, "style")


@pytest.mark.slow  # starts a process
def test_the_image_encoder_imports_neither_tensorflow_nor_grpc():
    code = (
        "import sys\nimport numpy as np\nfrom nst_client import images\n"
        "images.encode(np.zeros((4, 4, 3), np.float32)), images.encode(np.zeros((4, 4, 3), np.uint8))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'grpc', 'tensorflow_serving'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=quiet_env(), timeout=120)
    assert done.stdout.splitlines()[-1] == "[]", done.stderr


def test_tensor_protos_round_trip():
    for value in (np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3), np.array(7, np.int32), np.zeros([1, 0, 0, 3])):
        proto = tensors.to_proto(value)
        assert np.array_equal(tensors.to_array(proto), value) and tensors.to_array(proto).dtype == value.dtype
        assert np.array_equal(tensors.to_array(proto), tf.make_ndarray(proto))
    typed = tf.make_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3))
    typed.ClearField("tensor_content")
    typed.float_val.extend([1.0, 2.0])  # shorter than the shape: TensorFlow repeats the last value
    assert tensors.to_array(typed).tolist() == [[1, 2, 2], [2, 2, 2]]
    assert tensors.to_array(tensors.to_proto(b"\x89PNG\x00")).item() == b"\x89PNG\x00"


def test_options_are_typed_from_the_signature():
    signature = meta_graph_pb2.SignatureDef()
    for name, dtype, shape in (
        ("content", tf.string, []),
        ("steps", tf.int32, []),
        ("weight", tf.float32, []),
        ("flag", tf.bool, []),
        ("init", tf.string, []),
        ("blend", tf.float32, [None]),
    ):
        signature.inputs[name].dtype = dtype.as_datatype_enum
        signature.inputs[name].tensor_shape.CopyFrom(tf.TensorShape(shape).as_proto())
    assert contract.option_names(signature) == ["blend", "flag", "init", "steps", "weight"]
    typed = contract.typed_options(
        {"steps": 3, "weight": 1, "flag": True, "init": "noise", "blend": [0.7, 0.3], "absent": None}, signature
    )
    assert {k: (v.dtype, v.shape) for k, v in typed.items()} == {
        "steps": (np.int32, ()),
        "weight": (np.float32, ()),
        "flag": (np.bool_, ()),
        "init": (object, ()),
        "blend": (np.float32, (2,)),
    }
    assert typed["init"].item() == b"noise"
    from_text = contract.typed_options({"steps": "3", "flag": "yes", "blend": "0.5, 0.25", "weight": "1e-2"}, signature)
    assert (from_text["steps"], from_text["flag"], list(from_text["blend"])) == (3, True, [0.5, 0.25])
    assert from_text["steps"].dtype == np.int32 and from_text["weight"] == np.float32(0.01)
    for bad in (
        {"steps": 1.5},
        {"steps": True},
        {"steps": 2**31},
        {"steps": "x"},
        {"weight": ""},
        {"flag": 1},
        {"flag": "maybe"},
        {"init": 3},
        {"weight": [1, 2]},
        {"content": b""},
        {"stepz": 1},
    ):
        with pytest.raises(errors.InputError):
            contract.typed_options(bad, signature)


def test_server_messages_lose_tensorflows_decoration():
    details = "assertion failed: [max_dim must be between 16 and 2048; got] [8]\n\t [[{{node Assert_3/Assert}}]]"
    assert errors.clean_message(details) == "max_dim must be between 16 and 2048; got 8"
    details = "assertion failed: [content values must be finite and within [0, 1]]\n\t [[{{node Assert_9/Assert}}]]"
    assert errors.clean_message(details) == "content values must be finite and within [0, 1]"
    assert errors.clean_message('Serving signature key "x" not found.') == 'Serving signature key "x" not found.'
    assert ServerError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded").exit_code == errors.EXIT_DEADLINE
