//! `reflow-agent submit`: publishes a command (signed when a key is set) and can wait for its outcome.

use super::*;

/// Options of the `submit` subcommand.
#[derive(Debug, clap::Args)]
pub struct SubmitOptions {
    /// The command file (a protocol envelope, e.g. a `job`).
    pub file: PathBuf,
    /// The queue (`amqp://...`, `amqps://...`, `sqs://NAME`, `spool:///DIR`).
    #[arg(long, env = "REFLOW_AGENT_QUEUE")]
    pub queue: String,
    /// TLS for `amqps://`.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Wait for the outcome, show progress, and print the final event.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_secs: u64,
    /// Signs the command with this HMAC key when it has no signature.
    #[command(flatten)]
    pub hmac: HmacKeyArg,
}

/// Whether `e` ends command `id`: its job's `exec.completed`, a request's `command.result`, or
/// a rejection.
fn is_outcome(e: &crate::protocol::Event, id: &str, job: bool) -> bool {
    use crate::protocol::EventBody;
    if e.command.as_deref() != Some(id) {
        return false;
    }
    match &e.body {
        EventBody::ExecCompleted { .. } => job,
        EventBody::CommandResult { .. } => !job,
        EventBody::CommandRejected { .. } => true,
        _ => false,
    }
}

/// The command as sent: `bytes` as given, or its envelope `env` with `reply_to` set and, with
/// a key, signed (when it has no signature yet).
fn finish_command(
    bytes: Vec<u8>,
    mut env: serde_json::Value,
    reply_to: Option<String>,
    key: Option<&str>,
) -> Result<Vec<u8>, CliError> {
    let sign = key.filter(|_| env.get("signature").is_none());
    if reply_to.is_none() && sign.is_none() {
        return Ok(bytes);
    }
    if let Some(q) = reply_to {
        env["reply_to"] = q.into();
    }
    if let Some(k) = sign {
        // A signed command says when it was sent (the agent's replay window).
        if env.get("time").is_none() {
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            env["time"] = crate::time::format(&now).into();
        }
        env["signature"] = crate::control::security::sign(k.as_bytes(), &env).into();
    }
    serde_json::to_vec(&env).map_err(CliError::Encode)
}

/// Validates (and, with a key, signs) a command, sends it, and with `--wait` prints its outcome.
///
/// # Errors
/// An invalid command, a queue error, a timeout, or (with `--wait`) a failed or rejected command.
pub fn run_submit(opts: &SubmitOptions) -> Result<(), CliError> {
    use crate::protocol::EventBody;
    let bytes =
        crate::persist::read_bounded(&opts.file, crate::protocol::MAX_COMMAND_BYTES as u64 + 1)
            .map_err(|source| CliError::Input {
                what: "command file",
                source,
            })?;
    let req = crate::protocol::decode_command(&bytes)?;
    let env: serde_json::Value = serde_json::from_slice(&bytes).map_err(CliError::Encode)?;
    // A command that names no reply queue and carries no signature of its producer's can be
    // given one: the watch's own queue, which then gets only this command's events. (Encoded
    // again it is no longer than as read, so the name is all it can gain.)
    let may_reply = opts.wait
        && req.reply_to.is_none()
        && env.get("signature").is_none()
        && bytes.len() + crate::protocol::MAX_REPLY_TO_LEN + 16
            <= crate::protocol::MAX_COMMAND_BYTES;
    let job = matches!(req.command, crate::protocol::Command::Job(_));
    let rt = runtime()?;
    let outcome = rt.block_on(async {
        let client = crate::queue::client(&opts.queue, &opts.tls.settings()?).await?;
        // The watch is made before the command is sent, so no event is missed; the
        // connection the command is sent on is opened meanwhile (on AMQP it is the watch's
        // own: the watch, polled first, makes it, and `prepare` then finds it ready).
        let (watch, reply_to) = match opts.wait {
            true => {
                let watch = async {
                    if may_reply && let Some((w, q)) = client.watch_replies(&req.id).await? {
                        return Ok((w, Some(q)));
                    }
                    Ok::<_, crate::queue::QueueError>((client.watch(Some(&req.id)).await?, None))
                };
                let (watch, ready) = tokio::join!(watch, client.prepare());
                ready?;
                let (w, q) = watch?;
                (Some(w), q)
            }
            false => (None, None),
        };
        let bytes = finish_command(bytes, env, reply_to, opts.hmac.hmac_key.as_deref())?;
        client.submit(&req.id, &bytes).await?;
        eprintln!("submitted {} ({})", req.id, req.command.kind());
        let Some(mut watch) = watch else {
            client.close().await;
            return Ok(());
        };
        let bar = spinner(&format!("{} {}", req.command.kind(), req.id));
        let deadline = std::time::Duration::from_secs(opts.timeout_secs);
        let waited = tokio::time::timeout(deadline, async {
            loop {
                let e = watch.next().await?;
                if e.command.as_deref() == Some(req.id.as_str()) {
                    bar.set_message(format!(
                        "{} {}: {}",
                        req.command.kind(),
                        req.id,
                        e.body.kind()
                    ));
                }
                if is_outcome(&e, &req.id, job) {
                    return Ok::<_, CliError>(e);
                }
            }
        })
        .await
        .map_err(|_| CliError::Timeout {
            secs: opts.timeout_secs,
        })
        .and_then(|r| r);
        bar.finish_and_clear();
        let printed = waited.and_then(|outcome| print_json(&outcome).map(|()| outcome));
        // Whether the outcome came or not (a timeout, a broken watch): on AMQP the watch's
        // queue is deleted on the client's connection, and the close waits for the broker to
        // have done it.
        watch.close().await;
        client.close().await;
        let outcome = printed?;
        match outcome.body {
            EventBody::ExecCompleted { result, .. } => match result.err {
                Some(error) => Err(CliError::Failed {
                    what: "the exec failed",
                    error,
                }),
                None => Ok(()),
            },
            EventBody::CommandRejected { error, .. } => Err(CliError::Failed {
                what: "the command was rejected",
                error,
            }),
            EventBody::CommandResult {
                error: Some(error), ..
            } => Err(CliError::Failed {
                what: "the command failed",
                error,
            }),
            _ => Ok(()),
        }
    });
    // The outcome is printed: nothing left to wait for (the watch's connections and threads go
    // with the process), so the runtime is not joined on the way out.
    rt.shutdown_background();
    outcome
}
