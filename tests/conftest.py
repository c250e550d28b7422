"""Fixtures every test module may use: random VGG19 weights in the Keras file layout, a small exported
model loaded the server's way, the real weights where present, two test images (helpers.py makes them).

Everything is made in code at small sizes; tests that need the real ImageNet weights use the
`real_weights` fixture, which skips when NST_VGG19_WEIGHTS is unset.
"""

from __future__ import annotations

import os
import pathlib
import signal

import pytest
from helpers import make_image, png_bytes, random_weights, write_keras_h5

from nst_model.session import ServingSession
from nst_model.vgg import WEIGHTS_ENV

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A test run started in the background of a non-interactive shell inherits SIGINT ignored, as would every
# process the tests start (an ignored signal stays ignored across exec): the Ctrl-C tests need it delivered.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> pathlib.Path:
    return write_keras_h5(tmp_path_factory.mktemp("weights") / "vgg19_random.h5", random_weights())


@pytest.fixture(scope="session")
def exported(tmp_path_factory, weights_file) -> pathlib.Path:
    """Version 1 of a model exported by nst-export with random weights."""
    from nst_export.exporter import export

    return export(tmp_path_factory.mktemp("models") / "nst", weights=weights_file)


@pytest.fixture(scope="session")
def serving(exported) -> ServingSession:
    """The exported model loaded the server's way (TF1 Session, signature tensor names)."""
    session = ServingSession(exported)
    yield session
    session.close()


@pytest.fixture(scope="session")
def real_weights() -> pathlib.Path:
    path = os.environ.get(WEIGHTS_ENV)
    if not path:
        pytest.skip(f"{WEIGHTS_ENV} is unset: no real VGG19 weights on this machine")
    return pathlib.Path(path)


@pytest.fixture(scope="session")
def real_serving(real_weights, tmp_path_factory) -> tuple[ServingSession, pathlib.Path]:
    """The real weights exported by nst-export and loaded the server's way, once for every test that
    needs them, and the folder of test photos beside the weights (skips without it)."""
    from nst_export.exporter import export

    images = real_weights.parents[1] / "images"
    if not images.is_dir():
        pytest.skip(f"no test photos beside the weights at {images}")
    session = ServingSession(export(tmp_path_factory.mktemp("real") / "nst", weights=real_weights))
    yield session, images
    session.close()


@pytest.fixture
def content_png() -> bytes:
    return png_bytes(make_image(40, 56, seed=1))


@pytest.fixture
def style_png() -> bytes:
    return png_bytes(make_image(48, 48, seed=2))


# Fixtures that start a server process, need the real weights or export a model of their own: the tests
# that use them are slow (`pytest -m "not slow"`, the everyday tier, leaves them out), as are those marked.
SLOW_FIXTURES = {"model_base", "devserver", "real_weights", "serving_all_losses", "soak_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
