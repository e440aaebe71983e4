//! systemd's notify protocol (`sd_notify`), without libsystemd: datagrams to `$NOTIFY_SOCKET`
//! (a path, or an abstract name starting with `@`). The agent sends `READY=1` once it consumes
//! commands, `STATUS=...` with each heartbeat, `WATCHDOG=1` every half of `$WATCHDOG_USEC`, and
//! `STOPPING=1` when it starts draining. Without `$NOTIFY_SOCKET` every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A notify socket, if systemd gave one.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        Self::from_vars(|k| std::env::var(k).ok(), std::process::id())
    }

    /// From variables read by `get`, for process `pid`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>, pid: u32) -> Notifier {
        let for_us = get("WATCHDOG_PID")
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == pid);
        Notifier {
            socket: get("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
            watchdog: get("WATCHDOG_USEC")
                .and_then(|u| u.parse::<u64>().ok())
                .filter(|u| *u > 0 && for_us)
                .map(Duration::from_micros),
        }
    }

    /// Whether a socket was given.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog interval systemd expects, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (e.g. `READY=1`); failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        let Some(path) = &self.socket else { return };
        let r = (|| -> std::io::Result<()> {
            let sock = UnixDatagram::unbound()?;
            if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            } else {
                sock.send_to(state.as_bytes(), path)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            tracing::warn!(error = %crate::error::chain(&e), "sd_notify failed.");
        }
    }

    /// Sends `WATCHDOG=1` every half watchdog interval until `stop`.
    pub async fn watchdog_loop(self, stop: tokio_util::sync::CancellationToken) {
        let Some(every) = self.watchdog.map(|w| w / 2) else {
            return;
        };
        loop {
            self.notify("WATCHDOG=1");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_and_the_watchdog_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let vars = |k: &str| match k {
            "NOTIFY_SOCKET" => Some(path.display().to_string()),
            "WATCHDOG_USEC" => Some("2000000".into()),
            "WATCHDOG_PID" => Some("42".into()),
            _ => None,
        };
        let n = Notifier::from_vars(vars, 42);
        assert_eq!(n.watchdog(), Some(Duration::from_secs(2)));
        n.notify("READY=1");
        n.notify("STATUS=running 0 execs");
        let mut buf = [0u8; 256];
        let k = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1");
        let k = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"STATUS=running 0 execs");
        // The watchdog is for another process: ignored.
        assert_eq!(Notifier::from_vars(vars, 7).watchdog(), None);
        // No socket: nothing happens.
        Notifier::from_vars(|_| None, 1).notify("READY=1");
    }

    #[test]
    fn abstract_sockets_work() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("reflow-agent-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_vars(|k| (k == "NOTIFY_SOCKET").then(|| format!("@{name}")), 1);
        n.notify("STOPPING=1");
        let mut buf = [0u8; 64];
        let k = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"STOPPING=1");
    }
}
