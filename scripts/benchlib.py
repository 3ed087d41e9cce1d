"""What the benchmarks written in Python share: running children (timed, and
killed if the script fails), the wasm32-wasi C toolchain from Debian, and
wasmtime WASMTIME_VERSION for the baselines. Imported by scripts/bench-compute
and scripts/bench-fs."""
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MVM = os.path.join(ROOT, "target", "release", "mvm")
WASMTIME_VERSION = "48.0.8"
APT_PACKAGES = ("clang-14", "lld-14", "wasi-libc", "libclang-rt-14-dev-wasm32")
CLANG = "clang-14"
WASM_CFLAGS = ["--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-Wl,--strip-all"]
TIMEOUT_S = 1800  # per run, for any runner (the jobs' own timeout_s is below it)
STARTED = []  # every Popen a script made, for the cleanup in its main()
CHILD_ENV = dict(os.environ)  # a script's main() points TMPDIR into its temporary directory


def say(text):
    print(f"{os.path.basename(sys.argv[0])}: {text}", file=sys.stderr, flush=True)


def spawn(argv, stdout, stderr, group=False, **kwargs):
    """Popen, remembered for kill_all; with group=True, in a process group of its own."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                         start_new_session=group, env=CHILD_ENV, **kwargs)
    p.own_group = group
    STARTED.append(p)
    return p


def kill_all(procs):
    for p in procs:
        if p.poll() is None:
            try:
                if p.own_group:
                    os.killpg(p.pid, signal.SIGKILL)
                else:
                    p.kill()
            except ProcessLookupError:
                pass
    for p in procs:
        p.wait()
        for f in (p.stdout, p.stderr):
            if f:
                f.close()


def timed(argv, cwd=None):
    """Runs argv to its exit: (seconds from start to exit, stdout, stderr). Fails the script unless it exits 0."""
    start = time.perf_counter()
    p = spawn(argv, subprocess.PIPE, subprocess.PIPE, cwd=cwd)
    try:
        out, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        sys.exit(f"{' '.join(argv)} still running after {TIMEOUT_S} s")
    seconds = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited with {p.returncode}, stdout {out[:300]!r}, stderr:\n"
                 f"{err.decode(errors='replace')[-3000:]}")
    return seconds, out, err


def ensure_apt_packages(install):
    missing = []
    for pkg in APT_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            missing.append(pkg)
    if not missing:
        return
    if not install:
        sys.exit(f"missing Debian packages {' '.join(missing)}: run scripts/setup "
                 f"(or apt-get install {' '.join(missing)})")
    say(f"installing {' '.join(missing)}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(CHILD_ENV, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def wasmtime_version(path):
    try:
        r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    words = r.stdout.split()
    return words[1] if r.returncode == 0 and len(words) > 1 else None


def find_wasmtime(install):
    """A wasmtime of WASMTIME_VERSION from PATH or ~/.cargo/bin, installed with cargo if need be; or None."""
    cargo_home = os.environ.get("CARGO_HOME") or os.path.join(os.path.expanduser("~"), ".cargo")
    cargo_bin = os.path.join(cargo_home, "bin", "wasmtime")
    seen = []
    for candidate in (shutil.which("wasmtime"), cargo_bin):
        if candidate and os.access(candidate, os.X_OK):
            version = wasmtime_version(candidate)
            if version == WASMTIME_VERSION:
                return candidate
            seen.append(f"{candidate} is {version}")
    if not install:
        say(f"no wasmtime {WASMTIME_VERSION} ({'; '.join(seen) or 'none found'}) and --no-install: "
            "the wasmtime columns are missing")
        return None
    say(f"no wasmtime {WASMTIME_VERSION} ({'; '.join(seen) or 'none found'}): running `cargo install "
        f"wasmtime-cli --locked --version {WASMTIME_VERSION}` (one time; 20+ minutes on 2 cores)")
    # Its own process group: an interruption ends cargo and every rustc it started.
    p = spawn(["cargo", "install", "wasmtime-cli", "--locked", "--version", WASMTIME_VERSION],
              subprocess.DEVNULL, None, group=True)
    p.wait()
    if p.returncode != 0 or wasmtime_version(cargo_bin) != WASMTIME_VERSION:
        say("cargo install wasmtime-cli failed: the wasmtime columns are missing")
        return None
    return cargo_bin
