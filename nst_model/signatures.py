"""The servable signatures: input lists, their defaults, their checks, and the outputs.

- serving_default: encoded images (and optionally a region mask) in, PNG and losses out.
- pixels: float32 pixels in and out, plus the resumable state, for chunked runs.
- decode: encoded image to the exact pixels serving_default would use, for callers of pixels.
- limits: no inputs; the limits this export enforces (nst-export --max-side, --max-steps).

Every option of nst_model.options is an optional input of serving_default and pixels (pixels
takes all but max_dim), its default written into the SignatureDef (PlaceholderWithDefault), so
the stock server fills in what a request leaves out. Inputs are declared of any shape: the
server checks no shapes, and a declared shape would be checked where the error cannot name the
input; every shape is checked in the graph instead, with a message that does. Each export writes
its own defaults (steps and max_dim no higher than its limits), so the functions below are traced
per Servable, with those defaults.
"""

from __future__ import annotations

import inspect

import tensorflow as tf

from nst_model import decoders, inputs, lbfgs
from nst_model.model import (
    Controls,
    Regions,
    State,
    StyleAt,
    StyleTransfer,
    Targets,
    content_features_shape,
    initial_state,
    regions,
    style_blend,
    validate,
)
from nst_model.options import BY_NAME, MAX_STEPS, MIN_SIDE, OPTIONS, PIXELS_OPTIONS, Limits
from nst_model.session import DEFAULT_SIGNATURE

SIGNATURES = (DEFAULT_SIGNATURE, "pixels", "decode", "limits")
_NO_IMAGE = tf.zeros([1, 0, 0, 3])
_NO_PAIRS = tf.zeros([0, 0, 0, 3])
_NO_STYLE = tf.zeros([0, 0, 0, 3])
_NO_SIZES = tf.zeros([0, 2], tf.int32)
_NO_VECTOR = tf.zeros([0])
_NO_FEATURES = tf.zeros([1, 0, 0, 0])
_ZERO = tf.constant(0)
_NO_MASK = tf.constant("")
_REQUIRED = inspect.Parameter.empty
# Each signature's inputs, in order: an option by its name, its dtype and default the table's
# (nst_model.options, the default lowered to the export's limits), else (name, dtype, default).
_INPUTS: dict[str, tuple[str | tuple[str, tf.DType, object], ...]] = {
    DEFAULT_SIGNATURE: (
        ("content", tf.string, _REQUIRED),
        ("style", tf.string, _REQUIRED),
        ("mask", tf.string, _NO_MASK),
        *(o.name for o in OPTIONS),
    ),
    "pixels": (
        ("content", tf.float32, _REQUIRED),
        ("style", tf.float32, _NO_STYLE),
        ("style_sizes", tf.int32, _NO_SIZES),
        ("mask", tf.string, _NO_MASK),
        "steps",
        *PIXELS_OPTIONS,
        ("image", tf.float32, _NO_IMAGE),
        ("adam_m", tf.float32, _NO_IMAGE),
        ("adam_v", tf.float32, _NO_IMAGE),
        ("adam_step", tf.int32, _ZERO),
        ("lbfgs_s", tf.float32, _NO_PAIRS),
        ("lbfgs_y", tf.float32, _NO_PAIRS),
        ("lbfgs_grad", tf.float32, _NO_IMAGE),
        ("lbfgs_losses", tf.float32, _NO_VECTOR),
        ("style_targets", tf.float32, _NO_VECTOR),
        ("content_target", tf.float32, _NO_FEATURES),
    ),
    "decode": (("image", tf.string, _REQUIRED), "max_dim"),
    "limits": (),
}


def _signature_function(
    servable: Servable, name: str, defaults: dict[str, object]
) -> tf.types.experimental.PolymorphicFunction:
    """The tf.function of signature `name`: Servable._<name> called with the inputs of _INPUTS[name].

    tf.function names the SignatureDef's inputs after the function's parameters and writes their
    Python defaults into it (PlaceholderWithDefault: the stock server fills in what a request leaves
    out), so the parameters are made here, from the table, with the export's own `defaults`. Inputs
    are declared of any shape (see above)."""
    parameters, specs = [], []
    for entry in _INPUTS[name]:
        if isinstance(entry, str):
            option = BY_NAME[entry]
            entry = (entry, option.dtype, tf.constant(defaults[entry], option.dtype))
        alias, dtype, default = entry
        parameters.append(inspect.Parameter(alias, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
        specs.append(tf.TensorSpec(None, dtype))
    signature = inspect.Signature(parameters)
    body = getattr(servable, f"_{name}")

    def function(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return body(**bound.arguments)

    function.__name__ = name
    function.__signature__ = signature
    return tf.function(function, input_signature=specs)


def _state(given: State, content: tf.Tensor, start: State) -> State:
    """The state inputs, checked against the content and the ranges they can take; empty ones
    take their value from `start`."""
    s = inputs.optional_history(given.lbfgs_s, content, lbfgs.HISTORY, "lbfgs_s", -1.0, 1.0)
    y = inputs.optional_history(given.lbfgs_y, content, lbfgs.HISTORY, "lbfgs_y")
    y = inputs.require(y, tf.equal(tf.shape(s)[0], tf.shape(y)[0]), "lbfgs_s and lbfgs_y must pair up")
    grad = inputs.optional_state(given.lbfgs_grad, content, start.lbfgs_grad, "lbfgs_grad")
    losses = inputs.optional_vector(given.lbfgs_losses, 4, "lbfgs_losses", 0.0)
    image = inputs.optional_state(given.image, content, start.image, "image", 0.0, 1.0)
    known = inputs.runtime_size(given.lbfgs_losses) > 0
    losses = inputs.require(
        losses,
        tf.equal(known, inputs.runtime_size(given.lbfgs_grad) > 0)
        & (tf.logical_not(known) | (inputs.runtime_size(given.image) > 0)),
        "lbfgs_grad and lbfgs_losses go together, with the image they belong to",
    )
    return State(
        image,
        inputs.optional_state(given.adam_m, content, start.adam_m, "adam_m"),
        inputs.optional_state(given.adam_v, content, start.adam_v, "adam_v", 0.0),
        inputs.int_in_range(given.adam_step, "adam_step", 0, 2**30),
        s,
        y,
        grad,
        losses,
    )


class Servable(tf.Module):
    """The signatures the server runs, around one StyleTransfer, within `limits`."""

    def __init__(self, model: StyleTransfer, limits: Limits | None = None):
        super().__init__(name="servable")
        self.model = model
        self.bounds = limits or Limits()  # the signature `limits` reports them
        defaults = self.bounds.defaults()
        for name in SIGNATURES:
            setattr(self, name, _signature_function(self, name, defaults))

    def _max_dim(self, max_dim: tf.Tensor) -> tf.Tensor:
        max_side = self.bounds.max_side
        return inputs.int_in_range(max_dim, "max_dim", MIN_SIDE, max_side, inputs.limit_note(max_side))

    def _decode_image(self, image: tf.Tensor, max_dim: tf.Tensor, name: str) -> tf.Tensor:
        return inputs.resize_longest_side(decoders.decode(image, name), self._max_dim(max_dim))

    def _checked_first(
        self, content: tf.Tensor, styles: tf.Tensor, max_dim: tf.Tensor, controls: Controls, steps: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The encoded content and styles, usable only once every check of the request has passed, its
        sizes predicted from the images' headers: a refused request decodes, resizes and runs nothing.
        (The checks on the decoded images stay, for what a header cannot tell.) A header that declares
        no size predicts nothing: its decoder refuses it."""
        content, content_size = decoders.header(content, "content")
        style_sizes = tf.map_fn(lambda s: decoders.header(s, "style")[1], styles, fn_output_signature=tf.int64)
        max_dim = self._max_dim(max_dim)
        content_sides = inputs.scaled_sides(content_size, max_dim)
        content_sides = tf.where(tf.reduce_all(content_size > 0), content_sides, max_dim)
        content_sides = inputs.sides_fit(content_sides, content_sides, "content", self.bounds.max_side)
        style_sides = inputs.scaled_sides(style_sizes, max_dim)
        style_sides = tf.where(tf.reduce_all(style_sizes > 0, axis=1, keepdims=True), style_sides, max_dim)
        longest = inputs.style_longest(content_sides, controls.style_scale)
        checks = (
            inputs.styles_fit(style_sides, style_sides, longest, self.bounds.max_side),
            style_blend(controls, tf.size(styles)),
            controls,
            steps,
        )
        return inputs.after(content, checks), inputs.after(styles, checks)

    def _steps(self, steps: tf.Tensor) -> tf.Tensor:
        note = ""
        if self.bounds.max_steps < MAX_STEPS:
            note = " (lowered at export: nst-export --max-steps; send fewer steps per call, e.g. nst-client --chunk)"
        return inputs.int_in_range(steps, "steps", 0, self.bounds.max_steps, note)

    def _regions(
        self, mask: tf.Tensor, content: tf.Tensor, num_styles: tf.Tensor, controls: Controls
    ) -> tuple[Regions, tf.Tensor]:
        """The request's region mask, and the content, usable once the mask has passed its checks."""
        found = regions(mask, content, num_styles, controls, self.model.style_losses)
        return found, inputs.after(content, found.styles)

    def _serving_default(self, content, style, mask, **options):
        """Encoded content and style images in; the PNG of the result and its losses out.

        `style` is one encoded image or a vector of them, blended by `style_weights`; `mask`, an
        encoded image whose colours are regions, paints each with its own style (`mask_styles`).
        """
        controls = validate(options, self.model.style_losses)
        steps, max_dim = self._steps(options["steps"]), options["max_dim"]
        content, styles = self._checked_first(content, inputs.encoded_styles(style, "style"), max_dim, controls, steps)
        content = inputs.working_size(self._decode_image(content, max_dim, "content"), "content", self.bounds.max_side)
        found, content = self._regions(mask, content, tf.size(styles), controls)

        def style_at(i):
            return self._decode_image(styles[i], max_dim, "style")

        targets = self.model.targets(content, style_at, tf.size(styles), controls, found, self.bounds.max_side)
        start = initial_state(content, lambda: style_at(0), controls)
        png, terms, _, _ = self.model.stylize(content, targets, steps, controls, start)
        return {"image_bytes": png, **terms._asdict()}

    def _pixels(
        self,
        content,
        style,
        style_sizes,
        mask,
        image,
        adam_m,
        adam_v,
        adam_step,
        lbfgs_s,
        lbfgs_y,
        lbfgs_grad,
        lbfgs_losses,
        style_targets,
        content_target,
        **options,
    ):
        """Float pixels in and out, resumable: feed the state outputs back to continue a run.

        `style` is a batch [styles, H, W, 3]: style i fills the top-left `style_sizes[i]` (height,
        width) of it, the rest being padding; empty sizes (the default) mean every style fills the
        batch. `mask` is encoded, as in serving_default, and sent with every call of a masked run.
        Empty state inputs (the defaults) start a run from the `init` image. The outputs
        `style_targets` and `content_target`, fed back, spare the next call the targets (and the
        styles); the state outputs (see model.State) are the raw optimised image, before any
        preserve_colors (which applies to `image_bytes` only), and each optimiser's own state.
        `evaluations` [steps] says how many gradients each step cost (for the benchmark; 0 for the steps a
        stuck L-BFGS run skips).
        """
        controls = validate(options, self.model.style_losses)
        steps = self._steps(options["steps"])
        content = inputs.working_size(inputs.pixels(content, "content"), "content", self.bounds.max_side)
        sent_styles = tf.concat([inputs.runtime_shape(style), [0]], 0)[0]  # 0 for none (a resumed call)
        found, content = self._regions(mask, content, sent_styles, controls)

        def styles() -> tuple[StyleAt, tf.Tensor]:
            """The style images by index, and their count; checked only where they are used."""
            batch, sizes = inputs.style_batch(style, style_sizes, "style")

            def crop(i: tf.Tensor) -> tf.Tensor:
                return tf.ensure_shape(batch[i : i + 1, : sizes[i, 0], : sizes[i, 1]], [1, None, None, 3])

            return crop, tf.shape(batch)[0]

        known_style = inputs.optional_vector(
            style_targets, self.model.target_length(controls.style_loss, found), "style_targets"
        )
        features = inputs.optional_features(
            content_target, content_features_shape(content, controls.content_layer), "content_target"
        )
        given = inputs.runtime_size(known_style) > 0
        given = inputs.require(
            given,
            tf.equal(given, inputs.runtime_size(features) > 0),
            "style_targets and content_target go together",
        )

        def styles_checked() -> tf.Tensor:
            """The styles' checks, and that they fit once scaled, from their shapes: nothing is resized yet."""
            _, sizes = inputs.style_batch(style, style_sizes, "style")
            longest = inputs.style_longest(tf.shape(content)[1:3], controls.style_scale)
            checks = (
                inputs.styles_fit(sizes, sizes, longest, self.bounds.max_side),
                style_blend(controls, tf.shape(sizes)[0]),
            )
            return inputs.after(tf.constant(True), checks)

        # Every check passes before the first resize or VGG pass starts: a refused request costs nothing.
        content = inputs.after(content, controls, steps, given, tf.cond(given, lambda: given, styles_checked))
        targets = tf.cond(
            given,
            lambda: Targets(known_style, features, found),
            lambda: self.model.targets(content, *styles(), controls, found, self.bounds.max_side),
        )
        start = initial_state(content, lambda: styles()[0](0), controls)
        given_state = State(image, adam_m, adam_v, adam_step, lbfgs_s, lbfgs_y, lbfgs_grad, lbfgs_losses)
        state = _state(given_state, content, start)
        png, terms, state, evaluations = self.model.stylize(content, targets, steps, controls, state)
        return {
            "image_bytes": png,
            **terms._asdict(),
            **state._asdict(),
            "style_targets": targets.style,
            "content_target": targets.content_features,
            "evaluations": evaluations,
        }

    def _decode(self, image, max_dim):
        """The pixels serving_default would optimise for this encoded image and max_dim."""
        return {"pixels": self._decode_image(image, max_dim, "image")}

    def _limits(self):
        """The limits in force, so that a client can size its calls to them."""
        return {name: tf.constant(value, tf.int32) for name, value in self.bounds.as_dict().items()}

    def signatures(self) -> dict[str, tf.types.experimental.PolymorphicFunction]:
        """For tf.saved_model.save; passing the tf.functions (not concrete functions) keeps
        their defaults as PlaceholderWithDefault, so the server treats those inputs as optional."""
        return {name: getattr(self, name) for name in SIGNATURES}
