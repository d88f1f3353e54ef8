// Writes the seed corpus of rcknn_fuzz_requests: one valid request of each kind (and a few
// variants), in the input format of fuzz_requests.h. Usage: rcknn_fuzz_write_seeds <dir>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>

#include "rcknn/v1/rcknn.pb.h"
#include "tests/fuzz/fuzz_requests.h"

namespace rcknn::fuzz {
namespace {

bool Write(const std::string& dir, const std::string& name, RequestKind kind, int variant,
           const google::protobuf::MessageLite& message) {
  std::string bytes(1, static_cast<char>(Selector(kind, variant)));
  bytes += message.SerializeAsString();
  std::ofstream out(dir + "/" + name, std::ios::binary);
  out << bytes;
  return static_cast<bool>(out);
}

v1::IndexSpec ResidualSpec() {
  v1::IndexSpec spec;
  spec.set_dimension(3);
  spec.set_metric(v1::METRIC_RESIDUAL_CORRELATION);
  spec.mutable_kernel()->set_type(v1::KERNEL_RBF);
  spec.mutable_kernel()->set_variance(1.5);
  spec.mutable_kernel()->add_lengthscales(0.5);
  spec.set_inducing_count(8);
  spec.set_inducing_seed(3);
  return spec;
}

bool WriteAll(const std::string& dir) {
  bool ok = true;
  {
    v1::CreateIndexRequest request;
    request.set_index_id("residual-1");
    *request.mutable_spec() = ResidualSpec();
    ok &= Write(dir, "create_residual", RequestKind::kCreateIndex, 0, request);
    request.mutable_spec()->clear_inducing_count();
    request.mutable_spec()->set_jitter(1e-6);
    request.mutable_spec()->mutable_kernel()->set_type(v1::KERNEL_MATERN52);
    for (int i = 0; i < 3; ++i) request.mutable_spec()->mutable_kernel()->add_lengthscales(1.0);
    request.mutable_spec()->mutable_kernel()->mutable_lengthscales()->RemoveLast();
    for (int i = 0; i < 6; ++i) request.mutable_spec()->add_inducing_points(0.25 * i);
    ok &= Write(dir, "create_inducing_points", RequestKind::kCreateIndex, 2, request);
    request.set_index_id("euclid");
    request.mutable_spec()->Clear();
    request.mutable_spec()->set_dimension(2);
    request.mutable_spec()->set_metric(v1::METRIC_EUCLIDEAN);
    ok &= Write(dir, "create_euclidean", RequestKind::kCreateIndex, 1, request);
    v1::IndexSpec factors = ResidualSpec();
    factors.set_factors_supplied(true);
    factors.set_inducing_count(2);
    ok &= Write(dir, "spec_factors", RequestKind::kIndexSpec, 3, factors);
  }
  {
    v1::UploadPointsRequest request;
    request.set_index_id("residual-1");
    for (int i = 0; i < 6; ++i) request.add_coordinates(0.1 * i);
    ok &= Write(dir, "upload_points", RequestKind::kUploadPoints, 2, request);
    // Dimension 3 with factors (variant bit 4) of 2 columns: 2 points.
    for (int i = 0; i < 4; ++i) request.add_factors(0.5 - 0.1 * i);
    request.add_residual_variances(0.7);
    request.add_residual_variances(0.9);
    ok &= Write(dir, "upload_factors", RequestKind::kUploadPoints, 2 | 4, request);
  }
  {
    v1::BuildIndexRequest build;
    build.set_index_id("residual-1");
    ok &= Write(dir, "build", RequestKind::kBuildIndex, 0, build);
    v1::GetIndexRequest get;
    get.set_index_id("residual-1");
    ok &= Write(dir, "get", RequestKind::kGetIndex, 0, get);
    v1::DeleteIndexRequest remove;
    remove.set_index_id("residual-1");
    ok &= Write(dir, "delete", RequestKind::kDeleteIndex, 0, remove);
    ok &= Write(dir, "list", RequestKind::kListIndexes, 0, v1::ListIndexesRequest());
  }
  {
    v1::SearchRequest request;
    request.set_index_id("residual-1");
    request.set_k(5);
    for (int i = 0; i < 4; ++i) request.add_query_ids(i * 11);
    ok &= Write(dir, "search_ids", RequestKind::kSearch, 0, request);
    request.set_predecessor_mode(true);
    ok &= Write(dir, "search_predecessor", RequestKind::kSearch, 1, request);
    request.set_predecessor_mode(false);
    request.set_include_self(true);
    ok &= Write(dir, "search_include_self", RequestKind::kSearch, 0, request);
    request.clear_query_ids();
    request.set_include_self(false);
    request.set_k(kIndexPoints + 2);
    for (int i = 0; i < 2 * kIndexDimension; ++i) request.add_query_points(0.2 * i - 0.3);
    ok &= Write(dir, "search_points", RequestKind::kSearch, 1, request);
    // Answer sizes past int64 (k = 2^62, int64 max), with the default and the small limits.
    request.set_k(int64_t{1} << 62);
    ok &= Write(dir, "search_huge_k", RequestKind::kSearch, 0, request);
    request.set_k(std::numeric_limits<int64_t>::max());
    ok &= Write(dir, "search_max_k", RequestKind::kSearch, 3, request);
    request.set_k(200);
    ok &= Write(dir, "search_k_over_small_limit", RequestKind::kSearch, 2, request);
  }
  return ok;
}

}  // namespace
}  // namespace rcknn::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  return rcknn::fuzz::WriteAll(argv[1]) ? 0 : 1;
}
