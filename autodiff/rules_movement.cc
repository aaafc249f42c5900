// Gradient rules of one op family (see autodiff/rule_families.h).
#include "autodiff/rule_families.h"

namespace oxtrain::autodiff::detail {

void add_movement_rules(RuleMap& rules) { (void)rules; }

}  // namespace oxtrain::autodiff::detail
