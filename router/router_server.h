// The assembled rcknn-router: RouterService over a ShardCluster, grpc.health.v1.Health, server
// reflection (v1alpha and v1), the RPC observer and the metrics endpoint, over TLS and with bearer tokens exactly
// as rcknn-server (the same code), configured from one RouterOptions.
#ifndef RCKNN_ROUTER_ROUTER_SERVER_H_
#define RCKNN_ROUTER_ROUTER_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "prometheus/exposer.h"
#include "router/router_metrics.h"
#include "router/router_service.h"
#include "router/shard_cluster.h"
#include "router/shard_discovery.h"
#include "server/health_service.h"
#include "server/reflection_v1_service.h"
#include "server/server_metrics.h"
#include "server/token_auth.h"

namespace rcknn::router {

struct RouterOptions {
  std::string listen_address = "127.0.0.1:50050";
  std::string metrics_listen_address = "127.0.0.1:9463";  // empty: no endpoint
  // --shards: "a:50051,b:50051|c:50051" is two shards, the second with two replicas. Exactly
  // one of `shards` and `shards_dns` is set.
  std::string shards;
  // --shards_dns, --shard_replicas, --shards_dns_interval (router/shard_discovery.h).
  std::string shards_dns;
  int64_t shard_replicas = 1;
  absl::Duration shards_dns_interval = absl::Seconds(10);
  // --min_shards: CreateIndex answers UNAVAILABLE while fewer shards are known.
  int64_t min_shards = 1;
  // Global ids per shard's range (router/shard_layout.h) of a new index that does not declare
  // CreateIndexRequest.expected_num_points.
  int64_t shard_points = 1 << 20;
  int64_t max_message_bytes = int64_t{64} << 20;
  // As rcknn-server's (server/server_options.h), for the router's own listening port.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  std::string auth_token_file;
  // Shards are called over plaintext, or over TLS trusting these PEM CAs when set, with this
  // bearer token (a file holding it) when set.
  std::string shard_tls_ca_file;
  std::string shard_token_file;
  absl::Duration shutdown_grace = absl::Seconds(10);
};

class RouterServer {
 public:
  // INVALID_ARGUMENT for options out of range (naming the flag); the errors of rcknn-server's
  // TLS and token set-up; UNAVAILABLE if an address cannot be bound.
  static absl::StatusOr<std::unique_ptr<RouterServer>> Start(const RouterOptions& options);
  ~RouterServer();

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  const server::ServerMetrics& metrics() const { return *metrics_; }
  void Shutdown(absl::Duration grace);

 private:
  RouterServer() = default;

  int port_ = 0;
  int metrics_port_ = 0;
  std::unique_ptr<server::ServerMetrics> metrics_;
  std::unique_ptr<RouterMetrics> router_metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<ShardCluster> cluster_;
  std::unique_ptr<ShardDiscovery> discovery_;  // with --shards_dns; stopped before cluster_ goes
  std::unique_ptr<RouterService> service_;
  std::unique_ptr<server::HealthService> health_;
  std::unique_ptr<server::ReflectionV1Service> reflection_v1_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<server::TokenAuthProcessor> auth_;

  absl::Mutex shutdown_mutex_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mutex_) = false;
};

}  // namespace rcknn::router

#endif  // RCKNN_ROUTER_ROUTER_SERVER_H_
