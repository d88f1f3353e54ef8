// The shard servers a router talks to: one channel and stub per replica, and the calls made on
// them. Reads go to one replica of a shard, chosen round-robin among those that have not failed
// lately, and fail over to the next replica when one does not answer (or is not READY); when no
// replica answers the call fails with UNAVAILABLE naming the shard, so that a partial answer is
// never mistaken for a whole one. Writes go to every replica. Every call inherits the deadline
// and the cancellation of the client's call that caused it.
#ifndef RCKNN_ROUTER_SHARD_CLUSTER_H_
#define RCKNN_ROUTER_SHARD_CLUSTER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "rcknn/v1/rcknn.grpc.pb.h"

namespace rcknn::router {

// Receives every shard call's shard, method, final code and latency (for metrics).
using ShardCallObserver =
    std::function<void(int64_t shard, absl::string_view method, grpc::StatusCode, double)>;

class ShardCluster {
 public:
  struct Replica {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::Rcknn::Stub> stub;
    std::atomic<int64_t> down_until_nanos{0};  // skipped by reads until then, if others remain
  };
  struct Shard {
    std::vector<std::unique_ptr<Replica>> replicas;
    std::atomic<uint64_t> next{0};
  };

  // The most shards a cluster can grow to.
  static constexpr int64_t kMaxShards = 4096;

  // One replica list per shard (host:port each), connected with `credentials`; `shards` may be
  // empty when discovery (router/shard_discovery.h) adds them later.
  ShardCluster(const std::vector<std::vector<std::string>>& shards,
               std::shared_ptr<grpc::ChannelCredentials> credentials, int64_t max_message_bytes,
               ShardCallObserver observer);

  // Appends shards after the existing ones (numbered on from size()). Shards are never removed
  // or renumbered: an index keeps its shards for its whole life. Thread-safe against every other
  // method: a shard is visible (size() counts it) only once it is complete. RESOURCE_EXHAUSTED
  // beyond kMaxShards.
  absl::Status AddShards(const std::vector<std::vector<std::string>>& shards);

  int64_t size() const { return size_.load(std::memory_order_acquire); }
  int64_t replicas(int64_t shard) const {
    return static_cast<int64_t>(slots_[shard]->replicas.size());
  }
  const std::string& address(int64_t shard, int64_t replica) const {
    return slots_[shard]->replicas[replica]->address;
  }
  v1::Rcknn::Stub* stub(int64_t shard, int64_t replica) const {
    return slots_[shard]->replicas[replica]->stub.get();
  }
  // "shard 2 (a:1|b:2)".
  std::string Name(int64_t shard) const;

  // One call: `issue` starts it on a stub (asynchronously, with the callback API) and must call
  // `done` exactly once; it is called again, on another replica, for a failover, so it must
  // reset its response first.
  using Issue = std::function<void(v1::Rcknn::Stub* stub, grpc::ClientContext* context,
                                   std::function<void(grpc::Status)> done)>;
  struct Call {
    int64_t shard = 0;
    int64_t replica = -1;  // -1: any replica, with failover; else exactly this one
    Issue issue;
    grpc::Status status;   // set by Run
  };

  // Runs `calls` in parallel and returns when all have ended. Each inherits the deadline and
  // cancellation of `parent` (null: none). `method` names the RPC for metrics. A failed call's
  // status names its shard (and replica when one was asked for); UNAVAILABLE when no replica of
  // the shard answered.
  void Run(std::vector<Call>& calls, const grpc::ServerContextBase* parent,
           absl::string_view method);

  // The first failed call's status, or OK.
  static grpc::Status FirstError(const std::vector<Call>& calls);

 private:
  struct Attempt;
  void Start(std::shared_ptr<Attempt> attempt);
  void Finish(const std::shared_ptr<Attempt>& attempt, grpc::Status status);

  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  grpc::ChannelArguments channel_args_;
  ShardCallObserver observer_;
  absl::Mutex grow_mutex_;  // one AddShards at a time
  // Slots [0, size_) hold complete shards; fixed capacity, so readers never see a reallocation.
  std::unique_ptr<std::unique_ptr<Shard>[]> slots_;
  std::atomic<int64_t> size_{0};
};

}  // namespace rcknn::router

#endif  // RCKNN_ROUTER_SHARD_CLUSTER_H_
