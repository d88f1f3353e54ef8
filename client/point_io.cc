#include "client/point_io.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace rcknn::client {
namespace {

absl::StatusOr<std::string> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Rows of CSV text as numbers.
template <typename T>
absl::Status ParseCsv(const std::string& path, const std::string& text,
                      std::vector<std::vector<T>>* rows) {
  int64_t line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = line.substr(0, line.find('#'));
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    std::vector<T> row;
    for (absl::string_view field :
         absl::StrSplit(line, absl::ByAnyChar(", \t;"), absl::SkipEmpty())) {
      T value;
      bool ok;
      if constexpr (std::is_same_v<T, double>) {
        ok = absl::SimpleAtod(field, &value);
      } else {
        ok = absl::SimpleAtoi(field, &value);
      }
      if (!ok) {
        // A header line of names is allowed as the first line.
        if (rows->empty() && line_number == 1) break;
        return absl::InvalidArgumentError(
            absl::StrCat(path, ":", line_number, ": cannot read '", field, "' as a number"));
      }
      row.push_back(value);
    }
    if (!row.empty()) rows->push_back(std::move(row));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status WriteRaw(const std::string& path, const T* values, int64_t count) {
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  out.write(reinterpret_cast<const char*>(values), count * static_cast<int64_t>(sizeof(T)));
  if (!out) return absl::DataLossError(absl::StrCat("writing ", path, " failed"));
  return absl::OkStatus();
}

template <typename T>
absl::Status WriteCsv(const std::string& path, const T* values, int64_t rows, int columns) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "w"), &std::fclose);
  if (file == nullptr) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  for (int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < columns; ++c) {
      if constexpr (std::is_same_v<T, double>) {
        std::fprintf(file.get(), c == 0 ? "%.17g" : ",%.17g", values[r * columns + c]);
      } else {
        std::fprintf(file.get(), c == 0 ? "%lld" : ",%lld",
                     static_cast<long long>(values[r * columns + c]));
      }
    }
    std::fputc('\n', file.get());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<FileFormat> ParseFileFormat(const std::string& name, const std::string& path) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "csv") return FileFormat::kCsv;
  if (lower == "f64" || lower == "raw" || lower == "i64") return FileFormat::kRaw;
  if (lower.empty()) {
    return absl::EndsWithIgnoreCase(path, ".csv") ? FileFormat::kCsv : FileFormat::kRaw;
  }
  return absl::InvalidArgumentError(absl::StrCat("--format must be csv or f64, got ", name));
}

absl::StatusOr<Matrix> ReadMatrix(const std::string& path, FileFormat format, int columns) {
  auto text = ReadAll(path);
  if (!text.ok()) return text.status();
  Matrix matrix;
  if (format == FileFormat::kRaw) {
    if (columns < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": raw float64 input needs --dim (values per row)"));
    }
    const int64_t row_bytes = static_cast<int64_t>(columns) * 8;
    if (static_cast<int64_t>(text->size()) % row_bytes != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": ", text->size(), " bytes are not rows of ", columns, " float64 values"));
    }
    matrix.columns = columns;
    matrix.rows = static_cast<int64_t>(text->size()) / row_bytes;
    matrix.values.resize(matrix.rows * columns);
    std::memcpy(matrix.values.data(), text->data(), text->size());
    return matrix;
  }
  std::vector<std::vector<double>> rows;
  if (absl::Status status = ParseCsv(path, *text, &rows); !status.ok()) return status;
  matrix.columns = rows.empty() ? columns : static_cast<int>(rows[0].size());
  if (columns > 0 && matrix.columns != columns) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": rows have ", matrix.columns, " values, --dim says ", columns));
  }
  matrix.rows = static_cast<int64_t>(rows.size());
  matrix.values.reserve(matrix.rows * matrix.columns);
  for (size_t r = 0; r < rows.size(); ++r) {
    if (static_cast<int>(rows[r].size()) != matrix.columns) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": row ", r, " has ", rows[r].size(),
                                                     " values, the first has ", matrix.columns));
    }
    matrix.values.insert(matrix.values.end(), rows[r].begin(), rows[r].end());
  }
  return matrix;
}

absl::StatusOr<std::vector<int64_t>> ReadIds(const std::string& path, FileFormat format) {
  auto text = ReadAll(path);
  if (!text.ok()) return text.status();
  std::vector<int64_t> ids;
  if (format == FileFormat::kRaw) {
    if (text->size() % 8 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", text->size(), " bytes are not int64 values"));
    }
    ids.resize(text->size() / 8);
    std::memcpy(ids.data(), text->data(), text->size());
    return ids;
  }
  std::vector<std::vector<int64_t>> rows;
  if (absl::Status status = ParseCsv(path, *text, &rows); !status.ok()) return status;
  for (const auto& row : rows) ids.insert(ids.end(), row.begin(), row.end());
  return ids;
}

absl::Status WriteMatrix(const std::string& path, FileFormat format, const double* values,
                         int64_t rows, int columns) {
  return format == FileFormat::kRaw ? WriteRaw(path, values, rows * columns)
                                    : WriteCsv(path, values, rows, columns);
}

absl::Status WriteIds(const std::string& path, FileFormat format, const int64_t* values,
                      int64_t rows, int columns) {
  return format == FileFormat::kRaw ? WriteRaw(path, values, rows * columns)
                                    : WriteCsv(path, values, rows, columns);
}

}  // namespace rcknn::client
