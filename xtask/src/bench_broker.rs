//! `cargo xtask bench-broker [--smoke] [-- ARGS…]`: glare's broker against `PeerJS`'s
//! `PeerServer`, written into `BENCHMARKS.md` under `## Broker`.
//!
//! Builds `glare` and `broker_load` in release, installs `PeerServer` (npm package
//! `peer`) into `.cache/bench/peer` when it is missing, runs the load generator (which
//! starts and kills both servers itself, on 127.0.0.1 only), prints its markdown
//! report and writes it, with the machine, the date and the command, into the
//! `## Broker` section of `BENCHMARKS.md` (other sections are kept as they are).
//! The `cluster` part runs `glare-broker-node` processes on one `redis-server` (Debian's
//! `redis-server` package must be installed) against one in-memory node.
//! `--smoke` is a few hundred messages per case: a check that the bench and both
//! servers work, not a measurement; it does not touch `BENCHMARKS.md`. Arguments after
//! `--` go to `broker_load` (e.g. `-- --secs 5 --pairs 1,100`).

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, project_root, run as run_step};

const HEADING: &str = "## Broker";

pub(crate) fn run() -> Result<()> {
    let args: Vec<String> = env::args().skip(2).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let extra: Vec<String> = args
        .iter()
        .skip_while(|a| *a != "--")
        .skip(1)
        .cloned()
        .collect();
    if let Some(bad) = args
        .iter()
        .take_while(|a| *a != "--")
        .find(|a| *a != "--smoke")
    {
        bail!(
            "unknown argument `{bad}` (usage: cargo xtask bench-broker [--smoke] [-- BROKER_LOAD_ARGS])"
        );
    }
    let root = project_root();
    run_step(
        "build",
        cargo().args([
            "build",
            "--release",
            "-p",
            "glare",
            "--bin",
            "glare",
            "-p",
            "glare-benches",
            "--bin",
            "broker_load",
            "-p",
            "glare-broker",
            "--bin",
            "glare-broker-node",
        ]),
    )?;
    let target = target_dir(&root);
    let glare = target.join("release").join("glare");
    let load = target.join("release").join("broker_load");
    let node = target.join("release").join("glare-broker-node");
    let peer_dir = root.join(".cache").join("bench").join("peer");
    ensure_peer_server(&peer_dir)?;

    let mut cmd = Command::new(&load);
    cmd.arg("--glare")
        .arg(&glare)
        .arg("--node")
        .arg(&node)
        .arg("--peer-dir")
        .arg(&peer_dir)
        .args(&extra)
        .current_dir(&root)
        .stderr(Stdio::inherit());
    if smoke {
        cmd.arg("--smoke");
    }
    eprintln!("\n==> [bench-broker] {}", load.display());
    let started = std::time::Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("could not start {}", load.display()))?;
    if !out.status.success() {
        bail!("[bench-broker] broker_load failed ({})", out.status);
    }
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "==> [bench-broker] ok in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let command = format!(
        "cargo xtask bench-broker{}{}",
        if smoke { " --smoke" } else { "" },
        if extra.is_empty() {
            String::new()
        } else {
            format!(" -- {}", extra.join(" "))
        }
    );
    let section = format!(
        "{HEADING}\n\n{}\n\nCommand: `{command}`\n\n{}",
        machine(),
        report.trim_end()
    );
    println!("\n{section}");
    if smoke {
        eprintln!("(smoke run: BENCHMARKS.md left alone)");
        return Ok(());
    }
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, replace_section(&old, &section))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote the `{HEADING}` section of {}", path.display());
    Ok(())
}

/// `CARGO_TARGET_DIR` if set (relative to the root), else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}

fn ensure_peer_server(dir: &Path) -> Result<()> {
    if dir.join("node_modules").join("peer").is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    run_step(
        "install PeerServer",
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(dir)
            .arg("peer"),
    )
    .context("PeerServer (npm package `peer`) is needed; install node and npm")
}

/// Machine, load and date lines.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let nproc = Command::new("nproc")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| cores.to_string());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let node = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let redis = Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("v=").map(str::to_owned))
        })
        .unwrap_or_else(|| "not found".to_owned());
    format!(
        "Machine: {nproc} cores ({cpu}); load average after the run {load}. Date: {date}. PeerServer: npm `peer` on node {node}. Redis: redis-server {redis}."
    )
}

/// `old` with the section whose heading is `section`'s first line (up to the next `## `
/// heading) replaced by `section`, or `section` appended; a new file gets a title.
/// Shared by every xtask that writes a section of BENCHMARKS.md.
pub(crate) fn replace_section(old: &str, section: &str) -> String {
    let heading = section.lines().next().unwrap_or_default().trim_end();
    let section = format!("{}\n", section.trim_end());
    if old.trim().is_empty() {
        return format!("# Benchmarks\n\n{section}");
    }
    let lines: Vec<&str> = old.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim_end() == heading) else {
        return format!("{}\n\n{section}", old.trim_end());
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |i| start + 1 + i);
    let mut out = lines[..start].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&section);
    if end < lines.len() {
        out.push('\n');
        out.push_str(&lines[end..].join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn sections() {
        assert_eq!(
            replace_section("", "## Broker\nx"),
            "# Benchmarks\n\n## Broker\nx\n"
        );
        assert_eq!(
            replace_section("# B\n\n## UDP\nu\n", "## Broker\nx"),
            "# B\n\n## UDP\nu\n\n## Broker\nx\n"
        );
        assert_eq!(
            replace_section(
                "# B\n\n## Broker\nold\nold\n\n## UDP\nu\n",
                "## Broker\nnew"
            ),
            "# B\n\n## Broker\nnew\n\n## UDP\nu\n"
        );
        assert_eq!(
            replace_section("# B\n## Broker\nold\n", "## Broker\nnew\n"),
            "# B\n## Broker\nnew\n"
        );
    }
}
