"""VGG19 as a feature extractor made of plain tf.Variables and tf.nn ops.

Keras objects cannot live in the exported module (the server's TF1 Session cannot restore them),
so the weights are read from the Keras HDF5 file with h5py and the network is written out here.
Only the layers up to the deepest one the losses use are built.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
import tensorflow as tf

from nst_model.options import CONTENT_LAYERS, PRECISIONS, STYLE_LAYERS

# Convolutions of VGG19 in order; "pool" marks a 2x2 max pooling.
LAYERS = (
    "block1_conv1",
    "block1_conv2",
    "pool",
    "block2_conv1",
    "block2_conv2",
    "pool",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
    "block3_conv4",
    "pool",
    "block4_conv1",
    "block4_conv2",
    "block4_conv3",
    "block4_conv4",
    "pool",
    "block5_conv1",
    "block5_conv2",
    "block5_conv3",
    "block5_conv4",
)
CHANNELS = {"block1": 64, "block2": 128, "block3": 256, "block4": 512, "block5": 512}
# Keras "caffe" preprocessing: BGR order, ImageNet channel means subtracted from 0-255 values.
BGR_MEANS = (103.939, 116.779, 123.68)

WEIGHTS_ENV = "NST_VGG19_WEIGHTS"
KERAS_FILENAME = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_MD5 = "253f8cb515780f3b799900260a226db6"  # Keras's own check of its download


class WeightsError(ValueError):
    """The weights file is missing, unreadable or not VGG19."""


def deepest(layers: tuple[str, ...]) -> str:
    """The layer of `layers` that comes last in the network: it is built (and loaded) up to there."""
    return max(layers, key=LAYERS.index)


# Whatever the options choose, the network never needs more than this.
NEEDED = deepest((*STYLE_LAYERS, *CONTENT_LAYERS))


def pools_before(layer: str) -> int:
    """How many 2x2 poolings (each halving the sides, rounding down) come before `layer`."""
    return LAYERS[: LAYERS.index(layer)].count("pool")


def conv_shapes(last: str = "block5_conv4") -> dict[str, tuple[int, int, int, int]]:
    """Kernel shape of every convolution up to and including `last`."""
    shapes, channels_in = {}, 3
    for name in LAYERS:
        if name == "pool":
            continue
        channels_out = CHANNELS[name.split("_")[0]]
        shapes[name] = (3, 3, channels_in, channels_out)
        channels_in = channels_out
        if name == last:
            break
    return shapes


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_weights(path: str | os.PathLike, last: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Kernels and biases up to `last` from a Keras VGG19 HDF5 weights file (legacy layout).

    Accepts both the file Keras downloads and files Keras writes with `save_weights(...h5)`:
    one group per layer whose `weight_names` attribute lists the kernel, then the bias.
    """
    import h5py

    path = pathlib.Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file; set {WEIGHTS_ENV} or pass --weights with a VGG19 .h5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"{path}: not a readable HDF5 file ({e}); download it again") from None
    weights = {}
    with f:
        root = f.get("model_weights", f)
        for name, shape in conv_shapes(last).items():
            if name not in root:
                raise WeightsError(f"{path}: no layer {name!r}; is this a VGG19 weights file?")
            group = root[name]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("weight_names", [])]
            if len(names) != 2:
                raise WeightsError(f"{path}: layer {name!r} has {len(names)} weights, expected kernel and bias")
            try:
                kernel, bias = (np.asarray(group[n], dtype=np.float32) for n in names)
            except (KeyError, OSError) as e:
                raise WeightsError(f"{path}: layer {name!r} cannot be read ({e}); is the file truncated?") from None
            if kernel.shape != shape or bias.shape != (shape[-1],):
                raise WeightsError(
                    f"{path}: layer {name!r} has shapes {kernel.shape}, {bias.shape}; "
                    f"VGG19 needs {shape}, {(shape[-1],)}"
                )
            if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
                raise WeightsError(f"{path}: layer {name!r} holds NaN or Inf values")
            weights[name] = (kernel, bias)
    return weights


def keras_download() -> pathlib.Path:
    """Path of the ImageNet weights Keras downloads (cached under ~/.keras/models)."""
    from keras.src.applications.vgg19 import WEIGHTS_PATH_NO_TOP
    from keras.utils import get_file

    try:
        return pathlib.Path(get_file(KERAS_FILENAME, WEIGHTS_PATH_NO_TOP, cache_subdir="models", file_hash=KERAS_MD5))
    except Exception as e:
        raise WeightsError(
            f"could not download the VGG19 weights ({e}); pass --weights PATH or set {WEIGHTS_ENV}"
        ) from None


def resolve_weights_path(path: str | os.PathLike | None = None) -> pathlib.Path:
    """--weights, else $NST_VGG19_WEIGHTS, else the Keras download."""
    path = path or os.environ.get(WEIGHTS_ENV)
    return pathlib.Path(path) if path else keras_download()


def load_weights(path: str | os.PathLike | None, last: str = NEEDED) -> tuple[dict, pathlib.Path, str]:
    """(weights up to `last`, the file they came from, its sha256) for --weights/env/download."""
    source = "--weights" if path else f"${WEIGHTS_ENV}" if os.environ.get(WEIGHTS_ENV) else None
    path = resolve_weights_path(path)
    if source and not path.is_file():
        raise WeightsError(f"{path} (from {source}): no such file; point {source} at the VGG19 .h5 weights file")
    weights = read_weights(path, last)
    return weights, path, sha256(path)


def resolve_precision(precision: str) -> str:
    """ "auto": bfloat16 where it is fast (a GPU, or a CPU with AMX or AVX512-BF16), else float32."""
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "bfloat16"
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if " amx_bf16" in flags or " avx512_bf16" in flags else "float32"


class VGG19(tf.Module):
    """VGG19 convolutions as variables; calling it maps images in [0, 1] to layer activations.

    `precision` is the arithmetic of the convolutions: bfloat16 runs several times faster on
    CPUs with AMX or AVX512-BF16 (and on GPUs). The activations come out in that precision; the
    losses take them to float32 where they need it, and the optimiser stays in float32.
    """

    def __init__(self, weights: dict[str, tuple[np.ndarray, np.ndarray]], precision: str = "float32"):
        super().__init__(name="vgg19")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
        self.dtype = tf.dtypes.as_dtype(precision)
        self.kernels = {
            n: tf.Variable(tf.cast(k, self.dtype), trainable=False, name=f"{n}_kernel") for n, (k, _) in weights.items()
        }
        self.biases = {
            n: tf.Variable(tf.cast(b, self.dtype), trainable=False, name=f"{n}_bias") for n, (_, b) in weights.items()
        }

    def __call__(
        self, image: tf.Tensor, layers: tuple[str, ...], avg_pool: tf.Tensor | bool = False
    ) -> dict[str, tf.Tensor]:
        """Post-ReLU activations of `layers` for an image batch [N, H, W, 3] in [0, 1], in the
        network's precision (`dtype`).

        `avg_pool` (a bool tensor) swaps the 2x2 max poolings for average poolings, as Gatys et al.
        suggest; one network serves both, the choice is made per request in the graph.
        """
        x = tf.cast(tf.reverse(image * 255.0, axis=[-1]) - tf.constant(BGR_MEANS), self.dtype)
        outputs, wanted = {}, set(layers)
        for name in LAYERS:
            if name == "pool":
                x = _pool(x, avg_pool)
                continue
            x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, self.kernels[name], 1, "SAME"), self.biases[name]))
            if name in wanted:
                outputs[name] = x
                if len(outputs) == len(wanted):
                    return outputs
        raise ValueError(f"unknown VGG19 layers: {sorted(wanted - set(outputs))}")


def _pool(x: tf.Tensor, avg: tf.Tensor | bool) -> tf.Tensor:
    def average():
        return tf.nn.avg_pool2d(x, ksize=2, strides=2, padding="VALID")

    def maximum():
        return tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")

    if tf.is_tensor(avg):
        return tf.cond(avg, average, maximum)
    return average() if avg else maximum()
