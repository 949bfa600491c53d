#!/usr/bin/env bash
# The fuzz stage (ctest `fuzz`, label fuzz; tests/fuzz/README.md): builds the
# libFuzzer targets with Clang, AddressSanitizer and UBSan in their own build
# tree, writes the seed corpus (make_seeds.py), runs every target once over
# its regression inputs (tests/fuzz/regressions/<target>/: each a crash found
# once), then fuzzes each for FUZZ_SECONDS (default 30) and prints its
# executions per second. A crash fails the stage and leaves the input in
# BUILD/crashes/<target>/: add it to regressions/ with the fix.
#
#   tests/fuzz/run.sh SOURCE_DIR FUZZ_BUILD_DIR [MAIN_BUILD_DIR] [TARGET...]
#
# Exit 77 (ctest: skipped) without clang++ or libFuzzer's runtime.
# Environment: FUZZ_SECONDS, FUZZ_JOBS (build jobs, default 2), RETINA_PYTHON3.
set -euo pipefail
src=$(cd "$1" && pwd)
build=$2
main=${3:-}
shift $(( $# >= 3 ? 3 : $# ))
seconds=${FUZZ_SECONDS:-30}
python=${RETINA_PYTHON3:-/usr/bin/python3}
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(fuzz_tiff fuzz_png fuzz_hdf5 fuzz_nifti fuzz_nrrd fuzz_zarr fuzz_checkpoint
                                        fuzz_job_yaml fuzz_records)

cxx=$(command -v clang++ || true)
cc=$(command -v clang || true)
if [[ -z $cxx || -z $cc ]]; then
  echo "SKIP: no clang++ (install clang: scripts/setup)"; exit 77
fi
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
    "$cxx" -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  echo "SKIP: $cxx cannot link -fsanitize=fuzzer (libFuzzer's runtime: the libclang-rt-dev or clang package)"; exit 77
fi

t0=$(date +%s)
flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DRETINA_FUZZ=ON -DRETINA_BUILD_TESTS=OFF -DRETINA_BUILD_SERVICES=OFF \
  -DRETINA_WITH_MPI=OFF -DRETINA_WITH_NCCL=OFF -DRETINA_WITH_CUDA=OFF > "$build.configure.log" 2>&1 ||
  { cat "$build.configure.log"; exit 1; }
cmake --build "$build" -j "${FUZZ_JOBS:-2}" --target "${targets[@]}"
t1=$(date +%s)

seeds="$build/seeds"
rm -rf "$seeds"
"$python" "$src/tests/fuzz/make_seeds.py" "$seeds" "$src" ${main:+"$main/trainer"}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

# Where a finding's stack first leaves the sanitizers and libc: "ours" when
# that frame is in this project's code, else the library's file name (a bug
# in a Debian library: reported, kept in library-findings/, not a failure;
# it only kills the rank that reads such a file).
classify() {  # BINARY INPUT
  "$1" "$2" -rss_limit_mb=2560 -timeout=20 2>&1 | awk '
    /^ *#[0-9]+ 0x/ {
      if ($0 ~ /__sanitizer|__asan|__ubsan|__interceptor_|__lsan|fuzzer::|libc\.so|libc_start|sysdeps\/|malloc|operator new|std::__new_allocator|allocator_traits|_Vector_base|stl_vector\.h/) next
      if ($0 ~ /\(\/(usr\/)?lib\/[^ ]*\.so[^ ]*\+0x/) { match($0, /\/(usr\/)?lib\/[^ +]*\.so[^ +]*/); lib = substr($0, RSTART, RLENGTH); sub(/.*\//, "", lib); print lib; exit }
      print "ours"; exit
    }
    END { }' | head -1 || true
}

status=0
printf '%-18s %8s %10s %8s %s\n' target seconds execs/s corpus result
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/$t" corpus="$build/corpus/$t" crashes="$build/crashes/$t" library="$build/library-findings/$t"
  rm -rf "$crashes"
  mkdir -p "$corpus" "$crashes" "$library" "$seeds/$t"
  log="$build/$t.log"
  regressions=("$src/tests/fuzz/regressions/$t"/*)
  if [[ -e ${regressions[0]} ]] && ! "$bin" "${regressions[@]}" -rss_limit_mb=2560 < /dev/null > "$log.regressions" 2>&1; then
    echo "$t: a regression input fails again; see $log.regressions"; status=1
  fi
  # Fork mode: a finding is saved and fuzzing goes on for the whole time.
  "$bin" "$corpus" "$seeds/$t" -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2560 -max_len=65536 -artifact_prefix="$crashes/" \
    < /dev/null > "$log" 2>&1 || true
  execs=$(grep -oE 'exec/s:? [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
  result=ok
  for f in "$crashes"/*; do
    [[ -e $f ]] || continue
    case $(basename "$f") in
      crash-* | leak-* | oom-*) ;;
      *) result="$result; $(basename "$f" | cut -c1-16) (slow or timed out on this machine: not a failure)"; continue ;;
    esac
    where=$(classify "$bin" "$f" < /dev/null || true)
    if [[ -z $where ]]; then
      result="$result; $(basename "$f" | cut -c1-16) did not reproduce"; continue
    fi
    if [[ $where == ours ]]; then
      result="FAILED: $(basename "$f") in our code (replay: $bin $f)"; status=1
    else
      cp "$f" "$library/"
      [[ $result == ok ]] && result="ok; library findings:"
      [[ $result == FAILED* ]] || result="$result $(basename "$f" | cut -c1-16) in $where"
    fi
  done
  printf '%-18s %8s %10s %8s %s\n' "$t" "$seconds" "${execs:-?}" "$(ls "$corpus" | wc -l)" "$result"
done
echo "tests/fuzz/run.sh: build $((t1 - t0)) s, $seconds s per target; library findings in $build/library-findings"
exit "$status"
