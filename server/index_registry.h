// The server's indexes by name, and the life of one index:
//
//   LOADING --BeginBuild--> BUILDING --FinishBuild--> READY | FAILED
//
// While LOADING an entry accumulates uploaded points; BeginBuild hands them to the build, and
// FinishBuild publishes the immutable core index in one step. Searches copy the
// shared_ptr<const core::KnnIndex> and run without any lock, so deleting an index while searches
// on it are in flight is safe: they finish on the old index, which is freed after the last one.
#ifndef RCKNN_SERVER_INDEX_REGISTRY_H_
#define RCKNN_SERVER_INDEX_REGISTRY_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/cancellation.h"
#include "core/knn_index.h"
#include "core/ordering.h"
#include "server/memory_budget.h"

namespace rcknn::server {

inline constexpr int kMaxIndexIdLength = 128;

// 1..kMaxIndexIdLength characters from [A-Za-z0-9._-]; INVALID_ARGUMENT naming `field`.
absl::Status ValidateIndexId(absl::string_view id, absl::string_view field = "index_id");

enum class IndexState { kLoading, kBuilding, kReady, kFailed };

std::string IndexStateName(IndexState state);

// An index's spec in the two forms the server keeps. `core` is what the service works with;
// `wire` is the spec as the client gave it, normalized, in its wire encoding (made and read by
// the gRPC adapters: server/proto_conversion.h ToSpecRecord): the service never reads it, the
// store persists it and GetIndex reports it.
struct IndexSpecRecord {
  core::IndexSpec core;
  // The client chose the inducing count (otherwise a build takes min(512, n): SpecForBuild).
  bool inducing_count_set = false;
  std::string wire;
};

// Decodes a spec from its wire form (IndexSpecRecord::wire), as kept in --data_dir; given by
// the gRPC adapters, which know the wire types (server/proto_conversion.h SpecRecordFromWire).
using SpecDecoder = std::function<absl::StatusOr<IndexSpecRecord>(absl::string_view wire)>;

// Validated points of one upload stream, not yet applied.
struct PointBatch {
  int64_t num_points = 0;
  std::vector<double> coordinates;         // num_points x dimension
  std::vector<double> factors;             // num_points x factor_columns (factors_supplied)
  std::vector<double> residual_variances;  // num_points (factors_supplied)
  int64_t factor_columns = 0;              // 0 when no factors
};

// What GetIndex reports, read consistently at one instant.
struct IndexSnapshot {
  IndexState state = IndexState::kLoading;
  int64_t num_points = 0;
  double build_progress = 0.0;
  double build_seconds = 0.0;
  std::string error;
  int64_t memory_bytes = 0;
  core::BuildTimings timings;
  int64_t inducing_count = 0;  // READY residual indexes: the m in use
  uint64_t version = 0;        // changes with every state change and every applied upload
};

// An ordering kept with a READY index (ComputeOrdering), found by name from searches.
struct NamedOrdering {
  std::string name;
  core::OrderingMethod method = core::OrderingMethod::kSupplied;
  double seconds = 0.0;  // to compute and store it
  core::IndexOrdering ordering;
};

// An ordering as --data_dir keeps it, attached again when the index is restored.
struct StoredOrdering {
  std::string name;
  core::OrderingMethod method = core::OrderingMethod::kSupplied;
  double seconds = 0.0;
  std::vector<int64_t> permutation;
};

// One index. Thread-safe.
class IndexEntry {
 public:
  // `spec`: the validated spec; `source_index_id` the index whose points this one shares
  // (empty: uploaded points).
  IndexEntry(std::string id, IndexSpecRecord spec, std::string source_index_id = "");

  const std::string& id() const { return id_; }
  const std::string& source_index_id() const { return source_index_id_; }
  // Restored from --data_dir with the refitted source tree it was built with (a restored
  // core::KnnIndex does not carry its ReparameterizeReport): IndexInfo.tree_refitted.
  void set_restored_refitted(bool refitted) { restored_refitted_.store(refitted); }
  bool restored_refitted() const { return restored_refitted_.load(); }
  const IndexSpecRecord& spec() const { return spec_; }
  const core::IndexSpec& core_spec() const { return spec_.core; }

  // Columns of the factor rows uploaded so far (0 before the first factors arrive).
  int64_t factor_columns() const;

  // Makes an upload durable before it is applied: called with the batch and its upload number
  // (1, 2, ...); an error refuses the upload.
  using PersistUpload = std::function<absl::Status(const PointBatch& batch, int64_t sequence)>;

  // Appends a whole upload stream. FAILED_PRECONDITION unless LOADING; NOT_FOUND once deleted;
  // INVALID_ARGUMENT if its factor rows are not as long as earlier ones; RESOURCE_EXHAUSTED
  // naming --max_points_per_index if the total would exceed `max_points`; the error of
  // `persist`. On error nothing changes. On success the entry takes over `memory` (the bytes
  // reserved for the batch) and returns the new total. Uploads and BeginBuild of one entry are
  // serialised, so upload numbers follow the order in which uploads are applied.
  absl::StatusOr<int64_t> Append(PointBatch batch, int64_t max_points,
                                 const PersistUpload& persist = nullptr,
                                 MemoryReservation memory = {});
  // Uploads applied so far (the number of the last one).
  int64_t uploads() const;

  // LOADING -> BUILDING, handing over the uploaded data. FAILED_PRECONDITION unless LOADING or
  // without points; NOT_FOUND once deleted; the error of `check` (called with the number of
  // points, under the entry's lock) if it fails, and then nothing changes.
  absl::StatusOr<core::IndexData> BeginBuild(
      const std::function<absl::Status(int64_t num_points)>& check = nullptr);
  // LOADING -> BUILDING for an index that takes its `num_points` points from a source index
  // (held by the build, not by the entry) in `uploads` upload files. FAILED_PRECONDITION unless
  // LOADING without points; NOT_FOUND once deleted; the error of `check`. The entry takes over
  // `memory` (of the budget; resized to the index by FinishBuild).
  absl::Status BeginSourcedBuild(int64_t num_points, int64_t uploads,
                                 const std::function<absl::Status(int64_t num_points)>& check,
                                 MemoryReservation memory);
  // Any thread, any number of times during the build.
  void SetBuildProgress(double fraction);
  // BUILDING -> READY with `index`, or FAILED with its error. The entry's memory becomes the
  // index's (nothing on failure). `build_seconds`, if >= 0, is reported instead of the time since
  // BeginBuild (an index restored from disk reports its original build). `build_memory` (what
  // the build reserved) is released before the new state can be seen, so that a client that sees
  // READY finds the budget holding the index only.
  void FinishBuild(absl::StatusOr<std::unique_ptr<core::KnnIndex>> index,
                   double build_seconds = -1.0, MemoryReservation build_memory = {});
  // Any state -> FAILED with `error` (an index whose files could not be read).
  void MarkFailed(const absl::Status& error);

  // The coordinates of stored points `ids` (row-major, dimension values each, as uploaded), while
  // LOADING or READY. INVALID_ARGUMENT naming "ids" for an id out of [0, n); FAILED_PRECONDITION
  // naming the state otherwise.
  absl::StatusOr<std::vector<double>> Coordinates(absl::Span<const int64_t> ids) const;

  // The built index; FAILED_PRECONDITION naming the state if it is not READY.
  absl::StatusOr<std::shared_ptr<const core::KnnIndex>> ReadyIndex() const;

  IndexSnapshot Snapshot() const;

  // Change notification (WatchIndex): `on_change` is called after every change of the
  // snapshot's version, every build progress step of kProgressStep, the deletion of the entry
  // and every NotifyWatchers(), on the thread that made the change (a pool, I/O or gRPC thread)
  // and never under the entry's own lock, so it may read the entry. It must not block, and must
  // not add or remove watchers. Calls are serialised: one at a time per entry.
  static constexpr double kProgressStep = 0.01;
  using WatcherId = int64_t;
  WatcherId AddWatcher(std::function<void()> on_change);
  // Once it returns, the watcher's `on_change` is not running and will not run again. Must not
  // be called from an `on_change`.
  void RemoveWatcher(WatcherId id);
  // Calls every watcher (server shutdown: the watchers see it and end).
  void NotifyWatchers();

  // The build's cancellation: cancelled by MarkDeleted and at server shutdown.
  const core::Cancellation* build_cancellation() const { return &build_cancellation_; }
  void CancelBuild() { build_cancellation_.Cancel(); }

  // Runs `write` (a change to the entry's files) while no upload or build start of the entry
  // runs. NOT_FOUND without running it once the entry is deleted, unless `even_if_deleted`.
  absl::Status RunWrite(const std::function<absl::Status()>& write, bool even_if_deleted = false);

  // Orderings read from --data_dir at start-up, attached by FinishBuild when the restored index
  // is published (so that a client who sees READY finds them). One that is not a permutation
  // of the index's points makes the index FAILED instead.
  void SetStoredOrderings(std::vector<StoredOrdering> orderings);
  // Keeps `ordering` (over this entry's READY index) and `memory` (its reservation).
  // FAILED_PRECONDITION unless READY; ALREADY_EXISTS if the name is taken; NOT_FOUND once
  // deleted.
  absl::Status AddOrdering(std::shared_ptr<const NamedOrdering> ordering,
                           MemoryReservation memory = {});
  bool HasOrdering(absl::string_view name) const;
  // NOT_FOUND naming the field "ordering" if the index has no ordering of that name.
  absl::StatusOr<std::shared_ptr<const NamedOrdering>> FindOrdering(absl::string_view name) const;
  // Ascending.
  std::vector<std::string> OrderingNames() const;

  // Called by the registry when the entry is removed: pending uploads and builds stop.
  void MarkDeleted();
  bool deleted() const;

 private:
  const std::string id_;
  const std::string source_index_id_;
  std::atomic<bool> restored_refitted_{false};
  const IndexSpecRecord spec_;
  core::Cancellation build_cancellation_;
  std::atomic<double> build_progress_{0.0};
  // The last step of kProgressStep watchers were told about.
  std::atomic<int64_t> notified_progress_step_{0};

  // Calls the watchers when it goes out of scope: declared before the MutexLock of mutex_ in a
  // method that changes the entry, it runs after the lock is released.
  class NotifyOnExit {
   public:
    explicit NotifyOnExit(IndexEntry* entry) : entry_(entry) {}
    ~NotifyOnExit() { entry_->NotifyWatchers(); }
    NotifyOnExit(const NotifyOnExit&) = delete;
    NotifyOnExit& operator=(const NotifyOnExit&) = delete;

   private:
    IndexEntry* const entry_;
  };

  // Held while watchers are called (never with mutex_ held), so RemoveWatcher waits for a call
  // in progress.
  absl::Mutex watchers_mutex_ ABSL_ACQUIRED_BEFORE(mutex_);
  WatcherId next_watcher_ ABSL_GUARDED_BY(watchers_mutex_) = 0;
  absl::flat_hash_map<WatcherId, std::function<void()>> watchers_ ABSL_GUARDED_BY(watchers_mutex_);

  // Held by Append and BeginBuild around the whole step, including the disk write.
  absl::Mutex write_mutex_ ABSL_ACQUIRED_BEFORE(mutex_);
  mutable absl::Mutex mutex_;
  IndexState state_ ABSL_GUARDED_BY(mutex_) = IndexState::kLoading;
  bool deleted_ ABSL_GUARDED_BY(mutex_) = false;
  uint64_t version_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t num_points_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t uploads_ ABSL_GUARDED_BY(mutex_) = 0;
  MemoryReservation memory_ ABSL_GUARDED_BY(mutex_);
  PointBatch loading_ ABSL_GUARDED_BY(mutex_);  // LOADING: everything uploaded
  absl::Time build_start_ ABSL_GUARDED_BY(mutex_);
  double build_seconds_ ABSL_GUARDED_BY(mutex_) = 0.0;
  std::string error_ ABSL_GUARDED_BY(mutex_);
  std::shared_ptr<const core::KnnIndex> index_ ABSL_GUARDED_BY(mutex_);
  std::vector<StoredOrdering> stored_orderings_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<std::string, std::shared_ptr<const NamedOrdering>> orderings_
      ABSL_GUARDED_BY(mutex_);
  std::vector<MemoryReservation> ordering_memory_ ABSL_GUARDED_BY(mutex_);
};

// Index id -> entry. The lock is held only to find, insert or remove a pointer.
class IndexRegistry {
 public:
  explicit IndexRegistry(int64_t max_indexes) : max_indexes_(max_indexes) {}

  // ALREADY_EXISTS for a taken id; RESOURCE_EXHAUSTED naming --max_indexes when full (unless
  // `enforce_limit` is false: indexes found on disk at start-up are all loaded).
  absl::Status Add(std::shared_ptr<IndexEntry> entry, bool enforce_limit = true);
  // NOT_FOUND naming the id.
  absl::StatusOr<std::shared_ptr<IndexEntry>> Get(absl::string_view id) const;
  // Removes the entry, marks it deleted (its build is cancelled) and returns it. NOT_FOUND.
  absl::StatusOr<std::shared_ptr<IndexEntry>> Remove(absl::string_view id);
  // Every entry, ordered by id.
  std::vector<std::shared_ptr<IndexEntry>> List() const;
  // Cancels every build in progress (shutdown).
  void CancelBuilds();

 private:
  const int64_t max_indexes_;
  mutable absl::Mutex mutex_;
  absl::flat_hash_map<std::string, std::shared_ptr<IndexEntry>> entries_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_INDEX_REGISTRY_H_
