#include "core/knn_query.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace rcknn::core {

absl::Status ValidateQuery(const QueryBatch& batch, const KnnOptions& options, int64_t n,
                           int dimension) {
  if (options.k < 1) {
    return absl::InvalidArgumentError(absl::StrCat("k: must be >= 1, got ", options.k));
  }
  if (!batch.ids.empty() && !batch.points.empty()) {
    return absl::InvalidArgumentError("query_ids, query_points: both are set; give exactly one");
  }
  if (batch.ids.empty() && batch.points.empty()) {
    return absl::InvalidArgumentError("query_ids, query_points: neither is set; give exactly one");
  }
  if (!options.rank.empty() || !options.subtree_min_rank.empty()) {
    if (!options.predecessor_mode) {
      return absl::InvalidArgumentError("ordering: an ordering applies to predecessor_mode only");
    }
    if (static_cast<int64_t>(options.rank.size()) != n ||
        static_cast<int64_t>(options.subtree_min_rank.size()) != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ordering: ranks for ", options.rank.size(), " points and ",
          options.subtree_min_rank.size(), " tree nodes, the index holds ", n));
    }
  }
  if (batch.by_id()) {
    if (!batch.id_bounds.empty()) {
      return absl::InvalidArgumentError(
          "query_id_bounds: bounds out-of-sample query_points only; queries by id bound "
          "themselves (predecessor_mode)");
    }
    for (size_t i = 0; i < batch.ids.size(); ++i) {
      if (batch.ids[i] < 0 || batch.ids[i] >= n) {
        return absl::InvalidArgumentError(absl::StrCat(
            "query_ids[", i, "] = ", batch.ids[i], " is out of range [0, ", n, ")"));
      }
    }
    return absl::OkStatus();
  }
  if (options.predecessor_mode) {
    return absl::InvalidArgumentError(
        "predecessor_mode needs query_ids: out-of-sample query_points have no id order");
  }
  if (options.include_self) {
    return absl::InvalidArgumentError(
        "include_self needs query_ids: out-of-sample query_points are not stored points");
  }
  if (batch.points.size() % dimension != 0) {
    return absl::InvalidArgumentError(absl::StrCat("query_points holds ", batch.points.size(),
                                                   " values, not a multiple of the dimension ",
                                                   dimension));
  }
  if (!batch.id_bounds.empty() &&
      batch.id_bounds.size() * static_cast<size_t>(dimension) != batch.points.size()) {
    return absl::InvalidArgumentError(absl::StrCat("query_id_bounds holds ", batch.id_bounds.size(),
                                                   " values for ",
                                                   batch.points.size() / dimension,
                                                   " query points; give one per point"));
  }
  for (size_t i = 0; i < batch.points.size(); ++i) {
    if (!std::isfinite(batch.points[i])) {
      return absl::InvalidArgumentError(absl::StrCat("query_points: value at row ",
                                                     i / dimension, ", column ", i % dimension,
                                                     " is not finite"));
    }
  }
  return absl::OkStatus();
}

}  // namespace rcknn::core
