// What a sharding router needs from one rcknn-server, through the client library: GetPoints,
// BuildIndexRequest.inducing_points (kept across a restart) and SearchRequest.query_id_bounds,
// each against the core library or an index that holds the same data another way, and their
// errors naming the field.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
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

using testing::StatusIs;
using testing::View;

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

client::SearchQuery PointQuery(const std::string& id, int64_t k, const core::RowMatrix& points,
                               const std::vector<int64_t>& bounds) {
  client::SearchQuery query;
  query.index_id = id;
  query.k = k;
  query.points = View(points);
  query.id_bounds = bounds;
  return query;
}

class ShardApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server::ServerOptions options;
    options.data_dir = temp_dir_.Path("data");
    served_.Start(std::move(options));
  }
  void TearDown() override { served_.Stop(); }
  void Restart() { served_.Restart(); }
  client::RcknnClient& client() { return served_.client(); }

  testing::TempDir temp_dir_{"rcknn-shard-api"};
  testing::ClientOnServer served_;
  const core::RowMatrix points_ = testing::NormalPoints(kN, kDimension, 41);
};

TEST_F(ShardApiTest, GetPointsReturnsTheUploadedCoordinatesWhileLoadingAndReady) {
  ASSERT_TRUE(client().CreateIndex("a", Spec()).ok());
  ASSERT_TRUE(client().UploadPoints("a", View(points_)).ok());
  const std::vector<int64_t> ids = {0, kN - 1, 17, 17, 1234};
  for (int pass = 0; pass < 2; ++pass) {
    const absl::StatusOr<std::vector<double>> coordinates = client().GetPoints("a", ids);
    ASSERT_TRUE(coordinates.ok()) << coordinates.status();
    ASSERT_EQ(coordinates->size(), ids.size() * kDimension);
    for (size_t i = 0; i < ids.size(); ++i) {
      for (int c = 0; c < kDimension; ++c) {
        EXPECT_EQ((*coordinates)[i * kDimension + c], points_(ids[i], c)) << pass;
      }
    }
    if (pass == 0) {
      const absl::StatusOr<v1::IndexInfo> built = testing::BuildAndWait(client(), "a");
      ASSERT_TRUE(built.ok()) << built.status();
      ASSERT_EQ(built->state(), v1::INDEX_STATE_READY) << built->error();
    }
  }
  EXPECT_THAT(client().GetPoints("a", std::vector<int64_t>{3, kN}),
              StatusIs(absl::StatusCode::kInvalidArgument, "ids[1]"));
  EXPECT_THAT(client().GetPoints("a", std::vector<int64_t>{-1}),
              StatusIs(absl::StatusCode::kInvalidArgument, "ids[0]"));
  EXPECT_THAT(client().GetPoints("nope", std::vector<int64_t>{0}),
              StatusIs(absl::StatusCode::kNotFound, "nope"));
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
  ASSERT_TRUE(client().CreateIndex("explicit", explicit_spec).ok());
  ASSERT_TRUE(client().CreateIndex("at_build", Spec()).ok());
  for (const char* id : {"explicit", "at_build"}) {
    ASSERT_TRUE(client().UploadPoints(id, View(points_, 0, half)).ok()) << id;
  }
  absl::StatusOr<v1::IndexInfo> info = testing::BuildAndWait(client(), "explicit");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
  ASSERT_TRUE(client().BuildIndex("at_build", inducing).ok());
  info = client().WaitForIndex("at_build");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
  EXPECT_EQ(info->spec().inducing_count(), kM);

  std::vector<int64_t> ids;
  for (int64_t i = 0; i < half; i += 37) ids.push_back(i);
  const core::RowMatrix queries = testing::NormalPoints(50, kDimension, 42);
  auto answers = [&](const std::string& id) {
    client::SearchQuery predecessor = testing::IdQuery(id, ids, 12);
    predecessor.predecessor_mode = true;
    std::vector<client::SearchResult> out;
    for (const client::SearchQuery& query :
         {testing::IdQuery(id, ids, 12), predecessor, PointQuery(id, 12, queries, {})}) {
      absl::StatusOr<client::SearchResult> result = client().Search(query);
      EXPECT_TRUE(result.ok()) << result.status();
      out.push_back(result.ok() ? *std::move(result) : client::SearchResult());
    }
    return out;
  };
  auto expect_equal = [](const std::vector<client::SearchResult>& a,
                         const std::vector<client::SearchResult>& b, const std::string& what) {
    for (size_t r = 0; r < a.size(); ++r) {
      ASSERT_EQ(a[r].ids.size(), b[r].ids.size()) << what;
      EXPECT_EQ(testing::CompareAnswers(a[r].ids.data(), a[r].distances.data(), b[r].ids.data(),
                                        b[r].distances.data(), a[r].num_queries, a[r].k, 1e-6),
                "")
          << what << " request " << r;
    }
  };
  const std::vector<client::SearchResult> at_build = answers("at_build");
  expect_equal(answers("explicit"), at_build, "inducing points at build vs in the spec");

  Restart();
  info = client().WaitForIndex("at_build");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
  const std::vector<client::SearchResult> restored = answers("at_build");
  for (size_t r = 0; r < restored.size(); ++r) {
    EXPECT_EQ(restored[r].ids, at_build[r].ids);
    EXPECT_EQ(restored[r].distances, at_build[r].distances)
        << "request " << r << ": a restored index answers bit for bit";
  }
}

TEST_F(ShardApiTest, InducingPointsAtBuildTimeErrorsNameTheField) {
  ASSERT_TRUE(client().CreateIndex("r", Spec()).ok());
  ASSERT_TRUE(client().UploadPoints("r", View(points_)).ok());
  v1::IndexSpec euclidean;
  euclidean.set_metric(v1::METRIC_EUCLIDEAN);
  euclidean.set_dimension(kDimension);
  ASSERT_TRUE(client().CreateIndex("e", euclidean).ok());
  ASSERT_TRUE(client().UploadPoints("e", View(points_)).ok());
  for (const auto& [id, inducing] : std::vector<std::pair<std::string, std::vector<double>>>{
           {"r", {0.1, 0.2, 0.3}},                                    // not whole rows
           {"r", {0.1, std::numeric_limits<double>::infinity()}},     // not finite
           {"e", {0.1, 0.2}}}) {                                      // no inducing points
    const absl::StatusOr<v1::IndexInfo> refused = client().BuildIndex(id, inducing);
    EXPECT_THAT(refused, StatusIs(absl::StatusCode::kInvalidArgument, "inducing_points")) << id;
    EXPECT_THAT(std::string(refused.status().message()), ::testing::StartsWith("inducing_points"))
        << id;
  }
  // Refused builds leave the index LOADING.
  const absl::StatusOr<v1::IndexInfo> info = client().GetIndex("r");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::INDEX_STATE_LOADING);
}

TEST_F(ShardApiTest, QueryIdBoundsKeepOnlyLowerIds) {
  ASSERT_TRUE(client().CreateIndex("b", Spec()).ok());
  ASSERT_TRUE(client().UploadPoints("b", View(points_)).ok());
  const absl::StatusOr<v1::IndexInfo> info = testing::BuildAndWait(client(), "b");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
  const core::RowMatrix queries = testing::NormalPoints(40, kDimension, 43);
  std::vector<int64_t> bounds(40);
  core::SplitMix64 rng(44);
  for (int64_t q = 0; q < 40; ++q) {
    const int64_t edges[] = {0, -5, 1, 3, kN, kN + 9};
    bounds[q] = q < 6 ? edges[q] : static_cast<int64_t>(rng.UniformBelow(kN));
  }
  const int64_t k = 20;
  const absl::StatusOr<client::SearchResult> bounded =
      client().Search(PointQuery("b", k, queries, bounds));
  ASSERT_TRUE(bounded.ok()) << bounded.status();
  // Each row must be the k nearest among ids below its bound: the unbounded answer with k = n,
  // filtered.
  const absl::StatusOr<client::SearchResult> all =
      client().Search(PointQuery("b", kN, queries, {}));
  ASSERT_TRUE(all.ok()) << all.status();
  for (int64_t q = 0; q < 40; ++q) {
    std::vector<int64_t> want_ids;
    std::vector<double> want_dists;
    for (int64_t r = 0; r < kN && static_cast<int64_t>(want_ids.size()) < k; ++r) {
      if (all->ids[q * kN + r] < bounds[q]) {
        want_ids.push_back(all->ids[q * kN + r]);
        want_dists.push_back(all->distances[q * kN + r]);
      }
    }
    want_ids.resize(k, -1);
    want_dists.resize(k, std::numeric_limits<double>::infinity());
    EXPECT_EQ(testing::CompareAnswers(bounded->ids.data() + q * k,
                                      bounded->distances.data() + q * k, want_ids.data(),
                                      want_dists.data(), 1, k, 1e-6),
              "")
        << "query " << q << " bound " << bounds[q];
  }

  EXPECT_THAT(client().Search(PointQuery("b", k, queries, std::vector<int64_t>(39, 5))),
              StatusIs(absl::StatusCode::kInvalidArgument, "query_id_bounds"));
  // Bounds with query ids: the raw request, which the client library does not build.
  v1::SearchRequest by_id = testing::IdSearch("b", k, {1, 2});
  by_id.add_query_id_bounds(1);
  by_id.add_query_id_bounds(2);
  v1::SearchResponse response;
  const grpc::Status status = testing::Search(client().stub(), by_id, &response);
  EXPECT_THAT(status, StatusIs(grpc::StatusCode::INVALID_ARGUMENT, "query_id_bounds"));
  EXPECT_THAT(status.error_message(), ::testing::StartsWith("query_id_bounds"));
}

TEST_F(ShardApiTest, ExpectedNumPointsIsAcceptedAndANegativeCountIsRefused) {
  EXPECT_THAT(client().CreateIndex("x", Spec(), -1),
              StatusIs(absl::StatusCode::kInvalidArgument, "expected_num_points"));
  const absl::StatusOr<v1::IndexInfo> created = client().CreateIndex("x", Spec(), kN);
  EXPECT_TRUE(created.ok()) << created.status();
}

}  // namespace
}  // namespace rcknn
