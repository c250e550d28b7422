"""nst_devserver: a development stand-in for tensorflow_model_server (`nst-devserver`)."""
