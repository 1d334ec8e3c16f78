// Every native weight type, and the one list of them (WeightTypes) that the kernel tables,
// dispatch and bindings expand: adding a format adds its header here and its type to the list.
#pragma once
#include <tuple>
#include <variant>

#include "../common/linear_fn.h"
#include "bsr_weight.h"
#include "csr_weight.h"
#include "nm_weight.h"
#include "sell_weight.h"

namespace sparseprune {

using WeightTypes = std::tuple<CsrWeight, SellWeight, BsrWeight, NmWeight>;

// std::variant<F<W>...> over WeightTypes.
template <template <class> class F, class Tuple>
struct VariantOver;
template <template <class> class F, class... Ws>
struct VariantOver<F, std::tuple<Ws...>> {
  using type = std::variant<F<Ws>...>;
};

// Calls f(W{}-tag) for every weight type: f is a generic lambda taking a pointer tag (W*).
template <class F, class... Ws>
void for_each_weight_impl(F&& f, std::tuple<Ws...>*) {
  (f(static_cast<Ws*>(nullptr)), ...);
}
template <class F>
void for_each_weight(F&& f) {
  for_each_weight_impl(f, static_cast<WeightTypes*>(nullptr));
}

}  // namespace sparseprune
