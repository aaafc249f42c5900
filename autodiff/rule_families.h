// The op families' gradient rules (autodiff/rules_<family>.cc), added to the one registry in
// autodiff/rules.cc. Keys are "Op" for ai.onnx and "domain.Op" otherwise; an entry replaces
// a core rule of the same key. Internal to autodiff/.
#pragma once

#include <map>
#include <string>

#include "autodiff/gradients.h"

namespace oxtrain::autodiff::detail {

using RuleMap = std::map<std::string, GradRuleInfo>;

void add_pointwise_rules(RuleMap& rules);
void add_movement_rules(RuleMap& rules);
void add_normalization_rules(RuleMap& rules);
void add_random_rules(RuleMap& rules);

}  // namespace oxtrain::autodiff::detail
