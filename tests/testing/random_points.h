// Seeded random point sets for tests, drawn with core::SplitMix64 so that every machine and
// compiler generates the same coordinates for the same seed.
#ifndef RCKNN_TESTS_TESTING_RANDOM_POINTS_H_
#define RCKNN_TESTS_TESTING_RANDOM_POINTS_H_

#include <cstdint>

#include "core/metric_space.h"

namespace rcknn::testing {

// n x d independent standard normal coordinates, each multiplied by `scale`.
core::RowMatrix NormalPoints(int64_t n, int d, uint64_t seed, double scale = 1.0);

// Overwrites about `fraction` of the rows with exact copies of other rows, chosen with `seed`,
// so that the set holds exact duplicates (at ids both below and above their originals).
void AddDuplicates(core::RowMatrix& points, double fraction, uint64_t seed);

// Rounds every coordinate to a multiple of `step`, so that many points coincide.
void SnapToGrid(core::RowMatrix& points, double step);

}  // namespace rcknn::testing

#endif  // RCKNN_TESTS_TESTING_RANDOM_POINTS_H_
