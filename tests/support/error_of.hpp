// Test support: the message of the c10::Error a call throws, to check that errors name what went wrong.
#pragma once

#include <c10/util/Exception.h>

#include <functional>
#include <string>

namespace diffpost::testing {

/// The message (without LibTorch's backtrace) of the c10::Error that `action` throws, or "(no error)" when
/// it returns normally. Other exceptions propagate, so the test reports them as they are.
inline std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "(no error)";
}

}  // namespace diffpost::testing
