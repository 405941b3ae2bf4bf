#!/usr/bin/env bash
# Runs restmcts_jax on a Cloud TPU VM slice through gcloud; see --help and
# launch/README.md.
set -euo pipefail

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "tpu.sh: needs bash >= 4.4 (on macOS: brew install bash)" >&2
  exit 1
fi

readonly USAGE="usage: launch/tpu.sh COMMAND [options] [-- restmcts_jax.main flags]

Commands:
  create   create the TPU VM slice
  setup    clone --repo on every worker, make a Python >= 3.11 venv and
           pip install -e . and jax[tpu] (rerun to pull and reinstall);
           with --bucket, install gcsfuse and mount the bucket at /gcs/NAME
  run      start restmcts_jax.main under nohup on every worker, first
           mounting the workdir's bucket where it is not mounted
  logs     follow one worker's log (--worker, default 0)
  stop     end the job on every worker
  copy     copy the workdir and one worker's log to --dest
  delete   delete the slice
  all      create, setup, run

Options (environment variable in brackets):
  --name NAME              TPU VM name [TPU_NAME]
  --zone ZONE              zone, e.g. us-central2-b [TPU_ZONE]
  --project PROJECT        project; default: gcloud's [TPU_PROJECT]
  --accelerator-type TYPE  v4-8, v4-32, v5litepod-8 (v5e), v5p-8, v6e-8, ...;
                           default v4-8 [TPU_ACCELERATOR_TYPE]
  --version VERSION        runtime version; default per generation: v2-v4
                           tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite,
                           v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e [TPU_VERSION]
  --spot, --preemptible    create a Spot / preemptible slice
  --repo URL               git URL to clone; default: this checkout's
                           origin [TPU_REPO]
  --config FILE            config in the checkout; default configs/game24.py
                           [TPU_CONFIG]
  --bucket NAME            Cloud Storage bucket mounted at /gcs/NAME on
                           every worker [TPU_BUCKET]
  --workdir DIR            /gcs/BUCKET/PATH (gs://BUCKET/PATH is read as
                           that), or a path on the workers relative to the
                           checkout [TPU_WORKDIR]
  --worker N               worker for logs and copy; default 0
  --dest DIR               where copy puts results; default runs/NAME [TPU_DEST]
  --dry-run                print the commands instead of running them
  -h, --help               print this help

Flags after -- go to restmcts_jax.main, e.g. -- --config.iterations=8.
Rerunning run with the same --workdir resumes from its last checkpoint."

# On every worker: the checkout (in the home directory), the job's log and pid.
readonly CHECKOUT=restmcts_jax
readonly LOG=restmcts_jax.log
readonly PID=restmcts_jax.pid

die() {
  echo "tpu.sh: $*" >&2
  echo "Try 'launch/tpu.sh --help'." >&2
  exit 2
}

name=${TPU_NAME:-}
zone=${TPU_ZONE:-}
project=${TPU_PROJECT:-}
accelerator_type=${TPU_ACCELERATOR_TYPE:-v4-8}
version=${TPU_VERSION:-}
repo=${TPU_REPO:-}
config=${TPU_CONFIG:-configs/game24.py}
bucket=${TPU_BUCKET:-}
workdir=${TPU_WORKDIR:-}
worker=0
dest=${TPU_DEST:-}
spot=0
preemptible=0
dry_run=0
command=
main_flags=()

set_option() {
  case $1 in
    --name) name=$2 ;;
    --zone) zone=$2 ;;
    --project) project=$2 ;;
    --accelerator-type) accelerator_type=$2 ;;
    --version) version=$2 ;;
    --repo) repo=$2 ;;
    --config) config=$2 ;;
    --bucket) bucket=$2 ;;
    --workdir) workdir=$2 ;;
    --worker) worker=$2 ;;
    --dest) dest=$2 ;;
    *) die "unknown flag $1" ;;
  esac
}

while (($#)); do
  case $1 in
    --) shift; main_flags=("$@"); break ;;
    -h | --help) echo "$USAGE"; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --spot) spot=1 ;;
    --preemptible) preemptible=1 ;;
    --*=*) set_option "${1%%=*}" "${1#*=}" ;;
    --*)
      (($# > 1)) && [[ $2 != -* ]] || die "$1 needs a value"
      set_option "$1" "$2"
      shift
      ;;
    -*) die "unknown flag $1" ;;
    *)
      [[ -z $command ]] || die "one command expected, got '$command' and '$1'"
      command=$1
      ;;
  esac
  shift
done

# Prints a command as shell input, quoting only the words that need it.
show() {
  local safe='^[A-Za-z0-9_./:=@%+,-]+$' flag='^(--[a-z-]+=)(.*)$' word words=()
  for word; do
    if [[ $word =~ $safe ]]; then
      words+=("$word")
    elif [[ $word =~ $flag ]]; then
      words+=("${BASH_REMATCH[1]}${BASH_REMATCH[2]@Q}")
    else
      words+=("${word@Q}")
    fi
  done
  echo "${words[*]}"
}

# Runs a command, echoing it to stderr; under --dry-run only prints it.
run_cmd() {
  if ((dry_run)); then
    show "$@"
  else
    echo "+ $(show "$@")" >&2
    "$@"
  fi
}

require() {
  local flag
  for flag; do
    local var=${flag#--}
    [[ -n ${!var} ]] || die "$flag is required (or set TPU_${var^^})"
  done
}

tpu_vm() {
  run_cmd gcloud compute tpus tpu-vm "$@"
}

# Runs a shell script, given as steps joined with '; ', on WORKERS (a number
# or all).
on_workers() {
  local workers=$1 script=$2 step
  shift 2
  for step; do
    script+="; $step"
  done
  tpu_vm ssh "$name" "${scope[@]}" --worker="$workers" --command="$script"
}

# A step that mounts --bucket at /gcs/BUCKET unless it is mounted already
# (a worker that restarted has lost its mount).
mount_step() {
  local dir=/gcs/$bucket
  echo "if ! mountpoint -q $dir; then sudo mkdir -p $dir;" \
    "sudo chown \"\$(id -u):\$(id -g)\" $dir;" \
    "gcsfuse --implicit-dirs --rename-dir-limit=10000 $bucket $dir; fi"
}

create() {
  require --name --zone
  if [[ -z $version ]]; then
    case ${accelerator_type%-*} in
      v2 | v3 | v4) version=tpu-ubuntu2204-base ;;
      v5litepod) version=v2-alpha-tpuv5-lite ;;
      v5p) version=v2-alpha-tpuv5 ;;
      v6e) version=v2-alpha-tpuv6e ;;
    esac
  fi
  local provisioning=()
  if ((spot)); then
    provisioning=(--spot)
  elif ((preemptible)); then
    provisioning=(--preemptible)
  fi
  tpu_vm create "$name" "${scope[@]}" --accelerator-type="$accelerator_type" \
    --version="$version" "${provisioning[@]}"
}

# The scripts below expand their $ on the workers, so shellcheck's warning
# about $ in single quotes does not apply.
# shellcheck disable=SC2016
setup() {
  require --name --zone
  if [[ -z $repo ]]; then
    repo=$(git -C "$(dirname "$0")" remote get-url origin 2>/dev/null) ||
      die "--repo is required (or set TPU_REPO): this checkout has no origin"
  fi
  local quoted_repo bucket_steps=()
  printf -v quoted_repo '%q' "$repo"
  if [[ -n $bucket ]]; then
    # gcsfuse from Google's apt repository, as its install guide has it.
    bucket_steps=(
      'if ! command -v gcsfuse > /dev/null'
      'then export GCSFUSE_REPO=gcsfuse-$(lsb_release -c -s)'
      'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt $GCSFUSE_REPO main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null'
      'sudo curl -fsSL -o /usr/share/keyrings/cloud.google.asc https://packages.cloud.google.com/apt/doc/apt-key.gpg'
      'sudo apt-get update -q'
      'sudo apt-get install -y -q -o DPkg::Lock::Timeout=600 gcsfuse'
      'fi'
      "$(mount_step)")
  fi
  # TPU VM images up to Ubuntu 22.04 ship Python 3.10; jax needs >= 3.11.
  on_workers all \
    'set -e' \
    "if [ -d $CHECKOUT ]" \
    "then git -C $CHECKOUT pull --ff-only" \
    "else git clone $quoted_repo $CHECKOUT" \
    'fi' \
    "cd $CHECKOUT" \
    'if python3 -c "import sys; sys.exit(sys.version_info < (3, 11))"' \
    'then py=python3' \
    'else sudo apt-get update -q' \
    'sudo apt-get install -y -q -o DPkg::Lock::Timeout=600 python3.11 python3.11-venv' \
    'py=python3.11' \
    'fi' \
    '"$py" -m venv .venv' \
    '.venv/bin/pip install -q -U pip' \
    '.venv/bin/pip install -q -e .' \
    '.venv/bin/pip install -q -U "jax[tpu]"' \
    "${bucket_steps[@]}"
}

run() {
  require --name --zone --workdir
  local job mount_steps=()
  if [[ $workdir == /gcs/[!/]* ]]; then
    mount_steps=("$(mount_step)")
  else
    echo "tpu.sh: warning: --workdir=$workdir is not in a bucket: results" \
      "stay on the workers and go with the slice, and the workers of a" \
      "multi-host slice do not share it" >&2
  fi
  # -u: print()ed metrics reach the log as they come, not when a buffer fills.
  # --distributed: the workers find each other (JAX detects the TPU slice).
  printf -v job '%q ' .venv/bin/python -u -m restmcts_jax.main --distributed \
    --config="$config" --workdir="$workdir" "${main_flags[@]}"
  # The pid file keeps a second job from racing the first on one workdir.
  on_workers all \
    'set -e' \
    "cd $CHECKOUT" \
    "if [ -f ~/$PID ] && kill -0 \"\$(cat ~/$PID)\" 2>/dev/null" \
    "then echo \"the job is running; launch/tpu.sh stop ends it\" >&2" \
    'exit 1' \
    'fi' \
    "${mount_steps[@]}" \
    "nohup ${job}>> ~/$LOG 2>&1 < /dev/null & echo \$! > ~/$PID"
}

stop() {
  require --name --zone
  on_workers all "if [ -f ~/$PID ]" "then kill \"\$(cat ~/$PID)\" || true" \
    "rm ~/$PID" 'fi'
}

logs() {
  require --name --zone
  on_workers "$worker" "tail -n 200 -F ~/$LOG"
}

copy() {
  require --name --zone --workdir
  local target=${dest:-runs/$name} run_dir=${workdir%/}
  run_cmd mkdir -p "$target"
  if [[ $run_dir == /gcs/[!/]* ]]; then
    run_cmd gcloud storage rsync --recursive "gs://${run_dir#/gcs/}" \
      "$target/${run_dir##*/}"
  else
    # run starts the job in the checkout, so relative workdirs start there.
    [[ $run_dir == /* ]] || run_dir=$CHECKOUT/$run_dir
    tpu_vm scp "${scope[@]}" --worker="$worker" --recurse \
      "$name:$run_dir" "$target/"
  fi
  tpu_vm scp "${scope[@]}" --worker="$worker" "$name:$LOG" \
    "$target/worker$worker.log"
}

delete() {
  require --name --zone
  tpu_vm delete "$name" "${scope[@]}"
}

case $command in
  create | setup | run | logs | stop | copy | delete | all) ;;
  '') die "a command is required: create, setup, run, logs, stop, copy," \
    "delete or all" ;;
  *) die "unknown command '$command' (expected create, setup, run, logs," \
    "stop, copy, delete or all)" ;;
esac
[[ $accelerator_type =~ ^(v2|v3|v4|v5litepod|v5p|v6e)-[0-9]+$ ]] ||
  die "--accelerator-type: unknown type '$accelerator_type' (expected" \
    "v2-N, v3-N, v4-N, v5litepod-N for v5e, v5p-N or v6e-N)"
[[ $worker =~ ^[0-9]+$ ]] || die "--worker: expected a number, got '$worker'"
((spot + preemptible < 2)) || die "--spot and --preemptible exclude each other"
# The job writes files, so a workdir in a bucket is the bucket's mount on the
# workers: gs://BUCKET/PATH is read as /gcs/BUCKET/PATH, and BUCKET is the
# bucket to mount.
mounted=$workdir
if [[ $workdir =~ ^gs://([^/]+)(/.*)?$ ]]; then
  mounted=/gcs/${BASH_REMATCH[1]}${BASH_REMATCH[2]}
fi
[[ $mounted != *://* ]] ||
  die "--workdir: expected gs://BUCKET/PATH or a path, got '$workdir'"
if [[ $mounted =~ ^/gcs/([^/]+) ]]; then
  [[ -z $bucket || $bucket == "${BASH_REMATCH[1]}" ]] ||
    die "--workdir=$workdir is in bucket ${BASH_REMATCH[1]}, not in" \
      "--bucket=$bucket"
  bucket=${BASH_REMATCH[1]}
fi
[[ -z $bucket || $bucket =~ ^[a-z0-9][a-z0-9._-]*[a-z0-9]$ ]] ||
  die "'$bucket' (from --bucket or --workdir) is not a bucket name such as" \
    "my-bucket"
if [[ $mounted != "$workdir" && ($command == run || $command == all) ]]; then
  echo "tpu.sh: note: --workdir=$workdir is read as $mounted, where the" \
    "bucket is mounted on the workers" >&2
fi
workdir=$mounted
scope=(--zone="$zone")
[[ -z $project ]] || scope+=(--project="$project")
((${#main_flags[@]} == 0)) || [[ $command == run || $command == all ]] ||
  die "flags after -- go to run or all, not $command"

if [[ $command == all ]]; then
  create
  setup
  run
else
  "$command"
fi
