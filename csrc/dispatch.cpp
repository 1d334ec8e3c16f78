#include "dispatch.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "common/cpu.h"

namespace sparseprune {
namespace {

template <class W>
LinearFn<W> fn_of(const KernelInfo& k) {
  const LinearFn<W>* f = std::get_if<LinearFn<W>>(&k.fn);
  return f ? *f : nullptr;
}

template <class W>
void add_row(LinearPlan<W>& plan, const KernelInfo& k) {
  if (k.family == Family::kSpmv) {
    if (plan.spmv == nullptr) plan.spmv = fn_of<W>(k);
    return;
  }
  for (const auto& p : plan.panels)
    if (p.mr == k.mr) return;  // the first row of a width wins
  plan.panels.push_back({fn_of<W>(k), k.mr});
  std::stable_sort(plan.panels.begin(), plan.panels.end(),
                   [](const PanelKernel<W>& a, const PanelKernel<W>& b) { return a.mr > b.mr; });
}

template <class W>
LinearPlan<W> build_default() {
  LinearPlan<W> plan;
  for (const KernelInfo& k : all_kernels())
    if (k.format == W::kFormat && cpu_supports(k) && isa_allowed(k)) add_row(plan, k);
  return plan;
}

template <class W>
std::string describe(const LinearPlan<W>& plan) {
  std::string s = std::string(format_name(W::kFormat)) + ": spmv=";
  const std::vector<std::string> names = plan_names(plan);
  size_t i = 0;
  s += plan.spmv ? names[i++] : std::string("none");
  s += ", spmm=[";
  for (bool first = true; i < names.size(); ++i, first = false) s += (first ? "" : ", ") + names[i];
  return s + "]";
}

template <class W>
const char* name_of(LinearFn<W> fn) {
  for (const KernelInfo& k : all_kernels())
    if (fn_of<W>(k) == fn && fn != nullptr) return k.name;
  return "?";
}

}  // namespace

template <class W>
const LinearPlan<W>& default_plan() {
  static const LinearPlan<W> plan = [] {
    LinearPlan<W> p = build_default<W>();
    const char* log = std::getenv("SPARSEPRUNE_LOG");
    if (log != nullptr && std::strcmp(log, "1") == 0)
      std::fprintf(stderr, "sparseprune: %s\n", describe(p).c_str());
    return p;
  }();
  return plan;
}

template <class W>
LinearPlan<W> plan_from_names(const std::vector<std::string>& names) {
  LinearPlan<W> plan;
  for (const std::string& n : names) {
    const KernelInfo* k = find_kernel(n);
    if (k == nullptr) throw std::invalid_argument("unknown kernel '" + n + "' (see list_kernels())");
    if (k->format != W::kFormat)
      throw std::invalid_argument("kernel '" + n + "' runs " + format_name(k->format) +
                                  " weights, not " + format_name(W::kFormat));
    if (!cpu_supports(*k))
      throw std::invalid_argument("kernel '" + n + "' needs " + isa_name(k->isa) +
                                  ", which this CPU does not support");
    add_row(plan, *k);
  }
  if (plan.spmv == nullptr && plan.panels.empty())
    throw std::invalid_argument("a kernel plan needs at least one kernel");
  return plan;
}

template <class W>
std::vector<std::string> plan_names(const LinearPlan<W>& plan) {
  std::vector<std::string> out;
  if (plan.spmv) out.push_back(name_of<W>(plan.spmv));
  for (const auto& p : plan.panels) out.push_back(name_of<W>(p.fn));
  return out;
}

std::string dispatch_log() {
  std::string out;
  for_each_weight([&](auto* tag) {
    using W = std::remove_pointer_t<decltype(tag)>;
    out += (out.empty() ? "" : "\n") + describe(default_plan<W>());
  });
  return out;
}

#define SP_INSTANTIATE(W)                                                         \
  template const LinearPlan<W>& default_plan<W>();                                \
  template LinearPlan<W> plan_from_names<W>(const std::vector<std::string>&);     \
  template std::vector<std::string> plan_names<W>(const LinearPlan<W>&);
SP_INSTANTIATE(CsrWeight)
SP_INSTANTIATE(SellWeight)
SP_INSTANTIATE(BsrWeight)
SP_INSTANTIATE(NmWeight)
#undef SP_INSTANTIATE

}  // namespace sparseprune
