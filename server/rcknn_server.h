// The assembled server: the rcknn.v1.Rcknn service, grpc.health.v1.Health, server reflection
// (v1alpha, what gRPC 1.51 ships, and v1: server/reflection_v1_service.h), the RPC observer, the
// query pool, the index registry and the Prometheus metrics (one ServerMetrics, served at
// /metrics when metrics_listen_address is set), configured from one ServerOptions.
#ifndef RCKNN_SERVER_RCKNN_SERVER_H_
#define RCKNN_SERVER_RCKNN_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "prometheus/exposer.h"
#include "server/health_service.h"
#include "server/index_registry.h"
#include "server/query_pool.h"
#include "server/reflection_v1_service.h"
#include "server/rcknn_service.h"
#include "server/index_store.h"
#include "server/memory_budget.h"
#include "server/server_metrics.h"
#include "server/server_options.h"
#include "server/token_auth.h"

namespace rcknn::server {

class RcknnServer {
 public:
  // Loads the indexes of options.data_dir (built ones are restored on the pool, in the
  // background), then listens and serves (over TLS and with the token check when the options
  // say so). FAILED_PRECONDITION if another server holds the data directory.
  // INVALID_ARGUMENT for options out of range or inconsistent, an empty TLS file or a malformed
  // token file; NOT_FOUND / PERMISSION_DENIED for a TLS or token file that cannot be read;
  // UNAVAILABLE if listen_address or metrics_listen_address cannot be bound; "address in use"
  // when another process holds the port (ports are never shared: no SO_REUSEPORT).
  static absl::StatusOr<std::unique_ptr<RcknnServer>> Start(const ServerOptions& options);

  // Shuts down with no grace if Shutdown was not called.
  ~RcknnServer();
  RcknnServer(const RcknnServer&) = delete;
  RcknnServer& operator=(const RcknnServer&) = delete;

  // The port bound (the chosen one when listen_address asked for port 0), and "host:port".
  int port() const { return port_; }
  const std::string& address() const { return address_; }
  int threads() const { return threads_; }
  // The memory budget (--max_memory_bytes) and what it holds now.
  const MemoryBudget& memory_budget() const { return *budget_; }
  // The port of the /metrics endpoint (0 when metrics_listen_address is empty).
  int metrics_port() const { return metrics_port_; }
  // Every metric the server records; tests read its TextExposition().
  const ServerMetrics& metrics() const { return *metrics_; }
  // Search batches running or waiting on the pool (0 after Shutdown).
  int64_t searches_in_flight() const;
  // Queries waiting to start on the pool (admission control, --max_queued_queries).
  int64_t queued_queries() const;
  // WatchIndex streams open on the server (IndexService::open_watches).
  int64_t open_watches() const;

  // Re-reads --auth_token_file and replaces the tokens for every later call (rcknn-server does
  // this on SIGHUP). On any error (unreadable file, a malformed line, no token) the old tokens
  // stay in force and the error is returned; FAILED_PRECONDITION without a token file.
  absl::Status ReloadAuthTokens();

  // Graceful shutdown: health turns NOT_SERVING, new calls are refused, WatchIndex streams end,
  // in-flight calls get `grace` to finish before they are cancelled, builds are cancelled when
  // the grace ends (or as soon as no call is left, if sooner), and the pool drains. Blocks until all of that is done. Thread-safe; later calls do nothing.
  void Shutdown(absl::Duration grace);

 private:
  RcknnServer() = default;

  ServerOptions options_;
  int port_ = 0;
  int threads_ = 0;
  int metrics_port_ = 0;
  std::string address_;
  // Declared in dependency order: destroyed from the gRPC server down to the pool, the endpoint
  // and the metrics.
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<MemoryBudget> budget_;
  // The bytes core::ArrayCache keeps for reuse (ServerOptions::keep_freed_memory), resized by
  // the cache's observer under the cache's lock.
  MemoryReservation kept_memory_;
  std::unique_ptr<IndexStore> store_;
  std::unique_ptr<QueryPool> pool_;
  std::unique_ptr<IndexRegistry> registry_;
  std::unique_ptr<RcknnService> service_;
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<ReflectionV1Service> reflection_v1_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<TokenAuthProcessor> auth_;  // null without --auth_token_file

  mutable absl::Mutex shutdown_mutex_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mutex_) = false;
};

// TLS (and mutual TLS) or plaintext server credentials for the tls_* and auth_token_file fields
// of `options` (validated by the caller), with the token check when a token file is set (stored
// in `*auth`; refused calls are counted in `metrics`). Shared with rcknn-router.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(
    const ServerOptions& options, ServerMetrics* metrics,
    std::shared_ptr<TokenAuthProcessor>* auth);
// Names every method of the services a server registers in `metrics` ahead of its first call.
void InitializeRpcMethods(ServerMetrics& metrics);

// Arena threads for `requested` (0: every core).
int ResolveThreads(int requested);

// The memory this process may use: physical memory, or the lowest memory limit of its cgroup and
// the cgroup's ancestors (v2 memory.max, v1 memory.limit_in_bytes, found through
// `proc_self_cgroup` under `cgroup_root`) when that is lower: a container started with a memory
// limit, or a systemd service with MemoryMax=.
int64_t UsableMemoryBytes(const std::string& cgroup_root = "/sys/fs/cgroup",
                          const std::string& proc_self_cgroup = "/proc/self/cgroup");
// --max_memory_bytes for `requested` (0: 80% of UsableMemoryBytes).
int64_t ResolveMemoryLimit(int64_t requested, const std::string& cgroup_root = "/sys/fs/cgroup",
                           const std::string& proc_self_cgroup = "/proc/self/cgroup");

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_RCKNN_SERVER_H_
