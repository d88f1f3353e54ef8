// The spec a build uses: the checks on an index spec that need the number of uploaded points,
// made when BuildIndex is called. Core types and absl::Status only (no protobuf), so that the
// index service and the fuzz target (tests/fuzz) link the same rule.
#ifndef RCKNN_SERVER_BUILD_SPEC_H_
#define RCKNN_SERVER_BUILD_SPEC_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/knn_index.h"

namespace rcknn::server {

// Returns the spec to build `n` points with: the default inducing count (when the client did not
// choose one, `inducing_count_set` false) becomes min(512, n). INVALID_ARGUMENT naming
// "spec.inducing_count" when more inducing points were asked for than n. Specs that draw no
// inducing points (other metrics, factors supplied, explicit inducing points) come back as they
// are.
absl::StatusOr<core::IndexSpec> SpecForBuild(const core::IndexSpec& spec, bool inducing_count_set,
                                             int64_t n);

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_BUILD_SPEC_H_
