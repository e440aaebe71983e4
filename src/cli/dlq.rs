//! `reflow-agent dlq`: lists and replays dead-lettered commands.

use super::*;

/// `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print dead-lettered commands (JSON lines: reason, id, kind, command), leaving them there.
    List {
        /// The queue whose dead-letter queue to read.
        #[arg(long, env = "REFLOW_AGENT_QUEUE")]
        queue: String,
        /// TLS for `amqps://`.
        #[command(flatten)]
        tls: TlsArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Move dead-lettered commands back to the command queue, oldest first.
    Replay {
        /// The queue whose dead-letter queue to replay.
        #[arg(long, env = "REFLOW_AGENT_QUEUE")]
        queue: String,
        /// TLS for `amqps://`.
        #[command(flatten)]
        tls: TlsArgs,
        /// Only print what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// Commands per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
}

fn dead_line(body: &[u8], reason: &str) -> serde_json::Value {
    let cmd: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        cmd.as_ref()
            .and_then(|c| c.get(k))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    serde_json::json!({
        "reason": reason,
        "id": field("id"),
        "kind": field("kind"),
        "command": cmd.clone().unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(4096)]).into()),
    })
}

/// Lists or replays a dead-letter queue.
///
/// # Errors
/// Queue errors, or a rate that is not positive.
pub fn run_dlq(cmd: &DlqCommand) -> Result<(), CliError> {
    runtime()?.block_on(async {
        match cmd {
            DlqCommand::List { queue, max, tls } => {
                let client = crate::queue::client(queue, &tls.settings()?).await?;
                let mut out = io::stdout().lock();
                for d in client.dead_letters(*max).await? {
                    writeln!(out, "{}", dead_line(&d.body, &d.reason)).map_err(CliError::Output)?;
                }
                Ok(())
            }
            DlqCommand::Replay {
                queue,
                dry_run,
                rate,
                max,
                tls,
            } => {
                if !(rate.is_finite() && *rate > 0.0) {
                    return Err(CliError::Failed {
                        what: "--rate",
                        error: crate::error::ReflowError::new(
                            Kind::Invalid,
                            "dlq replay",
                            "must be a positive number",
                        ),
                    });
                }
                let client = crate::queue::client(queue, &tls.settings()?).await?;
                if *dry_run {
                    let mut out = io::stdout().lock();
                    for d in client.dead_letters(*max).await? {
                        writeln!(out, "would replay {}", dead_line(&d.body, &d.reason))
                            .map_err(CliError::Output)?;
                    }
                    return Ok(());
                }
                let bar = spinner("replaying");
                let pause = std::time::Duration::from_secs_f64(1.0 / rate);
                let mut n = 0;
                // A command rejected again comes back to the DLQ while this runs: replaying it
                // once more would loop, so a body seen twice ends the replay.
                let mut replayed = std::collections::HashSet::new();
                while n < *max {
                    let Some(body) = client.replay_one().await? else {
                        break;
                    };
                    if !replayed.insert(crate::digest::Digest::of(&body)) {
                        eprintln!("a replayed command came back to the DLQ; stopping");
                        break;
                    }
                    n += 1;
                    bar.set_message(format!("replayed {n}"));
                    println!("replayed {}", dead_line(&body, "")["id"]);
                    tokio::time::sleep(pause).await;
                }
                bar.finish_and_clear();
                eprintln!("replayed {n} command(s)");
                Ok(())
            }
        }
    })
}
