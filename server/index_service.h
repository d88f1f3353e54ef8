// The index service under the gRPC adapters of server/rcknn_service.h: what each RPC does, in
// core and server types, with absl::Status results. It knows no transport and no wire type
// (nothing here includes protobuf): the adapters validate and convert requests
// (server/proto_conversion.h), call this class, map its status and fill the response. The one
// wire form it holds, IndexSpecRecord::wire, it only stores and hands back.
//
// Threads: nothing here blocks a caller on the query pool or on the disk. Searches run on the
// QueryPool and report through a callback; every blocking disk operation (spec writes, upload
// commits, tree writes, deletes) runs on the one I/O executor (--io_threads), in calls that
// either take a callback or are documented to block (they are called from that executor).
#ifndef RCKNN_SERVER_INDEX_SERVICE_H_
#define RCKNN_SERVER_INDEX_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/knn_index.h"
#include "core/knn_query.h"
#include "core/traversal_stats.h"
#include "core/ordering.h"
#include "server/blocking_executor.h"
#include "server/index_registry.h"
#include "server/index_store.h"
#include "server/memory_budget.h"
#include "server/query_pool.h"
#include "server/search_plan.h"
#include "server/server_metrics.h"
#include "server/server_options.h"

namespace rcknn::server {

// Points of one upload stream, checked chunk by chunk and applied when it ends.
struct UploadState {
  std::shared_ptr<IndexEntry> entry;  // set by BeginUpload
  PointBatch staged;
  MemoryReservation memory;  // covers `staged`
  int64_t existing = 0;      // points in the index when the stream started
  int64_t chunks = 0;
};

struct UploadResult {
  int64_t points_received = 0;
  int64_t total_points = 0;
};

// One search, in core types. The spans must stay valid until the search's callback has run.
struct SearchCall {
  std::string index_id;  // validated by the caller
  core::QueryBatch queries;
  core::KnnOptions options;
  absl::Time deadline = absl::InfiniteFuture();
  // SearchRequest.ordering (empty: none) and ids_are_ranks.
  std::string ordering;
  bool ids_are_ranks = false;
  // How the transport will carry the answer: sizes the check against --max_message_bytes.
  AnswerLayout layout = AnswerLayout::kPacked;
};

// Where the answer goes: called once the search is accepted, with its shape; returns
// num_queries x k row-major arrays that stay valid until the callback has run.
struct AnswerBuffers {
  int64_t* ids = nullptr;
  double* distances = nullptr;
};
using AnswerAllocator = std::function<AnswerBuffers(int64_t num_queries, int64_t k)>;

struct SearchOutcome {
  core::TraversalStats stats;  // merged over the batch
  double seconds = 0.0;        // from acceptance to the end
};
// Called once, on a pool thread; must not block.
using SearchCallback = std::function<void(absl::Status status, const SearchOutcome& outcome)>;

// Why searches were refused before they ran (rcknn_search_rejected_total{reason}).
inline constexpr absl::string_view kRejectedQueueFull = "queue_full";
inline constexpr absl::string_view kRejectedMemory = "memory";

// An open WatchIndex: its `on_change` is called (IndexEntry::AddWatcher) until it is destroyed.
class IndexWatch {
 public:
  IndexWatch(std::shared_ptr<IndexEntry> entry, std::function<void()> on_change,
             std::atomic<int64_t>* open);
  // Once it returns, `on_change` is not running and will not run again.
  ~IndexWatch();
  IndexWatch(const IndexWatch&) = delete;
  IndexWatch& operator=(const IndexWatch&) = delete;

  IndexEntry& entry() const { return *entry_; }

 private:
  const std::shared_ptr<IndexEntry> entry_;
  std::atomic<int64_t>* const open_;
  IndexEntry::WatcherId id_ = 0;
};

class IndexService {
 public:
  // `registry`, `pool`, `metrics`, `budget` and `store` (null: nothing is persisted) must
  // outlive the service. The I/O executor has options.io_threads threads. `decode_spec` reads
  // the stored specs back (LoadStoredIndexes).
  IndexService(const ServerOptions& options, IndexRegistry* registry, QueryPool* pool,
               ServerMetrics* metrics, MemoryBudget* budget, IndexStore* store,
               SpecDecoder decode_spec);
  // Runs the I/O jobs still queued (which may finish builds), then returns.
  ~IndexService() = default;

  const ServerOptions& options() const { return options_; }

  // Registers every index found in the store (start-up, before serving): LOADING ones with their
  // uploads, FAILED ones with the reason, and built ones restored on the pool (BUILDING until
  // READY). Returns how many indexes were found.
  int64_t LoadStoredIndexes();

  // Runs `job` on the I/O executor (FIFO over io_threads threads).
  void RunBlocking(std::function<void()> job) { io_.Submit(std::move(job)); }

  // WatchIndex streams end (UNAVAILABLE) once this is set, so a graceful shutdown does not wait
  // on them: every index's watchers are notified.
  void BeginShutdown();
  bool shutting_down() const { return shutting_down_.load(); }

  // Blocking (disk): run it on the I/O executor. Registers index `id` (validated) with its
  // validated spec and commits the spec. ALREADY_EXISTS, RESOURCE_EXHAUSTED naming
  // --max_indexes, the store's errors.
  absl::StatusOr<std::shared_ptr<IndexEntry>> CreateIndex(const std::string& id,
                                                          IndexSpecRecord spec);

  // Blocking (disk): run it on the I/O executor. CreateIndex over the points of index
  // `source_id` (CreateIndexRequest.source_index_id; `spec` validated against the source's by
  // the caller): NOT_FOUND naming "source_index_id" if the source is gone, FAILED_PRECONDITION
  // unless it is READY; registers the new index, commits its spec and the links to the source's
  // upload files, and starts its build on the pool (core::KnnIndex::Reparameterize over the
  // source's points, shared, from `tree_start`). Returns the entry, BUILDING. The errors of
  // CreateIndex too.
  absl::StatusOr<std::shared_ptr<IndexEntry>> CreateIndexFromSource(const std::string& id,
                                                                    const std::string& source_id,
                                                                    IndexSpecRecord spec,
                                                                    core::TreeStart tree_start);

  // The first chunk of an upload stream: finds the index (NOT_FOUND), which must be LOADING
  // (FAILED_PRECONDITION), and sets up `state`.
  absl::Status BeginUpload(const std::string& index_id, UploadState* state);
  // Before a chunk of `rows` points and `values` doubles is staged: RESOURCE_EXHAUSTED naming
  // --max_points_per_index or the memory limit.
  absl::Status ReserveChunk(UploadState* state, int64_t rows, int64_t values);
  // Blocking (disk): run it on the I/O executor. Applies the stream (its file is committed
  // first).
  absl::StatusOr<UploadResult> FinishUpload(UploadState* state);

  // Starts the build of `index_id` on the pool; returns the entry, now BUILDING.
  // `build_spec` (absent: the index's own) is the index's spec with explicit inducing points
  // in place of its seeded draw (BuildIndexRequest.inducing_points, validated by the caller:
  // server/proto_conversion.h SpecWithInducingPoints); it is committed (build-spec.rcknn)
  // before the build starts, and the build keeps the index's tree and search options.
  absl::StatusOr<std::shared_ptr<IndexEntry>> BuildIndex(
      const std::string& index_id, std::optional<IndexSpecRecord> build_spec = std::nullopt);

  absl::StatusOr<std::shared_ptr<IndexEntry>> GetIndex(const std::string& index_id) const;
  std::vector<std::shared_ptr<IndexEntry>> ListIndexes() const;

  // Calls `on_change` after every change of index `index_id` (its state, points, build progress
  // steps, deletion) and at BeginShutdown, from the thread that made the change, until the watch
  // is destroyed (IndexEntry::AddWatcher states what `on_change` may do). Registered before it
  // returns: the caller reads the index's state after this and misses no change. NOT_FOUND.
  absl::StatusOr<std::unique_ptr<IndexWatch>> WatchIndex(const std::string& index_id,
                                                         std::function<void()> on_change);
  // Watches not yet destroyed.
  int64_t open_watches() const { return open_watches_.load(); }

  // Blocking (disk): run it on the I/O executor. Removes the index and then its files.
  absl::Status DeleteIndex(const std::string& index_id);

  // Ordering `name` (validated) of index `index_id`, computed as `request` asks (validated
  // without the index by the caller: server/proto_conversion.h ToCoreOrderingRequest). Checks it
  // against the index (NOT_FOUND, FAILED_PRECONDITION unless READY, ALREADY_EXISTS for a taken
  // name, RESOURCE_EXHAUSTED when the permutation would not fit one message or the memory
  // budget), then computes the ordering on the pool (one worker for a maximin walk), commits it
  // to the store on the I/O executor and keeps it with the index. On success `done` is called
  // once, from a pool or I/O thread, with the ordering as kept (its error otherwise); on error
  // nothing was started and `done` is never called. `cancellation` stops the computation.
  using OrderingDone = std::function<void(absl::StatusOr<std::shared_ptr<const StoredOrdering>>)>;
  absl::Status StartComputeOrdering(const std::string& index_id, const std::string& name,
                                    core::OrderingRequest request,
                                    std::shared_ptr<core::Cancellation> cancellation,
                                    OrderingDone done);

  // Validates `call` against its index (once: server/search_plan.h), sizes and reserves the
  // answer, asks `allocate` for its buffers and queues it on the pool. On success `done` will
  // be called once, on a pool thread (never on this one), and the returned handle cancels the
  // search; the search metrics are recorded before `done` runs. On error (NOT_FOUND,
  // FAILED_PRECONDITION, INVALID_ARGUMENT, RESOURCE_EXHAUSTED for the limits, the memory budget
  // or a full queue) nothing was allocated or queued and `done` is never called.
  absl::StatusOr<QueryPool::CancelHandle> StartSearch(const SearchCall& call,
                                                      const AnswerAllocator& allocate,
                                                      SearchCallback done);

 private:
  // Sets the gauges of index states, points and memory from the registry; called after every
  // change of them.
  void UpdateIndexGauges();
  // The check BeginBuild runs for BuildIndex and for start-up restores (`verb`: "building" or
  // "restoring", for the error): sets `spec` for the index's n points from `base` (null: the
  // entry's spec) and reserves the build's memory in `memory`; then runs `commit` (may be null),
  // whose error refuses the build.
  std::function<absl::Status(int64_t)> BuildCheck(const IndexEntry& entry, absl::string_view verb,
                                                  const core::IndexSpec* base,
                                                  core::IndexSpec* spec, MemoryReservation* memory,
                                                  std::function<absl::Status()> commit = nullptr);
  // Runs the build (or, with `restore`, the restore from the store) of `entry` on the pool; a
  // new tree is then written on the I/O executor, and the result published. `build_memory` is
  // released when it ends.
  // `make` (if set) makes the index instead of a build from `data`.
  using MakeIndex = std::function<absl::StatusOr<std::unique_ptr<core::KnnIndex>>(
      const core::IndexSpec& spec, tbb::task_arena* arena, const core::Cancellation* cancellation,
      const core::ProgressCallback& progress)>;
  void StartBuild(std::shared_ptr<IndexEntry> entry, core::IndexSpec spec, core::IndexData data,
                  MemoryReservation build_memory, bool restore, MakeIndex make = nullptr);
  // Publishes a finished build (FinishBuild, metrics, gauges, log).
  void PublishBuild(const std::shared_ptr<IndexEntry>& entry,
                    absl::StatusOr<std::unique_ptr<core::KnnIndex>> index, double build_seconds,
                    MemoryReservation build_memory, bool restore);

  const ServerOptions options_;
  IndexRegistry* const registry_;
  QueryPool* const pool_;
  ServerMetrics* const metrics_;
  MemoryBudget* const budget_;
  IndexStore* const store_;
  const SpecDecoder decode_spec_;
  std::atomic<bool> shutting_down_{false};
  std::atomic<int64_t> open_watches_{0};
  // Last member: its destructor runs the remaining jobs while everything they use still exists.
  BlockingExecutor io_;
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_INDEX_SERVICE_H_
