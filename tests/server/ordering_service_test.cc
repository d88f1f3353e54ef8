// ComputeOrdering and the k-means++ inducing points through a real in-process server and the
// client library: the
// orderings the server computes are the core library's, listed in IndexInfo, kept across a
// restart with --data_dir, and every bad request is INVALID_ARGUMENT naming its field (or
// NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS).
#include <memory>
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
using testing::StatusIs;

constexpr int64_t kPoints = 300;

v1::ComputeOrderingRequest Request(const std::string& id, const std::string& name,
                                   v1::OrderingMethod method) {
  v1::ComputeOrderingRequest request;
  request.set_index_id(id);
  request.set_name(name);
  request.set_method(method);
  return request;
}

void ExpectInvalid(client::RcknnClient& client, const v1::ComputeOrderingRequest& request,
                   const std::string& field) {
  EXPECT_THAT(client.ComputeOrdering(request),
              StatusIs(absl::StatusCode::kInvalidArgument, field));
}

// Create, upload (one stream), build and wait: the final IndexInfo, or one naming the error.
v1::IndexInfo CreateReady(client::RcknnClient& client, const std::string& id,
                          const v1::IndexSpec& spec, const core::RowMatrix& points) {
  absl::Status status = client.CreateIndex(id, spec).status();
  if (status.ok()) status = client.UploadPoints(id, testing::View(points)).status();
  if (status.ok()) {
    absl::StatusOr<v1::IndexInfo> info = testing::BuildAndWait(client, id);
    if (info.ok()) return *std::move(info);
    status = info.status();
  }
  v1::IndexInfo failed;
  failed.set_error(status.ToString());
  return failed;
}

std::vector<int64_t> Permutation(const v1::Ordering& ordering) {
  return {ordering.permutation().begin(), ordering.permutation().end()};
}

class OrderingServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    points_ = testing::NormalPoints(kPoints, 2, 3);
    Start();
  }
  void TearDown() override { served_.Stop(); }
  void Start() {
    server::ServerOptions options;
    options.data_dir = data_dir_;
    served_.Start(std::move(options));
  }
  void Restart() { served_.Restart(); }
  client::RcknnClient& client() { return served_.client(); }
  void MakeReady(const std::string& id) {
    const v1::IndexInfo info =
        CreateReady(client(), id, testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 16), points_);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  }
  v1::IndexInfo Info(const std::string& id) {
    absl::StatusOr<v1::IndexInfo> info = client().GetIndex(id);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? *std::move(info) : v1::IndexInfo();
  }
  client::SearchResult MustSearch(const client::SearchQuery& query) {
    absl::StatusOr<client::SearchResult> result = client().Search(query);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *std::move(result) : client::SearchResult();
  }

  testing::TempDir temp_dir_{"rcknn-ordering"};
  const std::string data_dir_ = temp_dir_.Path("data");
  core::RowMatrix points_;
  testing::ClientOnServer served_;
};

TEST_F(OrderingServiceTest, ComputesKeepsAndListsOrderings) {
  MakeReady("a");
  v1::ComputeOrderingRequest random = Request("a", "rand-7", v1::ORDERING_METHOD_RANDOM);
  random.set_seed(7);
  const absl::StatusOr<v1::Ordering> computed = client().ComputeOrdering(random);
  ASSERT_TRUE(computed.ok()) << computed.status();
  const v1::Ordering& ordering = *computed;
  EXPECT_EQ(ordering.index_id(), "a");
  EXPECT_EQ(ordering.name(), "rand-7");
  EXPECT_EQ(ordering.method(), v1::ORDERING_METHOD_RANDOM);
  EXPECT_GE(ordering.seconds(), 0.0);
  EXPECT_EQ(Permutation(ordering), core::RandomPermutation(kPoints, 7));

  const absl::StatusOr<v1::Ordering> maximin =
      client().ComputeOrdering(Request("a", "mm", v1::ORDERING_METHOD_MAXIMIN_RESIDUAL));
  ASSERT_TRUE(maximin.ok()) << maximin.status();
  const std::vector<int64_t> permutation = Permutation(*maximin);
  EXPECT_TRUE(core::Ranks(permutation, kPoints).ok());
  core::RowMatrix scaled = points_ / 0.5;
  EXPECT_EQ(permutation[0], core::NearestToCentroid(scaled));

  const absl::StatusOr<v1::Ordering> euclidean =
      client().ComputeOrdering(Request("a", "mme", v1::ORDERING_METHOD_MAXIMIN_EUCLIDEAN));
  ASSERT_TRUE(euclidean.ok()) << euclidean.status();
  EXPECT_EQ(euclidean->permutation(0), permutation[0]);

  v1::ComputeOrderingRequest supplied = Request("a", "mine", v1::ORDERING_METHOD_SUPPLIED);
  for (int64_t i = kPoints - 1; i >= 0; --i) supplied.add_permutation(i);
  const absl::StatusOr<v1::Ordering> echoed = client().ComputeOrdering(supplied);
  ASSERT_TRUE(echoed.ok()) << echoed.status();
  EXPECT_EQ(echoed->permutation(0), kPoints - 1);

  EXPECT_THAT(Info("a").orderings(), ElementsAre("mine", "mm", "mme", "rand-7"));

  EXPECT_THAT(client().ComputeOrdering(random),
              StatusIs(absl::StatusCode::kAlreadyExists, "rand-7"));

  // Kept across a restart.
  Restart();
  const absl::StatusOr<v1::IndexInfo> info = client().WaitForIndex("a");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
  EXPECT_THAT(info->orderings(), ElementsAre("mine", "mm", "mme", "rand-7"));
  EXPECT_THAT(client().ComputeOrdering(random),
              StatusIs(absl::StatusCode::kAlreadyExists, "rand-7"));
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
  const absl::StatusOr<v1::Ordering> ordering = client().ComputeOrdering(request);
  ASSERT_TRUE(ordering.ok()) << ordering.status();
  const std::vector<int64_t> permutation = Permutation(*ordering);
  const int64_t k = 8;
  const std::vector<int64_t> all = testing::Range(0, kPoints);
  client::SearchQuery search = testing::IdQuery("a", all, k);
  search.predecessor_mode = true;
  search.ordering = "mm";
  const client::SearchResult by_id = MustSearch(search);
  ASSERT_EQ(by_id.ids.size(), static_cast<size_t>(kPoints * k));
  std::vector<int64_t> want_ids;
  const std::vector<double> want = CorePredecessorDistances(points_, permutation, k, &want_ids);
  EXPECT_EQ(testing::CompareAnswers(by_id.ids.data(), by_id.distances.data(), want_ids.data(),
                                    want.data(), kPoints, k, 1e-6),
            "");
  // The point at rank 0 has no predecessor; without the ordering, id 0 has none.
  const int64_t first = permutation[0];
  EXPECT_EQ(by_id.ids[first * k], -1);
  EXPECT_NE(by_id.ids[0], -1);

  // The same queries by rank: row r is the answer of the point at rank r, in ranks.
  client::SearchQuery ranked = search;
  ranked.ids_are_ranks = true;
  const client::SearchResult by_rank = MustSearch(ranked);
  ASSERT_EQ(by_rank.ids.size(), static_cast<size_t>(kPoints * k));
  std::vector<int64_t> rank(kPoints);
  for (int64_t r = 0; r < kPoints; ++r) rank[permutation[r]] = r;
  std::vector<int64_t> mapped_ids(kPoints * k);
  std::vector<double> mapped_dists(kPoints * k);
  for (int64_t r = 0; r < kPoints; ++r) {
    for (int64_t t = 0; t < k; ++t) {
      const int64_t id = by_id.ids[permutation[r] * k + t];
      mapped_ids[r * k + t] = id < 0 ? -1 : rank[id];
      mapped_dists[r * k + t] = by_id.distances[permutation[r] * k + t];
    }
  }
  // (Another batch composition may round the scan's distances differently.)
  EXPECT_EQ(testing::CompareAnswers(by_rank.ids.data(), by_rank.distances.data(),
                                    mapped_ids.data(), mapped_dists.data(), kPoints, k, 1e-6),
            "");

  // Kept across a restart, answering the same.
  Restart();
  const absl::StatusOr<v1::IndexInfo> restored = client().WaitForIndex("a");
  ASSERT_TRUE(restored.ok()) << restored.status();
  ASSERT_EQ(restored->state(), v1::INDEX_STATE_READY) << restored->error();
  EXPECT_EQ(MustSearch(search).ids, by_id.ids);

  // Bad combinations.
  client::SearchQuery bad = search;
  bad.ordering = "nope";
  EXPECT_THAT(client().Search(bad), StatusIs(absl::StatusCode::kNotFound, "ordering"));
  bad = search;
  bad.predecessor_mode = false;
  EXPECT_THAT(client().Search(bad), StatusIs(absl::StatusCode::kInvalidArgument, "ordering"));
  const std::vector<int64_t> one = {1};
  bad = testing::IdQuery("a", one, k);
  bad.ids_are_ranks = true;
  EXPECT_THAT(client().Search(bad), StatusIs(absl::StatusCode::kInvalidArgument, "ids_are_ranks"));
  std::vector<int64_t> past = all;
  past[0] = kPoints;
  bad = ranked;
  bad.ids = past;
  EXPECT_THAT(client().Search(bad), StatusIs(absl::StatusCode::kInvalidArgument, "query_ids[0]"));
}

TEST_F(OrderingServiceTest, BadRequests) {
  MakeReady("a");
  ExpectInvalid(client(), Request("a", "", v1::ORDERING_METHOD_RANDOM), "name");
  ExpectInvalid(client(), Request("a", "a/b", v1::ORDERING_METHOD_RANDOM), "name");
  ExpectInvalid(client(), Request("a", "x", v1::ORDERING_METHOD_UNSPECIFIED), "method");
  ExpectInvalid(client(), Request("a", "x", static_cast<v1::OrderingMethod>(99)), "method");
  v1::ComputeOrderingRequest seeded = Request("a", "x", v1::ORDERING_METHOD_MAXIMIN_RESIDUAL);
  seeded.set_seed(3);
  ExpectInvalid(client(), seeded, "seed");
  v1::ComputeOrderingRequest extra = Request("a", "x", v1::ORDERING_METHOD_RANDOM);
  extra.add_permutation(0);
  ExpectInvalid(client(), extra, "permutation");

  v1::ComputeOrderingRequest supplied = Request("a", "x", v1::ORDERING_METHOD_SUPPLIED);
  for (int64_t i = 0; i < kPoints - 1; ++i) supplied.add_permutation(i);
  ExpectInvalid(client(), supplied, "permutation");  // wrong length
  supplied.add_permutation(0);
  ExpectInvalid(client(), supplied, "permutation");  // duplicate, so kPoints - 1 missing
  supplied.set_permutation(kPoints - 1, kPoints);
  ExpectInvalid(client(), supplied, "permutation");  // out of range

  EXPECT_THAT(client().ComputeOrdering(Request("nope", "x", v1::ORDERING_METHOD_RANDOM)),
              StatusIs(absl::StatusCode::kNotFound, "nope"));
  ASSERT_TRUE(
      client().CreateIndex("loading", testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 16)).ok());
  EXPECT_THAT(client().ComputeOrdering(Request("loading", "x", v1::ORDERING_METHOD_RANDOM)),
              StatusIs(absl::StatusCode::kFailedPrecondition, "LOADING"));

  v1::IndexSpec euclidean;
  euclidean.set_metric(v1::METRIC_EUCLIDEAN);
  euclidean.set_dimension(2);
  ASSERT_EQ(CreateReady(client(), "e", euclidean, points_).state(), v1::INDEX_STATE_READY);
  ExpectInvalid(client(), Request("e", "x", v1::ORDERING_METHOD_MAXIMIN_RESIDUAL), "method");
  EXPECT_TRUE(
      client().ComputeOrdering(Request("e", "x", v1::ORDERING_METHOD_MAXIMIN_EUCLIDEAN)).ok());
  EXPECT_TRUE(Info("a").orderings().empty());
}

TEST_F(OrderingServiceTest, KMeansPlusPlusInducingPoints) {
  v1::IndexSpec spec = testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 16);
  spec.set_inducing_method(v1::INDUCING_METHOD_KMEANS_PLUSPLUS);
  const v1::IndexInfo info = CreateReady(client(), "k", spec, points_);
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  EXPECT_EQ(info.spec().inducing_method(), v1::INDUCING_METHOD_KMEANS_PLUSPLUS);
  EXPECT_TRUE(info.spec().has_lloyd_iterations());
  EXPECT_EQ(info.spec().lloyd_iterations(), 0);
  // The default spec reports the uniform draw.
  ASSERT_TRUE(
      client().CreateIndex("u", testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 16)).ok());
  EXPECT_EQ(Info("u").spec().inducing_method(), v1::INDUCING_METHOD_UNIFORM);

  // k-means++ answers differ from the uniform draw's, and the same spec gives the same answers.
  spec.set_lloyd_iterations(2);
  ASSERT_EQ(CreateReady(client(), "k2", spec, points_).state(), v1::INDEX_STATE_READY);
  ASSERT_EQ(CreateReady(client(), "k3", spec, points_).state(), v1::INDEX_STATE_READY);
  const std::vector<int64_t> ids = {0, 10, 20};
  EXPECT_EQ(MustSearch(testing::IdQuery("k2", ids, 5)).distances,
            MustSearch(testing::IdQuery("k3", ids, 5)).distances);

  auto expect_invalid = [&](const v1::IndexSpec& bad, const std::string& field) {
    EXPECT_THAT(client().CreateIndex("bad", bad),
                StatusIs(absl::StatusCode::kInvalidArgument, field));
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
  // Uploads in chunks of under 2 KB, within the server's limit.
  client::ClientOptions small;
  small.upload_chunk_bytes = 100 * 2 * sizeof(double);
  std::unique_ptr<client::RcknnClient> client = testing::MakeClient(test, small);
  // 2,000 ids of two varint bytes each: over 4096 bytes.
  const v1::IndexInfo info =
      CreateReady(*client, "a", testing::ResidualSpec(2, v1::KERNEL_RBF, 1.0, 0.5, 16),
                  testing::NormalPoints(2000, 2, 4));
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  EXPECT_THAT(client->ComputeOrdering(Request("a", "r", v1::ORDERING_METHOD_RANDOM)),
              StatusIs(absl::StatusCode::kResourceExhausted, "--max_message_bytes"));
  const absl::StatusOr<v1::IndexInfo> after = client->GetIndex("a");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->orderings().empty());
}

}  // namespace
}  // namespace rcknn
