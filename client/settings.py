"""Defaults of a run that are not model options, defined once for every entry point.

The model's own options and limits live in the model (its SignatureDef carries their defaults);
these say how a run is cut into calls and how long a caller waits.
"""

DEFAULT_CHUNK = 25  # steps per call of a chunked run: a progress tick, a checkpoint, a place to resume
DEFAULT_TIMEOUT_S = 600.0  # deadline of each call; the server stops a run that passes it
DEFAULT_CONNECT_TIMEOUT_S = 10.0  # how long the first call waits for a gRPC server to accept
DEFAULT_RETRIES = 3  # retries of a call whose server went away (UNAVAILABLE, CANCELLED by the server)
# How long each call waits for a free replica while every one refuses it as busy (RESOURCE_EXHAUSTED). The
# stock server admits one call per pod as deployed and a call is a chunk: under a minute at 512 px, many
# minutes at 2048 px (deploy/sizing.json). A caller queued behind a few others per replica, or
# behind an autoscaler adding pods (minutes), is served within 30 minutes; a shorter budget fails runs that
# a loaded fleet would have served.
DEFAULT_WAIT_S = 1800.0
# The wait between tries once every replica has refused: full jitter, uniform(0, min(cap, base * 2**round)),
# so that callers refused together do not come back together; the cap keeps a freed replica idle for
# at most a few seconds.
BUSY_BACKOFF_BASE_S = 0.5
BUSY_BACKOFF_CAP_S = 4.0
DEFAULT_SCALES: tuple[int, ...] = ()  # coarse-to-fine off: one scale, at max_dim
MIN_SCALE = 16  # smallest longest side of a coarse-to-fine scale: the model's own minimum side
