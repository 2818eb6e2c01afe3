# The CUDA engine, built when THINKTUNE_CUDA is auto (and a toolkit with cuBLAS is found) or on.
# Included by CMakeLists.txt after thinktune_core is defined. cuBLAS/cuBLASLt come from the toolkit
# or, failing that, from pip's nvidia/cu13 wheels (nvidia-cublas, nvidia-cuda-runtime): the
# reference venv's site-packages or THINKTUNE_CUBLAS_ROOT (a folder with include/ and lib/).
string(TOLOWER "${THINKTUNE_CUDA}" THINKTUNE_CUDA_MODE)
if(NOT THINKTUNE_CUDA_MODE MATCHES "^(auto|on|off)$")
  message(FATAL_ERROR "THINKTUNE_CUDA must be auto, on or off, got \"${THINKTUNE_CUDA}\"")
endif()

# Ends the CUDA part: a fatal error when CUDA was required, a notice otherwise.
macro(thinktune_cuda_unavailable why)
  if(THINKTUNE_CUDA_MODE STREQUAL "on")
    message(FATAL_ERROR "THINKTUNE_CUDA=on but the CUDA engine cannot be built: ${why}")
  endif()
  message(STATUS "CUDA engine not built: ${why}")
  return()
endmacro()

if(THINKTUNE_CUDA_MODE STREQUAL "off")
  message(STATUS "CUDA engine not built: THINKTUNE_CUDA=off")
  return()
endif()

if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  thinktune_cuda_unavailable("no CUDA compiler (nvcc) found; install the CUDA toolkit or set CUDACXX")
endif()
get_filename_component(THINKTUNE_NVCC_BIN "${CMAKE_CUDA_COMPILER}" DIRECTORY)
if(NOT DEFINED CUDAToolkit_ROOT)
  get_filename_component(CUDAToolkit_ROOT "${THINKTUNE_NVCC_BIN}/.." ABSOLUTE)
endif()
find_package(CUDAToolkit QUIET)
if(NOT CUDAToolkit_FOUND)
  thinktune_cuda_unavailable("the CUDA toolkit next to ${CMAKE_CUDA_COMPILER} was not found by find_package(CUDAToolkit)")
endif()

# cuBLAS: the toolkit's own, else pip's nvidia/cu13 wheels
set(THINKTUNE_CUBLAS_HINTS "")
if(DEFINED ENV{THINKTUNE_CUBLAS_ROOT})
  list(APPEND THINKTUNE_CUBLAS_HINTS "$ENV{THINKTUNE_CUBLAS_ROOT}")
endif()
file(GLOB THINKTUNE_PIP_CU13 "${CMAKE_SOURCE_DIR}/.venv-ref/lib/python3*/site-packages/nvidia/cu13")
list(APPEND THINKTUNE_CUBLAS_HINTS ${THINKTUNE_PIP_CU13})
find_path(THINKTUNE_CUBLAS_INCLUDE cublasLt.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ${THINKTUNE_CUBLAS_HINTS}
          PATH_SUFFIXES include NO_CACHE)
set(THINKTUNE_CUBLAS_LIB_HINTS ${CUDAToolkit_LIBRARY_DIR})
foreach(hint ${THINKTUNE_CUBLAS_HINTS})
  list(APPEND THINKTUNE_CUBLAS_LIB_HINTS "${hint}/lib")
endforeach()
# pip's wheels carry only the versioned names (libcublas.so.13)
find_library(THINKTUNE_CUBLAS_LIBRARY NAMES cublas libcublas.so.13 HINTS ${THINKTUNE_CUBLAS_LIB_HINTS} NO_CACHE)
find_library(THINKTUNE_CUBLASLT_LIBRARY NAMES cublasLt libcublasLt.so.13 HINTS ${THINKTUNE_CUBLAS_LIB_HINTS} NO_CACHE)
if(NOT THINKTUNE_CUBLAS_INCLUDE OR NOT THINKTUNE_CUBLAS_LIBRARY OR NOT THINKTUNE_CUBLASLT_LIBRARY)
  thinktune_cuda_unavailable("cuBLAS/cuBLASLt not found in ${CUDAToolkit_LIBRARY_DIR} or ${THINKTUNE_CUBLAS_HINTS}; \
install them (pip install nvidia-cublas nvidia-cuda-runtime into .venv-ref) or set THINKTUNE_CUBLAS_ROOT")
endif()
if(NOT TARGET CUDA::cudart_static)
  thinktune_cuda_unavailable("the toolkit has no static CUDA runtime (libcudart_static.a)")
endif()

if(NOT CMAKE_CUDA_ARCHITECTURES)
  if(DEFINED ENV{CMAKE_CUDA_ARCHITECTURES})
    set(CMAKE_CUDA_ARCHITECTURES "$ENV{CMAKE_CUDA_ARCHITECTURES}")
  else()
    set(CMAKE_CUDA_ARCHITECTURES "80;90a")
  endif()
endif()
# 90a (not 90) carries Hopper's warpgroup MMA, which the fused attention's kernels use there
if("${CMAKE_CUDA_ARCHITECTURES}" MATCHES "90a")
  set(THINKTUNE_SM90A ON)
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
message(STATUS "CUDA engine: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}, cuBLAS ${THINKTUNE_CUBLAS_LIBRARY}")

# The CUDA kernels and backend join thinktune_core: the engine's factory (engine.cpp) calls the
# backend, which uses the core's model, LoRA and plan code, so they are one library, not two.
file(GLOB THINKTUNE_CUDA_SOURCES CONFIGURE_DEPENDS
  ${CMAKE_SOURCE_DIR}/native/kernels/cuda/*.cu
  ${CMAKE_SOURCE_DIR}/native/engine/cuda_*.cu)
target_sources(thinktune_core PRIVATE ${THINKTUNE_CUDA_SOURCES})
# thinktune_core was created before CMAKE_CUDA_ARCHITECTURES got its default above, so its
# CUDA_ARCHITECTURES property (initialized at creation) is set here
set_target_properties(thinktune_core PROPERTIES CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}")
target_include_directories(thinktune_core PUBLIC ${THINKTUNE_CUBLAS_INCLUDE})
target_compile_options(thinktune_core PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr -Xcompiler=-fPIC>)
if(THINKTUNE_SM90A)
  target_compile_definitions(thinktune_core PRIVATE THINKTUNE_SM90A)
endif()
# what `thinktune --version` reports (a CMake list's semicolons would split the definition)
string(REPLACE ";" "," THINKTUNE_CUDA_ARCHITECTURE_LIST "${CMAKE_CUDA_ARCHITECTURES}")
target_compile_definitions(thinktune_core PRIVATE THINKTUNE_CUDA_ARCHITECTURES="${THINKTUNE_CUDA_ARCHITECTURE_LIST}")
get_filename_component(THINKTUNE_CUBLAS_LIB_DIR "${THINKTUNE_CUBLAS_LIBRARY}" DIRECTORY)
target_link_libraries(thinktune_core PUBLIC CUDA::cudart_static ${THINKTUNE_CUBLAS_LIBRARY} ${THINKTUNE_CUBLASLT_LIBRARY})
# the addon finds libcublas where it was linked from (pip's folder has no system-wide path)
target_link_options(thinktune_core INTERFACE "LINKER:-rpath,${THINKTUNE_CUBLAS_LIB_DIR}")
set(THINKTUNE_CUDA_BUILT ON)

# The fused attention's standalone check and timing program (bench/kernels/flash_attention_check.cu),
# next to the addon: a GPU test runs its checks, and the CUDA bench its attention timings.
add_executable(thinktune_attention_check ${CMAKE_SOURCE_DIR}/bench/kernels/flash_attention_check.cu
               ${CMAKE_SOURCE_DIR}/native/kernels/cuda/flash_attention.cu)
target_include_directories(thinktune_attention_check PRIVATE ${CMAKE_SOURCE_DIR}/native)
target_compile_options(thinktune_attention_check PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3>)
if(THINKTUNE_SM90A)
  target_compile_definitions(thinktune_attention_check PRIVATE THINKTUNE_SM90A)
endif()
target_link_libraries(thinktune_attention_check PRIVATE CUDA::cudart_static)
set_target_properties(thinktune_attention_check PROPERTIES RUNTIME_OUTPUT_DIRECTORY "${CMAKE_LIBRARY_OUTPUT_DIRECTORY}")
