"""Coarse-to-fine (`scales`): the chunk loop's schedule, its calls, and the result it gives.

Most tests drive nst_client.chunked.run with a recording stand-in for the model (no TensorFlow);
the slow ones build the model in process with random weights and compare with the stages by hand.
"""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
from helpers import make_image, png_bytes

from nst_client import chunked
from nst_client.cli import parse_args
from nst_client.errors import InputError
from nst_client.settings import DEFAULT_SCALES, MIN_SCALE
from nst_model.cli import main as stylize_main
from nst_model.options import MIN_SIDE

CONTENT = png_bytes(make_image(29, 40, seed=1))  # each scale rounds the short side anew
STYLE = png_bytes(make_image(36, 36, seed=2))
DEFAULTS = {"steps": np.int32(300), "max_dim": np.int32(512), "optimizer": np.array(b"lbfgs", object)}


class FakeModel:
    """decode and pixels as the model's contract has them, recording every call: `pixels` moves its
    start image a step towards 0.5 per step, so a scale's start shows in its result."""

    def __init__(self, interrupt_at: int | None = None):
        self.calls: list[tuple[str, dict, tuple]] = []
        self.interrupt_at = interrupt_at  # raise KeyboardInterrupt at this call

    def __call__(self, signature: str, inputs: dict, outputs: tuple) -> dict:
        if len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append((signature, dict(inputs), tuple(outputs)))
        if signature == chunked.DECODE:
            image = PIL.Image.open(io.BytesIO(inputs["image"].item())).convert("RGB")
            side = int(inputs.get("max_dim", DEFAULTS["max_dim"]))
            scale = side / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)))
            return {"pixels": (np.asarray(image, np.float32) / 255)[np.newaxis]}
        assert signature == chunked.PIXELS
        start = inputs.get("image", inputs["content"])
        image = 0.5 + (start - 0.5) * 0.9 ** int(inputs["steps"])
        state = {k: np.zeros(1, np.float32) for k in chunked.state_names("lbfgs") if k != "image"}
        targets = {k: np.full(1, image.shape[2], np.float32) for k in chunked.TARGETS}
        loss = float(image.shape[2])
        png = png_bytes(image[0])
        return {"image_bytes": png, "image": image, **state, **targets, **dict.fromkeys(chunked.LOSSES, loss)}

    def of(self, signature: str) -> list[dict]:
        return [inputs for name, inputs, _ in self.calls if name == signature]


def run(model: FakeModel, steps: int, max_dim: int = 80, **keywords) -> chunked.Result:
    options = {"steps": np.int32(steps), "max_dim": np.int32(max_dim)}
    return chunked.run(model, CONTENT, [STYLE], options, DEFAULTS, **{"chunk": 5, **keywords})


def test_off_by_default_and_limits_are_the_models():
    assert DEFAULT_SCALES == ()
    assert MIN_SCALE == MIN_SIDE
    model = FakeModel()
    run(model, steps=10)
    assert [inputs["max_dim"] for inputs in model.of(chunked.DECODE)] == [80, 80]  # the options', as before


@pytest.mark.parametrize(
    ("scales", "max_dim", "steps", "expected"),
    [
        ((20, 40), 80, 120, [(20, 60), (40, 30), (80, 30)]),  # 2:1:1
        ((20, 40), 80, 10, [(20, 4), (40, 2), (80, 4)]),  # rounded down, the rest to the last scale
        ((40, 80), 80, 9, [(40, 6), (80, 3)]),  # ending with max_dim is the same as leaving it out
        ((40,), 80, 9, [(40, 6), (80, 3)]),
        ((20, 40), 80, 2, [(80, 2)]),  # coarse scales left with no steps are dropped
        ((20,), 80, 0, [(80, 0)]),
    ],
)
def test_steps_are_split_as_documented(scales, max_dim, steps, expected):
    assert chunked.plan(scales, max_dim, steps) == expected


@pytest.mark.parametrize(
    ("scales", "message"),
    [
        ((8, 40), "scales must be at least 16 px; got 8,40"),
        ((40, 40), "scales must increase; got 40,40"),
        ((60, 40), "scales must increase; got 60,40"),
        ((40, 100), "scales must not exceed max_dim \\(80\\); got 40,100"),
        ((40.5,), "scales must be whole numbers of pixels"),
    ],
)
def test_bad_scales_are_refused_before_any_call(scales, message):
    model = FakeModel()
    with pytest.raises(InputError, match=message):
        run(model, steps=10, scales=scales)
    assert model.calls == []


def test_each_scale_decodes_at_its_size_and_starts_from_the_last_image_upsampled():
    model = FakeModel()
    seen = []
    result = run(model, steps=12, scales=(20, 40), progress=lambda done, total, loss: seen.append((done, total)))
    # 20 px: 6 steps (5 + 1), 40 px: 3, 80 px: 3; every scale decodes content and style at its own side.
    assert [int(inputs["max_dim"]) for inputs in model.of(chunked.DECODE)] == [20, 20, 40, 40, 80, 80]
    calls = model.of(chunked.PIXELS)
    assert [int(inputs["steps"]) for inputs in calls] == [5, 1, 3, 3]
    first, resumed, second, third = calls
    assert "image" not in first and "style" in first  # the init image, as a single-scale run
    assert "style" not in resumed and "style_targets" in resumed  # within a scale, as before
    for inputs, previous in ((second, resumed), (third, second)):
        assert "style" in inputs and "style_targets" not in inputs  # fresh targets at this size
        assert not {"lbfgs_s", "lbfgs_grad", "lbfgs_losses"} & set(inputs)  # a fresh optimiser
        ran = FakeModel()(chunked.PIXELS, previous, ())["image"]
        np.testing.assert_array_equal(inputs["image"], chunked.upsample(ran, inputs["content"].shape))
    assert [c["content"].shape[1:3] for c in calls] == [(14, 20), (14, 20), (29, 40), (58, 80)]  # not 2x: rounded
    wanted = [outputs for name, _, outputs in model.calls if name == chunked.PIXELS]
    assert set(chunked.TARGETS) <= set(wanted[0]) and set(chunked.TARGETS) <= set(wanted[2])
    assert result.image.size == (80, 58)
    assert seen == [(0, 12), (5, 12), (6, 12), (9, 12), (12, 12)]  # overall steps, one bar


def test_checkpoints_count_overall_steps_and_pace_waits_for_the_last_scale():
    model = FakeModel()
    saved = []
    result = run(
        model,
        steps=24,  # 12, 6, 6 steps
        scales=(20, 40),
        checkpoint=lambda done, png: saved.append((done, PIL.Image.open(io.BytesIO(png)).size)),
        checkpoint_every=4,
        pace=lambda done, loss: 0,
    )
    assert saved == [(4, (20, 14)), (8, (20, 14)), (12, (20, 14)), (16, (40, 29)), (20, (80, 58))]
    assert result.image.size == (80, 58)  # stopped after the first chunk of the last scale
    assert sum(int(inputs["steps"]) for inputs in model.of(chunked.PIXELS)) == 20


@pytest.mark.parametrize(
    ("paced", "calls", "asked"),
    [
        ({25: 2, 27: 0}, [5, 5, 5, 5, 5, 2], [25, 27]),  # 2 steps, then the end before the run's 30
        ({25: 1, 26: 3, 29: 99}, [5, 5, 5, 5, 5, 1, 3, 1], [25, 26, 29]),  # never past the chunk or the steps
    ],
)
def test_pace_sets_the_last_scales_later_calls_and_can_end_the_run(paced, calls, asked):
    model, seen = FakeModel(), []

    def pace(done: int, loss: float) -> int:
        seen.append(done)
        return paced[done]

    result = run(model, steps=30, scales=(20,), pace=pace)  # 20 steps at 20 px, then 10 at 80 px
    assert [int(inputs["steps"]) for inputs in model.of(chunked.PIXELS)] == calls
    assert seen == asked  # only after the last scale's calls that leave steps to run
    last = model.of(chunked.PIXELS)[-1]
    assert result.png == FakeModel()(chunked.PIXELS, last, ())["image_bytes"]


def test_ctrl_c_in_a_later_scale_gives_the_last_finished_chunk():
    model = FakeModel(interrupt_at=5)  # decode x2 and pixels x2 at 20 px, decode at 40 px, then Ctrl-C
    with pytest.raises(chunked.Interrupted) as caught:
        run(model, steps=12, scales=(20, 40))
    assert caught.value.done == 6
    assert PIL.Image.open(io.BytesIO(caught.value.png)).size == (20, 14)


def test_upsample_keeps_range_and_takes_the_exact_shape():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (1, 15, 20, 3)).astype(np.float32)
    up = chunked.upsample(image, (1, 31, 41, 3))
    assert up.shape == (1, 31, 41, 3) and up.dtype == np.float32
    assert up.min() >= 0 and up.max() <= 1  # bicubic overshoots; `pixels` refuses values outside [0, 1]
    flat = chunked.upsample(np.full((1, 15, 20, 3), 0.25, np.float32), (1, 30, 40, 3))
    np.testing.assert_allclose(flat, 0.25, atol=1e-6)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--scales", "256,128"], "argument --scales: must increase; got 256,128"),
        (["--scales", "8"], "argument --scales: must be at least 16 px; got 8"),
        (["--scales", "a,b"], "argument --scales: must be comma-separated whole numbers of pixels; got 'a,b'"),
        (["--scales", "256", "--max-dim", "200"], "scales must not exceed max_dim (200); got 256"),
    ],
)
def test_the_command_lines_refuse_bad_scales_in_one_line_before_loading_anything(flags, message, capsys):
    for prog, main in (("nst-client", parse_args), ("nst-stylize", stylize_main)):
        with pytest.raises(SystemExit) as exit_info:
            main(["c.png", "s.png", *flags])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"{prog}: error: {message}"


def test_nst_client_takes_scales_over_grpc_only(capsys):
    assert parse_args(["c.png", "s.png", "--scales", "128,256"]).scales == (128, 256)
    assert parse_args(["c.png", "s.png"]).scales == DEFAULT_SCALES
    with pytest.raises(SystemExit):
        parse_args(["c.png", "s.png", "--scales", "256", "--rest", "http://localhost:8501"])
    assert capsys.readouterr().err.strip() == "nst-client: error: --scales needs gRPC: over REST a run is one call"


# The model itself, built in process with random weights (tracing its signatures takes tens of seconds).


@pytest.fixture(scope="module")
def stylizer():
    from helpers import random_weights

    from nst_model.model import StyleTransfer
    from nst_model.runner import Stylizer
    from nst_model.signatures import Servable

    return Stylizer.from_module(Servable(StyleTransfer(random_weights())))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_two_scales_equal_the_two_stages_by_hand(stylizer, optimizer):
    """chunked.run with scales=(24,) at max_dim 48, in chunks, equals one `pixels` call at 24 px and one
    at 48 px started from its image upsampled: the public calls, done by hand."""
    options = {"optimizer": optimizer, "style_weight": 1.0}
    result = stylizer.run(CONTENT, STYLE, steps=6, max_dim=48, scales=(24,), chunk=1, progress=False, **options)
    call, typed = stylizer.call, {"optimizer": np.array(optimizer.encode(), object), "style_weight": np.float32(1)}
    image = None
    for side, steps in ((24, 4), (48, 2)):  # 2:1 of 6 steps
        sizing = {"max_dim": np.int32(side)}
        content = call("decode", {"image": np.array(CONTENT, object), **sizing}, ("pixels",))["pixels"]
        style = call("decode", {"image": np.array(STYLE, object), **sizing}, ("pixels",))["pixels"]
        start = {} if image is None else {"image": chunked.upsample(image, content.shape)}
        inputs = {"content": content, **chunked.style_batch([style]), **typed, **start, "steps": np.int32(steps)}
        out = call("pixels", inputs, ("image", "image_bytes", *chunked.LOSSES))
        image = out["image"]
    assert result.png == bytes(out["image_bytes"])
    # Losses to float32 rounding: seen to differ in the last bit from run to run on this CPU (the PNG did not).
    assert result.losses == pytest.approx({k: float(out[k]) for k in chunked.LOSSES}, rel=1e-6)
    assert result.image.size == (content.shape[2], content.shape[1]) == (48, 34)  # decode's pixels at max_dim


@pytest.mark.slow
def test_nst_stylize_writes_the_requested_size(weights_file, tmp_path):
    (tmp_path / "c.png").write_bytes(CONTENT)
    (tmp_path / "s.png").write_bytes(STYLE)
    out = tmp_path / "out.png"
    argv = [str(tmp_path / "c.png"), str(tmp_path / "s.png"), "-o", str(out), "--max-dim", "48"]
    argv += ["--steps", "3", "--scales", "24", "--weights", str(weights_file), "--precision", "float32", "-q"]
    assert stylize_main(argv) == 0
    assert PIL.Image.open(out).size == (48, 34)


def test_nst_client_passes_scales_to_the_client(tmp_path):
    """Without --scales the client gets none (a single-scale run); with it, the scales given."""
    from nst_client import cli

    class Client:
        def run(self, content, styles, **keywords):
            self.keywords = keywords
            return chunked.Result(CONTENT, dict.fromkeys(chunked.LOSSES, 0.0), model_version=1)

    for flags, expected in (([], ()), (["--scales", "64,128"], (64, 128))):
        client = Client()
        cli.stylize(client, parse_args(["c.png", "s.png", "-o", str(tmp_path / "out.png"), "-q", *flags]))
        assert client.keywords.get("scales") == expected
        assert (tmp_path / "out.png").read_bytes() == CONTENT
