#include "tests/testing/shared_data.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace rcknn::testing {
namespace {

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <typename T>
absl::StatusOr<std::vector<T>> ReadArray(const std::string& path, int64_t count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<T> values(count);
  in.read(reinterpret_cast<char*>(values.data()), count * static_cast<int64_t>(sizeof(T)));
  if (in.gcount() != count * static_cast<int64_t>(sizeof(T))) {
    return absl::DataLossError(absl::StrCat(path, ": expected ", count, " values"));
  }
  return values;
}

absl::StatusOr<std::string> Field(const std::string& manifest, const std::string& key) {
  std::smatch match;
  const std::regex pattern("\"" + key + "\"\\s*:\\s*(\"[^\"]*\"|[-0-9.eE+]+)");
  if (!std::regex_search(manifest, match, pattern)) {
    return absl::NotFoundError(absl::StrCat("manifest has no field ", key));
  }
  std::string value = match[1];
  if (!value.empty() && value.front() == '"') value = value.substr(1, value.size() - 2);
  return value;
}

}  // namespace

std::string DefaultDataDir() { return RCKNN_DEFAULT_DATA_DIR; }

core::IndexSpec Dataset::Spec() const {
  core::IndexSpec spec;
  spec.metric = core::Metric::kResidualCorrelation;
  spec.dimension = dimension;
  spec.residual.kernel = kernel;
  core::RowMatrix inducing(static_cast<int64_t>(inducing_ids.size()), dimension);
  for (size_t u = 0; u < inducing_ids.size(); ++u) inducing.row(u) = points.row(inducing_ids[u]);
  spec.residual.inducing_points = std::move(inducing);
  spec.residual.inducing_count = static_cast<int64_t>(inducing_ids.size());
  return spec;
}

core::IndexData Dataset::Data() const {
  core::IndexData data;
  data.points = points;
  return data;
}

absl::StatusOr<Dataset> LoadDataset(const std::string& dir, const std::string& name) {
  const std::string prefix = absl::StrCat(dir, "/", name, ".");
  ASSIGN_OR_RETURN(const std::string manifest, ReadText(prefix + "manifest.json"));
  Dataset set;
  set.name = name;
  ASSIGN_OR_RETURN(const std::string n, Field(manifest, "n"));
  ASSIGN_OR_RETURN(const std::string d, Field(manifest, "dimension"));
  ASSIGN_OR_RETURN(const std::string k, Field(manifest, "k"));
  ASSIGN_OR_RETURN(const std::string q, Field(manifest, "queries"));
  ASSIGN_OR_RETURN(const std::string kernel, Field(manifest, "kernel"));
  ASSIGN_OR_RETURN(const std::string variance, Field(manifest, "variance"));
  ASSIGN_OR_RETURN(const std::string lengthscale, Field(manifest, "lengthscale"));
  ASSIGN_OR_RETURN(const std::string m, Field(manifest, "inducing_count"));
  set.n = std::stoll(n);
  set.dimension = std::stoi(d);
  set.k = std::stoll(k);
  const int64_t queries = std::stoll(q);
  if (kernel == "rbf") {
    set.kernel.type = core::KernelType::kRbf;
  } else if (kernel == "matern12") {
    set.kernel.type = core::KernelType::kMatern12;
  } else if (kernel == "matern32") {
    set.kernel.type = core::KernelType::kMatern32;
  } else if (kernel == "matern52") {
    set.kernel.type = core::KernelType::kMatern52;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown kernel ", kernel));
  }
  set.kernel.variance = std::stod(variance);
  set.kernel.lengthscales = {std::stod(lengthscale)};
  ASSIGN_OR_RETURN(std::vector<double> points,
                   ReadArray<double>(prefix + "points.f64", set.n * set.dimension));
  set.points = Eigen::Map<core::RowMatrix>(points.data(), set.n, set.dimension);
  ASSIGN_OR_RETURN(set.inducing_ids,
                   ReadArray<int64_t>(prefix + "inducing_ids.i64", std::stoll(m)));
  ASSIGN_OR_RETURN(set.query_ids, ReadArray<int64_t>(prefix + "query_ids.i64", queries));
  ASSIGN_OR_RETURN(set.knn_ids, ReadArray<int64_t>(prefix + "knn_ids.i64", queries * set.k));
  ASSIGN_OR_RETURN(set.knn_dists, ReadArray<double>(prefix + "knn_dists.f64", queries * set.k));
  ASSIGN_OR_RETURN(set.pred_ids, ReadArray<int64_t>(prefix + "pred_ids.i64", queries * set.k));
  ASSIGN_OR_RETURN(set.pred_dists, ReadArray<double>(prefix + "pred_dists.f64", queries * set.k));
  ASSIGN_OR_RETURN(set.p_diag, ReadArray<double>(prefix + "p_diag.f64", set.n));
  return set;
}

bool DistancesAgree(double a, double b, double tol) {
  return a == b || std::abs(a - b) <= tol || std::abs(a * a - b * b) <= tol;
}

std::string CompareRow(const core::MetricSpace& space, const core::PointRows& query_rows,
                       int64_t row, int64_t query_id, const core::KnnOptions& options,
                       const int64_t* ids, const double* dists, const double* ref_dists,
                       double tol) {
  const int64_t k = options.k;
  double ref_kth = -1.0;
  for (int64_t j = 0; j < k; ++j) {
    const bool got_pad = ids[j] < 0;
    const bool ref_pad = std::isinf(ref_dists[j]);
    if (got_pad != ref_pad) {
      return absl::StrCat("rank ", j, ": got id ", ids[j], " (", dists[j], "), reference ",
                          ref_pad ? "padding" : absl::StrCat(ref_dists[j]));
    }
    if (got_pad) {
      if (ids[j] != -1 || !std::isinf(dists[j]) || dists[j] < 0) {
        return absl::StrCat("rank ", j, ": bad padding ", ids[j], " / ", dists[j]);
      }
      continue;
    }
    if (!DistancesAgree(dists[j], ref_dists[j], tol)) {
      return absl::StrCat("rank ", j, ": distance ", dists[j], " vs reference ", ref_dists[j]);
    }
    ref_kth = ref_dists[j];
  }
  absl::flat_hash_set<int64_t> seen;
  for (int64_t j = 0; j < k; ++j) {
    if (ids[j] < 0) continue;
    if (!seen.insert(ids[j]).second) return absl::StrCat("id ", ids[j], " repeats");
    if (ids[j] >= space.size()) return absl::StrCat("id ", ids[j], " out of range");
    if (!core::Qualifies(ids[j], query_id, options)) {
      return absl::StrCat("id ", ids[j], " does not qualify for query ", query_id);
    }
    double truth;
    space.RowToIds(query_rows, row, absl::MakeConstSpan(&ids[j], 1), &truth);
    if (truth > ref_kth && !DistancesAgree(truth, ref_kth, tol)) {
      return absl::StrCat("id ", ids[j], " is at distance ", truth, " > reference k-th ",
                          ref_kth);
    }
    if (!DistancesAgree(truth, dists[j], tol)) {
      return absl::StrCat("id ", ids[j], ": reported ", dists[j], ", measured ", truth);
    }
  }
  return "";
}

std::string CompareAnswers(const int64_t* ids, const double* dists, const int64_t* ref_ids,
                           const double* ref_dists, int64_t num_queries, int64_t k, double tol) {
  for (int64_t q = 0; q < num_queries; ++q) {
    const int64_t* a_ids = ids + q * k;
    const double* a_d = dists + q * k;
    const int64_t* b_ids = ref_ids + q * k;
    const double* b_d = ref_dists + q * k;
    double kth = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < k; ++j) {
      if ((a_ids[j] == -1) != std::isinf(b_d[j])) {
        return absl::StrCat("query ", q, " rank ", j, ": id ", a_ids[j], " (", a_d[j],
                            ") vs reference ", b_d[j]);
      }
      if (a_ids[j] == -1) {
        if (!std::isinf(a_d[j]) || a_d[j] < 0) {
          return absl::StrCat("query ", q, " rank ", j, ": padding id -1 with distance ", a_d[j]);
        }
        continue;
      }
      if (!DistancesAgree(a_d[j], b_d[j], tol)) {
        return absl::StrCat("query ", q, " rank ", j, ": distance ", a_d[j], " vs reference ",
                            b_d[j]);
      }
      kth = b_d[j];
    }
    absl::flat_hash_map<int64_t, double> reference;
    for (int64_t j = 0; j < k; ++j) {
      if (b_ids[j] != -1) reference.emplace(b_ids[j], b_d[j]);
    }
    absl::flat_hash_set<int64_t> seen;
    for (int64_t j = 0; j < k; ++j) {
      if (a_ids[j] == -1) continue;
      if (!seen.insert(a_ids[j]).second) {
        return absl::StrCat("query ", q, ": id ", a_ids[j], " repeats");
      }
      const auto it = reference.find(a_ids[j]);
      if (it != reference.end()) {
        if (!DistancesAgree(a_d[j], it->second, tol)) {
          return absl::StrCat("query ", q, " id ", a_ids[j], ": distance ", a_d[j],
                              ", reference ", it->second);
        }
      } else if (a_d[j] > kth && !DistancesAgree(a_d[j], kth, tol)) {
        return absl::StrCat("query ", q, " rank ", j, ": id ", a_ids[j], " at ", a_d[j],
                            " beyond the reference k-th ", kth);
      }
    }
  }
  return "";
}

}  // namespace rcknn::testing
