#!/usr/bin/env bash
# One call on a GPU machine: build clattn, check the GPU forms against the float64
# reference on the GPU, tune briefly, bench clattn against PyTorch SDPA on the shapes of
# bench/gpu_check.sweep with a copy kernel's read bandwidth from the same run, and write
# everything as JSON to OUTDIR (summary: OUTDIR/gpu_check.json). Sized for about 6
# minutes on an H100/H200 machine with 16 cores, so it can run twice within 15.
#
#   bash bench/gpu_check.sh OUTDIR
#
# Installs nothing. What it uses when present (a GPU machine has no network):
#   .gpu/deb/*.deb   OpenCL headers, ICD loader, CLBlast, cmocka unpacked under
#                    /tmp/gpuroot (fetched beforehand by ../shared/device/prepare.sh)
#   the NVIDIA OpenCL driver (libnvidia-opencl.so.1), registered with the loader
#                    through OCL_ICD_VENDORS when no .icd file names it
#   python3 with torch and CUDA, for the PyTorch SDPA rows
# Every step is recorded in the summary with its status (ok, failed, skipped and why)
# and log file; a failing step does not stop the others.
#
# Settings (environment):
#   GPU_CHECK_DEVICE  device spec for clattn (default gpu)
#   GPU_CHECK_EXE     an already built clattn executable: no build step
#   GPU_CHECK_BUILD   build folder (default /tmp/build-gpu)
#   GPU_CHECK_QUICK=1 tiny shapes and a 5 s tune, for testing the script on any device
#                     (tests/scripts/test_gpu_check.sh runs it so on PoCL)
#   GPU_CHECK_TUNE_S  seconds of clattn tune (default 30)
#   GPU_CHECK_CACHE   clattn's program cache folder (default OUTDIR/cache)
#   GPU_CHECK_TORCH_JSONL  SDPA rows to use instead of running PyTorch (tests)
set -uo pipefail

out=${1:-}
if [ -z "$out" ]; then
    echo "usage: bench/gpu_check.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
dev=${GPU_CHECK_DEVICE:-gpu}
quick=${GPU_CHECK_QUICK:-0}
tune_s=${GPU_CHECK_TUNE_S:-30}
[ "$quick" = 1 ] && tune_s=${GPU_CHECK_TUNE_S:-5}
steps=$out/steps.tsv
: >"$steps"
t_start=$(date +%s)

# step NAME STATUS NOTE: one line of the summary's step list
step() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$(($(date +%s) - t_start))" "$3" >>"$steps"; }

# ---- OpenCL from the carried packages, and the NVIDIA driver's ICD ----------------------
if ls "$src"/.gpu/deb/*.deb >/dev/null 2>&1; then
    root=/tmp/gpuroot
    mkdir -p "$root"
    for f in "$src"/.gpu/deb/*.deb; do dpkg -x "$f" "$root"; done
    export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
    export CPATH=$root/usr/include:${CPATH:-}
    export CMAKE_PREFIX_PATH=$root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
    export PATH=$root/usr/bin:$PATH
    step packages ok "unpacked $(ls "$src"/.gpu/deb/*.deb | wc -l) packages under $root"
else
    step packages skipped "no .gpu/deb: using the system's OpenCL"
fi
nv=$(ls /usr/local/nvidia/lib64/libnvidia-opencl.so.1 /usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1 \
    /usr/lib64/libnvidia-opencl.so.1 2>/dev/null | head -1)
if [ -n "$nv" ] && ! grep -qs nvidia /etc/OpenCL/vendors/*.icd; then
    icd=$out/icd
    mkdir -p "$icd"
    cp /etc/OpenCL/vendors/*.icd "$icd"/ 2>/dev/null
    echo "$nv" >"$icd/nvidia.icd"
    export OCL_ICD_VENDORS=$icd
    step icd ok "registered $nv"
else
    step icd skipped "${nv:+the NVIDIA driver is registered already}${nv:-no NVIDIA OpenCL driver found}"
fi
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/nvidia-smi.txt" 2>&1

# ---- Build ---------------------------------------------------------------------------
exe=${GPU_CHECK_EXE:-}
if [ -z "$exe" ]; then
    build=${GPU_CHECK_BUILD:-/tmp/build-gpu}
    jobs=$(nproc 2>/dev/null || echo 4)
    # cmocka's tests are not needed here: clattn check runs the SPEC suite itself
    # without CLBlast (not carried) the build leaves that path out rather than failing
    conf() { cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCLATTN_BUILD_TESTS=OFF "$@" >>"$out/build.log" 2>&1; }
    : >"$out/build.log"
    if { conf || { rm -rf "$build" && conf -DCLATTN_WITH_CLBLAST=OFF; }; } &&
        cmake --build "$build" -j "$jobs" --target clattn_exe >>"$out/build.log" 2>&1; then
        exe=$(find "$build" -type f -name clattn -perm -u+x | head -1)
        step build ok "$build"
    else
        step build failed "see build.log"
    fi
else
    step build skipped "GPU_CHECK_EXE=$exe"
fi
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    step clattn failed "no clattn executable"
    python3 "$src/bench/gpu_check_summary.py" "$out" "$dev" "$quick"
    exit 1
fi
export CLATTN_CACHE_DIR=${GPU_CHECK_CACHE:-$out/cache}

"$exe" devices >"$out/devices.txt" 2>&1
# the copy kernel's read bandwidth and the FMA rate, measured in this run
if "$exe" devices --peak --json >"$out/peak.json" 2>"$out/peak.log"; then step peak ok ""; else step peak failed "see peak.log"; fi

# which optional features the device has, each decided by its probe kernel (f16
# arithmetic, subgroups and their measured size, mma.sync through inline PTX)
if "$exe" devices --variants >"$out/variants.txt" 2>&1; then
    step variants ok "$(grep -c 'variant .* yes' "$out/variants.txt") usable feature(s) over all devices"
else
    step variants failed "see variants.txt"
fi

# ---- The GPU forms against the reference, each forced through a tuning file -----------
# fused: gpu, gpu-mm; decode: gpu; the KV cache's gpu form through its tests. clattn check's quick suite covers every SPEC rule.
form_file() { # PATH FORM -> a tuning file naming FORM on any device, per head class with
    # tiles that are legal in 32 KiB of local memory (clattn shrinks them further to fit)
    local f=$out/form-$1-$2.json sep="" head params
    printf '{"clattn_tuning": 1, "records": [\n' >"$f"
    for t in gpu cpu accelerator other; do
        for head in 64 128 256; do
            case $1:$2:$head in
            fused:gpu:256 | fused:gpu-mm:256) params=', "block_m": 8, "block_n": 16' ;;
            fused:*:128) params=', "block_m": 32, "block_n": 16' ;;
            *) params="" ;;
            esac
            printf '%s {"device": {"type": "%s"}, "path": "%s", "class": {"head": %s}, "params": {"form": "%s"%s}}\n' \
                "$sep" "$t" "$1" "$head" "$2" "$params" >>"$f"
            sep=","
        done
    done
    printf ']}\n' >>"$f"
    echo "$f"
}
for pf in fused:gpu fused:gpu-mm decode:gpu; do
    p=${pf%%:*} form=${pf#*:}
    log=$out/check-$p-$form.txt
    if CLATTN_TUNING_FILE=$(form_file "$p" "$form") CLATTN_LOG=1 timeout 240 \
        "$exe" check --device "$dev" --path "$p" >"$log" 2>&1; then
        st=ok
    else
        st=failed
    fi
    # the log names the kernel file of every call: the form really ran
    case $pf in
    fused:gpu) pat="fused: flash_gpu.cl" ;;
    fused:gpu-mm) pat="fused: flash_gpu_mm.cl" ;;
    *) pat="decode: form gpu" ;;
    esac
    used=$(grep -c "$pat" "$log" || true)
    step "check-$p-$form" "$st" "$(tail -1 "$log" | tr '\t' ' ') [$used calls logged the form]"
done
# the KV cache's and pool's GPU form (forced) against the float64 reference, every
# format: their cmocka tests, built beside clattn when this script builds it (cmocka
# from .gpu/deb); a given GPU_CHECK_EXE has no tests beside it
if [ -n "${build:-}" ]; then
    tb=${build}-tests
    log=$out/check-kv-gpu.txt
    if { cmake -S "$src" -B "$tb" -DCMAKE_BUILD_TYPE=Release -DCLATTN_BUILD_TESTS=ON -DCLATTN_WITH_CLBLAST=OFF &&
        cmake --build "$tb" -j "$jobs" --target test_kv_cache test_kv_pool; } >"$out/build-tests.log" 2>&1; then
        st=ok
        for t in test_kv_cache test_kv_pool; do
            CLATTN_DEVICE=$dev CLATTN_LOG=1 timeout 240 "$(find "$tb" -type f -name $t -perm -u+x | head -1)" \
                "test_gpu_form_*" >>"$log" 2>&1 || st=failed
        done
        step check-kv-gpu "$st" "$(grep -c 'PASSED' "$log" || true) of 2 test programs passed [$(grep -c 'form gpu' "$log" || true) calls logged the form]"
    else
        step check-kv-gpu failed "the tests did not build: see build-tests.log"
    fi
else
    step check-kv-gpu skipped "GPU_CHECK_EXE given: no tests built"
fi
# the whole suite (quick mode: the quick one) on the forms the device's own rows choose
full="--full"
[ "$quick" = 1 ] && full=""
for p in fused decode; do
    # shellcheck disable=SC2086
    if timeout 150 "$exe" check --device "$dev" --path "$p" $full >"$out/check-auto-$p.txt" 2>&1; then
        step "check-auto-$p" ok "$(tail -1 "$out/check-auto-$p.txt")"
    else
        step "check-auto-$p" failed "$(tail -1 "$out/check-auto-$p.txt")"
    fi
done

# ---- A short clattn tune -------------------------------------------------------------------
if [ "$quick" = 1 ]; then tshape=1,2,2,64,64,32; else tshape=1,8,8,1024,1024,64; fi
if timeout $((tune_s * 3 + 60)) "$exe" tune --device "$dev" --budget "$tune_s" --path fused --shape "$tshape" \
    --out "$out/tuning.json" >"$out/tune.log" 2>&1; then
    step tune ok "fused $tshape, ${tune_s} s"
else
    step tune failed "see tune.log"
fi

# ---- Bench: clattn (built-in rows, then with the tuned records), then PyTorch SDPA ----
if [ "$quick" = 1 ]; then
    sweep=$out/quick.sweep
    cat >"$sweep" <<'EOF'
--shape 1,2,2,64,64,32 --dtype f32
--shape 1,2,2,64,64,32 --dtype f32 --causal top-left
--shape 1,4,4,1,256,32 --dtype f16
--shape 1,4,4,1,256,32 --dtype f16 --kv-quant int8
EOF
    runs=2
else
    sweep=$src/bench/gpu_check.sweep
    runs=10
fi
if timeout 300 "$exe" bench --device "$dev" --sweep "$sweep" --runs "$runs" --warmup 2 \
    --json "$out/clattn.jsonl" >"$out/bench.txt" 2>&1; then
    step bench ok "$(wc -l <"$out/clattn.jsonl") cases"
else
    step bench failed "see bench.txt"
fi
# the earlier fused GPU form on the prefill cases, so both forms are compared in one run
grep -v -- "--kv-quant" "$sweep" | grep -v -E -- "--shape [0-9]+,[0-9]+,[0-9]+,[1-8]," >"$out/prefill.sweep"
if timeout 300 env CLATTN_TUNING_FILE="$(form_file fused gpu)" "$exe" bench --device "$dev" --path fused \
    --sweep "$out/prefill.sweep" --runs "$runs" --warmup 2 --json "$out/clattn-form-gpu.jsonl" \
    >"$out/bench-form-gpu.txt" 2>&1; then
    step bench-form-gpu ok "$(wc -l <"$out/clattn-form-gpu.jsonl") cases"
else
    step bench-form-gpu failed "see bench-form-gpu.txt"
fi
if [ -s "$out/tuning.json" ]; then
    if CLATTN_TUNING_FILE=$out/tuning.json timeout 300 "$exe" bench --device "$dev" --sweep "$sweep" \
        --runs "$runs" --warmup 2 --json "$out/clattn-tuned.jsonl" >"$out/bench-tuned.txt" 2>&1; then
        step bench-tuned ok "$(wc -l <"$out/clattn-tuned.jsonl") cases"
    else
        step bench-tuned failed "see bench-tuned.txt"
    fi
else
    step bench-tuned skipped "no tuning file written"
fi
if [ -n "${GPU_CHECK_TORCH_JSONL:-}" ]; then
    # tests: SDPA figures from a file, so the summary's ratios are checked without a GPU
    cp "$GPU_CHECK_TORCH_JSONL" "$out/torch.jsonl"
    step torch ok "from $GPU_CHECK_TORCH_JSONL"
elif python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    if timeout 180 python3 "$src/bench/torch_sdpa.py" "$sweep" >"$out/torch.jsonl" 2>"$out/torch.log"; then
        step torch ok "$(wc -l <"$out/torch.jsonl") cases"
    else
        step torch failed "see torch.log"
    fi
else
    step torch skipped "python3 with torch and CUDA is not available"
fi

python3 "$src/bench/gpu_check_summary.py" "$out" "$dev" "$quick"
