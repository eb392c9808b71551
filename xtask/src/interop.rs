//! `cargo xtask interop`: glare against real third-party peers (issue 8).
//!
//! The harnesses live in `interop/` (Node for Chromium through glare.js, libdatachannel,
//! libwebrtc and werift; Python for aiortc); see interop/README.md. This module installs
//! what they need into caches under `interop/` (and Chromium with apt when it is
//! missing), builds the release `glare` binary, and runs the matrix with `glare peer`
//! dropped in as one more stack.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::{cargo, project_root, run};

/// Every cell of the full matrix: glare as the dialler (`glare>X`), as the one dialled
/// (`X>glare`), and glare races (`glare~X`), plus the other stacks among themselves.
const FULL_CELLS: &str = "glare>glare,glare~glare,\
glare>chromium,chromium>glare,glare~chromium,\
glare>chromium-mdns,chromium-mdns>glare,\
glare>chromium-media,chromium-media>glare,\
glare>ndc,ndc>glare,glare~ndc,\
glare>wrtc,wrtc>glare,glare~wrtc,\
glare>aiortc,aiortc>glare,glare~aiortc,\
glare>werift,werift>glare,\
ndc>wrtc,wrtc>ndc,chromium>ndc,chromium~chromium";

/// The cells `cargo xtask ci` runs: Chromium with mDNS hiding on and off (glare race
/// included) and libdatachannel, each against `glare peer`.
pub(crate) const CI_CELLS: &str = "glare>chromium,chromium>glare,glare~chromium,\
glare>chromium-mdns,chromium-mdns>glare,\
glare>ndc,ndc>glare,glare~ndc";

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

/// Builds the release `glare` binary and returns its path.
pub(crate) fn build_glare() -> Result<PathBuf> {
    run(
        "build glare",
        cargo().args([
            "build",
            "--release",
            "--locked",
            "-p",
            "glare",
            "--bin",
            "glare",
        ]),
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| project_root().join("target"), PathBuf::from);
    let bin = target.join("release").join("glare");
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

/// Runs the matrix over `cells`; with `md`, writes the table there too.
pub(crate) fn matrix(
    glare: &std::path::Path,
    cells: &str,
    md: Option<&std::path::Path>,
) -> Result<()> {
    let glare_s = glare.to_string_lossy().into_owned();
    let mut cmd = Command::new("node");
    cmd.current_dir(project_root())
        .arg("interop/run-matrix.mjs")
        .args(["--glare", &glare_s])
        .args(["--stack", &format!("glare={glare_s} peer")])
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

pub(crate) fn run_cli(args: &[String]) -> Result<()> {
    let mut cells = FULL_CELLS.to_owned();
    let mut write = true;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--cells" => cells = it.next().context("--cells needs a list")?.clone(),
            "--ci" => cells = CI_CELLS.to_owned(),
            "--no-write" => write = false,
            other => bail!(
                "unknown interop option `{other}` (usage: cargo xtask interop [--cells LIST | --ci] [--no-write])"
            ),
        }
    }
    ensure_deps(cells.contains("aiortc"))?;
    let glare = build_glare()?;
    browser_checks(&glare)?;
    let table = project_root().join("target").join("interop-matrix.md");
    let result = matrix(&glare, &cells, Some(&table));
    if write && table.exists() {
        write_interop_md(&std::fs::read_to_string(&table)?)?;
    }
    result
}

fn write_interop_md(table: &str) -> Result<()> {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let text = format!(
        "# Interop matrix\n\n\
         Written by `cargo xtask interop` on {date} (same machine, one run). `A>B`: B hosts,\n\
         A dials it; `A~B`: both dial each other at once (a glare race). Each cell moves a\n\
         4 MiB file each way (PROTOCOL.md §5, verified on disk and by the SHA-256 ack) and\n\
         1,000 echoed messages. `glare` is `glare peer`; `chromium` is headless Chromium\n\
         through glare.js with mDNS host-candidate hiding off, `chromium-mdns` with it on;\n\
         `ndc` libdatachannel (node-datachannel), `wrtc` libwebrtc (@roamhq/wrtc), `aiortc`,\n\
         `werift`. Harnesses and how to run one cell: interop/README.md.\n\n{table}"
    );
    std::fs::write(project_root().join("INTEROP.md"), text)?;
    Ok(())
}
