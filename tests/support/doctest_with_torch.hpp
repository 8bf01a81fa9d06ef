// Test support: doctest included after LibTorch, with LibTorch's glog-style CHECK macros removed. LibTorch
// 2.x's <torch/torch.h> brings c10/util/logging_is_not_google_glog.h, whose CHECK, CHECK_EQ, ... would
// replace doctest's (or collide with them, depending on the order of includes). Every test includes this
// first, so that CHECK is doctest's whatever the LibTorch release.
#pragma once

#include <torch/torch.h>

#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LE
#undef CHECK_LT
#undef CHECK_GE
#undef CHECK_GT

#include <doctest/doctest.h>
