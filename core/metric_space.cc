#include "core/metric_space.h"

namespace rcknn::core {

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

}  // namespace rcknn::core
