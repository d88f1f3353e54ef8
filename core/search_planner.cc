#include "core/search_planner.h"

namespace rcknn::core {

BatchPath PlanBatch(const BatchFacts& facts, const TreeSearchOptions& options) {
  if (options.scan_fraction <= 0.0) return BatchPath::kScan;
  // Most probes exceeding their budget: every walk would cost more than the scan it ends in.
  if (facts.probes > 0 && 2 * facts.probes_walked < facts.probes) return BatchPath::kScan;
  if (facts.by_id && facts.queries >= options.min_block_batch) return BatchPath::kBlocks;
  return BatchPath::kWalk;
}

bool ScanOutright(int64_t candidates, const TreeSearchOptions& options) {
  return options.scan_fraction < 1.0 && candidates <= options.scan_candidates_below;
}

}  // namespace rcknn::core
