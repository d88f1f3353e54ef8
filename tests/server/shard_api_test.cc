// What a sharding router needs from one rcknn-server, through a real stub: GetPoints,
// BuildIndexRequest.inducing_points (kept across a restart) and SearchRequest.query_id_bounds,
// each against the core library or an index that holds the same data another way, and their
// errors naming the field.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/knn_index.h"
#include "core/random.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"
#include "tests/testing/temp_dir.h"

namespace rcknn {
namespace {

using ::testing::HasSubstr;

constexpr int kDimension = 2;
constexpr int64_t kN = 2000;
constexpr int64_t kM = 48;

v1::IndexSpec Spec() {
  return testing::ResidualSpec(kDimension, v1::KERNEL_MATERN32, 1.2, 0.6, kM, /*seed=*/9);
}

// The coordinates of the inducing points the server would draw for kN points with Spec().
std::vector<double> DrawnInducingPoints(const core::RowMatrix& points) {
  std::vector<double> out;
  for (int64_t id : core::SampleDistinct(kN, kM, 9)) {
    out.insert(out.end(), points.row(id).data(), points.row(id).data() + kDimension);
  }
  return out;
}

grpc::Status BuildWith(v1::Rcknn::Stub& stub, const std::string& id,
                       const std::vector<double>& inducing) {
  v1::BuildIndexRequest request;
  request.set_index_id(id);
  request.mutable_inducing_points()->Add(inducing.begin(), inducing.end());
  v1::IndexInfo info;
  grpc::ClientContext context;
  testing::SetDeadline(context);
  return stub.BuildIndex(&context, request, &info);
}

grpc::Status GetPoints(v1::Rcknn::Stub& stub, const std::string& id,
                       const std::vector<int64_t>& ids, v1::GetPointsResponse* response) {
  v1::GetPointsRequest request;
  request.set_index_id(id);
  request.mutable_ids()->Add(ids.begin(), ids.end());
  grpc::ClientContext context;
  testing::SetDeadline(context);
  return stub.GetPoints(&context, request, response);
}

v1::SearchRequest PointSearch(const std::string& id, int64_t k, const core::RowMatrix& points,
                              const std::vector<int64_t>& bounds) {
  v1::SearchRequest request;
  request.set_index_id(id);
  request.set_k(k);
  request.mutable_query_points()->Add(points.data(), points.data() + points.size());
  request.mutable_query_id_bounds()->Add(bounds.begin(), bounds.end());
  return request;
}

class ShardApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.data_dir = temp_dir_.Path("data");
    test_ = testing::StartTestServer(options_);
  }
  void TearDown() override { test_ = testing::TestServer(); }
  void Restart() {
    test_.server->Shutdown(absl::ZeroDuration());
    test_ = testing::TestServer();  // releases the directory's lock
    test_ = testing::StartTestServer(options_);
  }
  v1::Rcknn::Stub& stub() { return *test_.stub; }

  testing::TempDir temp_dir_{"rcknn-shard-api"};
  server::ServerOptions options_;
  testing::TestServer test_;
  const core::RowMatrix points_ = testing::NormalPoints(kN, kDimension, 41);
};

TEST_F(ShardApiTest, GetPointsReturnsTheUploadedCoordinatesWhileLoadingAndReady) {
  ASSERT_TRUE(testing::CreateIndex(stub(), "a", Spec()).ok());
  ASSERT_TRUE(testing::UploadPoints(stub(), "a", points_, 300).ok());
  const std::vector<int64_t> ids = {0, kN - 1, 17, 17, 1234};
  for (int pass = 0; pass < 2; ++pass) {
    v1::GetPointsResponse response;
    const grpc::Status status = GetPoints(stub(), "a", ids, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(response.coordinates_size(), static_cast<int>(ids.size()) * kDimension);
    for (size_t i = 0; i < ids.size(); ++i) {
      for (int c = 0; c < kDimension; ++c) {
        EXPECT_EQ(response.coordinates(i * kDimension + c), points_(ids[i], c)) << pass;
      }
    }
    if (pass == 0) {
      ASSERT_EQ(testing::BuildAndWait(stub(), "a").state(), v1::INDEX_STATE_READY);
    }
  }
  v1::GetPointsResponse response;
  grpc::Status status = GetPoints(stub(), "a", {3, kN}, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("ids[1]"));
  status = GetPoints(stub(), "a", {-1}, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  status = GetPoints(stub(), "nope", {0}, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
}

// An index built with BuildIndexRequest.inducing_points (drawn over more points than it holds,
// as a router draws them over all shards) answers exactly like one whose spec names the same
// points, and comes back the same after a restart.
TEST_F(ShardApiTest, InducingPointsAtBuildTimeGiveTheSameMetricAndSurviveARestart) {
  const std::vector<double> inducing = DrawnInducingPoints(points_);
  const int64_t half = kN / 2;
  v1::IndexSpec explicit_spec = Spec();
  explicit_spec.clear_inducing_count();
  explicit_spec.mutable_inducing_points()->Add(inducing.begin(), inducing.end());
  ASSERT_TRUE(testing::CreateIndex(stub(), "explicit", explicit_spec).ok());
  ASSERT_TRUE(testing::CreateIndex(stub(), "at_build", Spec()).ok());
  for (const char* id : {"explicit", "at_build"}) {
    ASSERT_TRUE(testing::UploadPoints(stub(), id, points_, 0, half, 300).ok()) << id;
  }
  ASSERT_EQ(testing::BuildAndWait(stub(), "explicit").state(), v1::INDEX_STATE_READY);
  ASSERT_TRUE(BuildWith(stub(), "at_build", inducing).ok());
  ASSERT_EQ(testing::AwaitBuilt(stub(), "at_build").state(), v1::INDEX_STATE_READY);
  EXPECT_EQ(testing::GetIndex(stub(), "at_build").spec().inducing_count(), kM);

  std::vector<int64_t> ids;
  for (int64_t i = 0; i < half; i += 37) ids.push_back(i);
  const core::RowMatrix queries = testing::NormalPoints(50, kDimension, 42);
  auto answers = [&](const std::string& id) {
    std::vector<v1::SearchResponse> out(3);
    EXPECT_TRUE(testing::Search(stub(), testing::IdSearch(id, 12, ids), &out[0]).ok());
    EXPECT_TRUE(testing::Search(stub(), testing::IdSearch(id, 12, ids, true), &out[1]).ok());
    EXPECT_TRUE(testing::Search(stub(), PointSearch(id, 12, queries, {}), &out[2]).ok());
    return out;
  };
  auto expect_equal = [](const std::vector<v1::SearchResponse>& a,
                         const std::vector<v1::SearchResponse>& b, const std::string& what) {
    for (size_t r = 0; r < a.size(); ++r) {
      ASSERT_EQ(a[r].neighbor_ids_size(), b[r].neighbor_ids_size()) << what;
      EXPECT_EQ(testing::CompareAnswers(a[r].neighbor_ids().data(), a[r].distances().data(),
                                        b[r].neighbor_ids().data(), b[r].distances().data(),
                                        a[r].num_queries(), a[r].k(), 1e-6),
                "")
          << what << " request " << r;
    }
  };
  const std::vector<v1::SearchResponse> at_build = answers("at_build");
  expect_equal(answers("explicit"), at_build, "inducing points at build vs in the spec");

  Restart();
  ASSERT_EQ(testing::AwaitBuilt(stub(), "at_build").state(), v1::INDEX_STATE_READY)
      << testing::GetIndex(stub(), "at_build").error();
  const std::vector<v1::SearchResponse> restored = answers("at_build");
  for (size_t r = 0; r < restored.size(); ++r) {
    EXPECT_EQ(restored[r].neighbor_ids().size(), at_build[r].neighbor_ids().size());
    EXPECT_TRUE(std::equal(restored[r].neighbor_ids().begin(), restored[r].neighbor_ids().end(),
                           at_build[r].neighbor_ids().begin()));
    EXPECT_TRUE(std::equal(restored[r].distances().begin(), restored[r].distances().end(),
                           at_build[r].distances().begin()))
        << "request " << r << ": a restored index answers bit for bit";
  }
}

TEST_F(ShardApiTest, InducingPointsAtBuildTimeErrorsNameTheField) {
  ASSERT_TRUE(testing::CreateIndex(stub(), "r", Spec()).ok());
  ASSERT_TRUE(testing::UploadPoints(stub(), "r", points_, 1000).ok());
  v1::IndexSpec euclidean;
  euclidean.set_metric(v1::METRIC_EUCLIDEAN);
  euclidean.set_dimension(kDimension);
  ASSERT_TRUE(testing::CreateIndex(stub(), "e", euclidean).ok());
  ASSERT_TRUE(testing::UploadPoints(stub(), "e", points_, 1000).ok());
  for (const auto& [id, inducing] : std::vector<std::pair<std::string, std::vector<double>>>{
           {"r", {0.1, 0.2, 0.3}},                                    // not whole rows
           {"r", {0.1, std::numeric_limits<double>::infinity()}},     // not finite
           {"e", {0.1, 0.2}}}) {                                      // no inducing points
    const grpc::Status status = BuildWith(stub(), id, inducing);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << id;
    EXPECT_THAT(status.error_message(), ::testing::StartsWith("inducing_points")) << id;
  }
  // Refused builds leave the index LOADING.
  EXPECT_EQ(testing::GetIndex(stub(), "r").state(), v1::INDEX_STATE_LOADING);
}

TEST_F(ShardApiTest, QueryIdBoundsKeepOnlyLowerIds) {
  ASSERT_TRUE(testing::CreateIndex(stub(), "b", Spec()).ok());
  ASSERT_TRUE(testing::UploadPoints(stub(), "b", points_, 500).ok());
  ASSERT_EQ(testing::BuildAndWait(stub(), "b").state(), v1::INDEX_STATE_READY);
  const core::RowMatrix queries = testing::NormalPoints(40, kDimension, 43);
  std::vector<int64_t> bounds(40);
  core::SplitMix64 rng(44);
  for (int64_t q = 0; q < 40; ++q) {
    const int64_t edges[] = {0, -5, 1, 3, kN, kN + 9};
    bounds[q] = q < 6 ? edges[q] : static_cast<int64_t>(rng.UniformBelow(kN));
  }
  const int64_t k = 20;
  v1::SearchResponse bounded;
  ASSERT_TRUE(testing::Search(stub(), PointSearch("b", k, queries, bounds), &bounded).ok());
  // Each row must be the k nearest among ids below its bound: the unbounded answer with k = n,
  // filtered.
  v1::SearchResponse all;
  ASSERT_TRUE(testing::Search(stub(), PointSearch("b", kN, queries, {}), &all).ok());
  for (int64_t q = 0; q < 40; ++q) {
    std::vector<int64_t> want_ids;
    std::vector<double> want_dists;
    for (int64_t r = 0; r < kN && static_cast<int64_t>(want_ids.size()) < k; ++r) {
      if (all.neighbor_ids(q * kN + r) < bounds[q]) {
        want_ids.push_back(all.neighbor_ids(q * kN + r));
        want_dists.push_back(all.distances(q * kN + r));
      }
    }
    want_ids.resize(k, -1);
    want_dists.resize(k, std::numeric_limits<double>::infinity());
    EXPECT_EQ(testing::CompareAnswers(bounded.neighbor_ids().data() + q * k,
                                      bounded.distances().data() + q * k, want_ids.data(),
                                      want_dists.data(), 1, k, 1e-6),
              "")
        << "query " << q << " bound " << bounds[q];
  }

  v1::SearchResponse response;
  grpc::Status status = testing::Search(
      stub(), PointSearch("b", k, queries, std::vector<int64_t>(39, 5)), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), ::testing::StartsWith("query_id_bounds"));
  v1::SearchRequest by_id = testing::IdSearch("b", k, {1, 2});
  by_id.add_query_id_bounds(1);
  by_id.add_query_id_bounds(2);
  status = testing::Search(stub(), by_id, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), ::testing::StartsWith("query_id_bounds"));
}

TEST_F(ShardApiTest, ExpectedNumPointsIsAcceptedAndANegativeCountIsRefused) {
  v1::CreateIndexRequest request;
  request.set_index_id("x");
  *request.mutable_spec() = Spec();
  request.set_expected_num_points(-1);
  v1::IndexInfo info;
  grpc::Status status;
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    status = stub().CreateIndex(&context, request, &info);
  }
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), ::testing::StartsWith("expected_num_points"));
  request.set_expected_num_points(kN);
  grpc::ClientContext context;
  testing::SetDeadline(context);
  status = stub().CreateIndex(&context, request, &info);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

}  // namespace
}  // namespace rcknn
