"""The reference algorithm as the TensorFlow 2 style-transfer tutorial writes it, for golden tests
and the benchmark: Keras VGG19, tf.keras.optimizers.Adam on a tf.Variable, clip after each step.

Written independently of nst_model (no shared code), so agreement means something.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

CONTENT_LAYERS = ["block5_conv2"]
STYLE_LAYERS = ["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1"]


def gram_matrix(input_tensor):
    result = tf.linalg.einsum("bijc,bijd->bcd", input_tensor, input_tensor)
    input_shape = tf.shape(input_tensor)
    num_locations = tf.cast(input_shape[1] * input_shape[2], tf.float32)
    return result / num_locations


class Reference:
    """One tutorial run: `step()` is the tutorial's train_step, `loss(image)` its objective."""

    def __init__(
        self, weights_path, content, style, style_weight=1e-2, content_weight=1e4, tv_weight=1e8, learning_rate=0.02
    ):
        vgg = tf.keras.applications.VGG19(include_top=False, weights=str(weights_path))
        vgg.trainable = False
        outputs = [vgg.get_layer(name).output for name in STYLE_LAYERS + CONTENT_LAYERS]
        self.model = tf.keras.Model([vgg.input], outputs)
        self.weights = (style_weight, content_weight, tv_weight)
        self.style_targets = self.extract(tf.constant(style))[0]
        self.content_targets = self.extract(tf.constant(content))[1]
        self.image = tf.Variable(content)
        self.opt = tf.keras.optimizers.Adam(learning_rate=learning_rate, beta_1=0.99, epsilon=1e-1)

    def extract(self, inputs):
        preprocessed = tf.keras.applications.vgg19.preprocess_input(inputs * 255.0)
        outputs = self.model(preprocessed)
        return [gram_matrix(o) for o in outputs[: len(STYLE_LAYERS)]], outputs[len(STYLE_LAYERS) :]

    @tf.function
    def loss(self, image):
        style_outputs, content_outputs = self.extract(image)
        style_weight, content_weight, tv_weight = self.weights
        style_loss = (
            tf.add_n([tf.reduce_mean((o - t) ** 2) for o, t in zip(style_outputs, self.style_targets, strict=True)])
            * style_weight
            / len(STYLE_LAYERS)
        )
        content_loss = (
            tf.add_n([tf.reduce_mean((o - t) ** 2) for o, t in zip(content_outputs, self.content_targets, strict=True)])
            * content_weight
            / len(CONTENT_LAYERS)
        )
        x_var = image[:, :, 1:, :] - image[:, :, :-1, :]
        y_var = image[:, 1:, :, :] - image[:, :-1, :, :]
        tv_loss = tv_weight * (tf.reduce_mean(x_var**2) + tf.reduce_mean(y_var**2))
        return style_loss + content_loss + tv_loss, style_loss, content_loss, tv_loss

    @tf.function
    def step(self):
        with tf.GradientTape() as tape:
            loss = self.loss(self.image)[0]
        grad = tape.gradient(loss, self.image)
        self.opt.apply_gradients([(grad, self.image)])
        self.image.assign(tf.clip_by_value(self.image, 0.0, 1.0))

    def adam_state(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(first moment, second moment, iterations) of the Keras optimizer."""
        (m,) = (v.numpy() for v in self.opt.variables if v.path.endswith("_momentum"))
        (v,) = (v.numpy() for v in self.opt.variables if v.path.endswith("_velocity"))
        return m, v, int(self.opt.iterations.numpy())

    def run(self, steps: int) -> np.ndarray:
        for _ in range(steps):
            self.step()
        return self.image.numpy()
