// Shards discovered from a DNS name: the headless Service of a StatefulSet of rcknn-server pods
// (deploy/kubernetes). Every `interval` the name is resolved again; the number of addresses it
// has is the number of pods N, and pod ordinal o (DNS name <set>-<o>.<service>, where <set> is
// the service name's first label, as a StatefulSet named like its headless Service gives) is
// replica o % R of shard o / R for R = `replicas`. The cluster grows to floor(N_max / R) shards,
// N_max the most pods ever seen: it never shrinks, since a pod that is restarting drops out of
// DNS for a moment and an index keeps its shards for life (router/shard_cluster.h). Scaling
// the StatefulSet up by R pods adds one shard for the indexes created afterwards.
#ifndef RCKNN_ROUTER_SHARD_DISCOVERY_H_
#define RCKNN_ROUTER_SHARD_DISCOVERY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "router/shard_cluster.h"

namespace rcknn::router {

// The distinct addresses a host name has (any family); NOT_FOUND / UNAVAILABLE when it has none
// or cannot be resolved.
using HostResolver = std::function<absl::StatusOr<std::vector<std::string>>(const std::string&)>;

// getaddrinfo(3): the system's resolver, with its search domains (a pod's "rcknn-shard" finds
// the Service of its namespace).
absl::StatusOr<std::vector<std::string>> ResolveHost(const std::string& host);

struct ShardDiscoveryOptions {
  std::string target;  // --shards_dns: host:port of the headless Service
  int64_t replicas = 1;  // --shard_replicas: pods per shard
  absl::Duration interval = absl::Seconds(10);  // --shards_dns_interval
};

class ShardDiscovery {
 public:
  // INVALID_ARGUMENT naming the flag for a target that is not host:port or replicas < 1.
  static absl::StatusOr<std::unique_ptr<ShardDiscovery>> Create(const ShardDiscoveryOptions& options,
                                                                ShardCluster* cluster,
                                                                HostResolver resolver);
  // Stops the refresh thread (if started).
  ~ShardDiscovery();

  // Resolves once and grows the cluster. The resolver's error when it fails (the cluster is left
  // as it was).
  absl::Status Refresh();
  // Refreshes every interval on one thread until destruction.
  void Start();

  // The address of pod `ordinal`: <set>-<ordinal>.<host>:<port>.
  std::string PodAddress(int64_t ordinal) const;

 private:
  ShardDiscovery(const ShardDiscoveryOptions& options, ShardCluster* cluster,
                 HostResolver resolver, std::string host, std::string port);

  const ShardDiscoveryOptions options_;
  ShardCluster* const cluster_;
  const HostResolver resolver_;
  const std::string host_;
  const std::string port_;
  const std::string set_;  // the host's first label
  absl::Mutex mutex_;      // one Refresh at a time
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace rcknn::router

#endif  // RCKNN_ROUTER_SHARD_DISCOVERY_H_
