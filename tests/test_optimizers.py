"""L-BFGS through the exported signatures, and the bfloat16 export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from nst_client import chunked
from nst_model.session import ServingSession

LBFGS = np.array(b"lbfgs", object)
ADAM = np.array(b"adam", object)


def decode(serving, png, max_dim=48):
    return serving.run("decode", {"image": np.array(png, object), "max_dim": np.int32(max_dim)})["pixels"]


def test_lbfgs_beats_adam_at_equal_steps(serving, content_png, style_png):
    feeds = {"content": decode(serving, content_png), "style": decode(serving, style_png), "steps": np.int32(15)}
    adam = serving.run("pixels", {**feeds, "optimizer": ADAM})
    lbfgs = serving.run("pixels", {**feeds, "optimizer": LBFGS})
    assert float(lbfgs["loss"]) < float(adam["loss"])
    assert lbfgs["image"].min() >= 0.0 and lbfgs["image"].max() <= 1.0
    assert lbfgs["lbfgs_s"].shape[1:] == lbfgs["image"].shape[1:] and 1 <= lbfgs["lbfgs_s"].shape[0] <= 10
    assert lbfgs["adam_step"] == 0  # Adam's state is passed on untouched


def test_lbfgs_never_raises_the_objective(serving, content_png, style_png):
    feeds = {"content": decode(serving, content_png), "style": decode(serving, style_png), "optimizer": LBFGS}
    losses = [float(serving.run("pixels", {**feeds, "steps": np.int32(n)}, ["loss"])["loss"]) for n in (0, 1, 3, 8)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]


def test_lbfgs_chunks_equal_one_long_run(serving, content_png, style_png):
    feeds = {"content": decode(serving, content_png), "style": decode(serving, style_png), "optimizer": LBFGS}
    whole = serving.run("pixels", {**feeds, "steps": np.int32(6)})
    state = {}
    for _ in range(3):
        out = serving.run("pixels", {**feeds, **state, "steps": np.int32(2)})
        state = {k: out[k] for k in chunked.state_names("lbfgs")}
    assert out["image_bytes"] == whole["image_bytes"]
    np.testing.assert_array_equal(out["lbfgs_s"], whole["lbfgs_s"])


def test_lbfgs_stops_where_it_cannot_move(serving, content_png, style_png):
    """With the content term alone the content is the minimum: the first step, steepest descent,
    finds nothing lower and would repeat exactly; the other steps are skipped, costing nothing."""
    feeds = {"content": decode(serving, content_png), "style": decode(serving, style_png), "optimizer": LBFGS,
             "steps": np.int32(4), "style_weight": np.float32(0), "tv_weight": np.float32(0)}  # fmt: skip
    out = serving.run("pixels", feeds)
    np.testing.assert_array_equal(out["evaluations"], [1, 0, 0, 0])
    assert float(out["loss"]) == 0.0 and out["lbfgs_s"].shape[0] == 0
    moving = serving.run("pixels", {**feeds, "tv_weight": np.float32(1e8)})
    np.testing.assert_array_equal(moving["evaluations"] > 0, [True] * 4)


def test_serving_default_takes_the_optimizer(serving, content_png, style_png):
    feeds = {"content": np.array(content_png, object), "style": np.array(style_png, object),
             "steps": np.int32(5), "max_dim": np.int32(48)}  # fmt: skip
    adam = serving.run("serving_default", {**feeds, "optimizer": ADAM})
    lbfgs = serving.run("serving_default", feeds)  # the default
    assert float(lbfgs["loss"]) < float(adam["loss"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="optimizer"):
        serving.run("serving_default", {**feeds, "optimizer": np.array(b"sgd", object)})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("lbfgs_s", np.zeros([11, 24, 32, 3], np.float32), "lbfgs_s must be empty or hold at most 10 images"),
        ("lbfgs_s", np.zeros([2, 20, 32, 3], np.float32), "lbfgs_s must be empty or hold at most 10 images"),
        ("lbfgs_y", np.full([1, 24, 32, 3], np.nan, np.float32), "lbfgs_y values must be finite"),
        ("lbfgs_y", np.ones([2, 24, 32, 3], np.float32), "lbfgs_s and lbfgs_y must pair up"),
    ],
)
def test_bad_lbfgs_state_is_invalid_argument(serving, name, value, message):
    from helpers import make_image

    image = make_image(24, 32)[np.newaxis]
    feeds = {"content": image, "style": image, "steps": np.int32(1), "optimizer": LBFGS}
    if name == "lbfgs_y":
        feeds["lbfgs_s"] = np.ones([1, 24, 32, 3], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serving.run("pixels", {**feeds, name: value})


@pytest.mark.slow
def test_bfloat16_export_is_close_to_float32(tmp_path, weights_file, serving, content_png, style_png):
    from nst_export.exporter import INFO_FILE, export

    path = export(tmp_path / "nst", weights=weights_file, precision="bfloat16")
    assert json.loads((path / "assets.extra" / INFO_FILE).read_text())["precision"] == "bfloat16"
    bf16 = ServingSession(path)
    try:
        content, style = decode(serving, content_png), decode(serving, style_png)
        feeds = {"content": content, "style": style, "steps": np.int32(0)}
        start32, start16 = serving.run("pixels", feeds), bf16.run("pixels", feeds)
        # bfloat16 keeps 8 bits of mantissa: the objective agrees to a few percent.
        assert float(start16["style_loss"]) == pytest.approx(float(start32["style_loss"]), rel=0.05)
        after = bf16.run("pixels", {**feeds, "steps": np.int32(10)})
        assert float(after["loss"]) < float(start16["loss"])
    finally:
        bf16.close()
