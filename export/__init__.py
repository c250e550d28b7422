"""nst-export: write the servable SavedModel (installed as the `nst_export` package)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter; errors still raise
