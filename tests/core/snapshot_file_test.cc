// SnapshotWriter and SnapshotReader: round trips; atomic replacement (an uncommitted writer leaves
// nothing, an existing file stays whole until Commit); every single-byte flip and every
// truncation of a committed file is DATA_LOSS; a doctored header (magic, version, kind) is
// DATA_LOSS naming the problem; a corrupt array length never allocates.
#include "core/fingerprint.h"
#include "core/snapshot_file.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace rcknn {
namespace {

using core::SnapshotKind;
using core::SnapshotReader;
using core::SnapshotWriter;
using ::testing::HasSubstr;

constexpr size_t kCheckedHeaderBytes = 32;  // the header checksum covers these

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// Rewrites the header checksum of `bytes` (a whole file) to match its first 32 bytes, so that a
// doctored header field is what Open() sees, not a checksum mismatch.
void ResealHeader(std::string& bytes) {
  const uint64_t checksum = core::Fingerprint(bytes.data(), kCheckedHeaderBytes, 0);
  std::memcpy(bytes.data() + kCheckedHeaderBytes, &checksum, sizeof(checksum));
}

struct Pod {
  int32_t a;
  float b;
  double c;
};

// The payload written by WriteSample and read back by ReadSample: values of several sizes, arrays
// (empty and not), strings (empty and not).
void WriteSample(SnapshotWriter& writer) {
  writer.WriteValue<int32_t>(-7);
  writer.WriteValue<uint64_t>(0x0123456789abcdefULL);
  writer.WriteValue<double>(-0.0);
  writer.WriteValue(Pod{3, 2.5f, 1e300});
  writer.WriteVector(std::vector<int64_t>{1, -2, 3, INT64_MAX});
  writer.WriteVector(std::vector<double>{});
  const float floats[3] = {1.0f, -1.0f, 0.5f};
  writer.WriteArray(floats, 3);
  writer.WriteString("rcknn");
  writer.WriteString("");
  writer.WriteValue<uint8_t>(0xa5);
}

// Reads the payload of WriteSample and checks its values; returns the first error (Finish()
// included). A value that reads back wrong with OK statuses is a test failure.
absl::Status ReadSample(SnapshotReader& reader, bool expect_values) {
  int32_t i32 = 0;
  uint64_t u64 = 0;
  double f64 = 1.0;
  Pod pod{};
  std::vector<int64_t> ints;
  std::vector<double> empty = {9.0};
  float floats[3] = {};
  std::string text, blank = "x";
  uint8_t byte = 0;
  for (absl::Status status :
       {reader.ReadValue(&i32), reader.ReadValue(&u64), reader.ReadValue(&f64),
        reader.ReadValue(&pod), reader.ReadVector(&ints, 4), reader.ReadVector(&empty),
        reader.ReadArray(floats, 3), reader.ReadString(&text), reader.ReadString(&blank),
        reader.ReadValue(&byte), reader.Finish()}) {
    if (!status.ok()) return status;
  }
  if (expect_values) {
    EXPECT_EQ(i32, -7);
    EXPECT_EQ(u64, 0x0123456789abcdefULL);
    EXPECT_EQ(f64, 0.0);
    EXPECT_TRUE(std::signbit(f64));
    EXPECT_EQ(pod.a, 3);
    EXPECT_EQ(pod.b, 2.5f);
    EXPECT_EQ(pod.c, 1e300);
    EXPECT_EQ(ints, (std::vector<int64_t>{1, -2, 3, INT64_MAX}));
    EXPECT_TRUE(empty.empty());
    EXPECT_EQ(floats[0], 1.0f);
    EXPECT_EQ(floats[1], -1.0f);
    EXPECT_EQ(floats[2], 0.5f);
    EXPECT_EQ(text, "rcknn");
    EXPECT_EQ(blank, "");
    EXPECT_EQ(byte, 0xa5);
  }
  return absl::OkStatus();
}

// Open + ReadSample: the first error.
absl::Status OpenAndReadSample(const std::string& path, bool expect_values = false) {
  absl::StatusOr<std::unique_ptr<SnapshotReader>> reader =
      SnapshotReader::Open(path, SnapshotKind::kTree);
  if (!reader.ok()) return reader.status();
  return ReadSample(**reader, expect_values);
}

class SnapshotFileTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) const { return dir_.Path(name); }

  // Commits the sample payload to `path`.
  void CommitSample(const std::string& path, SnapshotKind kind = SnapshotKind::kTree) {
    absl::StatusOr<std::unique_ptr<SnapshotWriter>> writer = SnapshotWriter::Create(path, kind);
    ASSERT_TRUE(writer.ok()) << writer.status();
    WriteSample(**writer);
    const absl::Status status = (*writer)->Commit();
    ASSERT_TRUE(status.ok()) << status;
  }

  testing::TempDir dir_{"rcknn_snapshot_file"};
};

// The stream is the one-shot hash of the concatenation, whatever the pieces (empty, a few
// bytes, across XXH3's internal block sizes), with and without a seed.
TEST(FingerprintStreamTest, PiecesHashLikeTheirConcatenation) {
  std::vector<unsigned char> bytes(5000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 131 + 7);
  for (uint64_t seed : {uint64_t{0}, uint64_t{0x9e3779b97f4a7c15}}) {
    for (size_t piece : {size_t{1}, size_t{3}, size_t{64}, size_t{200}, size_t{2048}, size_t{5000}}) {
      for (size_t total : {size_t{0}, size_t{17}, size_t{240}, size_t{241}, size_t{5000}}) {
        core::FingerprintStream stream(seed);
        for (size_t at = 0; at < total; at += piece) {
          stream.Add(bytes.data() + at, std::min(piece, total - at));
        }
        EXPECT_EQ(stream.Digest(), core::Fingerprint(bytes.data(), total, seed))
            << "seed " << seed << " piece " << piece << " total " << total;
      }
    }
  }
}

TEST_F(SnapshotFileTest, RoundTripsValuesArraysAndStrings) {
  const std::string path = Path("sample");
  CommitSample(path);
  EXPECT_FALSE(Exists(path + ".tmp"));
  const absl::Status status = OpenAndReadSample(path, /*expect_values=*/true);
  EXPECT_TRUE(status.ok()) << status;
  absl::StatusOr<std::unique_ptr<SnapshotReader>> reader =
      SnapshotReader::Open(path, SnapshotKind::kTree);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(static_cast<int64_t>((*reader)->payload_bytes()) + core::kSnapshotHeaderBytes,
            static_cast<int64_t>(testing::ReadBytes(path).size()));
}

TEST_F(SnapshotFileTest, RoundTripsLargeArraysAndAnEmptyPayload) {
  // Larger than the writer's buffer and the reader's chunk, written after a small value so that
  // both the buffered and the direct write paths run.
  std::vector<double> big(3 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<double>(i) * 0.25 - 7.0;
  std::vector<int32_t> medium(300000);
  for (size_t i = 0; i < medium.size(); ++i) medium[i] = static_cast<int32_t>(i * 2654435761u);
  {
    absl::StatusOr<std::unique_ptr<SnapshotWriter>> writer =
        SnapshotWriter::Create(Path("big"), SnapshotKind::kUpload);
    ASSERT_TRUE(writer.ok()) << writer.status();
    (*writer)->WriteValue<uint8_t>(1);
    (*writer)->WriteVector(big);
    (*writer)->WriteVector(medium);
    (*writer)->WriteVector(medium);
    ASSERT_TRUE((*writer)->Commit().ok());
  }
  absl::StatusOr<std::unique_ptr<SnapshotReader>> reader =
      SnapshotReader::Open(Path("big"), SnapshotKind::kUpload);
  ASSERT_TRUE(reader.ok()) << reader.status();
  uint8_t one = 0;
  std::vector<double> big_back;
  std::vector<int32_t> medium_back(medium.size());
  std::vector<int32_t> medium_back2;
  ASSERT_TRUE((*reader)->ReadValue(&one).ok());
  ASSERT_TRUE((*reader)->ReadVector(&big_back).ok());
  ASSERT_TRUE((*reader)->ReadArray(medium_back.data(), medium.size()).ok());
  ASSERT_TRUE((*reader)->ReadVector(&medium_back2, medium.size()).ok());
  const absl::Status finished = (*reader)->Finish();
  EXPECT_TRUE(finished.ok()) << finished;
  EXPECT_EQ(one, 1);
  EXPECT_TRUE(big_back == big);
  EXPECT_TRUE(medium_back == medium);
  EXPECT_TRUE(medium_back2 == medium);

  {
    absl::StatusOr<std::unique_ptr<SnapshotWriter>> writer =
        SnapshotWriter::Create(Path("empty"), SnapshotKind::kIndexSpec);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->Commit().ok());
  }
  EXPECT_EQ(static_cast<int64_t>(testing::ReadBytes(Path("empty")).size()),
            core::kSnapshotHeaderBytes);
  absl::StatusOr<std::unique_ptr<SnapshotReader>> empty =
      SnapshotReader::Open(Path("empty"), SnapshotKind::kIndexSpec);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ((*empty)->payload_bytes(), 0u);
  EXPECT_TRUE((*empty)->Finish().ok());
  uint8_t byte;
  EXPECT_EQ((*empty)->ReadValue(&byte).code(), absl::StatusCode::kDataLoss);
}

TEST_F(SnapshotFileTest, UncommittedWriterLeavesNoFile) {
  const std::string path = Path("uncommitted");
  {
    absl::StatusOr<std::unique_ptr<SnapshotWriter>> writer =
        SnapshotWriter::Create(path, SnapshotKind::kTree);
    ASSERT_TRUE(writer.ok()) << writer.status();
    WriteSample(**writer);
    std::vector<double> data(1 << 18, 1.0);  // past the write buffer: bytes reach the file
    (*writer)->WriteVector(data);
    EXPECT_TRUE(Exists(path + ".tmp"));
    EXPECT_FALSE(Exists(path));
  }
  EXPECT_FALSE(Exists(path + ".tmp"));
  EXPECT_FALSE(Exists(path));
  EXPECT_TRUE(std::filesystem::is_empty(dir_.path()));
}

TEST_F(SnapshotFileTest, ExistingFileIsUntouchedUntilCommitReplacesIt) {
  const std::string path = Path("replaced");
  {
    absl::StatusOr<std::unique_ptr<SnapshotWriter>> writer =
        SnapshotWriter::Create(path, SnapshotKind::kUpload);
    ASSERT_TRUE(writer.ok());
    (*writer)->WriteString("old");
    ASSERT_TRUE((*writer)->Commit().ok());
  }
  const std::string old_bytes = testing::ReadBytes(path);
  auto read_text = [&]() -> std::string {
    absl::StatusOr<std::unique_ptr<SnapshotReader>> reader =
        SnapshotReader::Open(path, SnapshotKind::kUpload);
    if (!reader.ok()) return reader.status().ToString();
    std::string text;
    absl::Status status = (*reader)->ReadString(&text);
    if (status.ok()) status = (*reader)->Finish();
    return status.ok() ? text : status.ToString();
  };
  // Abandoned: the old file stays, byte for byte.
  {
    absl::StatusOr<std::unique_ptr<SnapshotWriter>> writer =
        SnapshotWriter::Create(path, SnapshotKind::kUpload);
    ASSERT_TRUE(writer.ok());
    (*writer)->WriteString("new, never committed");
    EXPECT_EQ(testing::ReadBytes(path), old_bytes);
  }
  EXPECT_EQ(testing::ReadBytes(path), old_bytes);
  EXPECT_FALSE(Exists(path + ".tmp"));
  EXPECT_EQ(read_text(), "old");
  // Committed: replaced whole.
  {
    absl::StatusOr<std::unique_ptr<SnapshotWriter>> writer =
        SnapshotWriter::Create(path, SnapshotKind::kUpload);
    ASSERT_TRUE(writer.ok());
    (*writer)->WriteString("new");
    EXPECT_EQ(testing::ReadBytes(path), old_bytes);
    EXPECT_EQ(read_text(), "old");
    ASSERT_TRUE((*writer)->Commit().ok());
    EXPECT_EQ(read_text(), "new");
    const absl::Status again = (*writer)->Commit();
    EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition) << again;
  }
  // The destructor of a committed writer removes nothing.
  EXPECT_EQ(read_text(), "new");
  EXPECT_FALSE(Exists(path + ".tmp"));
}

TEST_F(SnapshotFileTest, EveryByteFlipIsDataLoss) {
  const std::string path = Path("sample");
  CommitSample(path);
  const std::string good = testing::ReadBytes(path);
  ASSERT_GT(good.size(), static_cast<size_t>(core::kSnapshotHeaderBytes) + 64);
  const std::string bad = Path("flipped");
  for (size_t pos = 0; pos < good.size(); ++pos) {
    for (unsigned mask : {0x01u, 0xffu}) {
      std::string bytes = good;
      bytes[pos] = static_cast<char>(bytes[pos] ^ mask);
      EXPECT_TRUE(testing::WriteBytes(bad, bytes)) << bad;
      const absl::Status status = OpenAndReadSample(bad);
      EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss)
          << "byte " << pos << " ^ " << mask << ": " << status;
      EXPECT_THAT(status.message(), HasSubstr(bad)) << "byte " << pos;
    }
  }
}

TEST_F(SnapshotFileTest, EveryTruncationAndAnExtensionIsDataLoss) {
  const std::string path = Path("sample");
  CommitSample(path);
  const std::string good = testing::ReadBytes(path);
  const std::string bad = Path("truncated");
  for (size_t length = 0; length < good.size(); ++length) {
    EXPECT_TRUE(testing::WriteBytes(bad, good.substr(0, length))) << bad;
    const absl::Status status = OpenAndReadSample(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << "length " << length << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr("truncated")) << "length " << length;
  }
  EXPECT_TRUE(testing::WriteBytes(bad, good + std::string(1, '\0'))) << bad;
  const absl::Status longer = OpenAndReadSample(bad);
  EXPECT_EQ(longer.code(), absl::StatusCode::kDataLoss) << longer;
  EXPECT_THAT(longer.message(), HasSubstr("too long"));
}

TEST_F(SnapshotFileTest, WrongKindIsDataLossNamingBothKinds) {
  const std::string path = Path("tree");
  CommitSample(path, SnapshotKind::kTree);
  absl::StatusOr<std::unique_ptr<SnapshotReader>> reader =
      SnapshotReader::Open(path, SnapshotKind::kUpload);
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kDataLoss) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr(path));
  EXPECT_THAT(reader.status().message(), HasSubstr("wrong kind of data: tree, expected upload"));
  EXPECT_THAT(reader.status().message(), HasSubstr("upload"));

  // A kind this code does not know, with a valid header checksum.
  std::string bytes = testing::ReadBytes(path);
  const uint32_t unknown = 99;
  std::memcpy(bytes.data() + 12, &unknown, sizeof(unknown));
  ResealHeader(bytes);
  EXPECT_TRUE(testing::WriteBytes(path, bytes)) << path;
  reader = SnapshotReader::Open(path, SnapshotKind::kTree);
  ASSERT_EQ(reader.status().code(), absl::StatusCode::kDataLoss) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr("unknown kind 99"));
}

TEST_F(SnapshotFileTest, BadMagicIsDataLoss) {
  const std::string path = Path("magic");
  CommitSample(path);
  std::string bytes = testing::ReadBytes(path);
  bytes[3] = 'X';
  ResealHeader(bytes);
  EXPECT_TRUE(testing::WriteBytes(path, bytes)) << path;
  const absl::Status status = OpenAndReadSample(path);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("bad magic"));

  // Not a snapshot at all.
  EXPECT_TRUE(testing::WriteBytes(path, std::string(200, 'a'))) << path;
  const absl::Status text = OpenAndReadSample(path);
  EXPECT_EQ(text.code(), absl::StatusCode::kDataLoss) << text;
  EXPECT_THAT(text.message(), HasSubstr("bad magic"));
}

TEST_F(SnapshotFileTest, UnknownVersionIsDataLoss) {
  const std::string path = Path("version");
  CommitSample(path);
  std::string bytes = testing::ReadBytes(path);
  const uint32_t next = core::kSnapshotFormatVersion + 1;
  std::memcpy(bytes.data() + 8, &next, sizeof(next));
  ResealHeader(bytes);
  EXPECT_TRUE(testing::WriteBytes(path, bytes)) << path;
  const absl::Status status = OpenAndReadSample(path);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("format version ", next)));

  // Without resealing, the checksum catches it first.
  bytes = testing::ReadBytes(path);
  bytes[8] ^= 0x04;
  EXPECT_TRUE(testing::WriteBytes(path, bytes)) << path;
  const absl::Status unsealed = OpenAndReadSample(path);
  EXPECT_EQ(unsealed.code(), absl::StatusCode::kDataLoss) << unsealed;
  EXPECT_THAT(unsealed.message(), HasSubstr("header checksum"));
}

TEST_F(SnapshotFileTest, PayloadLengthInTheHeaderIsChecked) {
  const std::string path = Path("length");
  CommitSample(path);
  std::string bytes = testing::ReadBytes(path);
  uint64_t payload = 0;
  std::memcpy(&payload, bytes.data() + 16, sizeof(payload));
  for (uint64_t claimed : {payload - 1, payload + 1, uint64_t{1} << 62}) {
    std::string doctored = bytes;
    std::memcpy(doctored.data() + 16, &claimed, sizeof(claimed));
    ResealHeader(doctored);
    EXPECT_TRUE(testing::WriteBytes(path, doctored)) << path;
    const absl::Status status = OpenAndReadSample(path);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << claimed << ": " << status;
  }
}

TEST_F(SnapshotFileTest, CorruptArrayCountDoesNotAllocate) {
  const std::string path = Path("counts");
  // Counts far beyond the file, and one whose byte size wraps around 2^64.
  for (uint64_t count : {uint64_t{1} << 40, uint64_t{1} << 62, (uint64_t{1} << 61) + 1,
                         std::numeric_limits<uint64_t>::max(), uint64_t{5}}) {
    SCOPED_TRACE(count);
    {
      absl::StatusOr<std::unique_ptr<SnapshotWriter>> writer =
          SnapshotWriter::Create(path, SnapshotKind::kUpload);
      ASSERT_TRUE(writer.ok());
      (*writer)->WriteValue<uint64_t>(count);
      (*writer)->WriteValue<double>(1.0);  // 8 bytes left after the count: 4 doubles short of 5
      (*writer)->WriteValue<double>(2.0);
      (*writer)->WriteValue<double>(3.0);
      (*writer)->WriteValue<double>(4.0);
      ASSERT_TRUE((*writer)->Commit().ok());
    }
    auto open = [&] {
      absl::StatusOr<std::unique_ptr<SnapshotReader>> reader =
          SnapshotReader::Open(path, SnapshotKind::kUpload);
      EXPECT_TRUE(reader.ok()) << reader.status();
      return reader.ok() ? *std::move(reader) : nullptr;
    };
    std::unique_ptr<SnapshotReader> reader = open();
    ASSERT_NE(reader, nullptr);
    std::vector<double> values;
    absl::Status status = reader->ReadVector(&values);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_THAT(status.message(), HasSubstr("past the end"));
    EXPECT_EQ(values.capacity(), 0u);

    if (count == 5) continue;  // fits as 5 chars
    reader = open();
    ASSERT_NE(reader, nullptr);
    std::string text;
    status = reader->ReadString(&text, std::numeric_limits<uint64_t>::max());
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;

    reader = open();
    ASSERT_NE(reader, nullptr);
    std::vector<char> bytes;
    status = reader->ReadVector(&bytes);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_EQ(bytes.capacity(), 0u);
  }
  // A count within the file but above the caller's bound.
  std::unique_ptr<SnapshotReader> reader;
  {
    absl::StatusOr<std::unique_ptr<SnapshotWriter>> writer =
        SnapshotWriter::Create(path, SnapshotKind::kUpload);
    ASSERT_TRUE(writer.ok());
    (*writer)->WriteVector(std::vector<int32_t>(10, 1));
    ASSERT_TRUE((*writer)->Commit().ok());
    absl::StatusOr<std::unique_ptr<SnapshotReader>> opened =
        SnapshotReader::Open(path, SnapshotKind::kUpload);
    ASSERT_TRUE(opened.ok());
    reader = *std::move(opened);
  }
  std::vector<int32_t> ints;
  const absl::Status bounded = reader->ReadVector(&ints, 9);
  EXPECT_EQ(bounded.code(), absl::StatusCode::kDataLoss) << bounded;
  EXPECT_THAT(bounded.message(), HasSubstr("at most 9"));
}

TEST_F(SnapshotFileTest, ReadsMustMatchThePayload) {
  const std::string path = Path("sample");
  CommitSample(path);
  // Stopping early: Finish() reports the unread bytes.
  absl::StatusOr<std::unique_ptr<SnapshotReader>> reader =
      SnapshotReader::Open(path, SnapshotKind::kTree);
  ASSERT_TRUE(reader.ok());
  int32_t i32 = 0;
  ASSERT_TRUE((*reader)->ReadValue(&i32).ok());
  absl::Status status = (*reader)->Finish();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("left unread"));

  // An array of another length than expected.
  reader = SnapshotReader::Open(path, SnapshotKind::kTree);
  ASSERT_TRUE(reader.ok());
  uint64_t u64;
  double f64;
  Pod pod;
  int64_t ints[5];
  ASSERT_TRUE((*reader)->ReadValue(&i32).ok());
  ASSERT_TRUE((*reader)->ReadValue(&u64).ok());
  ASSERT_TRUE((*reader)->ReadValue(&f64).ok());
  ASSERT_TRUE((*reader)->ReadValue(&pod).ok());
  status = (*reader)->ReadArray(ints, 5);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("holds 4 values where 5 were expected"));

  // Reading past the end.
  reader = SnapshotReader::Open(path, SnapshotKind::kTree);
  ASSERT_TRUE(reader.ok());
  std::vector<char> all((*reader)->payload_bytes() + 1);
  status = (*reader)->Read(all.data(), all.size());
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("past the end"));
  ASSERT_TRUE((*reader)->Read(all.data(), all.size() - 1).ok());
  EXPECT_TRUE((*reader)->Finish().ok());
}

TEST_F(SnapshotFileTest, MissingFileIsNotFoundAndUnwritableDirectoryIsUnavailable) {
  absl::StatusOr<std::unique_ptr<SnapshotReader>> reader =
      SnapshotReader::Open(Path("missing"), SnapshotKind::kTree);
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kNotFound) << reader.status();
  EXPECT_THAT(reader.status().message(), HasSubstr(Path("missing")));
  absl::StatusOr<std::unique_ptr<SnapshotWriter>> writer =
      SnapshotWriter::Create(Path("no_such_dir/file"), SnapshotKind::kTree);
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kUnavailable) << writer.status();
}

}  // namespace
}  // namespace rcknn
