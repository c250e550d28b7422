"""Speed and memory of the exported model (TF1 Session, as TensorFlow Serving runs it) against the
reference TF2 tutorial loop (tests/reference.py: Keras VGG19 + Keras Adam), side by side.

Measures, each in a fresh process (see workers.py) watched for memory:
- time per optimisation step at each size, its GFLOP/s, and the machine's matmul rates to compare;
- time to reference quality: the reference runs N Adam steps, then each exported model runs in
  chunks, in the signature's default mode, until its loss reaches the reference's final loss;
- peak resident memory of each of those processes.

    python benchmarks/benchmark.py --quick      # a few minutes
    python benchmarks/benchmark.py              # full: 256/512/1024 px, 1000 reference steps at 512 px

See docs/benchmarks.md for what each column means and measured figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
WORKERS = HERE / "workers.py"
PROJECT_ENV = "NST_BENCHMARK_PROJECT"  # workers.py imports nst_model from this checkout when set
WEIGHTS_ENV = "NST_VGG19_WEIGHTS"  # the project's variable (nst_model.vgg.WEIGHTS_ENV)

REFERENCE_OBJECTIVE = {"style_balance": "reference"}  # fed to every model run (an older export drops it)
PRESETS: dict[str, dict] = {
    "full": {"sizes": [256, 512, 1024], "steps": 3, "repeats": 3, "quality_size": 512, "quality_steps": 1000},
    "quick": {"sizes": [256, 512], "steps": 3, "repeats": 3, "quality_size": 256, "quality_steps": 50},
}

# VGG19's convolutions up to block5_conv2, the deepest layer the objective uses, as
# (channels out, convolutions) per block; block b runs at 1/4**(b-1) of the input's pixels.
VGG19_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 2))


def macs_per_pixel() -> int:
    """Multiply-adds of the 3x3 convolutions per input pixel: sum of 9*Cin*Cout / 4**pools."""
    total, channels_in = 0, 3
    for pools, (channels_out, convs) in enumerate(VGG19_BLOCKS):
        for _ in range(convs):
            total += 9 * channels_in * channels_out // 4**pools
            channels_in = channels_out
    return total


MACS_PER_PIXEL = macs_per_pixel()  # 370,368
FORMULA = (
    "GFLOP per step = 2 passes (forward, backward to the input) x 2 FLOP per multiply-add\n"
    f"  x {MACS_PER_PIXEL:,} multiply-adds per pixel (VGG19 to block5_conv2) x height x width / 1e9"
    " = 291.3 at 512x384;\n  only the image's gradient is needed, not the weights', so the backward pass"
    " costs about one forward"
)


def gflop_per_step(height: int, width: int) -> float:
    """See FORMULA: 4 * 370368 * 512 * 384 / 1e9 = 291.3. Gram, loss and Adam work is left out (<1%)."""
    return 2 * 2 * MACS_PER_PIXEL * height * width / 1e9


# ---- the machine -----------------------------------------------------------------------------


def busy_seconds() -> float:
    """CPU seconds all processes on this machine have used (non-idle time in /proc/stat)."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def background_cores(seconds: float = 1.0) -> float:
    """How many cores other processes keep busy now, sampled over `seconds`."""
    before = busy_seconds()
    time.sleep(seconds)
    return (busy_seconds() - before) / seconds


def wait_until_quiet(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait_s) until other processes use under `threshold` cores; returns their use.

    Timings on a 2-core machine shared with test runs are meaningless; this lets a long benchmark
    slot its measurements between them.
    """
    deadline = time.monotonic() + max_wait_s
    load = background_cores()
    while load > threshold and time.monotonic() < deadline:
        time.sleep(5)
        load = background_cores()
    return load


def machine() -> dict:
    info = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_total_mib() / 1024, 1),
        "isa": sorted(f for f in flags if f.startswith(("avx512", "amx"))),
        "python": platform.python_version(),
        "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
    }


def memory_total_mib() -> float:
    line = next(x for x in pathlib.Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal:"))
    return int(line.split()[1]) / 1024


def vm_rss_mib(pid: int) -> float:
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024


def project_revision(root: pathlib.Path) -> str:
    """The measured checkout's commit, marked when it has uncommitted changes to tracked files."""
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return commit.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


# ---- running the workers ---------------------------------------------------------------------


class Runner:
    """Starts each measurement in a fresh process, watches its memory, collects its result."""

    def __init__(self, workdir: pathlib.Path, memory_limit_mib: float, quiet_wait_s: float, project: str | None):
        self.workdir = workdir
        self.memory_limit_mib = memory_limit_mib
        self.quiet_wait_s = quiet_wait_s
        self.project = project
        self.count = 0

    def __call__(self, kind: str, label: str, timing: bool = True, **args) -> dict:
        """The worker's result dict plus watch facts; on failure {"error": ...} and the facts.

        `timing`: wait for a quiet machine first (with --quiet-wait), as timings need.
        """
        self.count += 1
        stem = self.workdir / f"{self.count:02d}-{label}"
        load_before = wait_until_quiet(self.quiet_wait_s) if timing and self.quiet_wait_s else background_cores(0.5)
        print(f"  {label} ...", end="", flush=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        if self.project:
            env[PROJECT_ENV] = self.project
        busy_before, started = busy_seconds(), time.perf_counter()
        with open(f"{stem}.log", "w") as log:
            command = [sys.executable, str(WORKERS), kind, json.dumps(args), f"{stem}.json"]
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            watched_peak, killed = self._watch(process)
        wall = time.perf_counter() - started
        facts = {"wall_s": wall, "watched_peak_rss_mib": watched_peak, "background_cores_before": load_before}
        if process.returncode != 0 or killed:
            tail = pathlib.Path(f"{stem}.log").read_text().strip().splitlines()[-3:]
            reason = f"killed at {watched_peak:.0f} MiB RSS (limit {self.memory_limit_mib:.0f})" if killed else tail
            print(f" FAILED ({wall:.0f} s): {reason}")
            return {"error": reason, "returncode": process.returncode, **facts}
        result = json.loads(pathlib.Path(f"{stem}.json").read_text())
        # Machine CPU time the worker did not use, per second: other processes competing with it.
        facts["background_cores"] = max(0.0, (busy_seconds() - busy_before - result["cpu_s"]) / wall)
        print(f" {wall:.0f} s")
        return {**result, **facts}

    def _watch(self, process: subprocess.Popen) -> tuple[float, bool]:
        """Poll the child's RSS until it exits; kill it past the memory limit. (peak MiB, killed)"""
        peak, killed = 0.0, False
        while process.poll() is None:
            rss = vm_rss_mib(process.pid)
            peak = max(peak, rss)
            if rss > self.memory_limit_mib and not killed:
                process.send_signal(signal.SIGKILL)
                killed = True
            time.sleep(0.2)
        return peak, killed


# ---- the benchmark ---------------------------------------------------------------------------


def step_times(run: Runner, args: argparse.Namespace, prepared: dict, pixels_dir: str) -> list[dict]:
    """Per size: the reference, then each exported model with Adam (one gradient per step, like
    the reference's; L-BFGS's line search may take more), so that GFLOP/s are comparable."""
    rows = []
    for size in args.sizes:
        height, width = prepared["shapes"][str(size)]
        common = {"pixels_dir": pixels_dir, "size": size, "steps": args.steps, "repeats": args.repeats}
        contenders = {"reference": run("reference_steps", f"reference-{size}px", weights=args.weights, **common)}
        for precision, model in prepared["models"].items():
            contenders[f"session {precision}"] = run(
                "session_steps",
                f"session-{precision}-{size}px",
                model_path=model["path"],
                options={**REFERENCE_OBJECTIVE, "optimizer": "adam"},
                **common,
            )
        rows.append(
            {
                "size": size,
                "height": height,
                "width": width,
                "gflop_per_step": gflop_per_step(height, width),
                "contenders": contenders,
            }
        )
    return rows


def time_to_quality(run: Runner, args: argparse.Namespace, prepared: dict, pixels_dir: str) -> dict:
    """The reference's final loss after N steps, then each model's time to reach it."""
    common = {"pixels_dir": pixels_dir, "size": args.quality_size, "chunk": args.chunk}
    reference = run(
        "reference_quality",
        f"quality-reference-{args.quality_steps}steps",
        weights=args.weights,
        steps=args.quality_steps,
        **common,
    )
    result = {"size": args.quality_size, "rtol": args.quality_rtol, "contenders": {"reference": reference}}
    if "error" in reference:
        return result
    target = reference["final_loss"] * (1 + args.quality_rtol)
    for precision, model in prepared["models"].items():
        for optimizer in args.quality_optimizers:
            # The reference's objective: its style balance, whatever the export's default.
            options = {**REFERENCE_OBJECTIVE, **({} if optimizer == "default" else {"optimizer": optimizer})}
            outcome = run(
                "session_quality",
                f"quality-session-{precision}-{optimizer}",
                model_path=model["path"],
                content=args.content,
                style=args.style,
                options=options,
                target=target,
                max_steps=int(args.quality_cap * args.quality_steps),
                **common,
            )
            if "error" not in outcome:
                outcome["time_ratio"] = outcome["seconds"] / reference["seconds"]
            result["contenders"][f"session {precision} {optimizer}"] = outcome
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="development setting: " + json.dumps(PRESETS["quick"]))
    add = parser.add_argument
    add("--sizes", type=int, nargs="*", help=f"longest sides to time steps at; none: skip ({PRESETS['full']['sizes']})")
    add("--steps", type=int, help="steps per timed call (model) or timed run (reference) (3)")
    add("--repeats", type=int, help="timed repeats per size and contender; medians are reported (3)")
    add(
        "--precisions",
        nargs="+",
        default=["float32", "bfloat16"],
        help="export one model per VGG precision (float32 bfloat16)",
    )
    add("--quality-size", type=int, help="longest side for the time-to-quality run (512)")
    add("--quality-steps", type=int, help="reference steps that set the quality; 0: skip (1000)")
    add(
        "--quality-optimizers",
        nargs="+",
        default=["default"],
        help="'default' (the signature's), adam or lbfgs (default)",
    )
    add("--quality-cap", type=float, default=3.0, help="a model stops at this many times the reference's steps (3)")
    add("--quality-rtol", type=float, default=1e-3, help="reached when loss <= reference loss * (1 + rtol) (1e-3)")
    add("--chunk", type=int, help="steps per pixels call in the quality run (default: nst_model.runner's)")
    add("--matmul-n", type=int, default=4096, help="matrix size for the matmul rates (4096)")
    add("--weights", default=os.environ.get(WEIGHTS_ENV), help=f"VGG19 .h5 weights (${WEIGHTS_ENV})")
    add("--content", help="content image (default: images/content/tubingen.jpg two levels above the weights)")
    add("--style", help="style image (default: images/style/starry_night.jpg two levels above the weights)")
    add(
        "--json",
        default=str(HERE / "results" / "latest.json"),
        help="where to write all results (benchmarks/results/latest.json)",
    )
    add("--memory-limit-gib", type=float, help="kill a measurement past this RSS (default: 85%% of RAM)")
    add("--quiet-wait", type=float, default=0, help="wait up to this many s for idle CPUs before each timing (0)")
    add("--project", help="measure the checkout in this folder (e.g. `git archive` of a commit), not this one")
    add("--project-label", help="recorded with the results, e.g. the commit a --project snapshot was made from")
    add("--keep", action="store_true", help="keep the temporary folder (exports, logs, per-worker JSON)")
    args = parser.parse_args(argv)
    for key, value in PRESETS["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.weights:
        parser.error(f"no VGG19 weights: pass --weights or set {WEIGHTS_ENV}")
    shared = pathlib.Path(args.weights).resolve().parents[1] / "images"  # the layout the tests use
    args.content = args.content or str(shared / "content" / "tubingen.jpg")
    args.style = args.style or str(shared / "style" / "starry_night.jpg")
    args.project = str(pathlib.Path(args.project).resolve()) if args.project else None
    args.memory_limit_mib = (args.memory_limit_gib * 1024) if args.memory_limit_gib else 0.85 * memory_total_mib()
    return args


def run_benchmark(args: argparse.Namespace, workdir: pathlib.Path) -> dict:
    run = Runner(workdir, args.memory_limit_mib, args.quiet_wait, args.project)
    project = pathlib.Path(args.project or HERE.parent)
    pixels_dir = workdir / "pixels"
    pixels_dir.mkdir()
    sizes = sorted({*args.sizes, *([args.quality_size] if args.quality_steps else [])})
    print("measuring (each line a fresh process):")
    prepared = run(
        "prepare",
        "export",
        timing=False,
        models_dir=str(workdir / "models"),
        precisions=args.precisions,
        weights=args.weights,
        content=args.content,
        style=args.style,
        sizes=sizes,
        pixels_dir=str(pixels_dir),
    )
    if "error" in prepared:
        raise SystemExit(f"export failed: {prepared['error']}")
    args.chunk = args.chunk or prepared["default_chunk"]
    results = {
        "command": " ".join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "keep")},
        "project": {"path": str(project), "revision": args.project_label or project_revision(project)},
        "machine": {**machine(), "tensorflow": prepared["tensorflow"]},
        "flop_formula": FORMULA,
        "export": prepared,
        "matmul": run("matmul", f"matmul-{args.matmul_n}", n=args.matmul_n, repeats=5),
        "sizes": step_times(run, args, prepared, str(pixels_dir)),
    }
    if args.quality_steps:
        results["quality"] = time_to_quality(run, args, prepared, str(pixels_dir))
    return results


# ---- the report ------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(results: dict) -> str:
    m = results["machine"]
    rates = {k: v["gflop_per_s"] for k, v in results["matmul"].get("rates", {}).items()}
    defaults = results["export"].get("pixels_defaults", {})
    lines = [
        f"project {results['project']['path']} at {results['project']['revision']}",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; TensorFlow {m['tensorflow']}",
        f"CPU flags: {' '.join(m.get('isa', [])) or 'no AVX-512 or AMX'} (figures compare only within one run)",
        f"matmul {results['matmul'].get('n')}^2 (median of 5): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()),
        results["flop_formula"],
        "",
        "Time per step (median of repeats; models run with optimizer=adam, one gradient a step like the reference),",
        "and peak RSS of a fresh process per size and contender:",
    ]
    header = (
        f"{'size':>5} {'HxW':>9} {'GFLOP':>6}  {'contender':<18} {'s/step':>7} {'GFLOP/s':>7} {'%f32mm':>6} "
        f"{'%bf16mm':>7} {'RSS MiB':>7} {'speed-up':>8} {'bg cores':>8}"
    )
    lines += [header, "-" * len(header)]
    for row in results["sizes"]:
        lines += size_lines(row, rates)
    lines.append(
        "model: exported pixels signature in the TF1 Session, (t(steps=N) - t(steps=0)) / N; reference: "
        "tests/reference.py step();\n%f32mm, %bf16mm: share of the matmul rate; speed-up: reference s/step / "
        "this s/step; bg cores: cores other processes used meanwhile (timings are only valid near 0)"
    )
    quality = results.get("quality")
    if quality:
        default_mode = ", ".join(f"{k}={defaults[k]}" for k in ("optimizer", "init") if k in defaults)
        lines += ["", *quality_lines(quality, default_mode)]
    return "\n".join([*lines, "", *goal_lines(results)])


def size_lines(row: dict, rates: dict[str, float]) -> list[str]:
    lines = []
    reference = row["contenders"]["reference"].get("per_step_s")
    for i, (name, r) in enumerate(row["contenders"].items()):
        lead = f"{row['size']:>5} {row['height']:>4}x{row['width']:<4} {row['gflop_per_step']:>6.1f}" if i == 0 else ""
        if "error" in r:
            lines.append(f"{lead:<22}  {name:<18} failed: {r['error']}")
            continue
        rate = row["gflop_per_step"] / r["per_step_s"]
        shares = [fmt(100 * rate / rates[k] if k in rates else None, ".0f") for k in ("float32", "bfloat16")]
        speedup = fmt(reference / r["per_step_s"] if reference else None, ".2f")
        lines.append(
            f"{lead:<22}  {name:<18} {r['per_step_s']:>7.3f} {rate:>7.0f} {shares[0]:>6} {shares[1]:>7} "
            f"{r['peak_rss_mib']:>7.0f} {speedup:>8} {r['background_cores']:>8.2f}"
        )
    return lines


def quality_lines(quality: dict, default_mode: str) -> list[str]:
    contenders = quality["contenders"]
    ref = contenders["reference"]
    if "error" in ref:
        return [f"time to quality: the reference run failed: {ref['error']}"]
    lines = [
        f"Time to reference quality at {quality['size']} px: the reference's loss after {ref['steps']} steps "
        f"({ref['final_loss']:.6g}, from {ref['initial_loss']:.6g}),",
        f"reached when a model's loss output <= it x (1 + {quality['rtol']:g}); models run the pixels signature "
        f"in chunks ('default': {default_mode or 'signature defaults'}):",
    ]
    header = (
        f"  {'contender':<26} {'steps':>6} {'seconds':>8} {'s/step':>7} {'evals/step':>10} {'final loss':>11} "
        f"{'reached':>7} {'time ratio':>10} {'RSS MiB':>7} {'bg cores':>8}"
    )
    lines += [header, "  " + "-" * (len(header) - 2)]
    for name, r in contenders.items():
        if "error" in r:
            lines.append(f"  {name:<26} failed: {r['error']}")
            continue
        reached = "-" if name == "reference" else ("yes" if r["reached"] else "NO")
        ratio = 1.0 if name == "reference" else r["time_ratio"]
        counts = r.get("evaluations")
        evals = fmt(sum(counts) / len(counts) if counts else (1.0 if name == "reference" else None), ".3f")
        lines.append(
            f"  {name:<26} {r['steps']:>6} {r['seconds']:>8.1f} {r['seconds'] / r['steps']:>7.3f} {evals:>10} "
            f"{r['final_loss']:>11.5g} {reached:>7} {ratio:>10.3f} {r['peak_rss_mib']:>7.0f} "
            f"{r['background_cores']:>8.2f}"
        )
    lines.append(
        f"  time ratio: seconds / the reference's; evals/step: gradients per step (the pixels output evaluations); "
        f"reference: build {ref['build_s']:.1f} s and trace {ref['trace_s']:.1f} s untimed, models: warmed with "
        "tiny requests untimed"
    )
    return lines


def goal_lines(results: dict) -> list[str]:
    """Each goal of the speed issue beside this run's figure (or why this run has none)."""
    rates = {k: v["gflop_per_s"] for k, v in results["matmul"].get("rates", {}).items()}
    isa = results["machine"].get("isa", [])
    amx = "amx_bf16" in isa
    lines = ["Goals (figure, then goal):"]
    quality = results.get("quality") or {"contenders": {}}
    reference = quality["contenders"].get("reference", {})
    setting = f"{quality.get('size')} px, {reference.get('steps')} reference steps"
    caveat = "" if setting == "512 px, 1000 reference steps" else f" [this run: {setting}; the goal's: 512 px, 1000]"
    for precision, goal in (("float32", 0.2), ("bfloat16", 0.05)):
        r = quality["contenders"].get(f"session {precision} default", {})
        note = caveat + ("" if precision == "float32" or amx else " [the goal is for CPUs with AMX; this has none]")
        figure = fmt(r.get("time_ratio"), ".3f") + (" (not reached)" if r and not r.get("reached", True) else "")
        lines.append(f"  time to quality, served default {precision}: {figure} of the reference's (<= {goal}){note}")
    for precision in ("float32", "bfloat16"):
        counts = quality["contenders"].get(f"session {precision} default", {}).get("evaluations")
        if counts:
            histogram = ", ".join(f"{n}: {counts.count(n)}" for n in sorted(set(counts)))
            lines.append(
                f"  evaluations per L-BFGS step, {precision}: mean {sum(counts) / len(counts):.3f} (<= 1.05); "
                f"steps by evaluations {histogram}"
            )
        else:
            lines.append(f"  evaluations per L-BFGS step, {precision}: - (<= 1.05) [no default run reporting them]")
    row = next((r for r in results.get("sizes", []) if r["size"] == 512), None)
    for precision, goal in (("float32", 75), ("bfloat16", 70)):
        r = row["contenders"].get(f"session {precision}", {}) if row else {}
        share = None
        if "per_step_s" in r and precision in rates:
            share = 100 * row["gflop_per_step"] / r["per_step_s"] / rates[precision]
        figure = fmt(share, ".0f")
        lines.append(f"  {precision} per step at 512 px: {figure}% of the {precision} matmul rate (>= {goal}%)")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="nst-benchmark-"))
    try:
        results = run_benchmark(args, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["total_s"] = time.perf_counter() - started
    print()
    print(report(results))
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {out} ({results['total_s'] / 60:.1f} min in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
