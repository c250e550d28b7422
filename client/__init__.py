"""nst_client: a thin client for the style-transfer model served by TensorFlow Serving.

It depends on grpcio, tensorflow-serving-api (the request protos), numpy, Pillow and tqdm,
never on the model package: any service can call the model with it.

    from nst_client import NSTClient
    image = NSTClient("localhost:8500").stylize("content.jpg", "style.jpg", steps=300)
"""

from .contract import Result
from .errors import ClientError, InputError, ServerError
from .settings import DEFAULT_CHUNK

__all__ = ["DEFAULT_CHUNK", "ClientError", "InputError", "NSTClient", "RestClient", "Result", "ServerError"]


def __getattr__(name: str) -> object:
    """The clients import grpc and TensorFlow's protos (which load all of TensorFlow): load them on
    first use, so `nst-client --help` is instant, `nst_client.images` is light, and the command line
    can quieten TensorFlow's logging before it starts."""
    if name == "NSTClient":
        from .grpc_client import NSTClient

        return NSTClient
    if name == "RestClient":
        from .rest_client import RestClient

        return RestClient
    raise AttributeError(f"module 'nst_client' has no attribute {name!r}")
