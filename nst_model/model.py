"""The style-transfer tf.Module and its servable signatures.

The whole optimisation runs in the graph: targets once per call, then a tf.while_loop whose
carry holds everything that belongs to one request (image, Adam moments, step count), so that
concurrent requests on one server Session never share state.

Signatures:
- serving_default: encoded images in, PNG and losses out.
- pixels: float32 pixels in and out, plus resumable optimiser state, for chunked runs.
- decode: encoded image to the exact pixels serving_default would use, for callers of pixels.
"""

from __future__ import annotations

import typing

import numpy as np
import tensorflow as tf

from nst_model import inputs, losses
from nst_model.adam import adam_step
from nst_model.options import CONTENT_LAYER, DEFAULTS, MAX_SIDE, MAX_STEPS, MIN_SIDE, STYLE_LAYERS
from nst_model.vgg import VGG19

SIGNATURES = ("serving_default", "pixels", "decode")


class Losses(typing.NamedTuple):
    loss: tf.Tensor
    style_loss: tf.Tensor
    content_loss: tf.Tensor
    tv_loss: tf.Tensor


class Targets(typing.NamedTuple):
    style_grams: list[tf.Tensor]
    content_features: tf.Tensor


def _dtype(name: str) -> tf.DType:
    return tf.int32 if isinstance(DEFAULTS[name], int) else tf.float32


# Tensor defaults on the tf.functions become PlaceholderWithDefault in the SignatureDef.
_D = {name: tf.constant(value, _dtype(name)) for name, value in DEFAULTS.items()}
_NO_STATE = tf.zeros([1, 0, 0, 3])
_ZERO = tf.constant(0)


def _spec(name: str) -> tf.TensorSpec:
    return tf.TensorSpec([], _dtype(name), name=name)


_PIXELS = tf.TensorSpec([1, None, None, 3], tf.float32)
_LOSS_SPECS = [_spec(n) for n in ("style_weight", "content_weight", "tv_weight", "learning_rate")]


class StyleTransfer(tf.Module):
    """Gatys et al. style transfer with the TF2 tutorial's objective and Adam, servable."""

    def __init__(self, weights: dict[str, tuple[np.ndarray, np.ndarray]]):
        super().__init__(name="style_transfer")
        self.vgg = VGG19(weights)

    # ---- the algorithm: tensors in, tensors out --------------------------------------------

    def targets(self, content: tf.Tensor, style: tf.Tensor) -> Targets:
        style_features = self.vgg(style, STYLE_LAYERS)
        return Targets(
            [losses.gram(style_features[n]) for n in STYLE_LAYERS],
            self.vgg(content, (CONTENT_LAYER,))[CONTENT_LAYER],
        )

    def objective(self, image: tf.Tensor, targets: Targets, weights: dict[str, tf.Tensor]) -> Losses:
        features = self.vgg(image, (*STYLE_LAYERS, CONTENT_LAYER))
        grams = [losses.gram(features[n]) for n in STYLE_LAYERS]
        style = losses.style_loss(grams, targets.style_grams, weights["style_weight"])
        content = losses.content_loss(features[CONTENT_LAYER], targets.content_features, weights["content_weight"])
        tv = losses.tv_loss(image, weights["tv_weight"])
        return Losses(style + content + tv, style, content, tv)

    def optimise(
        self,
        content: tf.Tensor,
        style: tf.Tensor,
        steps: tf.Tensor,
        weights: dict[str, tf.Tensor],
        state: tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor],
    ) -> tuple[tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], Losses]:
        """`steps` Adam steps on the image from `state` = (image, m, v, adam step).

        Returns the new state and the losses of the final image. The style image is first
        resized to the content's longest side, so both are seen at the same scale.
        """
        style = inputs.resize_longest_side(style, tf.reduce_max(tf.shape(content)[1:3]))
        targets = self.targets(content, style)

        def body(i, image, m, v, step):
            with tf.GradientTape() as tape:
                tape.watch(image)
                loss = self.objective(image, targets, weights).loss
            image, m, v, step = adam_step(image, tape.gradient(loss, image), m, v, step, weights["learning_rate"])
            return i + 1, tf.clip_by_value(image, 0.0, 1.0), m, v, step

        _, *state = tf.while_loop(lambda i, *_: i < steps, body, (tf.constant(0), *state))
        return tuple(state), self.objective(state[0], targets, weights)

    # ---- signatures: validate, run, encode ---------------------------------------------------

    def _run(self, content, style, steps, style_weight, content_weight, tv_weight, learning_rate, state=None):
        content = inputs.working_size(content, "content")
        weights = {
            "style_weight": inputs.non_negative(style_weight, "style_weight"),
            "content_weight": inputs.non_negative(content_weight, "content_weight"),
            "tv_weight": inputs.non_negative(tv_weight, "tv_weight"),
            "learning_rate": inputs.non_negative(learning_rate, "learning_rate", positive=True),
        }
        steps = inputs.int_in_range(steps, "steps", 0, MAX_STEPS)
        zeros = tf.zeros_like(content)
        if state is None:
            state = (content, zeros, zeros, tf.constant(0))
        else:
            image, m, v, step = state
            state = (
                inputs.optional_state(image, content, content, "image"),
                inputs.optional_state(m, content, zeros, "adam_m"),
                inputs.optional_state(v, content, zeros, "adam_v"),
                inputs.int_in_range(step, "adam_step", 0, 2**30),
            )
        (image, m, v, step), result = self.optimise(content, style, steps, weights, state)
        png = tf.io.encode_png(tf.image.convert_image_dtype(image[0], tf.uint8, saturate=True))
        outputs = {"image_bytes": png, **result._asdict()}
        return outputs, (image, m, v, step)

    def _decode(self, image: tf.Tensor, max_dim: tf.Tensor, name: str) -> tf.Tensor:
        max_dim = inputs.int_in_range(max_dim, "max_dim", MIN_SIDE, MAX_SIDE)
        return inputs.resize_longest_side(inputs.decode(image, name), max_dim)

    @tf.function(
        input_signature=[
            tf.TensorSpec([], tf.string),
            tf.TensorSpec([], tf.string),
            _spec("steps"),
            _spec("max_dim"),
            *_LOSS_SPECS,
        ]
    )
    def serving_default(
        self,
        content,
        style,
        steps=_D["steps"],
        max_dim=_D["max_dim"],
        style_weight=_D["style_weight"],
        content_weight=_D["content_weight"],
        tv_weight=_D["tv_weight"],
        learning_rate=_D["learning_rate"],
    ):
        """Encoded content and style images in; the PNG of the result and its losses out."""
        content = self._decode(content, max_dim, "content")
        style = self._decode(style, max_dim, "style")
        outputs, _ = self._run(content, style, steps, style_weight, content_weight, tv_weight, learning_rate)
        return outputs

    @tf.function(
        input_signature=[
            _PIXELS,
            _PIXELS,
            _spec("steps"),
            *_LOSS_SPECS,
            _PIXELS,
            _PIXELS,
            _PIXELS,
            tf.TensorSpec([], tf.int32),
        ]
    )
    def pixels(
        self,
        content,
        style,
        steps=_D["steps"],
        style_weight=_D["style_weight"],
        content_weight=_D["content_weight"],
        tv_weight=_D["tv_weight"],
        learning_rate=_D["learning_rate"],
        image=_NO_STATE,
        adam_m=_NO_STATE,
        adam_v=_NO_STATE,
        adam_step=_ZERO,
    ):
        """Float pixels in and out, resumable: feed the state outputs back to continue a run.

        Empty `image`, `adam_m`, `adam_v` (the defaults) start a run from the content image.
        """
        content = inputs.pixels(content, "content")
        style = inputs.pixels(style, "style")
        outputs, (image, m, v, step) = self._run(
            content,
            style,
            steps,
            style_weight,
            content_weight,
            tv_weight,
            learning_rate,
            state=(image, adam_m, adam_v, adam_step),
        )
        return {**outputs, "image": image, "adam_m": m, "adam_v": v, "adam_step": step}

    @tf.function(input_signature=[tf.TensorSpec([], tf.string), _spec("max_dim")])
    def decode(self, image, max_dim=_D["max_dim"]):
        """The pixels serving_default would optimise for this encoded image and max_dim."""
        return {"pixels": self._decode(image, max_dim, "image")}

    def signatures(self) -> dict[str, tf.types.experimental.PolymorphicFunction]:
        """For tf.saved_model.save; passing the tf.functions (not concrete functions) keeps
        their defaults as PlaceholderWithDefault, so the server treats those inputs as optional."""
        return {name: getattr(self, name) for name in SIGNATURES}
