// The server under concurrent load, against an in-process server on port 0 through the client
// library: searches on one index while another builds, DeleteIndex while searches on it are in
// flight, deadlines and client cancellation in the middle of a batch, fair sharing of the pool
// between a large batch and small ones, and graceful shutdown.
//
// What cancellation saves is measured against the same work uncancelled, timed in the same test:
// a loaded machine slows both alike, and a cancellation that stopped working would take as long
// as the uncancelled work and fail the comparison.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <future>
#include <memory>
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

using testing::HeavySpec;
using testing::IdQuery;
using testing::kHeavyK;
using testing::kHeavyPoints;
using testing::Range;
using testing::StatusIs;
using testing::WaitFor;

class ConcurrencyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new testing::TestServer(testing::StartTestServer());
    const v1::IndexInfo info = testing::CreateHeavyIndex(*server_, "heavy");
    ASSERT_EQ(info.state(), v1::INDEX_STATE_READY) << info.error();
  }
  static void TearDownTestSuite() { delete server_; }

  client::RcknnClient& client() { return *client_; }

  // The time a search of `ids` takes uncancelled, now.
  absl::Duration Uncancelled(const std::vector<int64_t>& ids) {
    const absl::Time start = absl::Now();
    EXPECT_TRUE(client().Search(IdQuery("heavy", ids, kHeavyK)).ok());
    return absl::Now() - start;
  }

  static testing::TestServer* server_;
  std::unique_ptr<client::RcknnClient> client_ = testing::MakeClient(*server_);
};

testing::TestServer* ConcurrencyTest::server_ = nullptr;

TEST_F(ConcurrencyTest, SearchesOnOneIndexWhileAnotherBuilds) {
  const std::vector<int64_t> ids = Range(100, 164);
  absl::StatusOr<client::SearchResult> reference = client().Search(IdQuery("heavy", ids, kHeavyK));
  ASSERT_TRUE(reference.ok()) << reference.status();

  ASSERT_TRUE(client().CreateIndex("building", HeavySpec()).ok());
  const core::RowMatrix points = testing::NormalPoints(20000, 3, 12);
  ASSERT_TRUE(
      client().UploadPoints("building", {absl::MakeConstSpan(points.data(), points.size()), 3})
          .ok());
  absl::StatusOr<v1::IndexInfo> started = client().BuildIndex("building");
  ASSERT_TRUE(started.ok()) << started.status();
  ASSERT_EQ(started->state(), v1::INDEX_STATE_BUILDING);

  auto state = [this] {
    absl::StatusOr<v1::IndexInfo> info = client().GetIndex("building");
    return info.ok() ? info->state() : v1::INDEX_STATE_UNSPECIFIED;
  };
  std::atomic<int> during_build{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 3; ++c) {
    clients.emplace_back([&] {
      // Search until the build is over; at least a few searches each.
      for (int round = 0; round < 4 || state() == v1::INDEX_STATE_BUILDING; ++round) {
        const bool building = state() == v1::INDEX_STATE_BUILDING;
        absl::StatusOr<client::SearchResult> answer =
            client().Search(IdQuery("heavy", ids, kHeavyK));
        if (!answer.ok() ||
            !testing::CompareAnswers(answer->ids.data(), answer->distances.data(),
                                     reference->ids.data(), reference->distances.data(), 64,
                                     kHeavyK)
                 .empty()) {
          ++failures;
        }
        if (building && state() == v1::INDEX_STATE_BUILDING) ++during_build;
      }
    });
  }
  for (std::thread& thread : clients) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(during_build.load(), 0) << "no search overlapped the build";
  EXPECT_EQ(state(), v1::INDEX_STATE_READY);
  EXPECT_TRUE(client().Search(IdQuery("building", {0, 19999}, 5)).ok());
  EXPECT_TRUE(client().DeleteIndex("building").ok());
}

TEST_F(ConcurrencyTest, DeleteIndexWhileSearchesAreInFlight) {
  ASSERT_EQ(testing::CreateHeavyIndex(*server_, "doomed").state(), v1::INDEX_STATE_READY);
  const std::vector<int64_t> ids = Range(0, 4096);
  absl::StatusOr<client::SearchResult> reference =
      client().Search(IdQuery("doomed", Range(0, 64), kHeavyK));
  ASSERT_TRUE(reference.ok()) << reference.status();
  std::vector<std::future<absl::StatusOr<client::SearchResult>>> searches;
  for (int s = 0; s < 2; ++s) {
    searches.push_back(std::async(std::launch::async, [&] {
      return client().Search(IdQuery("doomed", ids, kHeavyK));
    }));
  }
  ASSERT_TRUE(WaitFor([] { return server_->server->searches_in_flight() >= 2; }));
  ASSERT_TRUE(client().DeleteIndex("doomed").ok());
  // New searches no longer find it; the ones in flight finish on the old index, correctly.
  EXPECT_THAT(client().Search(IdQuery("doomed", {1}, 3)),
              StatusIs(absl::StatusCode::kNotFound, "doomed"));
  for (auto& search : searches) {
    absl::StatusOr<client::SearchResult> answer = search.get();
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->num_queries, 4096);
    EXPECT_EQ(testing::CompareAnswers(answer->ids.data(), answer->distances.data(),
                                      reference->ids.data(), reference->distances.data(), 64,
                                      kHeavyK),
              "");
  }
}

TEST_F(ConcurrencyTest, DeadlineExpiresMidBatch) {
  const std::vector<int64_t> ids = Range(0, kHeavyPoints / 2);
  const absl::Duration whole = Uncancelled(ids);
  // A deadline at a tenth of that: the call ends DEADLINE_EXCEEDED and the pool stops the
  // batch there, well before the whole batch would have ended.
  client::ClientOptions hurried;
  hurried.timeout = whole / 10;
  const absl::Time start = absl::Now();
  EXPECT_THAT(testing::MakeClient(*server_, hurried)->Search(IdQuery("heavy", ids, kHeavyK)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  ASSERT_TRUE(WaitFor([] { return server_->server->searches_in_flight() == 0; }));
  const absl::Duration freed = absl::Now() - start;
  EXPECT_LT(freed, whole / 2) << "the pool was freed " << freed << " after the call started; "
                              << "the batch uncancelled took " << whole;
  std::printf("deadline %.1f ms: pool free %.1f ms after the call started (uncancelled %.1f ms)\n",
              absl::ToDoubleMilliseconds(whole / 10), absl::ToDoubleMilliseconds(freed),
              absl::ToDoubleMilliseconds(whole));
  EXPECT_TRUE(client().Search(IdQuery("heavy", {7}, 5)).ok());
}

TEST_F(ConcurrencyTest, ClientCancellationFreesThePool) {
  const std::vector<int64_t> ids = Range(0, kHeavyPoints / 2);
  const absl::Duration whole = Uncancelled(ids);
  client::CallCanceller canceller;
  client::SearchQuery query = IdQuery("heavy", ids, kHeavyK);
  query.canceller = &canceller;
  auto search = std::async(std::launch::async, [&] { return client().Search(query); });
  ASSERT_TRUE(WaitFor([] { return server_->server->searches_in_flight() == 1; }));
  const absl::Time cancelled = absl::Now();
  canceller.Cancel();
  EXPECT_THAT(search.get(), StatusIs(absl::StatusCode::kCancelled));
  ASSERT_TRUE(WaitFor([] { return server_->server->searches_in_flight() == 0; }));
  const absl::Duration freed = absl::Now() - cancelled;
  EXPECT_LT(freed, whole / 4) << "the pool was freed " << freed << " after the cancellation; "
                              << "the batch uncancelled took " << whole;
  std::printf("client cancellation: pool free %.1f ms after Cancel (uncancelled %.1f ms)\n",
              absl::ToDoubleMilliseconds(freed), absl::ToDoubleMilliseconds(whole));
}

TEST_F(ConcurrencyTest, SmallSearchIsNotQueuedBehindALargeBatch) {
  client::CallCanceller canceller;
  const std::vector<int64_t> all = Range(0, kHeavyPoints);
  client::SearchQuery large_query = IdQuery("heavy", all, kHeavyK);
  large_query.canceller = &canceller;
  std::atomic<bool> large_done{false};
  auto large = std::async(std::launch::async, [&] {
    absl::StatusOr<client::SearchResult> result = client().Search(large_query);
    large_done.store(true);
    return result.status();
  });
  ASSERT_TRUE(WaitFor([] { return server_->server->searches_in_flight() == 1; }));
  std::vector<double> latencies_ms;
  for (int i = 0; i < 5; ++i) {
    const absl::Time start = absl::Now();
    ASSERT_TRUE(client().Search(IdQuery("heavy", {100 + i}, kHeavyK)).ok());
    latencies_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
  }
  // Every small search came back while the large batch was still running.
  EXPECT_FALSE(large_done.load()) << "the large batch ended first; latencies (ms) "
                                  << ::testing::PrintToString(latencies_ms);
  canceller.Cancel();
  EXPECT_THAT(large.get(), StatusIs(absl::StatusCode::kCancelled));
  std::sort(latencies_ms.begin(), latencies_ms.end());
  std::printf("small search latency under a large batch: median %.1f ms, max %.1f ms\n",
              latencies_ms[2], latencies_ms[4]);
}

TEST(ShutdownTest, GracefulShutdownFinishesInFlightSearches) {
  testing::TestServer test = testing::StartTestServer();
  ASSERT_EQ(testing::CreateHeavyIndex(test, "heavy", 8192).state(), v1::INDEX_STATE_READY);
  std::unique_ptr<client::RcknnClient> client = testing::MakeClient(test);
  auto search = std::async(std::launch::async, [&] {
    const std::vector<int64_t> ids = Range(0, 4096);
    return client->Search(IdQuery("heavy", ids, kHeavyK));
  });
  ASSERT_TRUE(WaitFor([&] { return test.server->searches_in_flight() == 1; }));
  test.server->Shutdown(absl::Seconds(60));
  const absl::StatusOr<client::SearchResult> answer = search.get();
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->num_queries, 4096);
  // After shutdown no call is accepted.
  client::ClientOptions short_wait;
  short_wait.timeout = absl::Seconds(5);
  EXPECT_FALSE(testing::MakeClient(test, short_wait)->ListIndexes().ok());
}

// What a counter or gauge of `text` (a Prometheus text exposition) reads: "absent" if missing.
std::string MetricValue(const std::string& text, const std::string& series) {
  const size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return "absent";
  const size_t value = at + series.size() + 2;
  return text.substr(value, text.find('\n', value) - value);
}

// At grace expiry the search in flight and the build in progress are both stopped: the search
// ends with an error well before its uncancelled time, and the build, still BUILDING when the
// shutdown starts (checked), ends FAILED instead of publishing, whatever phase the cancellation
// finds it in (the tree's last passes do not check it): a build that ignored its cancellation
// would run to READY while the pool drains, and be counted in rcknn_index_build_seconds (which
// counts finished builds only).
TEST(ShutdownTest, GraceExpiryCancelsSearchesAndBuilds) {
  testing::TestServer test = testing::StartTestServer();
  ASSERT_EQ(testing::CreateHeavyIndex(test, "heavy", 8192).state(), v1::INDEX_STATE_READY);
  std::unique_ptr<client::RcknnClient> client = testing::MakeClient(test);
  // Ten times the heavy index's points: the tree part takes long enough (well over the grace
  // below, also on a faster machine) that the build is still running when its cancellation
  // comes at the grace's end.
  const core::RowMatrix points = testing::NormalPoints(80000, 3, 12);
  const client::PointsView view{absl::MakeConstSpan(points.data(), points.size()), 3};
  const std::vector<int64_t> ids = Range(0, 8192);
  // The yardstick: the same search uncancelled, timed now.
  absl::Time start = absl::Now();
  ASSERT_TRUE(client->Search(IdQuery("heavy", ids, kHeavyK)).ok());
  const absl::Duration search_time = absl::Now() - start;

  ASSERT_TRUE(client->CreateIndex("building", HeavySpec()).ok());
  ASSERT_TRUE(client->UploadPoints("building", view).ok());
  ASSERT_TRUE(client->BuildIndex("building").ok());
  // Into the tree part (the factorisation, not cancellable, is the first half of the progress).
  ASSERT_TRUE(WaitFor([&] {
    absl::StatusOr<v1::IndexInfo> info = client->GetIndex("building");
    return info.ok() && info->build_progress() > 0.5;
  }, absl::Seconds(120)));
  auto search = std::async(std::launch::async,
                           [&] { return client->Search(IdQuery("heavy", ids, kHeavyK)); });
  ASSERT_TRUE(WaitFor([&] { return test.server->searches_in_flight() == 1; }));
  absl::StatusOr<v1::IndexInfo> building = client->GetIndex("building");
  ASSERT_TRUE(building.ok()) << building.status();
  ASSERT_EQ(building->state(), v1::INDEX_STATE_BUILDING)
      << "the build ended before the shutdown: this test needs a larger one";
  start = absl::Now();
  test.server->Shutdown(absl::Milliseconds(50));
  const absl::Duration took = absl::Now() - start;
  EXPECT_FALSE(search.get().ok());
  // The search was stopped, not waited for.
  EXPECT_LT(took, search_time / 2)
      << "shutdown took " << took << "; uncancelled, the search took " << search_time;
  // The build was stopped: only the heavy index's build finished.
  const std::string metrics = test.server->metrics().TextExposition();
  EXPECT_EQ(MetricValue(metrics, "rcknn_index_build_seconds_count"), "1");
  EXPECT_EQ(MetricValue(metrics, "rcknn_indexes{state=\"building\"}"), "0");
  EXPECT_EQ(MetricValue(metrics, "rcknn_indexes{state=\"failed\"}"), "1");
  std::printf("shutdown with 50 ms grace: %.1f ms (uncancelled search %.1f ms)\n",
              absl::ToDoubleMilliseconds(took), absl::ToDoubleMilliseconds(search_time));
}

}  // namespace
}  // namespace rcknn
