"""rcknn: exact k-nearest neighbours under the residual correlation distance of a Gaussian
process, from an rcknn-server, with numpy arrays in and out.

    import rcknn
    ids, dists = rcknn.vecchia_neighbors(X, k=30, kernel=rcknn.Matern32(1.0, 0.5), inducing=256)

    with rcknn.connect("127.0.0.1:50051") as client:
        index = client.create_index("sites", X, kernel=rcknn.RBF(1.0, 0.5), inducing=256)
        index.build(progress=True)
        ids, dists = index.neighbors(k=30, predecessor=True)   # (n, 30) int64 / float64
        ids, dists = index.search(points=X_new, k=50)          # out-of-sample

See docs/python.md in the repository.
"""
from ._client import Client, Index, connect, vecchia_neighbors
from ._errors import (AlreadyExists, BuildFailed, Cancelled, DeadlineExceeded, Error,
                      FailedPrecondition, InvalidArgument, NotFound, PermissionDenied,
                      ResourceExhausted, Unauthenticated, Unavailable)
from ._kernels import RBF, Kernel, Matern12, Matern32, Matern52
from .interop import gpgp_nnarray, sparse_pattern

__version__ = "0.1.0"

__all__ = [
    "connect", "vecchia_neighbors", "Client", "Index",
    "Kernel", "RBF", "Matern12", "Matern32", "Matern52",
    "Error", "InvalidArgument", "NotFound", "AlreadyExists", "FailedPrecondition",
    "ResourceExhausted", "Unavailable", "Unauthenticated", "PermissionDenied",
    "DeadlineExceeded", "Cancelled", "BuildFailed",
    "gpgp_nnarray", "sparse_pattern",
]
