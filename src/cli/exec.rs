//! `reflow-agent exec`: one exec on the local engine, without a queue.

use super::*;

/// Largest exec config file accepted by [`run_exec`].
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Options of the `exec` subcommand.
#[derive(Debug, clap::Args)]
pub struct ExecOptions {
    /// The executor directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// The executor id (used in container names and labels).
    #[arg(long, default_value = "local")]
    pub executor_id: String,
    /// The exec id (a sha256 digest).
    #[arg(long)]
    pub id: String,
    /// A Reflow ExecConfig JSON file.
    #[arg(long)]
    pub config: PathBuf,
    /// Load every input fileset from this repository URL (`file:///path`) first.
    #[arg(long)]
    pub inputs_from: Option<String>,
    /// Promote the outputs into the executor repository.
    #[arg(long)]
    pub promote: bool,
    /// Limit the container's memory to the exec's `mem` resource (plus 100 MiB swap).
    #[arg(long)]
    pub hard_mem_limit: bool,
}

/// Runs one exec on an executor hosted by this process (recovering whatever the directory holds
/// first), waits for it, and prints its result JSON. Inputs are loaded from `inputs_from` first
/// when given; outputs are promoted with `promote`. One kernel log reader serves OOM evidence.
///
/// # Errors
/// Config, engine and executor errors; the exec's own failure is part of the printed result.
pub fn run_exec(opts: &ExecOptions) -> Result<(), CliError> {
    let id = Digest::parse(&opts.id)?;
    let mut config: crate::model::ExecConfig =
        crate::persist::read_json(&opts.config, MAX_CONFIG_BYTES).map_err(|source| {
            CliError::Input {
                what: "exec config",
                source,
            }
        })?;
    let rt = runtime()?;
    rt.block_on(async {
        let runtime = std::sync::Arc::new(crate::docker::bollard::BollardRuntime::connect()?);
        let mut cfg = crate::executor::ExecutorConfig::new(&opts.executor_id, &opts.dir);
        cfg.hard_mem_limit = opts.hard_mem_limit;
        let kmsg =
            crate::oom::kmsg::KmsgMonitor::start(std::sync::Arc::new(crate::clock::SystemClock));
        let mut ports = crate::executor::ExecutorPorts::new(
            runtime,
            std::sync::Arc::new(crate::clock::SystemClock),
        );
        ports.oom_detectors = vec![std::sync::Arc::new(kmsg.clone())];
        let ex = crate::executor::Executor::start_with(cfg, ports).await?;
        if let Some(url) = opts.inputs_from.as_deref() {
            for arg in config.args.iter_mut() {
                if let Some(fs) = &arg.fileset {
                    arg.fileset = Some(ex.load(url, fs).await?);
                }
            }
        }
        let exec = ex.put(id, config).await?;
        exec.wait()
            .await
            .map_err(crate::executor::ExecutorError::from)?;
        if opts.promote {
            ex.promote(&id).await?;
        }
        let result = exec
            .result()
            .map_err(crate::executor::ExecutorError::from)?;
        ex.shutdown().await;
        print_json(&result)
    })
}
