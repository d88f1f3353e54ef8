// The on-disk form of the server's indexes (--data_dir). Every file is a core snapshot file
// (core/snapshot_file.h: versioned, checksummed, written to a temporary name, fsynced, renamed,
// directory fsynced), and each payload starts with the id of the index it belongs to, so a file
// copied from another index is refused like a corrupt one.
//
//   <data_dir>/LOCK                             held (flock) by the server using the directory
//   <data_dir>/indexes/<id>/spec.rcknn          the IndexSpec (its wire encoding, as
//                                               IndexSpecRecord::wire), written by CreateIndex
//   <data_dir>/indexes/<id>/upload-NNNNNN.rcknn one per acknowledged UploadPoints stream, 1, 2, ...
//                                               (an index created from a source: hard links to
//                                               the source's, which name their first owner)
//   <data_dir>/indexes/<id>/source.rcknn        an index created from a source
//                                               (CreateIndexRequest.source_index_id): the owner
//                                               id, the source's id, the id its upload files
//                                               carry, the number of uploads and of points;
//                                               written before its links and its spec
//   <data_dir>/indexes/<id>/build-spec.rcknn    the spec the build used, when BuildIndex gave
//                                               inducing points (written before the build starts)
//   <data_dir>/indexes/<id>/tree.rcknn          the built index, an index file (its layout in
//                                               core/index_file.h), written before the index is
//                                               reported READY
//   <data_dir>/indexes/<id>/ordering-<name>.rcknn  one per ordering (ComputeOrdering), written
//                                               before the ordering is reported: the owner id,
//                                               the name, the method (u32), the seconds
//                                               (f64) and the permutation (i64 array)
//   <data_dir>/trash/                           deleted indexes on their way out
//
// An upload is acknowledged only after its file is committed, and a tree file names how many
// uploads and points it was built from, so after a crash at any moment the directory holds every
// acknowledged upload and either no tree or a whole one. A build that was interrupted leaves no
// tree: the index comes back LOADING with all its points, and BuildIndex must be called again.
//
// Thread-safe: operations on different indexes run in parallel; the caller serialises writes to
// one index (IndexEntry does).
#ifndef RCKNN_SERVER_INDEX_STORE_H_
#define RCKNN_SERVER_INDEX_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/cancellation.h"
#include "core/knn_index.h"
#include "server/index_registry.h"
#include "tbb/task_arena.h"

namespace rcknn::server {

// Where an index created from a source takes its upload files from.
struct SourceLink {
  std::string source_id;
  int64_t uploads = 0;  // the source's upload files, 1..uploads
  int64_t points = 0;   // the points they hold
};

// What one index directory holds, read back at start-up.
struct StoredIndex {
  std::string id;
  std::string source_id;  // source.rcknn: the index it was created from (empty: none)
  // Decoded by LoadAll's decoder; when it could not be (status says why), only `wire` is set,
  // to the bytes found.
  IndexSpecRecord spec;
  std::vector<PointBatch> uploads;  // in upload order
  bool has_tree = false;
  std::vector<StoredOrdering> orderings;  // ordered by name
  // The spec of the last BuildIndex that gave explicit inducing points (build-spec.rcknn).
  std::optional<IndexSpecRecord> build_spec;
  // Not OK if any file of the index is missing, corrupt, truncated, of another version or of
  // another index: the index is then reported FAILED with this reason.
  absl::Status status;
};

class IndexStore {
 public:
  // Creates `data_dir` (and its subdirectories) if needed and locks it: FAILED_PRECONDITION if
  // another process holds the lock, UNAVAILABLE if the directory cannot be used.
  //
  // Test-only: with `testonly_pause_before_commit` (a directory), every upload and tree file,
  // once written to its temporary name, waits before its commit: the store creates
  // <dir>/<id>.<file>.paused (for example "up.upload-000003.rcknn.paused") and waits until
  // <dir>/<id>.<file>.resume exists. Crash tests kill the server there, inside the commit
  // window, deterministically. Never set in production: a paused commit blocks its thread
  // (and a graceful shutdown) until resumed.
  static absl::StatusOr<std::unique_ptr<IndexStore>> Open(
      const std::string& data_dir, const std::string& testonly_pause_before_commit = "");
  ~IndexStore();

  const std::string& data_dir() const { return data_dir_; }

  // Every index directory, ordered by id, with what its files hold. Removes what no client was
  // ever told of: temporary files of interrupted writes, index directories whose spec was never
  // committed, and the trash. Nothing else is removed, whatever state it is in.
  // The specs are decoded with `decode` (a spec it refuses makes the index's status DATA_LOSS).
  std::vector<StoredIndex> LoadAll(const SpecDecoder& decode);

  // Creates the index's directory and commits its spec. ALREADY_EXISTS if the directory holds a
  // committed spec. With `source`: first commits source.rcknn and hard-links the source's upload
  // files into the new directory (copies them where the file system refuses links), so that
  // deleting the source leaves them; the spec, committed last, makes the index exist (a
  // directory with source.rcknn and no spec is an interrupted CreateIndex, removed at start-up).
  // `spec` is IndexSpecRecord::wire, kept as given.
  absl::Status CreateIndex(absl::string_view id, absl::string_view spec,
                           const SourceLink* source = nullptr);
  // Commits the spec a build uses when it differs from the index's (BuildIndex with inducing
  // points; IndexSpecRecord::wire), or removes a stale one when `spec` is empty.
  absl::Status WriteBuildSpec(absl::string_view id, const std::optional<std::string>& spec);
  // Commits upload number `sequence` (1, 2, ...) of the index.
  absl::Status WriteUpload(absl::string_view id, int64_t sequence, const PointBatch& batch);
  // Commits the built index, made from `uploads` uploads holding the index's points; first
  // tree-refitted.rcknn when it is a re-parameterised index's refitted source tree (or removes
  // a stale one).
  absl::Status WriteTree(absl::string_view id, int64_t uploads, double build_seconds,
                         const core::KnnIndex& index);
  // The saved index over `data` (the points of the index's uploads, in order); `uploads` as
  // LoadAll found them. `build_seconds` receives the original build's duration, `refitted`
  // whether the saved tree is a refitted source tree (tree-refitted.rcknn).
  absl::StatusOr<std::unique_ptr<core::KnnIndex>> RestoreTree(
      absl::string_view id, int64_t uploads, const core::IndexSpec& spec, core::IndexData data,
      tbb::task_arena* arena, const core::Cancellation* cancellation,
      const core::ProgressCallback& progress, double* build_seconds, bool* refitted);
  // Commits an ordering of the index (its name follows the rule of index ids).
  absl::Status WriteOrdering(absl::string_view id, const StoredOrdering& ordering);
  // Removes the index's directory: moved to the trash in one rename (durable), then deleted.
  absl::Status DeleteIndex(absl::string_view id);

 private:
  IndexStore(std::string data_dir, int lock_fd, std::string testonly_pause_dir);
  void PauseBeforeCommit(absl::string_view id, const std::string& file) const;
  std::string IndexDir(absl::string_view id) const;
  // source.rcknn, then the links of the source's upload files (CreateIndex with a source).
  absl::Status LinkSource(absl::string_view id, const SourceLink& source);
  StoredIndex LoadIndex(const std::string& id, const SpecDecoder& decode);

  const std::string data_dir_;
  const int lock_fd_;
  const std::string testonly_pause_dir_;
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_INDEX_STORE_H_
