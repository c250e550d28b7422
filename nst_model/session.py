"""Run an exported SavedModel the way TensorFlow Serving does.

The server loads the `serve` MetaGraph into a TF1 Session and runs each request by the tensor
names in the SignatureDef, without converting dtypes or checking shapes. Python's `Session.run`
does both, so it would hide bugs the server shows; this calls the Session's C API directly.
"""

from __future__ import annotations

import os
import pathlib
import threading

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.client import pywrap_tf_session as c_api
from tensorflow.python.util import deprecation

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY  # "serving_default": a request naming none
WARMUP_FILE = pathlib.Path("assets.extra", "tf_serving_warmup_requests")  # in a version: replayed by the server at load


class ServingSession:
    """A SavedModel version loaded into a TF1 Session, as `tensorflow_model_server` loads it."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default(), deprecation.silence():  # the TF1 loader is the point here
            self.meta_graph: meta_graph_pb2.MetaGraphDef = tf.compat.v1.saved_model.loader.load(
                self.session, ["serve"], self.path
            )
        self.signatures = {k: v for k, v in self.meta_graph.signature_def.items() if not k.startswith("__")}
        # The server feeds a signature's defaults for the inputs a request leaves out, so every call of a
        # signature feeds the same inputs and the Session prepares one executor for them (seconds each).
        self._defaults = {
            name: {k: tf.make_ndarray(v) for k, v in sig.defaults.items()} for name, sig in self.signatures.items()
        }
        self._lock = threading.Lock()  # guards the count of runs in flight and the closing flag
        self._running = 0
        self._closing = False

    def signature(self, name: str = "") -> meta_graph_pb2.SignatureDef:
        """The SignatureDef of `name` ("" means serving_default); KeyError if unknown."""
        return self.signatures[name or DEFAULT_SIGNATURE]

    def run(
        self,
        signature_name: str,
        feeds: dict[str, np.ndarray],
        output_filter: list[str] | None = None,
        timeout_ms: int = 0,
        trace: config_pb2.RunMetadata | None = None,
    ) -> dict[str, np.ndarray]:
        """Feed arrays by signature input name, return the (filtered) outputs by name.

        Arrays go in with their own dtype and shape, unconverted, as the server sends them, and
        the signature's defaults for the inputs left out, as the server fills them in. Every output
        is fetched and the filter applied here: the Session prepares an executor for each set of
        inputs and outputs it meets (seconds for this graph), and this way a signature needs one; the
        outputs are computed by every call anyway. Errors come back as tf.errors.OpError with the
        graph's status code. `trace`, if given, is filled with the run's full trace (every op's time,
        for benchmarks/trace.py). After close(), SessionClosed.
        """
        sig = self.signature(signature_name)
        with self._lock:
            if self._closing:
                raise SessionClosed(f"the model version at {self.path} was unloaded")
            self._running += 1
        try:
            return self._run(sig, signature_name, feeds, output_filter, timeout_ms, trace)
        finally:
            with self._lock:
                self._running -= 1
                last = self._closing and self._running == 0
            if last:
                self.session.close()

    @property
    def running(self) -> int:
        """How many runs are in flight."""
        return self._running

    def _run(
        self,
        sig: meta_graph_pb2.SignatureDef,
        signature_name: str,
        feeds: dict[str, np.ndarray],
        output_filter: list[str] | None,
        timeout_ms: int,
        trace: config_pb2.RunMetadata | None,
    ) -> dict[str, np.ndarray]:
        outputs = sorted(sig.outputs)
        feeds = {**self._defaults[signature_name or DEFAULT_SIGNATURE], **feeds}
        feed = {self._tensor(sig.inputs[k].name)._as_tf_output(): v for k, v in feeds.items()}
        fetch = [self._tensor(sig.outputs[k].name)._as_tf_output() for k in outputs]
        level = config_pb2.RunOptions.FULL_TRACE if trace is not None else config_pb2.RunOptions.NO_TRACE
        options = config_pb2.RunOptions(timeout_in_ms=timeout_ms, trace_level=level)
        buffer = c_api.TF_NewBufferFromString(options.SerializeToString())
        metadata = c_api.TF_NewBuffer() if trace is not None else None
        try:
            values = self.session._call_tf_sessionrun(buffer, feed, fetch, [], metadata)
            if metadata is not None:
                trace.ParseFromString(c_api.TF_GetBuffer(metadata))
        finally:
            c_api.TF_DeleteBuffer(buffer)
            if metadata is not None:
                c_api.TF_DeleteBuffer(metadata)
        values = dict(zip(outputs, values, strict=True))
        return {k: values[k] for k in output_filter} if output_filter else values

    def _tensor(self, name: str) -> tf.Tensor:
        return self.graph.get_tensor_by_name(name)

    def close(self) -> None:
        """Close the Session once the runs in flight have finished (at once if none is): a version unloaded
        while serving fails no call it is running. Later runs raise SessionClosed."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            idle = self._running == 0
        if idle:
            self.session.close()


class SessionClosed(RuntimeError):
    """A run asked of a ServingSession after close()."""
