// Every RPC of rcknn.v1.Rcknn against an in-process server on port 0 through a real stub: the
// index lifecycle, answers equal to the core library's and to the shipped exact answers, the
// packed response layout, SearchStream order, and every error code with the field it names.
#include <cmath>
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
    server_ = new testing::TestServer(testing::StartTestServer());
    const v1::IndexInfo info = testing::CreateReadyIndex(*server_->stub, kSmall,
                                                         testing::SpecOf(*set_), set_->points, 500);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete core_index_;
    delete set_;
  }

  v1::Rcknn::Stub& stub() { return *server_->stub; }

  grpc::Status Search(const v1::SearchRequest& request, v1::SearchResponse* response) {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    return stub().Search(&context, request, response);
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
  static testing::TestServer* server_;
};

Dataset* RcknnServiceTest::set_ = nullptr;
core::KnnIndex* RcknnServiceTest::core_index_ = nullptr;
testing::TestServer* RcknnServiceTest::server_ = nullptr;

TEST_F(RcknnServiceTest, SearchByIdMatchesShippedAndCoreAnswers) {
  for (bool pred : {false, true}) {
    SCOPED_TRACE(pred ? "predecessor mode" : "all points");
    v1::SearchResponse response;
    ASSERT_TRUE(Search(testing::IdSearch(kSmall, set_->k, set_->query_ids, pred), &response).ok());
    const int64_t nq = static_cast<int64_t>(set_->query_ids.size());
    ASSERT_EQ(response.num_queries(), nq);
    ASSERT_EQ(response.k(), set_->k);
    ASSERT_EQ(response.neighbor_ids_size(), nq * set_->k);
    ASSERT_EQ(response.distances_size(), nq * set_->k);
    EXPECT_GT(response.stats().distance_evaluations(), 0);

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
      const int64_t* ids = response.neighbor_ids().data() + q * set_->k;
      const double* dists = response.distances().data() + q * set_->k;
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
    v1::SearchRequest request = testing::IdSearch(kSmall, 7, query_ids);
    request.set_include_self(include_self);
    v1::SearchResponse response;
    ASSERT_TRUE(Search(request, &response).ok());
    core::KnnOptions options;
    options.k = 7;
    options.include_self = include_self;
    core::QueryBatch batch;
    batch.ids = query_ids;
    std::vector<int64_t> ids;
    std::vector<double> dists;
    CoreSearch(batch, options, &ids, &dists);
    EXPECT_EQ(testing::CompareAnswers(response.neighbor_ids().data(), response.distances().data(),
                                      ids.data(), dists.data(), 20, 7),
              "");
    for (size_t q = 0; q < query_ids.size(); ++q) {
      if (include_self) {
        EXPECT_EQ(response.neighbor_ids(q * 7), query_ids[q]);
        EXPECT_EQ(response.distances(q * 7), 0.0);
      } else {
        for (int j = 0; j < 7; ++j) EXPECT_NE(response.neighbor_ids(q * 7 + j), query_ids[q]);
      }
    }
  }
}

TEST_F(RcknnServiceTest, SearchByPointsMatchesCore) {
  const core::RowMatrix points = testing::NormalPoints(100, set_->dimension, 99);
  v1::SearchRequest request;
  request.set_index_id(kSmall);
  request.set_k(15);
  request.mutable_query_points()->Add(points.data(), points.data() + points.size());
  v1::SearchResponse response;
  ASSERT_TRUE(Search(request, &response).ok());
  ASSERT_EQ(response.num_queries(), 100);
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
                                  response.neighbor_ids().data() + q * 15,
                                  response.distances().data() + q * 15, &dists[q * 15]),
              "")
        << "query " << q;
  }
}

TEST_F(RcknnServiceTest, PredecessorModePadsEarlyQueries) {
  v1::SearchResponse response;
  ASSERT_TRUE(
      Search(testing::IdSearch(kSmall, 5, {0, 1, 3}, /*predecessor_mode=*/true), &response).ok());
  // Query 0 has no predecessor; query 1 has one; query 3 has three.
  for (int j = 0; j < 5; ++j) {
    EXPECT_EQ(response.neighbor_ids(j), -1);
    EXPECT_TRUE(std::isinf(response.distances(j)));
  }
  EXPECT_EQ(response.neighbor_ids(5), 0);
  EXPECT_EQ(response.neighbor_ids(6), -1);
  for (int j = 0; j < 3; ++j) EXPECT_LT(response.neighbor_ids(10 + j), 3);
  EXPECT_EQ(response.neighbor_ids(13), -1);
}

TEST_F(RcknnServiceTest, SearchStreamAnswersEveryRequestInOrder) {
  std::vector<v1::SearchRequest> requests;
  for (int r = 0; r < 24; ++r) {
    std::vector<int64_t> ids;
    for (int q = 0; q <= 3 * r; ++q) ids.push_back((r * 131 + q * 17) % set_->n);
    requests.push_back(testing::IdSearch(kSmall, 1 + r % 9, ids, r % 2 == 1));
  }
  grpc::ClientContext context;
  testing::SetDeadline(context);
  auto stream = stub().SearchStream(&context);
  for (const v1::SearchRequest& request : requests) ASSERT_TRUE(stream->Write(request));
  stream->WritesDone();
  v1::SearchResponse response;
  size_t index = 0;
  while (stream->Read(&response)) {
    ASSERT_LT(index, requests.size());
    const v1::SearchRequest& request = requests[index++];
    v1::SearchResponse unary;
    ASSERT_TRUE(Search(request, &unary).ok());
    EXPECT_EQ(response.num_queries(), request.query_ids_size()) << "response " << index - 1;
    EXPECT_EQ(response.k(), request.k());
    ASSERT_EQ(response.neighbor_ids_size(), unary.neighbor_ids_size());
    EXPECT_EQ(testing::CompareAnswers(response.neighbor_ids().data(), response.distances().data(),
                                      unary.neighbor_ids().data(), unary.distances().data(),
                                      unary.num_queries(), unary.k()),
              "")
        << "response " << index - 1;
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(index, requests.size());
}

TEST_F(RcknnServiceTest, SearchStreamEndsWithTheFirstError) {
  grpc::ClientContext context;
  testing::SetDeadline(context);
  auto stream = stub().SearchStream(&context);
  ASSERT_TRUE(stream->Write(testing::IdSearch(kSmall, 3, {1, 2})));
  stream->Write(testing::IdSearch(kSmall, 0, {1, 2}));  // k = 0
  stream->WritesDone();
  v1::SearchResponse response;
  EXPECT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.num_queries(), 2);
  EXPECT_FALSE(stream->Read(&response));
  const grpc::Status status = stream->Finish();
  EXPECT_THAT(status, testing::StatusIs(grpc::StatusCode::INVALID_ARGUMENT, "request 1: k"));
}

TEST_F(RcknnServiceTest, GetListWatchAndDelete) {
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::GetIndexRequest request;
    request.set_index_id(kSmall);
    v1::IndexInfo info;
    ASSERT_TRUE(stub().GetIndex(&context, request, &info).ok());
    EXPECT_EQ(info.state(), v1::INDEX_STATE_READY);
    EXPECT_EQ(info.num_points(), set_->n);
    EXPECT_EQ(info.build_progress(), 1.0);
    EXPECT_GT(info.build_seconds(), 0.0);
    EXPECT_GT(info.memory_bytes(), set_->n * 8 * 128);
    EXPECT_EQ(info.spec().inducing_count(), 128);
    EXPECT_EQ(info.spec().jitter(), 1e-6);
  }
  ASSERT_TRUE(
      testing::CreateIndex(stub(), "temp", testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 8)).ok());
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::ListIndexesResponse list;
    ASSERT_TRUE(stub().ListIndexes(&context, v1::ListIndexesRequest(), &list).ok());
    std::vector<std::string> ids;
    for (const v1::IndexInfo& info : list.indexes()) ids.push_back(info.index_id());
    EXPECT_THAT(ids, ::testing::IsSupersetOf({std::string(kSmall), std::string("temp")}));
  }
  {
    // A READY index: WatchIndex sends its state once and ends.
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::GetIndexRequest request;
    request.set_index_id(kSmall);
    auto reader = stub().WatchIndex(&context, request);
    v1::IndexInfo info;
    int messages = 0;
    while (reader->Read(&info)) ++messages;
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_EQ(messages, 1);
    EXPECT_EQ(info.state(), v1::INDEX_STATE_READY);
  }
  for (grpc::StatusCode expected : {grpc::StatusCode::OK, grpc::StatusCode::NOT_FOUND}) {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::DeleteIndexRequest request;
    request.set_index_id("temp");
    v1::DeleteIndexResponse response;
    EXPECT_EQ(stub().DeleteIndex(&context, request, &response).error_code(), expected);
  }
  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::GetIndexRequest request;
  request.set_index_id("temp");
  v1::IndexInfo info;
  EXPECT_EQ(stub().GetIndex(&context, request, &info).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(RcknnServiceTest, WatchIndexFollowsABuildToReady) {
  const core::RowMatrix points = testing::NormalPoints(3000, 3, 5);
  ASSERT_TRUE(testing::CreateIndex(stub(), "watched",
                                   testing::ResidualSpec(3, v1::KERNEL_MATERN52, 2, 0.7, 64))
                  .ok());
  ASSERT_TRUE(testing::UploadPoints(stub(), "watched", points, 256).ok());
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::BuildIndexRequest request;
    request.set_index_id("watched");
    v1::IndexInfo info;
    ASSERT_TRUE(stub().BuildIndex(&context, request, &info).ok());
    EXPECT_EQ(info.state(), v1::INDEX_STATE_BUILDING);
    EXPECT_EQ(info.num_points(), 3000);
  }
  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::GetIndexRequest request;
  request.set_index_id("watched");
  auto reader = stub().WatchIndex(&context, request);
  v1::IndexInfo info;
  std::vector<v1::IndexState> states;
  double progress = 0.0;
  while (reader->Read(&info)) {
    states.push_back(info.state());
    EXPECT_GE(info.build_progress(), progress);
    progress = info.build_progress();
  }
  EXPECT_TRUE(reader->Finish().ok());
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back(), v1::INDEX_STATE_READY);
  EXPECT_EQ(progress, 1.0);
  EXPECT_GT(info.build_seconds(), 0.0);
  EXPECT_GT(info.tree_seconds(), 0.0);
  v1::SearchResponse response;
  ASSERT_TRUE(Search(testing::IdSearch("watched", 4, {10, 20}), &response).ok());
  grpc::ClientContext delete_context;
  testing::SetDeadline(delete_context);
  v1::DeleteIndexRequest delete_request;
  delete_request.set_index_id("watched");
  v1::DeleteIndexResponse deleted;
  EXPECT_TRUE(stub().DeleteIndex(&delete_context, delete_request, &deleted).ok());
}

TEST_F(RcknnServiceTest, LifecycleErrors) {
  // ALREADY_EXISTS
  EXPECT_EQ(testing::CreateIndex(stub(), kSmall, testing::SpecOf(*set_)).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  // Uploading to or building a READY index: FAILED_PRECONDITION.
  const core::RowMatrix points = testing::NormalPoints(10, 2, 1);
  grpc::Status status = testing::UploadPoints(stub(), kSmall, points, 5);
  EXPECT_THAT(status, testing::StatusIs(grpc::StatusCode::FAILED_PRECONDITION, "READY"));
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::BuildIndexRequest request;
    request.set_index_id(kSmall);
    v1::IndexInfo info;
    EXPECT_EQ(stub().BuildIndex(&context, request, &info).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  // Searching, building or uploading to an unknown index: NOT_FOUND.
  v1::SearchResponse response;
  EXPECT_EQ(Search(testing::IdSearch("nope", 3, {1}), &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(testing::UploadPoints(stub(), "nope", points, 5).error_code(),
            grpc::StatusCode::NOT_FOUND);
  // A LOADING index cannot be searched, nor built without points.
  ASSERT_TRUE(
      testing::CreateIndex(stub(), "loading", testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 4))
          .ok());
  status = Search(testing::IdSearch("loading", 3, {1}), &response);
  EXPECT_THAT(status, testing::StatusIs(grpc::StatusCode::FAILED_PRECONDITION, "LOADING"));
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::BuildIndexRequest request;
    request.set_index_id("loading");
    v1::IndexInfo info;
    status = stub().BuildIndex(&context, request, &info);
    EXPECT_THAT(status, testing::StatusIs(grpc::StatusCode::FAILED_PRECONDITION, "no points"));
  }
  // inducing_count above the number of points: INVALID_ARGUMENT at BuildIndex, still LOADING.
  ASSERT_TRUE(testing::UploadPoints(stub(), "loading", testing::NormalPoints(3, 2, 2), 2).ok());
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::BuildIndexRequest request;
    request.set_index_id("loading");
    v1::IndexInfo info;
    status = stub().BuildIndex(&context, request, &info);
    EXPECT_THAT(status,
                testing::StatusIs(grpc::StatusCode::INVALID_ARGUMENT, "spec.inducing_count"));
  }
  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::DeleteIndexRequest request;
  request.set_index_id("loading");
  v1::DeleteIndexResponse deleted;
  EXPECT_TRUE(stub().DeleteIndex(&context, request, &deleted).ok());
}

TEST_F(RcknnServiceTest, UploadStreamIsAppliedWhole) {
  ASSERT_TRUE(
      testing::CreateIndex(stub(), "atomic", testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 4))
          .ok());
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::UploadPointsResponse response;
    auto writer = stub().UploadPoints(&context, &response);
    v1::UploadPointsRequest chunk;
    chunk.set_index_id("atomic");
    Append(chunk.mutable_coordinates(), {1.0, 2.0, 3.0, 4.0});
    ASSERT_TRUE(writer->Write(chunk));
    chunk.clear_index_id();
    chunk.mutable_coordinates()->Set(3, std::numeric_limits<double>::quiet_NaN());
    writer->Write(chunk);
    writer->WritesDone();
    const grpc::Status status = writer->Finish();
    EXPECT_THAT(status, testing::StatusIs(grpc::StatusCode::INVALID_ARGUMENT, "coordinates"));
    EXPECT_THAT(status.error_message(), HasSubstr("point 3, column 1"));
  }
  v1::UploadPointsResponse response;
  ASSERT_TRUE(
      testing::UploadPoints(stub(), "atomic", testing::NormalPoints(7, 2, 3), 3, &response).ok());
  EXPECT_EQ(response.points_received(), 7);
  EXPECT_EQ(response.total_points(), 7);  // the failed stream added nothing
  ASSERT_TRUE(
      testing::UploadPoints(stub(), "atomic", testing::NormalPoints(5, 2, 4), 2, &response).ok());
  EXPECT_EQ(response.points_received(), 5);
  EXPECT_EQ(response.total_points(), 12);
  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::DeleteIndexRequest request;
  request.set_index_id("atomic");
  v1::DeleteIndexResponse deleted;
  EXPECT_TRUE(stub().DeleteIndex(&context, request, &deleted).ok());
}

TEST_F(RcknnServiceTest, FactorsSuppliedIndexAnswersLikeComputedFactors) {
  // Upload the V rows and p of the small index itself: the answers must agree.
  const auto& space = dynamic_cast<const core::ResidualSpace&>(core_index_->space());
  v1::IndexSpec spec = testing::SpecOf(*set_);
  spec.clear_inducing_points();
  spec.set_factors_supplied(true);
  ASSERT_TRUE(testing::CreateIndex(stub(), "factors", spec).ok());
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::UploadPointsResponse response;
    auto writer = stub().UploadPoints(&context, &response);
    const int64_t m = space.v().cols();
    for (int64_t first = 0; first < set_->n; first += 1000) {
      const int64_t rows = std::min<int64_t>(1000, set_->n - first);
      v1::UploadPointsRequest chunk;
      chunk.set_index_id("factors");
      chunk.mutable_coordinates()->Add(set_->points.data() + first * 2,
                                       set_->points.data() + (first + rows) * 2);
      for (int64_t id = first; id < first + rows; ++id) {
        // V is stored in the tree's order: row position_of(id) holds point id.
        const double* row = space.v().row(space.position_of(id)).data();
        chunk.mutable_factors()->Add(row, row + m);
      }
      chunk.mutable_residual_variances()->Add(space.p().data() + first,
                                              space.p().data() + first + rows);
      ASSERT_TRUE(writer->Write(chunk));
    }
    writer->WritesDone();
    ASSERT_TRUE(writer->Finish().ok());
    EXPECT_EQ(response.total_points(), set_->n);
  }
  const v1::IndexInfo info = testing::BuildAndWait(stub(), "factors");
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  v1::SearchResponse supplied;
  v1::SearchResponse computed;
  ASSERT_TRUE(Search(testing::IdSearch("factors", set_->k, set_->query_ids), &supplied).ok());
  ASSERT_TRUE(Search(testing::IdSearch(kSmall, set_->k, set_->query_ids), &computed).ok());
  core::KnnOptions options;
  options.k = set_->k;
  const core::PointRows rows = space.Gather(set_->query_ids);
  for (size_t q = 0; q < set_->query_ids.size(); ++q) {
    EXPECT_EQ(testing::CompareRow(space, rows, q, set_->query_ids[q], options,
                                  supplied.neighbor_ids().data() + q * set_->k,
                                  supplied.distances().data() + q * set_->k,
                                  computed.distances().data() + q * set_->k),
              "");
  }
  // Out-of-sample queries need the kernel's inducing points.
  v1::SearchRequest request;
  request.set_index_id("factors");
  request.set_k(3);
  Append(request.mutable_query_points(), {0.1, 0.2});
  const grpc::Status status = Search(request, &supplied);
  EXPECT_THAT(status, testing::StatusIs(grpc::StatusCode::FAILED_PRECONDITION, "query_points"));
  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::DeleteIndexRequest delete_request;
  delete_request.set_index_id("factors");
  v1::DeleteIndexResponse deleted;
  EXPECT_TRUE(stub().DeleteIndex(&context, delete_request, &deleted).ok());
}

// INVALID_ARGUMENT cases: each names its field.
struct BadCase {
  std::string name;
  std::function<void(v1::CreateIndexRequest&)> create;  // null: the case is a search
  std::function<void(v1::SearchRequest&)> search;
  std::string field;
};

TEST_F(RcknnServiceTest, MalformedRequestsNameTheField) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<BadCase> cases = {
      {"empty id", [](auto& r) { r.set_index_id(""); }, nullptr, "index_id"},
      {"bad id", [](auto& r) { r.set_index_id("a/b"); }, nullptr, "index_id"},
      {"no spec", [](auto& r) { r.clear_spec(); }, nullptr, "spec"},
      {"metric unspecified", [](auto& r) { r.mutable_spec()->set_metric(v1::METRIC_UNSPECIFIED); },
       nullptr, "spec.metric"},
      {"metric unknown", [](auto& r) { r.mutable_spec()->set_metric(static_cast<v1::Metric>(42)); },
       nullptr, "spec.metric"},
      {"dimension 0", [](auto& r) { r.mutable_spec()->set_dimension(0); }, nullptr,
       "spec.dimension"},
      {"dimension negative", [](auto& r) { r.mutable_spec()->set_dimension(-3); }, nullptr,
       "spec.dimension"},
      {"no kernel", [](auto& r) { r.mutable_spec()->clear_kernel(); }, nullptr, "spec.kernel"},
      {"kernel unspecified",
       [](auto& r) { r.mutable_spec()->mutable_kernel()->set_type(v1::KERNEL_UNSPECIFIED); },
       nullptr, "spec.kernel.type"},
      {"kernel unknown",
       [](auto& r) {
         r.mutable_spec()->mutable_kernel()->set_type(static_cast<v1::KernelType>(9));
       },
       nullptr, "spec.kernel.type"},
      {"variance 0", [](auto& r) { r.mutable_spec()->mutable_kernel()->set_variance(0); }, nullptr,
       "spec.kernel.variance"},
      {"variance NaN", [nan](auto& r) { r.mutable_spec()->mutable_kernel()->set_variance(nan); },
       nullptr, "spec.kernel.variance"},
      {"lengthscale negative",
       [](auto& r) { r.mutable_spec()->mutable_kernel()->set_lengthscales(0, -1); }, nullptr,
       "spec.kernel.lengthscales"},
      {"lengthscales count",
       [](auto& r) {
         r.mutable_spec()->mutable_kernel()->add_lengthscales(1);
         r.mutable_spec()->mutable_kernel()->add_lengthscales(1);
       },
       nullptr, "spec.kernel.lengthscales"},
      {"inducing_count 0", [](auto& r) { r.mutable_spec()->set_inducing_count(0); }, nullptr,
       "spec.inducing_count"},
      {"inducing_points row length", [](auto& r) { r.mutable_spec()->add_inducing_points(1.0); },
       nullptr, "spec.inducing_points"},
      {"inducing_points inf",
       [inf](auto& r) {
         r.mutable_spec()->add_inducing_points(inf);
         r.mutable_spec()->add_inducing_points(0);
       },
       nullptr, "spec.inducing_points"},
      {"jitter negative", [](auto& r) { r.mutable_spec()->set_jitter(-1e-3); }, nullptr,
       "spec.jitter"},
      {"euclidean with kernel", [](auto& r) { r.mutable_spec()->set_metric(v1::METRIC_EUCLIDEAN); },
       nullptr, "spec.kernel"},
      {"k 0", nullptr, [](auto& r) { r.set_k(0); }, "k"},
      {"k negative", nullptr, [](auto& r) { r.set_k(-5); }, "k"},
      {"no queries", nullptr, [](auto& r) { r.clear_query_ids(); }, "query_ids"},
      {"both query kinds", nullptr, [](auto& r) { r.add_query_points(0.5); },
       "query_ids, query_points"},
      {"id out of range", nullptr, [](auto& r) { r.add_query_ids(4096); }, "query_ids[2]"},
      {"negative id", nullptr, [](auto& r) { r.set_query_ids(0, -1); }, "query_ids[0]"},
      {"point row length", nullptr,
       [](auto& r) {
         r.clear_query_ids();
         Append(r.mutable_query_points(), {0.1, 0.2, 0.3});
       },
       "query_points"},
      {"point NaN", nullptr,
       [nan](auto& r) {
         r.clear_query_ids();
         Append(r.mutable_query_points(), {0.1, nan});
       },
       "query_points"},
      {"predecessor with points", nullptr,
       [](auto& r) {
         r.clear_query_ids();
         Append(r.mutable_query_points(), {0.1, 0.2});
         r.set_predecessor_mode(true);
       },
       "predecessor_mode"},
      {"search id empty", nullptr, [](auto& r) { r.set_index_id(""); }, "index_id"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    grpc::ClientContext context;
    testing::SetDeadline(context);
    grpc::Status status;
    if (c.create) {
      v1::CreateIndexRequest request;
      request.set_index_id("never-created");
      *request.mutable_spec() = testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 4);
      c.create(request);
      v1::IndexInfo info;
      status = stub().CreateIndex(&context, request, &info);
    } else {
      v1::SearchRequest request = testing::IdSearch(kSmall, 3, {5, 6});
      c.search(request);
      v1::SearchResponse response;
      status = stub().Search(&context, request, &response);
    }
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_THAT(status.error_message(), ::testing::StartsWith(c.field));
  }
  // Nothing was created.
  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::GetIndexRequest request;
  request.set_index_id("never-created");
  v1::IndexInfo info;
  EXPECT_EQ(stub().GetIndex(&context, request, &info).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(RcknnServiceTest, MalformedUploadChunksNameTheField) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  v1::IndexSpec factor_spec = testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 3);
  factor_spec.set_factors_supplied(true);
  ASSERT_TRUE(
      testing::CreateIndex(stub(), "chunks", testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 2))
          .ok());
  ASSERT_TRUE(testing::CreateIndex(stub(), "chunks-f", factor_spec).ok());
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
    auto writer = stub().UploadPoints(&context, &response);
    v1::UploadPointsRequest chunk;
    chunk.set_index_id(c.index);
    Append(chunk.mutable_coordinates(), {0.5, 0.25});
    c.mutate(chunk);
    writer->Write(chunk);
    writer->WritesDone();
    const grpc::Status status = writer->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_THAT(status.error_message(), ::testing::StartsWith(c.field));
  }
  for (const char* id : {"chunks", "chunks-f"}) {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::GetIndexRequest request;
    request.set_index_id(id);
    v1::IndexInfo info;
    ASSERT_TRUE(stub().GetIndex(&context, request, &info).ok());
    EXPECT_EQ(info.num_points(), 0) << id;
    grpc::ClientContext delete_context;
    testing::SetDeadline(delete_context);
    v1::DeleteIndexRequest delete_request;
    delete_request.set_index_id(id);
    v1::DeleteIndexResponse deleted;
    EXPECT_TRUE(stub().DeleteIndex(&delete_context, delete_request, &deleted).ok());
  }
}

TEST(RcknnServerLimitsTest, EachLimitAnswersResourceExhaustedNamingIt) {
  server::ServerOptions options;
  options.max_indexes = 2;
  options.max_points_per_index = 1000;
  options.max_queries_per_search = 50;
  options.max_message_bytes = 64 << 10;
  testing::TestServer test = testing::StartTestServer(options);
  v1::Rcknn::Stub& stub = *test.stub;
  const v1::IndexSpec spec = testing::ResidualSpec(2, v1::KERNEL_RBF, 1, 1, 16);
  ASSERT_TRUE(testing::CreateIndex(stub, "a", spec).ok());
  ASSERT_TRUE(testing::CreateIndex(stub, "b", spec).ok());
  grpc::Status status = testing::CreateIndex(stub, "c", spec);
  EXPECT_THAT(status, testing::StatusIs(grpc::StatusCode::RESOURCE_EXHAUSTED, "--max_indexes"));

  // 1,001 points in small chunks: over --max_points_per_index, and nothing is applied.
  status = testing::UploadPoints(stub, "a", testing::NormalPoints(1001, 2, 1), 100);
  EXPECT_THAT(status,
              testing::StatusIs(grpc::StatusCode::RESOURCE_EXHAUSTED, "--max_points_per_index"));
  // One chunk above 64 KiB: gRPC itself refuses it, naming the limit in bytes.
  status = testing::UploadPoints(stub, "a", testing::NormalPoints(5000, 2, 1), 5000);
  EXPECT_THAT(status, testing::StatusIs(grpc::StatusCode::RESOURCE_EXHAUSTED, "larger than max"));
  EXPECT_THAT(status.error_message(), HasSubstr("65536"));

  ASSERT_TRUE(testing::UploadPoints(stub, "b", testing::NormalPoints(1000, 2, 2), 250).ok());
  ASSERT_EQ(testing::BuildAndWait(stub, "b").state(), v1::INDEX_STATE_READY);
  std::vector<int64_t> ids(51);
  std::iota(ids.begin(), ids.end(), 0);
  v1::SearchResponse response;
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    status = stub.Search(&context, testing::IdSearch("b", 5, ids), &response);
    EXPECT_THAT(status,
                testing::StatusIs(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                  "--max_queries_per_search"));
  }
  {
    // 50 queries x k = 500: about 500 KB of answer, over 64 KiB.
    ids.resize(50);
    grpc::ClientContext context;
    testing::SetDeadline(context);
    status = stub.Search(&context, testing::IdSearch("b", 500, ids), &response);
    EXPECT_THAT(status,
                testing::StatusIs(grpc::StatusCode::RESOURCE_EXHAUSTED, "--max_message_bytes"));
  }
  {
    // A k so large that num_queries x k overflows is refused the same way.
    grpc::ClientContext context;
    testing::SetDeadline(context);
    status = stub.Search(&context, testing::IdSearch("b", std::numeric_limits<int64_t>::max(), ids),
                         &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  grpc::ClientContext context;
  testing::SetDeadline(context);
  EXPECT_TRUE(stub.Search(&context, testing::IdSearch("b", 5, ids), &response).ok());
}

TEST(RcknnServerUploadTest, TwoHundredThousandPointsInManyChunks) {
  testing::TestServer test = testing::StartTestServer();
  v1::Rcknn::Stub& stub = *test.stub;
  v1::IndexSpec spec;
  spec.set_metric(v1::METRIC_EUCLIDEAN);
  spec.set_dimension(2);
  const int64_t n = 200000;
  const core::RowMatrix points = testing::NormalPoints(n, 2, 17);
  ASSERT_TRUE(testing::CreateIndex(stub, "big", spec).ok());
  v1::UploadPointsResponse response;
  // 400 chunks on one stream, then a second stream: chunks append in order.
  const core::RowMatrix first = points.topRows(150000);
  const core::RowMatrix second = points.bottomRows(n - 150000);
  ASSERT_TRUE(testing::UploadPoints(stub, "big", first, 375, &response).ok());
  EXPECT_EQ(response.points_received(), 150000);
  ASSERT_TRUE(testing::UploadPoints(stub, "big", second, 500, &response).ok());
  EXPECT_EQ(response.total_points(), n);
  const v1::IndexInfo info = testing::BuildAndWait(stub, "big");
  ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  EXPECT_EQ(info.num_points(), n);
  // Every point arrived at its id: querying its coordinates finds it at distance 0.
  std::vector<int64_t> probe = {0, 1, 374, 375, 149999, 150000, 150499, 150500, n - 1};
  v1::SearchRequest request;
  request.set_index_id("big");
  request.set_k(1);
  for (int64_t id : probe)
    request.mutable_query_points()->Add(points.row(id).data(), points.row(id).data() + 2);
  v1::SearchResponse answer;
  grpc::ClientContext context;
  testing::SetDeadline(context);
  ASSERT_TRUE(stub.Search(&context, request, &answer).ok());
  for (size_t i = 0; i < probe.size(); ++i) {
    EXPECT_EQ(answer.neighbor_ids(i), probe[i]);
    EXPECT_EQ(answer.distances(i), 0.0);
  }
}

}  // namespace
}  // namespace rcknn
