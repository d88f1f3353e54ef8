// router/shard_discovery.h: the cluster grows with the pods a DNS name has (through an injected
// resolver), shard o / R replica o % R, never shrinks; the system resolver on loopback names.
#include "router/shard_discovery.h"

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"

namespace rcknn::router {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<ShardCluster> EmptyCluster() {
  return std::make_unique<ShardCluster>(std::vector<std::vector<std::string>>{},
                                        grpc::InsecureChannelCredentials(), 1 << 20, nullptr);
}

std::vector<std::string> Addresses(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back("10.0.0." + std::to_string(i + 1));
  return out;
}

TEST(ShardDiscoveryTest, PodsBecomeShardsOfRReplicasAndTheClusterNeverShrinks) {
  auto cluster = EmptyCluster();
  int pods = 0;
  std::vector<std::string> asked;
  ShardDiscoveryOptions options;
  options.target = "rcknn-shard.ns.svc.cluster.local:50051";
  options.replicas = 2;
  auto discovery = ShardDiscovery::Create(
      options, cluster.get(), [&](const std::string& host) -> absl::StatusOr<std::vector<std::string>> {
        asked.push_back(host);
        if (pods < 0) return absl::UnavailableError("dns down");
        return Addresses(pods);
      });
  ASSERT_TRUE(discovery.ok()) << discovery.status();
  ASSERT_TRUE((*discovery)->Refresh().ok());
  EXPECT_EQ(cluster->size(), 0);
  EXPECT_EQ(asked.back(), "rcknn-shard.ns.svc.cluster.local");

  pods = 5;  // two whole shards; the fifth pod waits for its partner
  ASSERT_TRUE((*discovery)->Refresh().ok());
  ASSERT_EQ(cluster->size(), 2);
  EXPECT_EQ(cluster->replicas(1), 2);
  EXPECT_EQ(cluster->address(0, 0), "rcknn-shard-0.rcknn-shard.ns.svc.cluster.local:50051");
  EXPECT_EQ(cluster->address(0, 1), "rcknn-shard-1.rcknn-shard.ns.svc.cluster.local:50051");
  EXPECT_EQ(cluster->address(1, 0), "rcknn-shard-2.rcknn-shard.ns.svc.cluster.local:50051");
  EXPECT_EQ(cluster->address(1, 1), "rcknn-shard-3.rcknn-shard.ns.svc.cluster.local:50051");

  pods = 2;  // a pod restarting drops out of DNS for a moment: nothing is removed
  ASSERT_TRUE((*discovery)->Refresh().ok());
  EXPECT_EQ(cluster->size(), 2);
  pods = -1;
  EXPECT_EQ((*discovery)->Refresh().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(cluster->size(), 2);

  pods = 6;
  ASSERT_TRUE((*discovery)->Refresh().ok());
  ASSERT_EQ(cluster->size(), 3);
  EXPECT_EQ(cluster->address(2, 0), "rcknn-shard-4.rcknn-shard.ns.svc.cluster.local:50051");
  EXPECT_EQ(cluster->address(2, 1), "rcknn-shard-5.rcknn-shard.ns.svc.cluster.local:50051");
  EXPECT_EQ(cluster->address(0, 0), "rcknn-shard-0.rcknn-shard.ns.svc.cluster.local:50051");
}

TEST(ShardDiscoveryTest, TheRefreshThreadResolvesAgainEveryInterval) {
  auto cluster = EmptyCluster();
  absl::Mutex mutex;
  int pods = 1;
  int calls = 0;
  ShardDiscoveryOptions options;
  options.target = "svc:7";
  options.interval = absl::Milliseconds(5);
  auto discovery = ShardDiscovery::Create(
      options, cluster.get(), [&](const std::string&) -> absl::StatusOr<std::vector<std::string>> {
        absl::MutexLock lock(&mutex);
        ++calls;
        return Addresses(pods);
      });
  ASSERT_TRUE(discovery.ok());
  (*discovery)->Start();
  {
    absl::MutexLock lock(&mutex);
    pods = 3;
    mutex.Await(absl::Condition(+[](int* c) { return *c >= 3; }, &calls));
  }
  // A refresh that started after pods = 3 has grown the cluster.
  for (int i = 0; i < 2000 && cluster->size() < 3; ++i) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(cluster->size(), 3);
  EXPECT_EQ(cluster->address(2, 0), "svc-2.svc:7");
  discovery->reset();  // stops the thread
}

TEST(ShardDiscoveryTest, TargetsAndReplicaCountsAreChecked) {
  auto cluster = EmptyCluster();
  ShardDiscoveryOptions options;
  for (const char* bad : {"", "svc", ":50051", "svc:", "svc:0", "svc:70000", "svc:x"}) {
    options.target = bad;
    auto created = ShardDiscovery::Create(options, cluster.get(), ResolveHost);
    ASSERT_FALSE(created.ok()) << bad;
    EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(created.status().message()), HasSubstr("--shards_dns"));
  }
  options.target = "svc:1";
  options.replicas = 0;
  EXPECT_THAT(std::string(ShardDiscovery::Create(options, cluster.get(), ResolveHost)
                              .status()
                              .message()),
              HasSubstr("--shard_replicas"));
}

// The system resolver: localhost resolves on loopback; a name under the reserved .invalid
// top-level domain never does.
TEST(ShardDiscoveryTest, TheSystemResolverFindsLocalhost) {
  absl::StatusOr<std::vector<std::string>> local = ResolveHost("localhost");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_THAT(*local, ::testing::Contains(::testing::AnyOf("127.0.0.1", "::1")));
  EXPECT_FALSE(ResolveHost("no-such-host.invalid").ok());

  auto cluster = EmptyCluster();
  ShardDiscoveryOptions options;
  options.target = "localhost:50051";
  auto discovery = ShardDiscovery::Create(options, cluster.get(), ResolveHost);
  ASSERT_TRUE(discovery.ok());
  ASSERT_TRUE((*discovery)->Refresh().ok());
  EXPECT_EQ(cluster->size(), static_cast<int64_t>(local->size()));
  EXPECT_EQ(cluster->address(0, 0), "localhost-0.localhost:50051");
}

}  // namespace
}  // namespace rcknn::router
