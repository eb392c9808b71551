//! `cargo xtask interop`: glare against real third-party peers (issue 8).
//!
//! The harnesses live in `interop/` (Node for Chromium through glare.js, libdatachannel,
//! libwebrtc and werift; Python for aiortc); see interop/README.md. This module installs
//! what they need into caches under `interop/` (and Chromium with apt when it is
//! missing), builds `glare` and the media example, and runs the matrix with `glare peer`
//! and `examples/media.rs` dropped in as two more stacks.
//!
//! `--ci` runs the CI subset on the dev-profile binaries (`cargo xtask ci` has just built
//! them for the tests, so nothing is rebuilt); the full matrix uses release builds and
//! rewrites the matrix part of INTEROP.md.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::{cargo, project_root, run};

/// Every cell of the full matrix: glare as the dialler (`glare>X`), as the one dialled
/// (`X>glare`), and glare races (`glare~X`), plus the other stacks among themselves.
const FULL_CELLS: &str = "glare>glare,glare~glare,\
glare>chromium,chromium>glare,glare~chromium,\
glare>chromium-mdns,chromium-mdns>glare,glare~chromium-mdns,\
glare>chromium-media,chromium-media>glare,\
glare-media>chromium-media,chromium-media>glare-media,\
glare>ndc,ndc>glare,glare~ndc,\
glare>wrtc,wrtc>glare,glare~wrtc,\
glare>aiortc,aiortc>glare,glare~aiortc,\
glare>werift,werift>glare,\
ndc>wrtc,wrtc>ndc,chromium>ndc,chromium~chromium";

/// The cells `cargo xtask ci` runs: Chromium with mDNS hiding on and off (glare as the
/// dialler, the one dialled, and in a glare race), Chromium media both ways against the
/// media example, and libdatachannel dialling and dialled, each against `glare peer`.
pub(crate) const CI_CELLS: &str = "glare>chromium,chromium>glare,glare~chromium,\
glare>chromium-mdns,chromium-mdns>glare,glare~chromium-mdns,\
glare-media>chromium-media,chromium-media>glare-media,\
glare>ndc,ndc>glare";

/// Seconds a cell may take before its peers give up (a passing cell takes 1–15 s).
const CELL_TIMEOUT_SECS: &str = "60";

pub(crate) fn interop_dir() -> PathBuf {
    project_root().join("interop")
}

/// Installs the harnesses' dependencies when missing: Chromium (apt), the npm packages
/// (`npm ci`, pinned by package-lock.json) and, with `python`, aiortc in a venv.
pub(crate) fn ensure_deps(python: bool) -> Result<()> {
    if !PathBuf::from("/usr/bin/chromium").exists() {
        run(
            "apt chromium",
            Command::new("sh").args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null",
            ]),
        )?;
    }
    // Node 20 or later runs the harnesses (interop/package.json `engines`).
    let version = Command::new("node")
        .arg("--version")
        .output()
        .context("interop needs Node.js 20 or later (`node` not found)")?;
    let version = String::from_utf8_lossy(&version.stdout);
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        bail!(
            "interop needs Node.js 20 or later, found `{}`",
            version.trim()
        );
    }
    let dir = interop_dir();
    if !dir.join("node_modules").join(".package-lock.json").exists() {
        run(
            "npm ci",
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
        )?;
    }
    if python && !dir.join(".venv").join("bin").join("python").exists() {
        run(
            "venv",
            Command::new("python3")
                .args(["-m", "venv", ".venv"])
                .current_dir(&dir),
        )?;
        run(
            "pip install",
            Command::new(dir.join(".venv").join("bin").join("pip"))
                .args(["install", "-q", "-r", "requirements.txt"])
                .current_dir(&dir),
        )?;
    }
    Ok(())
}

/// The binaries the matrix runs.
pub(crate) struct Bins {
    /// `glare` (broker and `glare peer`).
    pub(crate) glare: PathBuf,
    /// The media example (examples/media.rs).
    pub(crate) media: PathBuf,
}

/// Builds `glare` and the media example (release, or the dev profile) and returns their
/// paths.
pub(crate) fn build_bins(release: bool) -> Result<Bins> {
    let mut args = vec![
        "build",
        "--locked",
        "-p",
        "glare",
        "--bin",
        "glare",
        "--example",
        "media",
    ];
    if release {
        args.push("--release");
    }
    run("build glare + media example", cargo().args(&args))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| project_root().join("target"), PathBuf::from);
    let dir = target.join(if release { "release" } else { "debug" });
    let bins = Bins {
        glare: dir.join("glare"),
        media: dir.join("examples").join("media"),
    };
    for bin in [&bins.glare, &bins.media] {
        if !bin.exists() {
            bail!("{} was not built", bin.display());
        }
    }
    Ok(bins)
}

/// Runs the matrix over `cells`; with `md`, writes the table there too.
pub(crate) fn matrix(bins: &Bins, cells: &str, md: Option<&std::path::Path>) -> Result<()> {
    let glare_s = bins.glare.to_string_lossy().into_owned();
    let mut cmd = Command::new("node");
    cmd.current_dir(project_root())
        .arg("interop/run-matrix.mjs")
        .args(["--glare", &glare_s])
        .args(["--stack", &format!("glare={glare_s} peer")])
        .arg("--media-bin")
        .arg(&bins.media)
        .args(["--timeout", CELL_TIMEOUT_SECS])
        .args(["--cells", cells]);
    if let Some(md) = md {
        cmd.arg("--md").arg(md);
    }
    run("interop matrix", &mut cmd)
}

/// The glare.js tests against the real broker, and the demo page driven in Chromium
/// against `glare peer`.
pub(crate) fn browser_checks(glare: &std::path::Path) -> Result<()> {
    let glare_s = glare.to_string_lossy().into_owned();
    run(
        "glare.js tests",
        Command::new("node")
            .current_dir(project_root())
            .args(["--test", "interop/test-glarejs.mjs"])
            .env("GLARE_BIN", &glare_s),
    )?;
    run(
        "demo page",
        Command::new("node").current_dir(project_root()).args([
            "interop/page-smoke.mjs",
            "--glare",
            &glare_s,
            "--peer",
            &format!("{glare_s} peer"),
        ]),
    )
}

/// `cargo xtask interop [--ci] [--cells LIST] [--no-write]`. `--ci` (what `cargo xtask ci`
/// runs): the CI cells on the dev-profile binaries, INTEROP.md untouched. Otherwise the full
/// matrix (or `--cells`) on release binaries, written into INTEROP.md unless `--no-write`.
pub(crate) fn run_cli(args: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    let mut cells = FULL_CELLS.to_owned();
    let mut ci = false;
    let mut write = true;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--cells" => cells = it.next().context("--cells needs a list")?.clone(),
            "--ci" => ci = true,
            "--no-write" => write = false,
            other => bail!(
                "unknown interop option `{other}` (usage: cargo xtask interop [--ci] [--cells LIST] [--no-write])"
            ),
        }
    }
    if ci {
        cells = CI_CELLS.to_owned();
        write = false;
    }
    ensure_deps(cells.contains("aiortc"))?;
    let bins = build_bins(!ci)?;
    browser_checks(&bins.glare)?;
    let table =
        std::env::temp_dir().join(format!("glare-interop-matrix-{}.md", std::process::id()));
    let result = matrix(&bins, &cells, Some(&table));
    if write && table.exists() {
        let cmd = if args.is_empty() {
            "cargo xtask interop".to_owned()
        } else {
            format!("cargo xtask interop {}", args.join(" "))
        };
        write_interop_md(&std::fs::read_to_string(&table)?, &cmd)?;
    }
    let _ = std::fs::remove_file(&table);
    eprintln!(
        "==> [interop] done in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    result
}

/// Begin and end of the part of INTEROP.md this writes; the rest is kept as it is.
const MATRIX_BEGIN: &str = "<!-- matrix: written by `cargo xtask interop` -->";
const MATRIX_END: &str = "<!-- end of matrix -->";

fn shell_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn write_interop_md(table: &str, command: &str) -> Result<()> {
    let date = shell_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let machine = format!(
        "{} ({cpus} CPUs), {}",
        shell_line("uname", &["-srm"]),
        shell_line("chromium", &["--version"])
    );
    let block = format!(
        "{MATRIX_BEGIN}\n\n`{command}` on {date}; {machine}; node {}.\n\n{}\n{MATRIX_END}",
        shell_line("node", &["--version"]),
        table.trim_end()
    );
    let path = project_root().join("INTEROP.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let text = match (old.find(MATRIX_BEGIN), old.find(MATRIX_END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &old[..b], &old[e + MATRIX_END.len()..])
        }
        _ => format!("# Interop matrix\n\n{block}\n"),
    };
    std::fs::write(path, text)?;
    Ok(())
}
