// An owning, 64-byte aligned array: the storage of every native weight object. Copyable (a deep
// copy) so weight objects can be duplicated; never resized after construction.
//
// Units: sizes are in elements of T.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

namespace sparseprune {

template <class T>
class Buffer {
  static_assert(std::is_trivially_copyable<T>::value, "Buffer holds plain numbers");

 public:
  Buffer() = default;
  explicit Buffer(size_t n) { allocate(n); }
  Buffer(const T* src, size_t n) {
    allocate(n);
    if (n) std::memcpy(ptr_, src, n * sizeof(T));
  }
  Buffer(const Buffer& o) : Buffer(o.ptr_, o.size_) {}
  Buffer(Buffer&& o) noexcept : ptr_(o.ptr_), size_(o.size_) {
    o.ptr_ = nullptr;
    o.size_ = 0;
  }
  Buffer& operator=(Buffer o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(size_, o.size_);
    return *this;
  }
  ~Buffer() { std::free(ptr_); }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return size_; }
  size_t nbytes() const { return size_ * sizeof(T); }
  T& operator[](size_t i) { return ptr_[i]; }
  const T& operator[](size_t i) const { return ptr_[i]; }

 private:
  void allocate(size_t n) {
    size_ = n;
    // At least one 64-byte line, so data() is never null and kernels may over-read up to 64 B
    // past the end of a buffer whose size they document (none does today without saying so).
    const size_t bytes = ((n * sizeof(T) + 64 + 63) / 64) * 64;
    ptr_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!ptr_) throw std::bad_alloc();
    std::memset(static_cast<void*>(ptr_), 0, bytes);
  }
  T* ptr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace sparseprune
