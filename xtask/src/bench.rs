//! `cargo xtask bench [--smoke] [--stacks glare,ndc,wrtc,aiortc] [--no-criterion]
//! [--runs N] [--bytes N] [--connections N] [--memory-connections N]`: glare side by
//! side with other WebRTC stacks in one run, written into `BENCHMARKS.md` under
//! `## Side by side`.
//!
//! glare's rows come from `benches/src/bin/compare.rs` (release build), the other
//! stacks' from `interop/bench.mjs` (libdatachannel = `ndc`, libwebrtc = `wrtc`,
//! `aiortc`, `werift`), which runs inside a network namespace it creates (root).
//! Both print one JSON object per row; this prints a markdown table (rows × stacks,
//! plus glare ÷ the best other stack) and, without `--smoke`, writes it with the
//! machine, the date and the command. Without `--smoke` and `--no-criterion` it also
//! runs `cargo bench -p glare-benches` (the criterion benches) first.
//!
//! Without `--smoke` it then measures glare alone (release `compare`): the scaling
//! table (setup and aggregate throughput at 1, 10 and 100 concurrent links) and the
//! figures of issue 5 (256 MiB between two processes, CPU per datagram through the
//! driver against str0m in memory, memory per idle link at 1,000 links).
//!
//! `--smoke` (CI): a few runs per row, glare and ndc only, plus glare's two-process
//! and parallel-setup rows, nothing written; fails if a glare row fails. The other
//! stacks' transfers are bounded by `--row-timeout` seconds (default 150: aiortc
//! stalls with several connections at once); a bounded row says "stalled" in the table.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{bench_broker::replace_section, cargo, project_root, run};

const HEADING: &str = "## Side by side";
const USAGE: &str = "usage: cargo xtask bench [--smoke] [--stacks glare,ndc,wrtc,aiortc,werift] \
[--no-criterion] [--no-glare-extras] [--runs N] [--bytes N] [--connections N] \
[--memory-connections N] [--row-timeout SECS]";
/// The concurrent link counts of the scaling table.
const SCALE: [u64; 3] = [1, 10, 100];
/// Idle links of the issue-5 memory figure.
const IDLE_LINKS: u64 = 1000;
const KNOWN: &[&str] = &["glare", "ndc", "wrtc", "aiortc", "werift"];

/// The row parameters, shared by every stack.
struct Params {
    runs: u64,
    bytes: u64,
    connections: u64,
    memory_connections: u64,
    /// Seconds one transfer of another stack may take before its row fails.
    row_timeout: u64,
}

impl Params {
    fn args(&self) -> Vec<String> {
        vec![
            "--runs".into(),
            self.runs.to_string(),
            "--bytes".into(),
            self.bytes.to_string(),
            "--connections".into(),
            self.connections.to_string(),
            "--memory-connections".into(),
            self.memory_connections.to_string(),
        ]
    }
}

pub(crate) fn run_cli(args: &[String]) -> Result<()> {
    let mut smoke = false;
    let mut criterion = true;
    let mut extras = true;
    let mut stacks: Option<Vec<String>> = None;
    let mut overrides: BTreeMap<&str, u64> = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--no-criterion" => criterion = false,
            "--no-glare-extras" => extras = false,
            "--stacks" => {
                let v = it.next().context("--stacks needs a list")?;
                let list: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = list.iter().find(|s| !KNOWN.contains(&s.as_str())) {
                    bail!("unknown stack `{bad}` (known: {})", KNOWN.join(","));
                }
                stacks = Some(list);
            }
            flag @ ("--runs"
            | "--bytes"
            | "--connections"
            | "--memory-connections"
            | "--row-timeout") => {
                let v = it
                    .next()
                    .with_context(|| format!("{flag} needs a number"))?;
                let n: u64 = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{flag} {v}: not a positive number"))?;
                overrides.insert(flag, n);
            }
            other => bail!("unknown argument `{other}` ({USAGE})"),
        }
    }
    let mut params = if smoke {
        Params {
            runs: 3,
            bytes: 4 << 20,
            connections: 2,
            memory_connections: 5,
            row_timeout: 60,
        }
    } else {
        Params {
            runs: 100,
            bytes: 256 << 20,
            connections: 10,
            memory_connections: 100,
            row_timeout: 150,
        }
    };
    for (flag, n) in overrides {
        match flag {
            "--runs" => params.runs = n,
            "--bytes" => params.bytes = n,
            "--connections" => params.connections = n,
            "--row-timeout" => params.row_timeout = n,
            _ => params.memory_connections = n,
        }
    }
    let stacks = stacks.unwrap_or_else(|| {
        if smoke {
            vec!["glare".into(), "ndc".into()]
        } else {
            vec!["glare".into(), "ndc".into(), "wrtc".into(), "aiortc".into()]
        }
    });
    let command = format!("cargo xtask {}", args_line(args));

    if !smoke && criterion {
        run(
            "criterion",
            cargo().args(["bench", "--locked", "-p", "glare-benches"]),
        )?;
    }
    let others: Vec<&String> = stacks.iter().filter(|s| *s != "glare").collect();
    if !others.is_empty() {
        crate::interop::ensure_deps(others.iter().any(|s| *s == "aiortc"))?;
    }

    let mut load = LoadSamples::default();
    let mut results: BTreeMap<(String, String), Value> = BTreeMap::new();
    let compare = if stacks.iter().any(|s| s == "glare") || (!smoke && extras) {
        Some(build_compare()?)
    } else {
        None
    };
    for stack in &stacks {
        let mut cmd = if stack == "glare" {
            let mut c = Command::new(compare.as_ref().context("compare was built")?);
            c.args(params.args());
            c
        } else {
            let mut c = Command::new("node");
            c.arg("--expose-gc")
                .arg(crate::interop::interop_dir().join("bench.mjs"))
                .args(["--stack", stack])
                .args(params.args())
                .args(["--row-timeout", &params.row_timeout.to_string()]);
            c
        };
        load.sample();
        for v in run_rows(stack, &mut cmd)? {
            let row = v
                .get("row")
                .and_then(Field::as_str)
                .unwrap_or_default()
                .to_owned();
            results.insert((stack.clone(), row), v);
        }
    }

    let table = table(&stacks, &params, &results);
    println!("\n{table}");
    if smoke {
        let mut failed = Vec::new();
        if let Some(bin) = &compare {
            // glare's rows beyond the table, small: the harness must not rot either.
            let mut cmd = Command::new(bin);
            cmd.args(["--rows", "throughput2p,setup-parallel"])
                .args(params.args());
            for v in run_rows("glare", &mut cmd)? {
                let row = v.get("row").and_then(Field::as_str).unwrap_or_default();
                results.insert(("glare".to_owned(), row.to_owned()), v);
            }
        }
        // The harness must produce every glare row (CI fails on a broken bench).
        for row in [
            "setup",
            "throughput",
            "aggregate",
            "memory",
            "throughput2p",
            "setup-parallel",
        ] {
            match results.get(&("glare".to_owned(), row.to_owned())) {
                None if compare.is_some() => failed.push(format!("{row}: no output")),
                None => {}
                Some(v) => {
                    if let Some(e) = v.get("error").and_then(Field::as_str) {
                        failed.push(format!("{row}: {e}"));
                    }
                }
            }
        }
        if !failed.is_empty() {
            bail!("glare's comparison rows failed: {}", failed.join("; "));
        }
        return Ok(());
    }
    let extra = match (&compare, extras) {
        (Some(bin), true) => glare_extras(bin, &params, &mut load)?,
        _ => String::new(),
    };
    load.sample();
    let section = format!(
        "{HEADING}\n\n{}\n\nCommand: `{command}`\n\n{}\n\n{table}\n{extra}",
        machine(&load),
        definitions(&params)
    );
    let path = project_root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, replace_section(&old, &section))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote the `{HEADING}` section of {}", path.display());
    Ok(())
}

/// Builds `compare` (release) and returns its path.
fn build_compare() -> Result<PathBuf> {
    run(
        "build compare",
        cargo().args([
            "build",
            "--release",
            "--locked",
            "-p",
            "glare-benches",
            "--bin",
            "compare",
        ]),
    )?;
    Ok(target_dir().join("release").join("compare"))
}

/// Runs one bench command; returns its JSON rows (echoed), logging other lines.
fn run_rows(stack: &str, cmd: &mut Command) -> Result<Vec<Value>> {
    cmd.current_dir(project_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("\n==> [bench {stack}] {}", command_line(cmd));
    let output = cmd
        .output()
        .with_context(|| format!("[bench {stack}] could not start"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut rows = Vec::new();
    for line in stdout.lines() {
        match parse_line(line) {
            Some(v) if v.get("row").and_then(Field::as_str).is_some() => {
                println!("{line}");
                rows.push(v);
            }
            _ => eprintln!("[bench {stack}] {line}"),
        }
    }
    if !output.status.success() {
        eprintln!("[bench {stack}] exited with {}", output.status);
    }
    Ok(rows)
}

/// The 1-minute load average, sampled between the bench's commands.
#[derive(Default)]
struct LoadSamples(Vec<f64>);

impl LoadSamples {
    fn sample(&mut self) {
        if let Some(l) = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
        {
            self.0.push(l);
        }
    }

    fn describe(&self) -> String {
        let min = self.0.iter().copied().reduce(f64::min);
        let max = self.0.iter().copied().reduce(f64::max);
        match (min, max) {
            (Some(a), Some(b)) => format!(
                "1-minute load average {a:.1}–{b:.1} during the run ({} samples)",
                self.0.len()
            ),
            _ => "load average unknown".into(),
        }
    }
}

/// One glare-only row through `compare`, or its error as text.
fn glare_row(bin: &PathBuf, args: &[String], load: &mut LoadSamples) -> Result<Value, String> {
    load.sample();
    let mut cmd = Command::new(bin);
    cmd.args(args);
    let rows = run_rows("glare", &mut cmd).map_err(|e| format!("{e:#}"))?;
    let v = rows.into_iter().next().ok_or("no output")?;
    match v.get("error").and_then(Field::as_str) {
        Some(e) => Err(format!("error: {e}")),
        None => Ok(v),
    }
}

fn num(v: &Result<Value, String>, field: &str, decimals: usize) -> String {
    match v {
        Ok(v) => v
            .get(field)
            .and_then(Field::as_f64)
            .map_or_else(|| format!("no `{field}`"), |x| format!("{x:.decimals$}")),
        Err(e) => cell_text(e),
    }
}

/// The scaling table and the issue-5 figures, as markdown.
fn glare_extras(bin: &PathBuf, p: &Params, load: &mut LoadSamples) -> Result<String> {
    let s = |x: u64| x.to_string();
    let mut out = format!(
        "\n### Scaling (glare)\n\nN links between two sockets (one wildcard socket on `lo`, \
each link on its own 127.0.0.x). Setup: N links dialed at the same moment, rounds until \
{} setups (`compare --rows setup-parallel --connections N --runs {}`); \"all open\" = \
median over rounds of the time from creating the N connections (each makes its \
DTLS certificate) to the last channel open. Aggregate: N links \
connected, then all send {} ÷ N at once (`compare --rows aggregate --connections N \
--bytes {}`).\n\n| links at once | setup median, ms | setup p99, ms | all open, ms | \
aggregate, Mbit/s |\n|---:|---:|---:|---:|---:|",
        p.runs,
        p.runs,
        size(p.bytes),
        p.bytes
    );
    for n in SCALE {
        let setup = glare_row(
            bin,
            &[
                "--rows".into(),
                "setup-parallel".into(),
                "--connections".into(),
                s(n),
                "--runs".into(),
                s(p.runs),
            ],
            load,
        );
        let agg = glare_row(
            bin,
            &[
                "--rows".into(),
                "aggregate".into(),
                "--connections".into(),
                s(n),
                "--bytes".into(),
                s(p.bytes),
            ],
            load,
        );
        out.push_str(&format!(
            "\n| {n} | {} | {} | {} | {} |",
            num(&setup, "median_ms", 2),
            num(&setup, "p99_ms", 2),
            num(&setup, "all_open_median_ms", 2),
            num(&agg, "mbps", 1)
        ));
    }
    let two = ["--rows", "throughput2p", "--bytes"]
        .map(String::from)
        .to_vec()
        .into_iter()
        .chain([s(p.bytes)])
        .collect::<Vec<_>>();
    let cost_bytes = (64_u64 << 20).min(p.bytes);
    let cost = ["--rows", "datagram-cost", "--bytes"]
        .map(String::from)
        .to_vec()
        .into_iter()
        .chain([s(cost_bytes)])
        .collect::<Vec<_>>();
    let idle = ["--rows", "memory", "--memory-connections"]
        .map(String::from)
        .to_vec()
        .into_iter()
        .chain([s(IDLE_LINKS)])
        .collect::<Vec<_>>();
    let two_r = glare_row(bin, &two, load);
    let cost_r = glare_row(bin, &cost, load);
    let idle_r = glare_row(bin, &idle, load);
    let kib = |v: &Result<Value, String>, f: &str| match v {
        Ok(v) => v
            .get(f)
            .and_then(Field::as_f64)
            .map_or_else(|| format!("no `{f}`"), |x| format!("{:.1} KiB", x / 1024.0)),
        Err(e) => cell_text(e),
    };
    out.push_str(&format!(
        "\n\n### glare alone (issue 5)\n\n| figure | value | command |\n|---|---:|---|\n\
| one reliable ordered channel, {} in 16 KiB messages, two processes on loopback | {} Mbit/s | \
`compare {}` |\n\
| CPU per datagram, str0m + glare-rtc in memory (no sockets) | {} µs | `compare {}` |\n\
| CPU per datagram through two glare-udp drivers (GSO/GRO on; sockets, demux, str0m, \
channel delivery) | {} µs ({}× in memory) | same |\n\
| the same, GSO/GRO off | {} µs ({}× in memory) | same |\n\
| memory per idle connected link (both ends, one process), {IDLE_LINKS} links | {} | \
`compare {}` |\n\
| memory per idle `Connection` (one end) | {} | same |\n",
        size(p.bytes),
        num(&two_r, "mbps", 1),
        two.join(" "),
        num(&cost_r, "memory_us_per_datagram", 2),
        cost.join(" "),
        num(&cost_r, "driver_us_per_datagram", 2),
        num(&cost_r, "ratio", 2),
        num(&cost_r, "unbatched_us_per_datagram", 2),
        num(&cost_r, "unbatched_ratio", 2),
        kib(&idle_r, "bytes_per_connection"),
        idle.join(" "),
        kib(&idle_r, "bytes_per_endpoint"),
    ));
    Ok(out)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| project_root().join("target"), PathBuf::from)
}

fn args_line(args: &[String]) -> String {
    std::iter::once("bench".to_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line of the table: which JSON row and field, its unit, and whether higher is
/// better.
struct Metric {
    label: String,
    row: &'static str,
    field: &'static str,
    scale: f64,
    decimals: usize,
    higher_better: bool,
}

fn metrics(p: &Params) -> Vec<Metric> {
    vec![
        Metric {
            label: format!("setup median, ms ({} runs)", p.runs),
            row: "setup",
            field: "median_ms",
            scale: 1.0,
            decimals: 2,
            higher_better: false,
        },
        Metric {
            label: format!("setup p99, ms ({} runs)", p.runs),
            row: "setup",
            field: "p99_ms",
            scale: 1.0,
            decimals: 2,
            higher_better: false,
        },
        Metric {
            label: format!("throughput, Mbit/s ({} in 16 KiB messages)", size(p.bytes)),
            row: "throughput",
            field: "mbps",
            scale: 1.0,
            decimals: 1,
            higher_better: true,
        },
        Metric {
            label: format!("aggregate of {} links, Mbit/s", p.connections),
            row: "aggregate",
            field: "mbps",
            scale: 1.0,
            decimals: 1,
            higher_better: true,
        },
        Metric {
            label: format!("memory per link, KB ({} links)", p.memory_connections),
            row: "memory",
            field: "bytes_per_connection",
            scale: 1e-3,
            decimals: 0,
            higher_better: false,
        },
    ]
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

fn stack_name(stack: &str) -> &str {
    match stack {
        "ndc" => "libdatachannel (ndc)",
        "wrtc" => "libwebrtc (wrtc)",
        other => other,
    }
}

/// One value of a bench JSON line (they are flat objects of strings and numbers).
#[derive(Clone, Debug, PartialEq)]
enum Field {
    Str(String),
    Num(f64),
    Other,
}

/// A parsed bench line: field name to value.
#[derive(Clone, Debug, Default)]
struct Value(BTreeMap<String, Field>);

impl Value {
    fn get(&self, key: &str) -> Option<&Field> {
        self.0.get(key)
    }
}

impl Field {
    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Num(n) => Some(*n),
            _ => None,
        }
    }
}

/// Parses one flat JSON object (`{"k":"v","n":1.5,…}`, no nesting); `None` for
/// anything else (log lines).
fn parse_line(line: &str) -> Option<Value> {
    let mut chars = line.trim().chars().peekable();
    let mut map = BTreeMap::new();
    let skip_ws = |c: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while c.peek().is_some_and(|c| c.is_whitespace()) {
            c.next();
        }
    };
    let string = |c: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Option<String> {
        if c.next()? != '"' {
            return None;
        }
        let mut s = String::new();
        loop {
            match c.next()? {
                '"' => return Some(s),
                '\\' => match c.next()? {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    'u' => {
                        let hex: String = (0..4).filter_map(|_| c.next()).collect();
                        let code = u32::from_str_radix(&hex, 16).ok()?;
                        s.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    other => s.push(other),
                },
                ch => s.push(ch),
            }
        }
    };
    if chars.next()? != '{' {
        return None;
    }
    loop {
        skip_ws(&mut chars);
        if chars.peek() == Some(&'}') {
            chars.next();
            break;
        }
        let key = string(&mut chars)?;
        skip_ws(&mut chars);
        if chars.next()? != ':' {
            return None;
        }
        skip_ws(&mut chars);
        let value = if chars.peek() == Some(&'"') {
            Field::Str(string(&mut chars)?)
        } else {
            let mut raw = String::new();
            while let Some(&ch) = chars.peek() {
                if ch == ',' || ch == '}' || ch.is_whitespace() {
                    break;
                }
                if ch == '{' || ch == '[' {
                    return None;
                }
                raw.push(ch);
                chars.next();
            }
            raw.parse().map_or(Field::Other, Field::Num)
        };
        map.insert(key, value);
        skip_ws(&mut chars);
        match chars.next()? {
            ',' => {}
            '}' => break,
            _ => return None,
        }
    }
    skip_ws(&mut chars);
    chars.next().is_none().then_some(Value(map))
}

/// The markdown table: one line per metric, one column per stack, then glare ÷ the
/// best other stack (× ; for throughput higher is better, else lower).
fn table(stacks: &[String], p: &Params, results: &BTreeMap<(String, String), Value>) -> String {
    let others: Vec<&String> = stacks.iter().filter(|s| *s != "glare").collect();
    let has_glare = stacks.iter().any(|s| s == "glare");
    let mut out = String::from("| metric |");
    let mut rule = String::from("|---|");
    for s in stacks {
        out.push_str(&format!(" {} |", stack_name(s)));
        rule.push_str("---:|");
    }
    if has_glare && !others.is_empty() {
        out.push_str(" glare ÷ best other |");
        rule.push_str("---:|");
    }
    out.push('\n');
    out.push_str(&rule);
    for m in metrics(p) {
        out.push_str(&format!("\n| {} |", m.label));
        let value = |stack: &str| -> Result<f64, String> {
            let Some(v) = results.get(&(stack.to_owned(), m.row.to_owned())) else {
                return Err("no result".into());
            };
            if let Some(e) = v.get("error").and_then(Field::as_str) {
                return Err(format!("error: {e}"));
            }
            v.get(m.field)
                .and_then(Field::as_f64)
                .map(|x| x * m.scale)
                .ok_or_else(|| format!("no `{}`", m.field))
        };
        for s in stacks {
            let cell = match value(s) {
                Ok(x) => format!("{x:.*}", m.decimals),
                Err(e) => cell_text(&e),
            };
            out.push_str(&format!(" {cell} |"));
        }
        if has_glare && !others.is_empty() {
            let best = others
                .iter()
                .filter_map(|s| value(s).ok().map(|x| (x, s.as_str())))
                .reduce(|a, b| {
                    let better = if m.higher_better {
                        b.0 > a.0
                    } else {
                        b.0 < a.0
                    };
                    if better { b } else { a }
                });
            let cell = match (value("glare"), best) {
                (Ok(g), Some((b, name))) if b > 0.0 => {
                    let r = g / b;
                    let decimals = if r < 0.1 { 4 } else { 2 };
                    format!("{r:.decimals$}× ({name})")
                }
                _ => "n/a".into(),
            };
            out.push_str(&format!(" {cell} |"));
        }
    }
    out
}

/// Error text fit for a table cell (no pipes or newlines, at most 120 characters).
fn cell_text(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| match c {
            '|' => '/',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect();
    if one_line.chars().count() > 120 {
        format!("{}…", one_line.chars().take(119).collect::<String>())
    } else {
        one_line
    }
}

fn definitions(p: &Params) -> String {
    format!(
        "Same run, same machine. glare: `benches/src/bin/compare.rs` (glare `Connection`s on \
two glare-udp sockets over loopback, signals passed in process, tokio with 2 workers, \
release build). Others: `node --expose-gc interop/bench.mjs --stack …` (two peer \
connections in one process, in a network namespace). Setup = offer created → the \
offerer's channel open, {} sequential runs, a new pair each. Throughput = one reliable \
ordered channel, {} in 16 KiB messages, first send → last byte received. Aggregate = {} \
links connected, then all send {} ÷ {} at once. Memory = RSS growth after {} connected \
links with an open channel (both ends in the one process) ÷ {}. Another stack's \
transfer not done within {} s fails its row (\"stalled\"). The last column is \
glare's value ÷ the best other stack's: for throughput higher is better, for setup \
and memory lower is better.",
        p.runs,
        size(p.bytes),
        p.connections,
        size(p.bytes),
        p.connections,
        p.memory_connections,
        p.memory_connections,
        p.row_timeout
    )
}

/// Machine and date line.
fn machine(load_during: &LoadSamples) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_owned(), |(_, v)| v.trim().to_owned());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
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
    format!(
        "Machine: {cpu}, {cores} cores; {}, load average after the run {load}. Date: {date}.",
        load_during.describe()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_replaced_in_place_or_appended() {
        assert_eq!(
            replace_section("", "## Side by side\nx"),
            "# Benchmarks\n\n## Side by side\nx\n"
        );
        assert_eq!(
            replace_section("# B\n\n## UDP\nu\n", "## Side by side\nx"),
            "# B\n\n## UDP\nu\n\n## Side by side\nx\n"
        );
        assert_eq!(
            replace_section(
                "# B\n\n## Side by side\nold\nold\n\n## UDP\nu\n",
                "## Side by side\nnew"
            ),
            "# B\n\n## Side by side\nnew\n\n## UDP\nu\n"
        );
    }

    fn v(s: &str) -> Value {
        parse_line(s).expect("a flat JSON object")
    }

    #[test]
    fn bench_lines_parse() {
        let l = v(r#"{"stack":"ndc","row":"setup","runs":3,"median_ms":1002.5,"e":"a\"b\u00e9"}"#);
        assert_eq!(l.get("row").and_then(Field::as_str), Some("setup"));
        assert_eq!(l.get("median_ms").and_then(Field::as_f64), Some(1002.5));
        assert_eq!(l.get("e").and_then(Field::as_str), Some("a\"b\u{e9}"));
        assert!(parse_line("bench: starting").is_none());
        assert!(parse_line(r#"{"a":[1]}"#).is_none());
        assert!(parse_line(r#"{"a":1} x"#).is_none());
    }

    #[test]
    fn table_ratios_and_errors() {
        let p = Params {
            runs: 3,
            bytes: 4 << 20,
            connections: 2,
            memory_connections: 5,
            row_timeout: 60,
        };
        let mut r = BTreeMap::new();
        let mut put = |s: &str, row: &str, v: Value| {
            r.insert((s.to_owned(), row.to_owned()), v);
        };
        put("glare", "setup", v(r#"{"median_ms": 5.0, "p99_ms": 9.0}"#));
        put("ndc", "setup", v(r#"{"median_ms": 10.0, "p99_ms": 20.0}"#));
        put("wrtc", "setup", v(r#"{"median_ms": 8.0, "p99_ms": 30.0}"#));
        put("glare", "throughput", v(r#"{"mbps": 800.0}"#));
        put("ndc", "throughput", v(r#"{"mbps": 400.0}"#));
        put("wrtc", "throughput", v(r#"{"error": "a|b"}"#));
        let stacks: Vec<String> = ["glare", "ndc", "wrtc"].map(String::from).to_vec();
        let t = table(&stacks, &p, &r);
        assert!(t.contains("| 5.00 | 10.00 | 8.00 | 0.62× (wrtc) |"), "{t}");
        assert!(t.contains("| 9.00 | 20.00 | 30.00 | 0.45× (ndc) |"), "{t}");
        assert!(
            t.contains("| 800.0 | 400.0 | error: a/b | 2.00× (ndc) |"),
            "{t}"
        );
        assert!(
            t.contains("| no result | no result | no result | n/a |"),
            "{t}"
        );
    }
}
