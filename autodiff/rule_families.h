// The op families' gradient rules (autodiff/rules_<family>.cc), added to the one registry in
// autodiff/rules.cc. Keys are "Op" for ai.onnx and "domain.Op" otherwise; an entry replaces
// a core rule of the same key. Internal to autodiff/.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "autodiff/gradients.h"

namespace oxtrain::autodiff::detail {

using RuleMap = std::map<std::string, GradRuleInfo>;

void add_pointwise_rules(RuleMap& rules);
void add_movement_rules(RuleMap& rules);
void add_normalization_rules(RuleMap& rules);
void add_random_rules(RuleMap& rules);

// The random family's rewrite for training (autodiff/rules_random.cc): training-mode Dropout and
// the random ops become oxtrain-domain nodes that read the training step; `step` makes (once)
// and returns the graph's int64 step input; `seed` is the run's seed.
void random_to_training(Graph& g, uint64_t seed, const std::function<Value*()>& step);

}  // namespace oxtrain::autodiff::detail
