//! `cargo xtask`: glare's project automation (the one CI entry point is `cargo xtask ci`).
//!
//! ```text
//! cargo xtask ci                     everything CI checks, stopping at the first failure
//! cargo xtask stress                 the 1,000,000-seed negotiation simulator run
//! cargo xtask fuzz [--time SECS] [TARGET]   run fuzz targets (all by default)
//! cargo xtask netlab [--only N,M]    NAT/loss/relay scenarios in network namespaces
//! cargo xtask interop [--ci]         glare against Chromium, libdatachannel, libwebrtc, aiortc
//! cargo xtask bench [--smoke]        criterion benches + glare vs other stacks side by side
//! ```

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context, Result, bail};

mod bench;
mod bench_broker;
mod interop;
mod netlab;

/// Crates that must stay sans-I/O, and what each must never pull in (normal deps).
const LAYERING: &[(&str, &[&str])] = &[
    ("glare-proto", SANS_IO_FORBIDDEN),
    ("glare-negotiate", SANS_IO_FORBIDDEN),
    ("glare-rtc", RTC_FORBIDDEN),
];

/// No runtime, no WebRTC engine, no sockets, no HTTP.
const SANS_IO_FORBIDDEN: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "quinn-udp",
    "str0m",
    "hyper",
    "axum",
    "reqwest",
    "async-std",
    "smol",
];

/// str0m is allowed in glare-rtc; a runtime and sockets are not.
const RTC_FORBIDDEN: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "quinn-udp",
    "hyper",
    "axum",
    "reqwest",
    "async-std",
    "smol",
];

/// Calls that read a clock, sleep or open a socket: never in a sans-I/O crate's source.
const IMPURE_CALLS: &[&str] = &[
    "Instant::now(",
    "SystemTime::now(",
    "thread::sleep(",
    "UdpSocket::",
    "TcpStream::",
    "TcpListener::",
    "thread::spawn(",
];

/// The fuzz targets: every `[[bin]]` of fuzz/Cargo.toml (each also has a
/// `fuzz/corpus/<name>/` seed corpus), so a new target joins CI by being declared.
fn fuzz_targets() -> Result<Vec<String>> {
    let manifest = fuzz_dir().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut targets = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(value) = line.strip_prefix("name") {
            let name = value
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            targets.push(name.to_owned());
        }
    }
    if targets.is_empty() {
        bail!("no [[bin]] fuzz targets in {}", manifest.display());
    }
    Ok(targets)
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("stress") => stress(),
        Some("fuzz") => fuzz(&args[1..]),
        Some("layering") => layering(),
        Some("bench-broker") => bench_broker::run(),
        Some("netlab") => netlab::run_cli(&args[1..]),
        Some("interop") => interop::run_cli(&args[1..]),
        Some("bench") => bench::run_cli(&args[1..]),
        Some("netlab-delay") => netlab::delay(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | stress | fuzz [--time SECS] [TARGET] | layering | bench-broker [--smoke] | netlab [--only N,M] [--all] | interop [--ci] [--cells LIST] | bench [--smoke] [--stacks LIST] [--no-criterion]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project_root());
    cmd
}

/// Runs a command, failing with the step name and the command line.
fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let line = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(OsStr::to_string_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!("\n==> [{step}] {line}");
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("[{step}] could not start `{line}`"))?;
    if !status.success() {
        bail!("[{step}] failed ({status}): `{line}`");
    }
    eprintln!("==> [{step}] ok in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn ci() -> Result<()> {
    let started = Instant::now();
    run("fmt", cargo().args(["fmt", "--all", "--check"]))?;
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    layering()?;
    if has_nextest() {
        run(
            "test",
            cargo().args([
                "nextest",
                "run",
                "--workspace",
                "--locked",
                "--no-fail-fast",
            ]),
        )?;
    } else {
        eprintln!("cargo-nextest not found: running the tests with cargo test");
        run(
            "test",
            cargo().args([
                "test",
                "--workspace",
                "--locked",
                "--lib",
                "--bins",
                "--tests",
            ]),
        )?;
    }
    run(
        "doctest",
        cargo().args(["test", "--workspace", "--locked", "--doc"]),
    )?;
    run(
        "doc",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    run(
        "bench-build",
        cargo().args(["bench", "--workspace", "--no-run", "--locked"]),
    )?;
    // The side-by-side comparison harness (glare and libdatachannel, a few runs per
    // row, nothing written), so it never rots.
    bench::run_cli(&["--smoke".to_owned()])?;
    // NAT, relay, loss and remapping scenarios 1-6 in network namespaces (release
    // `glare`, incremental after bench-build); the matrix is printed, not written.
    netlab::run_cli(&["--no-write".to_owned()])?;
    fuzz_build_and_smoke()?;
    // Real peers: Chromium (mDNS hiding on and off, the glare race, media) and
    // libdatachannel against `glare peer` (the debug binaries the tests built).
    interop::run_cli(&["--ci".to_owned()])?;
    eprintln!(
        "\nxtask ci: all steps passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Proves the dependency direction of DESIGN.md with `cargo tree`, and greps the
/// sans-I/O crates' sources for clock reads, sleeps and sockets.
fn layering() -> Result<()> {
    eprintln!("\n==> [layering] cargo tree + source scan");
    for (krate, forbidden) in LAYERING {
        let out = cargo()
            .args([
                "tree", "--locked", "-p", krate, "-e", "normal", "--prefix", "none", "--format",
                "{p}",
            ])
            .output()
            .with_context(|| format!("cargo tree -p {krate}"))?;
        if !out.status.success() {
            bail!(
                "[layering] cargo tree -p {krate} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        for line in tree.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if forbidden.contains(&name) {
                bail!("[layering] {krate} depends on `{name}`, which DESIGN.md forbids for it");
            }
        }
        let src = project_root().join("crates").join(krate).join("src");
        for file in rust_files(&src)? {
            let text = std::fs::read_to_string(&file)?;
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if let Some(call) = IMPURE_CALLS.iter().find(|c| code.contains(*c)) {
                    bail!(
                        "[layering] {}:{}: `{call}` in sans-I/O crate {krate} (time, sleeps and sockets come from the caller)",
                        file.display(),
                        n + 1
                    );
                }
            }
        }
        eprintln!("    {krate}: clean");
    }
    Ok(())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(rust_files(&path)?);
        } else if path.extension() == Some(OsStr::new("rs")) {
            out.push(path);
        }
    }
    Ok(out)
}

fn fuzz_dir() -> PathBuf {
    project_root().join("fuzz")
}

/// Installs cargo-fuzz if missing (it needs the nightly toolchain, which these
/// machines have).
fn ensure_cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        run(
            "install cargo-fuzz",
            Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
        )?;
    }
    Ok(())
}

fn fuzz_cmd() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(fuzz_dir())
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .arg("+nightly")
        .arg("fuzz");
    cmd
}

/// Builds every fuzz target, then runs each over its seed corpus plus a short bounded
/// burst of new inputs, so the targets and their invariants never rot.
fn fuzz_build_and_smoke() -> Result<()> {
    ensure_cargo_fuzz()?;
    run("fuzz-build", fuzz_cmd().args(["build", "--dev"]))?;
    for target in &fuzz_targets()? {
        // New inputs land in a scratch directory (first corpus argument), so the smoke
        // run never changes the committed seeds.
        let scratch = fuzz_dir().join("target").join("smoke-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        run(
            "fuzz-smoke",
            fuzz_cmd().args([
                "run",
                "--dev",
                target,
                &scratch.to_string_lossy(),
                &format!("corpus/{target}"),
                "--",
                "-runs=20000",
                "-max_total_time=20",
                "-max_len=4096",
            ]),
        )?;
    }
    Ok(())
}

fn fuzz(args: &[String]) -> Result<()> {
    let mut secs = 60u64;
    let known = fuzz_targets()?;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--time" => {
                secs = it
                    .next()
                    .context("--time needs a number of seconds")?
                    .parse()
                    .context("--time needs a number of seconds")?;
            }
            t if known.iter().any(|k| k == t) => targets.push(t.to_owned()),
            other => bail!("unknown fuzz target or option `{other}` (targets: {known:?})"),
        }
    }
    if targets.is_empty() {
        targets = known;
    }
    ensure_cargo_fuzz()?;
    for target in targets {
        // Runs in release with debug assertions; new corpus entries go to fuzz/corpus.
        run(
            "fuzz",
            fuzz_cmd().args([
                "run",
                &target,
                &format!("corpus/{target}"),
                "--",
                &format!("-max_total_time={secs}"),
                "-max_len=65536",
            ]),
        )?;
    }
    Ok(())
}

fn stress() -> Result<()> {
    run(
        "stress",
        cargo().args([
            "test",
            "--release",
            "--locked",
            "-p",
            "glare-negotiate",
            "--test",
            "sim",
            "--",
            "--ignored",
            "--exact",
            "stress_million_seeds",
            "--nocapture",
        ]),
    )
}
