# Fails the build when an object compiled with ISA flags (-mavx2, -mavx512f, ...) defines a
# symbol the linker merges across objects (weak: inline functions, template instances; GNU
# unique: static locals of inline functions). The linker keeps one copy of such a symbol for the
# whole extension, and if it keeps the AVX-512 one, the scalar and AVX2 kernels call AVX-512
# code: an illegal instruction on CPUs without it, depending only on link order. Helpers shared
# by ISA files need internal linkage (an anonymous namespace) or an out-of-line definition in a
# portable file.
#
# cmake -DNM=<nm> -DOBJS=<a.o|b.o|...> -P check_isa_objects.cmake
string(REPLACE "|" ";" objs "${OBJS}")
set(bad "")
foreach(obj IN LISTS objs)
  if(NOT EXISTS "${obj}")
    message(WARNING "check_isa_objects: ${obj} not found (unknown object layout?); not checked")
    continue()
  endif()
  execute_process(COMMAND "${NM}" -C --defined-only "${obj}" OUTPUT_VARIABLE syms
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(WARNING "check_isa_objects: ${NM} failed on ${obj}; not checked")
    continue()
  endif()
  string(REPLACE "\n" ";" lines "${syms}")
  foreach(line IN LISTS lines)
    if(line MATCHES "^[0-9a-fA-F]* [WVu] (.*)$")
      get_filename_component(name "${obj}" NAME)
      string(APPEND bad "\n  ${name}: ${CMAKE_MATCH_1}")
    endif()
  endforeach()
endforeach()
if(bad)
  message(FATAL_ERROR "ISA-flagged objects define symbols the linker merges across objects "
                      "(give them internal linkage or define them in a portable file):${bad}")
endif()
