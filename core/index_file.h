// The index file: one built index (its tree and what restoring it checks), as the server keeps it
// in <data_dir>/indexes/<id>/tree.rcknn. This file is the only code that knows its layout.
//
// A snapshot file (core/snapshot_file.h: 48-byte header, XXH3-64 checksums, written to a
// temporary name, fsynced, renamed) of kind kTree, format version 1, whose payload is, in order:
//
//   #   field              type            holds
//   1   owner              string          the id of the index the file belongs to
//   2   uploads            i64             how many upload files the index's points came from
//   3   build_seconds      f64             the build as the server timed it (IndexInfo)
//   4   factor_seconds     f64             BuildTimings: kernel, Cholesky and V
//   5   tree_seconds       f64             BuildTimings: the tree
//   6   num_points         i64             points of the index
//   7   space_fingerprint  u64             MetricSpace::Fingerprint() of the space built over
//   8   tree_nodes         i64             nodes of the tree (= num_points)
//   9   base               f64             CoverTreeOptions::base
//   10  point              i64[n]          CoverTreeStorage's arrays, in ForEachArray's order
//   11  level              i32[n]
//   12  max_dist           f64[n]
//   13  parent_dist        f64[n]
//   14  parent             i64[n]
//   15  first_child        i64[n + 1]
//   16  subtree_min_id     i64[n]
//   17  ring_offset        i64[n + 1]
//   18  ring               f64[2 r]        r = ring_offset[n] (lo, hi) pairs, as 2 r values
//
// A string is a u64 byte count and the bytes; an array T[c] is a u64 count c and c values of T;
// integers and floats are little-endian. Nothing follows field 18. The points themselves are not
// here (the index's upload files hold them), nor V and p (recomputed from the points on restore
// and checked against field 7).
//
// Not thread-safe per file; different files may be read and written in parallel.
#ifndef RCKNN_CORE_INDEX_FILE_H_
#define RCKNN_CORE_INDEX_FILE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/cancellation.h"
#include "core/cover_tree.h"
#include "core/knn_index.h"
#include "core/progress.h"
#include "tbb/task_arena.h"

namespace rcknn::core {

// Fields 1 to 7 of the table.
struct IndexFileHeader {
  std::string owner;
  int64_t uploads = 0;
  double build_seconds = 0.0;
  BuildTimings timings;
  int64_t num_points = 0;
  uint64_t space_fingerprint = 0;
};

// Fields 1 to 7 for `index`.
IndexFileHeader IndexFileHeaderOf(const KnnIndex& index, absl::string_view owner, int64_t uploads,
                                  double build_seconds);

// Writes `header` and `tree` to `path` and commits the file (the previous one stays whole until
// then). `before_commit`, if given, runs once the payload is written under the temporary name and
// before the commit (a test hook: --testonly_pause_before_commit). UNAVAILABLE on I/O errors.
absl::Status WriteIndexFile(const std::string& path, const IndexFileHeader& header,
                            const CoverTreeStorage& tree,
                            const std::function<void()>& before_commit = nullptr);

// What an index file holds, its tree checked for structure (CoverTree::FromStorage).
struct IndexFileContents {
  IndexFileHeader header;
  CoverTree tree;
};

// Reads `path`: NOT_FOUND if it does not exist; DATA_LOSS naming the file if it is not a whole
// index file of this format (header, checksum, lengths, the tree's size against num_points, bytes
// left over) or its tree is broken (the defect named); UNAVAILABLE on I/O errors. Nothing is
// allocated beyond what the file's size allows.
absl::StatusOr<IndexFileContents> ReadIndexFile(const std::string& path);

// The index saved in the file `path` that ReadIndexFile read into `contents`, over `data` (the
// index's points) with `spec` (KnnIndex::Restore; its DATA_LOSS errors name `path`).
absl::StatusOr<std::unique_ptr<KnnIndex>> RestoreFromIndexFile(
    const std::string& path, IndexFileContents contents, const IndexSpec& spec, IndexData data,
    tbb::task_arena* arena = nullptr, const Cancellation* cancellation = nullptr,
    const ProgressCallback& progress = nullptr);

}  // namespace rcknn::core

#endif  // RCKNN_CORE_INDEX_FILE_H_
