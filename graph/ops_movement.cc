// Op schemas of one family (see graph/op_helpers.h).
#include "graph/op_helpers.h"

namespace oxtrain::graph::detail {

std::vector<OpSchema> movement_schemas() { return {}; }

}  // namespace oxtrain::graph::detail
