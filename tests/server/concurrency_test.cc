// The server under concurrent load, against an in-process server on port 0: searches on one index
// while another builds, DeleteIndex while searches on it are in flight, deadlines and client
// cancellation in the middle of a batch, fair sharing of the pool between a large batch and
// small ones, and graceful shutdown.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <future>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"

namespace rcknn {
namespace {

// A sparse-regime index (inducing points far apart relative to the data) whose searches scan
// most points: a batch of every id takes seconds on two threads.
constexpr int64_t kHeavyPoints = 16384;
constexpr int64_t kHeavyK = 30;

// Time bounds stretch under the sanitizers, which slow everything down several times.
#if defined(__SANITIZE_ADDRESS__)
constexpr int kSlowdown = 5;
#else
constexpr int kSlowdown = 1;
#endif

v1::IndexSpec HeavySpec() { return testing::ResidualSpec(3, v1::KERNEL_RBF, 1.0, 1.0, 256, 3); }

std::vector<int64_t> Range(int64_t begin, int64_t end) {
  std::vector<int64_t> ids(end - begin);
  std::iota(ids.begin(), ids.end(), begin);
  return ids;
}

// Waits (without a fixed sleep) until `condition` holds or `timeout` passes.
template <typename Condition>
bool WaitFor(Condition condition, absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time end = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > end) return false;
    std::this_thread::yield();
  }
  return true;
}

class ConcurrencyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new testing::TestServer(testing::StartTestServer());
    const v1::IndexInfo info = testing::CreateReadyIndex(
        *server_->stub, "heavy", HeavySpec(), testing::NormalPoints(kHeavyPoints, 3, 11), 4096);
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  }
  static void TearDownTestSuite() { delete server_; }

  v1::Rcknn::Stub& stub() { return *server_->stub; }

  grpc::Status Search(const v1::SearchRequest& request, v1::SearchResponse* response,
                      absl::Duration timeout = absl::InfiniteDuration()) {
    grpc::ClientContext context;
    if (timeout != absl::InfiniteDuration()) {
      context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    }
    return stub().Search(&context, request, response);
  }

  static testing::TestServer* server_;
};

testing::TestServer* ConcurrencyTest::server_ = nullptr;

TEST_F(ConcurrencyTest, SearchesOnOneIndexWhileAnotherBuilds) {
  const std::vector<int64_t> ids = Range(100, 164);
  v1::SearchResponse reference;
  ASSERT_TRUE(Search(testing::IdSearch("heavy", kHeavyK, ids), &reference).ok());

  ASSERT_TRUE(testing::CreateIndex(stub(), "building", HeavySpec()).ok());
  ASSERT_TRUE(
      testing::UploadPoints(stub(), "building", testing::NormalPoints(20000, 3, 12), 5000).ok());
  grpc::ClientContext build_context;
  testing::SetDeadline(build_context);
  v1::BuildIndexRequest build;
  build.set_index_id("building");
  v1::IndexInfo info;
  ASSERT_TRUE(stub().BuildIndex(&build_context, build, &info).ok());
  ASSERT_EQ(info.state(), v1::INDEX_STATE_BUILDING);

  auto state = [this] {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::GetIndexRequest request;
    request.set_index_id("building");
    v1::IndexInfo info;
    stub().GetIndex(&context, request, &info);
    return info.state();
  };
  std::atomic<int> during_build{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 3; ++c) {
    clients.emplace_back([&] {
      // Search until the build is over; at least a few searches each.
      for (int round = 0; round < 4 || state() == v1::INDEX_STATE_BUILDING; ++round) {
        const bool building = state() == v1::INDEX_STATE_BUILDING;
        v1::SearchResponse response;
        if (!Search(testing::IdSearch("heavy", kHeavyK, ids), &response).ok() ||
            !testing::CompareAnswers(response.neighbor_ids().data(), response.distances().data(),
                                     reference.neighbor_ids().data(), reference.distances().data(),
                                     64, kHeavyK)
                 .empty()) {
          ++failures;
        }
        if (building && state() == v1::INDEX_STATE_BUILDING) ++during_build;
      }
    });
  }
  for (std::thread& client : clients) client.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(during_build.load(), 0) << "no search overlapped the build";
  EXPECT_EQ(state(), v1::INDEX_STATE_READY);
  v1::SearchResponse response;
  EXPECT_TRUE(Search(testing::IdSearch("building", 5, {0, 19999}), &response).ok());
  grpc::ClientContext context;
  testing::SetDeadline(context);
  v1::DeleteIndexRequest request;
  request.set_index_id("building");
  v1::DeleteIndexResponse deleted;
  EXPECT_TRUE(stub().DeleteIndex(&context, request, &deleted).ok());
}

TEST_F(ConcurrencyTest, DeleteIndexWhileSearchesAreInFlight) {
  ASSERT_TRUE(testing::CreateReadyIndex(stub(), "doomed", HeavySpec(),
                                        testing::NormalPoints(kHeavyPoints, 3, 11), 4096)
                  .state() == v1::INDEX_STATE_READY);
  const std::vector<int64_t> ids = Range(0, 4096);
  v1::SearchResponse reference;
  ASSERT_TRUE(Search(testing::IdSearch("doomed", kHeavyK, Range(0, 64)), &reference).ok());
  std::vector<std::future<std::pair<grpc::Status, v1::SearchResponse>>> searches;
  for (int s = 0; s < 2; ++s) {
    searches.push_back(std::async(std::launch::async, [&] {
      v1::SearchResponse response;
      grpc::Status status = Search(testing::IdSearch("doomed", kHeavyK, ids), &response);
      return std::make_pair(status, response);
    }));
  }
  ASSERT_TRUE(WaitFor([] { return server_->server->searches_in_flight() >= 2; }));
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::DeleteIndexRequest request;
    request.set_index_id("doomed");
    v1::DeleteIndexResponse deleted;
    ASSERT_TRUE(stub().DeleteIndex(&context, request, &deleted).ok());
  }
  // New searches no longer find it; the ones in flight finish on the old index, correctly.
  v1::SearchResponse response;
  EXPECT_EQ(Search(testing::IdSearch("doomed", 3, {1}), &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
  for (auto& search : searches) {
    auto [status, answer] = search.get();
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(answer.num_queries(), 4096);
    EXPECT_EQ(testing::CompareAnswers(answer.neighbor_ids().data(), answer.distances().data(),
                                      reference.neighbor_ids().data(), reference.distances().data(),
                                      64, kHeavyK),
              "");
  }
}

TEST_F(ConcurrencyTest, DeadlineExpiresMidBatch) {
  const absl::Time start = absl::Now();
  v1::SearchResponse response;
  const grpc::Status status = Search(testing::IdSearch("heavy", kHeavyK, Range(0, kHeavyPoints)),
                                     &response, absl::Milliseconds(300));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The pool is free again within milliseconds of the deadline, long before the batch would end.
  ASSERT_TRUE(WaitFor([] { return server_->server->searches_in_flight() == 0; }));
  const absl::Duration freed = absl::Now() - start;
  EXPECT_LT(freed, absl::Milliseconds(300 + 500 * kSlowdown)) << "freed after " << freed;
  std::printf("deadline 300 ms: pool free %.1f ms after the call started\n",
              absl::ToDoubleMilliseconds(freed));
  EXPECT_TRUE(Search(testing::IdSearch("heavy", 5, {7}), &response).ok());
}

TEST_F(ConcurrencyTest, ClientCancellationFreesThePool) {
  grpc::ClientContext context;
  testing::SetDeadline(context);
  auto search = std::async(std::launch::async, [&] {
    v1::SearchResponse response;
    return stub().Search(&context, testing::IdSearch("heavy", kHeavyK, Range(0, kHeavyPoints)),
                         &response);
  });
  ASSERT_TRUE(WaitFor([] { return server_->server->searches_in_flight() == 1; }));
  const absl::Time cancelled = absl::Now();
  context.TryCancel();
  EXPECT_EQ(search.get().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(WaitFor([] { return server_->server->searches_in_flight() == 0; }));
  const absl::Duration freed = absl::Now() - cancelled;
  EXPECT_LT(freed, absl::Milliseconds(500) * kSlowdown) << "freed after " << freed;
  std::printf("client cancellation: pool free %.1f ms after TryCancel\n",
              absl::ToDoubleMilliseconds(freed));
}

TEST_F(ConcurrencyTest, SmallSearchIsNotQueuedBehindALargeBatch) {
  grpc::ClientContext context;
  testing::SetDeadline(context);
  std::atomic<bool> large_done{false};
  auto large = std::async(std::launch::async, [&] {
    v1::SearchResponse response;
    grpc::Status status = stub().Search(
        &context, testing::IdSearch("heavy", kHeavyK, Range(0, kHeavyPoints)), &response);
    large_done.store(true);
    return status;
  });
  ASSERT_TRUE(WaitFor([] { return server_->server->searches_in_flight() == 1; }));
  std::vector<double> latencies_ms;
  for (int i = 0; i < 5; ++i) {
    const absl::Time start = absl::Now();
    v1::SearchResponse response;
    ASSERT_TRUE(Search(testing::IdSearch("heavy", kHeavyK, {100 + i}), &response).ok());
    latencies_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
  }
  // Every small search came back while the large batch was still running.
  EXPECT_FALSE(large_done.load()) << "the large batch ended first; latencies (ms) "
                                  << ::testing::PrintToString(latencies_ms);
  context.TryCancel();
  large.get();
  std::sort(latencies_ms.begin(), latencies_ms.end());
  std::printf("small search latency under a large batch: median %.1f ms, max %.1f ms\n",
              latencies_ms[2], latencies_ms[4]);
}

TEST(ShutdownTest, GracefulShutdownFinishesInFlightSearches) {
  testing::TestServer test = testing::StartTestServer();
  ASSERT_EQ(testing::CreateReadyIndex(*test.stub, "heavy", HeavySpec(),
                                      testing::NormalPoints(8192, 3, 11), 4096)
                .state(),
            v1::INDEX_STATE_READY);
  auto search = std::async(std::launch::async, [&] {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::SearchResponse response;
    grpc::Status status =
        test.stub->Search(&context, testing::IdSearch("heavy", kHeavyK, Range(0, 4096)), &response);
    return std::make_pair(status, response.num_queries());
  });
  ASSERT_TRUE(WaitFor([&] { return test.server->searches_in_flight() == 1; }));
  test.server->Shutdown(absl::Seconds(60));
  const auto [status, num_queries] = search.get();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(num_queries, 4096);
  // After shutdown no call is accepted.
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::ListIndexesResponse list;
  EXPECT_FALSE(test.stub->ListIndexes(&context, v1::ListIndexesRequest(), &list).ok());
}

TEST(ShutdownTest, GraceExpiryCancelsSearchesAndBuilds) {
  testing::TestServer test = testing::StartTestServer();
  ASSERT_EQ(testing::CreateReadyIndex(*test.stub, "heavy", HeavySpec(),
                                      testing::NormalPoints(8192, 3, 11), 4096)
                .state(),
            v1::INDEX_STATE_READY);
  ASSERT_TRUE(testing::CreateIndex(*test.stub, "building", HeavySpec()).ok());
  ASSERT_TRUE(
      testing::UploadPoints(*test.stub, "building", testing::NormalPoints(20000, 3, 12), 5000)
          .ok());
  {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::BuildIndexRequest build;
    build.set_index_id("building");
    v1::IndexInfo info;
    ASSERT_TRUE(test.stub->BuildIndex(&context, build, &info).ok());
  }
  auto search = std::async(std::launch::async, [&] {
    grpc::ClientContext context;
    testing::SetDeadline(context);
    v1::SearchResponse response;
    return test.stub->Search(&context, testing::IdSearch("heavy", kHeavyK, Range(0, 8192)),
                             &response);
  });
  ASSERT_TRUE(WaitFor([&] { return test.server->searches_in_flight() == 1; }));
  const absl::Time start = absl::Now();
  test.server->Shutdown(absl::Milliseconds(50));
  const absl::Duration took = absl::Now() - start;
  EXPECT_FALSE(search.get().ok());
  EXPECT_LT(took, absl::Seconds(1) * kSlowdown) << took;
}

}  // namespace
}  // namespace rcknn
