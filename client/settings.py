"""Defaults of a run that are not model options, defined once for every entry point.

The model's own options and limits live in the model (its SignatureDef carries their defaults);
these say how a run is cut into calls and how long a caller waits.
"""

DEFAULT_CHUNK = 25  # steps per call of a chunked run: a progress tick, a checkpoint, a place to resume
DEFAULT_TIMEOUT_S = 600.0  # deadline of each call; the server stops a run that passes it
DEFAULT_CONNECT_TIMEOUT_S = 10.0  # how long the first call waits for a gRPC server to accept
DEFAULT_RETRIES = 3  # retries of calls the server could not take (UNAVAILABLE, RESOURCE_EXHAUSTED)
DEFAULT_SCALES: tuple[int, ...] = ()  # coarse-to-fine off: one scale, at max_dim
MIN_SCALE = 16  # smallest longest side of a coarse-to-fine scale: the model's own minimum side
