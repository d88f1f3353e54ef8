#include "core/index_file.h"

#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/snapshot_file.h"
#include "core/status_macros.h"

namespace rcknn::core {
namespace {

// How an array's elements are stored: as themselves, or (rings) as two values each.
template <typename T>
struct OnDisk {
  using Scalar = T;
  static constexpr uint64_t kScalars = 1;
};
template <>
struct OnDisk<std::pair<double, double>> {
  using Scalar = double;
  static constexpr uint64_t kScalars = 2;
};
static_assert(sizeof(std::pair<double, double>) == 2 * sizeof(double));

template <typename T>
void WriteTreeArray(SnapshotWriter& writer, const std::vector<T>& array) {
  using Disk = OnDisk<T>;
  static_assert(sizeof(T) == Disk::kScalars * sizeof(typename Disk::Scalar));
  writer.WriteArray(reinterpret_cast<const typename Disk::Scalar*>(array.data()),
                    static_cast<int64_t>(array.size() * Disk::kScalars));
}

// At most `max_count` elements (rings: pairs).
template <typename T>
absl::Status ReadTreeArray(SnapshotReader& reader, const char* name, uint64_t max_count,
                           std::vector<T>* array) {
  using Disk = OnDisk<T>;
  if constexpr (Disk::kScalars == 1) {
    return reader.ReadVector(array, max_count);
  } else {
    std::vector<typename Disk::Scalar> values;
    RETURN_IF_ERROR(reader.ReadVector(
        &values, max_count > UINT64_MAX / Disk::kScalars ? UINT64_MAX : max_count * Disk::kScalars));
    if (values.size() % Disk::kScalars != 0) {
      return reader.Corrupt(absl::StrCat("the tree's ", name, " array has an odd length"));
    }
    array->resize(values.size() / Disk::kScalars);
    if (!values.empty()) {  // memcpy of null pointers is undefined even for 0 bytes
      std::memcpy(static_cast<void*>(array->data()), values.data(),
                  values.size() * sizeof(values[0]));
    }
    return absl::OkStatus();
  }
}

uint64_t MaxCount(CoverTreeStorage::Length length, uint64_t n) {
  switch (length) {
    case CoverTreeStorage::Length::kNodes:
      return n;
    case CoverTreeStorage::Length::kNodesPlusOne:
      return n + 1;
    case CoverTreeStorage::Length::kRings:
      return UINT64_MAX;  // bounded by the bytes left in the file
  }
  return 0;
}

}  // namespace

IndexFileHeader IndexFileHeaderOf(const KnnIndex& index, absl::string_view owner, int64_t uploads,
                                  double build_seconds) {
  IndexFileHeader header;
  header.owner = std::string(owner);
  header.uploads = uploads;
  header.build_seconds = build_seconds;
  header.timings = index.timings();
  header.num_points = index.size();
  header.space_fingerprint = index.space().Fingerprint();
  return header;
}

absl::Status WriteIndexFile(const std::string& path, const IndexFileHeader& header,
                            const CoverTreeStorage& tree,
                            const std::function<void()>& before_commit) {
  ASSIGN_OR_RETURN(std::unique_ptr<SnapshotWriter> writer,
                   SnapshotWriter::Create(path, SnapshotKind::kTree));
  writer->WriteString(header.owner);                         // 1
  writer->WriteValue<int64_t>(header.uploads);               // 2
  writer->WriteValue<double>(header.build_seconds);          // 3
  writer->WriteValue<double>(header.timings.factor_seconds);  // 4
  writer->WriteValue<double>(header.timings.tree_seconds);   // 5
  writer->WriteValue<int64_t>(header.num_points);            // 6
  writer->WriteValue<uint64_t>(header.space_fingerprint);    // 7
  writer->WriteValue<int64_t>(tree.size());                  // 8
  writer->WriteValue<double>(tree.base);                     // 9
  CoverTreeStorage::ForEachArray(tree, [&](const char*, const auto& array, auto) {
    WriteTreeArray(*writer, array);  // 10 to 18
  });
  if (before_commit) before_commit();
  return writer->Commit();
}

absl::StatusOr<IndexFileContents> ReadIndexFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<SnapshotReader> reader,
                   SnapshotReader::Open(path, SnapshotKind::kTree));
  IndexFileHeader header;
  RETURN_IF_ERROR(reader->ReadString(&header.owner, 1024));
  RETURN_IF_ERROR(reader->ReadValue(&header.uploads));
  RETURN_IF_ERROR(reader->ReadValue(&header.build_seconds));
  RETURN_IF_ERROR(reader->ReadValue(&header.timings.factor_seconds));
  RETURN_IF_ERROR(reader->ReadValue(&header.timings.tree_seconds));
  RETURN_IF_ERROR(reader->ReadValue(&header.num_points));
  RETURN_IF_ERROR(reader->ReadValue(&header.space_fingerprint));
  int64_t nodes = 0;
  CoverTreeStorage storage;
  RETURN_IF_ERROR(reader->ReadValue(&nodes));
  if (nodes != header.num_points || nodes < 1) {
    return reader->Corrupt(
        absl::StrCat("the tree holds ", nodes, " points, the index has ", header.num_points));
  }
  RETURN_IF_ERROR(reader->ReadValue(&storage.base));
  const uint64_t n = static_cast<uint64_t>(nodes);
  absl::Status status;
  CoverTreeStorage::ForEachArray(storage, [&](const char* name, auto& array,
                                              CoverTreeStorage::Length length) {
    if (status.ok()) status = ReadTreeArray(*reader, name, MaxCount(length, n), &array);
  });
  RETURN_IF_ERROR(status);
  if (storage.size() != nodes) {
    return reader->Corrupt(absl::StrCat("tree: ", storage.size(), " nodes for ", nodes, " points"));
  }
  // The whole payload first: bytes left over are reported as such, not as a broken tree.
  RETURN_IF_ERROR(reader->Finish());
  absl::StatusOr<CoverTree> tree = CoverTree::FromStorage(std::move(storage));
  if (!tree.ok()) return reader->Corrupt(tree.status().message());
  return IndexFileContents{std::move(header), *std::move(tree)};
}

absl::StatusOr<std::unique_ptr<KnnIndex>> RestoreFromIndexFile(
    const std::string& path, IndexFileContents contents, const IndexSpec& spec, IndexData data,
    tbb::task_arena* arena, const Cancellation* cancellation, const ProgressCallback& progress) {
  absl::StatusOr<std::unique_ptr<KnnIndex>> index = KnnIndex::Restore(
      spec, std::move(data), std::move(contents.tree), contents.header.timings,
      contents.header.space_fingerprint, arena, cancellation, progress);
  if (index.status().code() == absl::StatusCode::kDataLoss) {
    return absl::DataLossError(absl::StrCat(path, ": ", index.status().message()));
  }
  return index;
}

}  // namespace rcknn::core
