"""Limits an operator bakes into an export (nst-export --max-side, --max-steps): enforced by the graph
with messages that name them, reported by the `limits` signature, export_info.json and nst-export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_image, png_bytes

from nst_client import chunked
from nst_client.contract import LIMITS, limits_line
from nst_export import cli as export_cli
from nst_export import exporter
from nst_model.options import DEFAULTS, MAX_INPUT_PIXELS, MAX_SIDE, MAX_STEPS, MAX_STYLES, MIN_SIDE, Limits
from nst_model.session import ServingSession

LOWERED = Limits(max_side=48, max_steps=4)


@pytest.fixture(scope="module")
def lowered(tmp_path_factory, weights_file) -> ServingSession:
    path = exporter.export(tmp_path_factory.mktemp("lowered") / "nst", weights=weights_file, limits=LOWERED)
    session = ServingSession(path)
    session.path = path
    yield session
    session.close()


def images(**feeds: object) -> dict[str, np.ndarray]:
    content, style = png_bytes(make_image(30, 40, seed=1)), png_bytes(make_image(32, 32, seed=2))
    return {"content": np.array(content, object), "style": np.array(style, object), **feeds}


def refusal(session: ServingSession, signature: str, feeds: dict[str, np.ndarray]) -> str:
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        session.run(signature, feeds, ["loss"] if signature != "decode" else ["pixels"])
    return error.value.message


def test_the_default_export_reports_the_model_limits(serving):
    assert serving.run(LIMITS, {}, []) == {
        "max_steps": MAX_STEPS,
        "min_side": MIN_SIDE,
        "max_side": MAX_SIDE,
        "max_input_pixels": MAX_INPUT_PIXELS,
        "max_styles": MAX_STYLES,
    }
    message = refusal(serving, "serving_default", images(steps=np.int32(MAX_STEPS + 1)))
    assert f"steps must be between 0 and {MAX_STEPS}; got" in message and "--max-steps" not in message


@pytest.mark.slow
def test_lowered_limits_are_reported_everywhere(lowered):
    limits = {k: int(v) for k, v in lowered.run(LIMITS, {}, []).items()}
    assert limits == {**LOWERED.as_dict(), "max_side": 48, "max_steps": 4}
    info = json.loads((lowered.path / "assets.extra" / exporter.INFO_FILE).read_text())
    assert info["limits"] == limits
    # Defaults above the limits come down to them, so that a request leaving them out is admitted.
    assert info["defaults"] == json.loads(json.dumps({**DEFAULTS, "steps": 4, "max_dim": 48}))
    defaults = {k: tf.make_ndarray(v) for k, v in lowered.signature("serving_default").defaults.items()}
    assert (defaults["steps"], defaults["max_dim"]) == (4, 48)
    assert tf.make_ndarray(lowered.signature("decode").defaults["max_dim"]) == 48
    assert tf.make_ndarray(lowered.signature("pixels").defaults["steps"]) == 4
    description = exporter.describe(lowered.path)
    assert limits_line(limits) in description.splitlines()
    assert "longest side 16 to 48 px, at most 4 steps per call" in description


@pytest.mark.slow
def test_lowered_limits_are_enforced_with_their_names(lowered):
    out = lowered.run("serving_default", images(), ["image_bytes"])  # every default: 4 steps at 48 px
    assert tf.io.decode_png(out["image_bytes"]).shape == (36, 48, 3)
    side = "(lowered at export: nst-export --max-side)"
    assert f"max_dim must be between 16 and 48 {side}; got" in refusal(
        lowered, "serving_default", images(max_dim=np.int32(49))
    )
    assert f"max_dim must be between 16 and 48 {side}" in refusal(
        lowered, "decode", {"image": images()["content"], "max_dim": np.int32(64)}
    )
    message = refusal(lowered, "serving_default", images(steps=np.int32(5)))
    assert "steps must be between 0 and 4 (lowered at export: nst-export --max-steps; send fewer steps" in message
    # The pixels path: content larger than the limit, and a style scaled beyond it.
    big = {"content": make_image(30, 49)[None]}
    assert f"content sides must be between 16 and 48 {side} px" in refusal(lowered, "pixels", big)
    scaled = {"content": make_image(30, 40)[None], "style": make_image(32, 32)[None], "style_scale": np.float32(1.5)}
    assert f"style sides must be between 16 and 48 {side} px after scaling" in refusal(lowered, "pixels", scaled)
    # A chunked run within the limits runs, each call at most max_steps.
    session_call = lambda signature, feeds, outputs: lowered.run(signature, dict(feeds), list(outputs))  # noqa: E731
    content, style = images()["content"].item(), images()["style"].item()
    defaults = {k: tf.make_ndarray(v) for k, v in lowered.signature("pixels").defaults.items()}
    result = chunked.run(session_call, content, [style], {"steps": np.int32(8)}, defaults, chunk=4)
    assert np.isfinite(result.losses["loss"]) and result.image.size == (48, 36)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-side", "4096"], "--max-side must be between 16 and 2048; got 4096"),
        (["--max-side", "8"], "--max-side must be between 16 and 2048; got 8"),
        (["--max-steps", "0"], "--max-steps must be between 1 and 10000; got 0"),
    ],
)
def test_nst_export_refuses_limits_it_cannot_bake_in_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--model-dir", str(tmp_path / "nst"), "--weights", str(tmp_path / "missing.h5"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"nst-export: error: {message}"  # after the usage, as argparse does
    assert not (tmp_path / "nst").exists()  # refused before anything was written


def test_the_limits_line_for_an_export_without_them():
    assert limits_line(None).startswith("limits: not reported")
