"""nst_client: a thin client for the style-transfer model served by TensorFlow Serving.

It depends on grpcio, tensorflow-serving-api (the request protos), numpy, Pillow and tqdm,
never on the model package: any service can call the model with it.

    from nst_client import NSTClient
    image = NSTClient("localhost:8500").stylize("content.jpg", "style.jpg", steps=300)
"""

from .contract import DEFAULT_CHUNK, Result
from .errors import ClientError, InputError, ServerError
from .grpc_client import NSTClient
from .rest_client import RestClient

__all__ = ["DEFAULT_CHUNK", "ClientError", "InputError", "NSTClient", "RestClient", "Result", "ServerError"]
