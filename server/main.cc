// rcknn-server: flags -> ServerOptions -> RcknnServer; SIGTERM / SIGINT shut it down gracefully,
// SIGHUP re-reads --auth_token_file.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "core/flags_usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/logging.h"
#include "server/rcknn_server.h"
#include "server/server_options.h"
#include "server/testonly_flags.h"

namespace {
const rcknn::server::ServerOptions kDefaults;
}  // namespace

ABSL_FLAG(std::string, listen, kDefaults.listen_address,
          "host:port to serve gRPC on (port 0: any free port, printed at startup)");
ABSL_FLAG(std::string, metrics_listen, kDefaults.metrics_listen_address,
          "host:port serving Prometheus metrics at /metrics (port 0: any free port, printed at "
          "startup); empty: no metrics endpoint");
ABSL_FLAG(int, threads, kDefaults.threads,
          "threads of the query and build pool (one tbb::task_arena); 0: every core");
ABSL_FLAG(int64_t, slice_queries, kDefaults.slice_queries,
          "queries per slice of a Search batch: a worker finishes its slice before it serves a "
          "newly arrived batch; larger slices run big batches a little faster");
ABSL_FLAG(int64_t, max_queued_queries, kDefaults.max_queued_queries,
          "admission control: most queries waiting to start on the query pool; a Search (or "
          "SearchStream message) beyond it is refused at once with RESOURCE_EXHAUSTED; 0: 2 "
          "slices per pool thread (2 x --threads x --slice_queries)");
ABSL_FLAG(int, io_threads, kDefaults.io_threads,
          "threads for blocking disk I/O (committing specs, uploads and built trees, deleting "
          "indexes) with --data_dir");
ABSL_FLAG(int64_t, max_message_bytes, kDefaults.max_message_bytes,
          "largest gRPC message received or sent, in bytes (requests and answers)");
ABSL_FLAG(int64_t, max_points_per_index, kDefaults.max_points_per_index,
          "most points one index may hold");
ABSL_FLAG(int64_t, max_indexes, kDefaults.max_indexes, "most indexes the server holds at once");
ABSL_FLAG(int64_t, max_queries_per_search, kDefaults.max_queries_per_search,
          "most queries in one Search call or one SearchStream request");
ABSL_FLAG(absl::Duration, shutdown_grace, kDefaults.shutdown_grace,
          "on SIGTERM/SIGINT, how long in-flight calls may run before they are cancelled");
ABSL_FLAG(std::string, tls_cert, kDefaults.tls_cert_file,
          "PEM certificate chain of the server: serve gRPC over TLS (needs --tls_key); empty: "
          "plaintext");
ABSL_FLAG(std::string, tls_key, kDefaults.tls_key_file, "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, kDefaults.tls_client_ca_file,
          "PEM CA certificates: require a client certificate signed by one of them (mutual TLS; "
          "needs --tls_cert)");
ABSL_FLAG(std::string, auth_token_file, kDefaults.auth_token_file,
          "file of bearer tokens, one per line (`readonly <token>`: read-only; blank lines and # "
          "comments ignored), read at start-up and again on SIGHUP: every call but health checks "
          "and reflection needs `authorization: Bearer <token>`; needs --tls_cert; empty: no "
          "token check");
ABSL_FLAG(std::string, data_dir, "./rcknn-data",
          "directory where indexes are persisted (spec, uploads, built tree; checksummed, "
          "written atomically) and reloaded from at start-up; empty: keep indexes in memory only");
ABSL_FLAG(int64_t, max_memory_bytes, kDefaults.max_memory_bytes,
          "most bytes of uploaded points, indexes, builds and search answers held at once; "
          "uploads, builds and searches over it are refused with RESOURCE_EXHAUSTED; 0: 80% of "
          "physical memory or of the container's (cgroup) memory limit, whichever is lower");
ABSL_FLAG(absl::Duration, keep_freed_memory, kDefaults.keep_freed_memory,
          "how long a deleted index's factor memory (V) is kept for the next index of the same "
          "size, as the GP fitting loop builds it right after deleting the previous one: reused "
          "pages need no page faults; counted in --max_memory_bytes and given back before a "
          "reservation would be refused; 0: not kept");
ABSL_FLAG(std::string, log_level, "info", "debug | info | warning | error");

int main(int argc, char** argv) {
  rcknn::core::SetUpFlagsUsage(
      "rcknn-server", "server/main.cc",
      "exact k-nearest-neighbour search under the Gaussian-process residual "
      "correlation distance, over gRPC (service rcknn.v1.Rcknn).\n"
      "Usage: rcknn-server [--listen=127.0.0.1:50051] [--metrics_listen=127.0.0.1:9464] "
      "[--threads=N] [flags]");
  absl::ParseCommandLine(argc, argv);

  rcknn::server::LogLevel level;
  if (!rcknn::server::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::fprintf(stderr, "--log_level must be debug, info, warning or error\n");
    return 2;
  }
  rcknn::server::SetLogLevel(level);

  rcknn::server::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.metrics_listen_address = absl::GetFlag(FLAGS_metrics_listen);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.slice_queries = absl::GetFlag(FLAGS_slice_queries);
  options.max_queued_queries = absl::GetFlag(FLAGS_max_queued_queries);
  options.io_threads = absl::GetFlag(FLAGS_io_threads);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.max_points_per_index = absl::GetFlag(FLAGS_max_points_per_index);
  options.max_indexes = absl::GetFlag(FLAGS_max_indexes);
  options.max_queries_per_search = absl::GetFlag(FLAGS_max_queries_per_search);
  options.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.max_memory_bytes = absl::GetFlag(FLAGS_max_memory_bytes);
  options.keep_freed_memory = absl::GetFlag(FLAGS_keep_freed_memory);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  options.testonly_pause_before_commit = absl::GetFlag(FLAGS_testonly_pause_before_commit);

  // Block the shutdown signals before any thread starts, so that every thread inherits the mask
  // and only sigwait below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = rcknn::server::RcknnServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "rcknn-server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  int signal_number = 0;
  for (;;) {
    sigwait(&signals, &signal_number);
    if (signal_number != SIGHUP) break;
    // SIGHUP: re-read the token file; on an error the old tokens stay.
    if (absl::Status status = (*server)->ReloadAuthTokens(); !status.ok()) {
      RCKNN_LOG(kError, "SIGHUP: tokens not reloaded, the old ones stay: ", status.ToString());
    }
  }
  RCKNN_LOG(kInfo, "received ", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  (*server)->Shutdown(options.shutdown_grace);
  return 0;
}
