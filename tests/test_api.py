"""The Python API and nst-stylize give serving_default's bytes, whatever form the images take."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from nst_client.images import encode
from nst_model import runner

OPTIONS = {"steps": 4, "max_dim": 40}


@pytest.fixture(scope="module")
def expected(serving, content_png, style_png) -> bytes:
    feeds = {
        "content": np.array(content_png, object),
        "style": np.array(style_png, object),
        "steps": np.int32(OPTIONS["steps"]),
        "max_dim": np.int32(OPTIONS["max_dim"]),
    }
    return serving.run("serving_default", feeds)["image_bytes"]


@pytest.fixture(scope="module")
def content_png():  # module-scoped copies of the conftest images
    from helpers import make_image, png_bytes

    return png_bytes(make_image(40, 56, seed=1))


@pytest.fixture(scope="module")
def style_png():
    from helpers import make_image, png_bytes

    return png_bytes(make_image(48, 48, seed=2))


@pytest.fixture(scope="module")
def stylizer(serving):
    """The Python API over the tests' shared Session (`nst_model.load` makes one the same way; the
    command-line tests with --model run it), so that no second Session prepares its calls again."""
    return runner.over_session(serving)


def test_paths_pil_images_and_arrays_give_the_same_bytes(stylizer, expected, content_png, style_png, tmp_path):
    content_path, style_path = tmp_path / "content.png", tmp_path / "style.png"
    content_path.write_bytes(content_png)
    style_path.write_bytes(style_png)
    content_pil = PIL.Image.open(io.BytesIO(content_png))
    forms = {
        "paths": (content_path, str(style_path)),
        "bytes": (content_png, style_png),
        "pil": (content_pil, PIL.Image.open(style_path)),
        "uint8 arrays": (np.asarray(content_pil), np.asarray(PIL.Image.open(style_path))),
        "float arrays": (np.asarray(content_pil) / 255.0, np.asarray(PIL.Image.open(style_path))[np.newaxis] / 255.0),
    }
    for name, (content, style) in forms.items():
        result = stylizer.run(content, style, progress=False, chunk=3, **OPTIONS)
        assert result.png == expected, name
    image = stylizer.stylize(content_path, style_path, progress=False, **OPTIONS)
    assert isinstance(image, PIL.Image.Image) and image.size == (40, 28)


def test_one_call_and_chunks_agree(stylizer, expected, content_png, style_png):
    assert stylizer.run(content_png, style_png, chunk=0, progress=False, **OPTIONS).png == expected
    assert stylizer.run(content_png, style_png, chunk=1, progress=False, **OPTIONS).png == expected


def test_unknown_option_is_a_type_error(stylizer, content_png):
    with pytest.raises(TypeError, match="unknown options \\['stepz'\\]"):
        stylizer.run(content_png, content_png, stepz=3)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 2), np.uint8), "must be shaped"),
        (np.full((4, 4, 3), 2.0), "within \\[0, 1\\]"),
        (np.zeros((4, 4, 3), np.int64), "must be uint8"),
        ("no/such/file.jpg", "cannot read the content image no/such/file.jpg"),
        (3.5, "must be a path, bytes, a PIL image or a numpy array"),
    ],
)
def test_bad_python_inputs_are_refused_early(image, message):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        encode(image, "content")


def _stylize_cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from nst_model.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_writes_serving_defaults_png_with_progress(tmp_path, weights_file, expected, content_png, style_png):
    (tmp_path / "c.png").write_bytes(content_png)
    (tmp_path / "s.png").write_bytes(style_png)
    out = tmp_path / "out.png"
    result = _stylize_cli(
        str(tmp_path / "c.png"),
        str(tmp_path / "s.png"),
        "-o",
        str(out),
        "--steps",
        "4",
        "--max-dim",
        "40",
        "--chunk",
        "2",
        "--weights",
        str(weights_file),
        "--precision",
        "float32",  # as the exported model
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == expected
    assert "4/4" in result.stderr and "loss=" in result.stderr  # the progress bar
    assert f"wrote {out} (40x28)" in result.stderr


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path, weights_file, content_png):
    (tmp_path / "c.png").write_bytes(content_png)
    (tmp_path / "bad.jpg").write_bytes(b"<html>not an image</html>")
    missing = _stylize_cli(str(tmp_path / "c.png"), str(tmp_path / "nope.jpg"), "--weights", str(weights_file))
    bad = _stylize_cli(str(tmp_path / "c.png"), str(tmp_path / "bad.jpg"), "--weights", str(weights_file))
    steps = _stylize_cli(
        str(tmp_path / "c.png"), str(tmp_path / "c.png"), "--steps", "-2", "--weights", str(weights_file)
    )
    weights = _stylize_cli(str(tmp_path / "c.png"), str(tmp_path / "c.png"), "--weights", str(tmp_path / "w.h5"))
    for result, message in (
        (missing, "cannot read the style image"),
        (bad, "bad.jpg is not an image the client can read"),
        (steps, "steps must be between 0 and 10000; got -2"),
        (weights, "w.h5 (from --weights): no such file"),
    ):
        assert result.returncode == 2
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("nst-stylize: error:") and message in last, result.stderr


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "Graph execution error:\n\nassertion failed: [steps must be between 0 and 10000; got] [-2]\n"
            "\t [[{{node Assert}}]]",
            "steps must be between 0 and 10000; got -2",
        ),
        (
            "Graph execution error:\n\nDetected at node DecodePng defined at (most recent call last):\n"
            '  File "x.py", line 1, in <module>\n\nInvalid PNG data, size 1992\n\t [[{{node DecodePng}}]] [Op:f]',
            "Invalid PNG data, size 1992",
        ),
        (
            "assertion failed: [content values must be finite and within [0, 1]]\n\t [[{{node Assert_9/Assert}}]]",
            "content values must be finite and within [0, 1]",
        ),
        ("Invalid PNG data, size 1992\n\t [[{{node DecodePng}}]]", "Invalid PNG data, size 1992"),
    ],
)
def test_graph_errors_become_the_line_that_says_why(message, expected):
    """One cleaner for the server's messages and the in-process ones (wrapped in a traceback)."""
    from nst_client.errors import clean_message

    assert clean_message(message) == expected


def _cli_before_tensorflow(*args: str) -> tuple[int, str, bool]:
    """Run nst-stylize's main in a fresh interpreter: (exit code, stderr, whether TensorFlow got imported)."""
    code = (
        "import sys\nfrom nst_model.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
        "except SystemExit as e:\n    code = e.code\nprint('TF' if 'tensorflow' in sys.modules else 'noTF', code)"
    )
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    imported, exit_code = result.stdout.split()[-2:]
    return int(exit_code), result.stderr, imported == "TF"


@pytest.mark.slow  # starts a process
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "-5"], "steps must be between 0 and 10000; got -5"),
        (["--max-dim", "4096"], "max_dim must be between 16 and 2048; got 4096"),
        (["--style-weight", "nan"], "style_weight must be a finite number >= 0; got nan"),
        (["--style-scale", "9"], "style_scale must be between 0.1 and 8; got 9"),
        (["-o", "out.jpg"], "--output must end in .png"),
    ],
)
def test_cli_refuses_bad_options_before_building_anything(tmp_path, flags, message):
    code, stderr, imported = _cli_before_tensorflow("c.png", "s.png", *flags)
    assert code == 2 and message in stderr.strip().splitlines()[-1]
    assert not imported  # refused before TensorFlow (and the model) was loaded


@pytest.mark.slow  # starts a process
def test_cli_output_folder_is_created_or_refused_before_the_run(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code, stderr, imported = _cli_before_tensorflow("c.png", "s.png", "-o", str(blocker / "out.png"))
    assert code == 2 and "cannot create the folder" in stderr and not imported
    code, stderr, _ = _cli_before_tensorflow("missing.png", "s.png", "-o", str(tmp_path / "new" / "deep" / "out.png"))
    assert (tmp_path / "new" / "deep").is_dir()  # made before the run (which then fails on the missing image)
    assert code == 2 and "missing.png" in stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_cli_save_every_writes_the_images_of_shorter_runs(tmp_path, exported, expected, content_png, style_png):
    """Checkpoints at chunk boundaries: the one at step 2 is, byte for byte, a 2-step run's image."""
    (tmp_path / "c.png").write_bytes(content_png)
    (tmp_path / "s.png").write_bytes(style_png)
    out = tmp_path / "out.png"
    base = [str(tmp_path / "c.png"), str(tmp_path / "s.png"), "--max-dim", "40", "--model", str(exported), "-q"]
    assert _stylize_cli(*base, "-o", str(out), "--steps", "4", "--save-every", "2").returncode == 0
    assert (tmp_path / "out_0004.png").read_bytes() == out.read_bytes() == expected
    two = tmp_path / "two.png"
    assert _stylize_cli(*base, "-o", str(two), "--steps", "2", "--chunk", "0").returncode == 0
    assert (tmp_path / "out_0002.png").read_bytes() == two.read_bytes()


@pytest.mark.slow
def test_cli_ctrl_c_writes_the_last_finished_chunk(tmp_path, exported, content_png, style_png):
    import signal
    import time

    (tmp_path / "c.png").write_bytes(content_png)
    (tmp_path / "s.png").write_bytes(style_png)
    out = tmp_path / "out.png"
    code = "import sys; from nst_model.cli import main; sys.exit(main())"
    args = [str(tmp_path / "c.png"), str(tmp_path / "s.png"), "-o", str(out), "--max-dim", "32", "--chunk", "1"]
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args, "--steps", "5000", "--model", str(exported), "--save-every", "1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "out_0001.png").exists():  # a chunk has finished
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("nst-stylize: interrupted; wrote the image after") and "out_" in last
    written = pathlib.Path(last.rsplit(" to ", 1)[1])
    assert written.read_bytes().startswith(b"\x89PNG") and not out.exists()
