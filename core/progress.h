// How long operations (factorisation, tree builds, restores, orderings) report how far they are.
#ifndef RCKNN_CORE_PROGRESS_H_
#define RCKNN_CORE_PROGRESS_H_

#include <functional>

namespace rcknn::core {

// Receives the fraction of the work done, in [0, 1], non-decreasing, from any of the operation's
// threads (one call at a time is not promised). May be empty.
using ProgressCallback = std::function<void(double)>;

}  // namespace rcknn::core

#endif  // RCKNN_CORE_PROGRESS_H_
