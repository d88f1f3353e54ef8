#include "core/metric_space.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace rcknn::core {
namespace {

// Follows the cycles of new[p] = old[from[p]]: save(p) keeps old[p] aside, move(dst, src) sets
// new[dst] = current[src], restore(dst) writes the saved value to dst.
template <typename Save, typename Move, typename Restore>
void FollowCycles(absl::Span<const int64_t> from, Save save, Move move, Restore restore) {
  const int64_t n = static_cast<int64_t>(from.size());
  std::vector<bool> done(n, false);
  for (int64_t start = 0; start < n; ++start) {
    if (done[start] || from[start] == start) continue;
    save(start);
    int64_t cur = start;
    while (true) {
      done[cur] = true;
      const int64_t src = from[cur];
      if (src == start) {
        restore(cur);
        break;
      }
      move(cur, src);
      cur = src;
    }
  }
}

}  // namespace

PointRows SelectRows(const PointRows& rows, absl::Span<const int64_t> row_list) {
  PointRows out;
  const int64_t num = static_cast<int64_t>(row_list.size());
  out.features.resize(num, rows.features.cols());
  if (rows.inv_sqrt_p.size() > 0) out.inv_sqrt_p.resize(num);
  if (rows.coords.size() > 0) out.coords.resize(num, rows.coords.cols());
  out.ids.resize(num);
  for (int64_t i = 0; i < num; ++i) {
    const int64_t r = row_list[i];
    out.features.row(i) = rows.features.row(r);
    if (rows.inv_sqrt_p.size() > 0) out.inv_sqrt_p[i] = rows.inv_sqrt_p[r];
    if (rows.coords.size() > 0) out.coords.row(i) = rows.coords.row(r);
    out.ids[i] = rows.ids[r];
  }
  return out;
}

namespace {

// The position of each id under `order` (position p holds order[p]), if it is a permutation.
absl::StatusOr<std::vector<int64_t>> LayoutPositions(absl::Span<const int64_t> order,
                                                      int64_t n) {
  if (static_cast<int64_t>(order.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout: ", order.size(), " positions for ", n, " points"));
  }
  std::vector<int64_t> positions(n, -1);
  for (int64_t p = 0; p < n; ++p) {
    const int64_t id = order[p];
    if (id < 0 || id >= n || positions[id] >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("layout: position ", p, " holds ", id, ", not a permutation of the ids"));
    }
    positions[id] = p;
  }
  return positions;
}

}  // namespace

absl::Status MetricSpace::ApplyLayout(std::vector<int64_t> order) {
  const int64_t n = size();
  absl::StatusOr<std::vector<int64_t>> positions = LayoutPositions(order, n);
  if (!positions.ok()) return positions.status();
  // Where each point's data sits now.
  std::vector<int64_t> from(n);
  bool moves = false;
  for (int64_t p = 0; p < n; ++p) {
    from[p] = position_of(order[p]);
    moves = moves || from[p] != p;
  }
  if (!moves) return absl::OkStatus();
  PermuteStorage(from);
  SetLayout(std::move(order), *std::move(positions));
  return absl::OkStatus();
}

absl::Status MetricSpace::AdoptLayout(std::vector<int64_t> order) {
  absl::StatusOr<std::vector<int64_t>> positions = LayoutPositions(order, size());
  if (!positions.ok()) return positions.status();
  SetLayout(std::move(order), *std::move(positions));
  return absl::OkStatus();
}

void MetricSpace::SetLayout(std::vector<int64_t> order, std::vector<int64_t> positions) {
  bool identity = true;
  for (int64_t p = 0; p < static_cast<int64_t>(order.size()) && identity; ++p) {
    identity = order[p] == p;
  }
  if (identity) {
    ids_.clear();
    positions_.clear();
  } else {
    ids_ = std::move(order);
    positions_ = std::move(positions);
  }
}

void PermuteRowsInPlace(absl::Span<const int64_t> from, Eigen::Ref<RowMatrix> m) {
  Eigen::RowVectorXd saved(m.cols());
  FollowCycles(
      from, [&](int64_t p) { saved = m.row(p); },
      [&](int64_t dst, int64_t src) { m.row(dst) = m.row(src); },
      [&](int64_t dst) { m.row(dst) = saved; });
}

void PermuteColumnsInPlace(absl::Span<const int64_t> from, RowMatrix& m) {
  for (int64_t r = 0; r < m.rows(); ++r) {
    double* row = m.row(r).data();
    double saved = 0.0;
    FollowCycles(
        from, [&](int64_t p) { saved = row[p]; },
        [&](int64_t dst, int64_t src) { row[dst] = row[src]; },
        [&](int64_t dst) { row[dst] = saved; });
  }
}

void PermuteInPlace(absl::Span<const int64_t> from, Eigen::VectorXd& v) {
  double saved = 0.0;
  FollowCycles(
      from, [&](int64_t p) { saved = v[p]; },
      [&](int64_t dst, int64_t src) { v[dst] = v[src]; }, [&](int64_t dst) { v[dst] = saved; });
}

}  // namespace rcknn::core
