#include "server/proto_conversion.h"

#include <chrono>
#include <cmath>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/kernel.h"
#include "core/residual_correlation.h"
#include "core/status_macros.h"

namespace rcknn::server {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", message));
}

absl::StatusOr<core::KernelType> ToCoreKernelType(int type) {
  switch (type) {
    case v1::KERNEL_RBF:
      return core::KernelType::kRbf;
    case v1::KERNEL_MATERN12:
      return core::KernelType::kMatern12;
    case v1::KERNEL_MATERN32:
      return core::KernelType::kMatern32;
    case v1::KERNEL_MATERN52:
      return core::KernelType::kMatern52;
    case v1::KERNEL_UNSPECIFIED:
      return Invalid("spec.kernel.type",
                     "KERNEL_UNSPECIFIED; choose KERNEL_RBF, KERNEL_MATERN12, KERNEL_MATERN32 or "
                     "KERNEL_MATERN52");
    default:
      return Invalid("spec.kernel.type", absl::StrCat("unknown KernelType value ", type));
  }
}

// Core reports kernel errors as "kernel.<field> ..." or "dimension ..."; clients know them as
// fields of `spec`.
absl::Status UnderSpec(const absl::Status& status) {
  if (status.ok() || status.code() != absl::StatusCode::kInvalidArgument) return status;
  return absl::InvalidArgumentError(absl::StrCat("spec.", status.message()));
}

absl::Status CheckFinite(const google::protobuf::RepeatedField<double>& values, int64_t row_length,
                         absl::string_view field, int64_t first_row, absl::string_view row_name) {
  for (int i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return Invalid(field, absl::StrCat("value ", values[i], " at ", row_name, " ",
                                         first_row + i / row_length, ", column ", i % row_length,
                                         " is not finite"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateSearchRequest(const v1::SearchRequest& request) {
  RETURN_IF_ERROR(ValidateIndexId(request.index_id()));
  if (request.k() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("k: must be >= 1, got ", request.k()));
  }
  const bool by_id = !request.query_ids().empty();
  const bool by_point = !request.query_points().empty();
  if (by_id == by_point) {
    return absl::InvalidArgumentError(
        by_id ? "query_ids, query_points: both are set; give exactly one"
              : "query_ids, query_points: neither is set; give exactly one");
  }
  if (by_id && !request.query_id_bounds().empty()) {
    return absl::InvalidArgumentError(
        "query_id_bounds: bounds query_points only; queries by id bound themselves "
        "(predecessor_mode)");
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::IndexSpec> SpecWithInducingPoints(
    const v1::IndexSpec& spec, const google::protobuf::RepeatedField<double>& points) {
  if (spec.metric() != v1::METRIC_RESIDUAL_CORRELATION) {
    return Invalid("inducing_points", "only residual correlation indexes have inducing points");
  }
  if (spec.factors_supplied()) {
    return Invalid("inducing_points", "the index has supplied factors, which replace them");
  }
  if (!spec.inducing_points().empty()) {
    return Invalid("inducing_points", "the index's spec gives its own inducing points");
  }
  if (spec.has_inducing_method() && spec.inducing_method() != v1::INDUCING_METHOD_UNIFORM) {
    return Invalid("inducing_points", "the index's spec chooses its inducing points by another "
                                      "method than the uniform draw");
  }
  v1::IndexSpec out = spec;
  // The points say how many there are, and replace the draw.
  out.clear_inducing_count();
  out.clear_inducing_method();
  out.clear_lloyd_iterations();
  *out.mutable_inducing_points() = points;
  v1::IndexSpec normalized;
  if (absl::StatusOr<core::IndexSpec> checked = ToCoreSpec(out, &normalized); !checked.ok()) {
    std::string message(checked.status().message());
    if (absl::StartsWith(message, "spec.")) message = message.substr(5);
    return absl::InvalidArgumentError(message);
  }
  return normalized;
}

absl::StatusOr<core::IndexSpec> ToCoreSpec(const v1::IndexSpec& spec, v1::IndexSpec* normalized) {
  core::IndexSpec out;
  *normalized = spec;
  if (spec.dimension() < 1 || spec.dimension() > kMaxDimension) {
    return Invalid("spec.dimension",
                   absl::StrCat("must be in [1, ", kMaxDimension, "], got ", spec.dimension()));
  }
  out.dimension = spec.dimension();
  const int d = spec.dimension();
  switch (spec.metric()) {
    case v1::METRIC_RESIDUAL_CORRELATION:
      out.metric = core::Metric::kResidualCorrelation;
      break;
    case v1::METRIC_EUCLIDEAN: {
      out.metric = core::Metric::kEuclidean;
      // No silent fallbacks: residual-only settings on a Euclidean index are a client mistake.
      if (spec.has_kernel()) return Invalid("spec.kernel", "is not used by METRIC_EUCLIDEAN");
      if (spec.has_inducing_count()) {
        return Invalid("spec.inducing_count", "is not used by METRIC_EUCLIDEAN");
      }
      if (spec.inducing_seed() != 0) {
        return Invalid("spec.inducing_seed", "is not used by METRIC_EUCLIDEAN");
      }
      if (!spec.inducing_points().empty()) {
        return Invalid("spec.inducing_points", "is not used by METRIC_EUCLIDEAN");
      }
      if (spec.factors_supplied()) {
        return Invalid("spec.factors_supplied", "is not used by METRIC_EUCLIDEAN");
      }
      if (spec.has_jitter()) return Invalid("spec.jitter", "is not used by METRIC_EUCLIDEAN");
      if (spec.has_inducing_method()) {
        return Invalid("spec.inducing_method", "is not used by METRIC_EUCLIDEAN");
      }
      if (spec.has_lloyd_iterations()) {
        return Invalid("spec.lloyd_iterations", "is not used by METRIC_EUCLIDEAN");
      }
      return out;
    }
    case v1::METRIC_UNSPECIFIED:
      return Invalid("spec.metric",
                     "METRIC_UNSPECIFIED; choose METRIC_RESIDUAL_CORRELATION or METRIC_EUCLIDEAN");
    default:
      return Invalid("spec.metric", absl::StrCat("unknown Metric value ", spec.metric()));
  }

  if (!spec.has_kernel()) {
    return Invalid("spec.kernel", "is required for METRIC_RESIDUAL_CORRELATION");
  }
  core::KernelSpec kernel;
  auto type = ToCoreKernelType(spec.kernel().type());
  if (!type.ok()) return type.status();
  kernel.type = *type;
  kernel.variance = spec.kernel().variance();
  kernel.lengthscales.assign(spec.kernel().lengthscales().begin(),
                             spec.kernel().lengthscales().end());
  if (absl::StatusOr<core::Kernel> checked = core::Kernel::Create(kernel, d); !checked.ok()) {
    return UnderSpec(checked.status());
  }
  out.residual.kernel = std::move(kernel);

  if (spec.has_inducing_count() && spec.inducing_count() < 1) {
    return Invalid("spec.inducing_count",
                   absl::StrCat("must be >= 1, got ", spec.inducing_count()));
  }
  out.residual.inducing_count =
      spec.has_inducing_count() ? spec.inducing_count() : core::kDefaultInducingCount;
  out.residual.inducing_seed = spec.inducing_seed();

  if (!spec.inducing_points().empty()) {
    if (spec.factors_supplied()) {
      return Invalid("spec.inducing_points",
                     "cannot be combined with factors_supplied (the factors replace them)");
    }
    const int64_t size = spec.inducing_points().size();
    if (size % d != 0) {
      return Invalid("spec.inducing_points",
                     absl::StrCat("holds ", size, " values, not a multiple of the dimension ", d));
    }
    const int64_t rows = size / d;
    if (absl::Status status =
            CheckFinite(spec.inducing_points(), d, "spec.inducing_points", 0, "row");
        !status.ok()) {
      return status;
    }
    if (spec.has_inducing_count() && spec.inducing_count() != rows) {
      return Invalid("spec.inducing_count",
                     absl::StrCat(spec.inducing_count(), " disagrees with the ", rows,
                                  " rows of spec.inducing_points"));
    }
    out.residual.inducing_points =
        Eigen::Map<const core::RowMatrix>(spec.inducing_points().data(), rows, d);
    out.residual.inducing_count = rows;
    normalized->set_inducing_count(rows);
  }

  if (spec.has_jitter()) {
    if (!std::isfinite(spec.jitter()) || spec.jitter() < 0.0) {
      return Invalid("spec.jitter", absl::StrCat("must be finite and >= 0, got ", spec.jitter()));
    }
    out.residual.jitter = spec.jitter();
  } else {
    out.residual.jitter = core::kDefaultJitter;
    normalized->set_jitter(core::kDefaultJitter);
  }
  out.factors_supplied = spec.factors_supplied();

  // The selection method: unset means the uniform draw, as before the field existed; the
  // reported spec says which one was used.
  v1::InducingMethod method =
      spec.has_inducing_method() ? spec.inducing_method() : v1::INDUCING_METHOD_UNIFORM;
  switch (method) {
    case v1::INDUCING_METHOD_UNIFORM:
      out.residual.inducing_method = core::InducingMethod::kUniform;
      break;
    case v1::INDUCING_METHOD_KMEANS_PLUSPLUS:
      out.residual.inducing_method = core::InducingMethod::kKMeansPlusPlus;
      break;
    case v1::INDUCING_METHOD_UNSPECIFIED:
      return Invalid("spec.inducing_method",
                     "INDUCING_METHOD_UNSPECIFIED; leave it unset for the uniform draw, or choose "
                     "INDUCING_METHOD_UNIFORM or INDUCING_METHOD_KMEANS_PLUSPLUS");
    default:
      return Invalid("spec.inducing_method", absl::StrCat("unknown InducingMethod value ", method));
  }
  if (spec.has_inducing_method() &&
      (spec.factors_supplied() || !spec.inducing_points().empty())) {
    return Invalid("spec.inducing_method",
                   spec.factors_supplied() ? "cannot be combined with factors_supplied"
                                           : "cannot be combined with explicit inducing_points");
  }
  if (spec.has_lloyd_iterations()) {
    if (method != v1::INDUCING_METHOD_KMEANS_PLUSPLUS) {
      return Invalid("spec.lloyd_iterations", "needs INDUCING_METHOD_KMEANS_PLUSPLUS");
    }
    if (spec.lloyd_iterations() < 0 || spec.lloyd_iterations() > kMaxLloydIterations) {
      return Invalid("spec.lloyd_iterations",
                     absl::StrCat("must be in [0, ", kMaxLloydIterations, "], got ",
                                  spec.lloyd_iterations()));
    }
    out.residual.lloyd_iterations = spec.lloyd_iterations();
  }
  if (!spec.factors_supplied() && spec.inducing_points().empty()) {
    normalized->set_inducing_method(method);
    if (method == v1::INDUCING_METHOD_KMEANS_PLUSPLUS) {
      normalized->set_lloyd_iterations(out.residual.lloyd_iterations);
    }
  }
  return out;
}

absl::StatusOr<core::OrderingRequest> ToCoreOrderingRequest(
    const v1::ComputeOrderingRequest& request) {
  RETURN_IF_ERROR(ValidateIndexId(request.index_id()));
  RETURN_IF_ERROR(ValidateIndexId(request.name(), "name"));
  core::OrderingRequest out;
  switch (request.method()) {
    case v1::ORDERING_METHOD_SUPPLIED:
      out.method = core::OrderingMethod::kSupplied;
      break;
    case v1::ORDERING_METHOD_RANDOM:
      out.method = core::OrderingMethod::kRandom;
      break;
    case v1::ORDERING_METHOD_MAXIMIN_EUCLIDEAN:
      out.method = core::OrderingMethod::kMaximinEuclidean;
      break;
    case v1::ORDERING_METHOD_MAXIMIN_RESIDUAL:
      out.method = core::OrderingMethod::kMaximinResidual;
      break;
    case v1::ORDERING_METHOD_UNSPECIFIED:
      return Invalid("method",
                     "ORDERING_METHOD_UNSPECIFIED; choose ORDERING_METHOD_SUPPLIED, _RANDOM, "
                     "_MAXIMIN_EUCLIDEAN or _MAXIMIN_RESIDUAL");
    default:
      return Invalid("method", absl::StrCat("unknown OrderingMethod value ", request.method()));
  }
  if (out.method != core::OrderingMethod::kRandom && request.seed() != 0) {
    return Invalid("seed", "is used by ORDERING_METHOD_RANDOM only");
  }
  if (out.method == core::OrderingMethod::kSupplied) {
    out.permutation.assign(request.permutation().begin(), request.permutation().end());
  } else if (!request.permutation().empty()) {
    return Invalid("permutation", "is used by ORDERING_METHOD_SUPPLIED only");
  }
  out.seed = request.seed();
  return out;
}

v1::OrderingMethod ToProto(core::OrderingMethod method) {
  switch (method) {
    case core::OrderingMethod::kSupplied:
      return v1::ORDERING_METHOD_SUPPLIED;
    case core::OrderingMethod::kRandom:
      return v1::ORDERING_METHOD_RANDOM;
    case core::OrderingMethod::kMaximinEuclidean:
      return v1::ORDERING_METHOD_MAXIMIN_EUCLIDEAN;
    case core::OrderingMethod::kMaximinResidual:
      return v1::ORDERING_METHOD_MAXIMIN_RESIDUAL;
  }
  return v1::ORDERING_METHOD_UNSPECIFIED;
}

absl::StatusOr<core::TreeStart> ToCoreTreeStart(int source_tree) {
  switch (source_tree) {
    case v1::SOURCE_TREE_UNSPECIFIED:
      return core::TreeStart::kAuto;
    case v1::SOURCE_TREE_REFIT:
      return core::TreeStart::kRefit;
    case v1::SOURCE_TREE_REBUILD:
      return core::TreeStart::kRebuild;
    default:
      return Invalid("source_tree", absl::StrCat("unknown value ", source_tree));
  }
}

absl::StatusOr<IndexSpecRecord> ToSpecRecord(const v1::IndexSpec& spec) {
  v1::IndexSpec normalized;
  IndexSpecRecord record;
  ASSIGN_OR_RETURN(record.core, ToCoreSpec(spec, &normalized));
  record.inducing_count_set = normalized.has_inducing_count();
  record.wire = normalized.SerializeAsString();
  return record;
}

absl::StatusOr<IndexSpecRecord> SpecRecordFromWire(absl::string_view wire) {
  v1::IndexSpec spec;
  if (!spec.ParseFromArray(wire.data(), static_cast<int>(wire.size()))) {
    return absl::DataLossError("the spec does not parse");
  }
  return ToSpecRecord(spec);
}

v1::IndexSpec WireSpec(const IndexSpecRecord& spec) {
  v1::IndexSpec out;
  if (!out.ParseFromArray(spec.wire.data(), static_cast<int>(spec.wire.size()))) out.Clear();
  return out;
}

absl::StatusOr<v1::IndexSpec> SpecFromSource(const v1::CreateIndexRequest& request,
                                             const v1::IndexSpec& source_spec) {
  RETURN_IF_ERROR(ToCoreTreeStart(request.source_tree()).status());
  if (source_spec.metric() != v1::METRIC_RESIDUAL_CORRELATION) {
    return Invalid("source_index_id",
                   absl::StrCat("index ", request.source_index_id(),
                                " is not METRIC_RESIDUAL_CORRELATION; only a kernel's "
                                "settings can be changed"));
  }
  v1::IndexSpec spec = request.has_spec() ? request.spec() : source_spec;
  if (spec.dimension() == 0) {
    spec.set_dimension(source_spec.dimension());
  } else if (spec.dimension() != source_spec.dimension()) {
    return Invalid("spec.dimension",
                   absl::StrCat(spec.dimension(), ", but the points of index ",
                                request.source_index_id(), " have ", source_spec.dimension(),
                                " coordinates (or leave it unset)"));
  }
  if (spec.metric() == v1::METRIC_UNSPECIFIED) {
    spec.set_metric(source_spec.metric());
  } else if (spec.metric() != source_spec.metric()) {
    return Invalid("spec.metric", "an index created from a source is "
                                  "METRIC_RESIDUAL_CORRELATION, as its source");
  }
  if (spec.factors_supplied()) {
    return Invalid("spec.factors_supplied",
                   "an index created from a source computes V and p from its kernel");
  }
  return spec;
}

absl::Status AppendUploadChunk(const v1::UploadPointsRequest& chunk, const core::IndexSpec& spec,
                               int64_t chunk_number, int64_t first_id, PointBatch* staged) {
  const int d = spec.dimension;
  const int64_t size = chunk.coordinates().size();
  if (size % d != 0) {
    return Invalid("coordinates", absl::StrCat("chunk ", chunk_number, " holds ", size,
                                               " values, not a multiple of the dimension ", d));
  }
  const int64_t rows = size / d;
  if (absl::Status status = CheckFinite(chunk.coordinates(), d, "coordinates", first_id, "point");
      !status.ok()) {
    return status;
  }
  int64_t columns = staged->factor_columns;
  if (!spec.factors_supplied) {
    if (!chunk.factors().empty()) {
      return Invalid("factors", "the index spec does not have factors_supplied");
    }
    if (!chunk.residual_variances().empty()) {
      return Invalid("residual_variances", "the index spec does not have factors_supplied");
    }
  } else {
    if (chunk.residual_variances().size() != rows) {
      return Invalid(
          "residual_variances",
          absl::StrCat("chunk ", chunk_number, " holds ", chunk.residual_variances().size(),
                       " values for ", rows, " points; give one per point"));
    }
    for (int64_t i = 0; i < rows; ++i) {
      const double p = chunk.residual_variances(i);
      if (!std::isfinite(p) || p <= 0.0) {
        return Invalid("residual_variances", absl::StrCat("value ", p, " of point ", first_id + i,
                                                          " must be finite and > 0"));
      }
    }
    const int64_t values = chunk.factors().size();
    if (columns == 0 && rows > 0) {
      if (values == 0 || values % rows != 0) {
        return Invalid("factors",
                       absl::StrCat("chunk ", chunk_number, " holds ", values, " values for ", rows,
                                    " points; give rows of equal length >= 1"));
      }
      columns = values / rows;
    }
    if (values != rows * columns) {
      return Invalid("factors",
                     absl::StrCat("chunk ", chunk_number, " holds ", values, " values for ", rows,
                                  " points of ", columns, " factors each"));
    }
    if (absl::Status status = CheckFinite(chunk.factors(), std::max<int64_t>(columns, 1), "factors",
                                          first_id, "point");
        !status.ok()) {
      return status;
    }
  }
  if (rows == 0) return absl::OkStatus();
  staged->coordinates.insert(staged->coordinates.end(), chunk.coordinates().begin(),
                             chunk.coordinates().end());
  if (spec.factors_supplied) {
    staged->factors.insert(staged->factors.end(), chunk.factors().begin(), chunk.factors().end());
    staged->residual_variances.insert(staged->residual_variances.end(),
                                      chunk.residual_variances().begin(),
                                      chunk.residual_variances().end());
    staged->factor_columns = columns;
  }
  staged->num_points += rows;
  return absl::OkStatus();
}

v1::IndexState ToProto(IndexState state) {
  switch (state) {
    case IndexState::kLoading:
      return v1::INDEX_STATE_LOADING;
    case IndexState::kBuilding:
      return v1::INDEX_STATE_BUILDING;
    case IndexState::kReady:
      return v1::INDEX_STATE_READY;
    case IndexState::kFailed:
      return v1::INDEX_STATE_FAILED;
  }
  return v1::INDEX_STATE_UNSPECIFIED;
}

void FillIndexInfo(const IndexEntry& entry, v1::IndexInfo* info) {
  const IndexSnapshot snapshot = entry.Snapshot();
  info->set_index_id(entry.id());
  *info->mutable_spec() = WireSpec(entry.spec());
  if (snapshot.inducing_count > 0 && !info->spec().has_inducing_count()) {
    info->mutable_spec()->set_inducing_count(snapshot.inducing_count);
  }
  info->set_state(ToProto(snapshot.state));
  info->set_num_points(snapshot.num_points);
  info->set_build_progress(snapshot.build_progress);
  info->set_build_seconds(snapshot.build_seconds);
  info->set_error(snapshot.error);
  info->set_memory_bytes(snapshot.memory_bytes);
  info->set_factor_seconds(snapshot.timings.factor_seconds);
  info->set_tree_seconds(snapshot.timings.tree_seconds);
  for (std::string& name : entry.OrderingNames()) info->add_orderings(std::move(name));
  info->set_source_index_id(entry.source_index_id());
  if (snapshot.state == IndexState::kReady && !entry.source_index_id().empty()) {
    absl::StatusOr<std::shared_ptr<const core::KnnIndex>> index = entry.ReadyIndex();
    info->set_tree_refitted(index.ok() && ((*index)->reparameterize_report().refitted ||
                                           entry.restored_refitted()));
  }
}

void FillOrdering(const std::string& index_id, const StoredOrdering& ordering,
                  v1::Ordering* out) {
  out->set_index_id(index_id);
  out->set_name(ordering.name);
  out->set_method(ToProto(ordering.method));
  out->mutable_permutation()->Assign(ordering.permutation.begin(), ordering.permutation.end());
  out->set_seconds(ordering.seconds);
}

void FillSearchStats(const core::TraversalStats& stats, double seconds, v1::SearchStats* out) {
  out->set_distance_evaluations(stats.distance_evaluations);
  out->set_heap_pushes(stats.heap_pushes);
  out->set_nodes_visited(stats.nodes_visited);
  out->set_subtrees_pruned(stats.pruned_by_bound + stats.pruned_by_predecessor);
  out->set_subtrees_pruned_by_bound(stats.pruned_by_bound);
  out->set_subtrees_pruned_by_predecessor(stats.pruned_by_predecessor);
  out->set_brute_force_queries(stats.brute_force_queries);
  out->set_search_seconds(seconds);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share their numbering (both are google.rpc.Code).
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status WithPrefix(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

absl::Time DeadlineOf(const grpc::ServerContextBase& context) {
  const auto deadline = context.deadline();
  // No deadline is reported as the largest time point.
  if (deadline >= std::chrono::system_clock::time_point::max() - std::chrono::hours(24)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

}  // namespace rcknn::server
