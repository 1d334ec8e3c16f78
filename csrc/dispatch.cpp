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
    if (k.format == W::kFormat && k.family != Family::kSpconv && cpu_supports(k) &&
        isa_allowed(k))
      add_row(plan, k);
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
    if (k->family == Family::kSpconv)
      throw std::invalid_argument("kernel '" + n + "' is a convolution kernel, not a linear one");
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

template <class W>
std::vector<ConvKernel<W>> default_conv_kernels(int r) {
  std::vector<ConvKernel<W>> specific, any;
  uint32_t isa_specific = 0, isa_any = 0;  // the table lists the best ISA first
  for (const KernelInfo& k : all_kernels()) {
    const ConvFn<W>* f = std::get_if<ConvFn<W>>(&k.fn);
    if (f == nullptr || !cpu_supports(k) || !isa_allowed(k) || (k.nr != r && k.nr != 0)) continue;
    auto& out = k.nr == r ? specific : any;
    uint32_t& isa = k.nr == r ? isa_specific : isa_any;
    if (isa == 0) isa = k.isa;
    if (k.isa == isa) out.push_back({*f, k.mr, k.nr, k.name});
  }
  return specific.empty() ? any : specific;
}

template <class W>
ConvKernel<W> pick_conv_kernel(const std::vector<ConvKernel<W>>& rows, int64_t pixels) {
  // Tiles run in whole widths: a width that leaves most of the last tile empty wastes it (a
  // 7 x 9 output in 128-pixel tiles is half padding). Among widths wasting about the same,
  // wider is better (fewer passes over the taps per pixel): ~8 pixels' worth per tile.
  ConvKernel<W> best;
  double best_cost = 0;
  for (const ConvKernel<W>& k : rows) {
    const int64_t tiles = (pixels + k.px - 1) / k.px;
    const double cost = static_cast<double>(tiles * k.px) * (1.0 + 8.0 / k.px);
    if (best.fn == nullptr || cost < best_cost) best = k, best_cost = cost;
  }
  if (best.fn == nullptr) throw std::invalid_argument("no convolution kernel for this format");
  return best;
}

template <class W>
ConvKernel<W> conv_kernel_from_name(const std::string& name, int r) {
  const KernelInfo* k = find_kernel(name);
  if (k == nullptr) throw std::invalid_argument("unknown kernel '" + name + "' (see list_kernels())");
  const ConvFn<W>* f = std::get_if<ConvFn<W>>(&k->fn);
  if (f == nullptr)
    throw std::invalid_argument("kernel '" + name + "' is not a convolution kernel for " +
                                format_name(W::kFormat) + " weights");
  if (k->nr != 0 && k->nr != r)
    throw std::invalid_argument("kernel '" + name + "' runs " + std::to_string(k->nr) +
                                "-row blocks, not " + std::to_string(r));
  if (!cpu_supports(*k))
    throw std::invalid_argument("kernel '" + name + "' needs " + isa_name(k->isa) +
                                ", which this CPU does not support");
  return {*f, k->mr, k->nr, k->name};
}

std::string dispatch_log() {
  std::string out;
  for_each_weight([&](auto* tag) {
    using W = std::remove_pointer_t<decltype(tag)>;
    out += (out.empty() ? "" : "\n") + describe(default_plan<W>());
  });
  std::string conv;
  for (const auto& k : default_conv_kernels<CsrWeight>(1)) conv += (conv.empty() ? "" : ", ") + std::string(k.name);
  for (int r : {4, 8, 16})
    for (const auto& k : default_conv_kernels<BsrWeight>(r)) conv += ", " + std::string(k.name);
  return out + "\nconv: [" + conv + "] (tile width chosen per output size)";
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
#define SP_INSTANTIATE_CONV(W)                                                             \
  template std::vector<ConvKernel<W>> default_conv_kernels<W>(int);                         \
  template ConvKernel<W> pick_conv_kernel<W>(const std::vector<ConvKernel<W>>&, int64_t);   \
  template ConvKernel<W> conv_kernel_from_name<W>(const std::string&, int);
SP_INSTANTIATE_CONV(CsrWeight)
SP_INSTANTIATE_CONV(BsrWeight)
#undef SP_INSTANTIATE_CONV

}  // namespace sparseprune
