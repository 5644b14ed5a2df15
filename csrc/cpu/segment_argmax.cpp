// Segmented arg-max: the best member of every cluster in one O(n) pass (the reference
// loops over clusters in Python and scans all points for each).
#include "usl_fast/ops.hpp"

#include <vector>

namespace usl_fast {
namespace cpu {

void segment_argmax(const float* density, const double* reg, double weight,
                    const int32_t* labels, int64_t n, int K, int64_t* out_best) {
  std::vector<double> best(K, 0.0);
  for (int c = 0; c < K; ++c) out_best[c] = -1;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t c = labels[i];
    if (c < 0 || c >= K) continue;  // Python rejects these; never index out of range
    const double s = static_cast<double>(density[i]) - (reg ? weight * reg[i] : 0.0);
    // Strict > in ascending i keeps the first member on ties; a cluster whose members
    // all score -inf (infinite regularizer) still gets its first member. Scores are never
    // NaN: densities are finite (Python floors the mean distance) and weight >= 0.
    if (out_best[c] < 0 || s > best[c]) {
      best[c] = s;
      out_best[c] = i;
    }
  }
}

}  // namespace cpu
}  // namespace usl_fast
