// ComputeOrdering and the k-means++ inducing points through a real in-process server: the
// orderings the server computes are the core library's, listed in IndexInfo, kept across a
// restart with --data_dir, and every bad request is INVALID_ARGUMENT naming its field (or
// NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS).
#include <string>
#include <vector>

#include "core/brute_force_knn.h"
#include "core/knn_index.h"
#include "core/ordering.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"
#include "tests/testing/temp_dir.h"

namespace rcknn {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kPoints = 300;

grpc::Status Compute(v1::Rcknn::Stub& stub, const v1::ComputeOrderingRequest& request,
                     v1::Ordering* response) {
  grpc::ClientContext context;
  testing::SetDeadline(context);
  return stub.ComputeOrdering(&context, request, response);
}

v1::ComputeOrderingRequest Request(const std::string& id, const std::string& name,
                                   v1::OrderingMethod method) {
  v1::ComputeOrderingRequest request;
  request.set_index_id(id);
  request.set_name(name);
  request.set_method(method);
  return request;
}

void ExpectInvalid(v1::Rcknn::Stub& stub, const v1::ComputeOrderingRequest& request,
                   const std::string& field) {
  v1::Ordering response;
  const grpc::Status status = Compute(stub, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr(field));
}

class OrderingServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    points_ = testing::NormalPoints(kPoints, 2, 3);
    test_ = testing::StartTestServer(Options());
  }
  void TearDown() override { test_ = testing::TestServer(); }
  server::ServerOptions Options() const {
    server::ServerOptions options;
    options.data_dir = data_dir_;
    return options;
  }
  void Restart() {
    test_.server->Shutdown(absl::ZeroDuration());
    test_ = testing::TestServer();
    test_ = testing::StartTestServer(Options());
  }
  v1::Rcknn::Stub& stub() { return *test_.stub; }
  void MakeReady(const std::string& id) {
    const v1::IndexInfo info = testing::CreateReadyIndex(
        stub(), id, testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 16), points_);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  }

  testing::TempDir temp_dir_{"rcknn-ordering"};
  const std::string data_dir_ = temp_dir_.Path("data");
  core::RowMatrix points_;
  testing::TestServer test_;
};

TEST_F(OrderingServiceTest, ComputesKeepsAndListsOrderings) {
  MakeReady("a");
  v1::ComputeOrderingRequest random = Request("a", "rand-7", v1::ORDERING_METHOD_RANDOM);
  random.set_seed(7);
  v1::Ordering ordering;
  ASSERT_TRUE(Compute(stub(), random, &ordering).ok());
  EXPECT_EQ(ordering.index_id(), "a");
  EXPECT_EQ(ordering.name(), "rand-7");
  EXPECT_EQ(ordering.method(), v1::ORDERING_METHOD_RANDOM);
  EXPECT_GE(ordering.seconds(), 0.0);
  EXPECT_EQ(std::vector<int64_t>(ordering.permutation().begin(), ordering.permutation().end()),
            core::RandomPermutation(kPoints, 7));

  v1::Ordering maximin;
  ASSERT_TRUE(
      Compute(stub(), Request("a", "mm", v1::ORDERING_METHOD_MAXIMIN_RESIDUAL), &maximin).ok());
  const std::vector<int64_t> permutation(maximin.permutation().begin(),
                                         maximin.permutation().end());
  EXPECT_TRUE(core::Ranks(permutation, kPoints).ok());
  core::RowMatrix scaled = points_ / 0.5;
  EXPECT_EQ(permutation[0], core::NearestToCentroid(scaled));

  v1::Ordering euclidean;
  ASSERT_TRUE(
      Compute(stub(), Request("a", "mme", v1::ORDERING_METHOD_MAXIMIN_EUCLIDEAN), &euclidean).ok());
  EXPECT_EQ(euclidean.permutation(0), permutation[0]);

  v1::ComputeOrderingRequest supplied = Request("a", "mine", v1::ORDERING_METHOD_SUPPLIED);
  for (int64_t i = kPoints - 1; i >= 0; --i) supplied.add_permutation(i);
  v1::Ordering echoed;
  ASSERT_TRUE(Compute(stub(), supplied, &echoed).ok());
  EXPECT_EQ(echoed.permutation(0), kPoints - 1);

  EXPECT_THAT(testing::GetIndex(stub(), "a").orderings(),
              ElementsAre("mine", "mm", "mme", "rand-7"));

  v1::Ordering again;
  EXPECT_EQ(Compute(stub(), random, &again).error_code(), grpc::StatusCode::ALREADY_EXISTS);

  // Kept across a restart.
  Restart();
  const v1::IndexInfo info = testing::AwaitBuilt(stub(), "a");
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  EXPECT_THAT(info.orderings(), ElementsAre("mine", "mm", "mme", "rand-7"));
  EXPECT_EQ(Compute(stub(), random, &again).error_code(), grpc::StatusCode::ALREADY_EXISTS);
}

// Predecessor answers under `permutation` by the core brute force over the same factors.
std::vector<double> CorePredecessorDistances(const core::RowMatrix& points,
                                             const std::vector<int64_t>& permutation,
                                             int64_t k, std::vector<int64_t>* ids) {
  core::IndexSpec spec;
  spec.dimension = 2;
  spec.residual.kernel.lengthscales = {0.5};
  spec.residual.inducing_count = 16;
  spec.residual.inducing_seed = 1;
  core::IndexData data;
  data.points = points;
  auto index = core::KnnIndex::Build(spec, std::move(data));
  EXPECT_TRUE(index.ok()) << index.status();
  auto ordering = core::IndexOrdering::Create((*index)->tree(), permutation);
  EXPECT_TRUE(ordering.ok());
  const int64_t n = points.rows();
  std::vector<int64_t> query(n);
  for (int64_t i = 0; i < n; ++i) query[i] = i;
  core::QueryBatch batch;
  batch.ids = query;
  core::KnnOptions options;
  options.k = k;
  options.predecessor_mode = true;
  options.rank = ordering->rank();
  options.subtree_min_rank = ordering->subtree_min_rank();
  ids->resize(n * k);
  std::vector<double> dists(n * k);
  EXPECT_TRUE(core::BruteForceKnn((*index)->space(), batch, options, nullptr, nullptr,
                                  ids->data(), dists.data())
                  .ok());
  return dists;
}

TEST_F(OrderingServiceTest, PredecessorSearchUnderAnOrdering) {
  MakeReady("a");
  v1::ComputeOrderingRequest request = Request("a", "mm", v1::ORDERING_METHOD_MAXIMIN_RESIDUAL);
  v1::Ordering ordering;
  ASSERT_TRUE(Compute(stub(), request, &ordering).ok());
  const std::vector<int64_t> permutation(ordering.permutation().begin(),
                                         ordering.permutation().end());
  const int64_t k = 8;
  std::vector<int64_t> all(kPoints);
  for (int64_t i = 0; i < kPoints; ++i) all[i] = i;
  v1::SearchRequest search = testing::IdSearch("a", k, all, /*predecessor_mode=*/true);
  search.set_ordering("mm");
  v1::SearchResponse by_id;
  ASSERT_TRUE(testing::Search(stub(), search, &by_id).ok());
  std::vector<int64_t> want_ids;
  const std::vector<double> want = CorePredecessorDistances(points_, permutation, k, &want_ids);
  EXPECT_EQ(testing::CompareAnswers(by_id.neighbor_ids().data(), by_id.distances().data(),
                                    want_ids.data(), want.data(), kPoints, k, 1e-6),
            "");
  // The point at rank 0 has no predecessor; without the ordering, id 0 has none.
  const int64_t first = permutation[0];
  EXPECT_EQ(by_id.neighbor_ids(first * k), -1);
  EXPECT_NE(by_id.neighbor_ids(0), -1);

  // The same queries by rank: row r is the answer of the point at rank r, in ranks.
  v1::SearchRequest ranked = search;
  ranked.set_ids_are_ranks(true);
  v1::SearchResponse by_rank;
  ASSERT_TRUE(testing::Search(stub(), ranked, &by_rank).ok());
  std::vector<int64_t> rank(kPoints);
  for (int64_t r = 0; r < kPoints; ++r) rank[permutation[r]] = r;
  std::vector<int64_t> mapped_ids(kPoints * k);
  std::vector<double> mapped_dists(kPoints * k);
  for (int64_t r = 0; r < kPoints; ++r) {
    for (int64_t t = 0; t < k; ++t) {
      const int64_t id = by_id.neighbor_ids(permutation[r] * k + t);
      mapped_ids[r * k + t] = id < 0 ? -1 : rank[id];
      mapped_dists[r * k + t] = by_id.distances(permutation[r] * k + t);
    }
  }
  // (Another batch composition may round the scan's distances differently.)
  EXPECT_EQ(testing::CompareAnswers(by_rank.neighbor_ids().data(), by_rank.distances().data(),
                                    mapped_ids.data(), mapped_dists.data(), kPoints, k, 1e-6),
            "");

  // Kept across a restart, answering the same.
  Restart();
  ASSERT_EQ(testing::AwaitBuilt(stub(), "a").state(), v1::INDEX_STATE_READY);
  v1::SearchResponse again;
  ASSERT_TRUE(testing::Search(stub(), search, &again).ok());
  EXPECT_EQ(std::vector<int64_t>(again.neighbor_ids().begin(), again.neighbor_ids().end()),
            std::vector<int64_t>(by_id.neighbor_ids().begin(), by_id.neighbor_ids().end()));

  // Bad combinations.
  auto expect = [&](const v1::SearchRequest& bad, grpc::StatusCode code, const std::string& field) {
    v1::SearchResponse response;
    const grpc::Status status = testing::Search(stub(), bad, &response);
    EXPECT_EQ(status.error_code(), code) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(field));
  };
  v1::SearchRequest bad = search;
  bad.set_ordering("nope");
  expect(bad, grpc::StatusCode::NOT_FOUND, "ordering");
  bad = search;
  bad.set_predecessor_mode(false);
  expect(bad, grpc::StatusCode::INVALID_ARGUMENT, "ordering");
  bad = testing::IdSearch("a", k, {1});
  bad.set_ids_are_ranks(true);
  expect(bad, grpc::StatusCode::INVALID_ARGUMENT, "ids_are_ranks");
  bad = ranked;
  bad.set_query_ids(0, kPoints);
  expect(bad, grpc::StatusCode::INVALID_ARGUMENT, "query_ids[0]");
}

TEST_F(OrderingServiceTest, BadRequests) {
  MakeReady("a");
  ExpectInvalid(stub(), Request("a", "", v1::ORDERING_METHOD_RANDOM), "name");
  ExpectInvalid(stub(), Request("a", "a/b", v1::ORDERING_METHOD_RANDOM), "name");
  ExpectInvalid(stub(), Request("a", "x", v1::ORDERING_METHOD_UNSPECIFIED), "method");
  ExpectInvalid(stub(), Request("a", "x", static_cast<v1::OrderingMethod>(99)), "method");
  v1::ComputeOrderingRequest seeded = Request("a", "x", v1::ORDERING_METHOD_MAXIMIN_RESIDUAL);
  seeded.set_seed(3);
  ExpectInvalid(stub(), seeded, "seed");
  v1::ComputeOrderingRequest extra = Request("a", "x", v1::ORDERING_METHOD_RANDOM);
  extra.add_permutation(0);
  ExpectInvalid(stub(), extra, "permutation");

  v1::ComputeOrderingRequest supplied = Request("a", "x", v1::ORDERING_METHOD_SUPPLIED);
  for (int64_t i = 0; i < kPoints - 1; ++i) supplied.add_permutation(i);
  ExpectInvalid(stub(), supplied, "permutation");  // wrong length
  supplied.add_permutation(0);
  ExpectInvalid(stub(), supplied, "permutation");  // duplicate, so kPoints - 1 missing
  supplied.set_permutation(kPoints - 1, kPoints);
  ExpectInvalid(stub(), supplied, "permutation");  // out of range

  v1::Ordering response;
  EXPECT_EQ(Compute(stub(), Request("nope", "x", v1::ORDERING_METHOD_RANDOM), &response)
                .error_code(),
            grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(testing::CreateIndex(stub(), "loading",
                                   testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 16))
                  .ok());
  EXPECT_EQ(Compute(stub(), Request("loading", "x", v1::ORDERING_METHOD_RANDOM), &response)
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  v1::IndexSpec euclidean;
  euclidean.set_metric(v1::METRIC_EUCLIDEAN);
  euclidean.set_dimension(2);
  ASSERT_EQ(testing::CreateReadyIndex(stub(), "e", euclidean, points_).state(),
            v1::INDEX_STATE_READY);
  ExpectInvalid(stub(), Request("e", "x", v1::ORDERING_METHOD_MAXIMIN_RESIDUAL), "method");
  EXPECT_TRUE(
      Compute(stub(), Request("e", "x", v1::ORDERING_METHOD_MAXIMIN_EUCLIDEAN), &response).ok());
  EXPECT_TRUE(testing::GetIndex(stub(), "a").orderings().empty());
}

TEST_F(OrderingServiceTest, KMeansPlusPlusInducingPoints) {
  v1::IndexSpec spec = testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 16);
  spec.set_inducing_method(v1::INDUCING_METHOD_KMEANS_PLUSPLUS);
  const v1::IndexInfo info = testing::CreateReadyIndex(stub(), "k", spec, points_);
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  EXPECT_EQ(info.spec().inducing_method(), v1::INDUCING_METHOD_KMEANS_PLUSPLUS);
  EXPECT_TRUE(info.spec().has_lloyd_iterations());
  EXPECT_EQ(info.spec().lloyd_iterations(), 0);
  // The default spec reports the uniform draw.
  ASSERT_TRUE(testing::CreateIndex(stub(), "u", testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 16)).ok());
  EXPECT_EQ(testing::GetIndex(stub(), "u").spec().inducing_method(), v1::INDUCING_METHOD_UNIFORM);

  // k-means++ answers differ from the uniform draw's, and the same spec gives the same answers.
  spec.set_lloyd_iterations(2);
  ASSERT_EQ(testing::CreateReadyIndex(stub(), "k2", spec, points_).state(), v1::INDEX_STATE_READY);
  ASSERT_EQ(testing::CreateReadyIndex(stub(), "k3", spec, points_).state(), v1::INDEX_STATE_READY);
  v1::SearchResponse a, b;
  ASSERT_TRUE(testing::Search(stub(), testing::IdSearch("k2", 5, {0, 10, 20}), &a).ok());
  ASSERT_TRUE(testing::Search(stub(), testing::IdSearch("k3", 5, {0, 10, 20}), &b).ok());
  EXPECT_EQ(std::vector<double>(a.distances().begin(), a.distances().end()),
            std::vector<double>(b.distances().begin(), b.distances().end()));

  auto expect_invalid = [&](const v1::IndexSpec& bad, const std::string& field) {
    const grpc::Status status = testing::CreateIndex(stub(), "bad", bad);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(field));
  };
  v1::IndexSpec bad = testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 16);
  bad.set_inducing_method(v1::INDUCING_METHOD_UNSPECIFIED);
  expect_invalid(bad, "spec.inducing_method");
  bad.set_inducing_method(static_cast<v1::InducingMethod>(7));
  expect_invalid(bad, "spec.inducing_method");
  bad.set_inducing_method(v1::INDUCING_METHOD_UNIFORM);
  bad.set_lloyd_iterations(3);
  expect_invalid(bad, "spec.lloyd_iterations");
  bad.set_inducing_method(v1::INDUCING_METHOD_KMEANS_PLUSPLUS);
  bad.set_lloyd_iterations(-1);
  expect_invalid(bad, "spec.lloyd_iterations");
  bad.clear_lloyd_iterations();
  bad.set_factors_supplied(true);
  bad.clear_inducing_count();
  expect_invalid(bad, "spec.inducing_method");
  v1::IndexSpec euclidean;
  euclidean.set_metric(v1::METRIC_EUCLIDEAN);
  euclidean.set_dimension(2);
  euclidean.set_inducing_method(v1::INDUCING_METHOD_KMEANS_PLUSPLUS);
  expect_invalid(euclidean, "spec.inducing_method");
}

TEST(OrderingMessageLimitTest, AnOrderingTooLargeToSendIsRefusedBeforeItIsComputed) {
  server::ServerOptions options;
  options.max_message_bytes = 4096;
  testing::TestServer test = testing::StartTestServer(options);
  // 2,000 ids of two varint bytes each: over 4096 bytes.
  const v1::IndexInfo info = testing::CreateReadyIndex(
      *test.stub, "a", testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 16),
      testing::NormalPoints(2000, 2, 4), 100);
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  v1::Ordering response;
  const grpc::Status status =
      Compute(*test.stub, Request("a", "r", v1::ORDERING_METHOD_RANDOM), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("--max_message_bytes"));
  EXPECT_TRUE(testing::GetIndex(*test.stub, "a").orderings().empty());
}

}  // namespace
}  // namespace rcknn
