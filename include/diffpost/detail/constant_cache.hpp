// Private to diffpost: not part of the public API, may change without notice.
//
// The constants an operator applies (masks, blur spectra, resampling matrices and their pseudo-inverses,
// padding indices, SVD factors), computed once per device, dtype and size and then reused. Operators compute
// their constants on the CPU in float64; without a cache every call would rebuild them there and copy them to
// the device of its input, which on a GPU costs more than the operator itself (issue #12: part of the 6.6 ms
// of host work in a 32.7 ms DPS step at batch 1 on an H200).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace diffpost::detail {

/// What identifies one cached constant: what it is (`name`, e.g. "rows"), the sizes it was built for, and the
/// device and dtype it was converted to.
struct ConstantKey {
  std::string name;
  std::vector<int64_t> sizes;
  c10::DeviceType device_type = c10::DeviceType::CPU;
  c10::DeviceIndex device_index = -1;
  c10::ScalarType dtype = c10::ScalarType::Undefined;

  ConstantKey(std::string name_, std::vector<int64_t> sizes_, const torch::TensorOptions& options)
      : name(std::move(name_)),
        sizes(std::move(sizes_)),
        device_type(options.device().type()),
        device_index(options.device().index()),
        dtype(c10::typeMetaToScalarType(options.dtype())) {}

  friend bool operator<(const ConstantKey& a, const ConstantKey& b) {
    return std::tie(a.name, a.sizes, a.device_type, a.device_index, a.dtype) <
           std::tie(b.name, b.sizes, b.device_type, b.device_index, b.dtype);
  }
};

/// A thread-safe map from ConstantKey to a value (a tensor, or a decomposition holding several), filled on
/// first use. Copies of an operator share one cache (hold it by shared_ptr), so the constants are built once
/// whichever copy asks first. `builds()` counts the values computed, so tests can prove that a second call
/// reuses the first one's.
template <class Value>
class ConstantCache {
 public:
  /// The value for `key`, computed by `make()` (which returns a Value already on key's device and dtype) the
  /// first time it is asked for. `make` runs under the cache's lock, so it is called once per key even when
  /// several threads ask at once; it must not use this cache itself.
  template <class Make>
  Value get(const ConstantKey& key, Make&& make) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = values_.find(key);
    if (found != values_.end()) return found->second;
    ++builds_;
    // Constants are plain tensors, whatever mode the first caller runs in: no autograd history, and not
    // inference tensors, which a later differentiable call could not save for backward.
    c10::InferenceMode normal_tensors(false);
    torch::NoGradGuard no_grad;
    return values_.emplace(key, std::forward<Make>(make)()).first->second;
  }

  /// How many values were computed so far (cache misses).
  [[nodiscard]] int64_t builds() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return builds_;
  }

  /// How many values are held.
  [[nodiscard]] int64_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(values_.size());
  }

 private:
  mutable std::mutex mutex_;
  std::map<ConstantKey, Value> values_;
  int64_t builds_ = 0;
};

/// Tensor constants of one operator, shared by its copies.
using TensorCache = std::shared_ptr<ConstantCache<torch::Tensor>>;

/// A new, empty tensor cache.
inline TensorCache make_tensor_cache() {
  return std::make_shared<ConstantCache<torch::Tensor>>();
}

/// The device and dtype of `t`, as the options a cached constant is converted to.
inline torch::TensorOptions constant_options(const torch::Tensor& t) {
  return torch::TensorOptions().device(t.device()).dtype(t.scalar_type());
}

}  // namespace diffpost::detail
