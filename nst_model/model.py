"""The style-transfer tf.Module and its servable signatures.

The whole optimisation runs in the graph: targets once per call, then a tf.while_loop whose
carry holds everything that belongs to one request (image, Adam moments, step count), so that
concurrent requests on one server Session never share state.

Signatures:
- serving_default: encoded images in, PNG and losses out.
- pixels: float32 pixels in and out, plus resumable optimiser state, for chunked runs.
- decode: encoded image to the exact pixels serving_default would use, for callers of pixels.

Every option of nst_model.options is an optional input of serving_default and pixels (pixels
takes all but max_dim), with its default written into the SignatureDef.
"""

from __future__ import annotations

import typing
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from nst_model import colors, inputs, lbfgs, losses
from nst_model.adam import adam_step
from nst_model.options import (
    BY_NAME,
    CONTENT_LAYERS,
    DEFAULTS,
    INITS,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    NOISE_SCALE,
    OPTIMIZERS,
    POOLINGS,
    STYLE_LAYERS,
    STYLE_SCALE_RANGE,
)
from nst_model.vgg import BGR_MEANS, CHANNELS, VGG19

SIGNATURES = ("serving_default", "pixels", "decode")
StyleAt = Callable[[tf.Tensor], tf.Tensor]  # style index -> that style's pixels [1, H, W, 3]


class Losses(typing.NamedTuple):
    loss: tf.Tensor
    style_loss: tf.Tensor
    content_loss: tf.Tensor
    tv_loss: tf.Tensor


class Targets(typing.NamedTuple):
    style_grams: list[tf.Tensor]  # the blend of the styles' Gram matrices, per style layer
    content_features: list[tf.Tensor]  # per layer of CONTENT_LAYERS


class Controls(typing.NamedTuple):
    """One request's validated options, as the algorithm uses them."""

    weights: dict[str, tf.Tensor]  # style_weight, content_weight, tv_weight, learning_rate
    style_scale: tf.Tensor
    style_blend: tf.Tensor  # [styles], sums to 1
    layer_weights: tf.Tensor  # [len(STYLE_LAYERS)], sums to 1
    content_layer: tf.Tensor  # index into CONTENT_LAYERS
    avg_pool: tf.Tensor
    preserve_colors: tf.Tensor
    init: tf.Tensor  # index into INITS
    seed: tf.Tensor
    optimizer: tf.Tensor  # index into OPTIMIZERS


class State(typing.NamedTuple):
    """Everything a run carries from step to step, and hands back for resuming."""

    image: tf.Tensor  # [1, H, W, 3], the raw optimised image
    adam_m: tf.Tensor  # [1, H, W, 3] Adam's moments and step count
    adam_v: tf.Tensor
    adam_step: tf.Tensor
    lbfgs_s: tf.Tensor  # [k, H, W, 3], L-BFGS's last k steps and gradient changes, oldest first
    lbfgs_y: tf.Tensor


def _dtype(name: str) -> tf.DType:
    return tf.dtypes.as_dtype(BY_NAME[name].dtype)


def _spec(name: str) -> tf.TensorSpec:
    """Vectors are declared of any length: a declared length would let TensorFlow fold the length
    check into a constant, and the server passes whatever length a client sends."""
    return tf.TensorSpec([None] if BY_NAME[name].is_vector else [], _dtype(name), name=name)


# Tensor defaults on the tf.functions become PlaceholderWithDefault in the SignatureDef.
_D = {name: tf.constant(value, _dtype(name)) for name, value in DEFAULTS.items()}
_NO_STATE = tf.zeros([1, 0, 0, 3])
_NO_SIZES = tf.zeros([0, 2], tf.int32)
_NO_HISTORY = tf.zeros([0, 0, 0, 3])
_ZERO = tf.constant(0)

_PIXELS = tf.TensorSpec([1, None, None, 3], tf.float32)
_LOSS_NAMES = ("style_weight", "content_weight", "tv_weight", "learning_rate")
_LOSS_SPECS = [_spec(n) for n in _LOSS_NAMES]
_CONTROL_NAMES = (
    "style_scale",
    "style_weights",
    "preserve_colors",
    "init",
    "seed",
    "pooling",
    "style_layer_weights",
    "content_layer",
    "optimizer",
)
_CONTROL_SPECS = [_spec(n) for n in _CONTROL_NAMES]


def _options(arguments: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """The option inputs among a signature's arguments (its `locals()`), by name."""
    return {name: arguments[name] for name in (*_LOSS_NAMES, *_CONTROL_NAMES)}


def validate(options: dict[str, tf.Tensor], num_styles: tf.Tensor) -> Controls:
    """The checked form of every option but steps and max_dim; bad values fail the run."""
    return Controls(
        weights={
            "style_weight": inputs.non_negative(options["style_weight"], "style_weight"),
            "content_weight": inputs.non_negative(options["content_weight"], "content_weight"),
            "tv_weight": inputs.non_negative(options["tv_weight"], "tv_weight"),
            "learning_rate": inputs.non_negative(options["learning_rate"], "learning_rate", positive=True),
        },
        style_scale=inputs.float_in_range(options["style_scale"], "style_scale", *STYLE_SCALE_RANGE),
        style_blend=tf.cond(
            inputs.runtime_size(options["style_weights"]) > 0,
            lambda: inputs.blend_weights(options["style_weights"], "style_weights", num_styles, "style"),
            lambda: tf.fill([num_styles], 1.0 / tf.cast(num_styles, tf.float32)),
        ),
        layer_weights=inputs.blend_weights(
            options["style_layer_weights"], "style_layer_weights", len(STYLE_LAYERS), "style layer"
        ),
        content_layer=inputs.choice(options["content_layer"], "content_layer", CONTENT_LAYERS),
        avg_pool=tf.equal(inputs.choice(options["pooling"], "pooling", POOLINGS), POOLINGS.index("avg")),
        preserve_colors=inputs.scalar(options["preserve_colors"], "preserve_colors"),
        init=inputs.choice(options["init"], "init", INITS),
        seed=inputs.scalar(options["seed"], "seed"),
        optimizer=inputs.choice(options["optimizer"], "optimizer", OPTIMIZERS),
    )


def noise_image(content: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """VGG's mean colour plus Gaussian noise of a tenth of the content's standard deviation.

    Stateless: the same seed gives the same noise, whatever else the server runs meanwhile.
    """
    mean_rgb = tf.constant(BGR_MEANS[::-1]) / 255.0
    noise = tf.random.stateless_normal(tf.shape(content), seed=tf.stack([seed, 0]))
    return tf.clip_by_value(mean_rgb + NOISE_SCALE * tf.math.reduce_std(content) * noise, 0.0, 1.0)


def initial_image(content: tf.Tensor, first_style: Callable[[], tf.Tensor], controls: Controls) -> tf.Tensor:
    """Where the optimisation starts: the content, noise, or the first style at the content's size."""
    return tf.switch_case(
        controls.init,
        {
            INITS.index("content"): lambda: content,
            INITS.index("noise"): lambda: noise_image(content, controls.seed),
            INITS.index("style"): lambda: tf.clip_by_value(
                tf.image.resize(first_style(), tf.shape(content)[1:3], antialias=True), 0.0, 1.0
            ),
        },
    )


class StyleTransfer(tf.Module):
    """Gatys et al. style transfer with the TF2 tutorial's objective and Adam, servable."""

    def __init__(self, weights: dict[str, tuple[np.ndarray, np.ndarray]], precision: str = "float32"):
        super().__init__(name="style_transfer")
        self.vgg = VGG19(weights, precision)

    # ---- the algorithm: tensors in, tensors out --------------------------------------------

    def targets(self, content: tf.Tensor, style_at: StyleAt, num_styles: tf.Tensor, controls: Controls) -> Targets:
        """The blend of the styles' Gram matrices, and the content's features.

        Each style is first resized to style_scale times the content's longest side, so the scale
        of its brush strokes relative to the content is the user's choice, not the files'.
        """
        longest = tf.reduce_max(tf.shape(content)[1:3])
        longest = tf.cast(tf.round(controls.style_scale * tf.cast(longest, tf.float32)), tf.int32)

        def add_style(i, blend):
            style = inputs.scaled_style(style_at(i), longest)
            features = self.vgg(style, STYLE_LAYERS, controls.avg_pool)
            return i + 1, [
                b + controls.style_blend[i] * losses.gram(features[n]) for b, n in zip(blend, STYLE_LAYERS, strict=True)
            ]

        zeros = [tf.zeros([1, CHANNELS[n[:6]], CHANNELS[n[:6]]]) for n in STYLE_LAYERS]
        _, grams = tf.while_loop(lambda i, _: i < num_styles, add_style, (tf.constant(0), zeros))
        features = self.vgg(content, CONTENT_LAYERS, controls.avg_pool)
        return Targets(grams, [features[n] for n in CONTENT_LAYERS])

    def objective(self, image: tf.Tensor, targets: Targets, controls: Controls) -> Losses:
        weights = controls.weights
        features = self.vgg(image, (*STYLE_LAYERS, *CONTENT_LAYERS), controls.avg_pool)
        grams = [losses.gram(features[n]) for n in STYLE_LAYERS]
        style = losses.style_loss(grams, targets.style_grams, weights["style_weight"], controls.layer_weights)
        per_layer = [
            losses.content_loss(features[n], target, weights["content_weight"])
            for n, target in zip(CONTENT_LAYERS, targets.content_features, strict=True)
        ]
        content = tf.gather(tf.stack(per_layer), controls.content_layer)
        tv = losses.tv_loss(image, weights["tv_weight"])
        return Losses(style + content + tv, style, content, tv)

    def optimise(self, targets: Targets, steps: tf.Tensor, controls: Controls, state: State) -> tuple[State, Losses]:
        """`steps` steps of the chosen optimiser from `state`; the new state and its losses.

        Each optimiser carries its own part of the state and passes the other's on unchanged.
        """

        def value_and_grad(image):
            with tf.GradientTape() as tape:
                tape.watch(image)
                terms = self.objective(image, targets, controls)
            return terms.loss, tape.gradient(terms.loss, image), terms

        def adam() -> tuple[State, Losses]:
            def body(i, image, m, v, step):
                _, grad, _ = value_and_grad(image)
                image, m, v, step = adam_step(image, grad, m, v, step, controls.weights["learning_rate"])
                return i + 1, tf.clip_by_value(image, 0.0, 1.0), m, v, step

            initial = (tf.constant(0), state.image, state.adam_m, state.adam_v, state.adam_step)
            _, *carried = tf.while_loop(lambda i, *_: i < steps, body, initial)
            # Adam's last gradient was taken before its last update: the result needs its own pass.
            return State(*carried, state.lbfgs_s, state.lbfgs_y), self.objective(carried[0], targets, controls)

        def projected_lbfgs() -> tuple[State, Losses]:
            # lbfgs works on tensors shaped like the image: pairs [k, 1, H, W, 3].
            start = lbfgs.start(state.image, value_and_grad, state.lbfgs_s[:, None], state.lbfgs_y[:, None])
            _, end = tf.while_loop(
                lambda i, _: i < steps, lambda i, s: (i + 1, lbfgs.step(s, value_and_grad)), (tf.constant(0), start)
            )
            s, y = lbfgs.history(end)
            # Its line search evaluated the objective at the point it accepted: no extra pass.
            return State(end.x, state.adam_m, state.adam_v, state.adam_step, s[:, 0], y[:, 0]), end.extra

        use_lbfgs = tf.equal(controls.optimizer, OPTIMIZERS.index("lbfgs"))
        new_state, terms = tf.cond(use_lbfgs, projected_lbfgs, adam)
        return State(*new_state), Losses(*terms)

    # ---- signatures: validate, run, encode ---------------------------------------------------

    def _run(self, content, style_at, num_styles, steps, options, state=None):
        """Validate, optimise from `state` (None: from the init image), encode the shown image.

        The state image stays the raw optimised one so that a chunked run resumes exactly; only
        the PNG gets the content's colours back when preserve_colors is set.
        """
        content = inputs.working_size(content, "content")
        controls = validate(options, num_styles)
        steps = inputs.int_in_range(steps, "steps", 0, MAX_STEPS)
        zeros = tf.zeros_like(content)
        start = initial_image(content, lambda: style_at(0), controls)
        no_history = tf.zeros(tf.concat([[0], tf.shape(content)[1:]], 0))
        if state is None:
            state = State(start, zeros, zeros, tf.constant(0), no_history, no_history)
        else:
            s = inputs.optional_history(state.lbfgs_s, content, lbfgs.HISTORY, "lbfgs_s")
            y = inputs.optional_history(state.lbfgs_y, content, lbfgs.HISTORY, "lbfgs_y")
            y = inputs.require(y, tf.equal(tf.shape(s)[0], tf.shape(y)[0]), "lbfgs_s and lbfgs_y must pair up")
            state = State(
                inputs.optional_state(state.image, content, start, "image"),
                inputs.optional_state(state.adam_m, content, zeros, "adam_m"),
                inputs.optional_state(state.adam_v, content, zeros, "adam_v"),
                inputs.int_in_range(state.adam_step, "adam_step", 0, 2**30),
                s,
                y,
            )
        targets = self.targets(content, style_at, num_styles, controls)
        state, result = self.optimise(targets, steps, controls, state)
        shown = tf.cond(controls.preserve_colors, lambda: colors.keep_colors(state.image, content), lambda: state.image)
        png = tf.io.encode_png(tf.image.convert_image_dtype(shown[0], tf.uint8, saturate=True))
        outputs = {"image_bytes": png, **result._asdict()}
        return outputs, state

    def _decode(self, image: tf.Tensor, max_dim: tf.Tensor, name: str) -> tf.Tensor:
        max_dim = inputs.int_in_range(max_dim, "max_dim", MIN_SIDE, MAX_SIDE)
        return inputs.resize_longest_side(inputs.decode(image, name), max_dim)

    @tf.function(
        input_signature=[
            tf.TensorSpec([], tf.string),
            tf.TensorSpec(None, tf.string),
            _spec("steps"),
            _spec("max_dim"),
            *_LOSS_SPECS,
            *_CONTROL_SPECS,
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
        style_scale=_D["style_scale"],
        style_weights=_D["style_weights"],
        preserve_colors=_D["preserve_colors"],
        init=_D["init"],
        seed=_D["seed"],
        pooling=_D["pooling"],
        style_layer_weights=_D["style_layer_weights"],
        content_layer=_D["content_layer"],
        optimizer=_D["optimizer"],
    ):
        """Encoded content and style images in; the PNG of the result and its losses out.

        `style` is one encoded image or a vector of them, blended by `style_weights`.
        """
        options = _options(locals())
        content = self._decode(content, max_dim, "content")
        styles = inputs.encoded_styles(style, "style")
        outputs, _ = self._run(
            content, lambda i: self._decode(styles[i], max_dim, "style"), tf.size(styles), steps, options
        )
        return outputs

    @tf.function(
        input_signature=[
            _PIXELS,
            tf.TensorSpec([None, None, None, 3], tf.float32),
            tf.TensorSpec([None, 2], tf.int32),
            _spec("steps"),
            *_LOSS_SPECS,
            *_CONTROL_SPECS,
            _PIXELS,
            _PIXELS,
            _PIXELS,
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([None, None, None, 3], tf.float32),
            tf.TensorSpec([None, None, None, 3], tf.float32),
        ]
    )
    def pixels(
        self,
        content,
        style,
        style_sizes=_NO_SIZES,
        steps=_D["steps"],
        style_weight=_D["style_weight"],
        content_weight=_D["content_weight"],
        tv_weight=_D["tv_weight"],
        learning_rate=_D["learning_rate"],
        style_scale=_D["style_scale"],
        style_weights=_D["style_weights"],
        preserve_colors=_D["preserve_colors"],
        init=_D["init"],
        seed=_D["seed"],
        pooling=_D["pooling"],
        style_layer_weights=_D["style_layer_weights"],
        content_layer=_D["content_layer"],
        optimizer=_D["optimizer"],
        image=_NO_STATE,
        adam_m=_NO_STATE,
        adam_v=_NO_STATE,
        adam_step=_ZERO,
        lbfgs_s=_NO_HISTORY,
        lbfgs_y=_NO_HISTORY,
    ):
        """Float pixels in and out, resumable: feed the state outputs back to continue a run.

        `style` is a batch [styles, H, W, 3]: style i fills the top-left `style_sizes[i]`
        (height, width) of it, the rest being padding; empty sizes (the default) mean every
        style fills the batch. Empty state inputs (the defaults) start a run from the `init`
        image; the state outputs (see State) are the raw optimised image, before any
        preserve_colors, which applies to `image_bytes` only, and each optimiser's own state.
        """
        options = _options(locals())
        content = inputs.pixels(content, "content")
        style, sizes = inputs.style_batch(style, style_sizes, "style")
        outputs, state = self._run(
            content,
            lambda i: tf.ensure_shape(style[i : i + 1, : sizes[i, 0], : sizes[i, 1]], [1, None, None, 3]),
            tf.shape(style)[0],
            steps,
            options,
            state=State(image, adam_m, adam_v, adam_step, lbfgs_s, lbfgs_y),
        )
        return {**outputs, **state._asdict()}

    @tf.function(input_signature=[tf.TensorSpec([], tf.string), _spec("max_dim")])
    def decode(self, image, max_dim=_D["max_dim"]):
        """The pixels serving_default would optimise for this encoded image and max_dim."""
        return {"pixels": self._decode(image, max_dim, "image")}

    def signatures(self) -> dict[str, tf.types.experimental.PolymorphicFunction]:
        """For tf.saved_model.save; passing the tf.functions (not concrete functions) keeps
        their defaults as PlaceholderWithDefault, so the server treats those inputs as optional."""
        return {name: getattr(self, name) for name in SIGNATURES}
