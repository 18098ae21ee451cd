#!/usr/bin/env bash
# The capacity study on a GPU machine in one command per part (docs/gpu.md,
# "The one command").
#
#   bash benchmarks/on_gpu.sh prepare --cifar10=PATH   # CPU machine, network
#   bash benchmarks/on_gpu.sh run --part=1             # GPU machine, .gpu/
#   bash benchmarks/on_gpu.sh run --part=2             #   carried, no network
#   bash benchmarks/on_gpu.sh rehearse --cifar10=PATH  # CPU: the GPU's software
#
# prepare  fills the ignored folder .gpu/ with Python 3.12 manylinux x86-64
#          wheels of the runtime dependencies the GPU machine lacks and a copy
#          of the CIFAR-10 archive; the working tree and .gpu/ together must
#          stay within the 64 MiB that travels, or it fails saying so.
# run      [--smoke] [--part=1|2] [--budget_s=N] [--records=FILE]
#          [--out=DIR, default $OUT]: installs the wheels offline into
#          .gpu_run/site (ICCKD_GPU_STATE names another folder) and runs
#          the part (benchmarks/on_gpu.py says what each part does and what
#          it writes).
# rehearse builds (once; cached in .gpu_rehearsal/venv) a Python 3.12 virtual
#          environment holding the GPU machine's packages and none of those
#          it lacks, runs prepare, then run --smoke --part=1 and --part=2
#          without a network (unshare -n; needs root), a --part=2 rerun on a
#          fresh machine state given part 2's records, and checks $OUT.
#
# PYTHON names the interpreter (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
MAX_CARRY_BYTES=$((64 * 1024 * 1024))

# What pyproject.toml asks for that the GPU machine lacks and a run of the
# capacity configs imports: ml_collections (every config) and tensorboardX
# (metric_writer.py). Their own dependencies (absl-py, PyYAML; numpy,
# packaging, protobuf) are there, hence --no-deps. Not carried, because
# these configs never import them: grain and array-record (the streaming
# input path, imported only for config.input.mode streamed), and
# tensorflow-datasets (only data/tfds.py's sets) with its heavy
# dependencies; portpicker is imported by nothing of the project; submitit
# only by a SLURM submission, simplejpeg only by input.decode='fast'.
CARRIED=("ml-collections>=0.1.1" "tensorboardX>=2.6")

# The GPU machine's packages (as its description lists them), for the
# rehearsal. PyTorch is left out: PyPI's x86-64 build for Python 3.12 is
# the CUDA one, several GB, so the rehearsal says torch.compile "not run".
GPU_PACKAGES=(
  jax==0.11.2 jaxlib==0.11.2 flax optax orbax-checkpoint chex absl-py numpy
  Pillow matplotlib scipy pandas protobuf etils cloudpickle pyyaml tensorstore
  msgpack rich opencv-python-headless
)
GPU_LACKS=(ml_collections tensorboardX grain array_record portpicker
  tensorflow_datasets submitit simplejpeg)
PYTHON312="${PYTHON312:-/root/.pyenv/versions/3.12.1/bin/python3}"

die() {
  echo "error: $*" >&2
  exit 2
}

cifar10_arg() {  # --cifar10=PATH among "$@", else $CIFAR10
  local path="${CIFAR10:-}"
  for arg in "$@"; do
    case "$arg" in
      --cifar10=*) path="${arg#--cifar10=}" ;;
      *) die "unknown argument $arg; valid: --cifar10=PATH" ;;
    esac
  done
  [[ -n "$path" ]] || die "--cifar10=PATH (CIFAR-10's JPEG archive) is required"
  [[ -f "$path" ]] || die "--cifar10=$path is not a file"
  echo "$path"
}

prepare() {
  local cifar10
  cifar10="$(cifar10_arg "$@")"
  rm -rf "$ROOT/.gpu/wheels"
  mkdir -p "$ROOT/.gpu/wheels" "$ROOT/.gpu/data"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --dest "$ROOT/.gpu/wheels" "${CARRIED[@]}"
  install -m 0644 "$cifar10" "$ROOT/.gpu/data/cifar10-jpeg.tar.gz"
  local tree gpu
  tree=$(cd "$ROOT" && git ls-files -z | xargs -0 stat -c %s 2>/dev/null |
    awk '{s += $1} END {print s + 0}')
  gpu=$(du -sb "$ROOT/.gpu" | cut -f1)
  ls -l "$ROOT/.gpu/wheels" "$ROOT/.gpu/data" | grep -v '^total'
  if ((tree + gpu > MAX_CARRY_BYTES)); then
    echo "error: the working tree ($tree bytes) and .gpu/ ($gpu bytes) exceed" \
      "the 64 MiB that travels to the GPU machine" >&2
    exit 1
  fi
  echo "prepared: .gpu/ $((gpu / 1024)) KiB + working tree $((tree / 1024))" \
    "KiB of 65536 KiB; carry .gpu to the GPU machine"
}

run() {
  exec "$PYTHON" "$ROOT/benchmarks/on_gpu.py" run "$@"
}

rehearsal_venv() {  # prints the venv's python, building the venv once
  local venv="$ROOT/.gpu_rehearsal/venv"
  local want="${GPU_PACKAGES[*]}"
  if [[ ! -f "$venv/.ready" || "$(cat "$venv/.ready")" != "$want" ]]; then
    rm -rf "$venv"
    "$PYTHON312" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install -q "${GPU_PACKAGES[@]}" >&2
    echo "$want" >"$venv/.ready"
  fi
  "$venv/bin/python" - "${GPU_LACKS[@]}" >&2 <<'EOF'
import importlib.util, sys
import jax
there = [m for m in sys.argv[1:] if importlib.util.find_spec(m)]
if there:
  sys.exit(f'error: the rehearsal venv holds {there}, which the GPU lacks')
print(f'rehearsal venv: Python {sys.version.split()[0]}, jax {jax.__version__}'
      f', none of {sys.argv[1:]}')
EOF
  echo "$venv/bin/python"
}

rehearse() {
  local start cifar10 py out again
  start=$(date +%s)
  cifar10="$(cifar10_arg "$@")"
  py="$(rehearsal_venv)"
  PYTHON="$py" bash "$ROOT/benchmarks/on_gpu.sh" prepare --cifar10="$cifar10"
  out="$(mktemp -d /tmp/on_gpu_out.XXXXXX)"
  again="$(mktemp -d /tmp/on_gpu_again.XXXXXX)"
  # The rehearsal's own machine state (not .gpu_run/), fresh as on a new
  # GPU machine.
  local state="$ROOT/.gpu_rehearsal/state"
  rm -rf "$state"
  local offline=(unshare -n env PYTHON="$py" ICCKD_GPU_STATE="$state")
  # Part 1 gets 360 s, not 240: on 2 CPU cores its smoke study leaves the
  # throughput table too little of 240 s, and the table is rehearsed too.
  "${offline[@]}" OUT="$out" bash "$ROOT/benchmarks/on_gpu.sh" run --smoke \
    --part=1 --budget_s=360
  "${offline[@]}" OUT="$out" bash "$ROOT/benchmarks/on_gpu.sh" run --smoke \
    --part=2
  "$py" "$ROOT/benchmarks/on_gpu.py" check_out "$out" --parts=12
  local code=0
  "${offline[@]}" OUT="$out" bash "$ROOT/benchmarks/on_gpu.sh" run --smoke \
    --part=2 2>"$again/refusal" || code=$?
  ((code == 2)) || die "a second run into one \$OUT exited $code, not 2"
  echo "refused as it should: $(cat "$again/refusal")"
  # The next GPU machine: nothing of this one's state, part 2's records.
  rm -rf "$state"
  "${offline[@]}" OUT="$again/out" bash "$ROOT/benchmarks/on_gpu.sh" run \
    --smoke --part=2 --records="$out/part2/records.tar.gz"
  "$py" "$ROOT/benchmarks/on_gpu.py" check_out "$again/out" --parts=2
  echo "rehearsal passed: \$OUT in $out (and $again/out), wall time" \
    "$(($(date +%s) - start)) s"
}

verb="${1:-}"
shift || true
case "$verb" in
  prepare) prepare "$@" ;;
  run) run "$@" ;;
  rehearse) rehearse "$@" ;;
  *) die "unknown verb '${verb}'; valid: prepare, run, rehearse" ;;
esac
