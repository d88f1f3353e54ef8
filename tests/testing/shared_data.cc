#include "tests/testing/shared_data.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>

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
  return std::abs(a - b) <= tol || std::abs(a * a - b * b) <= tol;
}

std::string CompareRow(const core::MetricSpace& space, const core::PointRows& query_rows,
                       int64_t row, int64_t query_id, const core::KnnOptions& options,
                       const int64_t* ids, const double* dists, const double* ref_dists,
                       double tol, const int64_t* ref_ids) {
  const int64_t k = options.k;
  if (ref_ids != nullptr) {
    // Re-measure both answers through one path and re-sort them (rounding may swap near-ties);
    // then apply the rule to the re-measured values.
    auto measure = [&](const int64_t* row_ids) {
      std::vector<std::pair<double, int64_t>> out(k, {std::numeric_limits<double>::infinity(), -1});
      for (int64_t j = 0; j < k; ++j) {
        if (row_ids[j] >= 0 && row_ids[j] < space.size()) {
          out[j].second = row_ids[j];
          space.RowToIds(query_rows, row, absl::MakeConstSpan(&row_ids[j], 1), &out[j].first);
        }
      }
      std::sort(out.begin(), out.end());
      return out;
    };
    const auto got = measure(ids);
    const auto ref = measure(ref_ids);
    for (int64_t j = 0; j < k; ++j) {
      // The reported values come from the other path: they agree only up to its rounding.
      if (!(std::abs(dists[j] - got[j].first) <= 1e-3) && dists[j] != got[j].first) {
        return absl::StrCat("rank ", j, ": reported ", dists[j], ", re-measured ", got[j].first);
      }
    }
    std::vector<int64_t> got_ids(k);
    std::vector<double> got_dists(k), ref_dists_measured(k);
    for (int64_t j = 0; j < k; ++j) {
      got_ids[j] = got[j].second;
      got_dists[j] = got[j].first;
      ref_dists_measured[j] = ref[j].first;
    }
    return CompareRow(space, query_rows, row, query_id, options, got_ids.data(), got_dists.data(),
                      ref_dists_measured.data(), tol);
  }
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

}  // namespace rcknn::testing
