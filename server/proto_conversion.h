// Validation and conversion between the wire types of rcknn.v1 and the core types, done once at
// the edge. Every INVALID_ARGUMENT message starts with the offending field's name as the client
// spells it ("spec.kernel.variance", "coordinates", "k", ...).
#ifndef RCKNN_SERVER_PROTO_CONVERSION_H_
#define RCKNN_SERVER_PROTO_CONVERSION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/knn_index.h"
#include "core/ordering.h"
#include "core/traversal_stats.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"
#include "rcknn/v1/rcknn.pb.h"
#include "server/index_registry.h"

namespace rcknn::server {

inline constexpr int kMaxDimension = 65536;
// Lloyd steps cost O(n m d) each; more than this is a mistake rather than a refinement.
inline constexpr int kMaxLloydIterations = 1000;

// The checks on a SearchRequest that need no index: the index id, k >= 1, and exactly one of
// query_ids and query_points. INVALID_ARGUMENT naming the field.
absl::Status ValidateSearchRequest(const v1::SearchRequest& request);

// The spec of a build given explicit inducing points (BuildIndexRequest.inducing_points): `spec`
// with them. INVALID_ARGUMENT naming "inducing_points" unless `spec` is a residual spec with
// computed factors and no inducing points of its own, or if the points are not whole finite rows.
absl::StatusOr<v1::IndexSpec> SpecWithInducingPoints(
    const v1::IndexSpec& spec, const google::protobuf::RepeatedField<double>& points);

// Validates `spec` and returns its core form. `*normalized` receives the spec as the server
// reports it: jitter filled in when unset.
absl::StatusOr<core::IndexSpec> ToCoreSpec(const v1::IndexSpec& spec, v1::IndexSpec* normalized);

// The spec as the index service keeps it: the core form, whether the inducing count was given,
// and the normalized spec's wire encoding (reported by GetIndex, persisted by the store).
// The errors of ToCoreSpec.
absl::StatusOr<IndexSpecRecord> ToSpecRecord(const v1::IndexSpec& spec);
// ToSpecRecord of a spec in its wire encoding (as the store keeps it): DATA_LOSS if it does
// not parse. The IndexService's SpecDecoder.
absl::StatusOr<IndexSpecRecord> SpecRecordFromWire(absl::string_view wire);
// The spec a record keeps (empty if its wire form does not parse: an index whose files were
// unreadable).
v1::IndexSpec WireSpec(const IndexSpecRecord& spec);

// The spec of CreateIndex with source_index_id, given the source's reported spec: the request's
// spec (absent: the source's) with dimension and metric filled in from the source when unset.
// INVALID_ARGUMENT naming the field: "source_index_id" for a source that is not residual
// correlation, "spec.dimension" / "spec.metric" when they differ from the source's,
// "spec.factors_supplied" when set, "source_tree" for an unknown value. The result still needs
// ToCoreSpec.
absl::StatusOr<v1::IndexSpec> SpecFromSource(const v1::CreateIndexRequest& request,
                                             const v1::IndexSpec& source_spec);
// CreateIndexRequest.source_tree in core terms. INVALID_ARGUMENT naming "source_tree".
absl::StatusOr<core::TreeStart> ToCoreTreeStart(int source_tree);


// Validates chunk `chunk` (0-based) of an upload stream whose first point gets id `first_id`,
// and appends it to `staged`. `staged->factor_columns` is the factor row length known so far
// (0: inferred from this chunk).
absl::Status AppendUploadChunk(const v1::UploadPointsRequest& chunk, const core::IndexSpec& spec,
                               int64_t chunk_number, int64_t first_id, PointBatch* staged);

// Validates a ComputeOrderingRequest that needs no index: the index id, the name (the rule of
// index ids), the method, and seed / permutation only with the methods that use them.
absl::StatusOr<core::OrderingRequest> ToCoreOrderingRequest(
    const v1::ComputeOrderingRequest& request);
v1::OrderingMethod ToProto(core::OrderingMethod method);
// The answer of ComputeOrdering for `ordering` of index `index_id`.
void FillOrdering(const std::string& index_id, const StoredOrdering& ordering,
                  v1::Ordering* out);

v1::IndexState ToProto(IndexState state);
void FillIndexInfo(const IndexEntry& entry, v1::IndexInfo* info);
void FillSearchStats(const core::TraversalStats& stats, double seconds, v1::SearchStats* out);

grpc::Status ToGrpcStatus(const absl::Status& status);
// `prefix` + the message, same code (OK stays OK).
absl::Status WithPrefix(const absl::Status& status, absl::string_view prefix);
// The call's deadline; InfiniteFuture when it has none.
absl::Time DeadlineOf(const grpc::ServerContextBase& context);

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_PROTO_CONVERSION_H_
