// Versioned, checksummed files written atomically: what the server persists indexes in.
//
// Layout: a 48-byte header, then the payload.
//   magic "RCKNNSNP" | format version (u32) | kind (u32) | payload bytes (u64) |
//   XXH3-64 of the payload (u64) | XXH3-64 of the preceding 32 header bytes (u64) | 8 zero bytes
// Integers are little-endian (the only byte order this code runs on). The payload is whatever
// the writer appended: fixed-size values, and arrays as a u64 element count then the elements.
//
// SnapshotWriter writes "<path>.tmp", and Commit() fsyncs it, renames it to <path> and fsyncs
// the directory: after Commit() returns the file is on disk whole, and a crash at any point
// before leaves either no file or the previous one at <path>, never part of a new one.
//
// SnapshotReader checks the header and the payload checksum when opened (one pass over the
// file), so a damaged file is reported as damaged before anything in it is parsed; Finish()
// checks that the reader consumed the whole payload. Every length read from a payload is also
// checked against the bytes left before anything is allocated, so even a file written wrongly
// can cost errors but never a huge allocation or a read out of bounds. Errors are DATA_LOSS naming the
// file and what is wrong with it (bad magic, unknown version, wrong kind, truncated, checksum);
// I/O failures are UNAVAILABLE with errno's text.
//
// Neither class is thread-safe; each is used by one thread at a time.
#ifndef RCKNN_CORE_SNAPSHOT_FILE_H_
#define RCKNN_CORE_SNAPSHOT_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace rcknn::core {

inline constexpr uint32_t kSnapshotFormatVersion = 1;
inline constexpr int64_t kSnapshotHeaderBytes = 48;

// What a file holds. The values are on disk: never renumber.
enum class SnapshotKind : uint32_t {
  kIndexSpec = 1,
  kUpload = 2,
  kTree = 3,
  kOrdering = 4,
  kSource = 5,
};

std::string SnapshotKindName(SnapshotKind kind);

class SnapshotWriter {
 public:
  // Creates (truncating) "<path>.tmp". UNAVAILABLE if it cannot.
  static absl::StatusOr<std::unique_ptr<SnapshotWriter>> Create(std::string path,
                                                                SnapshotKind kind);
  // Removes the temporary file unless Commit() succeeded.
  ~SnapshotWriter();
  SnapshotWriter(const SnapshotWriter&) = delete;
  SnapshotWriter& operator=(const SnapshotWriter&) = delete;

  // Appends to the payload. A write error is kept and returned by Commit().
  void Write(const void* data, size_t bytes);
  template <typename T>
  void WriteValue(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    Write(&value, sizeof(T));
  }
  // A u64 count, then the elements.
  template <typename T>
  void WriteArray(const T* data, int64_t count) {
    static_assert(std::is_trivially_copyable_v<T>);
    WriteValue<uint64_t>(static_cast<uint64_t>(count));
    Write(data, static_cast<size_t>(count) * sizeof(T));
  }
  template <typename T>
  void WriteVector(const std::vector<T>& values) {
    WriteArray(values.data(), static_cast<int64_t>(values.size()));
  }
  void WriteString(absl::string_view text) { WriteArray(text.data(), text.size()); }

  // Header, fsync, rename to the final path, fsync of the directory. Once only.
  absl::Status Commit();

  const std::string& path() const { return path_; }

 private:
  SnapshotWriter(std::string path, SnapshotKind kind, int fd);
  void Flush();

  const std::string path_;
  const std::string temp_path_;
  const SnapshotKind kind_;
  int fd_ = -1;
  bool committed_ = false;
  absl::Status error_;
  uint64_t payload_bytes_ = 0;
  struct HashState;
  std::unique_ptr<HashState> hash_;
  std::vector<char> buffer_;
};

class SnapshotReader {
 public:
  // Opens `path` and checks its header and payload checksum: DATA_LOSS unless it is an intact
  // rcknn snapshot of this format version and of `kind`, as long as its header says. NOT_FOUND if
  // it does not exist.
  static absl::StatusOr<std::unique_ptr<SnapshotReader>> Open(std::string path,
                                                              SnapshotKind kind);
  ~SnapshotReader();
  SnapshotReader(const SnapshotReader&) = delete;
  SnapshotReader& operator=(const SnapshotReader&) = delete;

  absl::Status Read(void* data, size_t bytes);
  template <typename T>
  absl::Status ReadValue(T* value) {
    static_assert(std::is_trivially_copyable_v<T>);
    return Read(value, sizeof(T));
  }
  // An array written by WriteArray/WriteVector, of at most `max_count` elements.
  template <typename T>
  absl::Status ReadVector(std::vector<T>* values, uint64_t max_count = UINT64_MAX) {
    static_assert(std::is_trivially_copyable_v<T>);
    uint64_t count = 0;
    if (absl::Status status = ReadValue(&count); !status.ok()) return status;
    if (absl::Status status = CheckCount(count, sizeof(T), max_count); !status.ok()) return status;
    values->resize(count);
    return Read(values->data(), count * sizeof(T));
  }
  // Reads an array written by WriteArray of exactly `count` elements into `data`.
  template <typename T>
  absl::Status ReadArray(T* data, uint64_t count) {
    uint64_t stored = 0;
    if (absl::Status status = ReadValue(&stored); !status.ok()) return status;
    if (stored != count) {
      return Corrupt(absl::StrCat("an array holds ", stored, " values where ", count,
                                  " were expected"));
    }
    return Read(data, count * sizeof(T));
  }
  absl::Status ReadString(std::string* text, uint64_t max_length = 1 << 20);

  // DATA_LOSS unless the whole payload was read.
  absl::Status Finish();

  // DATA_LOSS naming the file and `what`.
  absl::Status Corrupt(absl::string_view what) const;

  const std::string& path() const { return path_; }
  uint64_t payload_bytes() const { return payload_bytes_; }
  // The checksum the header records for the payload (verified by Open).
  uint64_t payload_checksum() const { return payload_checksum_; }

 private:
  SnapshotReader(std::string path, int fd);
  absl::Status CheckCount(uint64_t count, size_t element_bytes, uint64_t max_count) const;
  absl::Status VerifyChecksum();

  const std::string path_;
  int fd_ = -1;
  uint64_t payload_bytes_ = 0;
  uint64_t payload_checksum_ = 0;
  uint64_t consumed_ = 0;
  struct HashState;
  std::unique_ptr<HashState> hash_;
};

// fsync of a directory, so that a rename or unlink in it is durable. UNAVAILABLE on failure.
absl::Status SyncDirectory(const std::string& directory);

}  // namespace rcknn::core

#endif  // RCKNN_CORE_SNAPSHOT_FILE_H_
