"""The client: rcknn.connect() -> Client -> Index, over the gRPC stubs generated at install time.

Every call converts gRPC errors to rcknn exceptions, honours the client's deadline, and cancels
its RPC on Ctrl-C (KeyboardInterrupt) before re-raising it. Uploads and searches of any size are
split into messages under the message limit; answers are written into preallocated numpy arrays.
"""
from __future__ import annotations

import os
import re
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from . import _arrays
from ._errors import BuildFailed, Error, InvalidArgument, ResourceExhausted, from_rpc_error
from ._kernels import Kernel
from ._progress import Progress

try:
    from .v1 import rcknn_pb2 as pb2
    from .v1 import rcknn_pb2_grpc as pb2_grpc
except ImportError as _error:  # pragma: no cover - only outside an installed package
    raise ImportError(
        "rcknn's gRPC stubs are missing: install the package (pip install --no-build-isolation "
        "client/python), which generates them from proto/") from _error

PathOrBytes = Union[str, "os.PathLike[str]", bytes]

# Server defaults (--max_message_bytes, --max_queries_per_search).
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
DEFAULT_MAX_QUERIES_PER_REQUEST = 1_000_000
# Upload chunks carry about this many bytes: well under the limit, so the server works on one
# while the next is on the wire.
UPLOAD_CHUNK_BYTES = 4 << 20
# Allowance for a message's framing, fields other than the arrays, and stats.
_FRAMING_BYTES = 4096
# Wire bytes per answer entry at most: an 8-byte distance and a varint id (-1 takes 10 bytes).
# Raw answers take 16; sizing for 18 also fits a server that answers in the repeated fields.
_ANSWER_ENTRY_BYTES = 18
_QUERY_ID_BYTES = 10
_VALUE_BYTES = 9  # a packed double, with slack for the length prefixes

# Messages that name a smaller message limit: gRPC's own ("Received message larger than max
# (N vs. M)") and the server's ("... over --max_message_bytes = M").
_LIMIT_PATTERNS = (re.compile(r"larger than max \(\d+ vs\. (\d+)\)"),
                   re.compile(r"--max_message_bytes = (\d+)"))

_STATE_NAMES = {1: "LOADING", 2: "BUILDING", 3: "READY", 4: "FAILED"}


def _read(value: Optional[PathOrBytes]) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


def _smaller_limit(error: Error, current: int) -> Optional[int]:
    """The message limit named by a RESOURCE_EXHAUSTED error, if smaller than `current`."""
    if not isinstance(error, ResourceExhausted):
        return None
    for pattern in _LIMIT_PATTERNS:
        match = pattern.search(error.message)
        if match and int(match.group(1)) < current:
            return int(match.group(1))
    return None


class Client:
    """A connection to one rcknn-server. Thread-safe; use as a context manager, or call close().

    Made by rcknn.connect(); see there for the options."""

    def __init__(self, address: str, channel: grpc.Channel, *, timeout: Optional[float],
                 max_message_bytes: int, max_queries_per_request: int):
        self.address = address
        self.timeout = timeout
        self.max_message_bytes = int(max_message_bytes)
        self.max_queries_per_request = int(max_queries_per_request)
        self._channel = channel
        self._stub = pb2_grpc.RcknnStub(channel)

    # -- plumbing ------------------------------------------------------------------------------

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    @property
    def stub(self) -> "pb2_grpc.RcknnStub":
        """The generated stub, for calls this API does not wrap."""
        return self._stub

    def _unary(self, method: Callable, request: Any) -> Any:
        future = method.future(request, timeout=self.timeout)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def _with_limit_retry(self, attempt: Callable[[], Any]) -> Any:
        """Runs `attempt`; if the server (or gRPC) refuses a message as too large and names a
        smaller limit, lowers max_message_bytes to it and runs `attempt` once more. Safe because
        a refused upload stream applies nothing and a search changes nothing."""
        try:
            return attempt()
        except ResourceExhausted as error:
            limit = _smaller_limit(error, self.max_message_bytes)
            if limit is None:
                raise
            self.max_message_bytes = limit
            return attempt()

    # -- indexes -------------------------------------------------------------------------------

    def create_index(self, index_id: str, points: Any, *, kernel: Optional[Kernel],
                     inducing: Union[int, Any] = 512, inducing_seed: int = 0,
                     jitter: float = 1e-6, metric: str = "residual",
                     factors: Any = None, residual_variances: Any = None,
                     expected_points: Optional[int] = None,
                     inducing_method: str = "uniform", lloyd_iterations: Optional[int] = None,
                     progress: bool = False) -> "Index":
        """Creates index `index_id` and uploads `points` (an (n, d) array of any real dtype) in
        chunks on one stream; returns the Index (state LOADING: call build()).

        kernel: rcknn.RBF, Matern12, Matern32 or Matern52 (required for metric="residual").
        inducing: the number m of inducing points drawn among the data with `inducing_seed`
          (capped at n, as the server's default is), or an (m, d) array of explicit inducing
          points.
        jitter: added to the diagonal of K(U, U) as jitter * variance.
        metric: "residual" (residual correlation distance) or "euclidean" (kernel=None).
        factors, residual_variances: supplied factors instead of inducing points: V as an
          (n, m) array and p as n values; such an index answers queries by id only.
        expected_points: CreateIndexRequest.expected_num_points, the size the index declares
          (None: n, the points given here). rcknn-router sizes its shards' id ranges by it; a
          server only checks it. Larger when more points follow (through client.stub).
        inducing_method: with a count of inducing points, how they are chosen among the data:
          "uniform" (a seeded uniform draw) or "kmeans++" (k-means++ seeding on the
          lengthscale-scaled coordinates, seeded); lloyd_iterations: Lloyd steps after
          "kmeans++" (None: the server's default, 0). docs/gp-loop.md.
        progress: a progress bar for the upload (with tqdm installed).
        """
        points = _arrays.as_points(points, "points")
        n, d = points.shape
        spec = pb2.IndexSpec(dimension=d)
        if metric == "residual":
            if kernel is None:
                raise InvalidArgument("kernel: required with metric='residual'")
            spec.metric = pb2.METRIC_RESIDUAL_CORRELATION
            spec.kernel.CopyFrom(kernel.to_proto(pb2))
            spec.inducing_seed = int(inducing_seed)
            spec.jitter = float(jitter)
        elif metric == "euclidean":
            if kernel is not None or factors is not None:
                raise InvalidArgument("kernel, factors: not used with metric='euclidean'")
            spec.metric = pb2.METRIC_EUCLIDEAN
        else:
            raise InvalidArgument(f"metric: expected 'residual' or 'euclidean', got {metric!r}")

        factor_array = variances = None
        if factors is not None or residual_variances is not None:
            if factors is None or residual_variances is None:
                raise InvalidArgument("factors, residual_variances: give both or neither")
            factor_array = _arrays.as_points(factors, "factors")
            if factor_array.shape[0] != n:
                raise InvalidArgument(f"factors: expected {n} rows, got {factor_array.shape[0]}")
            variances = _arrays.as_vector(residual_variances, "residual_variances", n)
            spec.factors_supplied = True
            spec.inducing_count = factor_array.shape[1]
        elif metric == "residual":
            if np.ndim(inducing) == 0:
                count = int(inducing)
                if count != inducing:
                    raise InvalidArgument(f"inducing: expected a count, got {inducing!r}")
                spec.inducing_count = min(count, n) if n > 0 else count
                methods = {"uniform": pb2.INDUCING_METHOD_UNIFORM,
                           "kmeans++": pb2.INDUCING_METHOD_KMEANS_PLUSPLUS}
                if inducing_method not in methods:
                    raise InvalidArgument("inducing_method: expected 'uniform' or 'kmeans++', "
                                          f"got {inducing_method!r}")
                if inducing_method != "uniform":
                    spec.inducing_method = methods[inducing_method]
                if lloyd_iterations is not None:
                    spec.lloyd_iterations = int(lloyd_iterations)
            else:
                explicit = _arrays.as_points(inducing, "inducing", columns=d)
                spec.inducing_points.extend(explicit.reshape(-1).tolist())

        if expected_points is None:
            expected_points = n
        if int(expected_points) != expected_points or expected_points < 0:
            raise InvalidArgument(
                f"expected_points: expected a count >= 0, got {expected_points!r}")
        self._unary(self._stub.CreateIndex,
                    pb2.CreateIndexRequest(index_id=index_id, spec=spec,
                                           expected_num_points=int(expected_points)))
        index = Index(self, index_id)
        index._upload(points, factor_array, variances, progress)
        return index

    def index(self, index_id: str) -> "Index":
        """The existing index `index_id` (rcknn.NotFound if there is none)."""
        self._unary(self._stub.GetIndex, pb2.GetIndexRequest(index_id=index_id))
        return Index(self, index_id)

    def list_indexes(self) -> List[Any]:
        """IndexInfo messages of every index, ordered by id."""
        return list(self._unary(self._stub.ListIndexes, pb2.ListIndexesRequest()).indexes)

    # -- searches ------------------------------------------------------------------------------

    def _queries_per_request(self, k: int, dimension: int) -> int:
        budget = self.max_message_bytes - _FRAMING_BYTES
        query_bytes = _VALUE_BYTES * dimension if dimension else _QUERY_ID_BYTES
        by_answer = budget // (max(k, 1) * _ANSWER_ENTRY_BYTES)
        by_request = budget // query_bytes
        return max(1, min(by_answer, by_request, self.max_queries_per_request))

    def _search(self, index_id: str, k: int, ids: Optional[np.ndarray],
                points: Optional[np.ndarray], predecessor: bool, include_self: bool,
                progress: bool, ordering: str = "",
                ranks: bool = False) -> Tuple[np.ndarray, np.ndarray, Dict[str, float]]:
        def attempt():
            return self._search_once(index_id, k, ids, points, predecessor, include_self,
                                     progress, ordering, ranks)
        return self._with_limit_retry(attempt)

    def _search_once(self, index_id, k, ids, points, predecessor, include_self, progress,
                     ordering="", ranks=False):
        by_id = ids is not None
        nq = ids.shape[0] if by_id else points.shape[0]
        d = 0 if by_id else points.shape[1]
        out_ids = np.empty((nq, k), dtype=np.int64)
        out_dists = np.empty((nq, k), dtype=np.float64)
        per_request = self._queries_per_request(k, d)
        firsts = range(0, nq, per_request)
        stats: Dict[str, float] = {"requests": 0}
        if nq == 0:
            return out_ids, out_dists, stats

        def request(first: int) -> Any:
            count = min(per_request, nq - first)
            message = pb2.SearchRequest(index_id=index_id, k=k, predecessor_mode=predecessor,
                                        include_self=include_self, raw_answer=True,
                                        ordering=ordering, ids_are_ranks=ranks)
            if by_id:
                message.query_ids.extend(ids[first:first + count].tolist())
            else:
                message.query_points.extend(points[first:first + count].reshape(-1).tolist())
            return message

        bar = Progress(nq, "search", progress)
        try:
            if nq <= per_request:
                response = self._unary(self._stub.Search, request(0))
                _copy_answer(response, 0, k, out_ids, out_dists)
                _add_stats(stats, response.stats)
                bar.update(nq)
            else:
                responses = self._stub.SearchStream((request(f) for f in firsts),
                                                    timeout=self.timeout)
                answered = 0
                try:
                    for response in responses:
                        _copy_answer(response, answered, k, out_ids, out_dists)
                        answered += response.num_queries
                        _add_stats(stats, response.stats)
                        bar.update(response.num_queries)
                except KeyboardInterrupt:
                    responses.cancel()
                    raise
                except grpc.RpcError as error:
                    raise from_rpc_error(error) from None
                except Error:
                    responses.cancel()
                    raise
                if answered != nq:
                    raise Error(f"the stream answered {answered} of {nq} queries",
                                grpc.StatusCode.DATA_LOSS)
        finally:
            bar.close()
        return out_ids, out_dists, stats


def _copy_answer(response: Any, first: int, k: int, out_ids: np.ndarray,
                 out_dists: np.ndarray) -> None:
    """Writes one SearchResponse (raw bytes or repeated fields) into rows first.. of the
    preallocated answer arrays."""
    rows = response.num_queries
    if response.k != k or first + rows > out_ids.shape[0]:
        raise Error(f"an answer of {rows} x {response.k} does not fit rows {first}.. of "
                    f"{out_ids.shape}", grpc.StatusCode.DATA_LOSS)
    count = rows * k
    if count == 0:
        return
    if len(response.neighbor_ids_raw) == 8 * count and len(response.distances_raw) == 8 * count:
        ids = np.frombuffer(response.neighbor_ids_raw, dtype="<i8")
        dists = np.frombuffer(response.distances_raw, dtype="<f8")
    elif len(response.neighbor_ids) == count and len(response.distances) == count:
        # A server that predates SearchRequest.raw_answer.
        ids = np.array(response.neighbor_ids, dtype=np.int64)
        dists = np.array(response.distances, dtype=np.float64)
    else:
        raise Error(f"an answer of {rows} x {k} carries {len(response.neighbor_ids)} ids and "
                    f"{len(response.neighbor_ids_raw)} raw id bytes", grpc.StatusCode.DATA_LOSS)
    out_ids[first:first + rows] = ids.reshape(rows, k)
    out_dists[first:first + rows] = dists.reshape(rows, k)


_STAT_FIELDS = ("distance_evaluations", "heap_pushes", "nodes_visited", "subtrees_pruned",
                "subtrees_pruned_by_bound", "subtrees_pruned_by_predecessor",
                "brute_force_queries", "search_seconds")


def _add_stats(stats: Dict[str, float], message: Any) -> None:
    stats["requests"] += 1
    for field in _STAT_FIELDS:
        stats[field] = stats.get(field, 0) + getattr(message, field)


class Index:
    """One index of a server. Made by Client.create_index() or Client.index()."""

    def __init__(self, client: Client, index_id: str):
        self.client = client
        self.id = index_id
        # Summed SearchStats of the last neighbors()/search() call, and how many requests it was
        # split into ("requests").
        self.last_stats: Dict[str, float] = {}

    def __repr__(self) -> str:
        return f"rcknn.Index({self.id!r} at {self.client.address})"

    def info(self) -> Any:
        """The IndexInfo message (state, num_points, build_progress, spec with defaults, ...)."""
        return self.client._unary(self.client._stub.GetIndex, pb2.GetIndexRequest(index_id=self.id))

    @property
    def num_points(self) -> int:
        """Points uploaded so far."""
        return int(self.info().num_points)

    @property
    def state(self) -> str:
        """"LOADING", "BUILDING", "READY" or "FAILED"."""
        return _STATE_NAMES.get(self.info().state, "UNSPECIFIED")

    def _upload(self, points: np.ndarray, factors: Optional[np.ndarray],
                variances: Optional[np.ndarray], progress: bool) -> None:
        client = self.client

        def attempt():
            n, d = points.shape
            columns = factors.shape[1] if factors is not None else 0
            row_bytes = _VALUE_BYTES * (d + (columns + 1 if factors is not None else 0))
            chunk_bytes = min(UPLOAD_CHUNK_BYTES, client.max_message_bytes - _FRAMING_BYTES)
            rows = max(1, chunk_bytes // row_bytes)
            bar = Progress(n, "upload", progress)

            def chunks() -> Iterator[Any]:
                if n == 0:
                    yield pb2.UploadPointsRequest(index_id=self.id)
                for first in range(0, n, rows):
                    last = min(n, first + rows)
                    chunk = pb2.UploadPointsRequest(index_id=self.id if first == 0 else "")
                    chunk.coordinates.extend(points[first:last].reshape(-1).tolist())
                    if factors is not None:
                        chunk.factors.extend(factors[first:last].reshape(-1).tolist())
                        chunk.residual_variances.extend(variances[first:last].tolist())
                    yield chunk
                    bar.update(last - first)

            try:
                return client._unary(client._stub.UploadPoints, chunks())
            finally:
                bar.close()

        client._with_limit_retry(attempt)

    def build(self, progress: bool = False) -> Any:
        """Builds the index and waits until it is READY (following WatchIndex); returns the final
        IndexInfo. rcknn.BuildFailed if it ended FAILED. progress: a bar (with tqdm)."""
        client = self.client
        client._unary(client._stub.BuildIndex, pb2.BuildIndexRequest(index_id=self.id))
        return self._wait(progress)

    def _wait(self, progress: bool) -> Any:
        client = self.client
        bar = Progress(1000, "build", progress)
        reports = client._stub.WatchIndex(pb2.GetIndexRequest(index_id=self.id),
                                          timeout=client.timeout)
        info = None
        try:
            for info in reports:
                bar.set(int(round(1000 * info.build_progress)))
        except KeyboardInterrupt:
            reports.cancel()
            raise
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            bar.close()
        if info is None:
            raise Error("WatchIndex ended without a report", grpc.StatusCode.INTERNAL)
        if info.state == pb2.INDEX_STATE_FAILED:
            raise BuildFailed(info.error or "the build failed")
        return info

    def reparameterize(self, kernel: Optional[Kernel] = None, *, index_id: Optional[str] = None,
                       inducing: Union[None, int, Any] = None,
                       inducing_seed: Optional[int] = None, jitter: Optional[float] = None,
                       tree: str = "auto", progress: bool = False) -> "Index":
        """A new index over this (READY) index's points with other kernel settings, without
        uploading the points again (CreateIndexRequest.source_index_id); waits until it is READY
        and returns it. The points are shared by both indexes, in the server's memory and on
        its disk; deleting this index leaves the new one whole.

        kernel: the new kernel (rcknn.RBF, Matern12, ...); None: this index's.
        index_id: the new index's id; None: this id with a random suffix.
        inducing, inducing_seed, jitter: as in Client.create_index; None: this index's.
        tree: "auto" (the source's tree refitted, or a fresh build where the server predicts
          that pays), "refit" or "rebuild".
        rcknn.NotFound, rcknn.FailedPrecondition (this index is not READY),
        rcknn.InvalidArgument, rcknn.BuildFailed.
        """
        trees = {"auto": pb2.SOURCE_TREE_UNSPECIFIED, "refit": pb2.SOURCE_TREE_REFIT,
                 "rebuild": pb2.SOURCE_TREE_REBUILD}
        if tree not in trees:
            raise InvalidArgument(f"tree: expected 'auto', 'refit' or 'rebuild', got {tree!r}")
        spec = pb2.IndexSpec()
        spec.CopyFrom(self.info().spec)
        if kernel is not None:
            spec.kernel.CopyFrom(kernel.to_proto(pb2))
        if inducing is not None:
            if np.ndim(inducing) == 0:
                count = int(inducing)
                if count != inducing:
                    raise InvalidArgument(f"inducing: expected a count, got {inducing!r}")
                del spec.inducing_points[:]
                spec.inducing_count = count
            else:
                explicit = _arrays.as_points(inducing, "inducing", columns=spec.dimension)
                spec.ClearField("inducing_count")
                spec.ClearField("inducing_method")
                spec.ClearField("lloyd_iterations")
                del spec.inducing_points[:]
                spec.inducing_points.extend(explicit.reshape(-1).tolist())
        if inducing_seed is not None:
            spec.inducing_seed = int(inducing_seed)
        if jitter is not None:
            spec.jitter = float(jitter)
        new_id = index_id if index_id is not None else (
            f"{self.id[:100]}.{uuid.uuid4().hex[:12]}")
        self.client._unary(self.client._stub.CreateIndex, pb2.CreateIndexRequest(
            index_id=new_id, spec=spec, source_index_id=self.id, source_tree=trees[tree]))
        index = Index(self.client, new_id)
        index._wait(progress)
        return index

    def neighbors(self, k: int, *, ids: Optional[Sequence[int]] = None,
                  predecessor: bool = False, include_self: bool = False,
                  ordering: Optional[str] = None, ranks: bool = False,
                  progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """The k nearest stored points of stored points, by id.

        ids: the query ids (any integer array); None: every point, 0..n-1 (the Vecchia
          neighbour matrix).
        predecessor: only ids j < i qualify (query 0 gets nothing).
        include_self: the query point itself is a candidate.
        ordering: the name of one of the index's orderings (compute_ordering()); with
          predecessor, only points earlier in it qualify: j for i iff rank(j) < rank(i).
        ranks: with ordering, `ids` and the answer's ids are ranks in it (ids None: row r is
          the point at rank r); otherwise both are point ids.
        Returns (ids, distances): (len(ids), k) int64 and float64 arrays, each row ascending by
        (distance, id), padded with -1 / +inf.
        """
        if ids is None:
            query_ids = np.arange(self.num_points, dtype=np.int64)
        else:
            query_ids = _arrays.as_ids(ids, "ids")
        out_ids, out_dists, self.last_stats = self.client._search(
            self.id, int(k), query_ids, None, bool(predecessor), bool(include_self), progress,
            ordering or "", bool(ranks))
        return out_ids, out_dists

    def compute_ordering(self, name: str, method: str = "maximin_residual", *, seed: int = 0,
                         permutation: Any = None) -> np.ndarray:
        """Computes an ordering of this READY index's points and keeps it with the index under
        `name` (ComputeOrdering); returns the permutation, permutation[r] = the id at rank r,
        as an int64 array.

        method: "random" (seeded by `seed`), "maximin_euclidean" (exact maximin in the
          lengthscale-scaled coordinates), "maximin_residual" (exact maximin under the residual
          correlation distance) or "supplied" (`permutation`, any integer array of n ids,
          checked by the server). docs/gp-loop.md.
        """
        methods = {"supplied": pb2.ORDERING_METHOD_SUPPLIED,
                   "random": pb2.ORDERING_METHOD_RANDOM,
                   "maximin_euclidean": pb2.ORDERING_METHOD_MAXIMIN_EUCLIDEAN,
                   "maximin_residual": pb2.ORDERING_METHOD_MAXIMIN_RESIDUAL}
        if method not in methods:
            raise InvalidArgument(f"method: expected one of {sorted(methods)}, got {method!r}")
        request = pb2.ComputeOrderingRequest(index_id=self.id, name=name,
                                             method=methods[method], seed=int(seed))
        if method == "supplied":
            if permutation is None:
                raise InvalidArgument("permutation: required with method='supplied'")
            request.permutation.extend(_arrays.as_ids(permutation, "permutation").tolist())
        answer = self.client._unary(self.client._stub.ComputeOrdering, request)
        return np.array(answer.permutation, dtype=np.int64)

    @property
    def orderings(self) -> List[str]:
        """The names of the orderings kept with this index, ascending."""
        return list(self.info().orderings)

    def search(self, points: Any, k: int, *, progress: bool = False
               ) -> Tuple[np.ndarray, np.ndarray]:
        """The k nearest stored points of out-of-sample `points` ((nq, d), any real dtype).
        Returns (ids, distances) shaped (nq, k) as neighbors() does."""
        query_points = _arrays.as_points(points, "points")
        out_ids, out_dists, self.last_stats = self.client._search(
            self.id, int(k), None, query_points, False, False, progress)
        return out_ids, out_dists

    def delete(self) -> None:
        """Deletes the index (searches in flight finish on the old data)."""
        self.client._unary(self.client._stub.DeleteIndex,
                           pb2.DeleteIndexRequest(index_id=self.id))


def connect(address: str, *, tls_ca: Optional[PathOrBytes] = None,
            tls_cert: Optional[PathOrBytes] = None, tls_key: Optional[PathOrBytes] = None,
            token: Optional[str] = None, timeout: Optional[float] = None,
            max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
            max_queries_per_request: int = DEFAULT_MAX_QUERIES_PER_REQUEST) -> Client:
    """Connects to an rcknn-server at `address` ("host:port"); connects lazily, so an unreachable
    server shows as rcknn.Unavailable on the first call.

    tls_ca: PEM CA certificate(s) verifying the server (a path, or the PEM bytes): TLS on. The
      server certificate must name the host of `address`.
    tls_cert, tls_key: the client certificate and key for mutual TLS (need tls_ca).
    token: sent as `authorization: Bearer <token>` on every call (needs tls_ca).
    timeout: deadline of each call in seconds (None: none); rcknn.DeadlineExceeded when passed.
    max_message_bytes: the server's --max_message_bytes. Requests are kept under it and answers
      up to it are accepted. If the server names a smaller limit when it refuses a message, the
      client adopts that limit and retries once.
    max_queries_per_request: the server's --max_queries_per_search.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key: give both or neither")
    if tls_ca is None and tls_cert is not None:
        raise ValueError("tls_cert needs tls_ca")
    if tls_ca is None and token:
        raise ValueError("token needs tls_ca: a bearer token is sent over TLS only")
    options = [("grpc.max_send_message_length", int(max_message_bytes)),
               ("grpc.max_receive_message_length", int(max_message_bytes))]
    if tls_ca is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(tls_ca), private_key=_read(tls_key),
            certificate_chain=_read(tls_cert))
        if token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token))
        channel = grpc.secure_channel(address, credentials, options=options)
    return Client(address, channel, timeout=timeout, max_message_bytes=max_message_bytes,
                  max_queries_per_request=max_queries_per_request)


def vecchia_neighbors(points: Any, k: int, *, kernel: Kernel, inducing: Union[int, Any] = 512,
                      server: str = "127.0.0.1:50051", inducing_seed: int = 0,
                      jitter: float = 1e-6, include_self: bool = False,
                      tls_ca: Optional[PathOrBytes] = None, tls_cert: Optional[PathOrBytes] = None,
                      tls_key: Optional[PathOrBytes] = None, token: Optional[str] = None,
                      timeout: Optional[float] = None,
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                      progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """The Vecchia neighbour sets of `points` in one call: for every point i (in row order), its
    k most correlated predecessors j < i under the residual correlation of `kernel` with
    `inducing` inducing points. Uploads to a temporary index on `server`, builds it, fetches the
    answer and deletes the index, also when anything fails or Ctrl-C interrupts.

    Returns (ids, distances), (n, k) int64 / float64; row i ascending by (distance, id), padded
    with -1 / +inf (row 0 is all padding, row i < k has i neighbours). Options as
    connect() and Client.create_index().
    """
    with connect(server, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token,
                 timeout=timeout, max_message_bytes=max_message_bytes) as client:
        index_id = f"vecchia-tmp-{uuid.uuid4().hex}"
        try:
            index = client.create_index(index_id, points, kernel=kernel, inducing=inducing,
                                        inducing_seed=inducing_seed, jitter=jitter,
                                        progress=progress)
            index.build(progress=progress)
            answer = index.neighbors(k, predecessor=True, include_self=include_self,
                                     progress=progress)
        except BaseException:
            # The original error (or KeyboardInterrupt) is what the caller needs to see.
            _delete_temporary(client, index_id, quiet=True)
            raise
        _delete_temporary(client, index_id, quiet=False)
        return answer


def _delete_temporary(client: Client, index_id: str, quiet: bool) -> None:
    """Deletes a temporary index (a missing one is fine: its creation may have failed). With
    `quiet`, a failure to delete is not raised over the error already propagating."""
    request = pb2.DeleteIndexRequest(index_id=index_id)
    try:
        client._stub.DeleteIndex(request, timeout=30 if client.timeout is None else client.timeout)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND and not quiet:
            raise from_rpc_error(error) from None
