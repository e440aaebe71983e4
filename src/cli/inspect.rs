//! `reflow-agent inspect`: a state directory's allocs and execs, read offline.

use super::*;

/// Options of the `inspect` subcommand.
#[derive(Debug, clap::Args)]
pub struct InspectOptions {
    /// The agent's state directory (`agent.state_dir`).
    #[arg(long)]
    pub dir: PathBuf,
    /// An exec id (sha256 digest, prefixed or bare): show its manifest.
    pub exec: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One alloc found in a state directory.
#[derive(Debug, serde::Serialize)]
struct AllocSummary {
    id: String,
    live: bool,
    owner: String,
    want: crate::resources::Resources,
    execs: Vec<ExecSummary>,
}

/// One exec found in an alloc.
#[derive(Debug, serde::Serialize)]
struct ExecSummary {
    id: Digest,
    state: String,
    ident: String,
    error: Option<String>,
    oom: Option<String>,
}

fn summarize(m: &crate::manifest::Manifest, id: Digest) -> ExecSummary {
    ExecSummary {
        id,
        state: m.state.name().to_string(),
        ident: m.config.ident.clone(),
        error: m
            .result
            .err
            .as_ref()
            .map(crate::error::ReflowError::one_line),
        oom: m.oom.as_ref().map(|o| {
            format!(
                "{} ({})",
                o.source,
                o.detail.chars().take(120).collect::<String>()
            )
        }),
    }
}

/// Reads allocs and exec manifests from a state directory, offline (no agent needed).
///
/// # Errors
/// An unreadable directory, a malformed exec id, or an exec that is not found.
pub fn run_inspect(opts: &InspectOptions) -> Result<(), CliError> {
    use crate::persist::read_json;
    let live: std::collections::BTreeMap<String, crate::resources::Resources> =
        read_json(&opts.dir.join("state.json"), 4 << 20).unwrap_or_default();
    let allocs_dir = opts.dir.join("allocs");
    let mut ids: Vec<String> = std::fs::read_dir(&allocs_dir)
        .map_err(|e| {
            CliError::Output(io::Error::new(
                e.kind(),
                format!("{}: {e}", allocs_dir.display()),
            ))
        })?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    let manifest_path = |alloc: &str, exec: &Digest| {
        allocs_dir
            .join(alloc)
            .join("execs")
            .join(exec.hex())
            .join(crate::manifest::MANIFEST_FILE)
    };
    let manifest_of = |alloc: &str, exec: &Digest| {
        read_json::<crate::manifest::Manifest>(
            &manifest_path(alloc, exec),
            crate::manifest::MAX_MANIFEST_BYTES,
        )
    };
    if let Some(want) = &opts.exec {
        let want = Digest::parse(want)?;
        for alloc in &ids {
            let m = match manifest_of(alloc, &want) {
                Err(e) if e.is_not_found() => continue,
                r => r.map_err(|source| CliError::Input {
                    what: "the exec manifest",
                    source,
                })?,
            };
            if opts.json {
                return print_json(&m);
            }
            let s = summarize(&m, want);
            let mut out = io::stdout().lock();
            let line = |out: &mut io::StdoutLock, k: &str, v: &str| {
                writeln!(out, "{k:<10} {v}").map_err(CliError::Output)
            };
            line(&mut out, "exec", &want.to_string())?;
            line(&mut out, "alloc", alloc)?;
            line(&mut out, "ident", &s.ident)?;
            line(&mut out, "state", &s.state)?;
            line(&mut out, "created", &crate::time::format(&m.created))?;
            line(&mut out, "image", &m.config.image)?;
            line(&mut out, "command", &m.config.cmd)?;
            line(&mut out, "error", s.error.as_deref().unwrap_or("-"))?;
            line(&mut out, "oom", s.oom.as_deref().unwrap_or("-"))?;
            for (k, f) in m.result.fileset.pullup().map {
                line(
                    &mut out,
                    "output",
                    &format!("{k} {} {} bytes", f.id, f.size),
                )?;
            }
            for (k, p) in crate::profile::profile(&m.stats) {
                line(
                    &mut out,
                    "profile",
                    &format!("{k}: max {} mean {:.1} n {}", p.max, p.mean, p.n),
                )?;
            }
            return Ok(());
        }
        return Err(CliError::Executor(
            crate::executor::ExecutorError::NoSuchExec { id: want },
        ));
    }
    let mut summaries = Vec::new();
    for alloc in ids {
        let meta: crate::pool::AllocMeta =
            read_json(&allocs_dir.join(&alloc).join("meta.json"), 4 << 20).unwrap_or_default();
        let mut execs: Vec<ExecSummary> = std::fs::read_dir(allocs_dir.join(&alloc).join("execs"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| Digest::parse(&e.file_name().to_string_lossy()).ok())
                    .filter_map(|d| match manifest_of(&alloc, &d) {
                        Ok(m) => Some(summarize(&m, d)),
                        Err(e) if e.is_not_found() => None,
                        Err(e) => Some(ExecSummary {
                            id: d,
                            state: "unreadable".into(),
                            ident: String::new(),
                            error: Some(
                                crate::error::ReflowError::from_classified("read", &e).one_line(),
                            ),
                            oom: None,
                        }),
                    })
                    .collect()
            })
            .unwrap_or_default();
        execs.sort_by_key(|e| e.id);
        summaries.push(AllocSummary {
            live: live.contains_key(&alloc),
            id: alloc,
            owner: meta.owner,
            want: meta.want,
            execs,
        });
    }
    if opts.json {
        return print_json(&summaries);
    }
    let mut out = io::stdout().lock();
    for a in summaries {
        let status = if a.live { "live" } else { "zombie" };
        writeln!(
            out,
            "alloc {} ({status}) owner={} want={}",
            a.id, a.owner, a.want
        )
        .map_err(CliError::Output)?;
        for e in a.execs {
            let tail = e.error.or(e.oom).unwrap_or_default();
            writeln!(
                out,
                "  {} {:<12} {} {}",
                e.id.short(),
                e.state,
                e.ident,
                tail
            )
            .map_err(CliError::Output)?;
        }
    }
    Ok(())
}
