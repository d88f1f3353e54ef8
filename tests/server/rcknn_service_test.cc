// Every RPC of rcknn.v1.Rcknn against an in-process server on port 0 through the client library
// (the raw stub only for what the library never sends): the index lifecycle, answers equal to the
// core library's and to the shipped exact answers, the packed response layout, SearchStream
// order, and every error code with the field it names.
#include <cmath>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "core/knn_index.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"
#include "tests/testing/shared_data.h"

namespace rcknn {
namespace {

using testing::Dataset;
using ::testing::HasSubstr;

constexpr char kSmall[] = "small";

template <typename T>
void Append(google::protobuf::RepeatedField<T>* field, std::initializer_list<T> values) {
  field->Add(values.begin(), values.end());
}

class RcknnServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<Dataset> set = testing::LoadDataset(testing::DefaultDataDir(), "small");
    ASSERT_TRUE(set.ok()) << set.status();
    set_ = new Dataset(*std::move(set));
    tbb::task_arena arena(2);
    auto index = core::KnnIndex::Build(set_->Spec(), set_->Data(), &arena);
    ASSERT_TRUE(index.ok()) << index.status();
    core_index_ = index->release();
    // Answers in the packed layout (repeated fields): the raw layout the client library asks for
    // by default is rcknn_client_test's.
    client::ClientOptions options = testing::UploadInChunksOf(500, set_->dimension);
    options.raw_answers = false;
    served_ = new testing::ClientOnServer();
    served_->Start(server::ServerOptions(), options);
    const absl::StatusOr<v1::IndexInfo> info =
        testing::CreateReadyIndex(client(), kSmall, testing::SpecOf(*set_), set_->points);
    ASSERT_TRUE(info.ok()) << info.status();
    ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
  }
  static void TearDownTestSuite() {
    delete served_;
    delete core_index_;
    delete set_;
  }

  static client::RcknnClient& client() { return served_->client(); }

  // A client on the same server that sends at most `per_request` queries per request and uploads
  // in chunks of `chunk_rows` rows of `values_per_row` numbers.
  static std::unique_ptr<client::RcknnClient> ClientWith(int64_t per_request, int64_t chunk_rows,
                                                         int values_per_row) {
    client::ClientOptions options = testing::UploadInChunksOf(chunk_rows, values_per_row);
    options.max_queries_per_request = per_request;
    options.raw_answers = false;
    return testing::MakeClient(served_->test(), options);
  }

  static absl::StatusOr<client::SearchResult> Search(const std::string& id,
                                                     const std::vector<int64_t>& ids, int64_t k,
                                                     bool predecessor_mode = false) {
    client::SearchQuery query = testing::IdQuery(id, ids, k);
    query.predecessor_mode = predecessor_mode;
    return client().Search(query);
  }

  // The core library's answer for the same input.
  void CoreSearch(const core::QueryBatch& batch, const core::KnnOptions& options,
                  std::vector<int64_t>* ids, std::vector<double>* dists) {
    const int64_t nq = core::NumQueries(batch, set_->dimension);
    ids->assign(nq * options.k, 0);
    dists->assign(nq * options.k, 0.0);
    tbb::task_arena arena(2);
    ASSERT_TRUE(
        core_index_->Search(batch, options, &arena, nullptr, ids->data(), dists->data()).ok());
  }

  static Dataset* set_;
  static core::KnnIndex* core_index_;
  static testing::ClientOnServer* served_;
};

Dataset* RcknnServiceTest::set_ = nullptr;
core::KnnIndex* RcknnServiceTest::core_index_ = nullptr;
testing::ClientOnServer* RcknnServiceTest::served_ = nullptr;

TEST_F(RcknnServiceTest, SearchByIdMatchesShippedAndCoreAnswers) {
  for (bool pred : {false, true}) {
    SCOPED_TRACE(pred ? "predecessor mode" : "all points");
    const absl::StatusOr<client::SearchResult> result =
        Search(kSmall, set_->query_ids, set_->k, pred);
    ASSERT_TRUE(result.ok()) << result.status();
    const int64_t nq = static_cast<int64_t>(set_->query_ids.size());
    ASSERT_EQ(result->requests, 1);
    ASSERT_EQ(result->num_queries, nq);
    ASSERT_EQ(result->k, set_->k);
    ASSERT_EQ(static_cast<int64_t>(result->ids.size()), nq * set_->k);
    ASSERT_EQ(static_cast<int64_t>(result->distances.size()), nq * set_->k);
    EXPECT_GT(result->stats.distance_evaluations(), 0);

    core::KnnOptions options;
    options.k = set_->k;
    options.predecessor_mode = pred;
    core::QueryBatch batch;
    batch.ids = set_->query_ids;
    std::vector<int64_t> core_ids;
    std::vector<double> core_dists;
    CoreSearch(batch, options, &core_ids, &core_dists);
    const core::PointRows rows = core_index_->space().Gather(set_->query_ids);
    const std::vector<double>& shipped = pred ? set_->pred_dists : set_->knn_dists;
    for (int64_t q = 0; q < nq; ++q) {
      const int64_t* ids = result->ids.data() + q * set_->k;
      const double* dists = result->distances.data() + q * set_->k;
      EXPECT_EQ(testing::CompareRow(core_index_->space(), rows, q, set_->query_ids[q], options, ids,
                                    dists, &shipped[q * set_->k]),
                "")
          << "query " << q << " vs shipped";
      EXPECT_EQ(testing::CompareRow(core_index_->space(), rows, q, set_->query_ids[q], options, ids,
                                    dists, &core_dists[q * set_->k]),
                "")
          << "query " << q << " vs core";
    }
  }
}

TEST_F(RcknnServiceTest, SmallBatchMatchesCoreRankByRank) {
  const std::vector<int64_t> query_ids(set_->query_ids.begin(), set_->query_ids.begin() + 20);
  for (bool include_self : {false, true}) {
    client::SearchQuery query = testing::IdQuery(kSmall, query_ids, 7);
    query.include_self = include_self;
    const absl::StatusOr<client::SearchResult> result = client().Search(query);
    ASSERT_TRUE(result.ok()) << result.status();
    core::KnnOptions options;
    options.k = 7;
    options.include_self = include_self;
    core::QueryBatch batch;
    batch.ids = query_ids;
    std::vector<int64_t> ids;
    std::vector<double> dists;
    CoreSearch(batch, options, &ids, &dists);
    EXPECT_EQ(testing::CompareAnswers(result->ids.data(), result->distances.data(), ids.data(),
                                      dists.data(), 20, 7),
              "");
    for (size_t q = 0; q < query_ids.size(); ++q) {
      if (include_self) {
        EXPECT_EQ(result->ids[q * 7], query_ids[q]);
        EXPECT_EQ(result->distances[q * 7], 0.0);
      } else {
        for (int j = 0; j < 7; ++j) EXPECT_NE(result->ids[q * 7 + j], query_ids[q]);
      }
    }
  }
}

TEST_F(RcknnServiceTest, SearchByPointsMatchesCore) {
  const core::RowMatrix points = testing::NormalPoints(100, set_->dimension, 99);
  client::SearchQuery query;
  query.index_id = kSmall;
  query.k = 15;
  query.points = testing::View(points);
  const absl::StatusOr<client::SearchResult> result = client().Search(query);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->num_queries, 100);
  core::KnnOptions options;
  options.k = 15;
  core::QueryBatch batch;
  batch.points = absl::MakeConstSpan(points.data(), points.size());
  std::vector<int64_t> ids;
  std::vector<double> dists;
  CoreSearch(batch, options, &ids, &dists);
  absl::StatusOr<core::PointRows> rows = core_index_->space().Prepare(points.data(), 100);
  ASSERT_TRUE(rows.ok());
  for (int64_t q = 0; q < 100; ++q) {
    EXPECT_EQ(testing::CompareRow(core_index_->space(), *rows, q, -1, options,
                                  result->ids.data() + q * 15, result->distances.data() + q * 15,
                                  &dists[q * 15]),
              "")
        << "query " << q;
  }
}

TEST_F(RcknnServiceTest, PredecessorModePadsEarlyQueries) {
  const absl::StatusOr<client::SearchResult> result =
      Search(kSmall, {0, 1, 3}, 5, /*predecessor_mode=*/true);
  ASSERT_TRUE(result.ok()) << result.status();
  // Query 0 has no predecessor; query 1 has one; query 3 has three.
  for (int j = 0; j < 5; ++j) {
    EXPECT_EQ(result->ids[j], -1);
    EXPECT_TRUE(std::isinf(result->distances[j]));
  }
  EXPECT_EQ(result->ids[5], 0);
  EXPECT_EQ(result->ids[6], -1);
  for (int j = 0; j < 3; ++j) EXPECT_LT(result->ids[10 + j], 3);
  EXPECT_EQ(result->ids[13], -1);
}

// Requests of different k and modes on one stream: the raw stub, since the client library sends
// one search (one k, one mode) per stream.
TEST_F(RcknnServiceTest, SearchStreamAnswersEveryRequestInOrder) {
  std::vector<std::vector<int64_t>> query_ids;
  std::vector<v1::SearchRequest> requests;
  for (int r = 0; r < 24; ++r) {
    std::vector<int64_t> ids;
    for (int q = 0; q <= 3 * r; ++q) ids.push_back((r * 131 + q * 17) % set_->n);
    requests.push_back(testing::IdSearch(kSmall, 1 + r % 9, ids, r % 2 == 1));
    query_ids.push_back(std::move(ids));
  }
  grpc::ClientContext context;
  testing::SetDeadline(context);
  auto stream = client().stub().SearchStream(&context);
  for (const v1::SearchRequest& request : requests) ASSERT_TRUE(stream->Write(request));
  stream->WritesDone();
  v1::SearchResponse response;
  size_t index = 0;
  while (stream->Read(&response)) {
    ASSERT_LT(index, requests.size());
    const v1::SearchRequest& request = requests[index];
    const absl::StatusOr<client::SearchResult> unary =
        Search(kSmall, query_ids[index], request.k(), request.predecessor_mode());
    ++index;
    ASSERT_TRUE(unary.ok()) << unary.status();
    EXPECT_EQ(response.num_queries(), request.query_ids_size()) << "response " << index - 1;
    EXPECT_EQ(response.k(), request.k());
    ASSERT_EQ(static_cast<size_t>(response.neighbor_ids_size()), unary->ids.size());
    EXPECT_EQ(testing::CompareAnswers(response.neighbor_ids().data(), response.distances().data(),
                                      unary->ids.data(), unary->distances.data(),
                                      unary->num_queries, unary->k),
              "")
        << "response " << index - 1;
  }
  EXPECT_THAT(stream->Finish(), testing::StatusIs(grpc::StatusCode::OK));
  EXPECT_EQ(index, requests.size());
}

TEST_F(RcknnServiceTest, SearchStreamEndsWithTheFirstError) {
  // Two requests of two queries on one stream; the second names an id past the index.
  const std::vector<int64_t> ids = {1, 2, set_->n, 5};
  std::vector<int64_t> progress;
  const absl::StatusOr<client::SearchResult> result = ClientWith(2, 500, 2)->Search(
      testing::IdQuery(kSmall, ids, 3), [&](int64_t done, int64_t) { progress.push_back(done); });
  EXPECT_THAT(result,
              testing::StatusIs(absl::StatusCode::kInvalidArgument, "request 1: query_ids[0]"));
  // The first request was answered before the stream ended.
  EXPECT_THAT(progress, ::testing::ElementsAre(2));
}

TEST_F(RcknnServiceTest, GetListWatchAndDelete) {
  const absl::StatusOr<v1::IndexInfo> info = client().GetIndex(kSmall);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::INDEX_STATE_READY);
  EXPECT_EQ(info->num_points(), set_->n);
  EXPECT_EQ(info->build_progress(), 1.0);
  EXPECT_GT(info->build_seconds(), 0.0);
  EXPECT_GT(info->memory_bytes(), set_->n * 8 * 128);
  EXPECT_EQ(info->spec().inducing_count(), 128);
  EXPECT_EQ(info->spec().jitter(), 1e-6);
  ASSERT_TRUE(client().CreateIndex("temp", testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 8)).ok());
  EXPECT_THAT(testing::ListIds(client()),
              ::testing::IsSupersetOf({std::string(kSmall), std::string("temp")}));
  // A READY index: WatchIndex sends its state once and ends.
  int messages = 0;
  const absl::StatusOr<v1::IndexInfo> watched =
      client().WaitForIndex(kSmall, [&](const v1::IndexInfo&) { ++messages; });
  ASSERT_TRUE(watched.ok()) << watched.status();
  EXPECT_EQ(messages, 1);
  EXPECT_EQ(watched->state(), v1::INDEX_STATE_READY);
  EXPECT_TRUE(client().DeleteIndex("temp").ok());
  EXPECT_THAT(client().DeleteIndex("temp"), testing::StatusIs(absl::StatusCode::kNotFound, "temp"));
  EXPECT_THAT(client().GetIndex("temp"), testing::StatusIs(absl::StatusCode::kNotFound, "temp"));
}

TEST_F(RcknnServiceTest, WatchIndexFollowsABuildToReady) {
  const core::RowMatrix points = testing::NormalPoints(3000, 3, 5);
  ASSERT_TRUE(client()
                  .CreateIndex("watched", testing::ResidualSpec(3, v1::KERNEL_MATERN52, 2, 0.7, 64))
                  .ok());
  ASSERT_TRUE(ClientWith(1'000'000, 256, 3)->UploadPoints("watched", testing::View(points)).ok());
  const absl::StatusOr<v1::IndexInfo> started = client().BuildIndex("watched");
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_EQ(started->state(), v1::INDEX_STATE_BUILDING);
  EXPECT_EQ(started->num_points(), 3000);
  std::vector<v1::IndexState> states;
  double progress = 0.0;
  const absl::StatusOr<v1::IndexInfo> info =
      client().WaitForIndex("watched", [&](const v1::IndexInfo& update) {
        states.push_back(update.state());
        EXPECT_GE(update.build_progress(), progress);
        progress = update.build_progress();
      });
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back(), v1::INDEX_STATE_READY);
  EXPECT_EQ(progress, 1.0);
  EXPECT_GT(info->build_seconds(), 0.0);
  EXPECT_GT(info->tree_seconds(), 0.0);
  EXPECT_TRUE(Search("watched", {10, 20}, 4).ok());
  EXPECT_TRUE(client().DeleteIndex("watched").ok());
}

TEST_F(RcknnServiceTest, LifecycleErrors) {
  EXPECT_THAT(client().CreateIndex(kSmall, testing::SpecOf(*set_)),
              testing::StatusIs(absl::StatusCode::kAlreadyExists, "already exists"));
  // Uploading to or building a READY index: FAILED_PRECONDITION.
  const core::RowMatrix points = testing::NormalPoints(10, 2, 1);
  EXPECT_THAT(client().UploadPoints(kSmall, testing::View(points)),
              testing::StatusIs(absl::StatusCode::kFailedPrecondition, "READY"));
  EXPECT_THAT(client().BuildIndex(kSmall),
              testing::StatusIs(absl::StatusCode::kFailedPrecondition, "READY"));
  // Searching, building or uploading to an unknown index: NOT_FOUND.
  EXPECT_THAT(Search("nope", {1}, 3), testing::StatusIs(absl::StatusCode::kNotFound, "nope"));
  EXPECT_THAT(client().BuildIndex("nope"), testing::StatusIs(absl::StatusCode::kNotFound, "nope"));
  EXPECT_THAT(client().UploadPoints("nope", testing::View(points)),
              testing::StatusIs(absl::StatusCode::kNotFound, "nope"));
  // A LOADING index cannot be searched, nor built without points.
  ASSERT_TRUE(
      client().CreateIndex("loading", testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 4)).ok());
  EXPECT_THAT(Search("loading", {1}, 3),
              testing::StatusIs(absl::StatusCode::kFailedPrecondition, "LOADING"));
  EXPECT_THAT(client().BuildIndex("loading"),
              testing::StatusIs(absl::StatusCode::kFailedPrecondition, "no points"));
  // inducing_count above the number of points: INVALID_ARGUMENT at BuildIndex, still LOADING.
  const core::RowMatrix three = testing::NormalPoints(3, 2, 2);
  ASSERT_TRUE(client().UploadPoints("loading", testing::View(three)).ok());
  EXPECT_THAT(client().BuildIndex("loading"),
              testing::StatusIs(absl::StatusCode::kInvalidArgument, "spec.inducing_count"));
  EXPECT_EQ(testing::InfoOf(client(), "loading").state(), v1::INDEX_STATE_LOADING);
  EXPECT_TRUE(client().DeleteIndex("loading").ok());
}

TEST_F(RcknnServiceTest, UploadStreamIsAppliedWhole) {
  ASSERT_TRUE(
      client().CreateIndex("atomic", testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 4)).ok());
  // Chunks of two points; the second chunk holds a NaN.
  const std::unique_ptr<client::RcknnClient> chunked = ClientWith(1'000'000, 2, 2);
  const std::vector<double> bad = {1.0, 2.0, 3.0, 4.0,
                                   1.0, 2.0, 3.0, std::numeric_limits<double>::quiet_NaN()};
  const absl::StatusOr<v1::UploadPointsResponse> refused =
      chunked->UploadPoints("atomic", {bad, 2});
  EXPECT_THAT(refused, testing::StatusIs(absl::StatusCode::kInvalidArgument, "coordinates"));
  EXPECT_THAT(refused, testing::StatusIs(absl::StatusCode::kInvalidArgument, "point 3, column 1"));
  const core::RowMatrix seven = testing::NormalPoints(7, 2, 3);
  absl::StatusOr<v1::UploadPointsResponse> response =
      chunked->UploadPoints("atomic", testing::View(seven));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->points_received(), 7);
  EXPECT_EQ(response->total_points(), 7);  // the failed stream added nothing
  const core::RowMatrix five = testing::NormalPoints(5, 2, 4);
  response = chunked->UploadPoints("atomic", testing::View(five));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->points_received(), 5);
  EXPECT_EQ(response->total_points(), 12);
  EXPECT_TRUE(client().DeleteIndex("atomic").ok());
}

TEST_F(RcknnServiceTest, FactorsSuppliedIndexAnswersLikeComputedFactors) {
  // Upload the V rows and p of the small index itself: the answers must agree.
  const auto& space = dynamic_cast<const core::ResidualSpace&>(core_index_->space());
  v1::IndexSpec spec = testing::SpecOf(*set_);
  spec.clear_inducing_points();
  spec.set_factors_supplied(true);
  ASSERT_TRUE(client().CreateIndex("factors", spec).ok());
  const int64_t m = space.v().cols();
  std::vector<double> factors;
  factors.reserve(set_->n * m);
  for (int64_t id = 0; id < set_->n; ++id) {
    // V is stored in the tree's order: row position_of(id) holds point id.
    const double* row = space.v().row(space.position_of(id)).data();
    factors.insert(factors.end(), row, row + m);
  }
  const absl::StatusOr<v1::UploadPointsResponse> uploaded =
      client().UploadPoints("factors", testing::View(set_->points), factors, m,
                            absl::MakeConstSpan(space.p().data(), static_cast<size_t>(set_->n)));
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  EXPECT_EQ(uploaded->total_points(), set_->n);
  const absl::StatusOr<v1::IndexInfo> info = testing::BuildAndWait(client(), "factors");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
  const absl::StatusOr<client::SearchResult> supplied = Search("factors", set_->query_ids, set_->k);
  const absl::StatusOr<client::SearchResult> computed = Search(kSmall, set_->query_ids, set_->k);
  ASSERT_TRUE(supplied.ok()) << supplied.status();
  ASSERT_TRUE(computed.ok()) << computed.status();
  core::KnnOptions options;
  options.k = set_->k;
  const core::PointRows rows = space.Gather(set_->query_ids);
  for (size_t q = 0; q < set_->query_ids.size(); ++q) {
    EXPECT_EQ(testing::CompareRow(space, rows, q, set_->query_ids[q], options,
                                  supplied->ids.data() + q * set_->k,
                                  supplied->distances.data() + q * set_->k,
                                  computed->distances.data() + q * set_->k),
              "");
  }
  // Out-of-sample queries need the kernel's inducing points.
  const std::vector<double> point = {0.1, 0.2};
  client::SearchQuery query;
  query.index_id = "factors";
  query.k = 3;
  query.points = {point, 2};
  EXPECT_THAT(client().Search(query),
              testing::StatusIs(absl::StatusCode::kFailedPrecondition, "query_points"));
  EXPECT_TRUE(client().DeleteIndex("factors").ok());
}

// INVALID_ARGUMENT cases: each names its field.
struct CreateCase {
  std::string name;
  std::function<void(v1::CreateIndexRequest&)> mutate;
  std::string field;
};

// A search as the client library takes it, owning its queries.
struct QueryParts {
  std::string index_id = kSmall;
  int64_t k = 3;
  std::vector<int64_t> ids = {5, 6};  // or
  std::vector<double> points;
  int dimension = 2;
  bool predecessor_mode = false;

  client::SearchQuery Query() const {
    client::SearchQuery query;
    query.index_id = index_id;
    query.k = k;
    if (ids.empty()) {
      query.points = {points, dimension};
    } else {
      query.ids = ids;
    }
    query.predecessor_mode = predecessor_mode;
    return query;
  }
};

struct SearchCase {
  std::string name;
  std::function<void(QueryParts&)> mutate;
  std::string field;
};

TEST_F(RcknnServiceTest, MalformedRequestsNameTheField) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<CreateCase> creates = {
      {"empty id", [](auto& r) { r.set_index_id(""); }, "index_id"},
      {"bad id", [](auto& r) { r.set_index_id("a/b"); }, "index_id"},
      {"no spec", [](auto& r) { r.clear_spec(); }, "spec"},
      {"metric unspecified", [](auto& r) { r.mutable_spec()->set_metric(v1::METRIC_UNSPECIFIED); },
       "spec.metric"},
      {"metric unknown", [](auto& r) { r.mutable_spec()->set_metric(static_cast<v1::Metric>(42)); },
       "spec.metric"},
      {"dimension 0", [](auto& r) { r.mutable_spec()->set_dimension(0); }, "spec.dimension"},
      {"dimension negative", [](auto& r) { r.mutable_spec()->set_dimension(-3); },
       "spec.dimension"},
      {"no kernel", [](auto& r) { r.mutable_spec()->clear_kernel(); }, "spec.kernel"},
      {"kernel unspecified",
       [](auto& r) { r.mutable_spec()->mutable_kernel()->set_type(v1::KERNEL_UNSPECIFIED); },
       "spec.kernel.type"},
      {"kernel unknown",
       [](auto& r) {
         r.mutable_spec()->mutable_kernel()->set_type(static_cast<v1::KernelType>(9));
       },
       "spec.kernel.type"},
      {"variance 0", [](auto& r) { r.mutable_spec()->mutable_kernel()->set_variance(0); },
       "spec.kernel.variance"},
      {"variance NaN", [nan](auto& r) { r.mutable_spec()->mutable_kernel()->set_variance(nan); },
       "spec.kernel.variance"},
      {"lengthscale negative",
       [](auto& r) { r.mutable_spec()->mutable_kernel()->set_lengthscales(0, -1); },
       "spec.kernel.lengthscales"},
      {"lengthscales count",
       [](auto& r) {
         r.mutable_spec()->mutable_kernel()->add_lengthscales(1);
         r.mutable_spec()->mutable_kernel()->add_lengthscales(1);
       },
       "spec.kernel.lengthscales"},
      {"inducing_count 0", [](auto& r) { r.mutable_spec()->set_inducing_count(0); },
       "spec.inducing_count"},
      {"inducing_points row length", [](auto& r) { r.mutable_spec()->add_inducing_points(1.0); },
       "spec.inducing_points"},
      {"inducing_points inf",
       [inf](auto& r) {
         r.mutable_spec()->add_inducing_points(inf);
         r.mutable_spec()->add_inducing_points(0);
       },
       "spec.inducing_points"},
      {"jitter negative", [](auto& r) { r.mutable_spec()->set_jitter(-1e-3); }, "spec.jitter"},
      {"euclidean with kernel", [](auto& r) { r.mutable_spec()->set_metric(v1::METRIC_EUCLIDEAN); },
       "spec.kernel"},
  };
  for (const CreateCase& c : creates) {
    SCOPED_TRACE(c.name);
    v1::CreateIndexRequest request;
    request.set_index_id("never-created");
    *request.mutable_spec() = testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 4);
    c.mutate(request);
    const absl::StatusOr<v1::IndexInfo> created = client().CreateIndex(request);
    EXPECT_THAT(created, testing::StatusIs(absl::StatusCode::kInvalidArgument, c.field));
    EXPECT_THAT(std::string(created.status().message()), ::testing::StartsWith(c.field));
  }
  const std::vector<SearchCase> searches = {
      {"k 0", [](auto& q) { q.k = 0; }, "k"},
      {"k negative", [](auto& q) { q.k = -5; }, "k"},
      {"id out of range", [](auto& q) { q.ids.push_back(4096); }, "query_ids[2]"},
      {"negative id", [](auto& q) { q.ids[0] = -1; }, "query_ids[0]"},
      {"point row length",
       [](auto& q) {
         q.ids.clear();
         q.points = {0.1, 0.2, 0.3};
         q.dimension = 3;  // one row as the client library sees it; not the index's dimension
       },
       "query_points"},
      {"point NaN",
       [nan](auto& q) {
         q.ids.clear();
         q.points = {0.1, nan};
       },
       "query_points"},
      {"predecessor with points",
       [](auto& q) {
         q.ids.clear();
         q.points = {0.1, 0.2};
         q.predecessor_mode = true;
       },
       "predecessor_mode"},
      {"search id empty", [](auto& q) { q.index_id = ""; }, "index_id"},
  };
  for (const SearchCase& c : searches) {
    SCOPED_TRACE(c.name);
    QueryParts parts;
    c.mutate(parts);
    const absl::StatusOr<client::SearchResult> result = client().Search(parts.Query());
    EXPECT_THAT(result, testing::StatusIs(absl::StatusCode::kInvalidArgument, c.field));
    EXPECT_THAT(std::string(result.status().message()), ::testing::StartsWith(c.field));
  }
  // Requests the client library never builds (it sends exactly one kind of query, and none
  // empty): the raw stub.
  const std::vector<SearchCase> wire = {
      {"no queries", nullptr, "query_ids"},
      {"both query kinds", nullptr, "query_ids, query_points"},
  };
  for (const SearchCase& c : wire) {
    SCOPED_TRACE(c.name);
    v1::SearchRequest request = testing::IdSearch(kSmall, 3, {5, 6});
    if (c.name == "no queries") {
      request.clear_query_ids();
    } else {
      request.add_query_points(0.5);
    }
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::SearchResponse response;
    const grpc::Status status = client().stub().Search(&context, request, &response);
    EXPECT_THAT(status, testing::StatusIs(grpc::StatusCode::INVALID_ARGUMENT, c.field));
    EXPECT_THAT(status.error_message(), ::testing::StartsWith(c.field));
  }
  // Nothing was created.
  EXPECT_THAT(client().GetIndex("never-created"),
              testing::StatusIs(absl::StatusCode::kNotFound, "never-created"));
}

// Malformed chunks on the wire (no index id, rows of the wrong length, factors without
// variances): the raw stub, since the client library checks its input and never sends these.
TEST_F(RcknnServiceTest, MalformedUploadChunksNameTheField) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  v1::IndexSpec factor_spec = testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 3);
  factor_spec.set_factors_supplied(true);
  ASSERT_TRUE(
      client().CreateIndex("chunks", testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 2)).ok());
  ASSERT_TRUE(client().CreateIndex("chunks-f", factor_spec).ok());
  struct ChunkCase {
    std::string name;
    std::string index;
    std::function<void(v1::UploadPointsRequest&)> mutate;
    std::string field;
  };
  const std::vector<ChunkCase> cases = {
      {"no id", "chunks", [](auto& c) { c.clear_index_id(); }, "first chunk: index_id"},
      {"odd length", "chunks", [](auto& c) { c.add_coordinates(1.0); }, "coordinates"},
      {"NaN", "chunks", [nan](auto& c) { c.set_coordinates(1, nan); }, "coordinates"},
      {"unexpected factors", "chunks", [](auto& c) { c.add_factors(1.0); }, "factors"},
      {"unexpected variances", "chunks", [](auto& c) { c.add_residual_variances(1.0); },
       "residual_variances"},
      {"missing factors", "chunks-f", [](auto& c) { c.add_residual_variances(1.0); }, "factors"},
      {"factor row length", "chunks-f",
       [](auto& c) {
         Append(c.mutable_factors(), {1.0, 2.0});
         c.add_residual_variances(1.0);
       },
       "factors"},
      {"missing variances", "chunks-f",
       [](auto& c) {
         Append(c.mutable_factors(), {1.0, 2.0, 3.0});
       },
       "residual_variances"},
      {"negative variance", "chunks-f",
       [](auto& c) {
         Append(c.mutable_factors(), {1.0, 2.0, 3.0});
         c.add_residual_variances(-1.0);
       },
       "residual_variances"},
  };
  for (const ChunkCase& c : cases) {
    SCOPED_TRACE(c.name);
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::UploadPointsResponse response;
    auto writer = client().stub().UploadPoints(&context, &response);
    v1::UploadPointsRequest chunk;
    chunk.set_index_id(c.index);
    Append(chunk.mutable_coordinates(), {0.5, 0.25});
    c.mutate(chunk);
    writer->Write(chunk);
    writer->WritesDone();
    const grpc::Status status = writer->Finish();
    EXPECT_THAT(status, testing::StatusIs(grpc::StatusCode::INVALID_ARGUMENT, c.field));
    EXPECT_THAT(status.error_message(), ::testing::StartsWith(c.field));
  }
  for (const char* id : {"chunks", "chunks-f"}) {
    EXPECT_EQ(testing::InfoOf(client(), id).num_points(), 0) << id;
    EXPECT_TRUE(client().DeleteIndex(id).ok()) << id;
  }
}

TEST(RcknnServerLimitsTest, EachLimitAnswersResourceExhaustedNamingIt) {
  server::ServerOptions options;
  options.max_indexes = 2;
  options.max_points_per_index = 1000;
  options.max_queries_per_search = 50;
  options.max_message_bytes = 64 << 10;
  // The client library's own limits are its defaults (it has not been told the server's): what
  // it sends is refused by the server.
  testing::ClientOnServer served;
  served.Start(options);
  client::RcknnClient& client = served.client();
  const std::unique_ptr<client::RcknnClient> chunked =
      testing::MakeClient(served.test(), testing::UploadInChunksOf(100, 2));
  const v1::IndexSpec spec = testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 16);
  ASSERT_TRUE(client.CreateIndex("a", spec).ok());
  ASSERT_TRUE(client.CreateIndex("b", spec).ok());
  EXPECT_THAT(client.CreateIndex("c", spec),
              testing::StatusIs(absl::StatusCode::kResourceExhausted, "--max_indexes"));

  // 1,001 points in chunks of 100: over --max_points_per_index, and nothing is applied.
  const core::RowMatrix too_many = testing::NormalPoints(1001, 2, 1);
  EXPECT_THAT(chunked->UploadPoints("a", testing::View(too_many)),
              testing::StatusIs(absl::StatusCode::kResourceExhausted, "--max_points_per_index"));
  EXPECT_EQ(testing::InfoOf(client, "a").num_points(), 0);
  // One chunk above 64 KiB: gRPC itself refuses it, naming the limit in bytes.
  const core::RowMatrix big_chunk = testing::NormalPoints(5000, 2, 1);
  const absl::StatusOr<v1::UploadPointsResponse> refused =
      client.UploadPoints("a", testing::View(big_chunk));
  EXPECT_THAT(refused, testing::StatusIs(absl::StatusCode::kResourceExhausted, "larger than max"));
  EXPECT_THAT(refused, testing::StatusIs(absl::StatusCode::kResourceExhausted, "65536"));

  const core::RowMatrix points = testing::NormalPoints(1000, 2, 2);
  ASSERT_TRUE(chunked->UploadPoints("b", testing::View(points)).ok());
  const absl::StatusOr<v1::IndexInfo> built = testing::BuildAndWait(client, "b");
  ASSERT_TRUE(built.ok()) << built.status();
  ASSERT_EQ(built->state(), v1::INDEX_STATE_READY);
  std::vector<int64_t> ids = testing::Range(0, 51);
  EXPECT_THAT(client.Search(testing::IdQuery("b", ids, 5)),
              testing::StatusIs(absl::StatusCode::kResourceExhausted, "--max_queries_per_search"));
  // 50 queries x k = 500: about 500 KB of answer, over 64 KiB.
  ids.resize(50);
  EXPECT_THAT(client.Search(testing::IdQuery("b", ids, 500)),
              testing::StatusIs(absl::StatusCode::kResourceExhausted, "--max_message_bytes"));
  // A k so large that its answer size overflows is refused the same way, naming k (the client
  // library sends such a search one query per request, on a SearchStream).
  EXPECT_THAT(client.Search(testing::IdQuery("b", ids, std::numeric_limits<int64_t>::max())),
              testing::StatusIs(absl::StatusCode::kResourceExhausted,
                                "k: 9223372036854775807 neighbours per query"));
  const absl::StatusOr<client::SearchResult> result = client.Search(testing::IdQuery("b", ids, 5));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->num_queries, 50);
}

TEST(RcknnServerUploadTest, TwoHundredThousandPointsInManyChunks) {
  testing::ClientOnServer served;
  // 400 chunks of 375 points on one stream, then a second stream of chunks of 500: chunks
  // append in order.
  served.Start(server::ServerOptions(), testing::UploadInChunksOf(375, 2));
  client::RcknnClient& client = served.client();
  v1::IndexSpec spec;
  spec.set_metric(v1::METRIC_EUCLIDEAN);
  spec.set_dimension(2);
  const int64_t n = 200000;
  const core::RowMatrix points = testing::NormalPoints(n, 2, 17);
  ASSERT_TRUE(client.CreateIndex("big", spec).ok());
  absl::StatusOr<v1::UploadPointsResponse> response =
      client.UploadPoints("big", testing::View(points, 0, 150000));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->points_received(), 150000);
  response = testing::MakeClient(served.test(), testing::UploadInChunksOf(500, 2))
                 ->UploadPoints("big", testing::View(points, 150000, n - 150000));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->total_points(), n);
  const absl::StatusOr<v1::IndexInfo> info = testing::BuildAndWait(client, "big");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->state(), v1::INDEX_STATE_READY) << info->error();
  EXPECT_EQ(info->num_points(), n);
  // Every point arrived at its id: querying its coordinates finds it at distance 0.
  const std::vector<int64_t> probe = {0, 1, 374, 375, 149999, 150000, 150499, 150500, n - 1};
  std::vector<double> coordinates;
  for (int64_t id : probe) {
    coordinates.insert(coordinates.end(), points.row(id).data(), points.row(id).data() + 2);
  }
  client::SearchQuery query;
  query.index_id = "big";
  query.k = 1;
  query.points = {coordinates, 2};
  const absl::StatusOr<client::SearchResult> answer = client.Search(query);
  ASSERT_TRUE(answer.ok()) << answer.status();
  for (size_t i = 0; i < probe.size(); ++i) {
    EXPECT_EQ(answer->ids[i], probe[i]);
    EXPECT_EQ(answer->distances[i], 0.0);
  }
}

}  // namespace
}  // namespace rcknn
