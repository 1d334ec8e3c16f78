// Every native weight type, one header each; kernels.h and dispatch.h include this one.
#pragma once
#include "csr_weight.h"
#include "sell_weight.h"
