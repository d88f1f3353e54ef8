// Which path answers the queries of a batch: the single-query tree walk, the block traversal or
// the blocked scan. Every path returns the same answers (canonical distances, docs/design.md
// section 3); the choice only decides how fast.
//
// The walk pays where the tree prunes (data dense relative to the inducing points); where its
// bounds stop pruning (sparse data: gold) a walk evaluates most points one at a time, many times
// slower per distance than the scan's matrix products. So 16 probe queries spread over the batch
// are walked first with a budget of scan_fraction times their candidates; where most exceed it,
// the batch is scanned. Otherwise batches by id of at least min_block_batch queries take the
// block traversal (the tree's pruning at matrix-product speed), others the walk (a query whose
// walk exceeds its budget moves to the scan). Queries with few candidates (small ids in predecessor mode, small id
// bounds) are scanned outright: their scan is shorter than any walk.
#ifndef RCKNN_CORE_SEARCH_PLANNER_H_
#define RCKNN_CORE_SEARCH_PLANNER_H_

#include <cstdint>

#include "core/search_options.h"

namespace rcknn::core {

enum class BatchPath { kScan, kWalk, kBlocks };

struct BatchFacts {
  int64_t queries = 0;  // queries left for the plan (not scanned outright)
  bool by_id = true;
  int64_t probes = 0;         // probe walks run
  int64_t probes_walked = 0;  // of which stayed within their budget
};

// The path for the rest of a batch, from its probes (kAuto with 0 < scan_fraction).
BatchPath PlanBatch(const BatchFacts& facts, const TreeSearchOptions& options);

// Whether a query with `candidates` qualifying points is scanned without walking (kAuto).
bool ScanOutright(int64_t candidates, const TreeSearchOptions& options);

}  // namespace rcknn::core

#endif  // RCKNN_CORE_SEARCH_PLANNER_H_
