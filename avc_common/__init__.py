"""The common ground of training, serving and scoring: the contracts the three jobs meet at.

``training/``, ``defense/`` and ``attacks/`` never import one another; each imports only
this package: the model artifact (:mod:`avc_common.artifact`), atomic writes
(:mod:`avc_common.atomic`), the pixel convention and the one image-shape type
(:mod:`avc_common.images`), the label-only gRPC contract and its client
(:mod:`avc_common.rpc`), and the dataset and evaluation-set readers
(:mod:`avc_common.data`, the one part the server image does not carry).
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trades-avc")
except PackageNotFoundError:  # the server image copies the source without installing it
    __version__ = "0+unknown"
