#!/usr/bin/env bash
# The built wheel on the oldest and the newest supported Airflow minor.
#
# Builds the sdist and the wheel (the wheel from the sdist), checks what the sdist carries, then
# for each Airflow minor makes a fresh venv, installs the BUILT WHEEL (not the checkout) with its
# test extra, and runs the test suite from this checkout against it: pytest runs from an empty
# folder, so neither the test process nor the subprocesses it starts can import the checkout,
# and LEAP_EXPECT_WHEEL=1 makes tests/test_provider_info.py fail if they did anyway. The two
# environments run concurrently. Usage: bash scripts/compat_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash scripts/bootstrap.sh >/dev/null # brings uv
UV=$ROOT/.venv/bin/uv

# The oldest minor is the declared floor's (read from the built wheel, so the two cannot drift);
# the newest is set here: raise it when Airflow releases a new minor.
NEWEST_MINOR=3.3

# Airflow's constraints files, its supported way to install, cannot be fetched here, and an
# unconstrained resolve of 3.2.x breaks Airflow itself: with fastapi>=0.137 or svcs>=26 a
# provider-free dag.test() fails (PydanticUserError, KeyError 'svcs_registry'). These pins stand
# in for the constraints file; 3.3 caps fastapi in its own metadata.
pins_for() {
  case $1 in
    3.2) echo "fastapi<0.137 svcs<26" ;;
  esac
}

# An interpreter of Python $1 if this machine has one (PATH, then pyenv), else nothing.
find_python() {
  local candidate
  for candidate in "python$1" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/"python$1"; do
    if "$candidate" -c 'import sys' >/dev/null 2>&1; then
      command -v "$candidate"
      return
    fi
  done
}

work=$(mktemp -d "${TMPDIR:-/tmp}/leap-compat-XXXXXX")
trap 'rm -rf "$work"' EXIT

started=$SECONDS
echo "== build"
"$UV" build --quiet --out-dir "$work/dist" "$ROOT"
sdist=$(echo "$work"/dist/*.tar.gz)
wheel=$(echo "$work"/dist/*.whl)
echo "   $(basename "$sdist") $(basename "$wheel")"
# The sdist carries the package, README and LICENSE, and no tests (they need the repository).
listing=$(tar -tzf "$sdist")
for want in LICENSE README.md pyproject.toml airflow_provider_leap/py.typed; do
  grep -qx "[^/]*/$want" <<<"$listing" || { echo "sdist lacks $want" >&2; exit 1; }
done
if grep -q "^[^/]*/tests/" <<<"$listing"; then
  echo "sdist carries tests/ (MANIFEST.in prunes them)" >&2
  exit 1
fi
# A file of the wheel whose name ends with $1 (python, not unzip, which a machine may lack).
wheel_file() {
  "$ROOT/.venv/bin/python" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
sys.stdout.write("".join(z.read(n).decode() for n in z.namelist() if n.endswith(sys.argv[2])))' \
    "$wheel" "$1"
}
[ -n "$(wheel_file .dist-info/licenses/LICENSE)" ] || { echo "wheel lacks LICENSE" >&2; exit 1; }
floor=$(wheel_file .dist-info/METADATA |
  sed -n 's/^Requires-Dist: apache-airflow[<>=,0-9. ]*>=\([0-9]*\.[0-9]*\).*/\1/p')
[ -n "$floor" ] || { echo "no apache-airflow floor in the wheel's metadata" >&2; exit 1; }

# One environment; run in the background, so its variables, redirection and trap are its own.
run_env() { # name python airflow_minor
  env=$work/$1 minor=$3 t0=$SECONDS
  trap 'echo $((SECONDS - t0)) >"$env.seconds"' EXIT
  exec >"$env.log" 2>&1
  "$UV" venv --quiet --python "$2" "$env"
  # Byte-compiled, as in bootstrap.sh: under PYTHONDONTWRITEBYTECODE every Airflow process
  # would compile Airflow again.
  # shellcheck disable=SC2046 # the pins are words
  "$UV" pip install --quiet --compile-bytecode --python "$env/bin/python" "$wheel[test]" \
    "apache-airflow~=$minor.0" $(pins_for "$minor")
  mkdir -p "$env/run"
  cd "$env/run" # not the checkout: nothing may import airflow_provider_leap from it
  "$env/bin/python" -c 'import sys, airflow, airflow_provider_leap as p
print("python", sys.version.split()[0], "airflow", airflow.__version__, "provider", p.__file__)'
  AIRFLOW_HOME="$env/airflow-home" "$env/bin/airflow" providers list | grep "airflow-provider-leap"
  # The 14-day simulation (about 330 dag.test() runs of the example DAG, minutes of CPU) runs in
  # the main suite only; the example DAG itself runs here in tests/test_example_dags.py.
  LEAP_EXPECT_WHEEL=1 "$env/bin/pytest" -q -p no:cacheprovider \
    -c "$ROOT/pyproject.toml" --rootdir "$ROOT" "$ROOT/tests" \
    --ignore "$ROOT/tests/test_reengagement_simulation.py"
}

# Oldest Airflow with the oldest Python, newest with the newest, where this machine has them.
oldest_py=$(find_python 3.10)
newest_py=$(find_python 3.13)
names=(oldest newest)
run_env oldest "${oldest_py:-python3}" "$floor" &
pids=($!)
run_env newest "${newest_py:-python3}" "$NEWEST_MINOR" &
pids+=($!)

status=0
for i in 0 1; do
  name=${names[$i]}
  if wait "${pids[$i]}"; then result=ok; else result=FAILED; status=1; fi
  echo "== $name: $result in $(cat "$work/$name.seconds") s"
  if [ $result = ok ]; then
    grep -E "^python |airflow-provider-leap|passed|failed" "$work/$name.log" | sed 's/^/   /'
  else
    tail -n 60 "$work/$name.log" | sed 's/^/   /'
  fi
done
echo "== compat check: $([ $status = 0 ] && echo ok || echo FAILED) in $((SECONDS - started)) s"
exit $status
