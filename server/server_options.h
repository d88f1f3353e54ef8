// Everything the server is configured with: flags (server/main.cc) -> this struct ->
// constructors. No other configuration path exists.
#ifndef RCKNN_SERVER_SERVER_OPTIONS_H_
#define RCKNN_SERVER_SERVER_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace rcknn::server {

struct ServerOptions {
  // host:port to listen on; port 0 picks a free port (RcknnServer::port() tells which).
  std::string listen_address = "127.0.0.1:50051";
  // host:port of the Prometheus endpoint (GET /metrics, docs/design.md section 6); port 0 picks a
  // free port (RcknnServer::metrics_port()). Empty: no endpoint (the metrics are still kept).
  std::string metrics_listen_address = "127.0.0.1:9464";
  // Size of the one query/build tbb::task_arena. 0: every core of the machine.
  int threads = 0;
  // Queries per slice of a Search batch (see QueryPool): larger runs a big batch a little
  // faster, smaller lets a small batch overtake a big one sooner.
  int64_t slice_queries = 512;
  // Admission control: most queries waiting to start on the pool (see QueryPool::Submit); a
  // search beyond it is refused at once with RESOURCE_EXHAUSTED. 0: QueryPool's default,
  // QueryPool::kQueuedSlicesPerThread slices per thread.
  int64_t max_queued_queries = 0;
  // Threads of the one executor for blocking disk I/O: spec, upload and tree file commits and
  // deletes. More than one, so that one slow fsync does not hold every other write.
  int io_threads = 4;

  // Where indexes are persisted (server/index_store.h) and reloaded from at start. Empty: kept
  // in memory only (rcknn-server's --data_dir defaults to ./rcknn-data).
  std::string data_dir;

  // Limits. Each one, when hit, answers RESOURCE_EXHAUSTED with a message naming its flag.
  int64_t max_message_bytes = int64_t{64} << 20;  // gRPC receive and send, per message
  int64_t max_points_per_index = 10'000'000;
  int64_t max_indexes = 256;
  int64_t max_queries_per_search = 1'000'000;  // per Search call and per SearchStream request
  // Bytes of uploaded points, indexes, builds and search answers held at once
  // (server/memory_budget.h). 0: 80% of the machine's physical memory, or of the container's
  // memory limit (cgroup) when that is lower.
  int64_t max_memory_bytes = 0;

  // Transport security (SECURITY.md). Empty tls_cert_file: plaintext. Set, tls_key_file must
  // be set too (PEM files). tls_client_ca_file (needs TLS): clients must present a certificate
  // signed by this CA (mutual TLS).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // Bearer tokens (format in server/token_auth.h), read once at Start; needs TLS. Empty: no
  // token check.
  std::string auth_token_file;

  // How long the memory of a deleted index's factors V is kept for the next index of the same
  // size (core::ArrayCache): the GP fitting loop deletes the previous hyperparameters' index and
  // builds the next, whose V then reuses pages already mapped instead of faulting in new ones.
  // Kept memory counts in max_memory_bytes and is given back before a reservation is refused.
  // Zero: nothing kept. The cache is process-wide: the last server created configures it.
  absl::Duration keep_freed_memory = absl::Minutes(5);

  // On shutdown, in-flight calls get this long to finish before they are cancelled.
  absl::Duration shutdown_grace = absl::Seconds(10);

  // Test-only (--testonly_pause_before_commit, not in --help): a directory through which crash
  // tests pause upload and tree commits (IndexStore::Open). Empty: no pause.
  std::string testonly_pause_before_commit;
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_SERVER_OPTIONS_H_
