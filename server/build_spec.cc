#include "server/build_spec.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/residual_correlation.h"

namespace rcknn::server {

absl::StatusOr<core::IndexSpec> SpecForBuild(const core::IndexSpec& spec, bool inducing_count_set,
                                             int64_t n) {
  core::IndexSpec out = spec;
  if (spec.metric != core::Metric::kResidualCorrelation || spec.factors_supplied ||
      spec.residual.inducing_points.has_value()) {
    return out;
  }
  if (!inducing_count_set) {
    out.residual.inducing_count = std::min<int64_t>(core::kDefaultInducingCount, n);
  } else if (spec.residual.inducing_count > n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.inducing_count: ", spec.residual.inducing_count,
        " inducing points were asked for, but the index holds only ", n, " points"));
  }
  return out;
}

}  // namespace rcknn::server
