//! `reflow-agent serve`: loads the configuration (file, environment, flags) and runs the agent.

use super::*;

/// Options of the `serve` subcommand. Flags override environment variables, which override the
/// config file.
#[derive(Debug, clap::Args)]
pub struct ServeOptions {
    /// A TOML config file (see docs/configuration.md); defaults apply without one.
    #[arg(long, env = "REFLOW_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides `queue.url` (`amqp://...`, `sqs://NAME`, `spool:///DIR`).
    #[arg(long, env = "REFLOW_AGENT_QUEUE")]
    pub queue: Option<String>,
    /// Overrides `agent.state_dir`.
    #[arg(long, env = "REFLOW_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Overrides `repository.url` (`file:///DIR`).
    #[arg(long, env = "REFLOW_AGENT_REPOSITORY")]
    pub repository: Option<String>,
    /// The HMAC key commands must be signed with.
    #[command(flatten)]
    pub hmac: HmacKeyArg,
    /// Overrides `executor.hard_mem_limit` (sets it).
    #[arg(long)]
    pub hard_mem_limit: bool,
    /// Overrides `agent.idle_exit_after_secs`.
    #[arg(long)]
    pub idle_exit_after_secs: Option<u64>,
}

/// Loads the config, applies the command-line overrides and runs the agent until SIGTERM/SIGINT
/// or idleness.
///
/// # Errors
/// Config, engine, TaskDB or pool errors.
pub fn run_serve(opts: &ServeOptions) -> Result<(), CliError> {
    let flags = crate::config::Overrides {
        queue_url: opts.queue.clone(),
        state_dir: opts.state_dir.clone(),
        repository_url: opts.repository.clone(),
        hard_mem_limit: opts.hard_mem_limit,
        idle_exit_after_secs: opts.idle_exit_after_secs,
    };
    let cfg = crate::config::Config::resolve(opts.config.as_deref(), std::env::vars(), &flags)?;
    if opts.config.is_none() && cfg.config.queue.url.is_none() {
        eprintln!(
            "reflow-agent: no config; embedded defaults: queue {} (drop commands into its incoming/), repository {}, state {}",
            cfg.queue_url,
            cfg.repository_url,
            cfg.config.agent.state_dir.display()
        );
    }
    let secrets = crate::agent::Secrets {
        hmac_key: opts.hmac.hmac_key.as_ref().map(|k| k.as_bytes().to_vec()),
    };
    let rt = runtime()?;
    // The handlers go in before anything is written, so an early SIGTERM is a clean stop.
    let exit = rt.block_on(async {
        let signals = crate::agent::signals();
        crate::agent::run(cfg, secrets, signals).await
    })?;
    tracing::info!(?exit, "Agent stopped.");
    Ok(())
}
